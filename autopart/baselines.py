r"""Baseline placements: what other systems would do, scored by the ILP's own cost model.

Each baseline is a function ``(problem, **options) -> tuple[str, ...] | None`` returning one
device per task of a :class:`~autopart.coarsen.PlacementProblem` (tasks fixed to a device keep
it), or ``None`` when it finds no assignment that fits memory. They serve as yardsticks for the
ILP (:func:`autopart.solver.solve`) and as fallbacks when it cannot run. Every result is
scored with :func:`autopart.solver.evaluate`, so predicted times and peak bytes are comparable
with the ILP's, and every returned assignment fits every device's ``capacity_bytes`` under
``evaluate``'s memory accounting: bytes on device :math:`d` at task position :math:`i` =
resident bytes of every task on :math:`d` + peak bytes of task :math:`i` if it is on :math:`d`
+ live ranges produced on :math:`d` that cover :math:`i` + values received on :math:`d` whose
``received_span`` covers :math:`i`.

===================== ==================================================================
name                  what it does (source)
===================== ==================================================================
``sequential_fill``   fill devices one after another in task order, GPUs before the CPU,
                      never going back (HF accelerate ``infer_auto_device_map``,
                      ``device_map="sequential"``/``"auto"``)
``balanced``          the same fill with each GPU but the last capped near an equal share
                      of the weights (accelerate ``get_balanced_memory``,
                      ``device_map="balanced"``)
``balanced_low_0``    ``balanced`` keeping GPU 0 as empty as possible (accelerate
                      ``low_zero=True``, ``device_map="balanced_low_0"``)
``m_etf``             list scheduling, each ready task to the device where it finishes
                      first among those with room (Baechi's m-ETF)
``chain_dp``          exact dynamic program over contiguous stages, latency objective
``chain_dp_bottleneck`` exact dynamic program over contiguous stages, slowest-stage
                      objective (PipeDream's partitioner)
``single_device``     every task on the one device that holds them all and is fastest
===================== ==================================================================

:data:`BASELINES` maps these names to the functions; :func:`run_baselines` runs them and
records the predicted time, peak bytes, wall time and, for ``None``, why.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import networkx as nx

from .coarsen import PlacementProblem, Value
from .solver import Evaluation, copy_time_s, evaluate, interchangeable_devices

log = logging.getLogger(__name__)

Assignment = tuple[str, ...]
Baseline = Callable[..., "Assignment | None"]


class _NoPlacement(Exception):
    """Raised inside a baseline when it finds no fitting assignment; the message says why."""


def _baseline(impl: Callable[..., Assignment]) -> Baseline:
    """Make ``impl`` (which raises :class:`_NoPlacement`) a baseline returning ``None`` instead.

    The result is checked against ``evaluate`` and the capacities before it is returned. The
    checked function that raises instead of returning ``None`` is the result's ``__wrapped__``
    (``run_baselines`` calls it to learn the reason for ``None``).
    """

    def checked(problem: PlacementProblem, **options) -> Assignment:
        assignment = tuple(impl(problem, **options))
        _check(problem, assignment, impl.__name__)
        return assignment

    @functools.wraps(impl)
    def public(problem: PlacementProblem, **options) -> Assignment | None:
        try:
            return checked(problem, **options)
        except _NoPlacement as exc:
            log.debug("%s: no placement: %s", impl.__name__, exc)
            return None

    functools.update_wrapper(checked, impl)
    public.__wrapped__ = checked  # type: ignore[attr-defined]
    return public


def _check(problem: PlacementProblem, assignment: Assignment, name: str) -> None:
    """Every task placed once on an allowed device, fixed tasks kept, every capacity held."""
    devices = set(problem.devices)
    assert len(assignment) == len(problem.tasks), (name, len(assignment), len(problem.tasks))
    for task, dev in zip(problem.tasks, assignment):
        if task.fixed_device:
            assert dev == task.fixed_device, (name, task.name, dev)
        else:
            assert dev in devices, (name, task.name, dev)
    over = over_capacity(problem, evaluate(problem, assignment))
    if over:  # e.g. copies of shared weights the heuristic did not foresee: never hand it out
        log.info("%s found an assignment over capacity (%s); discarded", name, over)
        raise _NoPlacement(f"the assignment found exceeds {over}")


def over_capacity(problem: PlacementProblem, ev: Evaluation) -> str:
    """``""`` if every device with capacity holds its peak, else which devices and bytes."""
    return ", ".join(
        f"{d}: {ev.peak_bytes.get(d, 0)} bytes > {problem.capacity_bytes[d]}"
        for d in problem.devices
        if ev.peak_bytes.get(d, 0) > problem.capacity_bytes[d]
    )


def fits(problem: PlacementProblem, assignment: Sequence[str]) -> bool:
    """Whether ``assignment`` keeps every device within ``problem.capacity_bytes`` under
    :func:`autopart.solver.evaluate`'s memory accounting (the ILP's)."""
    return not over_capacity(problem, evaluate(problem, tuple(assignment)))


# --------------------------------------------------------------------------- memory ledger


class _Ledger:
    """Bytes per device of a partial assignment, in :func:`~autopart.solver.evaluate`'s
    accounting; tasks may be added in any order. Adding tasks only adds bytes, so a device that
    was checked when its last task joined stays within its capacity whatever comes later on
    other devices, except for the bytes a task keeps where its copied trainable parameters live
    (``Task.resident_on``), and the copies a producer placed after its readers sends to their
    devices, which the final check of an assignment (:func:`fits`) catches."""

    def __init__(self, problem: PlacementProblem) -> None:
        self.problem = problem
        n = len(problem.tasks)
        self.resident: dict[str, int] = defaultdict(int)
        self.active: dict[str, list[int]] = defaultdict(lambda: [0] * n)
        self.peak: dict[str, int] = defaultdict(int)  # max over steps of active
        self.assignment: list[str | None] = [None] * n
        self.copies: set[tuple[int, str]] = set()  # (shared weight, device) copies counted
        self.received: set[tuple[int, str]] = set()  # (value, device) copies counted
        self.reads: dict[int, list[int]] = defaultdict(list)  # task -> values it reads
        self.makes: dict[int, list[int]] = defaultdict(list)  # task -> values it produces
        for vi, v in enumerate(problem.values):
            self.makes[v.producer].append(vi)
            for c in v.consumers:
                self.reads[c].append(vi)
        ranges = defaultdict(list)
        for r in problem.live_ranges:
            ranges[r.producer].append(r)
        self.increments: list[list[tuple[int, int]]] = []
        copies = problem.activation_copies  # micro-batches in flight, as evaluate counts them
        for i, task in enumerate(problem.tasks):
            inc: dict[int, int] = defaultdict(int)
            if task.peak_bytes:
                inc[i] += copies * task.peak_bytes
            for r in ranges[i]:
                for step in range(r.producer, r.last + 1):
                    inc[step] += copies * r.nbytes
            self.increments.append(sorted(inc.items()))

    def _new_copies(self, i: int, device: str) -> list[tuple[int, int]]:
        """(shared weight, bytes) that task ``i`` on ``device`` needs a copy of there."""
        out = []
        for wi, w in enumerate(self.problem.shared):
            home = self.assignment[w.home]
            if i in w.readers and home is not None and home != device and (wi, device) not in self.copies:
                out.append((wi, w.nbytes))
        return out

    def _new_receipts(self, i: int, device: str) -> list[int]:
        """Values task ``i`` reads whose producer is placed on another device, and whose copy
        on ``device`` is not counted yet."""
        values = self.problem.values
        return [
            vi for vi in self.reads[i]
            if self.assignment[values[vi].producer] not in (None, device) and (vi, device) not in self.received
        ]

    def _received(self, vi: int) -> dict[int, int]:
        """Step -> bytes of value ``vi``'s copy on a device that receives it (its ``received_span``)."""
        v = self.problem.values[vi]
        first, last = v.received_span
        return dict.fromkeys(range(first, last + 1), self.problem.activation_copies * v.nbytes)

    def _steps(self, i: int, device: str) -> dict[int, int]:
        """Step -> bytes task ``i`` adds on ``device``: its activations, and the copies of
        values it would receive there."""
        steps = dict(self.increments[i])
        for vi in self._new_receipts(i, device):
            for step, nbytes in self._received(vi).items():
                steps[step] = steps.get(step, 0) + nbytes
        return steps

    def need_bytes(self, i: int, device: str) -> int:
        """Peak bytes on ``device`` if task ``i`` joined it (copies of weights it shares with
        tasks placed elsewhere, and of values it receives from them, included)."""
        act = self.active[device]
        peak = self.peak[device]
        for step, nbytes in self._steps(i, device).items():
            peak = max(peak, act[step] + nbytes)
        copies = sum(n for _, n in self._new_copies(i, device))
        return self.resident[device] + self.problem.tasks[i].held_bytes(device).get(device, 0) + copies + peak

    def _add(self, device: str, steps: dict[int, int]) -> None:
        act = self.active[device]
        for step, nbytes in steps.items():
            act[step] += nbytes
            self.peak[device] = max(self.peak[device], act[step])

    def place(self, i: int, device: str) -> None:
        assert self.assignment[i] is None, i
        for wi, nbytes in self._new_copies(i, device):
            self.copies.add((wi, device))
            self.resident[device] += nbytes
        steps = self._steps(i, device)
        self.received.update((vi, device) for vi in self._new_receipts(i, device))
        self.assignment[i] = device
        for home, nbytes in self.problem.tasks[i].held_bytes(device).items():
            self.resident[home] += nbytes
        self._add(device, steps)
        for vi in self.makes[i]:  # its values' copies on the devices of readers placed earlier
            for dst in {self.assignment[c] for c in self.problem.values[vi].consumers} - {None, device}:
                if (vi, dst) not in self.received:
                    self.received.add((vi, dst))
                    self._add(dst, self._received(vi))

    def used_bytes(self, device: str) -> int:
        return self.resident[device] + self.peak[device]


def _fixed_ledger(problem: PlacementProblem) -> _Ledger:
    """A ledger holding the fixed tasks; raises if they alone overflow a device, or if free
    tasks exist and no device may hold memory."""
    ledger = _Ledger(problem)
    for i, task in enumerate(problem.tasks):
        if task.fixed_device:
            ledger.place(i, task.fixed_device)
    for d in problem.devices:
        if ledger.used_bytes(d) > problem.capacity_bytes[d]:
            raise _NoPlacement(
                f"the tasks fixed to {d} (inputs, outputs, pinned weights) alone need "
                f"{ledger.used_bytes(d)} bytes but it may use {problem.capacity_bytes[d]}"
            )
    if not problem.devices and any(t.fixed_device is None for t in problem.tasks):
        raise _NoPlacement(f"no device may hold memory (capacities {problem.capacity_bytes})")
    return ledger


def _gpu_first(problem: PlacementProblem, devices: Iterable[str]) -> list[str]:
    """``devices`` with accelerators first, then CPUs, each in topology order (accelerate's
    ``get_max_memory`` orders ``max_memory`` as GPU 0, 1, ..., then ``"cpu"``)."""
    devices = list(devices)
    kind = {d: problem.topology.device(d).kind for d in devices}
    return [d for d in devices if kind[d] != "cpu"] + [d for d in devices if kind[d] == "cpu"]


def _check_order(problem: PlacementProblem, order: Sequence[str], option: str) -> list[str]:
    order = list(order)
    known = problem.devices
    for d in order:
        if d not in known:
            raise ValueError(
                f"{option}: {d!r} is not a device with capacity in this problem; use some of "
                f"{known}"
            )
    if len(set(order)) != len(order):
        raise ValueError(f"{option}: devices must be named once each, got {order}")
    if not order:
        raise ValueError(f"{option}: name at least one device of {known}")
    return order


# --------------------------------------------------------------------------- accelerate


def _fill(problem: PlacementProblem, order: list[str], fill_caps: Mapping[str, int],
          reserve_largest: bool) -> Assignment:
    ledger = _fixed_ledger(problem)
    tasks = problem.tasks
    free = [i for i, t in enumerate(tasks) if t.fixed_device is None]
    # accelerate keeps room on GPU 0 and the CPU for the largest layer not yet placed.
    main = {d for d in order if problem.topology.device(d).kind == "cpu"}
    main |= {d for d in order[:1] if problem.topology.device(d).kind != "cpu"}
    largest_after = [0] * (len(free) + 1)
    for k in range(len(free) - 1, -1, -1):
        largest_after[k] = max(largest_after[k + 1], tasks[free[k]].resident_bytes)
    cur = 0
    for k, i in enumerate(free):
        first = cur
        while cur < len(order):
            d = order[cur]
            cap = min(fill_caps[d], problem.capacity_bytes[d])
            if reserve_largest and d in main:
                cap -= largest_after[k + 1]
            if ledger.need_bytes(i, d) <= cap:
                break
            cur += 1
        if cur == len(order):
            copies = sum(n for _, n in ledger._new_copies(i, order[-1]))
            raise _NoPlacement(
                f"task {tasks[i].name!r} ({tasks[i].resident_bytes} resident + "
                f"{tasks[i].peak_bytes} activation bytes"
                + (f" + {copies} of shared weights it would copy" if copies else "")
                + f") fits none of the devices left in the fill order {order[first:]} (caps "
                f"{dict((d, fill_caps[d]) for d in order)})"
            )
        ledger.place(i, order[cur])
    return tuple(ledger.assignment)  # type: ignore[arg-type]


@_baseline
def sequential_fill(
    problem: PlacementProblem,
    *,
    max_memory: Mapping[str, int] | None = None,
    order: Sequence[str] | None = None,
    reserve_largest: bool = False,
) -> Assignment:
    """HF accelerate's sequential device map: fill one device after another, never go back.

    Source: ``infer_auto_device_map`` in huggingface/accelerate ``src/accelerate/utils/
    modeling.py`` (``device_map="sequential"``, and ``"auto"`` once ``max_memory`` is set).
    Devices are taken in accelerate's order (``get_max_memory``: GPUs ``cuda:0, cuda:1, ...``
    then ``cpu``; here: non-CPU devices in topology order, then CPUs). Free tasks go, in
    execution order, onto the current device while they fit; the first task that does not fit
    moves the fill to the next device, and earlier devices are never revisited. Tasks are
    autopart's unsplittable units (accelerate's layers / ``no_split_module_classes``), and
    "fits" uses :func:`~autopart.solver.evaluate`'s accounting (resident bytes plus the
    activations live at every step), where accelerate counts parameter bytes only.

    Args:
        max_memory: device -> bytes the fill may use there (accelerate's ``max_memory``); only
            these devices receive free tasks, each capped at ``min(max_memory, capacity)``.
            Default: every device with capacity, at its capacity.
        order: the devices to fill, in this order (overrides the GPU-first order).
        reserve_largest: keep room on the first GPU and on the CPU for the largest task still
            to be placed, as accelerate does for layers it offloads and streams back to GPU 0;
            autopart runs each task where it is placed, so this is off by default.

    Returns:
        One device per task, or ``None`` if some task fits none of the devices left.

    Raises:
        ValueError: ``order`` or ``max_memory`` names a device without capacity.
    """
    if max_memory is not None:
        names = _check_order(problem, list(max_memory), "max_memory")
        for d in names:
            if not isinstance(max_memory[d], int) or max_memory[d] < 0:
                raise ValueError(
                    f"max_memory[{d!r}] must be a number of bytes >= 0, got {max_memory[d]!r}"
                )
        fill_caps = {d: int(max_memory[d]) for d in names}
    else:
        names = problem.devices
        fill_caps = {d: problem.capacity_bytes[d] for d in names}
    if order is not None:
        devices = _check_order(problem, order, "order")
        missing = [d for d in devices if d not in fill_caps]
        if missing:
            raise ValueError(f"order: {missing} are not in max_memory {list(fill_caps)}; add them")
    else:
        devices = _gpu_first(problem, names)
    return _fill(problem, devices, fill_caps, reserve_largest)


def balanced_memory(
    problem: PlacementProblem, *, headroom_bytes: int | None = None, low_zero: bool = False
) -> dict[str, int]:
    """Per-device byte caps that spread the resident bytes evenly over the GPUs.

    Source: ``get_balanced_memory`` in huggingface/accelerate ``src/accelerate/utils/
    modeling.py``. With :math:`G` GPUs and :math:`R` resident bytes in all tasks, every GPU but
    the last (in :func:`sequential_fill`'s order) is capped at ``R // G + headroom_bytes``; the
    last GPU and the CPUs keep their capacity "in case the buffer is not enough". With
    ``low_zero`` the share is ``R // (G - 1)`` and the first GPU gets only what the others
    cannot take (``max(0, R - sum of the other GPUs' caps)``). No GPU: the capacities.

    Args:
        headroom_bytes: added to each share. Default ``int(1.25 * largest)`` with ``largest``
            the most bytes (resident + peak) of one free task: accelerate adds 1.25 x the
            larger of the size of a no-split block and the mean leaf-module size, and tasks are
            autopart's no-split blocks.
        low_zero: accelerate's ``balanced_low_0`` (ignored with one GPU, as there).

    Returns:
        device -> bytes, for every device with capacity, never above its capacity.
    """
    devices = _gpu_first(problem, problem.devices)
    caps = {d: problem.capacity_bytes[d] for d in devices}
    gpus = [d for d in devices if problem.topology.device(d).kind != "cpu"]
    if not gpus:
        return caps
    if headroom_bytes is None:
        largest = max(
            (t.resident_bytes + t.peak_bytes for t in problem.tasks if t.fixed_device is None),
            default=0,
        )
        headroom_bytes = int(1.25 * largest)
    elif headroom_bytes < 0:
        raise ValueError(f"headroom_bytes must be >= 0, got {headroom_bytes}")
    low_zero = low_zero and len(gpus) > 1
    total = sum(t.resident_bytes for t in problem.tasks)
    share = total // (len(gpus) - 1 if low_zero else len(gpus)) + headroom_bytes
    for i, g in enumerate(gpus[:-1]):
        if not (low_zero and i == 0):
            caps[g] = min(share, caps[g])
    if low_zero:
        caps[gpus[0]] = min(max(0, total - sum(caps[g] for g in gpus[1:])), caps[gpus[0]])
    return caps


@_baseline
def balanced(
    problem: PlacementProblem, *, headroom_bytes: int | None = None, low_zero: bool = False
) -> Assignment:
    """HF accelerate's ``device_map="balanced"``: :func:`sequential_fill` with the caps of
    :func:`balanced_memory` (each within the real capacity).

    Source: huggingface/accelerate ``src/accelerate/utils/modeling.py``,
    ``get_balanced_memory`` followed by ``infer_auto_device_map``.

    Returns:
        One device per task, or ``None`` if some task fits none of the devices left.
    """
    caps = balanced_memory(problem, headroom_bytes=headroom_bytes, low_zero=low_zero)
    return _fill(problem, _gpu_first(problem, caps), caps, reserve_largest=False)


@_baseline
def balanced_low_0(problem: PlacementProblem, *, headroom_bytes: int | None = None) -> Assignment:
    """:func:`balanced` with ``low_zero=True`` (accelerate's ``device_map="balanced_low_0"``)."""
    return balanced.__wrapped__(problem, headroom_bytes=headroom_bytes, low_zero=True)


# --------------------------------------------------------------------------- m-ETF


@_baseline
def m_etf(problem: PlacementProblem, *, rule: Literal["finish", "start"] = "finish") -> Assignment:
    """Memory-constrained earliest-time-first list scheduling (Baechi's m-ETF).

    Source: B. Jeon et al., "Baechi: Fast Device Placement of Machine Learning Graphs",
    ACM SoCC 2020 (m-ETF), after J.-J. Hwang et al., "Scheduling precedence graphs in systems
    with interprocessor communication times", SIAM J. Comput. 18(2), 1989 (ETF).

    Tasks form a DAG through their values. Repeatedly, among the *ready* tasks (all producers
    scheduled) and the devices with room for them (:func:`~autopart.solver.evaluate`'s memory
    accounting, given the tasks placed so far), the pair that finishes first is scheduled:
    start = max(time the device is free, arrival of each input), arrival = producer's finish +
    ``count * latency_s + nbytes / bandwidth_Bps`` over ``topology.link(src, dst)`` when the
    producer is on another device; finish = start + the task's time there. Ties go to the
    earlier task in execution order, then to the device listed first. Links are not
    contended and transfers overlap compute (the heuristic's model; the score is still
    ``evaluate``'s sequential time). A task that fits no device when it is ready never will
    (placing tasks only adds bytes), so the scheduler then gives up.

    Args:
        rule: ``"finish"`` picks the pair with the earliest finish time (the rule for devices of
            different speeds, as HEFT: Topcuoglu et al., IEEE TPDS 13(3), 2002); ``"start"``
            the earliest start time, finish breaking ties (ETF and Baechi, which assume
            identical GPUs).

    Returns:
        One device per task, or ``None`` when a ready task fits no device.

    Raises:
        ValueError: ``rule`` is not ``"finish"`` or ``"start"``.
    """
    if rule not in ("finish", "start"):
        raise ValueError(f"m_etf: rule must be 'finish' or 'start', got {rule!r}")
    ledger = _fixed_ledger(problem)
    tasks = problem.tasks
    devices = problem.devices
    rank = {d: k for k, d in enumerate(problem.topology.device_names)}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(tasks)))
    inputs: dict[int, list[Value]] = defaultdict(list)
    for v in problem.values:
        for c in v.consumers:
            dag.add_edge(v.producer, c)
            inputs[c].append(v)
    assert nx.is_directed_acyclic_graph(dag)
    waiting = {i: dag.in_degree(i) for i in dag}
    ready = [i for i in range(len(tasks)) if waiting[i] == 0]
    free_at: dict[str, float] = defaultdict(float)
    finish: dict[int, float] = {}
    placed: dict[int, str] = {}
    while ready:
        best = None
        for i in ready:
            task = tasks[i]
            options = [task.fixed_device] if task.fixed_device else devices
            found = False
            for d in options:
                if not task.fixed_device and ledger.need_bytes(i, d) > problem.capacity_bytes[d]:
                    continue
                found = True
                arrival = 0.0
                for v in inputs[i]:
                    src = placed[v.producer]
                    sent = 0.0 if src == d else copy_time_s(problem, v, src, d)
                    arrival = max(arrival, finish[v.producer] + sent)
                start = max(free_at[d], arrival)
                end = start + task.time_s.get(d, 0.0)
                key = (end, start) if rule == "finish" else (start, end)
                key += (i, rank.get(d, len(rank)))
                if best is None or key < best[0]:
                    best = (key, i, d, end)
            if not found:
                need = {d: ledger.need_bytes(i, d) for d in devices}
                caps = {d: problem.capacity_bytes[d] for d in devices}
                raise _NoPlacement(
                    f"task {task.name!r} fits no device when it is ready: it would need "
                    f"{need} bytes, capacities {caps}"
                )
        assert best is not None
        _, i, d, end = best
        if not tasks[i].fixed_device:
            ledger.place(i, d)
        placed[i] = d
        finish[i] = end
        free_at[d] = end
        ready.remove(i)
        for succ in dag.successors(i):
            waiting[succ] -= 1
            if waiting[succ] == 0:
                ready.append(succ)
    assert len(placed) == len(tasks)
    return tuple(ledger.assignment)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- chain DP


@dataclass
class _Chain:
    """Precomputed pieces of the contiguous-stage dynamic program (see :func:`chain_dp`)."""

    free: list[int]  # free index -> task index
    reach: dict[str, list[int]]  # device -> for each start i, the largest j with free[i:j] fitting
    base: dict[str, list[float]]  # device -> prefix sums of per-task stage cost
    open_at: list[list[int]]  # boundary i -> free producers p < i whose values a task >= i reads
    hits: list[dict[int, list[tuple[Value, int, str | None]]]]  # i -> m -> (v, slot, fixed src)
    fixed_dsts: dict[int, frozenset[str]]  # id(v) -> devices of v's fixed consumers
    constant_s: float


def _prepare_chain(problem: PlacementProblem, devices: list[str], latency: bool) -> _Chain:
    tasks = problem.tasks
    ledger = _fixed_ledger(problem)
    free = [i for i, t in enumerate(tasks) if t.fixed_device is None]
    pos = {g: f for f, g in enumerate(free)}
    num_free = len(free)

    # Which free stretches fit each device, next to what the fixed tasks hold there. A stretch
    # that reads a shared (tied) weight held outside it keeps a copy of it.
    reads_shared: dict[int, list[int]] = defaultdict(list)
    for w, shared in enumerate(problem.shared):
        for r in shared.readers:
            reads_shared[r].append(w)
    # Values a free task makes come as copies to the devices of the fixed tasks that read them,
    # unless the stage there makes them (each device holds one stage: all other free tasks run
    # elsewhere); values made before a stage elsewhere come as copies to the stage's readers.
    copies = problem.activation_copies
    reads_value: dict[int, list[int]] = defaultdict(list)
    to_fixed: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))  # d -> producer -> values
    for vi, v in enumerate(problem.values):
        for c in v.consumers:
            reads_value[c].append(vi)
        if v.producer in pos:
            for d in {tasks[c].fixed_device for c in v.consumers if c not in pos}:
                to_fixed[d][v.producer].append(vi)

    def add_span(act: list[int], vi: int, sign: int) -> None:
        first, last = problem.values[vi].received_span
        for step in range(first, last + 1):
            act[step] += sign * copies * problem.values[vi].nbytes

    reach: dict[str, list[int]] = {}
    for d in devices:
        cap = problem.capacity_bytes[d]
        ends = []
        base = list(ledger.active[d])
        for made in to_fixed[d].values():
            for vi in made:
                add_span(base, vi, 1)
        for i in range(num_free):
            act = list(base)
            peak = max(act, default=0)
            res = ledger.resident[d]
            copied: set[int] = set()
            received = {vi for made in to_fixed[d].values() for vi in made}  # counted in base,
            received |= {vi for vi, dev in ledger.received if dev == d}  # as the fixed tasks' copies
            j = i
            while j < num_free:
                g = free[j]
                res += tasks[g].held_bytes(d).get(d, 0)
                for w in reads_shared[g]:
                    home = problem.shared[w].home
                    held_here = tasks[home].fixed_device == d or (home in pos and i <= pos[home] <= j)
                    if w not in copied and not held_here:
                        copied.add(w)
                        res += problem.shared[w].nbytes
                for step, nbytes in ledger.increments[g]:
                    act[step] += nbytes
                for vi in to_fixed[d].get(g, ()):
                    add_span(act, vi, -1)
                for vi in reads_value[g]:
                    v = problem.values[vi]
                    made_here = tasks[v.producer].fixed_device == d or (v.producer in pos and pos[v.producer] >= i)
                    if vi not in received and not made_here:
                        received.add(vi)
                        add_span(act, vi, 1)
                peak = max(act, default=0)
                if res + peak > cap:
                    break
                j += 1
            ends.append(j)
        reach[d] = ends

    fixed_dsts: dict[int, frozenset[str]] = {}
    out_s = [defaultdict(float) for _ in range(num_free)]  # free p -> device -> seconds
    constant = 0.0
    if latency:
        constant = sum(t.time_s.get(t.fixed_device, 0.0) for t in tasks if t.fixed_device)
    free_consumers: dict[int, list[int]] = {}
    for v in problem.values:
        dsts = frozenset(tasks[c].fixed_device for c in v.consumers if c not in pos)
        fixed_dsts[id(v)] = dsts
        free_consumers[id(v)] = sorted(pos[c] for c in v.consumers if c in pos)
        src = tasks[v.producer].fixed_device
        if not latency:
            continue
        if src:  # fixed -> fixed transfers do not depend on the placement
            constant += sum(copy_time_s(problem, v, src, x) for x in dsts - {src})
        else:  # free -> fixed: known once the producer's device is
            for d in devices:
                out_s[pos[v.producer]][d] += sum(copy_time_s(problem, v, d, x) for x in dsts - {d})

    base = {}
    for d in devices:
        acc = [0.0]
        for f, g in enumerate(free):
            acc.append(acc[-1] + tasks[g].time_s.get(d, 0.0) + out_s[f][d])
        base[d] = acc

    open_at: list[list[int]] = []
    for i in range(num_free + 1):
        open_at.append(sorted({
            pos[v.producer]
            for v in problem.values
            if v.producer in pos and pos[v.producer] < i and free_consumers[id(v)]
            and free_consumers[id(v)][-1] >= i
        }))
    hits: list[dict[int, list]] = []
    for i in range(num_free + 1):
        slot = {p: k for k, p in enumerate(open_at[i])}
        by_first: dict[int, list] = defaultdict(list)
        for v in problem.values:
            cons = free_consumers[id(v)]
            k = bisect.bisect_left(cons, i)
            if k == len(cons):
                continue
            if v.producer in pos:
                p = pos[v.producer]
                if p >= i:
                    continue  # produced inside the stage that reads it first
                by_first[cons[k]].append((v, slot[p], None))
            else:
                by_first[cons[k]].append((v, -1, tasks[v.producer].fixed_device))
        hits.append(by_first)
    return _Chain(free, reach, base, open_at, hits, fixed_dsts, constant)


def _device_choices(
    problem: PlacementProblem, order: Sequence[str] | None, max_device_subsets: int
) -> tuple[Callable, object, list[str], str]:
    """How the DP may pick the next stage's device: ``(options(used) -> [(device, used')],
    initial used, devices, mode)``."""
    if order is None:
        devices = problem.devices
        in_class = {d for cls in interchangeable_devices(problem) for d in cls}
        classes: list[list[str]] = [list(c) for c in interchangeable_devices(problem)]
        classes += [[d] for d in devices if d not in in_class]
        subsets = math.prod(len(c) + 1 for c in classes)
        if subsets <= max_device_subsets:

            def options(used: tuple[int, ...]):
                for c, cls in enumerate(classes):
                    if used[c] < len(cls):
                        yield cls[used[c]], used[:c] + (used[c] + 1,) + used[c + 1:]

            return options, (0,) * len(classes), devices, "any order"
        order = _gpu_first(problem, devices)
        log.info(
            "chain_dp: %d device subsets > max_device_subsets=%d; stages follow the fixed "
            "order %s", subsets, max_device_subsets, order,
        )
    else:
        order = _check_order(problem, order, "order")
    fixed_order = list(order)

    def ordered(used: int):
        for k in range(used + 1, len(fixed_order)):
            yield fixed_order[k], k

    return ordered, -1, fixed_order, "fixed order"


def _chain_dp(
    problem: PlacementProblem,
    latency: bool,
    order: Sequence[str] | None,
    max_device_subsets: int,
) -> tuple[Assignment, float]:
    if max_device_subsets < 1:
        raise ValueError(f"max_device_subsets must be >= 1, got {max_device_subsets}")
    options, start_used, devices, mode = _device_choices(problem, order, max_device_subsets)
    ch = _prepare_chain(problem, devices, latency)
    tasks = problem.tasks
    if not ch.free:
        assignment = tuple(t.fixed_device for t in tasks)
        value = evaluate(problem, assignment).time_s if latency else 0.0  # type: ignore[arg-type]
        return assignment, value  # type: ignore[return-value]
    upper = math.inf
    if mode == "any order" and len(devices) > 2:
        # An incumbent from the cheap fixed-order DP (fastest devices first) lets the search in
        # any order drop states that cannot beat it; the optimum is kept (bounds are valid).
        speed = sorted(devices, key=lambda d: ch.base[d][-1])

        def ordered(used: int):
            for k in range(used + 1, len(speed)):
                yield speed[k], k

        first = _run_dp(problem, ch, ordered, -1, latency, math.inf)
        if first is not None:
            upper = first[1]
    found = _run_dp(problem, ch, options, start_used, latency, upper)
    if found is None:
        raise _NoPlacement(
            "no split of the tasks into contiguous stages on distinct devices fits memory "
            f"(stage devices: {devices}, capacities "
            f"{dict((d, problem.capacity_bytes[d]) for d in devices)})"
        )
    result, value = found
    if latency:  # evaluate() may overlap independent work that the DP adds up
        total = value + ch.constant_s
        check = evaluate(problem, result).time_s
        assert check <= total * (1 + 1e-9) + 1e-12, (total, check)
    else:
        total = value
        check = max(stage_times(problem, result).values(), default=0.0)
        assert abs(total - check) <= 1e-9 * max(1.0, abs(check)) + 1e-12, (total, check)
    return result, check


def _run_dp(
    problem: PlacementProblem,
    ch: _Chain,
    options: Callable,
    start_used: object,
    latency: bool,
    upper: float,
) -> tuple[Assignment, float] | None:
    """The DP of :func:`chain_dp` (``latency``) or :func:`chain_dp_bottleneck`; states whose
    value plus a lower bound on what is left exceeds ``upper`` are dropped."""
    tasks = problem.tasks
    num_free = len(ch.free)
    devices = list(ch.base)
    # Lower bound on the latency of free tasks j.. (fastest device each, no transfers). A
    # stage's value plus this bound never decreases as the stage grows, so the scan stops there.
    rest = [0.0] * (num_free + 1)
    if latency:
        for f in range(num_free - 1, -1, -1):
            rest[f] = rest[f + 1] + min(ch.base[d][f + 1] - ch.base[d][f] for d in devices)
    limit_value = upper * (1 + 1e-9) + 1e-15 if upper < math.inf else math.inf
    xfer: dict[tuple[int, str, str], float] = {}

    def cost(v: Value, src: str, dst: str) -> float:
        key = (id(v), src, dst)
        if key not in xfer:
            xfer[key] = copy_time_s(problem, v, src, dst)
        return xfer[key]

    # best[i]: (used devices, devices of the open producers at i) -> (value, back pointer)
    best: list[dict] = [dict() for _ in range(num_free + 1)]
    best[0][(start_used, ())] = (0.0, None)
    for i in range(num_free):
        if not best[i]:
            continue
        slot_i = {p: k for k, p in enumerate(ch.open_at[i])}
        # carry[j]: for each producer open at j, its slot in the state at i (-1: in the stage)
        carry = {
            j: [slot_i[p] if p < i else -1 for p in ch.open_at[j]]
            for j in range(i + 1, num_free + 1)
        }
        hits_i = ch.hits[i]
        for state, (value, _) in list(best[i].items()):
            used, open_devs = state
            for d, used_next in options(used):
                incoming = 0.0
                base = ch.base[d]
                for j in range(i + 1, ch.reach[d][i] + 1):
                    for v, slot, fixed_src in hits_i.get(j - 1, ()):
                        src = open_devs[slot] if slot >= 0 else fixed_src
                        if src != d and not (latency and d in ch.fixed_dsts[id(v)]):
                            incoming += cost(v, src, d)
                    stage = base[j] - base[i] + incoming
                    new_value = value + stage if latency else max(value, stage)
                    if new_value + rest[j] > limit_value:
                        break
                    key = (used_next, tuple(open_devs[c] if c >= 0 else d for c in carry[j]))
                    cur = best[j].get(key)
                    if cur is None or new_value < cur[0]:
                        best[j][key] = (new_value, (i, state, d))
    if not best[num_free]:
        return None
    state, (value, back) = min(best[num_free].items(), key=lambda kv: kv[1][0])
    assignment = [t.fixed_device for t in tasks]
    j = num_free
    while back is not None:
        i, prev, d = back
        for f in range(i, j):
            assignment[ch.free[f]] = d
        j, state = i, prev
        back = best[i][prev][1]
    return tuple(assignment), value  # type: ignore[arg-type]


@_baseline
def chain_dp(
    problem: PlacementProblem,
    *,
    order: Sequence[str] | None = None,
    max_device_subsets: int = 256,
) -> Assignment:
    r"""The best split of the tasks into contiguous stages on distinct devices (exact DP).

    Assumption (the space searched): the free tasks, in execution order, are cut into
    contiguous non-empty stages; each stage runs on its own device (no device holds two
    stages), in any order of devices (with ``order``: in that order, devices may be skipped);
    tasks fixed to a device stay there and do not cut a stage. Within this space the result is
    exact for the sequential time (:attr:`~autopart.solver.Evaluation.sequential_s`): the sum
    of compute times plus, for each value, one transfer per device (other than the producer's)
    where some reader runs, skip connections included, with each device's memory held at every
    step. :func:`~autopart.solver.evaluate`'s latency (a makespan) can be lower where a copy or
    a branch overlaps other work; the DP reports that value.

    Method: dynamic program over stage boundaries :math:`i` (a position among the free tasks).
    State: which devices are used (a mask; interchangeable devices, as
    :func:`~autopart.solver.interchangeable_devices` finds them, are counted instead, as they
    are used in canonical order) and the devices of the *open* producers at :math:`i` (free
    tasks before :math:`i` whose values a task at or after :math:`i` reads: their device prices
    those transfers, which makes skip connections exact). A stage :math:`[i, j)` on device
    :math:`d` costs its compute, its incoming transfers (once per value, none from :math:`d`
    itself or to a device that a fixed reader already receives the value on) and the transfers
    of its values to fixed readers. Memory separates by device because each device holds one
    stage: :math:`[i, j)` may go on :math:`d` if it fits next to the fixed tasks there.
    As PipeDream's partitioner (Narayanan et al., SOSP 2019), with the latency objective.

    Complexity: :math:`O(F^2 \cdot D \cdot S)` stage extensions with :math:`F` free tasks,
    :math:`D` devices and :math:`S` states per boundary, :math:`S \le U \cdot D^{o}` for
    :math:`U = \prod_c (|c| + 1)` subsets of device classes :math:`c` (:math:`2^D` for distinct
    devices, :math:`D + 1` with ``order``) and :math:`o` open producers (1 on a plain chain).
    In any order, the fixed-order DP over the devices sorted by speed runs first and its value
    bounds the search (states whose value plus the fastest-device time of the tasks left
    exceeds it are dropped; exact, and about 6x fewer states on 8 distinct devices: ~1 s for
    32 tasks on a 2-core CPU). When :math:`U` exceeds ``max_device_subsets``, stages follow the
    fixed GPU-first order (:func:`sequential_fill`'s) instead, and the result is exact for that
    order only.

    Args:
        order: stages use these devices in this order (each at most once); default any order.
        max_device_subsets: most device subsets to search in any order (default 256: 8
            distinct devices, or 255 identical GPUs and a CPU).

    Returns:
        One device per task, or ``None`` when no such split fits memory.

    Raises:
        ValueError: ``order`` names a device without capacity or twice, or
            ``max_device_subsets`` < 1.
    """
    return _chain_dp(problem, True, order, max_device_subsets)[0]


def stage_times(problem: PlacementProblem, assignment: Sequence[str]) -> dict[str, float]:
    """Seconds per micro-batch of each pipeline stage: for each device running free tasks,
    their compute time plus the transfers of values they read from other devices (once per
    value per device). Fixed tasks (inputs, outputs, pinned weights) are fed and drained
    outside the pipeline and belong to no stage. The bottleneck is the largest entry.

    Source: the per-stage time whose maximum PipeDream's partitioner minimizes (Narayanan et
    al., "PipeDream: Generalized Pipeline Parallelism for DNN Training", SOSP 2019, Sec. 3.1),
    with autopart's alpha-beta transfer times.
    """
    tasks = problem.tasks
    out: dict[str, float] = {}
    for t, d in zip(tasks, assignment):
        if t.fixed_device is None:
            out[d] = out.get(d, 0.0) + t.time_s.get(d, 0.0)
    for v in problem.values:
        src = assignment[v.producer]
        for dst in {assignment[c] for c in v.consumers if tasks[c].fixed_device is None} - {src}:
            out[dst] += copy_time_s(problem, v, src, dst)
    return out


def chain_dp_bottleneck(
    problem: PlacementProblem,
    *,
    order: Sequence[str] | None = None,
    max_device_subsets: int = 256,
) -> tuple[Assignment, float] | None:
    """The split into contiguous stages on distinct devices with the smallest bottleneck.

    Same space and state as :func:`chain_dp`; the objective is the largest
    :func:`stage_times` entry (seconds per micro-batch of a pipeline), as PipeDream's
    partitioner minimizes the slowest stage (Narayanan et al., SOSP 2019). Exact under the
    same assumption, by the same complexity; the basis for a throughput objective.

    Returns:
        ``(assignment, bottleneck_s)``, or ``None`` when no such split fits memory.

    Raises:
        ValueError: as :func:`chain_dp`.
    """
    try:
        assignment, bottleneck_s = _chain_dp(problem, False, order, max_device_subsets)
        _check(problem, assignment, "chain_dp_bottleneck")
    except _NoPlacement as exc:
        log.debug("chain_dp_bottleneck: no placement: %s", exc)
        return None
    return assignment, bottleneck_s


@_baseline
def _chain_dp_bottleneck_assignment(problem: PlacementProblem, **options) -> Assignment:
    """:func:`chain_dp_bottleneck`'s assignment alone (for :data:`BASELINES`)."""
    order = options.get("order")
    return _chain_dp(problem, False, order, options.get("max_device_subsets", 256))[0]


# --------------------------------------------------------------------------- single device


@_baseline
def single_device(problem: PlacementProblem) -> Assignment:
    """Every free task on one device: the fastest (by :func:`~autopart.solver.evaluate`) of
    the devices that hold them all; ``None`` if none does. Ties go to topology order.

    Source: the default of every framework (``model.to(device)``).
    """
    _fixed_ledger(problem)
    best: tuple[float, Assignment] | None = None
    needs = {}
    for d in problem.devices:
        assignment = tuple(t.fixed_device or d for t in problem.tasks)
        ev = evaluate(problem, assignment)
        needs[d] = ev.peak_bytes.get(d, 0)
        if not over_capacity(problem, ev) and (best is None or ev.time_s < best[0]):
            best = (ev.time_s, assignment)
    if best is None:
        raise _NoPlacement(
            "no single device holds every task: "
            + ", ".join(
                f"{d} would need {needs[d]} bytes of {problem.capacity_bytes[d]}" for d in needs
            )
        )
    return best[1]


# --------------------------------------------------------------------------- registry


BASELINES: dict[str, Baseline] = {
    "sequential_fill": sequential_fill,
    "balanced": balanced,
    "balanced_low_0": balanced_low_0,
    "m_etf": m_etf,
    "chain_dp": chain_dp,
    "chain_dp_bottleneck": _chain_dp_bottleneck_assignment,
    "single_device": single_device,
}
"""Name -> baseline ``(problem, **options) -> assignment | None``. Add your own here; a plain
function returning ``None`` gets the reason ``"returned None"`` in :func:`run_baselines`."""


@dataclass(frozen=True)
class BaselineResult:
    """One baseline's placement and its score under :func:`~autopart.solver.evaluate`.

    ``time_s``: predicted seconds per call (``None`` without an assignment); ``peak_bytes``:
    device -> peak bytes; ``wall_time_s``: seconds the baseline itself took; ``reason``: why
    there is no assignment (``None`` when there is one).
    """

    name: str
    assignment: Assignment | None
    time_s: float | None
    peak_bytes: dict[str, int] | None
    wall_time_s: float
    reason: str | None = None


def run_baselines(
    problem: PlacementProblem, names: Iterable[str] | None = None
) -> dict[str, BaselineResult]:
    """Run baselines (default: all of :data:`BASELINES`, in its order) on ``problem``.

    Returns:
        name -> :class:`BaselineResult`; a baseline that finds nothing has ``assignment=None``
        and a ``reason``.

    Raises:
        ValueError: a name not in :data:`BASELINES`.
    """
    names = list(BASELINES) if names is None else list(names)
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    results = {}
    for name in names:
        fn = BASELINES[name]
        explained = getattr(fn, "__wrapped__", None)
        reason = None
        start = time.perf_counter()
        try:
            assignment = explained(problem) if explained else fn(problem)
        except _NoPlacement as exc:
            assignment, reason = None, str(exc)
        wall = time.perf_counter() - start
        if assignment is None:
            results[name] = BaselineResult(name, None, None, None, wall, reason or "returned None")
            continue
        assignment = tuple(assignment)
        if not explained:
            try:
                _check(problem, assignment, name)
            except _NoPlacement as exc:
                results[name] = BaselineResult(name, None, None, None, wall, str(exc))
                continue
        ev = evaluate(problem, assignment)
        results[name] = BaselineResult(name, assignment, ev.time_s, dict(ev.peak_bytes), wall)
    return results
