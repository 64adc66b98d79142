"""Baselines: invariants on random problems, the chain DP against brute force and the ILP,
accelerate's device maps on hand-made cases, m-ETF on parallel branches."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import pytest
from _util import make_device, make_topology
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autopart
from autopart.baselines import (
    BASELINES,
    balanced,
    balanced_low_0,
    balanced_memory,
    chain_dp,
    chain_dp_bottleneck,
    fits,
    m_etf,
    run_baselines,
    sequential_fill,
    single_device,
    stage_times,
)
from autopart.coarsen import LiveRange, PlacementProblem, SharedWeight, Task, Value
from autopart.dynamo import solve_annotated
from autopart.solver import evaluate, solve
from autopart.topology import Link, Topology

MB = 10**6
NAMES = ["cuda:0", "cuda:1", "cpu", "cuda:2"]


@st.composite
def problems(draw, max_free: int = 5, max_devices: int = 3) -> PlacementProblem:
    """Random tasks between a fixed input and a fixed output task, skip connections, live
    ranges, sometimes a pinned task in the middle, and links of different speeds per pair."""
    num_devices = draw(st.integers(2, max_devices))
    names = NAMES[:num_devices]
    devices = [make_device(n, tflops=draw(st.floats(0.5, 20))) for n in names]
    links = [
        Link(src=a, dst=b, bandwidth_Bps=draw(st.floats(1, 50)) * 1e9,
             latency_s=draw(st.floats(0, 1e-4)), kind="pcie")
        for a in names for b in names if a != b
    ]
    topo = Topology(name="random", devices=tuple(devices), links=tuple(links))
    home = draw(st.sampled_from(names))
    tasks = [Task(name="in", nodes=("x",), time_s={}, fixed_device=home)]
    num_free = draw(st.integers(1, max_free))
    pinned_at = draw(st.one_of(st.none(), st.integers(1, num_free)))
    for i in range(num_free):
        if i == pinned_at:
            tasks.append(Task(name="pinned", nodes=("p",), time_s={d: 1e-4 for d in names},
                              peak_bytes=draw(st.integers(0, 5)) * MB,
                              fixed_device=draw(st.sampled_from(names))))
        tasks.append(Task(
            name=f"t{i}", nodes=(f"n{i}",),
            time_s={d: draw(st.floats(1e-5, 1e-2)) for d in names},
            resident_bytes=draw(st.integers(0, 40)) * MB,
            peak_bytes=draw(st.integers(0, 10)) * MB,
        ))
    tasks.append(Task(name="out", nodes=("o",), time_s={}, fixed_device=home))
    values, ranges = [], []
    for p in range(len(tasks) - 1):
        later = list(range(p + 1, len(tasks)))
        consumers = draw(st.lists(st.sampled_from(later), min_size=1, max_size=3, unique=True))
        nbytes = draw(st.integers(1, 20)) * MB
        values.append(Value(producer=p, consumers=tuple(sorted(consumers)), nbytes=nbytes,
                            count=draw(st.integers(1, 2)), nodes=(f"v{p}",)))
        if p > 0:
            ranges.append(LiveRange(producer=p, last=max(consumers), nbytes=nbytes))
    caps = {d: draw(st.integers(30, 150)) * MB for d in names}
    return PlacementProblem(tasks=tuple(tasks), values=tuple(values), live_ranges=tuple(ranges),
                            capacity_bytes=caps, topology=topo)


def contiguous_placements(problem: PlacementProblem, order: list[str] | None = None):
    """Every split of the free tasks into contiguous stages on distinct devices (in any order,
    or in ``order`` with devices skipped)."""
    free = [i for i, t in enumerate(problem.tasks) if t.fixed_device is None]
    devices = order or problem.devices
    for m in range(1, min(len(free), len(devices)) + 1):
        for cuts in itertools.combinations(range(1, len(free)), m - 1):
            bounds = (0, *cuts, len(free))
            pick = itertools.combinations if order else itertools.permutations
            picks = pick(devices, m)
            for devs in picks:
                assignment = [t.fixed_device for t in problem.tasks]
                for d, a, b in zip(devs, bounds, bounds[1:]):
                    for f in range(a, b):
                        assignment[free[f]] = d
                yield tuple(assignment)


def best_contiguous(problem, score, order=None):
    scored = [(score(a), a) for a in contiguous_placements(problem, order) if fits(problem, a)]
    return min(scored, default=None, key=lambda x: x[0])


def sequential(problem):
    """What chain_dp minimizes: one call with nothing overlapped."""
    return lambda a: evaluate(problem, a).sequential_s


def bottleneck(problem):
    return lambda a: max(stage_times(problem, a).values(), default=0.0)


def assert_valid(problem: PlacementProblem, assignment) -> None:
    assert len(assignment) == len(problem.tasks)
    for task, d in zip(problem.tasks, assignment):
        if task.fixed_device:
            assert d == task.fixed_device
        else:
            assert d in problem.devices
    ev = evaluate(problem, assignment)
    for d in problem.devices:
        assert ev.peak_bytes.get(d, 0) <= problem.capacity_bytes[d]


# ---------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_result_places_each_task_once_and_fits(problem):
    results = run_baselines(problem)
    assert list(results) == list(BASELINES)
    for name, r in results.items():
        assert r.name == name and r.wall_time_s >= 0
        if r.assignment is None:
            assert r.reason and r.time_s is None and "internal error" not in r.reason
            assert BASELINES[name](problem) is None
            continue
        assert r.reason is None
        assert_valid(problem, r.assignment)
        ev = evaluate(problem, r.assignment)
        assert r.time_s == ev.time_s and r.peak_bytes == ev.peak_bytes
        assert BASELINES[name](problem) == r.assignment  # deterministic


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_free=5, max_devices=4))
def test_chain_dp_equals_brute_force_over_contiguous_stages(problem):
    best = best_contiguous(problem, sequential(problem))
    got = chain_dp(problem)
    if best is None:
        assert got is None
        return
    assert got is not None
    assert_valid(problem, got)
    assert evaluate(problem, got).sequential_s == pytest.approx(best[0], rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_free=5, max_devices=4))
def test_chain_dp_bottleneck_equals_brute_force(problem):
    best = best_contiguous(problem, bottleneck(problem))
    got = chain_dp_bottleneck(problem)
    if best is None:
        assert got is None
        return
    assert got is not None
    assignment, bottleneck_s = got
    assert_valid(problem, assignment)
    assert bottleneck_s == pytest.approx(best[0], rel=1e-9, abs=1e-12)
    assert max(stage_times(problem, assignment).values()) == pytest.approx(bottleneck_s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_free=5, max_devices=4), st.randoms(use_true_random=False))
def test_chain_dp_in_a_fixed_order_equals_brute_force_in_that_order(problem, rnd):
    order = list(problem.devices)
    rnd.shuffle(order)
    order = order[: rnd.randint(1, len(order))]
    best = best_contiguous(problem, sequential(problem), order)
    got = chain_dp(problem, order=order)
    assert (best is None) == (got is None)
    if got is not None:
        assert evaluate(problem, got).sequential_s == pytest.approx(best[0], rel=1e-9, abs=1e-12)
        used = list(dict.fromkeys(d for d, t in zip(got, problem.tasks) if t.fixed_device is None))
        assert used == [d for d in order if d in used]
    # more device subsets than allowed: the DP falls back to a fixed order, still a valid split
    fallback = chain_dp(problem, max_device_subsets=1)
    if fallback is not None:
        assert_valid(problem, fallback)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_free=4))
def test_chain_dp_is_never_better_than_the_ilp(problem):
    got = chain_dp(problem)
    if got is None:
        return
    # The ILP searches every assignment, contiguous splits included.
    sol = solve(problem, mip_rel_gap=0.0, min_split_gain=0.0)
    assert sol.objective <= evaluate(problem, got).time_s * (1 + 1e-6) + 1e-12


# ---------------------------------------------------------------- chain DP, by hand


def _chain(sizes_mb, caps_mb, *, times=None, topo=None, edge_mb=1) -> PlacementProblem:
    names = list(caps_mb)
    topo = topo or make_topology([make_device(n) for n in names])
    times = times or [{d: 1e-3 for d in names}] * len(sizes_mb)
    tasks = [Task(name=f"t{i}", nodes=(f"n{i}",), time_s=t, resident_bytes=s * MB)
             for i, (t, s) in enumerate(zip(times, sizes_mb))]
    values = [Value(i, (i + 1,), edge_mb * MB, 1, (f"n{i}",)) for i in range(len(tasks) - 1)]
    return PlacementProblem(tasks=tuple(tasks), values=tuple(values), live_ranges=(),
                            capacity_bytes={d: c * MB for d, c in caps_mb.items()}, topology=topo)


def test_chain_dp_counts_a_skip_connection_once_per_device():
    # t0 -> t1 -> t2 and t0 -> t2: with t0 on cuda:0 and t1, t2 on cuda:1, t0's skip value is
    # sent once with t0 -> t1's (same value, one destination).
    topo = make_topology([make_device("cuda:0"), make_device("cuda:1")], link_gbps=1, latency_s=0)
    tasks = tuple(Task(name=f"t{i}", nodes=(f"n{i}",), time_s={"cuda:0": 1e-3, "cuda:1": 1e-3},
                       resident_bytes=r * MB) for i, r in enumerate([60, 30, 30]))
    values = (Value(0, (1, 2), 10 * MB, 1, ("a",)), Value(1, (2,), 5 * MB, 1, ("b",)))
    p = PlacementProblem(tasks=tasks, values=values, live_ranges=(), topology=topo,
                         capacity_bytes={"cuda:0": 70 * MB, "cuda:1": 70 * MB})
    got = chain_dp(p)
    assert got == ("cuda:0", "cuda:1", "cuda:1")
    assert evaluate(p, got).time_s == pytest.approx(3e-3 + 10 * MB / 1e9)


def test_chain_dp_uses_the_fast_device_first_when_order_is_free():
    # cpu is listed first but slow; in any order the DP puts the big first half on cuda:0.
    topo = make_topology([make_device("cpu"), make_device("cuda:0")])
    times = [{"cpu": 1e-2, "cuda:0": 1e-4}] * 4
    p = _chain([40] * 4, {"cpu": 1000, "cuda:0": 100}, times=times, topo=topo)
    got = chain_dp(p)
    assert got.count("cuda:0") == 2 and got[:2] == ("cuda:0", "cuda:0")
    in_order = chain_dp(p, order=["cpu", "cuda:0"])
    assert in_order[:2] == ("cpu", "cpu") and in_order[2:] == ("cuda:0", "cuda:0")


def test_chain_dp_handles_many_identical_gpus_quickly():
    # 8 identical GPUs + a CPU, 32 tasks with residual connections: the identical GPUs are
    # counted, not enumerated, so the DP stays small.
    names = [f"cuda:{k}" for k in range(8)] + ["cpu"]
    topo = make_topology([make_device(n) for n in names])
    tasks = [Task(name="in", nodes=("x",), time_s={}, fixed_device="cpu")]
    for i in range(32):
        tasks.append(Task(name=f"t{i}", nodes=(f"n{i}",), time_s={d: 1e-3 for d in names},
                          resident_bytes=30 * MB, peak_bytes=2 * MB))
    tasks.append(Task(name="out", nodes=("o",), time_s={}, fixed_device="cpu"))
    values = [
        Value(i, (i + 1,) + ((i + 2,) if i % 2 and i + 2 < len(tasks) else ()), MB, 1, (f"v{i}",))
        for i in range(len(tasks) - 1)
    ]
    ranges = [LiveRange(v.producer, max(v.consumers), v.nbytes) for v in values[1:]]
    caps = {n: 150 * MB for n in names[:-1]} | {"cpu": 10**12}
    p = PlacementProblem(tasks=tuple(tasks), values=tuple(values), live_ranges=tuple(ranges),
                         capacity_bytes=caps, topology=topo)
    start = time.perf_counter()
    got = chain_dp(p)
    assert time.perf_counter() - start < 10
    assert_valid(p, got)
    got_b = chain_dp_bottleneck(p)
    assert got_b is not None and got_b[1] < 32e-3


# ---------------------------------------------------------------- accelerate


def _accelerate_case():
    # cpu is listed first in the topology: accelerate still fills GPUs first.
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    caps = {"cpu": 1000, "cuda:0": 100, "cuda:1": 100}
    return _chain([40, 40, 30, 40, 40, 5, 60], caps, topo=topo)


def test_sequential_fill_fills_cuda0_then_cuda1_then_cpu_and_never_goes_back():
    p = _accelerate_case()
    # cuda:0 takes 40+40 (the next 30 would make 110), cuda:1 30+40, cpu the rest, including
    # the 5 MB task that would still fit on either GPU.
    assert sequential_fill(p) == ("cuda:0", "cuda:0", "cuda:1", "cuda:1", "cpu", "cpu", "cpu")


def test_sequential_fill_reserving_the_largest_layer_as_accelerate_does():
    p = _accelerate_case()
    # accelerate keeps room for the largest layer still to place (60 MB) on GPU 0 and the CPU.
    assert sequential_fill(p, reserve_largest=True) == (
        "cuda:0", "cuda:1", "cuda:1", "cpu", "cpu", "cpu", "cpu")


def test_sequential_fill_with_max_memory_and_order():
    p = _accelerate_case()
    got = sequential_fill(p, max_memory={"cuda:1": 50 * MB, "cpu": 10**9})
    assert got == ("cuda:1",) + ("cpu",) * 6
    assert sequential_fill(p, order=["cuda:1", "cuda:0", "cpu"])[:2] == ("cuda:1", "cuda:1")
    with pytest.raises(ValueError, match=r"'cuda:7' is not a device with capacity"):
        sequential_fill(p, order=["cuda:7"])
    with pytest.raises(ValueError, match=r"max_memory\['cpu'\] must be a number of bytes"):
        sequential_fill(p, max_memory={"cpu": -1})


def test_sequential_fill_counts_activations_like_evaluate():
    # 50 MB of weights fit cuda:0 (100 MB) twice, but the second task's 20 MB activation peak
    # does not fit next to them: it spills.
    topo = make_topology([make_device("cuda:0"), make_device("cuda:1")])
    tasks = (Task("a", ("a",), {"cuda:0": 1e-3, "cuda:1": 1e-3}, resident_bytes=50 * MB),
             Task("b", ("b",), {"cuda:0": 1e-3, "cuda:1": 1e-3}, resident_bytes=40 * MB,
                  peak_bytes=20 * MB))
    p = PlacementProblem(tasks=tasks, values=(), live_ranges=(), topology=topo,
                         capacity_bytes={"cuda:0": 100 * MB, "cuda:1": 100 * MB})
    assert sequential_fill(p) == ("cuda:0", "cuda:1")


def test_balanced_spreads_weights_over_the_gpus():
    topo = make_topology([make_device("cuda:0"), make_device("cuda:1"), make_device("cpu")])
    p = _chain([10] * 8, {"cuda:0": 100, "cuda:1": 100, "cpu": 1000}, topo=topo)
    assert sequential_fill(p) == ("cuda:0",) * 8
    # share 80 / 2 = 40 MB plus 1.25 x 10 MB headroom; the last GPU keeps its capacity
    assert balanced_memory(p) == {"cuda:0": 52_500_000, "cuda:1": 100 * MB, "cpu": 1000 * MB}
    assert balanced(p) == ("cuda:0",) * 5 + ("cuda:1",) * 3
    # low_zero: GPU 0 takes only what cuda:1 cannot (nothing here)
    assert balanced_memory(p, low_zero=True)["cuda:0"] == 0
    assert balanced_low_0(p) == ("cuda:1",) * 8


# ---------------------------------------------------------------- m-ETF


def _branches(home: str, link_gbps: float) -> PlacementProblem:
    """in@home -> a, in@home -> b (independent), a, b -> out@home."""
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")],
                         link_gbps=link_gbps, latency_s=1e-6)
    t = {"cpu": 1e-1, "cuda:0": 1e-3, "cuda:1": 1e-3}
    tasks = (Task("in", ("x",), {}, fixed_device=home), Task("a", ("a",), t),
             Task("b", ("b",), t), Task("out", ("o",), {}, fixed_device=home))
    values = (Value(0, (1, 2), MB, 1, ("x",)), Value(1, (3,), MB, 1, ("a",)),
              Value(2, (3,), MB, 1, ("b",)))
    return PlacementProblem(tasks=tasks, values=values, live_ranges=(), topology=topo,
                            capacity_bytes={"cpu": 10**9, "cuda:0": 10**9, "cuda:1": 10**9})


def test_m_etf_runs_independent_branches_on_two_devices():
    # Input on the CPU: both GPUs receive it at the same time, so b finishes first on the idle one.
    got = m_etf(_branches("cpu", link_gbps=10))
    assert {got[1], got[2]} == {"cuda:0", "cuda:1"}


def test_m_etf_keeps_branches_together_when_the_transfer_costs_more():
    # Input on cuda:0 and a slow link: waiting for a on cuda:0 (1 ms) beats 10 ms of transfer.
    got = m_etf(_branches("cuda:0", link_gbps=0.1))
    assert got[1] == got[2] == "cuda:0"
    # ...while a fast link makes the second GPU worth it again.
    got = m_etf(_branches("cuda:0", link_gbps=100))
    assert {got[1], got[2]} == {"cuda:0", "cuda:1"}


def test_m_etf_skips_devices_without_room():
    p = _branches("cpu", link_gbps=10)
    tasks = tuple(t if t.fixed_device else Task(t.name, t.nodes, t.time_s, resident_bytes=60 * MB)
                  for t in p.tasks)
    p = PlacementProblem(tasks=tasks, values=p.values, live_ranges=(), topology=p.topology,
                         capacity_bytes={"cpu": 10**9, "cuda:0": 100 * MB, "cuda:1": 10 * MB})
    got = m_etf(p)
    assert sorted(got[1:3]) == ["cpu", "cuda:0"]
    assert m_etf(p, rule="start") is not None
    with pytest.raises(ValueError, match="rule must be 'finish' or 'start', got 'eft'"):
        m_etf(p, rule="eft")


# ---------------------------------------------------------------- single device


def test_single_device_picks_the_fastest_device_that_holds_everything():
    topo = make_topology([make_device("cpu"), make_device("cuda:0"), make_device("cuda:1")])
    times = [{"cpu": 1e-2, "cuda:0": 1e-3, "cuda:1": 2e-3}] * 2
    p = _chain([30, 30], {"cpu": 1000, "cuda:0": 50, "cuda:1": 100}, times=times, topo=topo)
    assert single_device(p) == ("cuda:1", "cuda:1")


def test_single_device_is_none_when_nothing_fits_alone():
    topo = make_topology([make_device("cuda:0"), make_device("cuda:1")])
    p = _chain([60, 60], {"cuda:0": 100, "cuda:1": 100}, topo=topo)
    assert single_device(p) is None
    r = run_baselines(p, ["single_device", "sequential_fill"])
    assert r["single_device"].assignment is None
    assert "cuda:0 would need 120000000 bytes of 100000000" in r["single_device"].reason
    assert r["sequential_fill"].assignment == ("cuda:0", "cuda:1")


# ---------------------------------------------------------------- registry


def test_run_baselines_reports_why_nothing_fits():
    # three 60 MB tasks on two 100 MB devices: no placement at all
    topo = make_topology([make_device("cuda:0"), make_device("cuda:1")])
    p = _chain([60, 60, 60], {"cuda:0": 100, "cuda:1": 100}, topo=topo)
    for name, r in run_baselines(p).items():
        assert r.assignment is None and r.time_s is None and r.peak_bytes is None, name
        assert r.reason and "internal error" not in r.reason, name
    reason = run_baselines(p, ["sequential_fill"])["sequential_fill"].reason
    assert "fits none of the devices left" in reason
    with pytest.raises(ValueError, match="unknown baseline 'alpa'; choose from"):
        run_baselines(p, ["alpa"])


def test_a_fill_that_fails_on_a_shared_weights_copy_says_so():
    # t0 holds a 60 MB weight that t2 reads too: on cuda:1, t2 would need its copy
    topo = make_topology([make_device("cuda:0"), make_device("cuda:1")])
    p = dataclasses.replace(_chain([60, 30, 10], {"cuda:0": 90, "cuda:1": 50}, topo=topo),
                            shared=(SharedWeight("w", 0, (2,), 60 * MB),))
    reason = run_baselines(p, ["sequential_fill"])["sequential_fill"].reason
    assert f"task 't2' ({10 * MB} resident + 0 activation bytes + {60 * MB} of shared weights it would copy)" in reason


def test_a_plain_function_can_join_the_registry(monkeypatch):
    p = _accelerate_case()
    monkeypatch.setitem(BASELINES, "everything_on_cpu", lambda prob: ("cpu",) * len(prob.tasks))
    monkeypatch.setitem(BASELINES, "nothing", lambda problem: None)
    r = run_baselines(p, ["everything_on_cpu", "nothing"])
    assert r["everything_on_cpu"].time_s == pytest.approx(evaluate(p, ("cpu",) * 7).time_s)
    assert r["nothing"].reason == "returned None"


def test_contiguous_stages_count_the_copy_of_a_tied_weight():
    """GPT-2's tied embedding and head, with a GPU too small for the weights: a stage that
    reads the weight away from its home holds a copy, so the dynamic programs pick stages
    that fit (everything on the host, at worst)."""
    graph = autopart.AnnotatedGraph.load(Path(__file__).resolve().parents[1] / "bench" / "graphs" / "gpt2.json")
    config = autopart.Config(topology="1x4090-cpu", max_memory={"cuda:0": "60MB", "cpu": "2GB"})
    _, problem = solve_annotated(graph, config, config.resolve_topology())
    assert problem.shared
    results = run_baselines(problem, names=["chain_dp", "chain_dp_bottleneck"])
    for name, result in results.items():
        assert result.assignment is not None, (name, result.reason)
        peak = evaluate(problem, result.assignment).peak_bytes
        assert all(peak[d] <= problem.capacity_bytes[d] for d in peak), (name, peak)
