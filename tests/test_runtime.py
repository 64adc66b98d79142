"""Runtime options end to end on the CPU with mapped devices: the Inductor inner compiler per
partition (kept to one small model: Inductor compiles C++ on the CPU), compared with eager."""

from __future__ import annotations

import warnings

import pytest
import torch
from _util import make_device, make_topology
from torch import nn

import autopart
from autopart.runtime import InductorPartition


@pytest.fixture(autouse=True)
def _fresh():
    torch._dynamo.reset()
    autopart.reset()
    yield
    torch._dynamo.reset()


class Mlp(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).sigmoid()


def test_inductor_partitions_match_eager_forward_and_backward():
    torch.manual_seed(0)
    model = Mlp()
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    backend = autopart.backend(topology=topo, device_map="cpu", inner="inductor", strict=True,
                               max_memory={"cpu": 0, "cuda:0": int(weight_bytes * 0.8),
                                           "cuda:1": int(weight_bytes * 0.8)})
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", autopart.AutopartWarning)  # no partition fell back
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
        out.sum().backward()
    comp = backend.compilations[0]
    assert len(comp.plan.devices_used) >= 2, comp.plan.summary()
    partitions = [m for m in comp.runner.module.children() if isinstance(m, InductorPartition)]
    assert len(partitions) >= 2 and all(p.compiled and p.failed is None for p in partitions)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for got, p in zip(grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


@torch.fx.wrap
def data_dependent(x: torch.Tensor) -> torch.Tensor:
    """Branches on a tensor's value: fine eagerly, not traceable with fake tensors."""
    return x * 2 if bool(x.sum() > 0) else -x


class Branchy(nn.Module):
    def forward(self, x):
        return data_dependent(x + 1)


def test_a_partition_inductor_cannot_compile_runs_eagerly_with_a_warning():
    gm = torch.fx.symbolic_trace(Branchy())
    part = InductorPartition(gm, "submod_0")
    x = torch.randn(2, 32)
    with pytest.warns(autopart.AutopartWarning, match="Inductor could not compile partition submod_0"):
        out = part(x)
    assert part.failed
    torch.testing.assert_close(out, Branchy()(x))
    torch.testing.assert_close(part(-x), Branchy()(-x))
