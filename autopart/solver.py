r"""Placement ILP: which device runs each task, minimizing predicted time, or energy.

Model (tasks run one at a time in their order, as the runtime runs them):

Sets
    :math:`T` tasks in execution order (``PlacementProblem.tasks``); :math:`D_t` devices task
    :math:`t` may use (its fixed device, or every device with capacity > 0); :math:`V` values,
    each produced by task :math:`p(v)`, read by tasks :math:`C(v)`, :math:`b_v` bytes in
    :math:`k_v` tensors; :math:`L` activation live ranges, held on :math:`p(l)`'s device from
    task :math:`p(l)` through task :math:`e(l)`, :math:`b_l` bytes.

Variables
    :math:`x_{t,d} \in \{0,1\}`: task :math:`t` runs on device :math:`d`.
    :math:`y_{v,s,d} \in [0,1]`, :math:`s \ne d`: value :math:`v` is sent from :math:`s` to
    :math:`d` (integral at the optimum because :math:`x` is).

Constraints
    assignment (:func:`add_assignment`): :math:`\sum_{d \in D_t} x_{t,d} = 1`.
    transfer (:func:`add_transfers`): :math:`y_{v,s,d} \ge x_{p(v),s} + x_{c,d} - 1` for
    :math:`c \in C(v)`; a value is sent once per destination however many tasks there read it.
    The aggregated form :math:`\sum_{s \ne d} y_{v,s,d} \ge x_{c,d} - x_{p(v),d}` (a reader on
    :math:`d` whose producer is elsewhere receives the value from some device) is implied for
    integral :math:`x` and tightens the relaxation: GPT-2 on 4 GPUs solves in 0.1 s, not 0.8 s.
    memory (:func:`add_memory`): for each device :math:`d` with capacity :math:`M_d` and each
    task position :math:`i`,
    :math:`\sum_{t,e} R_{t,e,d} x_{t,e} + P_i x_{i,d} + \sum_{l:\,p(l) \le i \le e(l)} b_l x_{p(l),d}
    + \sum_{v:\,f(v) \le i \le g(v)} \sum_s b_v y_{v,s,d} \le M_d`
    with :math:`R_{t,e,d}` the resident bytes (weights held all call long) task :math:`t`
    holds on :math:`d` when it runs on :math:`e` (:meth:`~autopart.coarsen.Task.held_bytes`:
    all of them on :math:`e`, except that a trainable parameter copied to :math:`e` every step
    keeps its gradient and optimizer state where it lives), :math:`P_i` the peak of
    activations born and dead inside task :math:`i`, and the last sum the copies :math:`d`
    receives, each held from the value's first reader :math:`f(v)` to its last :math:`g(v)`
    (``Value.received_span``; the runtime copies it before its first reader on :math:`d` and
    frees it after its last there). This is an upper bound on the true peak.
    Activation terms are multiplied by ``PlacementProblem.activation_copies`` (1: autopart's
    pipelines split one call, whose micro-batches together hold one call's activations; more
    for an offline experiment that models several calls in flight).
    streaming (:func:`add_streaming`): :math:`z_{t,d} \le x_{t,d}`, binary, for a task with
    weights on an accelerator :math:`d` whose host has a CPU device :math:`h(d)` with capacity:
    the task's weights live in host memory and are copied to :math:`d` on every call (as
    DeepSpeed's and accelerate's offloading do). Memory moves from :math:`d`
    (:math:`R_t (x_{t,d} - z_{t,d})`, plus :math:`R_t z_{t,d}` only while task :math:`t` runs)
    to :math:`h(d)` (:math:`R_t z_{t,d}` all call long), and :math:`d` is busy
    :math:`z_{t,d}(\alpha_{h,d} + R_t/\beta_{h,d})` more per call (no prefetch overlap assumed).
    The runtime copies a streamed task's first weights one layer ahead, while the tasks before it
    run, so at position :math:`i`, :math:`d` also holds
    :math:`a_{i,d} \ge \max_{t > i} F_t z_{t,d}` (:math:`F_t`: ``Task.prefetch_bytes``; as
    :math:`a_{i,d} \ge a_{i+1,d}`, :math:`a_{i,d} \ge F_{i+1} z_{i+1,d}`).
    So the ILP chooses, per task, between computing on the CPU and streaming to a GPU. Not for
    training problems (``PlacementProblem.training``), whose :math:`R_t` also holds gradients,
    optimizer state and saved activations that stay on the device.
    shared weights (:func:`add_shared_weights`): a weight held by task :math:`h` and read by task
    :math:`c` on another device (a tied embedding) is copied there once and kept:
    :math:`r_{w,d} \ge x_{c,d} - x_{h,d}`, and :math:`d` holds :math:`b_w r_{w,d}` more bytes all
    call long; no time is charged per call.

    contiguous stages (:func:`add_contiguous_stages`, with ``contiguous_stages=True``): each
    device runs one contiguous run of the movable tasks :math:`t_1, t_2, \dots` in execution
    order (a pipeline stage, as in GPipe and PipeDream): :math:`a_{k,d} \ge x_{t_k,d} -
    x_{t_{k-1},d}` and :math:`x_{t_1,d} + \sum_{k > 1} a_{k,d} \le 1`. Inputs and outputs, whose
    device is fixed, are not part of the sequence.

    symmetry (:func:`add_symmetry_breaking`): devices that are interchangeable (same specs,
    capacity and links) are used in order of first use: for such a class
    :math:`d_0, d_1, \dots`, :math:`x_{t,d_j} \le \sum_{t' < t} x_{t',d_{j-1}}`. Any placement
    can be relabelled to satisfy this, so the optimum is unchanged and the search is smaller.

Objectives (:func:`add_objective`). With compute time :math:`\tau_{t,d}` from the cost pass
and alpha-beta transfer cost :math:`c_{v,s,d} = k_v \alpha_{s,d} + b_v / \beta_{s,d}` over the
topology's link (or route), device :math:`d` is busy
:math:`B_d = \sum_t \tau_{t,d} x_{t,d} + \sum_{v,s} c_{v,s,d} y_{v,s,d}` (its compute plus the
copies it receives).
In a training problem (``PlacementProblem.training`` with a backward pass), :math:`\tau_{t,d}`
is the task's forward plus backward time (:mod:`autopart.passes.training` costs each node's
backward ops) and :math:`c_{v,s,d}` adds the gradient's way back,
:math:`k^g_v \alpha_{d,s} + b^g_v / \beta_{d,s}`. Backward runs every task's path in reverse on
the same devices, so the critical path of the step is the forward path's length with both
directions counted on each task and edge; the send and the return are charged to one device.

    makespan (:func:`add_precedence`, latency and energy): start times :math:`S_t \ge 0` with
    task :math:`t` busy for :math:`\delta_t = \sum_d \tau_{t,d} x_{t,d}` (plus its streamed
    weights' copy); a reader starts after its producer finishes and the value's copy to the
    reader's device arrives (:math:`S_c \ge S_p + \delta_p + \text{copy}`); the call
    lasts :math:`C \ge S_t + \delta_t` for every task and :math:`C \ge B_d` for every device.
    So independent branches on different devices overlap, and so does a copy with the work of
    tasks that do not wait for it (the runtime's copy streams and host worker lane). A
    relaxation, documented: tasks on one device are not sequenced one by one; :math:`C` is the
    larger of the critical path and the busiest device, a lower bound on any schedule of the
    placement, exact for a chain and for branches on distinct devices
    (:func:`critical_path_s` and :func:`evaluate` compute the same value).

    ``latency``: :math:`\min C`, the time of one call.
    ``throughput``: :math:`\min \beta` with :math:`\beta \ge B_d` for every device: the
    bottleneck of a pipeline that streams micro-batches through the devices (each device does its
    share of every micro-batch; pipeline fill and drain are not counted; PipeDream, Narayanan et
    al., SOSP 2019). Stages are contiguous when ``contiguous_stages`` asks for them, as GPipe
    and PipeDream cut them; otherwise the ILP may give a device several runs of tasks, which the
    runtime schedules as well. The runtime pipelines the micro-batches of one call
    (:mod:`autopart.pipeline`), whose activations together are those of the whole batch, so
    memory is counted as for one call (``activation_copies`` = 1). Two valid cuts tighten the
    relaxation, with :math:`f_t = \min_d \tau_{t,d}` and :math:`\rho_d = \min_t \tau_{t,d} / f_t`
    (how much slower device :math:`d` is at best): :math:`\beta \ge \sum_t f_t / \sum_d \rho_d^{-1}`
    (device :math:`d` does at most :math:`\beta / \rho_d` of the fastest-time work), and the
    pigeonhole bound :math:`\beta \ge \max_k \sum` of the :math:`\lceil k/|D| \rceil` smallest of
    the :math:`k` largest :math:`f_t` (:func:`pigeonhole_bound_s`: some device runs that many of
    them; for identical layers, :math:`\lceil n/|D| \rceil` of them). A third cut is the
    optimum of a small MILP over how many tasks of each class of identical tasks each device
    runs, with weights within capacity and the copies no placement avoids
    (:func:`aggregated_bottleneck_bound_s`): it proves Llama-8B's memory-bound split, which the
    relaxation of the full model leaves 12% open.
    ``energy``: :math:`\min \sum_d (P^{act}_d - P^{idle}_d) B_d + C \sum_d P^{idle}_d` (see
    :mod:`autopart.costmodel.energy`: busy devices draw their active power, all powered devices
    their idle power for the whole call) subject to :math:`C \le (1 + s) C^*` (:func:`add_latency_cap`),
    :math:`C^*` the best latency (solved first; its proven lower bound, so that the promise holds
    when the fastest plan is only within the gap of the optimum, but never below the fastest
    plan found) and :math:`s` the allowed slack; or, when the user gives Zeus's :math:`\eta`
    (You et al., NSDI 2023), one MILP minimizing
    :math:`\eta E + (1 - \eta) C \sum_d P^{act}_d` with no cap. Devices with no
    power figures count 0 W.

Not modelled (yet): the order of tasks on one device (the makespan relaxation above), a
copy's time on the sending device and on the link (it is charged to the receiver only), overlap
of a streamed weight's copy with earlier tasks in time (the runtime prefetches one layer ahead;
its memory is counted), and pipelining across calls. A throughput plan that streams
weights runs whole batches (micro-batches would copy the weights once each), so its devices'
shares of a call do not overlap as the throughput objective assumes.

Starting points: the best of a greedy placement and the baselines (sequential fill, balanced
fill, m-ETF, contiguous-stage dynamic programs; :mod:`autopart.baselines`) is handed to HiGHS as
its first incumbent, and returned if the solver finds nothing better in its time limit, so the
ILP is never worse than them. Coarsening asks for the first of them that fits
(:func:`quick_placement`) to choose how finely to cut repeated blocks.

When no placement fits, the error names the bytes needed and allowed, and suggests a higher
``max_groups`` only where one would cut some task finer (``Task.unit_bytes``: more than one part
that coarsening can separate, the largest within the largest device).

Rows are scaled so that coefficients stay near 1 whatever the model's size: each memory row is
divided by its device's capacity, and the objective by the sum over tasks of their fastest
compute time (times the devices' mean active power for energy) (HiGHS misjudges badly scaled rows: memory in bytes overran time limits, and memory
in GiB fell below its feasibility tolerance on small models; see shared/notes/solver-facts.md).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import pulp

from .coarsen import PlacementProblem, Task, Value
from .config import format_bytes
from .costmodel.energy import energy_J

log = logging.getLogger(__name__)



ObjectiveName = Literal["latency", "throughput", "energy"]
OBJECTIVE_UNITS = {"latency": "s", "throughput": "s", "energy": "J"}


@dataclass(frozen=True)
class Solution:
    """A placement of every task, with how it was found.

    ``objective`` is the placement's value of ``objective_name`` (seconds for latency and
    throughput, joules for energy); ``bound`` a proven lower bound on any placement's value (None
    if unknown); ``gap = (objective - bound) / objective``.
    """

    assignment: tuple[str, ...]
    status: str
    """``"optimal"`` (proven: gap 0), ``"feasible"`` (a solution with a proven ``gap``: the
    solver stopped at ``mip_rel_gap`` or at the time limit), ``"heuristic"``
    (the solver found nothing better than the best starting point in time; its bound and gap
    are the solver's, ``None`` only when the solver failed to run, ``solver`` then ending in
    ``"(failed)"``), or ``"trivial"`` (one device: nothing to decide)."""
    objective_name: str
    objective: float
    bound: float | None
    gap: float | None
    solve_time_s: float
    solver: str
    num_variables: int
    num_constraints: int
    streamed: frozenset[int] = frozenset()
    """Tasks whose weights stay in host memory and are copied to their device on each call."""
    latency_cap_s: float | None = None
    """The energy objective's time budget, seconds per call (``(1 + energy_slack)`` x the best
    latency); None for other objectives and for Zeus's weighted form."""
    energy_eta: float | None = None
    """Zeus's eta when the energy objective was its weighted form (then ``objective`` is that
    cost, in joules), else None."""


@dataclass(frozen=True)
class Evaluation:
    """Predicted time, energy and memory of one placement under the model the ILP uses.

    ``time_s``: one call (latency): the larger of :func:`critical_path_s` and the busiest
    device (the ILP's makespan); ``compute_s``, ``transfer_s``: all compute and all copies,
    overlapped or not; ``busy_s``: per device, its compute plus the copies it receives;
    ``bottleneck_s``: the busiest device (the throughput objective); ``energy_J``: one call's
    energy (devices without power figures count 0 W); ``peak_bytes`` per device.
    """

    time_s: float
    compute_s: float
    transfer_s: float
    peak_bytes: dict[str, int]
    busy_s: dict[str, float]
    energy_J: float
    max_power_W: float = 0.0
    """Sum of the active power of the devices that draw power in a call (Zeus's MAXPOWER)."""

    @property
    def sequential_s(self) -> float:
        """One call with nothing overlapped: all compute plus all copies, seconds."""
        return self.compute_s + self.transfer_s

    @property
    def bottleneck_s(self) -> float:
        return max(self.busy_s.values(), default=0.0)

    def value(self, objective: str, energy_eta: float | None = None) -> float:
        r"""The value of ``objective`` (``"latency"``, ``"throughput"`` or ``"energy"``); for
        ``"energy"`` with ``energy_eta``, Zeus's cost
        :math:`\eta E + (1 - \eta) P_{max} T` in joules (You et al., "Zeus: Understanding and
        Optimizing GPU Energy Consumption of DNN Training", NSDI 2023)."""
        if objective == "latency":
            return self.time_s
        if objective == "throughput":
            return self.bottleneck_s
        if objective == "energy":
            if energy_eta is not None:
                return energy_eta * self.energy_J + (1 - energy_eta) * self.max_power_W * self.time_s
            return self.energy_J
        raise ValueError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVE_UNITS)}")


def power_W(problem: PlacementProblem, device: str) -> tuple[float, float]:
    """(active, idle) watts of a device: (0, 0) for a device with no ``max_power_W``, which
    :func:`~autopart.costmodel.energy.energy_J` counts as unknown; idle 0 where only it is
    missing."""
    dev = problem.topology.device(device)
    if dev.max_power_W is None:
        return 0.0, 0.0
    return dev.max_power_W, dev.idle_power_W or 0.0


def powered_devices(problem: PlacementProblem) -> list[str]:
    """Devices that draw power during a call: those that may compute, and fixed ones."""
    fixed = [t.fixed_device for t in problem.tasks if t.fixed_device]
    return list(dict.fromkeys([*problem.devices, *fixed]))


def stream_host(problem: PlacementProblem, device: str) -> str | None:
    """The CPU device that can hold weights streamed to ``device``: a CPU with capacity on the
    same host; None for a CPU device itself, a host without one, or a training problem
    (``PlacementProblem.training``)."""
    topo = problem.topology
    if topo.device(device).kind == "cpu" or problem.training:
        return None
    host = topo.device(device).host
    for name in problem.devices:
        d = topo.device(name)
        if d.kind == "cpu" and d.host == host:
            return name
    return None


def stream_time_s(problem: PlacementProblem, task: int, device: str) -> float:
    """Seconds to copy task ``task``'s weights from its stream host to ``device``."""
    host = stream_host(problem, device)
    assert host is not None
    link = problem.topology.link(host, device)
    return link.latency_s + problem.tasks[task].resident_bytes / link.bandwidth_Bps


def copy_time_s(problem: PlacementProblem, v: Value, src: str, dst: str) -> float:
    """Seconds to send value ``v`` from ``src`` to ``dst``: ``count * latency_s + nbytes /
    bandwidth_Bps`` over ``topology.link(src, dst)`` (alpha-beta, one latency per tensor), plus,
    in a training graph, its gradients' way back: ``grad_count * latency_s + grad_nbytes /
    bandwidth_Bps`` over ``topology.link(dst, src)``."""
    link = problem.topology.link(src, dst)
    seconds = v.count * link.latency_s + v.nbytes / link.bandwidth_Bps
    if v.grad_count:
        back = problem.topology.link(dst, src)
        seconds += v.grad_count * back.latency_s + v.grad_nbytes / back.bandwidth_Bps
    return seconds


def values_read_by(problem: PlacementProblem) -> dict[int, list[Value]]:
    """Task index -> the values it reads."""
    readers: dict[int, list[Value]] = {}
    for v in problem.values:
        for c in v.consumers:
            readers.setdefault(c, []).append(v)
    return readers


def evaluate(
    problem: PlacementProblem,
    assignment: tuple[str, ...] | list[str],
    streamed: frozenset[int] | set[int] = frozenset(),
) -> Evaluation:
    """Predicted time (seconds), energy (joules) and per-device peak memory (bytes) of
    ``assignment`` (with the weights of tasks in ``streamed`` held in host memory and copied
    each call), exactly as the ILP models them (module docstring)."""
    tasks = problem.tasks
    busy: dict[str, float] = {d: 0.0 for d in powered_devices(problem)}
    compute = 0.0
    for t, d in zip(tasks, assignment):
        seconds = t.time_s.get(d, 0.0)
        compute += seconds
        busy[d] = busy.get(d, 0.0) + seconds
    transfer = 0.0
    for t in streamed:
        seconds = stream_time_s(problem, t, assignment[t])
        transfer += seconds
        busy[assignment[t]] += seconds
    for v in problem.values:
        src = assignment[v.producer]
        for dst in {assignment[c] for c in v.consumers} - {src}:
            seconds = copy_time_s(problem, v, src, dst)
            transfer += seconds
            busy[dst] = busy.get(dst, 0.0) + seconds
    latency = max(critical_path_s(problem, assignment, streamed), max(busy.values(), default=0.0))
    energy = energy_J(busy, latency, problem.topology).total_J
    copies = problem.activation_copies
    peak: dict[str, int] = {}
    resident: dict[str, int] = {}
    for i, (t, d) in enumerate(zip(tasks, assignment)):
        held = {stream_host(problem, d): t.resident_bytes} if i in streamed else t.held_bytes(d)
        for home, nbytes in held.items():
            resident[home] = resident.get(home, 0) + nbytes
    for w in problem.shared:  # a copy of the weight on each other device that reads it
        for d in {assignment[c] for c in w.readers} - {assignment[w.home]}:
            resident[d] = resident.get(d, 0) + w.nbytes
    managed = set(problem.devices)  # a device without capacity is outside the plan (the user's)
    received = [
        (v.received_span, dst, copies * v.nbytes)
        for v in problem.values
        for dst in {assignment[c] for c in v.consumers} - {assignment[v.producer]}
        if dst in managed
    ]
    for i, (t, d) in enumerate(zip(tasks, assignment)):
        live = dict(resident)
        live[d] = live.get(d, 0) + copies * t.peak_bytes + (t.resident_bytes if i in streamed else 0)
        ahead: dict[str, int] = {}  # the first weights of tasks streamed later, copied ahead
        for j in streamed:
            if j > i:
                ahead[assignment[j]] = max(ahead.get(assignment[j], 0), tasks[j].prefetch_bytes)
        for dev, nbytes in ahead.items():
            live[dev] = live.get(dev, 0) + nbytes
        for r in problem.live_ranges:
            if r.producer <= i <= r.last:
                owner = assignment[r.producer]
                live[owner] = live.get(owner, 0) + copies * r.nbytes
        for (first, last), dst, nbytes in received:
            if first <= i <= last:
                live[dst] = live.get(dst, 0) + nbytes
        for dev, nbytes in live.items():
            peak[dev] = max(peak.get(dev, 0), nbytes)
    max_power = sum(power_W(problem, d)[0] for d in busy)
    return Evaluation(latency, compute, transfer, peak, busy, energy, max_power)


def critical_path_s(
    problem: PlacementProblem,
    assignment: tuple[str, ...] | list[str],
    streamed: frozenset[int] | set[int] = frozenset(),
) -> float:
    """Seconds of the longest chain of tasks and transfers of ``assignment``: each task starts
    when the values it reads are there (their producer finished, plus the copy when the producer
    ran on another device) and runs for its compute time (plus its weights' copy if streamed)."""
    return max(_earliest_starts(problem, assignment, streamed)[1], default=0.0)


def _earliest_starts(problem: PlacementProblem, assignment, streamed) -> tuple[list[float], list[float]]:
    """Per task, (start, finish) seconds of :func:`critical_path_s`'s schedule."""
    ready = [0.0] * len(problem.tasks)
    finish = [0.0] * len(problem.tasks)
    readers = values_read_by(problem)
    for t, (task, d) in enumerate(zip(problem.tasks, assignment)):
        for v in readers.get(t, ()):
            src = assignment[v.producer]
            arrive = finish[v.producer]
            if src != d:
                arrive += copy_time_s(problem, v, src, d)
            ready[t] = max(ready[t], arrive)
        own = stream_time_s(problem, t, d) if t in streamed else 0.0
        finish[t] = ready[t] + task.time_s.get(d, 0.0) + own
    return ready, finish


def allowed_devices(problem: PlacementProblem) -> list[list[str]]:
    """Devices each task may run on: its fixed device, or every device with capacity."""
    devices = problem.devices
    return [[t.fixed_device] if t.fixed_device else list(devices) for t in problem.tasks]


def check_fits(problem: PlacementProblem) -> None:
    """Raise ValueError, with needed and available bytes, if no placement can fit in memory.

    Checks what can be said without solving: some device has memory, the resident bytes fit the
    sum of capacities, and each task's own bytes fit the largest device.
    """
    caps = {d: problem.capacity_bytes[d] for d in problem.devices}
    if not caps:
        raise ValueError(
            f"no device may hold memory (capacities {problem.capacity_bytes}); give at least one "
            "device a positive max_memory"
        )
    # Tasks fixed to a device that is not a candidate (no capacity) hold nothing we place.
    resident = sum(
        min(sum(t.held_bytes(d).values()) for d in ([t.fixed_device] if t.fixed_device else caps))
        for t in problem.tasks
        if t.fixed_device is None or t.fixed_device in caps
    )
    total = sum(caps.values())
    what, fix = _resident_words(problem, "raise max_memory or plan for a topology with more memory")
    if resident > total:
        raise ValueError(
            f"the model needs {resident} bytes ({format_bytes(resident)}) of {what} but the "
            f"devices allow only {total} bytes ({format_bytes(total)}) in total "
            f"({_fmt_caps(caps)}); {fix}"
        )
    biggest = max(caps.values())
    for t in problem.tasks:
        need = min(t.held_bytes(d).get(d, 0) for d in caps) + t.peak_bytes
        if not t.fixed_device and need > biggest:
            if _finer_cut_may_help(t, biggest):
                hint = "raise max_memory or raise max_groups to cut the graph finer"
            elif t.kept_whole is not None:
                hint = (f"raise max_memory (it is not cut: nodes {t.kept_whole[0]!r} to {t.kept_whole[1]!r} "
                        "read a parameter, buffer or constant the graph updates in place, so they run as one "
                        "task, where every reader sees the update)")
            else:
                hint = "raise max_memory"
            raise ValueError(
                f"task {t.name!r} needs {need} bytes ({need - t.peak_bytes} resident + "
                f"{t.peak_bytes} activations) but the largest device allows {biggest} bytes "
                f"({_fmt_caps(caps)}); {hint}"
            )


def _finer_cut_may_help(task: Task, nbytes: int) -> bool:
    """Whether a higher ``max_groups`` could cut ``task`` into tasks of at most ``nbytes``
    resident bytes each (``Task.unit_bytes``: the parts no ``max_groups`` cuts)."""
    return len(task.unit_bytes) > 1 and max(task.unit_bytes) <= nbytes


def _memory_fix(problem: PlacementProblem) -> str:
    """What to change when no placement fits: more memory, and a finer coarsening where some
    free task can still be cut (``Task.unit_bytes``)."""
    caps = [problem.capacity_bytes[d] for d in problem.devices]
    biggest = max(caps, default=0)
    if any(_finer_cut_may_help(t, biggest) for t in problem.tasks if not t.fixed_device):
        return "raise max_memory or raise max_groups to cut the graph finer"
    return "raise max_memory"


def _resident_words(problem: PlacementProblem, fix: str) -> tuple[str, str]:
    """What a task's resident bytes hold, and ``fix`` with the training hint, for messages."""
    if not problem.training:
        return "parameters and buffers", fix
    return (
        "parameters, buffers, gradients, optimizer state and temporaries, and activations saved for backward",
        fix + "; it is planned for training because gradients are enabled: run inference under "
        "torch.no_grad(), or name a lighter optimizer (optimizer='sgd', or 'none' for no training step)",
    )


def _activation_peak(problem: PlacementProblem) -> int:
    """Most activation bytes live at one step, wherever they are placed."""
    return max(
        (
            t.peak_bytes + sum(r.nbytes for r in problem.live_ranges if r.producer <= i <= r.last)
            for i, t in enumerate(problem.tasks)
        ),
        default=0,
    )


def _fmt_caps(caps: dict[str, int]) -> str:
    return ", ".join(f"{d}: {c} bytes" for d, c in caps.items())


def greedy_placement(problem: PlacementProblem) -> tuple[str, ...] | None:
    """A quick placement, used as the ILP's starting solution: tasks in order, each on the
    device where it finishes soonest (compute plus transfers from its producers) among those
    with room for it, keeping ``headroom`` of each device free for activations placed later.

    Returns None if no fitting placement is found this way.
    """
    devices = problem.devices
    readers = values_read_by(problem)
    for headroom in (1.0, 0.9, 0.75, 0.5):
        assignment: list[str] = []
        used = {d: 0 for d in devices}
        received: dict[tuple[int, str], tuple[int, int]] = {}  # (value id, device) -> last step, bytes
        for i, task in enumerate(problem.tasks):
            if task.fixed_device:
                assignment.append(task.fixed_device)
                for home, nbytes in task.held_bytes(task.fixed_device).items():
                    used[home] = used.get(home, 0) + nbytes
                continue
            live = {d: 0 for d in devices}
            for r in problem.live_ranges:
                if r.producer < i <= r.last and assignment[r.producer] in live:
                    live[assignment[r.producer]] += r.nbytes
            for (vid, dst), (last, nbytes) in received.items():
                if i <= last and dst in live:
                    live[dst] += nbytes
            own = sum(r.nbytes for r in problem.live_ranges if r.producer == i)
            best, best_cost = None, float("inf")
            for d in devices:
                held = task.held_bytes(d)
                incoming = sum(v.nbytes for v in readers.get(i, ())
                               if assignment[v.producer] != d and (id(v), d) not in received)
                need = used[d] + live[d] + own + incoming + held.get(d, 0) + task.peak_bytes
                if need > headroom * problem.capacity_bytes[d] or any(
                    used.get(h, 0) + b > headroom * problem.capacity_bytes.get(h, 0)
                    for h, b in held.items() if h != d
                ):
                    continue
                cost = task.time_s.get(d, 0.0)
                for v in readers.get(i, ()):
                    src = assignment[v.producer]
                    if src != d:
                        cost += copy_time_s(problem, v, src, d)
                if cost < best_cost:
                    best, best_cost = d, cost
            if best is None:
                break
            assignment.append(best)
            for home, nbytes in task.held_bytes(best).items():
                used[home] = used.get(home, 0) + nbytes
            for v in readers.get(i, ()):
                if assignment[v.producer] != best:
                    received.setdefault((id(v), best), (v.received_span[1], v.nbytes))
        else:
            ev = evaluate(problem, assignment)
            if all(ev.peak_bytes.get(d, 0) <= problem.capacity_bytes[d] for d in devices):
                return tuple(assignment)
    return None


def _canonical_order(problem: PlacementProblem, assignment: tuple[str, ...]) -> tuple[str, ...]:
    """Relabel interchangeable devices in order of first use (what symmetry breaking demands)."""
    relabel: dict[str, str] = {}
    for cls in interchangeable_devices(problem):
        first_use = [d for d in dict.fromkeys(assignment) if d in cls]
        unused = [d for d in cls if d not in first_use]
        relabel.update(zip(first_use + unused, cls))
    return tuple(relabel.get(d, d) for d in assignment)


class _Model:
    """The PuLP model and its variables; one ``add_*`` function per constraint family."""

    def __init__(self, problem: PlacementProblem) -> None:
        self.problem = problem
        self.prob = pulp.LpProblem("autopart_placement", pulp.LpMinimize)
        self.allowed = allowed_devices(problem)
        self.x = {
            (t, d): self.variable(f"x_{t}_{k}", 0, 1, pulp.LpBinary)
            for t, devs in enumerate(self.allowed)
            for k, d in enumerate(devs)
        }
        self.y: dict[tuple[int, str, str], pulp.LpVariable] = {}
        fastest = sum(
            min(task.time_s.get(d, 0.0) for d in devs) for task, devs in zip(problem.tasks, self.allowed)
        )
        self.time_unit_s = fastest if fastest > 0 else 1e-3
        self.unit = self.time_unit_s  # the objective's unit (set by add_objective)
        self.z: dict[tuple[int, str], pulp.LpVariable] = {}  # streamed weights (add_streaming)
        self.r: dict[tuple[int, str], pulp.LpVariable] = {}  # weight copies (add_shared_weights)
        self.ahead: dict[tuple[str, int], pulp.LpVariable] = {}  # weights copied ahead, / capacity (add_memory)
        self.makespan: pulp.LpVariable | None = None  # C, in time_unit_s (add_precedence)
        self.start: list[pulp.LpVariable] = []  # S_t, in time_unit_s (add_precedence)
        self.w: dict[tuple[int, int, str, str], pulp.LpVariable] = {}  # per reader (add_precedence)
        self.bottleneck_floor_s = 0.0  # aggregated_bottleneck_bound_s, for throughput
        self.energy_eta: float | None = None  # Zeus's eta for the energy objective (solve)
        self.stage_start: dict[tuple[int, str], tuple[pulp.LpVariable, int]] = {}  # a, previous task

    def variable(self, name: str, low: float, up: float | None, cat: str = pulp.LpContinuous):
        return _variable(self.prob, name, low, up, cat)


def _variable(prob: pulp.LpProblem, name: str, low: float, up: float | None, cat: str = pulp.LpContinuous):
    if hasattr(prob, "add_variable"):  # PuLP >= 3.3; LpVariable(...) is deprecated
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)


def add_assignment(m: _Model) -> None:
    for t, devs in enumerate(m.allowed):
        m.prob += pulp.lpSum(m.x[t, d] for d in devs) == 1, f"assign_{t}"


def add_transfers(m: _Model) -> None:
    for vi, v in enumerate(m.problem.values):
        for c in v.consumers:
            for s in m.allowed[v.producer]:
                for d in m.allowed[c]:
                    if s == d:
                        continue
                    key = (vi, s, d)
                    if key not in m.y:
                        m.y[key] = m.variable(f"y_{vi}_{len(m.y)}", 0, 1)
                    m.prob += m.y[key] >= m.x[v.producer, s] + m.x[c, d] - 1
            # Aggregated form, tighter in the relaxation: a reader on d whose producer is not on
            # d receives the value there from some other device.
            for d in m.allowed[c]:
                incoming = [m.y[vi, s, d] for s in m.allowed[v.producer] if s != d]
                if incoming:
                    m.prob += pulp.lpSum(incoming) >= m.x[c, d] - m.x.get((v.producer, d), 0)


def add_shared_weights(m: _Model) -> None:
    """Variables r[w, d] (module docstring): device d keeps a copy of shared weight w."""
    p = m.problem
    for wi, w in enumerate(p.shared):
        for c in w.readers:
            for d in m.allowed[c]:
                if (c, d) not in m.x:
                    continue
                key = (wi, d)
                if key not in m.r:
                    m.r[key] = m.variable(f"r_{wi}_{len(m.r)}", 0, 1)
                home = m.x.get((w.home, d), 0)
                m.prob += m.r[key] >= m.x[c, d] - home


def add_streaming(m: _Model) -> None:
    """Variables z[t, d] (module docstring): stream the weights of free task t to device d.
    Tasks holding weights that other tasks read too are not streamed."""
    p = m.problem
    homes = {w.home for w in p.shared}
    for t, task in enumerate(p.tasks):
        if task.fixed_device or not task.resident_bytes or t in homes:
            continue
        for d in m.allowed[t]:
            if stream_host(p, d) is not None:
                z = m.z[t, d] = m.variable(f"z_{t}_{len(m.z)}", 0, 1, pulp.LpBinary)
                m.prob += z <= m.x[t, d], f"stream_{t}_{len(m.z)}"


def add_memory(m: _Model) -> None:
    p = m.problem
    held: dict[str, list[tuple[pulp.LpVariable, int]]] = {d: [] for d in p.devices}
    for (t, d), x in m.x.items():
        for home, nbytes in p.tasks[t].held_bytes(d).items():
            if nbytes and home in held:
                held[home].append((x, nbytes))
    for d in p.devices:
        cap = float(p.capacity_bytes[d])
        resident = [(x, nbytes / cap) for x, nbytes in held[d]]
        # weights streamed to d live in host memory; those streamed from d (a host) live here
        resident += [(z, -p.tasks[t].resident_bytes / cap) for (t, dev), z in m.z.items() if dev == d]
        resident += [
            (z, p.tasks[t].resident_bytes / cap)
            for (t, dev), z in m.z.items()
            if stream_host(p, dev) == d
        ]
        resident += [(r, p.shared[wi].nbytes / cap) for (wi, dev), r in m.r.items() if dev == d]
        # a[i] >= the first weights of each task after i streamed to d (copied ahead)
        ahead: dict[int, pulp.LpVariable] = {}
        for i in range(len(p.tasks) - 2, -1, -1):
            later = [ahead[i + 1]] if i + 1 in ahead else []
            later += [m.z[i + 1, d] * (p.tasks[i + 1].prefetch_bytes / cap)] if (i + 1, d) in m.z else []
            if later:
                a = ahead[i] = m.ahead[d, i] = m.variable(f"ahead_{len(m.ahead)}", 0, None)
                for k, bound in enumerate(later):
                    m.prob += a >= bound, f"ahead_{len(m.ahead)}_{k}"
        copies = p.activation_copies
        received = []  # (span, terms) of the copies d receives
        for vi, v in enumerate(p.values):
            incoming = [m.y[vi, s, d] for s in m.allowed[v.producer] if (vi, s, d) in m.y]
            if incoming:
                received.append((v.received_span, [(y, copies * v.nbytes / cap) for y in incoming]))
        for i, task in enumerate(p.tasks):
            terms = list(resident)
            if (i, d) in m.z:  # the streamed copy, while the task runs
                terms.append((m.z[i, d], task.resident_bytes / cap))
            if i in ahead:
                terms.append((ahead[i], 1.0))
            if task.peak_bytes and (i, d) in m.x:
                terms.append((m.x[i, d], copies * task.peak_bytes / cap))
            for r in p.live_ranges:
                if r.producer <= i <= r.last and (r.producer, d) in m.x:
                    terms.append((m.x[r.producer, d], copies * r.nbytes / cap))
            for (first, last), incoming in received:  # copies received from other devices
                if first <= i <= last:
                    terms += incoming
            if terms:
                m.prob += pulp.LpAffineExpression(_sum_terms(terms)) <= 1.0, f"mem_{d}_{i}"


def _sum_terms(terms: list[tuple[pulp.LpVariable, float]]) -> dict:
    out: dict = {}
    for var, coef in terms:
        out[var] = out.get(var, 0.0) + coef
    return out


def interchangeable_devices(problem: PlacementProblem) -> list[list[str]]:
    """Classes (of two or more) of devices that can swap places without changing any cost:
    same specs, capacity and task times, equal links to every other device and to each other,
    and no task fixed to them."""
    topo = problem.topology
    involved = set(problem.devices) | {t.fixed_device for t in problem.tasks if t.fixed_device}

    def spec(name: str) -> tuple:
        d = dataclasses.asdict(topo.device(name))
        return tuple(sorted((k, str(v)) for k, v in d.items() if k not in ("name", "source")))

    def cost(a: str, b: str) -> tuple[float, float]:
        link = topo.link(a, b)
        return (link.latency_s, link.bandwidth_Bps)

    def same(a: str, b: str) -> bool:
        if spec(a) != spec(b) or problem.capacity_bytes[a] != problem.capacity_bytes[b]:
            return False
        if any(t.time_s.get(a) != t.time_s.get(b) for t in problem.tasks):
            return False
        if cost(a, b) != cost(b, a):
            return False
        others = involved - {a, b}
        return all(cost(a, c) == cost(b, c) and cost(c, a) == cost(c, b) for c in others)

    fixed = {t.fixed_device for t in problem.tasks}
    classes: list[list[str]] = []
    for d in problem.devices:
        if d in fixed:  # a device some task must use is not interchangeable
            continue
        for cls in classes:
            if same(cls[0], d):
                cls.append(d)
                break
        else:
            classes.append([d])
    return [c for c in classes if len(c) > 1]


def add_symmetry_breaking(m: _Model) -> None:
    free = movable_tasks(m.problem)
    for cls in interchangeable_devices(m.problem):
        for prev, dev in zip(cls, cls[1:]):
            for k, t in enumerate(free):
                earlier = [m.x[u, prev] for u in free[:k]]
                m.prob += m.x[t, dev] <= pulp.lpSum(earlier), f"sym_{dev}_{t}"


def movable_tasks(problem: PlacementProblem) -> list[int]:
    """Indices of the tasks whose device the solver chooses (not inputs and outputs), in
    execution order."""
    return [t for t, task in enumerate(problem.tasks) if task.fixed_device is None]


def is_contiguous(problem: PlacementProblem, assignment: Sequence[str]) -> bool:
    """Whether each device runs one contiguous run of :func:`movable_tasks` (a pipeline stage)."""
    order = [assignment[t] for t in movable_tasks(problem)]
    runs = [d for k, d in enumerate(order) if k == 0 or d != order[k - 1]]
    return len(runs) == len(set(runs))


def add_contiguous_stages(m: _Model) -> None:
    free = movable_tasks(m.problem)
    for i, d in enumerate(m.problem.devices):
        firsts = [m.x[free[0], d]] if free else []
        for prev, t in zip(free, free[1:]):
            a = m.variable(f"stage_start_{t}_{i}", 0, 1)
            m.stage_start[t, d] = (a, prev)
            m.prob += a >= m.x[t, d] - m.x[prev, d], f"stage_start_{t}_{i}"
            firsts.append(a)
        m.prob += pulp.lpSum(firsts) <= 1, f"one_stage_{i}"


def _busy_terms(m: _Model) -> dict[str, list[tuple[pulp.LpVariable, float]]]:
    """Per device, the terms of its busy time B_d in seconds (compute + copies it receives)."""
    p = m.problem
    busy: dict[str, list] = {d: [] for d in powered_devices(p)}
    for t, task in enumerate(p.tasks):
        for d in m.allowed[t]:
            busy.setdefault(d, []).append((m.x[t, d], task.time_s.get(d, 0.0)))
    for (vi, s, d), var in m.y.items():
        busy.setdefault(d, []).append((var, copy_time_s(p, p.values[vi], s, d)))
    for (t, d), z in m.z.items():
        busy[d].append((z, stream_time_s(p, t, d)))
    return busy


def add_precedence(m: _Model) -> None:
    r"""Start times and the makespan (module docstring); sets ``m.makespan`` (in ``m.time_unit_s``).

    For a value :math:`v` of task :math:`p` read by task :math:`c`:
    :math:`S_c \ge S_p + \delta_p + \sum_{s \ne d} c_{v,s,d} w_{v,c,s,d}`, where for a value
    with one reader :math:`w = y` (every copy of :math:`v` goes to that reader), and otherwise
    :math:`w_{v,c,s,d} \in [0, 1]` is the reader's own copy, linked to the placement as
    :math:`y` is (:func:`add_transfers`: :math:`w \ge x_{p,s} + x_{c,d} - 1` and the aggregated
    :math:`\sum_{s \ne d} w_{v,c,s,d} \ge x_{c,d} - x_{p,d}`); a reader waits only for its own
    copy. Then :math:`C \ge S_t + \delta_t` for every task and :math:`C \ge B_d` for every
    device. (A big-M form, the copy switched on by :math:`x_{c,d}`, left the relaxation so weak
    that ResNet-50 on 8 GPUs ran into the time limit.)
    """
    p = m.problem
    unit = m.time_unit_s
    duration: list[dict] = []
    for t, task in enumerate(p.tasks):
        terms = [(m.x[t, d], task.time_s.get(d, 0.0) / unit) for d in m.allowed[t]]
        terms += [(z, stream_time_s(p, t, d) / unit) for (u, d), z in m.z.items() if u == t]
        duration.append(_sum_terms(terms))
    start = m.start = [m.variable(f"start_{t}", 0, None) for t in range(len(p.tasks))]
    makespan = m.makespan = m.variable("makespan", 0, None)
    for vi, v in enumerate(p.values):
        finish = pulp.LpAffineExpression({start[v.producer]: 1.0, **duration[v.producer]})
        copies = {}  # destination -> {y: seconds / unit}
        for (vj, s, d), y in m.y.items():
            if vj == vi:
                copies.setdefault(d, {})[y] = copy_time_s(p, v, s, d) / unit
        if len(v.consumers) == 1:  # every copy of v goes to its one reader: no big-M needed
            every = {y: c for copy in copies.values() for y, c in copy.items()}
            m.prob += start[v.consumers[0]] >= finish + pulp.LpAffineExpression(every)
            continue
        for c in v.consumers:  # an edge's own copy variables, as add_transfers' y
            delay = {}
            for d in m.allowed[c]:
                incoming = []
                for s in m.allowed[v.producer]:
                    if s == d:
                        continue
                    w = m.w[vi, c, s, d] = m.variable(f"w_{vi}_{c}_{len(m.w)}", 0, 1)
                    m.prob += w >= m.x[v.producer, s] + m.x[c, d] - 1
                    delay[w] = copies[d][m.y[vi, s, d]]
                    incoming.append(w)
                if incoming:
                    m.prob += pulp.lpSum(incoming) >= m.x[c, d] - m.x.get((v.producer, d), 0)
            m.prob += start[c] >= finish + pulp.LpAffineExpression(delay)
    for t in range(len(p.tasks)):
        m.prob += makespan >= pulp.LpAffineExpression({start[t]: 1.0, **duration[t]})
    for d, terms in _busy_terms(m).items():
        if terms:
            m.prob += makespan >= pulp.LpAffineExpression(_sum_terms([(v, c / unit) for v, c in terms]))


def _capacity_in_fastest(m: _Model, fastest: list[float]) -> float:
    """``sum_d 1 / rho_d`` with ``rho_d = min_t tau_{t,d} / f_t`` over the free tasks allowed on
    ``d``: device ``d`` does at most ``B_d / rho_d`` of the fastest-time work, so the busiest
    device carries at least ``sum_t f_t / sum_d (1 / rho_d)`` (a slow CPU counts for little)."""
    free = movable_tasks(m.problem)
    total = 0.0
    for d in m.problem.devices:
        ratios = [
            m.problem.tasks[t].time_s.get(d, 0.0) / f
            for t, f in zip(free, fastest)
            if d in m.allowed[t] and f > 0
        ]
        if ratios:  # each ratio >= 1: f_t is the least over the devices allowed
            total += 1.0 / min(ratios)
    return max(total, 1.0)


def pigeonhole_bound_s(times_s: list[float], num_devices: int) -> float:
    """A lower bound on the busiest device's time when tasks of these (fastest) times are placed
    on ``num_devices`` devices: among the ``k`` largest tasks some device gets at least
    ``ceil(k / num_devices)`` of them, so it is busy at least the sum of the smallest
    ``ceil(k / num_devices)`` of those; the bound is the largest over ``k``. With ``k = 1`` it is
    the largest task; with ``n`` identical layers it is ``ceil(n / num_devices)`` layers.
    """
    ordered = sorted(times_s, reverse=True)
    prefix = [0.0]
    for t in ordered:
        prefix.append(prefix[-1] + t)
    devices = max(1, num_devices)
    return max((prefix[k] - prefix[k - -(-k // devices)] for k in range(1, len(ordered) + 1)), default=0.0)


def aggregated_bottleneck_bound_s(problem: PlacementProblem, time_limit_s: float = 1.0) -> float:
    r"""A lower bound on the throughput objective from a small MILP over task counts.

    Free tasks with equal times (not all zero), bytes and streaming options form a class
    :math:`k` (the repeated layers of a transformer are one class; every other task is a class
    of its own); integers :math:`n_{k,d}` and :math:`s_{k,d}` count its tasks computed on
    :math:`d` with their weights there, or streamed to :math:`d` from its host. Minimize
    :math:`\beta` subject to :math:`\sum_d (n_{k,d} + s_{k,d}) = |k|`, weights within each
    device's capacity (resident ones, and streamed ones on their host), and every device busy
    at most :math:`\beta` with: its fixed tasks' compute;
    :math:`\sum_k \tau_{k,d} (n_{k,d} + s_{k,d}) + \sigma_{k,d} s_{k,d}`; for each value read
    on :math:`d` only by one-task classes or fixed tasks, its cheapest copy to :math:`d` unless
    its producer is there; and for each class with several tasks, the inputs of the first of
    them on :math:`d` (a value all of them read, unless its producer is on :math:`d`; the
    others, unless a producer from outside the class is on :math:`d`). Every other copy,
    activations, shared-weight copies and what a free task holds on devices other than its own
    (``Task.resident_on``) are dropped, which only lowers each device's time and
    bytes, so the optimum, and HiGHS's dual bound when it stops at ``time_limit_s``, bound the
    ILP from below. Counts remove the symmetry among identical layers that stalls the full ILP:
    this bound proves Llama-8B's memory-bound split on 8 GPUs, and GPT-2's on 4.

    Returns:
        Seconds; 0 when HiGHS is not installed or finds no bound in time.
    """
    tasks, devices = problem.tasks, problem.devices
    homes = {w.home for w in problem.shared}
    classes: dict[tuple, list[int]] = {}
    for t, task in enumerate(tasks):
        if task.fixed_device is None:  # tasks that cost nothing stay apart: `here` needs them
            key = (tuple(sorted(task.time_s.items())), task.resident_bytes, str(task.resident_on),
                   task.peak_bytes, t in homes)
            classes.setdefault(key if any(task.time_s.values()) else t, []).append(t)
    members = list(classes.values())
    class_of = {t: k for k, ts in enumerate(members) for t in ts}
    prob = pulp.LpProblem("autopart_bottleneck_bound", pulp.LpMinimize)
    unit = max((max(tasks[ts[0]].time_s.values(), default=0.0) for ts in members), default=0.0) or 1e-3
    beta = _variable(prob, "beta", 0, None)
    n, s = {}, {}
    for k, ts in enumerate(members):
        task = tasks[ts[0]]
        for d in devices:
            n[k, d] = _variable(prob, f"n_{k}_{d}", 0, len(ts), pulp.LpInteger)
            if task.resident_bytes and not (ts[0] in homes) and stream_host(problem, d):
                s[k, d] = _variable(prob, f"s_{k}_{d}", 0, len(ts), pulp.LpInteger)
        prob += pulp.lpSum(n[k, d] + s.get((k, d), 0) for d in devices) == len(ts)

    def on(k: int, d: str):
        return n[k, d] + s.get((k, d), 0)

    busy: dict[str, list] = {d: [] for d in powered_devices(problem)}
    for t, task in enumerate(tasks):
        if task.fixed_device:
            busy.setdefault(task.fixed_device, []).append(task.time_s.get(task.fixed_device, 0.0))
    for k, ts in enumerate(members):
        task = tasks[ts[0]]
        for d in devices:
            busy[d].append(task.time_s.get(d, 0.0) * on(k, d))
            if (k, d) in s:
                busy[d].append(stream_time_s(problem, ts[0], d) * s[k, d])

    def cheapest(v, dst: str) -> float:
        """The fastest copy of v to dst from wherever its producer may run."""
        fixed = tasks[v.producer].fixed_device
        sources = [fixed] if fixed else devices
        return min((copy_time_s(problem, v, d, dst) for d in sources if d != dst), default=0.0)

    def here(q: int, d: str):
        """At least 1 if task q runs on d (all of q's class is counted: weaker, still valid)."""
        if q in class_of:
            return on(class_of[q], d) if (class_of[q], d) in n else 0
        return int(tasks[q].fixed_device == d)

    # A value read on d by a one-task class or a fixed task is copied to d unless its producer
    # is there: once per value and device, however many readers.
    reader_classes = [{class_of.get(c) for c in v.consumers} for v in problem.values]
    in_many = [any(k is not None and len(members[k]) > 1 for k in ks) for ks in reader_classes]
    for vi, (v, many) in enumerate(zip(problem.values, in_many)):
        if many:
            continue
        for d in busy:
            if d == tasks[v.producer].fixed_device:
                continue
            readers = [on(class_of[c], d) for c in v.consumers if c in class_of and (class_of[c], d) in n]
            readers += [1 for c in v.consumers if tasks[c].fixed_device == d]
            seconds = cheapest(v, d)
            if not readers or seconds <= 0:
                continue
            copied = _variable(prob, f"c_{vi}_{d}", 0, None)
            for r in readers:
                prob += copied >= seconds * (r - here(v.producer, d))
            busy[d].append(copied)

    # Entry copies: a device running tasks of a class k receives the inputs of the first of
    # them there that only k reads: a value every member reads unless its producer is there too,
    # and the other inputs (from earlier members, elsewhere by definition, or from "feeders"
    # outside k) unless a feeder is there too.
    inputs: dict[int, list[int]] = {}
    for vi, v in enumerate(problem.values):
        for c in v.consumers:
            inputs.setdefault(c, []).append(vi)

    def add_entry(k: int, d: str, used, seconds: float, producers: set[int]) -> None:
        if seconds > 0:
            copied = _variable(prob, f"e_{k}_{d}_{len(busy[d])}", 0, None)
            prob.addConstraint(copied >= seconds * (used - pulp.lpSum(here(q, d) for q in producers)))
            busy[d].append(copied)

    for k, ts in enumerate(members):
        if len(ts) < 2 or any(not inputs.get(t) for t in ts):
            continue
        own = [{vi for vi in inputs[t] if reader_classes[vi] == {k}} for t in ts]
        common = set.intersection(*own)
        rest = [vis - common for vis in own]
        feeders = {problem.values[vi].producer for vis in rest for vi in vis} - set(ts)
        for d in devices:
            used = _variable(prob, f"u_{k}_{d}", 0, 1, pulp.LpBinary)
            prob += on(k, d) <= len(ts) * used
            for vi in sorted(common):
                add_entry(k, d, used, cheapest(problem.values[vi], d), {problem.values[vi].producer})
            first = min(sum(cheapest(problem.values[vi], d) for vi in vis) for vis in rest)
            add_entry(k, d, used, first, feeders)
    for d, terms in busy.items():  # rows scaled to O(1), as in the full model
        prob += pulp.lpSum(terms) * (1 / unit) <= beta
    for d in devices:
        held = [tasks[ts[0]].held_bytes(d).get(d, 0) * n[k, d] for k, ts in enumerate(members)]
        held += [tasks[members[k][0]].resident_bytes * sv for (k, dd), sv in s.items() if stream_host(problem, dd) == d]
        fixed = sum(t.held_bytes(t.fixed_device).get(d, 0) for t in tasks if t.fixed_device)
        cap = problem.capacity_bytes[d]
        prob += pulp.lpSum(held) * (1 / cap) <= (cap - fixed) / cap
    prob += beta
    _, backend = _make_solver("auto", time_limit_s, 1e-4)
    if not isinstance(backend, _WarmHiGHS):
        return 0.0
    prob.solve(backend)
    bound = float(prob.solverModel.getInfo().mip_dual_bound)
    return bound * unit if bound == bound and abs(bound) != float("inf") and bound > 0 else 0.0


def add_objective(m: _Model, objective: str) -> None:
    """Set the objective (module docstring), divided by ``m.unit`` so that it is near 1."""
    p = m.problem
    busy = _busy_terms(m)
    if objective == "latency":
        m.unit = m.time_unit_s
        m.prob += pulp.LpAffineExpression({m.makespan: 1.0})
    elif objective == "throughput":
        m.unit = m.time_unit_s / max(1, len(p.devices))
        bottleneck = m.variable("bottleneck", 0, None)
        for d, ts in busy.items():
            if ts:
                expr = pulp.LpAffineExpression(_sum_terms([(v, c / m.unit) for v, c in ts]))
                m.prob += expr <= bottleneck, f"busy_{d}"
        # Valid bounds that tighten the relaxation (module docstring): an even share of the least
        # total work, and the pigeonhole bound over the largest tasks.
        fastest = [
            min(task.time_s.get(d, 0.0) for d in m.allowed[t])
            for t, task in enumerate(p.tasks)
            if task.fixed_device is None
        ]
        if fastest:
            m.prob += bottleneck >= sum(fastest) / _capacity_in_fastest(m, fastest) / m.unit, "share"
            m.prob += bottleneck >= pigeonhole_bound_s(fastest, len(p.devices)) / m.unit, "pigeonhole"
        if m.bottleneck_floor_s:
            m.prob += bottleneck >= m.bottleneck_floor_s / m.unit, "aggregated"
        m.prob += pulp.LpAffineExpression({bottleneck: 1.0})
    elif objective == "energy":
        idle_total = sum(power_W(p, d)[1] for d in busy)
        mean_power = sum(power_W(p, d)[0] for d in busy) / max(1, len(busy))
        m.unit = m.time_unit_s * max(1.0, mean_power)
        eta = 1.0 if m.energy_eta is None else m.energy_eta
        max_power = sum(power_W(p, d)[0] for d in busy)
        per_s = eta * idle_total + (1 - eta) * max_power  # joules per second of makespan
        terms = [(m.makespan, per_s * m.time_unit_s / m.unit)]
        for d, ts in busy.items():
            active, idle = power_W(p, d)
            terms += [(v, eta * c * (active - idle) / m.unit) for v, c in ts]
        m.prob += pulp.LpAffineExpression(_sum_terms(terms))
    else:
        raise ValueError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVE_UNITS)}")


def add_latency_cap(m: _Model, cap_s: float) -> None:
    """C <= cap_s (the energy objective's time budget), scaled by the time unit."""
    m.prob += m.makespan <= cap_s / m.time_unit_s, "latency_cap"


@functools.cache
def _silence_highs_banner() -> None:
    """HiGHS prints a banner on stdout when the first ``Highs`` object of a process is made,
    before any option can turn output off; make that first one with stdout closed."""
    import highspy

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class _WarmHiGHS(pulp.HiGHS):
    """PuLP's HiGHS interface, handing HiGHS a starting solution (``setSolution``) first.

    HiGHS 1.16 can report the optimum's objective yet return the starting solution's columns:
    when the returned columns do not achieve the reported objective, the model is solved again
    without the start. Its presolve can end in a solve error; the model is then solved again
    without presolve.
    """

    def __init__(self, start: dict[pulp.LpVariable, float] | None = None, **options) -> None:
        super().__init__(**options)
        self.start = start or {}

    def callSolver(self, lp) -> None:
        highs = lp.solverModel
        if self.start:
            index = [var.index for var in self.start]
            value = [float(v) for v in self.start.values()]
            highs.setSolution(len(index), index, value)
        highs.run()
        if self.start and not _columns_match_objective(highs):
            log.debug("HiGHS returned columns that miss its objective; solving without the start")
            highs.clearSolver()
            highs.run()
        if highs.getModelStatus() in _presolve_failures():
            log.debug("HiGHS presolve failed (%s); solving without presolve", highs.getModelStatus())
            highs.clearSolver()
            highs.setOptionValue("presolve", "off")
            highs.run()


@functools.cache
def _presolve_failures() -> frozenset:
    import highspy

    status = highspy.HighsModelStatus
    return frozenset({status.kSolveError, status.kPresolveError, status.kPostsolveError})


def _columns_match_objective(highs) -> bool:
    columns = highs.getSolution().col_value
    achieved = sum(c * v for c, v in zip(highs.getLp().col_cost_, columns))
    reported = highs.getInfo().objective_function_value
    return abs(achieved - reported) <= 1e-6 * max(1.0, abs(reported))


def warm_start_values(m: _Model, assignment: tuple[str, ...]) -> dict[pulp.LpVariable, float]:
    """Values of every variable for a given placement."""
    values = {var: float(assignment[t] == d) for (t, d), var in m.x.items()}
    values.update({z: 0.0 for z in m.z.values()})
    values.update({var: 0.0 for var in m.ahead.values()})  # starting points stream nothing
    for (wi, d), r in m.r.items():
        w = m.problem.shared[wi]
        values[r] = float(assignment[w.home] != d and any(assignment[c] == d for c in w.readers))
    for (vi, s, d), var in m.y.items():
        v = m.problem.values[vi]
        sent = assignment[v.producer] == s and any(assignment[c] == d for c in v.consumers)
        values[var] = float(sent)
    for (vi, c, s, d), w in m.w.items():
        values[w] = float(assignment[m.problem.values[vi].producer] == s and assignment[c] == d)
    for (t, d), (a, prev) in m.stage_start.items():
        values[a] = float(assignment[t] == d and assignment[prev] != d)
    if m.makespan is not None:
        starts, _ = _earliest_starts(m.problem, assignment, frozenset())
        values.update({var: s / m.time_unit_s for var, s in zip(m.start, starts)})
        values[m.makespan] = evaluate(m.problem, assignment).time_s / m.time_unit_s
    return values


MIN_SOLVER_TIME_S = 0.05
"""The least time the MILP solver gets, even when building the model used up the budget."""

AGGREGATED_BOUND_MAX_S = 1.0
"""Most seconds spent on :func:`aggregated_bottleneck_bound_s` (and at most a tenth of the
budget); its bound is HiGHS's dual bound when it stops early, still valid."""


PRESOLVE_MIN_COLUMNS = 1000
"""HiGHS's presolve runs on models of this many columns or more. HiGHS 1.16's presolve proved
wrong optima on small models that stream weights (7 of 300 fuzzed ones against brute force;
``tests/test_solver.py`` keeps one) or ended them in a solve error; small models solve as fast
without it. Large ones need it: Llama-3-8B's throughput model over 8 H100s and a CPU (1621
columns) is proven within 1% in about 1 s with it, in 1.4 to 6.8 s without."""


def _make_solver(name: str, time_limit_s: float, gap: float, start=None, presolve: bool = True):
    """(name, PuLP solver) for ``name`` (``"auto"``, ``"highs"`` or ``"cbc"``); ``presolve``:
    whether HiGHS presolves (see ``PRESOLVE_MIN_COLUMNS``)."""
    if name in ("auto", "highs") and pulp.HiGHS().available():
        _silence_highs_banner()
        return "highs", _WarmHiGHS(
            start, msg=False, timeLimit=time_limit_s, gapRel=gap, threads=1, random_seed=0,
            presolve="choose" if presolve else "off",
        )
    if name == "highs":
        log.warning("HiGHS (highspy) is not installed; falling back to CBC")
    return "cbc", _cbc(timeLimit=time_limit_s, gapRel=gap, threads=1)


def _cbc(**options):
    """CBC: a ``cbc`` on PATH (``COIN_CMD``, e.g. from ``pulp[cbc]``), else the binary bundled
    with PuLP (``PULP_CBC_CMD``, deprecated for PuLP 4)."""
    if pulp.COIN_CMD().available():
        return pulp.COIN_CMD(msg=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, **options)


Start = tuple[tuple[str, ...], frozenset[int]]  # (assignment, streamed tasks)


STARTING_BASELINES = ("sequential_fill", "balanced", "m_etf", "chain_dp", "chain_dp_bottleneck")
"""Baselines (:mod:`autopart.baselines`) tried after the greedy placement as starting points."""


def _quick_placements(problem: PlacementProblem) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(name, assignment) of each quick placement that fits, found one after another: the
    greedy one, then ``STARTING_BASELINES`` in order."""
    from .baselines import run_baselines

    greedy = greedy_placement(problem)
    if greedy is not None:
        yield "greedy", greedy
    for name in STARTING_BASELINES:
        result = run_baselines(problem, names=[name])[name]
        if result.assignment is not None:
            yield name, result.assignment


def starting_points(problem: PlacementProblem) -> dict[str, Start]:
    """Quick placements that fit, none streaming: the greedy one and the baselines (sequential
    fill, balanced fill, m-ETF, and the exact contiguous-stage dynamic programs), by name. They
    seed and back up the ILP, so its result is never worse than any of them."""
    return {name: (assignment, frozenset()) for name, assignment in _quick_placements(problem)}


def quick_placement(problem: PlacementProblem) -> tuple[str, ...] | None:
    """The first of :func:`starting_points` found (the greedy placement, then the baselines
    in order, stopping at the first that fits memory), or None: with no device with memory, a
    model that :func:`check_fits` rules out, or none of them fits. None does not prove that no
    placement fits (the ILP searches further); a placement proves that one does, and the ILP
    starts from it (with ``contiguous_stages``, if it is contiguous).
    :func:`autopart.coarsen.build_problem` asks this to choose how finely to cut repeated
    blocks. Milliseconds when the greedy placement fits."""
    try:
        check_fits(problem)
    except ValueError:
        return None
    return next((assignment for _, assignment in _quick_placements(problem)), None)


def solve(
    problem: PlacementProblem,
    *,
    objective: ObjectiveName = "latency",
    energy_slack: float = 0.1,
    energy_eta: float | None = None,
    solver: str = "auto",
    time_limit_s: float = 10.0,
    mip_rel_gap: float = 1e-2,
    min_split_gain: float = 0.05,
    contiguous_stages: bool = False,
) -> Solution:
    r"""Place every task of ``problem`` (see the module docstring for the model).

    Args:
        objective: ``"latency"`` (one call), ``"throughput"`` (bottleneck device of a pipeline)
            or ``"energy"`` (joules of one call, within ``energy_slack`` of the best latency).
        energy_slack: for ``"energy"``: the latency may exceed the best by this fraction (>= 0).
        energy_eta: for ``"energy"``: instead of the slack, minimize Zeus's weighted cost
            :math:`\eta E + (1 - \eta) P_{max} T` (joules; :math:`P_{max}` the summed active
            power of the powered devices, :math:`T` the makespan; You et al., NSDI 2023):
            1 is energy alone, 0 time alone; one MILP, no time cap. The solution's
            ``objective`` and ``bound`` are then that cost.
        solver: ``"highs"``, ``"cbc"`` or ``"auto"`` (HiGHS if installed, else CBC).
        time_limit_s: wall-clock budget of the whole solve, seconds (starting points and model
            building included: the MILP solver gets what is left, at least
            ``MIN_SOLVER_TIME_S``); the incumbent is returned at the limit. The energy
            objective's two MILPs share it (the first gets half of what is left).
        mip_rel_gap: relative gap at which the solver stops.
        min_split_gain: for latency and throughput, the fastest placement on one device is
            kept unless the best found is predicted faster by more than this fraction (>= 0):
            a split adds copies and synchronization, and a gain of a few percent is within the
            cost model's error (``bench/results/costmodel-*.md``). 0 keeps the fastest.
        contiguous_stages: each device runs one contiguous run of tasks in execution order
            (:func:`add_contiguous_stages`); starting points that are not are left out.

    Raises:
        ValueError: an unknown objective or solver, an option out of range, the energy
            objective on devices with no power figures, a model that cannot fit (the message
            gives needed and available bytes), or no placement found.
    """
    if objective not in OBJECTIVE_UNITS:
        raise ValueError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVE_UNITS)}")
    if not 0 <= energy_slack < math.inf:
        raise ValueError(f"energy_slack must be a finite fraction >= 0, got {energy_slack!r} (for no time cap, "
                         "pass energy_eta=1)")
    if energy_eta is not None and not 0 <= energy_eta <= 1:
        raise ValueError(f"energy_eta must be in [0, 1] (1: energy alone, 0: time alone), got {energy_eta!r}")
    if not min_split_gain >= 0:
        raise ValueError(f"min_split_gain must be >= 0, got {min_split_gain!r}")
    if solver not in ("auto", "highs", "cbc"):
        raise ValueError(f"solver must be 'auto', 'highs' or 'cbc', got {solver!r}")
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0 seconds, got {time_limit_s!r}")
    if not 0 <= mip_rel_gap < 1:
        raise ValueError(f"mip_rel_gap must be in [0, 1), got {mip_rel_gap!r}")
    if objective == "energy":
        unknown = [d for d in powered_devices(problem) if problem.topology.device(d).max_power_W is None]
        if unknown:
            raise ValueError(
                f"objective='energy' needs the power of every device, but {unknown} of topology "
                f"{problem.topology.name!r} have no max_power_W; give idle_power_W and max_power_W "
                "in watts in a topology file (`autopart topology --save t.json`, edit, then "
                "topology='t.json'), use a preset that has them, or plan for latency"
            )
    check_fits(problem)
    start = time.perf_counter()
    allowed = allowed_devices(problem)
    if all(len(devs) == 1 for devs in allowed):
        assignment = tuple(devs[0] for devs in allowed)
        ev = evaluate(problem, assignment)
        _check_memory(problem, ev)
        value = ev.value(objective, energy_eta)
        return Solution(assignment, "trivial", objective, value, value, 0.0, time.perf_counter() - start, "none",
                        0, 0, energy_eta=energy_eta if objective == "energy" else None)

    deadline = start + time_limit_s
    starts = starting_points(problem)
    if contiguous_stages:
        starts = {name: st for name, st in starts.items() if is_contiguous(problem, st[0])}
    latency_cap = None
    if objective == "energy" and energy_eta is None:  # two MILPs share the time budget
        now = time.perf_counter()
        half = now + (deadline - now) / 2
        fastest = _solve_milp(problem, "latency", starts, None, solver, half, mip_rel_gap,
                              contiguous=contiguous_stages)
        # (1 + slack) x the proven bound keeps the promise even when the fastest plan is only
        # within the gap of the optimum; never below the fastest plan found, which stays allowed.
        best_bound = fastest.bound if fastest.bound is not None else fastest.objective
        latency_cap = max((1 + energy_slack) * best_bound, fastest.objective)
        starts["fastest"] = (fastest.assignment, fastest.streamed)
    solution = _solve_milp(
        problem, objective, starts, latency_cap, solver, deadline, mip_rel_gap, energy_eta,
        contiguous=contiguous_stages,
    )
    if objective != "energy" and min_split_gain > 0:
        solution = _prefer_one_device(problem, solution, min_split_gain)
    return dataclasses.replace(solution, solve_time_s=time.perf_counter() - start, latency_cap_s=latency_cap,
                               energy_eta=energy_eta if objective == "energy" else None)


def _prefer_one_device(problem: PlacementProblem, solution: Solution, min_gain: float) -> Solution:
    """``solution``, or the fastest placement on one device if ``solution`` spreads its
    movable tasks over several devices and is not faster than it by more than ``min_gain`` (its
    gap is then measured from the same bound, so it may reach ``min_gain``, and ``solver``
    says so)."""
    from .baselines import run_baselines

    single = run_baselines(problem, names=["single_device"])["single_device"].assignment
    if single is None or len({solution.assignment[t] for t in movable_tasks(problem)}) <= 1:
        return solution
    value = evaluate(problem, single).value(solution.objective_name)
    if value > (1 + min_gain) * solution.objective:
        return solution
    log.info("one device is within min_split_gain=%g of the best split (%.4g vs %.4g); keeping "
             "one device", min_gain, value, solution.objective)
    gap = None if solution.bound is None else max(0.0, (value - solution.bound) / value) if value else 0.0
    return dataclasses.replace(
        solution, assignment=single, streamed=frozenset(), objective=value, gap=gap,
        status="optimal" if gap is not None and gap <= 1e-6 else "feasible",
        solver=f"{solution.solver}, then one device (a split gained less than min_split_gain={min_gain:g})",
    )


def _solve_milp(
    problem: PlacementProblem,
    objective: str,
    starts: dict[str, Start],
    latency_cap: float | None,
    solver: str,
    deadline: float,
    mip_rel_gap: float,
    energy_eta: float | None = None,
    contiguous: bool = False,
) -> Solution:
    """One MILP, solved by ``deadline`` (a ``time.perf_counter()`` value)."""
    start = time.perf_counter()

    def score(*placement) -> float:
        return evaluate(problem, *placement).value(objective, energy_eta)

    m = _Model(problem)
    m.energy_eta = energy_eta
    add_assignment(m)
    add_transfers(m)
    add_shared_weights(m)
    add_streaming(m)
    add_memory(m)
    add_symmetry_breaking(m)
    if contiguous:
        add_contiguous_stages(m)
    if objective != "throughput":
        add_precedence(m)
    else:
        budget = min(AGGREGATED_BOUND_MAX_S, 0.1 * (deadline - time.perf_counter()))
        m.bottleneck_floor_s = aggregated_bottleneck_bound_s(problem, max(MIN_SOLVER_TIME_S, budget))
    add_objective(m, objective)
    if latency_cap is not None:
        add_latency_cap(m, latency_cap)

    def fits(ev: Evaluation) -> bool:
        return all(ev.peak_bytes.get(d, 0) <= problem.capacity_bytes[d] for d in problem.devices)

    def admissible(start: Start) -> bool:
        ev = evaluate(problem, *start)
        return fits(ev) and (latency_cap is None or ev.time_s <= latency_cap * (1 + 1e-9))

    candidates = [st for st in starts.values() if admissible(st)]
    best_start = min(candidates, key=lambda st: score(*st), default=None)
    start_values = None
    if best_start is not None and not best_start[1]:  # streaming starts are not canonicalized
        start_values = warm_start_values(m, _canonical_order(problem, best_start[0]))
        if objective == "throughput":
            bottleneck = next(v for v in m.prob.variables() if v.name == "bottleneck")
            start_values[bottleneck] = evaluate(problem, best_start[0]).bottleneck_s / m.unit
    time_limit_s = max(MIN_SOLVER_TIME_S, deadline - time.perf_counter())
    presolve = m.prob.numVariables() >= PRESOLVE_MIN_COLUMNS
    solver_name, backend = _make_solver(solver, time_limit_s, mip_rel_gap, start_values, presolve)
    counts = dict(num_variables=m.prob.numVariables(), num_constraints=m.prob.numConstraints())
    try:
        m.prob.solve(backend)
    # a broken or missing solver binary, or (IndexError) PuLP reading a solution HiGHS did not
    # return, e.g. for coefficients beyond its range (a link of 1e10 s): the baselines stand
    except (pulp.PulpSolverError, IndexError) as exc:
        if best_start is None:
            raise ValueError(
                f"the {solver_name} MILP solver failed ({exc}) and no starting point fits; "
                "install highspy (pip install highspy) or repair PuLP's bundled CBC"
            ) from exc
        warnings.warn(f"the {solver_name} MILP solver failed ({exc}); using the best starting "
                      "point (baselines and greedy) with no bound", stacklevel=3)
        assignment, streamed = best_start
        return Solution(assignment, "heuristic", objective, score(*best_start), None, None,
                        time.perf_counter() - start, f"{solver_name} (failed)", streamed=streamed, **counts)
    status = pulp.LpStatus[m.prob.status]
    has_solution = m.prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if not has_solution and best_start is None:
        needed = sum(t.resident_bytes for t in problem.tasks)
        caps = {d: problem.capacity_bytes[d] for d in problem.devices}
        if status == "Infeasible":
            what, fix = _resident_words(problem, _memory_fix(problem))
            raise ValueError(
                f"no placement fits in memory: the model needs {needed} bytes of {what} plus up "
                f"to {_activation_peak(problem)} bytes of activations at once, and the devices "
                f"allow {_fmt_caps(caps)}; {fix}"
                + ("; or allow a device several runs of tasks (contiguous_stages=False)" if contiguous else "")
            )
        raise ValueError(
            f"the {solver_name} solver found no placement in the {time_limit_s:.2f} s left of "
            f"the time_limit_s budget (status {status}); raise time_limit_s"
        )
    streamed: frozenset[int] = frozenset()
    if has_solution:
        allowed = m.allowed
        assignment = tuple(
            max(devs, key=lambda d: m.x[t, d].value() or 0.0) for t, devs in enumerate(allowed)
        )
        streamed = frozenset(
            t for (t, d), z in m.z.items() if assignment[t] == d and (z.value() or 0.0) > 0.5
        )
        ev = evaluate(problem, assignment, streamed)
        value = ev.value(objective, energy_eta)
        # HiGHS accepts rows violated by up to its feasibility tolerance (1e-6 of a memory row:
        # 80 kB of an 80 GB device), so its placement is checked as the starting points are
        if not fits(ev):
            if best_start is None:
                raise ValueError(f"the {solver_name} solver returned a placement over some device's capacity "
                                 "and no starting point fits; lower max_memory a little and plan again")
            log.warning("the %s solver returned a placement over some device's capacity; using the "
                        "best starting point", solver_name)
            has_solution = False
        elif best_start is not None and score(*best_start) < value:
            has_solution = False
    optimal = m.prob.sol_status == pulp.LpSolutionOptimal
    if not has_solution:  # the starting point stands: nothing better was found in time
        assert best_start is not None
        assignment, streamed = best_start
        value = score(assignment, streamed)
        optimal = False
    bound = _bound(m, solver_name, value, optimal, time_limit_s)
    gap = None if bound is None else (max(0.0, (value - bound) / value) if value else 0.0)
    proven = optimal and gap is not None and gap <= 1e-6
    return Solution(
        assignment=assignment,
        status=("optimal" if proven else "feasible") if has_solution else "heuristic",
        objective_name=objective,
        objective=value,
        bound=bound,
        gap=gap,
        solve_time_s=time.perf_counter() - start,
        solver=solver_name,
        streamed=streamed,
        **counts,
    )


def _check_memory(problem: PlacementProblem, ev: Evaluation) -> None:
    for dev in problem.devices:
        nbytes, cap = ev.peak_bytes.get(dev, 0), problem.capacity_bytes[dev]
        if nbytes > cap:
            raise ValueError(
                f"the model needs {nbytes} bytes on {dev} but it may use only {cap} bytes there; "
                "raise max_memory or plan for a topology with more devices"
            )


def _bound(m: _Model, solver_name: str, value: float, optimal: bool, time_limit_s: float):
    """A proven lower bound on the objective, in its unit (seconds or joules)."""
    if solver_name == "highs":
        try:
            info = m.prob.solverModel.getInfo()
            bound = float(info.mip_dual_bound)
            if info.valid and bound == bound and abs(bound) != float("inf"):
                return min(value, max(bound * m.unit, m.bottleneck_floor_s))
        except Exception:  # noqa: BLE001 - fall through to the generic bound
            log.debug("HiGHS info unavailable; using the LP relaxation bound")
    if optimal:
        return value
    # The LP relaxation's optimum bounds every integer solution (variables already read).
    m.prob.solve(_cbc(mip=False, timeLimit=time_limit_s))
    if m.prob.sol_status == pulp.LpSolutionOptimal:
        return min(value, pulp.value(m.prob.objective) * m.unit)
    return None
