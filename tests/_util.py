"""Helpers shared by the unit tests: small topologies and random DAG models."""

from __future__ import annotations

import torch
from torch import nn

from autopart.topology import Device, Link, Topology


def make_device(name: str, *, tflops: float = 1.0, gbps: float = 100.0, memory: int = 2**34,
                overhead_s: float = 5e-6, max_power_W: float | None = None,
                idle_power_W: float | None = None) -> Device:
    kind = "cpu" if name == "cpu" or name.endswith("/cpu") else "cuda"
    return Device(
        name=name,
        kind=kind,
        memory_bytes=memory,
        peak_flops={"float32": tflops * 1e12},
        mem_bandwidth_Bps=gbps * 1e9,
        launch_overhead_s=overhead_s,
        max_power_W=max_power_W,
        idle_power_W=idle_power_W,
    )


def make_topology(devices: list[Device], *, link_gbps: float = 10.0, latency_s: float = 1e-5,
                  name: str = "test") -> Topology:
    """Every ordered pair of devices joined by one link of the same speed."""
    links = [
        Link(src=a.name, dst=b.name, bandwidth_Bps=link_gbps * 1e9, latency_s=latency_s, kind="pcie")
        for a in devices
        for b in devices
        if a.name != b.name
    ]
    return Topology(name=name, devices=tuple(devices), links=tuple(links))


def three_devices(**kwargs) -> Topology:
    """cpu + two GPUs of different speed: a small heterogeneous machine."""
    return make_topology(
        [
            make_device("cpu", tflops=0.5, gbps=50),
            make_device("cuda:0", tflops=20, gbps=1000),
            make_device("cuda:1", tflops=10, gbps=500),
        ],
        **kwargs,
    )


class RandomDag(nn.Module):
    """A model whose forward is a random DAG of ops over a list of values.

    ``steps``: (op, i, j) with op in OPS; i, j index earlier values (0 is the input).
    Every "linear" step owns a weight; ``outputs`` indexes the values returned.
    """

    OPS = ("add", "mul", "linear", "relu", "tanh", "view_t", "cat_split")

    def __init__(self, steps: list[tuple[str, int, int]], width: int, outputs: list[int]) -> None:
        super().__init__()
        self.steps = steps
        self.outputs = outputs
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(width, width) / width**0.5) for op, _, _ in steps if op == "linear"]
        )
        self.register_buffer("offset", torch.randn(width))

    def forward(self, x: torch.Tensor):
        values = [x + self.offset]
        w = 0
        for op, i, j in self.steps:
            a, b = values[i], values[j]
            if op == "add":
                v = a + b
            elif op == "mul":
                v = a * b
            elif op == "linear":
                v = a @ self.weights[w]
                w += 1
            elif op == "relu":
                v = torch.relu(a)
            elif op == "tanh":
                v = torch.tanh(b)
            elif op == "view_t":
                v = a.t().contiguous().t()
            else:
                v = torch.cat([a, b], dim=0).split(a.shape[0], dim=0)[1]
            values.append(v)
        return tuple(values[k] for k in self.outputs)
