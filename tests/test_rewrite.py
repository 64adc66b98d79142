"""Coarsening, rewrite and runtime on random DAGs: every node placed once, capacities held,
same values as the original graph."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.fx
from _util import RandomDag, make_device, make_topology
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopart import Backend, Config
from autopart.coarsen import group_nodes
from autopart.graph import AnnotatedGraph
from autopart.kernels.transfer import start_transfer, transfer, transfer_coalesced, wait_transfer
from autopart.passes import cost_pass, memory_pass, propagate_shapes_pass
from autopart.plan import plan_transfers
from autopart.rewrite import _retarget_devices, rewrite

WIDTH = 8


@st.composite
def dags(draw, max_steps: int = 14):
    n = draw(st.integers(1, max_steps))
    steps = []
    for k in range(n):
        op = draw(st.sampled_from(RandomDag.OPS))
        i = draw(st.integers(0, k))
        j = draw(st.integers(0, k))
        steps.append((op, i, j))
    outputs = sorted(set(draw(st.lists(st.integers(1, n), min_size=1, max_size=3))))
    return RandomDag(steps, WIDTH, outputs)


@st.composite
def topologies(draw):
    n_gpus = draw(st.integers(1, 3))
    devices = [make_device("cpu", tflops=draw(st.floats(0.1, 2)), gbps=draw(st.floats(10, 100)))]
    devices += [
        make_device(f"cuda:{i}", tflops=draw(st.floats(1, 50)), gbps=draw(st.floats(100, 2000)))
        for i in range(n_gpus)
    ]
    return make_topology(devices, link_gbps=draw(st.floats(1, 100)), latency_s=draw(st.floats(0, 2e-5)))


def traced(model: torch.nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    gm = torch.fx.symbolic_trace(model)
    propagate_shapes_pass(gm, [x])
    return gm


def partition_nodes(rewritten) -> list[torch.fx.Node]:
    """The nodes of every partition, in the order they run."""
    return [n for name in rewritten.partition_devices for n in getattr(rewritten.module, name).graph.nodes]


def annotated(model: torch.nn.Module, x: torch.Tensor) -> AnnotatedGraph:
    gm = traced(model, x)
    cost_pass(gm, topology=make_topology([make_device("cpu")]))
    return AnnotatedGraph.from_fx(gm, memory_pass(gm))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), topologies(), st.data())
def test_random_dags_run_placed_and_match(model, topo, data):
    torch.manual_seed(0)
    x = torch.randn(4, WIDTH)
    gm = traced(model, x)
    report = memory_pass(gm)
    # The CPU can hold everything (so a placement exists); GPUs get random, often small, shares.
    caps = {"cpu": 2 * report.peak_bytes + 2**20}
    for name in topo.device_names[1:]:
        caps[name] = int(report.peak_bytes * data.draw(st.floats(0.0, 1.2)))
    backend = Backend(
        Config(
            topology=topo,
            device_map="cpu",
            max_memory=caps,
            max_groups=data.draw(st.integers(1, 8)),
            strict=True,
        )
    )
    runner = backend(gm, [x])
    plan = backend.plans[0]

    compute = [n.name for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    assert set(compute) <= set(plan.placement)
    placed = [name for task in backend.compilations[0].plan.tasks for name in [task.name]]
    assert len(placed) == len(set(placed))
    assert sum(t.num_nodes for t in plan.tasks) == len(plan.placement)
    for dev, cap in plan.capacity_bytes.items():
        if dev in plan.devices_used:
            assert plan.predicted_peak_bytes[dev] <= cap
    for t in plan.transfers:
        assert t.src_device != t.dst_device

    with torch.no_grad():
        expected = model(x)
        for _ in range(2):  # second call: steady state with cached static copies
            got = runner(x)
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(dags(max_steps=20), st.integers(1, 10))
def test_groups_are_contiguous_bounded_and_keep_getitem_with_its_tuple(model, max_groups):
    graph = annotated(model, torch.randn(4, WIDTH))
    compute = [n for n in graph.nodes if n.is_compute]
    groups = group_nodes(compute, lambda n: 1.0, max_groups)
    assert [n for g in groups for n in g] == compute
    assert len(groups) <= max(1, max_groups)
    for g in groups:
        assert not g[0].sticky
    assert any(n.sticky and n.target == "getitem" for n in compute) == any(
        op == "cat_split" for op, _, _ in model.steps
    )


def test_plan_transfers_one_copy_per_tensor_and_destination():
    def f(x):
        a = x + 1  # cuda:0
        b = a * 2  # cuda:1 reads a
        c = a - 1  # cuda:1 reads a again: no second copy
        return b + c  # cuda:1; output back to cpu

    graph = annotated(torch.fx.symbolic_trace(f), torch.randn(3))
    placement = {"x": "cpu", "add": "cuda:0", "mul": "cuda:1", "sub": "cuda:1", "add_1": "cuda:1", "output": "cpu"}
    transfers, replicas = plan_transfers(graph, placement)
    assert replicas == ()
    assert [(t.source_node, t.src_device, t.dst_device) for t in transfers] == [
        ("x", "cpu", "cuda:0"),
        ("add", "cuda:0", "cuda:1"),
        ("add_1", "cuda:1", "cpu"),
    ]
    assert transfers[1].reason == "read by mul" and transfers[2].reason == "graph output"
    assert all(t.nbytes == 12 for t in transfers)


def test_partitions_are_runs_of_one_device_and_transfers_sit_before_first_reader():
    torch.manual_seed(0)
    model = RandomDag([("linear", 0, 0), ("relu", 1, 1), ("linear", 2, 2), ("add", 3, 1)], WIDTH, [4])
    x = torch.randn(4, WIDTH)
    # A CPU with a 1 ms dispatch overhead: both GPUs must be used, as neither holds both weights.
    topo = make_topology(
        [make_device("cpu", overhead_s=1e-3), make_device("cuda:0"), make_device("cuda:1")], latency_s=0.0
    )
    backend = Backend(Config(topology=topo, device_map="cpu", max_groups=4, strict=True,
                             max_memory={"cpu": 10**6, "cuda:0": 700, "cuda:1": 700}))
    gm = traced(model, x)
    backend(gm, [x])
    plan = backend.plans[0]
    rewritten = rewrite(gm, plan, {d: "cpu" for d in topo.device_names})
    devices = list(rewritten.partition_devices.values())
    assert all(a != b for a, b in zip(devices, devices[1:]))
    assert len(set(devices) - {"cpu"}) == 2  # 256-byte weights + activations: one per 700-byte GPU
    inserted = [n for n in rewritten.module.graph.nodes if n.op == "call_module"]
    assert [n.target for n in inserted] == list(rewritten.partition_devices)
    n_copied = sum(
        len(n.args[0]) if n.target is transfer_coalesced else 1
        for n in partition_nodes(rewritten)
        if n.op == "call_function" and n.target in (transfer, transfer_coalesced)
    )
    assert n_copied == len(plan.transfers)
    torch.testing.assert_close(rewritten.module(x)[0], model(x)[0])


def test_device_constants_follow_the_placement():
    class M(torch.nn.Module):
        def forward(self, x):
            idx = torch.arange(x.shape[0], device="cpu")
            return x.cpu() + idx.to("cpu") + x.to(device=torch.device("cpu"))

    gm = torch.fx.symbolic_trace(M())
    meta = torch.device("meta")
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method"):
            _retarget_devices(node, meta)
    arange = next(n for n in gm.graph.nodes if n.target is torch.arange)
    assert arange.kwargs["device"] == meta
    tos = [n for n in gm.graph.nodes if n.op == "call_method" and n.target == "to"]
    assert len(tos) == 3  # x.cpu() became x.to(meta)
    for n in tos:
        assert meta in (*n.args, *n.kwargs.values())
    assert not any(n.op == "call_method" and n.target == "cpu" for n in gm.graph.nodes)


def test_weights_streamed_from_the_host_run_and_match():
    # A fast GPU too small for all the weights and a slow CPU: the plan computes everything on
    # the GPU and streams the weights that do not fit from host memory on each call.
    torch.manual_seed(0)
    model = RandomDag([("linear", i, i) for i in range(6)], 64, [6])
    x = torch.randn(8, 64)
    topo = make_topology(
        [make_device("cpu", overhead_s=1e-3), make_device("cuda:0", overhead_s=1e-6)], latency_s=1e-6
    )
    weights = 6 * 64 * 64 * 4
    backend = Backend(Config(topology=topo, device_map="cpu", strict=True, max_groups=8,
                             max_memory={"cpu": 10**7, "cuda:0": weights // 2}))
    gm = traced(model, x)
    runner = backend(gm, [x])
    plan = backend.plans[0]
    streamed = [t for t in plan.tasks if t.streamed_from]
    assert streamed and all(t.device == "cuda:0" and t.streamed_from == "cpu" for t in streamed)
    assert all(t.device == "cuda:0" for t in plan.tasks if t.num_nodes and t.time_s > 0)
    assert any(t.reason.startswith("weights streamed") for t in plan.transfers)
    assert plan.predicted_peak_bytes["cuda:0"] <= plan.capacity_bytes["cuda:0"]
    with torch.no_grad():
        torch.testing.assert_close(runner(x)[0], model(x)[0])

    # Each streamed weight is copied in two steps; the copies of the next reader's weights start
    # before the current reader's are awaited (one layer ahead).
    nodes = partition_nodes(rewrite(gm, plan, {d: "cpu" for d in topo.device_names}))
    starts = [n for n in nodes if n.target is start_transfer]
    waits = [n for n in nodes if n.target is wait_transfer]
    assert len(starts) == len(waits) == sum(t.reason.startswith("weights streamed") for t in plan.transfers)
    position = {n.name: i for i, n in enumerate(nodes)}
    wait_of = {w.args[0].name: w for w in waits}  # start name (kept across the split) -> its wait
    ordered = sorted(starts, key=lambda n: position[wait_of[n.name].name])
    assert len({wait_of[n.name].next.name for n in ordered}) >= 2  # several readers to prefetch for
    for previous, start in zip(ordered, ordered[1:]):
        assert position[start.name] < position[wait_of[previous.name].name]


def test_small_activations_entering_a_partition_are_coalesced():
    def f(x):
        a = x + 1  # cuda:0
        b = x * 2  # cuda:0
        return a - b  # cuda:1 reads a and b: one coalesced copy

    x = torch.randn(5)
    gm = traced(torch.fx.symbolic_trace(f), x)
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    backend = Backend(Config(topology=topo, device_map="cpu", strict=True))
    backend(gm, [x])
    placement = {"x": "cpu", "add": "cuda:0", "mul": "cuda:0", "sub": "cuda:1", "output": "cpu"}
    transfers, _ = plan_transfers(annotated(torch.fx.symbolic_trace(f), x), placement)
    plan = dataclasses.replace(backend.plans[0], placement=placement, transfers=transfers, replicas=())
    rewritten = rewrite(gm, plan, {d: "cpu" for d in topo.device_names})
    coalesced = [n for n in partition_nodes(rewritten) if n.target is transfer_coalesced]
    assert len(coalesced) == 1
    assert [a.name for a in coalesced[0].args[0]] == ["add", "mul"]
    torch.testing.assert_close(rewritten.module(x), f(x))


class _TiedLM(torch.nn.Module):
    """An embedding whose weight the output layer reuses, as GPT-2 ties them."""

    def __init__(self, vocab=64, dim=64, layers=4):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, ids):
        h = torch.nn.functional.embedding(ids, self.emb.weight)  # one weight, two readers
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return torch.nn.functional.linear(h, self.emb.weight)


@pytest.mark.parametrize("capture", ["dynamo", "symbolic_trace"])
def test_a_tied_weight_read_on_two_devices_is_copied_once(capture):
    torch.manual_seed(0)
    model = _TiedLM().eval()
    ids = torch.randint(0, 64, (1, 4))  # activations far smaller than the weights
    topo = make_topology([make_device("cpu", overhead_s=1e-3), make_device("cuda:0"), make_device("cuda:1")])
    weights = sum(p.numel() * 4 for p in model.parameters())
    # cuda:0 holds the embedding and one layer; the head, on cuda:1, needs the embedding's weight:
    # a copy kept there beats sending activations back to cuda:0 on every call.
    caps = {"cuda:0": int(weights * 0.45), "cuda:1": int(weights * 0.9)}
    backend = Backend(Config(topology=topo, device_map="cpu", max_memory=caps, max_groups=8, strict=True))
    with torch.no_grad():
        if capture == "dynamo":
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=backend)
            outs = [compiled(ids) for _ in range(3)]
        else:
            gm = torch.fx.symbolic_trace(model)
            propagate_shapes_pass(gm, [ids])
            runner = backend(gm, [ids])
            outs = [runner(ids) for _ in range(3)]
    plan = backend.plans[0]
    assert len(plan.devices_used) == 2
    assert [(r.src_device, r.dst_device) for r in plan.replicas] in ([("cuda:0", "cuda:1")], [("cuda:1", "cuda:0")])
    assert plan.replicas[0].nbytes == 64 * 64 * 4
    assert not any(t.source_node == plan.replicas[0].source_node for t in plan.transfers)
    copy_holder = plan.replicas[0].dst_device  # holds the copy all call long, as evaluate counts it
    assert plan.resident_bytes[copy_holder] == 64 * 64 * 4 + sum(
        t.resident_bytes for t in plan.tasks if t.device == copy_holder)
    for out in outs:
        torch.testing.assert_close(out, model(ids))
