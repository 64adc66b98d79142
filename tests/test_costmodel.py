"""Cost model: collective formulas, energy, training memory."""

from __future__ import annotations

import dataclasses
import time
import weakref

import pytest
import torch
from _util import make_device, make_topology
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import autopart
import autopart.passes.training
from autopart import Device, Link, Topology
from autopart.costmodel.comm import collective_time_s, flat_collective_time_s, mesh_collective_time_s
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
        ("all_gather", "tree", 2 * A + 3 / 4 * 1e9 / B),  # recursive doubling: 2 steps
        ("reduce_scatter", "ring", 3 * A + 3 / 4 * 1e9 / B),
        ("reduce_scatter", "tree", 2 * A + 3 / 4 * 1e9 / B),  # recursive halving
        ("all_to_all", "ring", 3 * A + 3 / 4 * 1e9 / B),
        ("all_to_all", "tree", 2 * A + 2 * 1e9 / 2 / B),  # Bruck: each step sends half the buffer
        ("broadcast", "ring", 3 * A + 1e9 / B),
        ("broadcast", "tree", 2 * A + 1e9 / B),
    ],
)
def test_flat_collectives_match_hand_calculations(kind, algorithm, expected):
    assert flat_collective_time_s(kind, 1e9, 4, A, B, algorithm) == pytest.approx(expected)


def test_auto_picks_bruck_for_small_and_pairwise_for_large_all_to_all():
    p = 8  # Bruck: 3 alpha + 1.5 n/beta; pairwise: 7 alpha + 7/8 n/beta
    small, large = 1e3, 1e9
    assert flat_collective_time_s("all_to_all", small, p, A, B) == pytest.approx(3 * A + 1.5 * small / B)
    assert flat_collective_time_s("all_to_all", large, p, A, B) == pytest.approx(7 * A + 7 / 8 * large / B)


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
    with pytest.raises(ValueError, match="unknown algorithm 'butterfly'"):
        flat_collective_time_s("all_gather", 1, 2, A, B, "butterfly")  # type: ignore[arg-type]
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
    a1, b1, a2, b2 = intra.latency_s, intra.bandwidth_Bps, inter.latency_s, inter.bandwidth_Bps
    # by hand: ring reduce_scatter inside each host (7 steps, 7/8 of n), all_reduce of n/8
    # between the 2 hosts (a 2-rank ring: 2 steps, 2 * 1/2 of n/8), ring all_gather inside
    expected = (7 * a1 + 7 / 8 * n / b1) + (2 * a2 + n / 8 / b2) + (7 * a1 + 7 / 8 * n / b1)
    got = collective_time_s("all_reduce", n, ranks, topo)
    assert got == pytest.approx(expected)
    # Slower than inside one host, much faster than a flat ring over the network.
    assert got > collective_time_s("all_reduce", n, ranks[:8], topo)
    flat = flat_collective_time_s("all_reduce", n, 16, inter.latency_s, inter.bandwidth_Bps, "ring")
    assert got < flat


def test_a_hierarchical_collective_waits_for_its_slowest_host():
    """Host a's ring: 1 GB/s at 1 us; host b's: 100 GB/s at 2 us. Each inside-host step lasts
    as long as host a's, whatever their latencies."""
    devices = [dataclasses.replace(make_device(f"{h}/cuda:{i}"), host=h) for h in "ab" for i in range(2)]

    def both_ways(src, dst, bandwidth_Bps, latency_s, kind="nvlink"):
        return [Link(src=s, dst=d, bandwidth_Bps=bandwidth_Bps, latency_s=latency_s, kind=kind)
                for s, d in ((src, dst), (dst, src))]

    topo = Topology(name="2hosts", devices=tuple(devices), links=tuple(
        both_ways("a/cuda:0", "a/cuda:1", 1e9, 1e-6) + both_ways("b/cuda:0", "b/cuda:1", 100e9, 2e-6)
        + both_ways("a/cuda:0", "b/cuda:0", 10e9, 5e-6, "network")))
    n = 10**9
    # by hand: ring reduce_scatter and all_gather inside host a (1 step, n/2 each), and an
    # all_reduce of n/2 between the hosts (a 2-rank ring: 2 steps, n/2 / 2 each)
    expected = 2 * (1e-6 + n / 2 / 1e9) + 2 * 5e-6 + n / 2 / 10e9
    got = collective_time_s("all_reduce", n, [d.name for d in devices], topo, algorithm="ring")
    assert got == pytest.approx(expected)
    # Without b/cuda:1, host b's one rank holds all n after the inside reduce_scatter: the
    # hosts all_reduce n, not n/2 (2 steps of n/2 each way).
    got = collective_time_s("all_reduce", n, [d.name for d in devices[:3]], topo, algorithm="ring")
    assert got == pytest.approx(2 * (1e-6 + n / 2 / 1e9) + 2 * 5e-6 + n / 10e9)


def test_a_collective_along_a_mesh_axis_lasts_as_long_as_its_slowest_group():
    topo = Topology.preset("2x8xh100-ib")  # mesh "gpus": dp across the 2 hosts, tp inside one
    n = 2**28
    intra = topo.link("node0/cuda:0", "node0/cuda:1")
    inter = topo.link("node0/cuda:0", "node1/cuda:0")
    # tp: 8 ranks on NVLink; dp: 2 ranks over InfiniBand (a 2-rank ring: 2 steps, n/2 each way)
    tp = mesh_collective_time_s("all_reduce", n, "gpus", "tp", topo, algorithm="ring")
    assert tp == pytest.approx(2 * 7 * intra.latency_s + 2 * 7 / 8 * n / intra.bandwidth_Bps)
    dp = mesh_collective_time_s("all_reduce", n, topo.mesh("gpus"), 0, topo, algorithm="ring")
    assert dp == pytest.approx(2 * inter.latency_s + n / inter.bandwidth_Bps)
    with pytest.raises(ValueError, match="has no axis 'pp'"):
        mesh_collective_time_s("all_reduce", n, "gpus", "pp", topo)


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
    assert tm.total_bytes == (4 * param_bytes + tm.saved_activation_bytes + tm.forward_peak_bytes
                              + tm.optimizer_temporary_bytes)


class _LiveBytes(TorchDispatchMode):
    """The most bytes of tensors made under it (not in place) alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.overloadpacket.__name__.endswith("_"):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    nbytes = t.untyped_storage().nbytes()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t.untyped_storage(), self._free, nbytes)
        return out

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


class _FlatParameters(nn.Module):
    """Four 16x16 weights that are views of one flat storage (as apex or FSDP make them)."""

    def __init__(self) -> None:
        super().__init__()
        flat = torch.randn(4 * 256)
        self.weights = nn.ParameterList(nn.Parameter(flat[i * 256:(i + 1) * 256].view(16, 16)) for i in range(4))

    def forward(self, x):
        for w in self.weights:
            x = torch.tanh(x @ w)
        return x


def test_parameters_sharing_one_storage_get_gradients_and_state_of_their_own_size():
    model = _FlatParameters()
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == 1
    _, tm = _analysed_for_training(model, torch.randn(4, 16))
    assert tm.gradient_bytes == 4 * 256 * 4  # not four times the flat storage
    assert tm.optimizer_state_bytes == 2 * tm.gradient_bytes


@pytest.mark.parametrize("foreach", [False, True])
def test_adams_temporaries_are_reserved(foreach):
    """Adam's update makes temporaries (``sqrt``, division) while gradients and state are
    alive: one parameter's at a time, or all at once with ``foreach`` (torch.optim's default
    on GPUs). The training report reserves at least what a real step holds at once."""
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(4, 16)
    _, tm = _analysed_for_training(model, x)
    optimizer = torch.optim.Adam(model.parameters(), foreach=foreach)
    for _ in range(2):  # the first step makes the state
        model(x).sum().backward()
        live = _LiveBytes()
        with live:
            optimizer.step()
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert 0 < live.peak <= tm.optimizer_temporary_bytes <= 2 * param_bytes


@pytest.mark.parametrize("optimizer, per_byte", [("adam", 3), ("sgd_momentum", 2), ("sgd", 1), ("none", 0)])
def test_each_node_records_what_training_adds_to_its_device(optimizer, per_byte):
    """A trainable parameter adds its gradient and optimizer state, a frozen one nothing, a
    compute node what it saves; the annotated graph keeps these through a JSON round trip."""
    from autopart import AnnotatedGraph

    torch.manual_seed(0)
    model, x = _Net(), torch.randn(4, 16)
    model.fc1.requires_grad_(False)
    seen = {}

    def backend(gm, example_inputs):
        propagate_shapes_pass(gm, example_inputs)
        memory = memory_pass(gm)
        seen["tm"] = training_memory_pass(gm, example_inputs, memory=memory, optimizer=optimizer)
        seen["graph"] = AnnotatedGraph.from_dict(AnnotatedGraph.from_fx(gm, memory).to_dict())
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend)(x)
    graph, tm = seen["graph"], seen["tm"]
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    params = [n for n in graph.nodes if n.role == "parameter"]
    frozen = [n for n in params if "fc1" in n.name]
    assert len(frozen) == 2 and all(n.training_bytes == 0 for n in frozen)
    assert sum(n.training_bytes for n in params) == per_byte * trainable
    assert tm.gradient_bytes == (trainable if optimizer != "none" else 0)
    compute = [n for n in graph.nodes if n.is_compute]
    assert sum(n.training_bytes for n in compute) == tm.saved_activation_bytes > 0
    assert graph.training
    assert graph.has_backward == (optimizer != "none")


def _analysed_for_training(model: nn.Module, *inputs: torch.Tensor, optimizer: str = "adam"):
    """The annotated graph of ``model`` captured by Dynamo with gradients enabled, after the
    shape, memory, cost and training passes, and the training report."""
    from autopart import AnnotatedGraph
    from autopart.passes import cost_pass

    seen = {}

    def backend(gm, example_inputs):
        propagate_shapes_pass(gm, example_inputs)
        memory = memory_pass(gm)
        cost_pass(gm, example_inputs, topology=make_topology([make_device("cpu")]))
        seen["tm"] = training_memory_pass(gm, example_inputs, memory=memory, optimizer=optimizer)
        seen["graph"] = AnnotatedGraph.from_fx(gm, memory)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend)(*inputs)
    return seen["graph"], seen["tm"]


def _backward_matmul_flops_by_autograd(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    out = model(x)
    with FlopCounterMode(display=False) as counter:
        out.backward(torch.ones_like(out))
    return counter.get_total_flops()


@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("frozen_fc1", [False, True])
def test_backward_ops_are_those_autograd_runs(input_grad, frozen_fc1):
    """Each node's backward ops are what autograd dispatches: their matrix-product FLOPs add up
    to torch.utils.flop_counter's count of a real backward pass, which drops the first layer's
    input gradient when the input needs none and the whole first layer when it is frozen; the
    saved activations still match what autograd saves."""
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(4, 16, requires_grad=input_grad)
    model.fc1.requires_grad_(not frozen_fc1)
    graph, tm = _analysed_for_training(model, x)
    predicted = sum(op.flops for n in graph.nodes for op in n.backward_ops if op.kind.startswith("matmul"))
    assert tm.unknown == ()
    assert predicted == _backward_matmul_flops_by_autograd(model, x) > 0
    assert tm.saved_activation_bytes == _saved_by_autograd(model, x)
    fc1 = next(n for n in graph.nodes if n.is_compute and n.target == "linear")
    assert bool(fc1.backward_ops) == (input_grad or not frozen_fc1) == fc1.requires_grad


def test_attention_and_convolution_backward_are_their_kernels_at_twice_the_forward_flops():
    """Both gradients of a convolution and the three of an attention are matrix products of
    twice the forward's FLOPs (torch.utils.flop_counter's formulas; the CPU flash kernel's by
    autopart's rule): attention's in the class of its forward kernel, convolutions' in a class
    of their own."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)

        def forward(self, img, q, k, v):
            return self.conv(img).sum() + torch.nn.functional.scaled_dot_product_attention(q, k, v).sum()

    inputs = [torch.randn(2, 3, 10, 10, requires_grad=True)] + [torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3)]
    graph, _ = _analysed_for_training(M(), *inputs)
    for target, kind, backward in [("conv2d", "matmul:convolution", "matmul:convolution_backward"),
                                   ("scaled_dot_product_attention", "matmul:attention", "matmul:attention")]:
        node = next(n for n in graph.nodes if n.target.endswith(target))
        forward = sum(op.flops for op in node.ops if op.kind == kind)
        assert forward > 0 and sum(op.flops for op in node.backward_ops if op.kind == backward) == 2 * forward


def test_a_value_read_twice_sums_its_gradients_once():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            h = self.fc(x)
            return h * h.sigmoid() + h

    graph, _ = _analysed_for_training(Residual(), torch.randn(3, 8))
    h = next(n for n in graph.nodes if n.target == "linear")
    adds = [op for op in h.backward_ops if op.flops == 3 * 8 and op.bytes_read == 2 * 3 * 8 * 4]
    assert len(adds) == 2  # three readers (mul, sigmoid, add): two additions


def test_a_tied_weight_sums_its_two_gradients_at_its_first_reader():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 8)

        def forward(self, ids):
            return self.embed(ids) @ self.embed.weight.T

    graph, _ = _analysed_for_training(Tied(), torch.randint(0, 50, (2, 5)))
    lookup = next(n for n in graph.nodes if n.target == "embedding")
    adds = [op for op in lookup.backward_ops if op.bytes_read == 2 * op.bytes_written == 2 * 50 * 8 * 4]
    assert len(adds) == 1


def test_first_touches_are_charged_on_saved_activations_and_gradients():
    """On a device whose profile measured a first-touch cost, a training step's forward pays it
    on the activations each node saves, its backward on each trainable weight's gradient (at
    the weight's first reader); a device without one pays nothing more."""
    import dataclasses

    torch.manual_seed(0)
    model = _Net()
    model.fc2.requires_grad_(False)
    graph, _ = _analysed_for_training(model, torch.randn(4, 16), optimizer="sgd")
    plain = make_device("cpu")
    touched = dataclasses.replace(plain, name="touched", measured={"first_touch_Bps": 1e9})
    topo = make_topology([plain, touched])
    for backward in (False, True):
        times = graph.node_times(topo, backward=backward)
        extra = {n: t["touched"] - t["cpu"] for n, t in times.items()}
        assert sum(extra.values()) > 0 and all(e >= 0 for e in extra.values())
        for name, nbytes in graph.fresh_bytes(backward=backward).items():
            assert extra[name] == pytest.approx(nbytes / 1e9)
    compute = [n for n in graph.nodes if n.is_compute]
    assert graph.fresh_bytes() == {n.name: n.training_bytes for n in compute if n.training_bytes}
    fc1 = next(n for n in compute if n.target == "linear")  # weight and bias: 16*32+32 floats
    norm = next(n for n in compute if n.target == "layer_norm")  # 32+32 floats; fc2 is frozen
    assert graph.fresh_bytes(backward=True) == {fc1.name: (16 * 32 + 32) * 4, norm.name: 64 * 4}


def test_optimizer_temporaries_pay_first_touches():
    """Adam's update allocates two temporaries per parameter anew each step: on a device that
    pays first touches, each parameter's update costs their bytes at its first-touch rate
    more; SGD's, which allocates none, costs nothing more."""
    import dataclasses

    plain = make_device("cpu")
    touched = dataclasses.replace(plain, name="touched", measured={"first_touch_Bps": 1e9})
    topo = make_topology([plain, touched])
    for optimizer, temporaries in (("adam", 2), ("sgd", 0)):
        graph, _ = _analysed_for_training(_Net(), torch.randn(4, 16), optimizer=optimizer)
        times = graph.node_times(topo, step=True)
        params = [n for n in graph.nodes if n.role == "parameter"]
        for node in params:
            assert node.step_temporary_bytes == temporaries * node.output_bytes
            assert times[node.name]["cpu"] > 0
            assert times[node.name]["touched"] - times[node.name]["cpu"] == pytest.approx(
                node.step_temporary_bytes / 1e9
            )


def test_no_backward_is_costed_without_a_training_step():
    graph, tm = _analysed_for_training(_Net(), torch.randn(4, 16), optimizer="none")
    assert tm.saved_activation_bytes > 0 and graph.training
    assert not graph.has_backward and all(n.backward_ops == () for n in graph.nodes)


def test_a_module_kept_whole_is_costed_at_twice_its_forward():
    """symbolic_trace keeps nn.Linear whole: it cannot be re-run with gradients, so its backward
    is the rule of thumb, twice its forward ops, and it is reported."""
    from autopart.passes import cost_pass
    from autopart.passes.records import record

    gm = torch.fx.symbolic_trace(_Net())
    propagate_shapes_pass(gm, [torch.randn(2, 16)])
    memory = memory_pass(gm)
    cost_pass(gm, topology=make_topology([make_device("cpu")]))
    tm = training_memory_pass(gm, memory=memory, optimizer="sgd")
    fc1 = next(n for n in gm.graph.nodes if n.target == "fc1")
    assert "fc1" in tm.unknown and record(fc1).requires_grad
    assert record(fc1).backward_ops == record(fc1).ops * 2 and record(fc1).ops


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "sgd_momentum"])
def test_optimizer_step_ops_are_those_a_real_step_runs(optimizer):
    """The update recorded on ``meta`` tensors is the one torch.optim runs on a real CPU
    parameter (same ops on parameter-shaped tensors, bytes and FLOPs), also when recorded while
    Dynamo compiles; its bytes grow with the parameter's."""
    from autopart.passes.training import _OPTIMIZERS, _ShapedLikeRecorder, optimizer_step

    param = nn.Parameter(torch.randn(32, 16))
    param.grad = torch.randn(32, 16)
    real = _OPTIMIZERS[optimizer](param)
    real.step()
    with _ShapedLikeRecorder(param) as recorder:
        real.step()
    optimizer_step.cache_clear()
    recorded = optimizer_step(optimizer, (32, 16), torch.float32).ops
    assert recorded == tuple(recorder.ops) and recorded

    while_compiling = {}

    def backend(gm, example_inputs):
        optimizer_step.cache_clear()
        while_compiling["ops"] = optimizer_step(optimizer, (32, 16), torch.float32).ops
        return gm.forward

    torch._dynamo.reset()
    torch.compile(lambda x: x + 1, backend=backend)(torch.randn(3))
    compiling = while_compiling["ops"]  # a few scalars are 0-dim tensors there, not floats
    assert [(op.kind, op.flops, op.bytes_written) for op in compiling] == [
        (op.kind, op.flops, op.bytes_written) for op in recorded
    ]
    assert sum(op.bytes_read for op in compiling) == pytest.approx(sum(op.bytes_read for op in recorded), rel=0.01)
    larger = optimizer_step(optimizer, (64, 16), torch.float32).ops
    assert sum(op.bytes_accessed for op in larger) == 2 * sum(op.bytes_accessed for op in recorded) > 0
    optimizer_step.cache_clear()  # the entry made while compiling holds a scalar's bytes more
    update = optimizer_step(optimizer, (32, 16), torch.float32).update  # what the training pass keeps
    assert update.launches == 1 and update.kind == autopart.passes.training.OPTIMIZER_CLASS[optimizer]
    assert (update.flops, update.bytes_accessed) == (sum(op.flops for op in recorded),
                                                     sum(op.bytes_accessed for op in recorded))
    assert optimizer_step("none", (32, 16), torch.float32).ops == ()
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        optimizer_step("lamb", (32, 16), torch.float32)  # type: ignore[arg-type]


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "sgd_momentum"])
def test_optimizer_step_temporaries_are_what_a_real_step_allocates(optimizer):
    """The temporaries recorded for an update are the parameter-sized blocks torch's profiler
    sees a real step allocate (Adam's: two; SGD's: none)."""
    from torch.profiler import ProfilerActivity, profile

    from autopart.passes.training import _OPTIMIZERS, optimizer_step

    param = nn.Parameter(torch.randn(64, 32))
    param.grad = torch.randn(64, 32)
    real = _OPTIMIZERS[optimizer](param)
    real.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        real.step()
    nbytes = param.numel() * param.element_size()
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage >= nbytes)
    assert optimizer_step(optimizer, (64, 32), torch.float32).temporary_bytes == allocated


def test_only_trainable_parameters_get_an_optimizer_step():
    """The training pass gives each trainable parameter its optimizer's update, Adam's costing
    more bytes than SGD's; a frozen parameter, a compute node and ``"none"`` get none."""
    model = _Net()
    model.fc1.requires_grad_(False)
    by_optimizer = {}
    for optimizer in ("adam", "sgd", "none"):
        graph, _ = _analysed_for_training(model, torch.randn(4, 16), optimizer=optimizer)
        stepped = {n.name: sum(op.bytes_accessed for op in n.step_ops) for n in graph.nodes if n.step_ops}
        assert all(n.role == "parameter" and "fc1" not in n.name for n in graph.nodes if n.name in stepped)
        by_optimizer[optimizer] = stepped
    assert by_optimizer["none"] == {} and len(by_optimizer["adam"]) == sum(p.requires_grad for p in model.parameters())
    assert by_optimizer["adam"].keys() == by_optimizer["sgd"].keys()
    assert all(by_optimizer["adam"][n] > by_optimizer["sgd"][n] > 0 for n in by_optimizer["adam"])


def test_training_memory_rejects_unknown_optimizer():
    gm = torch.fx.symbolic_trace(_Net())
    propagate_shapes_pass(gm, [torch.randn(2, 16)])
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        training_memory_pass(gm, memory=memory_pass(gm), optimizer="lamb")  # type: ignore[arg-type]


# --- calibration ----------------------------------------------------------------------------

from autopart.costmodel.calibration import calibrate_device, matmul_correction  # noqa: E402
from autopart.costmodel.ops import OpCost, op_class  # noqa: E402
from autopart.costmodel.roofline import roofline_time_s  # noqa: E402

aten = torch.ops.aten


@pytest.mark.parametrize("training, kind", [(False, "elementwise:native_batch_norm"), (True, "reduction:native_batch_norm")])
def test_batch_norm_reduces_only_in_training(training, kind):
    from autopart.costmodel.ops import CostRecorder

    x, c = torch.randn(2, 4, 3, 3), 4
    recorder = CostRecorder()
    with torch.no_grad(), recorder:
        torch.nn.functional.batch_norm(x, torch.zeros(c), torch.ones(c), training=training)
    norm = max(recorder.ops, key=lambda op: op.bytes_read)  # native_batch_norm reads the input
    assert norm.kind == kind


def test_decomposed_eval_batch_norm_is_costed_as_eval_batch_norm():
    from autopart.costmodel.ops import CostRecorder

    x, c = torch.randn(2, 4, 3, 3), 4
    recorder = CostRecorder()
    with torch.no_grad(), recorder:
        aten._native_batch_norm_legit_no_training(x, torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c), 0.1, 1e-5)
    norm = max(recorder.ops, key=lambda op: op.bytes_read)
    assert norm.kind == "elementwise:native_batch_norm"


@pytest.mark.parametrize("kernel", [aten.cudnn_batch_norm.default, aten.miopen_batch_norm.default])
@pytest.mark.parametrize("training, kind", [(False, "elementwise:native_batch_norm"), (True, "reduction")])
def test_gpu_batch_norm_kernels_are_costed_like_the_cpu_one(kernel, training, kind):
    """On CUDA (cuDNN) and ROCm (MIOpen), batch_norm runs its own kernel, with the same
    arguments as native_batch_norm: eval mode is the calibrated eval batch norm there too."""
    from autopart.costmodel.ops import aten_op_cost

    x, c = torch.randn(2, 4, 3, 3), 4
    args = (x, torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c), training, 0.1, 1e-5)
    cost = aten_op_cost(kernel, args, {}, (torch.empty_like(x), torch.empty(c), torch.empty(c), torch.empty(0)))
    assert cost.kind == kind and cost.bytes_read >= x.numel() * 4


def test_calibration_samples_on_a_gpu_reach_bandwidth_bound_sizes():
    """Each bandwidth-bound class has a sample that takes GPU_LARGEST_S at 3.35 TB/s, far above a
    launch's cost; the CPU's samples stay small (a CPU at ~50 GB/s needs no more)."""
    from autopart.costmodel.calibration import GPU_LARGEST_S, _point, _samples
    from autopart.costmodel.ops import base_class

    largest = {}
    for large in (True, False):
        samples = _samples(torch.device("meta"), large=large)
        largest[large] = {cls: max(_point(fn, cls, 0.0)[0] for fn in fns) for cls, fns in samples.items()
                          if base_class(cls) != "matmul"}
    assert all(x >= GPU_LARGEST_S * 3.35e12 for x in largest[True].values()), largest[True]
    small = {cls: x for cls, x in largest[False].items() if not cls.startswith("optimizer:")}
    assert all(x <= 64 * 2**20 for x in small.values()), small
    for fns in (v for cls, v in _samples(torch.device("meta"), large=False).items() if cls.startswith("optimizer:")):
        assert max(fn.param.numel() for fn in fns) * 4 <= 16 * 2**20  # an update makes many passes over it


def test_calibration_falls_back_to_small_samples_when_memory_is_short(monkeypatch, caplog):
    from autopart.costmodel import calibration

    real = calibration._samples

    def short_of_memory(device, large=None):
        if large is None:  # the device's default sizes: as if a GPU's did not fit
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(device, large=large)

    monkeypatch.setattr(calibration, "_samples", short_of_memory)
    monkeypatch.setattr("autopart.profiler.median_time_s", lambda fn, cuda, **kw: (1e-3, 1, 3))  # no timing
    with caplog.at_level("WARNING", logger="autopart.costmodel.calibration"):
        cal = calibrate_device("cpu", budget_s=0.5)
    assert "too little free memory" in caplog.text
    assert set(cal["classes"]) | set(cal["failed"]) == set(real(torch.device("meta"), large=False))


def test_calibration_makes_more_passes_only_while_the_budget_lasts(monkeypatch):
    """Each sample's time is the best of ROUNDS passes, but a pass runs at least a few calls of
    every sample: once the first pass has used the budget, no other starts."""
    from autopart.costmodel import calibration

    n = sum(map(len, calibration._samples(torch.device("meta")).values()))
    budget_s = 0.2
    calls = []

    def slow(fn, cuda, *, time_s, min_block_s):
        calls.append(fn)
        time.sleep(1.5 * budget_s / n)  # a pass takes 1.5x the budget
        return 1e-3, 1, 3

    monkeypatch.setattr(calibration, "_sustain", lambda *a: None)
    monkeypatch.setattr("autopart.profiler.median_time_s", slow)
    cal = calibrate_device("cpu", budget_s=budget_s)
    assert len(calls) == n and calibration.ROUNDS > 1
    assert set(cal["classes"]) | set(cal["failed"]) == set(calibration._samples(torch.device("meta")))


@pytest.mark.parametrize("budget_s", [0.5, 5.0, 60.0])
def test_calibration_blocks_are_as_long_as_the_budget_allows(monkeypatch, budget_s):
    from autopart.costmodel import calibration
    from autopart.profiler import MIN_BLOCK_S, MIN_REPEATS

    seen = []

    def timed(fn, cuda, *, time_s, min_block_s):
        seen.append((time_s, min_block_s))
        return 1e-3, 1, 3

    monkeypatch.setattr(calibration, "_sustain", lambda *a: None)
    monkeypatch.setattr("autopart.profiler.median_time_s", timed)
    calibrate_device("cpu", budget_s=budget_s)
    n = sum(map(len, calibration._samples(torch.device("meta")).values()))
    assert len(seen) == calibration.ROUNDS * n
    for time_s, block_s in seen:
        assert MIN_BLOCK_S <= block_s <= calibration.BLOCK_S
        assert block_s * MIN_REPEATS <= time_s * (1 + 1e-9) or block_s == MIN_BLOCK_S  # repeats fit
    assert sum(t for t, _ in seen) == pytest.approx(max(budget_s, 0.01 * len(seen)))
    if budget_s >= 60:
        assert seen[0][1] == calibration.BLOCK_S


def test_op_classes():
    assert op_class(aten.mm.default) == op_class(aten.bmm.default) == "matmul"
    assert op_class(aten.convolution.default) == op_class(aten.mkldnn_convolution.default) == "matmul:convolution"
    assert op_class(aten.convolution_backward.default) == "matmul:convolution_backward"
    assert op_class(aten.tanh.default) == "transcendental:tanh"
    assert op_class(aten.sin.default) == "transcendental"
    assert op_class(aten.mean.dim) == op_class(aten.sum.dim_IntList) == "reduction"
    assert op_class(aten._softmax.default) == "reduction:_softmax"
    assert op_class(aten.native_layer_norm.default) == "reduction:native_layer_norm"
    assert op_class(aten.cat.default) == op_class(aten.embedding.default) == "copy"
    assert op_class(aten.add.Tensor) == op_class(aten.pow.Tensor_Scalar) == "elementwise"
    assert op_class(aten.max_pool2d_with_indices.default) == "reduction:max_pool2d_with_indices"
    assert op_class(aten._scaled_dot_product_flash_attention_for_cpu.default) == "matmul:attention"
    assert op_class(aten._scaled_dot_product_efficient_attention.default) == "matmul:attention"


def _calibrated_device():
    dev = make_device("cpu", tflops=1.0, gbps=10.0, overhead_s=5e-6).to_dict()
    dev["peak_flops"] = {"float32": 1e12, "bfloat16": 4e12}
    classes = {
        "matmul": {"unit": "FLOP", "overhead_s": 2e-5, "rate": 5e11},
        "transcendental": {"unit": "byte", "overhead_s": 3e-6, "rate": 2e9},
        "elementwise": {"unit": "byte", "overhead_s": 1e-6, "rate": 5e10},
    }
    return Device(**{**dev, "measured": {"calibration": {"classes": classes}}})


def test_roofline_uses_the_calibrated_fit_of_the_op_class():
    dev = _calibrated_device()
    mm = OpCost(flops=10**9, bytes_read=10**6, bytes_written=10**6, launches=1, dtype="float32", kind="matmul")
    assert roofline_time_s(mm, dev) == pytest.approx(2e-5 + 1e9 / 5e11)
    bf16 = OpCost(10**9, 10**6, 10**6, 1, "bfloat16", "matmul")  # rate scales with peak: 4x
    assert roofline_time_s(bf16, dev) == pytest.approx(2e-5 + 1e9 / 2e12)
    attention = OpCost(10**9, 10**6, 10**6, 1, "float32", "matmul:attention")  # falls back to matmul
    assert roofline_time_s(attention, dev) == roofline_time_s(mm, dev)
    fits = dev.measured["calibration"]["classes"]
    fits["matmul:attention"] = {"unit": "FLOP", "overhead_s": 1e-5, "rate": 2e11}
    assert roofline_time_s(attention, dev) == pytest.approx(1e-5 + 1e9 / 2e11)  # its own fit
    tanh = OpCost(10**6, 4 * 10**6, 4 * 10**6, 1, "float32", "transcendental:tanh")  # class fit
    assert roofline_time_s(tanh, dev) == pytest.approx(3e-6 + 8e6 / 2e9)
    add = OpCost(10**6, 8 * 10**6, 4 * 10**6, 1, "float32", "elementwise")
    assert roofline_time_s(add, dev) == pytest.approx(1e-6 + 12e6 / 5e10)
    norm = OpCost(10**6, 4 * 10**6, 4 * 10**6, 1, "float32", "reduction")  # not calibrated
    assert roofline_time_s(norm, dev) == pytest.approx(5e-6 + 8e6 / 10e9)
    view = OpCost(0, 0, 0, 0, "float32", "elementwise")
    assert roofline_time_s(view, dev) == 0.0


def test_a_byte_class_op_beyond_its_fit_samples_is_held_to_memory_bandwidth():
    """The elementwise fit (50 GB/s) was sampled up to 12 MB: a 120 MB op beyond it runs at
    the device's memory bandwidth (10 GB/s), one within it at the fitted rate."""
    dev = _calibrated_device()
    dev.measured["calibration"]["classes"]["elementwise"]["samples"] = [[1.2e6, 1e-6], [12e6, 2e-4]]
    inside = OpCost(10**6, 8 * 10**6, 4 * 10**6, 1, "float32", "elementwise")
    assert roofline_time_s(inside, dev) == pytest.approx(1e-6 + 12e6 / 5e10)
    beyond = OpCost(10**7, 8 * 10**7, 4 * 10**7, 1, "float32", "elementwise")
    assert roofline_time_s(beyond, dev) == pytest.approx(1e-6 + 120e6 / 10e9)


def test_matmul_correction_follows_the_nearest_samples():
    # A line of 1e11 FLOP/s; matmuls with many bytes (weights beyond the caches) ran 2x slower.
    fit = {"overhead_s": 0.0, "rate": 1e11, "samples": [
        [1e8, 1e-3, 1e6], [2e8, 2e-3, 2e6],          # on the line
        [1e9, 2e-2, 1e9], [2e9, 4e-2, 2e9],          # twice the line
    ]}
    assert matmul_correction(fit, 1e9, 1e9) == pytest.approx(2.0)  # an exact sample: its ratio
    assert matmul_correction(fit, 1.5e8, 1.5e6) == pytest.approx(1.0)
    assert matmul_correction(fit, 1.5e9, 1.5e9) == pytest.approx(2.0)
    between = matmul_correction(fit, 5e8, 5e7)
    assert 1.0 < between < 2.0
    assert matmul_correction({"overhead_s": 0.0, "rate": 1e11, "samples": [[1e8, 1e-3]] * 3}, 1e8, 1e6) == 1.0


def test_matmul_correction_takes_samples_of_the_same_row_alignment():
    # The same line; unaligned samples ran 1.5x slower than aligned ones of the same size.
    aligned = [[1e8, 1e-3, 1e6, 1.0], [1e9, 1e-2, 1e7, 1.0]]
    unaligned = [[1e8, 1.5e-3, 1e6, 0.0], [1e9, 1.5e-2, 1e7, 0.0]]
    fit = {"overhead_s": 0.0, "rate": 1e11, "samples": aligned + unaligned}
    assert matmul_correction(fit, 3e8, 3e6) == pytest.approx(1.0)
    assert matmul_correction(fit, 3e8, 3e6, aligned=False) == pytest.approx(1.5)
    # fewer than two unaligned samples (or a file from before the flag): all samples count
    one = {**fit, "samples": aligned + [[1e10, 1.5e-1, 1e8, 0.0]]}
    assert matmul_correction(one, 1e10, 1e8, aligned=False) == pytest.approx(1.5)
    assert matmul_correction(one, 1e10, 1e8) == pytest.approx(1.0)
    old = {**fit, "samples": [s[:3] for s in aligned]}
    assert matmul_correction(old, 3e8, 3e6, aligned=False) == pytest.approx(1.0)


@pytest.mark.parametrize(("shape", "dtype", "aligned"), [
    ((128, 50257), torch.float32, False),  # GPT-2's vocabulary
    ((128, 50304), torch.float32, True),   # nanoGPT's padded one
    ((127, 768), torch.float32, True),     # only the row length counts
    ((128, 8), torch.float32, True),       # rows within one cache line
    ((12, 128, 36), torch.float16, False),
    ((12, 128, 32), torch.float16, True),
])
def test_matrix_products_record_whether_their_output_rows_are_aligned(shape, dtype, aligned):
    from autopart.costmodel.ops import CostRecorder

    *batch, m, n = shape
    a = torch.empty(*batch, m, 64, dtype=dtype, device="meta")
    b = torch.empty(*batch, 64, n, dtype=dtype, device="meta")
    recorder = CostRecorder()
    with recorder:
        (torch.bmm if batch else torch.mm)(a, b)
        torch.add(a, 1)
    (mm, add) = recorder.ops
    assert (mm.kind, mm.aligned) == ("matmul", aligned)
    assert add.aligned  # the flag is for matrix products only


def test_a_calibrated_matmul_is_scaled_by_its_correction():
    dev = _calibrated_device()
    fit = dev.measured["calibration"]["classes"]["matmul"]
    fit["samples"] = [[1e9, 2 * (2e-5 + 1e9 / 5e11), 2e6], [1e6, 2e-5 + 1e6 / 5e11, 1e3]]
    mm = OpCost(flops=10**9, bytes_read=10**6, bytes_written=10**6, launches=1, dtype="float32", kind="matmul")
    assert roofline_time_s(mm, dev) == pytest.approx(2 * (2e-5 + 1e9 / 5e11))


def test_calibrating_this_cpu_fits_every_class():
    cal = calibrate_device("cpu", budget_s=1.0)
    assert set(cal["classes"]) | set(cal["failed"]) == {
        "matmul", "transcendental", "reduction", "copy", "elementwise",
        "transcendental:tanh", "transcendental:gelu", "transcendental:silu", "transcendental:exp",
        "reduction:max_pool2d_with_indices", "elementwise:native_batch_norm", "matmul:attention",
        "matmul:convolution", "matmul:convolution_backward",
        "reduction:_softmax", "reduction:native_layer_norm", "optimizer:adam", "optimizer:sgd",
    }
    for fit in cal["classes"].values():
        assert fit["rate"] > 0 and fit["overhead_s"] >= 0 and len(fit["samples"]) >= 3
    assert cal["classes"]["matmul"]["unit"] == "FLOP"
    samples = cal["classes"]["matmul"]["samples"]
    assert all(len(sample) == 4 for sample in samples)  # FLOPs, s, bytes, rows aligned
    assert 2 <= sum(s[3] == 0.0 for s in samples) < len(samples) - 2  # both kinds to correct from
    with pytest.raises(ValueError, match="budget_s must be > 0"):
        calibrate_device("cpu", budget_s=0)
