"""Runtime options end to end on the CPU with mapped devices: the Inductor inner compiler per
partition (kept to one small model: Inductor compiles C++ on the CPU), compared with eager."""

from __future__ import annotations

import copy
import dataclasses
import gc
import re
import threading
import time
import warnings
import weakref

import pytest
import torch
from _util import make_device, make_topology
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._pytree import tree_leaves

import autopart
from autopart.kernels.compression import max_abs_error
from autopart.runtime import InductorPartition, RuntimeMetrics, StaticCopyCache, StaticInputMover

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


class Mlp(nn.Module):
    def __init__(self, width: int = 32, squash: bool = True) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)
        self.squash = squash

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return y.sigmoid() if self.squash else y


def test_inductor_partitions_match_eager_forward_and_backward(capfd):
    """...and Inductor sees the parameters as static inputs, as it does for the graph Dynamo
    captured (it checks their alignment once, not on every call)."""
    torch.manual_seed(0)
    model = Mlp()
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    # training with SGD (weights and gradients, 2x): each GPU holds 1.5x
    backend = autopart.backend(topology=topo, device_map="cpu", inner="inductor", strict=True,
                               optimizer="sgd", max_memory={"cpu": 0, "cuda:0": int(weight_bytes * 1.5),
                                                            "cuda:1": int(weight_bytes * 1.5)})
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 32)
    torch._logging.set_logs(cudagraph_static_inputs=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", autopart.AutopartWarning)  # no partition fell back
            out = compiled(x)
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
            out.sum().backward()
    finally:
        torch._logging.set_logs()
    comp = backend.compilations[0]
    # forward of submod_0(x, a.weight, a.bias) and submod_1(h, b.weight, b.bias)
    assert capfd.readouterr().err.count("static input idxs compile_fx_inner: [1, 2]") == 2, comp.runner.module.code
    assert len(comp.plan.devices_used) >= 2, comp.plan.summary()
    partitions = [m for m in comp.runner.module.children() if isinstance(m, InductorPartition)]
    assert len(partitions) >= 2 and all(p.compiled and p.failed is None and p.static for p in partitions)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for got, p in zip(grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


def test_dynamo_metadata_is_not_given_to_a_partition_holding_parameters():
    """AOTAutograd would look a held parameter's name up among Dynamo's sources (and fail): such
    a partition compiles as before, without the metadata."""
    from autopart.runtime import DynamoMetadata

    captured = torch.fx.symbolic_trace(Mlp())
    captured.meta["dynamo_compile_id"] = "0/0"
    captured._param_name_to_source = {}
    metadata = DynamoMetadata.of(captured)
    assert metadata is not None and DynamoMetadata.of(torch.fx.symbolic_trace(Mlp())) is None
    holding = torch.fx.symbolic_trace(Mlp())  # a.weight, ... as attributes
    metadata.apply(holding)
    assert "dynamo_compile_id" not in holding.meta and not hasattr(holding, "_param_name_to_source")


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


def test_a_plan_on_one_device_runs_the_graph_directly_after_the_first_call():
    torch.manual_seed(0)
    model = Mlp()
    backend = autopart.backend(topology=make_topology([make_device("cpu")]), strict=True)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 32)
    for _ in range(3):
        torch.testing.assert_close(compiled(x), model(x))
    runner = backend.compilations[0].runner
    assert runner._direct == runner.flat.forward
    assert runner.metrics.num_calls == 3 and runner.metrics.num_static_copies == 0


def test_a_plan_over_two_devices_keeps_the_partitioned_path():
    torch.manual_seed(0)
    model = Mlp()
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    backend = autopart.backend(topology=topo, device_map="cpu", strict=True, optimizer="none",
                               max_memory={"cuda:0": int(weight_bytes * 0.8), "cuda:1": int(weight_bytes * 0.8)})
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 32)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), model(x))
    runner = backend.compilations[0].runner
    assert len(runner.plan.devices_used) >= 2 and runner._direct is None


# A CPU device with an index differs from a CPU tensor's device (``cpu``, no index), and
# ``.to()`` to it makes a real copy: a target that reaches the copy cache on a CPU-only machine.
CPU0 = torch.device("cpu", 0)


def test_static_input_mover_copies_inference_tensors():
    """Weights made under ``torch.inference_mode()`` have no version counter: their copies are
    reused while their storage is unchanged. The copies are normal tensors (made outside
    inference mode), so a buffer the graph mutates on its copy is still written back, and a
    normal tensor updated in place under inference mode still gets a fresh copy."""
    metrics = RuntimeMetrics()
    with torch.inference_mode():
        model = nn.Linear(8, 4)
        buffer = torch.zeros(4)
    weight, plain = model.weight, torch.randn(3)
    assert weight.is_inference() and buffer.is_inference() and not plain.is_inference()
    mover = StaticInputMover({0: CPU0, 1: CPU0, 2: CPU0}, metrics)

    with torch.inference_mode():
        args = [weight, buffer, plain]
        mover.move(args)
        first, copy, plain_copy = args
        assert not any(t.is_inference() for t in args) and metrics.num_static_copies == 3
        assert torch.equal(first, weight) and first.data_ptr() != weight.data_ptr()
        copy.add_(1.0)  # the graph updates the buffer on its copy
        mover.write_back()
        assert metrics.num_write_backs == 1 and torch.equal(buffer, torch.ones(4))

        args = [weight, buffer, plain]  # steady state: nothing copied, nothing written back
        mover.move(args)
        mover.write_back()
        assert args[0] is first and args[1] is copy and args[2] is plain_copy
        assert metrics.num_static_copies == 3 and metrics.num_write_backs == 1

        plain.add_(1.0)  # a normal tensor's version counter moves under inference mode too
        weight.data = torch.randn(4, 8)  # new storage: a fresh copy
        args = [weight, buffer, plain]
        mover.move(args)
        assert args[0] is not first and args[1] is copy and args[2] is not plain_copy
        assert torch.equal(args[0], weight) and torch.equal(args[2], plain)
        assert metrics.num_static_copies == 5

    with torch.no_grad():  # called outside inference mode: the same copies
        args = [weight, buffer, plain]
        mover.move(args)
        assert args[1] is copy and metrics.num_static_copies == 5


def test_the_copies_of_a_weight_go_with_it():
    """The copy cache holds its originals weakly: a model deleted frees its copies (and so the
    memory ledger, which watches the originals, frees what it held for them)."""
    cache = StaticCopyCache()
    weight, kept = torch.randn(4, 4), torch.randn(4)
    copy, made = cache.get(weight, CPU0)
    assert made and torch.equal(copy, weight) and cache.get(weight, CPU0) == (copy, False)
    cache.get(kept, CPU0)
    ref = weakref.ref(weight)
    del weight
    gc.collect()
    assert ref() is None and list(cache.entries) == [(id(kept), CPU0)]


def test_a_model_built_under_inference_mode_runs_split_under_inference_mode(monkeypatch):
    """End to end, with one GPU of the plan mapped onto ``cpu:0`` so that the weights placed
    there go through the copy cache (with ``device_map="cpu"`` nothing would be copied)."""
    monkeypatch.setattr("autopart.rewrite.local_devices", lambda: ["cpu", "cpu:0"])
    torch.manual_seed(0)
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh())
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    backend = autopart.backend(topology=topo, device_map={"cpu": "cpu", "cuda:0": "cpu", "cuda:1": "cpu:0"},
                               strict=True, optimizer="none",
                               max_memory={"cpu": 0, "cuda:0": int(weight_bytes * 0.8),
                                           "cuda:1": int(weight_bytes * 0.8)})
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", autopart.AutopartWarning)  # no fallback to the captured graph
        with torch.inference_mode():
            for _ in range(3):
                torch.testing.assert_close(compiled(x), model(x))
    runner = backend.compilations[0].runner
    assert set(runner.plan.devices_used) == {"cuda:0", "cuda:1"} and runner._direct is None
    assert CPU0 in runner.static_moves.values() and runner.metrics.num_static_copies == 2  # first call only


def test_weights_copied_to_another_device_are_copied_again_after_a_fused_optimizer_step(monkeypatch):
    """A fused update (``fused=True``) leaves the version counters as they were; autopart bumps
    them after the step, so that the next call copies the updated weights (one GPU of the plan
    mapped onto ``cpu:0``, whose weights go through the copy cache)."""
    monkeypatch.setattr("autopart.rewrite.local_devices", lambda: ["cpu", "cpu:0"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh())
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    backend = autopart.backend(topology=topo, device_map={"cpu": "cpu", "cuda:0": "cpu", "cuda:1": "cpu:0"},
                               strict=True, max_memory={"cpu": 0, "cuda:0": int(weight_bytes * 0.8),
                                                        "cuda:1": int(weight_bytes * 0.8)})
    compiled = torch.compile(model, backend=backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    x = torch.randn(4, 32)
    for _ in range(3):
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    runner = backend.compilations[0].runner
    assert CPU0 in runner.static_moves.values() and runner.metrics.num_static_copies == 3 * 2


# --------------------------------------------------------------------------- compression


class Wide(nn.Module):
    """Two halves joined by a large activation (batch x 4096 floats)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 4096), nn.Linear(4096, 64)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _slow_link_options(model: nn.Module, link_gbps: float, headroom: int = 2 * 2**20, **extra) -> dict:
    """Two GPUs, each holding one half and ``headroom`` bytes, joined by a link of ``link_gbps``."""
    half = max(p.numel() * 4 for p in model.parameters()) + 2**16
    topo = make_topology([make_device("cpu", tflops=0.001), make_device("cuda:0"), make_device("cuda:1")],
                         link_gbps=link_gbps, latency_s=1e-5)
    return dict(topology=topo, device_map="cpu", strict=True,
                max_memory={"cpu": 10**8, "cuda:0": half + headroom, "cuda:1": half + headroom}, **extra)


@pytest.mark.parametrize("method", ["bf16", "int8"])
def test_compressed_copies_on_a_slow_link_stay_within_the_bound(method):
    torch.manual_seed(0)
    model = Wide().eval()
    x = torch.randn(64, 64)
    plain = autopart.plan_model(model, x, **_slow_link_options(model, 0.1))[0]
    backend = autopart.backend(**_slow_link_options(model, 0.1, compression=method))
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        out = compiled(x)
        want = model(x)
        before, after = model.a(x), torch.tanh(model.a(x))
    plan = backend.plans[0]
    crossing = [t for t in plan.transfers if t.src_device != "cpu" and t.dst_device != "cpu"]
    assert crossing and all(t.compression == method for t in crossing), plan.summary()
    # the user's inputs and outputs cross exactly
    assert all(t.compression == "none" for t in plan.transfers if "cpu" in (t.src_device, t.dst_device))
    assert plan.predicted_time_s < plain.predicted_time_s
    # the solver's objective is the placement's before compression, and says so
    assert plan.compressed and plan.objective == pytest.approx(plain.objective)
    assert "(of the placement before compressing copies)" in plan.summary()
    # the copied activation's error (tanh is 1-Lipschitz) times the second layer's gain
    (copied,) = crossing
    hidden = before if copied.source_node.startswith("linear") else after
    bound = max_abs_error(hidden, method) * model.b.weight.abs().sum(1).max().item()
    assert (out - want).abs().max().item() <= bound + 1e-6
    assert (out - want).abs().max().item() > 0  # it really was compressed


def test_compressed_copies_save_energy_as_they_save_time():
    """Each second a compressed copy saves is a busy second less on the receiving GPU and a
    second less of every powered device's idle draw."""
    model = Wide().eval()
    options = _slow_link_options(model, 0.1)
    options["topology"] = make_topology(
        [make_device("cpu", tflops=0.001, max_power_W=100, idle_power_W=10),
         make_device("cuda:0", max_power_W=300, idle_power_W=30),
         make_device("cuda:1", max_power_W=400, idle_power_W=40)], link_gbps=0.1, latency_s=1e-5)
    plain, packed = (autopart.plan_model(model, torch.randn(64, 64), **options, compression=c)[0]
                     for c in ("none", "bf16"))
    assert packed.placement == plain.placement
    (copied,) = [t for t in packed.transfers if t.compression == "bf16"]
    saved_s = plain.predicted_time_s - packed.predicted_time_s
    receiver_W = {"cuda:0": 300 - 30, "cuda:1": 400 - 40}[copied.dst_device]
    assert saved_s > 0
    assert plain.predicted_energy_J - packed.predicted_energy_J == pytest.approx(saved_s * (receiver_W + 10 + 30 + 40))


def test_a_fast_link_is_not_compressed():
    model = Wide().eval()
    plan = autopart.plan_model(model, torch.randn(64, 64),
                               **_slow_link_options(model, 1000.0, compression="int8"))[0]
    assert plan.transfers and all(t.compression == "none" for t in plan.transfers)


def test_int8_copies_fall_back_to_bf16_where_autograd_needs_them():
    torch.manual_seed(0)
    model = Wide()
    x = torch.randn(64, 64)
    # training with SGD: each GPU also holds its half's gradients and the activations it saves
    half = max(p.numel() * 4 for p in model.parameters())
    backend = autopart.backend(**_slow_link_options(model, 0.1, half + 2**22, compression="int8", optimizer="sgd"))
    torch.compile(model, backend=backend)(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    (crossing,) = [t for t in backend.plans[0].transfers if t.compression != "none"]
    assert crossing.compression == "bf16"  # what is sent, and what the plan costs

    def bf16(h):
        return h.to(torch.bfloat16).to(torch.float32)

    model.zero_grad()  # eager, with the crossing activation rounded to bf16 where the plan cut
    h = model.a(x)
    h = torch.tanh(bf16(h)) if crossing.source_node.startswith("linear") else bf16(torch.tanh(h))
    model.b(h).sum().backward()
    for got, p in zip(grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5)


def test_unknown_compression_is_rejected():
    with pytest.raises(ValueError, match="compression='zstd' is not one of"):
        autopart.Config(compression="zstd")


def test_inductor_partitions_of_a_dynamic_graph_compile_per_signature():
    torch.manual_seed(0)
    model = Mlp(width=8)
    backend = autopart.backend(topology=make_topology([make_device("cpu")]), inner="inductor", strict=True)
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.no_grad():
        for batch in (3, 5):
            x = torch.randn(batch, 8)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    runner = backend.compilations[0].runner
    part = runner.flat  # one device, nothing to move: the captured graph runs directly
    assert isinstance(part, InductorPartition) and runner._direct == part.forward
    assert not part.static and len(part.compiled) == 2


def test_a_static_graph_on_one_device_calls_the_inductor_compiled_graph_itself():
    torch.manual_seed(0)
    model = Mlp(width=8)
    backend = autopart.backend(topology=make_topology([make_device("cpu")]), inner="inductor", strict=True)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(4, 8)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    runner = backend.compilations[0].runner
    assert runner._direct is runner.flat._only is not None
    partitions = [m for m in runner.module.children() if isinstance(m, InductorPartition)]
    assert partitions and not any(p.compiled for p in partitions)  # compiled once, as captured


def _mlp_on_gpus(gpus: int = 2, training: bool = False, squash: bool = True, **options):
    """Mlp compiled for ``gpus`` identical GPUs (mapped onto the CPU), each holding one of its
    two linears: the plan uses two of them. ``training``: room for Adam's training memory (a
    parameter, its gradient, two state tensors and the update's two temporaries), for calls with
    gradients."""
    torch.manual_seed(0)
    model = Mlp(squash=squash).eval()
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    topo = make_topology([make_device("cpu"), *(make_device(f"cuda:{i}") for i in range(gpus))])
    cap = int(weight_bytes * (6 if training else 1) * 0.75)
    backend = autopart.backend(topology=topo, device_map="cpu",
                               max_memory={"cpu": 0, **{f"cuda:{i}": cap for i in range(gpus)}}, **options)
    return model, backend, torch.compile(model, backend=backend)


def test_a_fused_step_bumps_only_the_versions_of_weights_autopart_copied():
    """After a fused step, a backward through a graph that saved a parameter runs as in plain
    torch (it would raise had the step bumped that parameter's version)."""
    StaticCopyCache().get(torch.randn(4), CPU0)  # autopart has copied something: its hook is on
    model = nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    loss = model(torch.randn(2, 4)).sum()
    loss.backward(retain_graph=True)
    versions = [p._version for p in model.parameters()]
    optimizer.step()
    assert [p._version for p in model.parameters()] == versions
    loss.backward()  # the saved weight is unchanged as far as autograd knows, as without autopart


def test_models_compiled_one_after_another_leave_nothing_behind():
    """A sweep: each new model reuses the graph with its own parameters, a plan of its own; a
    deleted model's plan is forgotten, and its worker thread stopped, when the next comes."""
    model, backend, _ = _mlp_on_gpus(3)
    x = torch.randn(8, 32)
    workers = threading.active_count()

    def run(model: nn.Module) -> None:
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))

    run(model)
    del model
    for _ in range(5):
        run(Mlp().eval())
        gc.collect()
    assert len(backend.compilations) <= 2  # the graph's own, and the last model's
    assert threading.active_count() <= workers + 2


def test_a_model_that_could_not_be_planned_is_forgotten_too():
    """Two GPUs full with the first model: later ones run as captured, with a warning, and a
    deleted one's compilation leaves ``compilations`` as a planned one's does."""
    model, backend, _ = _mlp_on_gpus(2)
    x = torch.randn(8, 32)
    with torch.no_grad():
        torch.compile(model, backend=backend)(x)
        for _ in range(3):
            other = Mlp().eval()
            with pytest.warns(autopart.AutopartWarning, match="could not plan"):
                torch.testing.assert_close(torch.compile(other, backend=backend)(x), other(x))
            del other
            gc.collect()
    assert len(backend.compilations) <= 2


def _inference_plan() -> autopart.Plan:
    """The plan of ``_mlp_on_gpus()`` after one call: two GPUs, with copies between them."""
    model, backend, compiled = _mlp_on_gpus()
    with torch.no_grad():
        compiled(torch.randn(8, 32))
    (comp,) = backend.compilations
    assert len(comp.plan.devices_used) >= 2 and comp.plan.transfers
    return comp.plan


def test_monitor_times_each_device_and_reports_against_the_plan():
    """Each partition's time goes to its device: a 100 ms delay added to one partition shows on
    that device alone; the first call is not timed; outputs match eager."""
    model, backend, compiled = _mlp_on_gpus(strict=True, monitor=True)
    x = torch.randn(8, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
        (comp,) = backend.compilations
        with pytest.raises(ValueError, match="no timed call yet"):
            comp.report()
        devices = comp.runner.partition_devices
        slow_part = next(p for p, d in devices.items() if d == "cuda:1")
        comp.runner.module.get_submodule(slow_part).register_forward_pre_hook(lambda *_: time.sleep(0.1))
        for _ in range(3):
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert comp.metrics.num_calls == 4 and comp.metrics.num_monitored_calls == 3
    busy = comp.runner.measured_busy_s()
    assert set(busy) == set(devices.values()) >= {"cuda:0", "cuda:1"}
    assert busy["cuda:1"] >= 0.1 and busy["cuda:0"] > 0
    assert busy["cuda:1"] - busy["cuda:0"] > 0.05  # the delay is cuda:1's alone (a load slows both)
    assert comp.metrics.monitored_call_s / 3 >= busy["cuda:1"]
    report = comp.report()
    assert "mean of 3 timed call(s)" in report
    row = next(line.split() for line in report.splitlines() if line.startswith("cuda:1"))
    predicted = comp.plan.predicted_busy_s["cuda:1"]
    assert row[1:] == ["cpu", f"{predicted * 1e3:.3f}", "ms", f"{busy['cuda:1'] * 1e3:.3f}", "ms",
                       f"{busy['cuda:1'] / predicted:.2f}x"]


def test_monitor_leaves_out_the_time_inductor_spends_compiling(monkeypatch):
    """A dynamic graph's Inductor partitions compile again for a new batch size, inside a timed
    call: that time is not the devices' (Inductor is stood in for by a 0.2 s compile)."""

    def slow_compile(gm, example_inputs):
        time.sleep(0.2)
        return gm.forward

    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx", slow_compile)
    model, backend, _ = _mlp_on_gpus(strict=True, monitor=True, inner="inductor")
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.no_grad():
        for batch in (8, 8, 5):  # the first call is not timed; the third compiles
            x = torch.randn(batch, 32)
            torch.testing.assert_close(compiled(x), model(x))
    (comp,) = backend.compilations
    assert comp.metrics.num_monitored_calls == 2
    # the first (untimed) call's compile is not taken from a timed call's time either
    assert all(0 < s < 0.1 for s in comp.runner.measured_busy_s().values()), comp.runner.measured_busy_s()
    assert 0 < comp.metrics.monitored_call_s / comp.metrics.num_monitored_calls < 0.1


def _slow_backward(comp, device: str, seconds: float) -> None:
    """Add ``seconds`` to the backward of ``device``'s partitions: a pre-hook on each output's
    autograd node, put there after the timer's own (so inside what it times)."""

    def delay(_module, _args, output):
        for t in tree_leaves(output):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                t.grad_fn.register_prehook(lambda _: time.sleep(seconds))

    for part, d in comp.runner.partition_devices.items():
        if d == device:
            comp.runner.module.get_submodule(part).register_forward_hook(delay)


def test_monitor_times_the_backward_of_each_device():
    """A training step: each device's partitions' backward goes to that device; 100 ms added to
    one device's backward shows there alone; a call whose backward never runs adds no backward
    pass; an in-place update of the output is still allowed; gradients match eager."""
    model, backend, compiled = _mlp_on_gpus(training=True, squash=False, strict=True, monitor=True)
    reference = copy.deepcopy(model)
    x = torch.randn(8, 32)
    compiled(x).sum().backward()  # the first call: not timed
    (comp,) = backend.compilations
    plan = comp.plan
    assert set(plan.devices_used) >= {"cuda:0", "cuda:1"}
    assert all(plan.predicted_backward_busy_s[d] > 0 for d in ("cuda:0", "cuda:1"))
    _slow_backward(comp, "cuda:1", 0.1)
    compiled(x)  # timed; its backward never runs
    for _ in range(2):
        compiled(x).mul_(3).sum().backward()
    reference(x).sum().backward()
    for _ in range(2):
        reference(x).mul_(3).sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    busy, span_s, passes = comp.runner.measured_backward_s()
    assert passes == 2
    assert busy["cuda:1"] >= 0.1 and busy["cuda:0"] > 0
    assert busy["cuda:1"] - busy["cuda:0"] > 0.05  # the delay is cuda:1's alone (a load slows both)
    assert span_s >= busy["cuda:1"]
    report = comp.report()
    assert "mean of 3 timed call(s); backward: mean of 2 pass(es)" in report
    row = next(line.split() for line in report.splitlines() if line.startswith("cuda:1"))
    predicted = plan.predicted_backward_busy_s["cuda:1"]
    assert row[-5:] == [f"{predicted * 1e3:.3f}", "ms", f"{busy['cuda:1'] * 1e3:.3f}", "ms",
                        f"{busy['cuda:1'] / predicted:.2f}x"]
    # the call's backward as predicted: without the optimizer step, which is not timed (a chain)
    call = next(line.split() for line in report.splitlines() if line.startswith("(call)"))
    assert plan.predicted_optimizer_s > 0 and call[-5] == f"{plan.predicted_backward_s * 1e3:.3f}"
    assert plan.predicted_backward_s == pytest.approx(
        plan.predicted_time_s - plan.predicted_forward_s - plan.predicted_optimizer_s)


def test_replan_sees_a_device_slower_than_planned_in_backward_alone():
    """Re-planning a training step weighs its backward too: a GPU whose backward alone runs
    20 ms slower than planned is left out of the new plan; gradients match eager."""
    model, backend, compiled = _mlp_on_gpus(3, training=True, replan=1.5, strict=True)
    reference = copy.deepcopy(model)
    x = torch.randn(8, 32)
    compiled(x).sum().backward()
    (comp,) = backend.compilations
    first = comp.plan
    slow = next(d for d in first.devices_used if d.startswith("cuda"))
    _slow_backward(comp, slow, 0.02)
    for _ in range(autopart.dynamo.REPLAN_CALLS + 2):
        compiled(x).sum().backward()
    for _ in range(autopart.dynamo.REPLAN_CALLS + 3):
        reference(x).sum().backward()
    assert comp.replanned_from is first and comp.replan_note.startswith("re-planned"), comp.replan_note
    assert _replan_spread(comp) > 20
    assert slow in first.devices_used and slow not in comp.plan.devices_used
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_monitor_counts_every_micro_batch():
    """A partition run once per micro-batch adds up: the delay shows once per micro-batch."""
    model, backend, compiled = _mlp_on_gpus(strict=True, monitor=True, num_microbatches=4)
    torch._dynamo.mark_dynamic(x := torch.randn(8, 32), 0)
    with torch.no_grad():
        compiled(x)
        (comp,) = backend.compilations
        part = next(p for p, d in comp.runner.partition_devices.items() if d == "cuda:0")
        comp.runner.module.get_submodule(part).register_forward_pre_hook(lambda *_: time.sleep(0.01))
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
    assert comp.metrics.num_microbatches == 4
    assert comp.runner.measured_busy_s()["cuda:0"] >= 0.04


def test_report_needs_monitor():
    _, backend, compiled = _mlp_on_gpus(strict=True)
    with torch.no_grad():
        compiled(torch.randn(8, 32))
        compiled(torch.randn(8, 32))
    (comp,) = backend.compilations
    with pytest.raises(ValueError, match=r"not monitored: compile with autopart.backend\(monitor=True\)"):
        comp.report()
    assert comp.runner.measured_busy_s() == {}


def _slow_down(comp, device: str, seconds: float) -> None:
    for part, d in comp.runner.partition_devices.items():
        if d == device:
            comp.runner.module.get_submodule(part).register_forward_pre_hook(lambda *_: time.sleep(seconds))


def _replan_spread(comp) -> float:
    """The measured/predicted spread the re-planning note gives."""
    return float(re.search(r"spread ([0-9.]+)x", comp.replan_note).group(1))


def test_replan_moves_work_off_a_device_slower_than_planned():
    """A GPU that runs 20 ms slower than its plan says is left out of the new plan; outputs
    match eager before and after, and the ledger follows the parameters to their new device."""
    model, backend, compiled = _mlp_on_gpus(3, replan=1.5, strict=True)
    x = torch.randn(8, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
        (comp,) = backend.compilations
        first = comp.plan
        slow = next(d for d in first.devices_used if d.startswith("cuda"))
        _slow_down(comp, slow, 0.02)
        for _ in range(autopart.dynamo.REPLAN_CALLS + 2):
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert comp.replanned_from is first and comp.replan_note.startswith("re-planned"), comp.replan_note
    assert _replan_spread(comp) > 20  # the 20 ms, not the noise of timing microsecond partitions
    assert slow in first.devices_used and slow not in comp.plan.devices_used
    assert len([d for d in comp.plan.devices_used if d.startswith("cuda")]) == 2
    assert comp.runner.metrics.num_calls == 2  # the new plan ran the last two calls
    ledger = backend._ledger
    held = {ledger.device_of(p) for p in model.parameters()}
    assert held == {d for d in comp.plan.devices_used if d.startswith("cuda")} and slow not in held


def test_a_failing_replanned_graph_falls_back_to_the_first_plan(monkeypatch):
    model, backend, compiled = _mlp_on_gpus(3, replan=1.5)
    x = torch.randn(8, 32)
    with torch.no_grad():
        compiled(x)
        (comp,) = backend.compilations
        first, first_runner, first_problem = comp.plan, comp.runner, comp.problem
        _slow_down(comp, next(d for d in first.devices_used if d.startswith("cuda")), 0.02)
        for _ in range(autopart.dynamo.REPLAN_CALLS):
            compiled(x)
        assert comp.replanned_from is first
        monkeypatch.setattr(comp.runner, "_call", lambda args: 1 / 0)
        assert comp.problem is not first_problem  # the new plan's: scaled by the measured ratios
        with pytest.warns(autopart.AutopartWarning, match="re-planned graph's first call failed: ZeroDivisionError.*plan before it"):
            out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
        assert comp.plan is first and comp.runner is first_runner and comp.replanned_from is None
        assert comp.problem is first_problem and comp.replan_checked  # re-planning stops
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


def test_a_failing_first_call_falls_back_to_the_captured_graph(monkeypatch):
    model, backend, compiled = _mlp_on_gpus(3)
    monkeypatch.setattr(autopart.runtime.PlacedGraph, "_call", lambda self, args: 1 / 0)
    x = torch.randn(8, 32)
    with torch.no_grad(), pytest.warns(autopart.AutopartWarning, match="first call failed: ZeroDivisionError.*captured graph"):
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert backend.compilations[0].fallback_reason.startswith("its first call failed")


def test_replan_factors_scale_by_measured_over_predicted():
    _, backend, compiled = _mlp_on_gpus(3)
    with torch.no_grad():
        compiled(torch.randn(8, 32))
    plan = backend.compilations[0].plan
    a, b = (d for d in plan.devices_used if d.startswith("cuda"))
    idle = next(d for d in ("cuda:0", "cuda:1", "cuda:2") if d not in (a, b))
    plan = dataclasses.replace(plan, predicted_busy_s={a: 1e-3, b: 1e-3, "cpu": 1e-5})  # cpu: too short
    factors, spread = autopart.dynamo.replan_factors(plan, {a: 3e-3, b: 1.5e-3, "cpu": 1.0})
    assert factors[a] == pytest.approx(3) and factors[b] == pytest.approx(1.5)
    assert factors[idle] == factors["cpu"] == pytest.approx(1.5)  # the lower median of a's and b's
    assert spread == pytest.approx(2)
    assert autopart.dynamo.replan_factors(plan, {}) == ({}, 1.0)
    step = dataclasses.replace(plan, predicted_backward_busy_s={a: 2e-3, b: 1e-3})
    step_factors, step_spread = autopart.dynamo.replan_factors(step, {a: 3e-3, b: 1.5e-3}, {a: 6e-3, b: 1e-3})
    assert step_factors[a] == pytest.approx((3 + 6) / (1 + 2)) and step_factors[b] == pytest.approx((1.5 + 1) / (1 + 1))
    assert step_spread == pytest.approx(3 / 1.25)
    assert autopart.dynamo.replan_factors(step, {a: 3e-3, b: 1.5e-3}) == (factors, spread)  # no backward ran
    scaled = backend.compilations[0].problem.scaled(factors)
    for before, after in zip(backend.compilations[0].problem.tasks, scaled.tasks):
        assert after.time_s == {d: s * factors.get(d, 1.0) for d, s in before.time_s.items()}


def test_replan_must_be_a_factor_above_one():
    with pytest.raises(ValueError, match=r"replan must be a factor > 1 .* got 0.5"):
        autopart.backend(replan=0.5)


@settings(max_examples=50, deadline=None)
@given(
    busy=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=4),
    ratios=st.lists(st.floats(0.1, 10.0), min_size=4, max_size=4),
    common=st.floats(0.1, 10.0),
)
def test_replan_factors_invariants(busy, ratios, common):
    """Each measured device's factor is its measured/predicted ratio; slowing every device by
    one common factor scales the factors by it and leaves the spread (what triggers a re-plan)."""
    devices = [f"cuda:{i}" for i in range(len(busy))]
    plan = dataclasses.replace(_PLAN_FOR_FACTORS, predicted_busy_s=dict(zip(devices, busy)),
                               capacity_bytes={d: 1 for d in [*devices, "cpu"]})
    measured = {d: b * r for d, b, r in zip(devices, busy, ratios)}
    factors, spread = autopart.dynamo.replan_factors(plan, measured)
    significant = [d for d, b in zip(devices, busy) if b >= autopart.dynamo.REPLAN_MIN_SHARE * max(busy)]
    for d, r in zip(devices, ratios):
        if d in significant:
            assert factors[d] == pytest.approx(r)
    assert set(factors) == {*devices, "cpu"} and factors["cpu"] in [factors[d] for d in significant]
    assert spread == pytest.approx(max(factors[d] for d in significant) / min(factors[d] for d in significant))
    slower, slower_spread = autopart.dynamo.replan_factors(plan, {d: m * common for d, m in measured.items()})
    assert slower_spread == pytest.approx(spread)
    assert slower == pytest.approx({d: f * common for d, f in factors.items()})


_PLAN_FOR_FACTORS = autopart.Plan(
    graph_name="g", topology_name="t", objective_name="latency", placement={}, tasks=(), transfers=(),
    replicas=(), predicted_time_s=0.0, predicted_compute_s=0.0, predicted_transfer_s=0.0,
    predicted_bottleneck_s=0.0, predicted_energy_J=0.0, predicted_peak_bytes={}, capacity_bytes={},
    solver="none", solver_status="trivial", objective=0.0, bound=None, gap=None, solve_time_s=0.0,
    num_variables=0, num_constraints=0, num_nodes=0,
)


def test_replan_checks_the_new_plan_too_and_measures_a_device_once_it_runs():
    """Four GPUs, each with room for one of the two linears: the first plan uses two. The first
    is slower than planned, so a re-plan moves its work to a GPU the first plan left idle (whose
    ratio was only guessed); that one proves slow too once it runs, so a second re-plan, with
    the ratios of both checks, moves the work to the last GPU. Outputs match eager throughout."""
    model, backend, compiled = _mlp_on_gpus(4, replan=1.5, strict=True)
    x = torch.randn(8, 32)
    slow: list[str] = []

    def calls(n: int) -> None:
        for _ in range(n):
            with torch.no_grad():
                torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)

    calls(1)
    (comp,) = backend.compilations
    first = comp.plan
    for round_ in (1, 2):
        runner = comp.runner
        slow.append(next(d for d in comp.plan.devices_used if d.startswith("cuda") and d not in slow))
        for device in slow:  # the new runner's partitions on the slow devices run 20 ms slower
            _slow_down(comp, device, 0.02)
        calls(autopart.dynamo.REPLAN_CALLS + 1)  # the first call of a new plan is not timed
        assert comp.runner is not runner and comp.replan_rounds == round_, comp.replan_note
        assert comp.replan_note.startswith(f"re-planned ({round_} of at most 3)")
        assert _replan_spread(comp) > (20 if round_ == 1 else 1.5)  # later: against guessed ratios
        assert not set(slow) & set(comp.plan.devices_used), (slow, comp.plan.devices_used)
    assert comp.replanned_from is first and not comp.replan_checked
    assert len({d for d in comp.plan.devices_used if d.startswith("cuda")}) == 2
    calls(2)
