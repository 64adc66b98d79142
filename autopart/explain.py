"""Why a plan put each task where it did, told by counterfactuals: what moving one task alone to
another device would do to the plan's objective, or which device's memory it would overflow.

For a plan the solver proved optimal (gap 0), no such move improves the objective: every
alternative is slower, costlier or does not fit. A move is scored by
:func:`autopart.solver.evaluate`, the ILP's own model, so the numbers are the ones the solver
weighed: a task kept off a faster device shows either the memory it lacks there or the copies
and waiting that would cost more than the device saves.
"""

from __future__ import annotations

from dataclasses import dataclass

from .baselines import over_capacity
from .coarsen import PlacementProblem
from .config import check_type
from .plan import Plan, _ms, _table
from .solver import evaluate, stream_host


@dataclass(frozen=True)
class Move:
    """Task ``task`` (index into ``PlacementProblem.tasks``, named ``name``) moved alone from
    ``src`` to ``dst``: ``delta`` is the change of the plan's objective (seconds for latency and
    throughput, joules for energy; > 0 is worse), None when the move does not fit, and then
    ``over`` names the devices over capacity with their bytes. ``over_cap_s``: the call's
    seconds after the move when they exceed the energy objective's time cap (else None)."""

    task: int
    name: str
    src: str
    dst: str
    delta: float | None
    over: str = ""
    over_cap_s: float | None = None


def single_moves(
    problem: PlacementProblem,
    assignment: tuple[str, ...],
    streamed: frozenset[int] = frozenset(),
    objective: str = "latency",
    *,
    energy_eta: float | None = None,
    latency_cap_s: float | None = None,
) -> list[Move]:
    """Every move of one free task of ``problem`` from its device in ``assignment`` (with the
    tasks in ``streamed`` streaming their weights; a streamed task moves with its weights) to
    another device with capacity, scored on ``objective`` (``"latency"``, ``"throughput"``, or
    ``"energy"`` in joules, in Zeus's weighted form with ``energy_eta``), and for the energy
    objective checked against its time cap ``latency_cap_s`` (seconds per call).

    Raises:
        ValueError: ``assignment`` does not give one device per task, or ``streamed`` names a
            task that cannot stream its weights where it runs.
    """
    if len(assignment) != len(problem.tasks):
        raise ValueError(
            f"assignment gives {len(assignment)} devices for {len(problem.tasks)} tasks; give one "
            "device per task, in the problem's order"
        )
    cannot = sorted(i for i in streamed if not 0 <= i < len(assignment) or stream_host(problem, assignment[i]) is None)
    if cannot:
        raise ValueError(f"streamed names tasks {cannot}, which do not stream weights where they run "
                         "(a GPU task whose host has a CPU with capacity, in an inference problem)")
    base = evaluate(problem, assignment, streamed).value(objective, energy_eta)
    moves = []
    for t, task in enumerate(problem.tasks):
        if task.fixed_device:
            continue
        for d in problem.devices:
            if d == assignment[t]:
                continue
            moved = (*assignment[:t], d, *assignment[t + 1:])
            ev = evaluate(problem, moved, streamed - {t})
            over = over_capacity(problem, ev)
            slow = latency_cap_s is not None and ev.time_s > latency_cap_s * (1 + 1e-9)
            moves.append(Move(t, task.name, assignment[t], d, None if over else ev.value(objective, energy_eta) - base,
                              over, ev.time_s if slow and not over else None))
    return moves


def explain(plan: Plan, problem: PlacementProblem, max_rows: int = 40) -> str:
    """A table of ``plan``'s tasks: where each runs and its time there (its compute, and for
    weights streamed from host memory, ``+`` their copy), the device where it
    would compute fastest, and what moving it alone would do (:func:`single_moves`): to its
    fastest device when it is elsewhere, else to the best other device (on identical devices,
    what keeps a task on its own). A first line counts the tasks kept off their fastest device
    by memory and by cost.

    Raises:
        TypeError: ``plan`` or ``problem`` of another type.
        ValueError: ``plan`` is not a plan of ``problem`` (other tasks, topology or
            capacities), or ``max_rows`` < 0.
    """
    check_type(plan, Plan, "plan", "load a saved one with autopart.Plan.load")
    check_type(problem, PlacementProblem, "problem", "take the one the plan was solved from: Compilation.problem")
    if not isinstance(max_rows, int) or max_rows < 0:
        raise ValueError(f"max_rows must be an int >= 0, got {max_rows!r}")
    if [t.name for t in plan.tasks] != [t.name for t in problem.tasks]:
        raise ValueError(
            f"plan {plan.graph_name!r} has other tasks than the problem; pass the problem it "
            "was solved from (Compilation.problem)"
        )
    if plan.topology_name != problem.topology.name or plan.capacity_bytes != problem.capacity_bytes:
        raise ValueError(
            f"plan {plan.graph_name!r} was solved for topology {plan.topology_name!r} with capacities "
            f"{plan.capacity_bytes}, the problem is for {problem.topology.name!r} with "
            f"{problem.capacity_bytes}; pass the problem it was solved from (Compilation.problem)"
        )
    by_task: dict[int, list[Move]] = {}
    for m in single_moves(problem, *plan.assignment, plan.objective_name, energy_eta=plan.energy_eta,
                          latency_cap_s=plan.latency_cap_s):
        by_task.setdefault(m.task, []).append(m)
    scale, unit = (1.0, "J") if plan.objective_name == "energy" else (1e3, "ms")

    def told(move: Move) -> str:
        if move.delta is None:
            return f"to {move.dst}: would not fit ({move.over})"
        if move.over_cap_s is not None:
            return (f"to {move.dst}: {move.delta * scale:+.3g} {unit} {plan.objective_name}, but over the time "
                    f"cap ({_ms(move.over_cap_s)} > {_ms(plan.latency_cap_s)})")
        return f"to {move.dst}: {move.delta * scale:+.3g} {unit} {plan.objective_name}"

    rows, counts = [], {"fastest": 0, "memory": 0, "cost": 0, "gain": 0}
    for i, (task, placed) in enumerate(zip(problem.tasks, plan.tasks)):
        if task.fixed_device or not any(task.time_s.values()):
            continue
        moves = {m.dst: m for m in by_task.get(i, [])}
        candidates = [d for d in problem.devices if d in task.time_s]
        fastest = min(candidates, key=lambda d: (task.time_s[d], d != placed.device))
        if fastest == placed.device:
            counts["fastest"] += 1
            fits = [m for m in moves.values() if m.delta is not None]
            best = min(fits, key=lambda m: m.delta) if fits else next(iter(moves.values()), None)
            why = "-" if best is None else told(best)
        else:
            move = moves[fastest]
            pays = move.delta is not None and move.delta < 0 and move.over_cap_s is None
            counts["memory" if move.delta is None else "gain" if pays else "cost"] += 1
            why = told(move)
        device = placed.device + (f" <- {placed.streamed_from}" if placed.streamed_from else "")
        time = _ms(task.time_s.get(placed.device, 0.0))
        if placed.stream_time_s:
            time += f" + {_ms(placed.stream_time_s)} copy"
        rows.append([str(i), task.name[:48], device, time, f"{fastest} ({_ms(task.time_s[fastest])})", why])
    head = (
        f"why {plan.graph_name} is placed as it is ({plan.objective_name}): {len(rows)} tasks that "
        f"compute (of the plan's {len(plan.tasks)}: the others hold inputs and outputs, or do no "
        f"work), {counts['fastest']} on their fastest device, {counts['memory']} kept off it by memory, "
        f"{counts['cost']} because moving them alone would not pay (copies, waiting, or load "
        "on a busier device" + (", or the time cap" if plan.latency_cap_s is not None else "") + ")"
    )
    if counts["gain"]:
        head += (
            f"; {counts['gain']} would gain by moving alone (the solver stopped within its gap, "
            "or kept a plan whose split gained less than min_split_gain)"
        )
    if len(rows) > max_rows:
        rows = rows[:max_rows] + [["...", f"{len(rows) - max_rows} more", "", "", "", ""]]
    header = ["#", "task", "device", "time", "fastest device", "moved alone (to its fastest device, else the best other)"]
    return "\n".join([head, *_table(header, rows)])
