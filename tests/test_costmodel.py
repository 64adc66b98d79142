"""Cost model: collective formulas, energy, training memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from _util import make_device, make_topology
from autopart import Topology
from autopart.costmodel.comm import collective_time_s, flat_collective_time_s
from autopart.costmodel.energy import energy_J
from autopart.passes import memory_pass, propagate_shapes_pass
from autopart.passes.memory import storage_key
from autopart.passes.training import training_memory_pass

A, B = 1e-5, 1e10  # alpha 10 us, beta 10 GB/s


@pytest.mark.parametrize(
    ("kind", "algorithm", "expected"),
    [
        # p = 4, n = 1 GB: hand calculations from the module table
        ("all_reduce", "ring", 2 * 3 * A + 2 * 3 / 4 * 1e9 / B),
        ("all_reduce", "tree", 2 * 2 * A + 2 * 1e9 / B),
        ("all_gather", "ring", 3 * A + 3 / 4 * 1e9 / B),
        ("reduce_scatter", "ring", 3 * A + 3 / 4 * 1e9 / B),
        ("all_to_all", "ring", 3 * A + 3 / 4 * 1e9 / B),
        ("broadcast", "tree", 2 * A + 1e9 / B),
    ],
)
def test_flat_collectives_match_hand_calculations(kind, algorithm, expected):
    assert flat_collective_time_s(kind, 1e9, 4, A, B, algorithm) == pytest.approx(expected)


def test_auto_picks_tree_for_small_and_ring_for_large_all_reduce():
    small, large = 1e3, 1e10
    p = 64
    assert flat_collective_time_s("all_reduce", small, p, A, B) == pytest.approx(
        flat_collective_time_s("all_reduce", small, p, A, B, "tree")
    )
    assert flat_collective_time_s("all_reduce", large, p, A, B) == pytest.approx(
        flat_collective_time_s("all_reduce", large, p, A, B, "ring")
    )


def test_collective_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown collective 'all_sum'"):
        flat_collective_time_s("all_sum", 1, 2, A, B)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no tree algorithm"):
        flat_collective_time_s("all_gather", 1, 2, A, B, "tree")
    assert flat_collective_time_s("all_reduce", 1e6, 1, A, B) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"]),
    st.integers(1, 1024),
    st.floats(0, 1e10),
    st.floats(1.0, 4.0),
)
def test_collective_cost_is_non_negative_and_monotone(kind, p, nbytes, factor):
    t = flat_collective_time_s(kind, nbytes, p, A, B)
    assert t >= 0
    assert flat_collective_time_s(kind, nbytes * factor, p, A, B) >= t
    assert flat_collective_time_s(kind, nbytes, p, A * factor, B / factor) >= t


def test_collective_within_one_host_uses_the_slowest_hop():
    topo = Topology.preset("4xa100-pcie-cpu")  # GPU <-> GPU routed through the CPU
    gpus = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    link = topo.link("cuda:0", "cuda:1")
    expected = flat_collective_time_s("all_reduce", 2**30, 4, link.latency_s, link.bandwidth_Bps)
    assert collective_time_s("all_reduce", 2**30, gpus, topo) == pytest.approx(expected)


def test_collective_across_hosts_is_hierarchical():
    topo = Topology.preset("2x8xh100-ib")
    ranks = [f"node{h}/cuda:{i}" for h in range(2) for i in range(8)]
    n = 2**30
    intra = topo.link("node0/cuda:0", "node0/cuda:1")
    inter = topo.link("node0/cuda:0", "node1/cuda:0")
    expected = (
        flat_collective_time_s("reduce_scatter", n, 8, intra.latency_s, intra.bandwidth_Bps, "ring")
        + flat_collective_time_s("all_reduce", n / 8, 2, inter.latency_s, inter.bandwidth_Bps)
        + flat_collective_time_s("all_gather", n, 8, intra.latency_s, intra.bandwidth_Bps, "ring")
    )
    got = collective_time_s("all_reduce", n, ranks, topo)
    assert got == pytest.approx(expected)
    # Slower than inside one host, much faster than a flat ring over the network.
    assert got > collective_time_s("all_reduce", n, ranks[:8], topo)
    flat = flat_collective_time_s("all_reduce", n, 16, inter.latency_s, inter.bandwidth_Bps, "ring")
    assert got < flat


def test_energy_is_active_power_while_busy_plus_idle_power():
    gpu = make_device("cuda:0")
    gpu = type(gpu)(**{**gpu.to_dict(), "max_power_W": 400.0, "idle_power_W": 50.0})
    cpu = make_device("cpu")  # no power figures
    topo = make_topology([gpu, cpu])
    est = energy_J({"cuda:0": 0.2, "cpu": 0.1}, 0.5, topo)
    assert est.per_device_J == {"cuda:0": pytest.approx(400 * 0.2 + 50 * 0.3)}
    assert est.unknown == ("cpu",)
    assert est.total_J == pytest.approx(95.0)
    with pytest.raises(ValueError, match="busy time of cuda:0 is 1.0 s, outside"):
        energy_J({"cuda:0": 1.0}, 0.5, topo)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.nn.functional.gelu(self.norm(h))
        return torch.softmax(self.fc2(h), dim=-1)


def _saved_by_autograd(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd really saves in a forward pass (storages other than weights and input)."""
    held = {storage_key(t) for t in [*model.parameters(), x]}
    saved: dict = {}

    def pack(t):
        key = storage_key(t)
        if key not in held:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


def test_saved_activations_match_what_autograd_saves():
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(4, 16)
    report = {}

    def backend(gm, example_inputs):
        propagate_shapes_pass(gm, example_inputs)
        report["tm"] = training_memory_pass(gm, example_inputs, memory=memory_pass(gm), optimizer="adam")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend)(x)
    tm = report["tm"]
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert tm.unknown == ()
    assert tm.saved_activation_bytes == _saved_by_autograd(model, x)
    assert tm.parameter_bytes == tm.gradient_bytes == param_bytes
    assert tm.optimizer_state_bytes == 2 * param_bytes
    assert tm.total_bytes == 4 * param_bytes + tm.saved_activation_bytes + tm.forward_peak_bytes


def test_training_memory_rejects_unknown_optimizer():
    gm = torch.fx.symbolic_trace(_Net())
    propagate_shapes_pass(gm, [torch.randn(2, 16)])
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        training_memory_pass(gm, memory=memory_pass(gm), optimizer="lamb")  # type: ignore[arg-type]
