"""Partition schedule (host lane on a worker thread, fill-drain micro-batches) and micro-batch
splitting, on the CPU: values compared with eager, order and lanes read from the trace."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
import torch.fx
from _util import make_device, make_topology
from torch import nn
from torch.fx.passes.split_module import split_module

import autopart
from autopart.passes import propagate_shapes_pass
from autopart.pipeline import BatchSpec, PartitionSchedule, auto_microbatches, batch_spec, outputs_match

THREADS: list[str] = []


@torch.fx.wrap
def where_am_i(x: torch.Tensor) -> torch.Tensor:
    """Identity that records the thread it ran on."""
    THREADS.append(threading.current_thread().name)
    return x


class Chain(nn.Module):
    """Linear + tanh layers; ``record`` (for FX tracing only) logs each layer's thread."""

    def __init__(self, width: int = 16, depth: int = 3, record: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.record = record

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
            if self.record:
                x = where_am_i(x)
        return x


def split_per_layer(model: nn.Module) -> torch.fx.GraphModule:
    """One partition per layer of ``Chain`` (the rest goes with its layer)."""
    gm = torch.fx.symbolic_trace(model)
    part, current = {}, 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target != "layers.0":
            current += 1
        part[node] = current
    return split_module(gm, gm, lambda n: part[n], keep_original_order=True)


@pytest.fixture(autouse=True)
def _fresh(fresh_dynamo):
    THREADS.clear()


def test_host_partitions_run_on_the_worker_thread_and_match():
    torch.manual_seed(0)
    model = Chain(record=True)
    split = split_per_layer(model)
    schedule = PartitionSchedule(split, host_partitions={"submod_1"})
    assert schedule.concurrent
    x = torch.randn(4, 16)
    trace = []
    out = schedule.run([[x]], trace)[0]
    torch.testing.assert_close(out, model(x))
    assert [lane for _, _, lane in trace] == ["main", "host", "main"]
    assert THREADS[0] == THREADS[2] == threading.current_thread().name
    assert THREADS[1].startswith("autopart-host")
    schedule.close()


def test_one_lane_runs_the_split_graph_directly():
    model = Chain(record=True)
    schedule = PartitionSchedule(split_per_layer(model), host_partitions=set())
    assert not schedule.concurrent
    x = torch.randn(2, 16)
    torch.testing.assert_close(schedule.run([[x]])[0], model(x))
    assert set(THREADS) == {threading.current_thread().name}


def test_microbatches_issue_in_fill_drain_order():
    torch.manual_seed(0)
    model = Chain(depth=3)
    schedule = PartitionSchedule(split_per_layer(model), host_partitions={"submod_1"})
    x = torch.randn(8, 16)
    trace = []
    outs = schedule.run([[c] for c in x.chunk(4)], trace)
    torch.testing.assert_close(torch.cat(outs), model(x))
    # GPipe: stage s of micro-batch m at step m + s; main-lane steps in that order, host steps
    # in that order on their own lane.
    stage = {"submod_0": 0, "submod_1": 1, "submod_2": 2}
    for lane in ("main", "host"):
        steps = [(m + stage[p], stage[p]) for m, p, ln in trace if ln == lane]
        assert steps == sorted(steps)
    assert sorted((m, p) for m, p, _ in trace) == sorted((m, p) for m in range(4) for p in stage)
    # micro-batch 1's first stage is issued before micro-batch 0's last stage
    assert trace.index((1, "submod_0", "main")) < trace.index((0, "submod_2", "main"))


def test_grad_mode_reaches_the_worker_and_gradients_match():
    torch.manual_seed(0)
    model = Chain()
    schedule = PartitionSchedule(split_per_layer(model), host_partitions={"submod_0", "submod_2"})
    x = torch.randn(6, 16, requires_grad=True)
    with torch.no_grad():
        assert not schedule.run([[x]])[0].requires_grad
    out = torch.cat(schedule.run([[c] for c in x.chunk(3)]))
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    model(x).square().sum().backward()
    for got, want in zip(grads, [*[p.grad for p in model.parameters()], x.grad]):
        torch.testing.assert_close(got, want)


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom in a host partition")


def test_an_error_on_the_host_lane_reaches_the_caller():
    model = Chain(depth=2)
    split = split_per_layer(model)
    split.submod_1 = _Boom()
    schedule = PartitionSchedule(split, host_partitions={"submod_1"})
    with pytest.raises(RuntimeError, match="boom in a host partition"):
        schedule.run([[torch.randn(2, 16)]])


# --------------------------------------------------------------------------- batch spec


def _capture(model, *inputs, dynamic_dim0=True, dynamic=None):
    graphs = []

    def grab(gm, example_inputs):
        propagate_shapes_pass(gm, example_inputs)  # records which inputs are parameters
        graphs.append(gm)
        return gm.forward

    if dynamic_dim0:  # the first input with dims
        torch._dynamo.mark_dynamic(next(t for t in inputs if t.dim()), 0)
    torch.compile(model, backend=grab, dynamic=dynamic)(*inputs)
    return graphs[0]


def test_batch_spec_of_a_dynamic_graph():
    model = Chain()
    x, bias = torch.randn(8, 16), torch.randn(16)
    gm = _capture(lambda x, b: (model(x) + b, b * 2), x, bias)
    spec = batch_spec(gm)
    assert not isinstance(spec, str), spec
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert [placeholders[i].name for i in spec.tensor_inputs] == ["l_x_"]
    assert spec.outputs == (True, False)


def test_batch_spec_refuses_a_static_batch_and_a_reduced_output():
    model = Chain()
    assert "static" in batch_spec(_capture(model, torch.randn(4, 16), dynamic_dim0=False))
    torch._dynamo.reset()
    reason = batch_spec(_capture(lambda x: model(x).view(-1), torch.randn(4, 16)))
    assert "not batched on dim 0" in reason


@pytest.mark.parametrize(
    ("fn", "what"),
    [
        (lambda t, x: x - x.mean(0, keepdim=True), "mean"),  # samples interact
        (lambda t, x: x @ (x.T @ x), "matmul"),
        (lambda t, x: x * x.sum(), "sum"),
    ],
)
def test_batch_spec_refuses_a_reduction_over_the_batch(fn, what):
    reason = batch_spec(_capture(fn, torch.tensor(0.5), torch.randn(4, 16)))
    assert isinstance(reason, str) and f"({what}) makes a tensor without the batch dimension" in reason


def test_the_batch_is_the_first_input_with_a_symbolic_dim_0():
    # a 0-dim input first: the batch is the next one's dim 0
    gm = _capture(lambda t, x: (t * 2) * torch.tanh(x), torch.tensor(0.5), torch.randn(4, 16))
    spec = batch_spec(gm)
    assert not isinstance(spec, str), spec
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert [placeholders[i].name for i in spec.tensor_inputs] == ["l_x_"]


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, m: torch.tanh(x) * (m & (x > 0)),  # operator.and_ is not in place
        lambda x, m: _add_in_place(torch.tanh(x), x),  # an update of a tensor the graph made
        lambda x, m: torch.tanh(x) + x.new_zeros(16),  # new_zeros reads only dtype and device
    ],
)
def test_batch_spec_accepts_per_sample_graphs(fn):
    spec = batch_spec(_capture(fn, torch.randn(4, 16), torch.rand(16) > 0.5))
    assert not isinstance(spec, str), spec


def _add_in_place(out, x):
    out += x
    out[:, 0] = 0
    return out


def test_batch_spec_refuses_in_place_updates():
    counter = torch.zeros(())

    def counts(x):
        counter[...] = counter + 1  # operator.setitem on a global tensor
        return x * 2

    assert "updates tensors in place" in batch_spec(_capture(counts, torch.randn(4, 16)))


def test_batch_spec_split_and_merge_round_trip():
    spec = BatchSpec(tensor_inputs=(0,), size_inputs=(2,), outputs=(True, False))
    x, w = torch.arange(10.0).reshape(5, 2), torch.ones(2)
    parts = spec.split([x, w, 5], 2)
    assert [p[0].shape[0] for p in parts] == [3, 2] and [p[2] for p in parts] == [3, 2]
    assert all(p[1] is w for p in parts)
    merged = spec.merge([(p[0] * 2, "same") for p in parts])
    torch.testing.assert_close(merged[0], x * 2)
    assert merged[1] == "same"


def test_outputs_match_tolerates_rounding_not_errors():
    a = torch.randn(4, 8)
    assert outputs_match((a, 3), (a + 1e-6, 3))
    assert not outputs_match((a,), (a + 0.1,))
    assert not outputs_match((a, 3), (a, 4))


def test_auto_microbatches():
    assert auto_microbatches(3, 64) == 12
    assert auto_microbatches(3, 5) == 5


# --------------------------------------------------------------------------- end to end


def hetero_topology():
    """A CPU as fast as the GPU, so that a plan splits work between them."""
    return make_topology([make_device("cpu", tflops=5), make_device("cuda:0", tflops=5),
                          make_device("cuda:1", tflops=5)], link_gbps=50)


def _options(model: nn.Module, **extra) -> dict:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    options = dict(topology=hetero_topology(), device_map="cpu", strict=True,
                   max_memory={d: int(weights * 0.6) + 4096 for d in ("cpu", "cuda:0", "cuda:1")})
    options.update(extra)
    return options


def test_microbatched_plan_matches_eager_with_gradients():
    torch.manual_seed(0)
    model = Chain(width=32, depth=6)
    backend = autopart.backend(**_options(model, num_microbatches=4, optimizer="none"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 32)
    torch._dynamo.mark_dynamic(x, 0)
    for _ in range(2):
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
    comp = backend.compilations[0]
    assert len(comp.plan.devices_used) >= 2, comp.plan.summary()
    assert comp.metrics.num_microbatches == 4
    assert {m for m, _, _ in comp.metrics.last_schedule} == {0, 1, 2, 3}
    assert "cpu" in comp.plan.devices_used  # the CPU's partitions ran on the host lane
    assert comp.metrics.num_host_steps > 0
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for got, p in zip(grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


def test_microbatches_refused_for_a_static_batch_with_a_warning():
    model = Chain()
    backend = autopart.backend(**_options(model, num_microbatches=2, optimizer="none"))
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(model, backend=backend)(x)
    torch.testing.assert_close(out, model(x))
    messages = [str(w.message) for w in caught if issubclass(w.category, autopart.AutopartWarning)]
    assert any("static" in m and "num_microbatches=2" in m for m in messages), messages
    assert backend.compilations[0].metrics.num_microbatches == 1


class MixesSamples(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.softmax(h, dim=0))  # every sample depends on the whole batch


@pytest.mark.parametrize("warm_up", [None, torch.ones(8, 16)])
def test_microbatches_dropped_when_samples_interact(warm_up):
    """Found on the first call whose samples differ: a warm-up batch of alike samples cannot
    show that they interact."""
    torch.manual_seed(0)
    model = MixesSamples()
    backend = autopart.backend(**_options(model, num_microbatches=2, optimizer="none"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 16)
    torch._dynamo.mark_dynamic(x, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if warm_up is not None:
            torch._dynamo.mark_dynamic(warm_up, 0)
            torch.testing.assert_close(compiled(warm_up), model(warm_up))
            assert not caught
        first = compiled(x)
    assert any("outputs differ" in str(w.message) for w in caught)
    torch.testing.assert_close(first, model(x))
    torch.testing.assert_close(compiled(x), model(x))
    assert backend.compilations[0].metrics.num_microbatches == 1


class CountsCalls(Chain):
    def __init__(self) -> None:
        super().__init__(width=32, depth=6)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls[...] = self.calls + 1  # operator.setitem on a buffer
        return super().forward(x)


def test_microbatches_refused_for_a_graph_that_updates_a_buffer():
    model = CountsCalls()
    backend = autopart.backend(**_options(model, num_microbatches=4))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 32)
    torch._dynamo.mark_dynamic(x, 0)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        for _ in range(3):
            compiled(x)
    assert model.calls.item() == 3  # once per call, as in eager
    assert any("updates tensors in place" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert backend.compilations[0].metrics.num_microbatches == 1


def test_throughput_plans_pick_microbatches_themselves():
    torch.manual_seed(0)
    model = Chain(width=32, depth=6)
    backend = autopart.backend(**_options(model, objective="throughput"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(32, 32)
    torch._dynamo.mark_dynamic(x, 0)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    comp = backend.compilations[0]
    assert comp.metrics.num_microbatches == auto_microbatches(len(comp.plan.devices_used), 32)


def test_throughput_plans_that_stream_weights_run_whole_batches(tmp_path):
    # Two fast GPUs holding 40% of the weights each and a slow host: the plan streams
    # weights, which each micro-batch would copy again; the plan counts one copy per call.
    torch.manual_seed(0)
    model = Chain(width=64, depth=8)
    topo = make_topology([make_device("cpu", overhead_s=1e-3), make_device("cuda:0", overhead_s=1e-6),
                          make_device("cuda:1", overhead_s=1e-6)], latency_s=1e-6)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    backend = autopart.backend(topology=topo, device_map="cpu", strict=True, objective="throughput",
                               max_memory={"cpu": 10**7, "cuda:0": int(weights * 0.4), "cuda:1": int(weights * 0.4)})
    x = torch.randn(32, 64)
    torch._dynamo.mark_dynamic(x, 0)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for _ in range(2):  # the first call runs the whole batch, then checks the split
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    comp = backend.compilations[0]
    assert len(comp.plan.devices_used) >= 2 and any(t.streamed_from for t in comp.plan.tasks), comp.plan.summary()
    assert comp.metrics.num_microbatches == 1
    # the copy of a task's streamed weights is its time too, and shown
    assert all((t.stream_time_s > 0) == bool(t.streamed_from) for t in comp.plan.tasks if t.resident_bytes)
    streamed = next(t for t in comp.plan.tasks if t.streamed_from)
    assert f"+ {streamed.stream_time_s * 1e3:.3f} ms copy" in comp.explain()
    comp.plot(tmp_path / "plan.png")  # hatched copies in the timeline
    assert (tmp_path / "plan.png").stat().st_size > 0


def test_num_microbatches_must_be_positive():
    with pytest.raises(ValueError, match="num_microbatches must be a positive int"):
        autopart.Config(num_microbatches=0)


def test_batch_spec_refuses_random_ops():
    class Noisy(nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5, True)

    reason = batch_spec(_capture(Noisy(), torch.randn(4, 16)))
    assert "draws random numbers" in reason


def test_the_worker_thread_ends_with_its_schedule():
    import gc

    before = set(threading.enumerate())
    schedule = PartitionSchedule(split_per_layer(Chain()), host_partitions={"submod_1"})
    schedule.run([[torch.randn(2, 16)]])
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name.startswith("autopart-host")]
    del schedule
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_refuses_micro_batches_only_in_training(training):
    """Batch norm updates its running statistics in place only in training mode; in eval mode
    it reads them, and a batch splits."""
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).train(training)
    with torch.set_grad_enabled(training):
        spec = batch_spec(_capture(model, torch.randn(6, 4, 5, 5)))
    assert isinstance(spec, str) == training, spec
    if training:
        assert "in place" in spec


def test_host_partitions_run_under_the_callers_autocast():
    """Autocast is thread-local: the worker thread running host partitions enters the caller's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1024), nn.Linear(1024, 64), nn.Linear(64, 64), nn.Linear(64, 64))
    backend = autopart.backend(topology="4xa100-pcie-cpu", device_map="cpu", strict=True,
                               max_memory={"cuda:0": 620_000, "cpu": 40_000})  # the small layers on the host
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = compiled(x), model(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    comp = backend.compilations[-1]
    assert {"cpu", "cuda:0"} <= set(comp.plan.devices_used) and comp.metrics.num_host_steps >= 1


class TwoNoisyBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(64, 256), nn.Dropout(0.5), nn.Linear(256, 64))
        self.b = nn.Sequential(nn.Linear(64, 256), nn.Dropout(0.5), nn.Linear(256, 64))

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_random_ops_draw_in_eagers_order_when_both_lanes_run_on_the_cpu():
    """With host and accelerator partitions both mapped onto the CPU, two lanes would draw from
    one generator at once: a graph with random ops then runs in one lane, and a seed gives
    eager's numbers on every call."""
    torch.manual_seed(0)
    model = TwoNoisyBranches().train()
    weights = sum(p.numel() * 4 for p in model.parameters())
    backend = autopart.backend(topology=hetero_topology(), device_map="cpu", strict=True,
                               max_memory={"cpu": int(weights * 0.8), "cuda:0": int(weights * 0.8)})
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(32, 64)
    with torch.no_grad():  # dropout still draws: the model is in train mode
        for _ in range(5):
            torch.manual_seed(123)
            out = compiled(x)
            torch.manual_seed(123)
            torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    (comp,) = backend.compilations
    assert {"cpu", "cuda:0"} <= set(comp.plan.devices_used)
    assert not comp.runner.schedule.concurrent and comp.metrics.num_host_steps == 0


def test_a_batch_size_equal_to_an_image_size_is_explained_and_the_fix_works():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    reason = batch_spec(_capture(model, torch.randn(8, 4, 8, 8), dynamic_dim0=False, dynamic=True))
    assert "duck sizing" in reason and "mark_dynamic(x, 0)" in reason and "use_duck_shape = False" in reason
    torch._dynamo.reset()
    assert not isinstance(batch_spec(_capture(model, torch.randn(8, 4, 8, 8), dynamic=True)), str)  # marked
    torch._dynamo.reset()
    with torch.fx.experimental._config.patch(use_duck_shape=False):
        spec = batch_spec(_capture(model, torch.randn(8, 4, 8, 8), dynamic_dim0=False, dynamic=True))
    assert not isinstance(spec, str), spec


class Region(nn.Module):
    """Six layers; the middle two run in a ``mode`` region of the forward (``"no_grad"`` or
    ``"inference"``), whose result joins the rest."""

    def __init__(self, mode: str, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(6))
        self.mode = torch.no_grad if mode == "no_grad" else torch.inference_mode

    def forward(self, x):
        h = torch.tanh(self.layers[1](torch.tanh(self.layers[0](x))))
        with self.mode():
            g = torch.tanh(self.layers[3](torch.tanh(self.layers[2](h))))
        h = h + g
        return torch.tanh(self.layers[5](torch.tanh(self.layers[4](h))))


def _eager_grads(model, x) -> list[torch.Tensor]:
    model.zero_grad()
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("num_microbatches", [1, 4])
def test_a_no_grad_region_in_the_forward_leaves_the_callers_grad_mode(num_microbatches):
    """split_module sets grad mode at the start of the partitions inside the region, but not back
    at their end: a partition on the main thread that ends in the region used to leave grad
    mode off for the caller, and a later micro-batch's first partition ran without grad."""
    torch.manual_seed(0)
    model = Region("no_grad")
    backend = autopart.backend(**_options(model, num_microbatches=num_microbatches, optimizer="none"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 32)
    torch._dynamo.mark_dynamic(x, 0)
    for _ in range(2):
        compiled.zero_grad()
        compiled(x).square().sum().backward()
        assert torch.is_grad_enabled()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        for got, want in zip(grads, _eager_grads(model, x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (comp,) = backend.compilations
    assert comp.runner.schedule.concurrent and comp.metrics.num_microbatches == num_microbatches


def test_an_inference_mode_region_keeps_the_graph_in_the_calling_thread():
    """split_module does not carry inference mode into later partitions, and its region's enter
    and exit may fall in partitions of two threads: such a graph runs in one thread, whole."""
    torch.manual_seed(0)
    model = Region("inference")
    backend = autopart.backend(**_options(model, optimizer="none"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 32)
    out = compiled(x)  # with grad: saves no inference tensor from the region for backward
    torch.testing.assert_close(out, model(x))
    assert out.requires_grad and not torch.is_inference_mode_enabled()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    compiled(x).sum().backward()
    for comp in backend.compilations:
        assert len(comp.plan.devices_used) >= 2 and not comp.runner.schedule.concurrent
    assert "inference mode" in batch_spec(_capture(Region("inference"), torch.randn(8, 32)))


def test_saved_tensor_hooks_apply_to_host_partitions():
    """Saved-tensor hooks are thread-local: partitions on the worker thread run under the
    caller's (a hook that zeroes what it unpacks changes the gradients as in eager)."""
    torch.manual_seed(0)
    model = Chain(width=32, depth=6)
    backend = autopart.backend(**_options(model, optimizer="none"))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 32)
    compiled(x)
    counts = {}

    def run(fn):
        packed = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(1) or t, torch.zeros_like):
            out = fn(x)
        model.zero_grad()
        out.square().sum().backward()
        counts[fn] = len(packed)
        return [p.grad.clone() for p in model.parameters()]

    for got, want in zip(run(compiled), run(model), strict=True):
        torch.testing.assert_close(got, want)
    assert counts[compiled] == counts[model] > 0
    assert backend.compilations[0].metrics.num_host_steps > 0


class _AsInductor(nn.Module):
    """Holds a partition's graph as ``.gm``, as ``runtime.InductorPartition`` does."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args):
        return self.gm(*args)


def test_a_graph_that_turns_grad_off_leaves_it_off_also_through_inductor_partitions():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    h = graph.call_function(torch.tanh, (x,))
    graph.call_function(torch._C._set_grad_enabled, (False,))  # never turned back on, as eager leaves it
    graph.output(graph.call_function(torch.neg, (h,)))
    gm = torch.fx.GraphModule(nn.Module(), graph)
    split = split_module(gm, gm, lambda n: 0 if n.target is torch.tanh else 1, keep_original_order=True)
    split.submod_1 = _AsInductor(split.submod_1)
    schedule = PartitionSchedule(split, host_partitions={"submod_0"})
    assert schedule.concurrent and schedule.final_grad is False
    try:
        out = schedule.run([[torch.randn(3, requires_grad=True)]])[0]
        assert not torch.is_grad_enabled() and not out.requires_grad
    finally:
        torch.set_grad_enabled(True)
    schedule.close()
