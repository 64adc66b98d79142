"""Explanations: single-task moves scored by the ILP's own model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _util import make_device, make_topology
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runtime import Mlp, _inference_plan
from test_solver import MB, problems

import autopart
from autopart.cli import main
from autopart.coarsen import LiveRange, PlacementProblem, Task, Value
from autopart.explain import Move, explain, single_moves
from autopart.solver import evaluate, solve

pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # each test compiles with its own backend


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["latency", "throughput"]))
def test_no_single_move_improves_a_proven_optimum(problem, objective):
    try:
        sol = solve(problem, objective=objective, mip_rel_gap=0.0, min_split_gain=0.0)
    except ValueError:  # nothing fits
        return
    if sol.gap is None or sol.gap > 1e-9:
        return
    moves = single_moves(problem, sol.assignment, sol.streamed, objective)
    free = [t for t in problem.tasks if not t.fixed_device]
    assert len(moves) == len(free) * (len(problem.devices) - 1)
    for m in moves:
        assert m.src == sol.assignment[m.task] != m.dst
        moved = (*sol.assignment[:m.task], m.dst, *sol.assignment[m.task + 1:])
        ev = evaluate(problem, moved, sol.streamed - {m.task})
        overflows = [d for d in problem.devices if ev.peak_bytes.get(d, 0) > problem.capacity_bytes[d]]
        assert (m.delta is None) == bool(overflows) and all(f"{d}: " in m.over for d in overflows)
        if m.delta is not None:
            assert m.delta >= -1e-9 * max(1.0, sol.objective)


def _two_devices() -> PlacementProblem:
    """A fast GPU with room for one task's weights, a slow CPU with room for everything, a slow
    link: ``big`` is kept off the GPU by memory, ``tail`` (cheap) by the copy it would need."""
    topo = make_topology([make_device("cpu", tflops=1), make_device("cuda:0", tflops=100)], link_gbps=1)
    tasks = (
        Task("in", ("x",), {}, fixed_device="cpu"),
        Task("head", ("a",), {"cpu": 5e-3, "cuda:0": 1e-4}, resident_bytes=30 * MB),
        Task("big", ("b",), {"cpu": 5e-3, "cuda:0": 1e-4}, resident_bytes=30 * MB),
        Task("tail", ("c",), {"cpu": 2e-4, "cuda:0": 1e-4}),
        Task("out", ("y",), {}, fixed_device="cpu"),
    )
    values = tuple(Value(p, (p + 1,), 10 * MB, 1, (f"v{p}",)) for p in range(4))
    ranges = tuple(LiveRange(p, p + 1, 10 * MB) for p in range(1, 4))
    return PlacementProblem(tasks, values, ranges, {"cpu": 200 * MB, "cuda:0": 50 * MB}, topo)


def test_moves_name_the_memory_they_lack_or_what_they_would_cost():
    problem = _two_devices()
    assignment = ("cpu", "cuda:0", "cpu", "cpu", "cpu")
    base = evaluate(problem, assignment)
    moves = {(m.name, m.dst): m for m in single_moves(problem, assignment)}
    assert set(moves) == {("head", "cpu"), ("big", "cuda:0"), ("tail", "cuda:0")}
    big = moves["big", "cuda:0"]
    assert big.delta is None and big.over.startswith("cuda:0: ") and "> 50000000" in big.over
    tail = moves["tail", "cuda:0"]
    moved = evaluate(problem, ("cpu", "cuda:0", "cpu", "cuda:0", "cpu"))
    assert tail.delta == pytest.approx(moved.time_s - base.time_s) and tail.delta > 0
    assert moves["head", "cpu"].delta == pytest.approx(evaluate(problem, ("cpu",) * 5).time_s - base.time_s)
    assert isinstance(tail, Move) and (tail.src, tail.task) == ("cpu", 3)


def _columns(lines: list[str]) -> list[list[str]]:
    """The cells of a table printed by autopart.plan._table, cut where its dashes are."""
    spans, start = [], 0
    for dashes in lines[1].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    return [[line[a:b].strip() for a, b in spans] for line in lines[2:]]


def test_explain_counts_and_tells_each_tasks_reason():
    """An Mlp of two linears on a fast GPU with room for one of them and a slow one."""
    model = Mlp().eval()
    weights = sum(p.numel() * 4 for p in model.parameters())
    topology = make_topology([make_device("cpu"), make_device("cuda:0", tflops=100),
                              make_device("cuda:1", tflops=0.01, overhead_s=1e-3)])
    backend = autopart.backend(topology=topology, device_map="cpu", strict=True,
                               max_memory={"cuda:0": int(0.75 * weights), "cuda:1": 10 * weights})
    with torch.no_grad():
        torch.compile(model, backend=backend)(torch.randn(8, 32))
    (comp,) = backend.compilations
    problem, plan = comp.problem, comp.plan
    head, *table = comp.explain().splitlines()
    rows = _columns(table)
    shown = [i for i, t in enumerate(problem.tasks) if not t.fixed_device and any(t.time_s.values())]
    assert [int(r[0]) for r in rows] == shown
    moves = {(m.task, m.dst): m for m in single_moves(problem, tuple(t.device for t in plan.tasks))}
    counts = {"fastest": 0, "memory": 0, "cost": 0}
    for (_, name, device, _, fastest, why), i in zip(rows, shown):
        task = problem.tasks[i]
        assert task.name.startswith(name) and device == plan.tasks[i].device
        best = min(problem.devices, key=lambda d: (task.time_s[d], d != device))
        assert fastest.split()[0] == best
        if best == device:
            counts["fastest"] += 1
            others = [m for (t, _), m in moves.items() if t == i]
            fitting = [m for m in others if m.delta is not None]
            if fitting:
                m = min(fitting, key=lambda m: m.delta)
                assert why == f"to {m.dst}: {m.delta * 1e3:+.3g} ms latency" and m.delta >= 0
            else:
                assert why == f"to {others[0].dst}: would not fit ({others[0].over})"
        elif moves[i, best].delta is None:
            counts["memory"] += 1
            assert why == f"to {best}: would not fit ({moves[i, best].over})"
        else:
            counts["cost"] += 1
            assert why == f"to {best}: {moves[i, best].delta * 1e3:+.3g} ms latency" and moves[i, best].delta >= 0
    assert counts["memory"] > 0  # each GPU holds one of the two linears
    assert (f": {len(shown)} tasks that compute (of the plan's {len(comp.plan.tasks)}: the others hold inputs "
            f"and outputs, or do no work), {counts['fastest']} on their fastest device, {counts['memory']} kept "
            f"off it by memory, {counts['cost']} because moving them alone would not pay (") in head


def test_explain_refuses_a_problem_the_plan_was_not_solved_from():
    plan = _inference_plan()
    with pytest.raises(ValueError, match="has other tasks than the problem; pass the problem it was solved from"):
        explain(plan, _two_devices())
    comp = autopart.compilations()[-1]
    assert comp.plan is plan
    other = dataclasses.replace(comp.problem, capacity_bytes={**comp.problem.capacity_bytes, "cuda:0": 1})
    with pytest.raises(ValueError, match=r"was solved for topology 'test' with capacities .* the problem is for "
                                         r"'test' with .*'cuda:0': 1.*; pass the problem it was solved from"):
        explain(plan, other)


def test_a_graph_run_as_captured_has_nothing_to_explain():
    backend = autopart.backend(topology="4xa100-pcie-cpu", device_map="cpu", max_memory={"cuda:0": 16})
    with pytest.warns(autopart.AutopartWarning, match="could not plan"):
        torch.compile(torch.nn.Linear(32, 32), backend=backend)(torch.randn(8, 32))
    with pytest.raises(ValueError, match="runs as captured .*nothing to explain"):
        backend.compilations[0].explain()


def test_cli_solve_explains_the_plan(capsys):
    assert main(["solve", "--graph", "bench/graphs/gpt2.json", "--topology", "hetero-a100-t4-cpu",
                 "--explain", "--time-limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "why gpt2 is placed as it is (latency): 17 tasks that compute (of the plan's 22: the others " in out
    assert "transformer.h.0" in out.split("why gpt2")[1]


def test_single_moves_and_explain_check_their_inputs():
    problem = _two_devices()
    with pytest.raises(ValueError, match="assignment gives 3 devices for 5 tasks; give one device per task"):
        single_moves(problem, ("cpu",) * 3)
    with pytest.raises(ValueError, match=r"streamed names tasks \[1, 99\], which do not stream"):
        single_moves(problem, ("cpu",) * 5, frozenset({1, 99}))
    plan = _inference_plan()
    with pytest.raises(TypeError, match="problem must be an autopart PlacementProblem, got NoneType"):
        explain(plan, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="plan must be an autopart Plan, got str; load a saved one"):
        explain("plan.json", problem)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_rows must be an int >= 0, got -1"):
        explain(plan, problem, max_rows=-1)


@pytest.mark.parametrize("options", [{"energy_slack": 0.0}, {"energy_eta": 0.5}], ids=["time-cap", "zeus"])
def test_energy_plans_are_explained_on_what_their_solver_minimized(options):
    """Moves are scored on the solver's own objective: within the time cap for energy with a
    slack (a move that saves joules but breaks the cap says so), Zeus's cost with eta; no move
    allowed so gains more than the plan's gap."""
    from pathlib import Path

    from autopart import AnnotatedGraph, Config
    from autopart.dynamo import solve_annotated

    graph = AnnotatedGraph.load(Path(__file__).parent.parent / "bench" / "graphs" / "gpt2.json")
    config = Config.from_options(topology="hetero-a100-t4-cpu", objective="energy", time_limit_s=5, **options)
    plan, problem = solve_annotated(graph, config, config.resolve_topology())
    assert (plan.latency_cap_s is not None) == ("energy_slack" in options)
    assert plan.energy_eta == options.get("energy_eta")
    moves = single_moves(problem, *plan.assignment, "energy", energy_eta=plan.energy_eta,
                         latency_cap_s=plan.latency_cap_s)
    allowed = [m for m in moves if m.delta is not None and m.over_cap_s is None]
    assert allowed and min(m.delta for m in allowed) >= -plan.gap * plan.objective - 1e-12
    if "energy_slack" in options:
        assert any(m.over_cap_s is not None and m.delta < 0 for m in moves)  # saves joules, too slow
        assert f"(within a time cap of {plan.latency_cap_s * 1e3:.3f} ms)" in plan.summary()
        assert "but over the time cap (" in explain(plan, problem, max_rows=100)
    else:
        assert "(Zeus cost, eta 0.5)" in plan.summary()
