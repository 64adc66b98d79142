"""The Plan: where every node runs, what moves between devices and why, and how it was solved.

A Plan is data: JSON in and out (``save``/``load``), printable (``summary``), and complete
without the model, so it can be diffed, cached and studied offline.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._io import atomic_write_text, read_json
from .coarsen import PlacementProblem, home_if_copied
from .config import format_bytes
from .costmodel.energy import energy_J
from .graph import AnnotatedGraph
from .kernels.compression import packed_element_size
from .passes.records import RESIDENT_ROLES
from .solver import Solution, evaluate, power_W, stream_host, stream_time_s
from .topology import Topology

PLAN_FORMAT_VERSION = 8


@dataclass(frozen=True)
class Transfer:
    """One tensor copied between devices on each call.

    ``source_node`` produces it on ``src_device``; it is copied once to ``dst_device`` for all
    readers there; ``reason`` names the first reader (or says it is a graph output).
    """

    source_node: str
    src_device: str
    dst_device: str
    nbytes: int
    reason: str
    compression: str = "none"
    """``"bf16"`` or ``"int8"`` when the tensor crosses compressed (see
    :mod:`autopart.kernels.compression`), else ``"none"``."""


@dataclass(frozen=True)
class TaskPlacement:
    """A task (group of nodes) of the coarsened graph and the device chosen for it."""

    name: str
    device: str
    num_nodes: int
    time_s: float
    resident_bytes: int
    streamed_from: str | None = None
    """The host device holding this task's weights, copied to ``device`` on every call (None:
    the weights live on ``device``)."""
    stream_time_s: float = 0.0
    """Seconds of that copy per call (0 when not streamed); ``time_s`` is the compute alone."""
    held_elsewhere: dict[str, int] = field(default_factory=dict)
    """Bytes the task holds on other devices, counted there rather than in ``resident_bytes``:
    the gradients and optimizer state of trainable parameters it copies to ``device`` every
    step, where those parameters live (:attr:`Plan.step_copies`)."""


@dataclass(frozen=True)
class Plan:
    """Placement of one FX graph on a topology. Times in seconds, sizes in bytes."""

    graph_name: str
    topology_name: str
    objective_name: str
    placement: dict[str, str]
    """FX node name -> topology device (compute nodes, parameters, buffers, inputs)."""
    tasks: tuple[TaskPlacement, ...]
    transfers: tuple[Transfer, ...]
    """Copies made on every call (activations; weights streamed from host memory)."""
    replicas: tuple[Transfer, ...]
    """Weights read on a second device (e.g. a tied embedding), copied there once and kept."""
    predicted_time_s: float
    """One call, seconds: the makespan (:func:`autopart.solver.evaluate`), less the seconds that
    compressed copies save (all of them: optimistic when a compressed copy overlaps compute)."""
    predicted_compute_s: float
    """All compute of one call, seconds, overlapped or not."""
    predicted_transfer_s: float
    """All copies of one call, seconds, overlapped or not."""
    predicted_bottleneck_s: float
    """Time of the busiest device per call (a pipeline's bottleneck; with micro-batches, each
    takes its share of it)."""
    predicted_energy_J: float
    """Energy of one call (devices without power figures, ``energy_unknown``, count 0 W)."""
    predicted_peak_bytes: dict[str, int]
    capacity_bytes: dict[str, int]
    solver: str
    solver_status: str
    objective: float
    """Objective value of the chosen placement: seconds for ``"latency"`` and ``"throughput"``,
    joules for ``"energy"`` (without what compressed copies save: see ``compressed``)."""
    bound: float | None
    """Proven lower bound on the objective over all placements (None: unknown)."""
    gap: float | None
    """``(objective - bound) / objective``."""
    solve_time_s: float
    num_variables: int
    num_constraints: int
    num_nodes: int
    device_map: dict[str, str] = field(default_factory=dict)
    """Topology device -> local device that ran it (empty when planned only)."""
    predicted_busy_s: dict[str, float] = field(default_factory=dict)
    """Per device, seconds of one forward call: its compute plus the copies it receives, less
    what compression saves; what ``monitor`` measures. (For inference plans the busiest is
    ``predicted_bottleneck_s``; a training plan's other times count backward too.)"""
    training: bool = False
    """Planned for training: each device's memory also holds its parameters' gradients, the
    optimizer's state and the activations saved for backward, and the predicted times (but
    ``predicted_busy_s``) count the backward pass, the gradients' copies back and the
    optimizer's update of each parameter (:mod:`autopart.passes.training`; not with
    ``optimizer="none"``, which runs no backward)."""
    predicted_forward_s: float = 0.0
    """Seconds of the forward call alone (what ``monitor`` times as a call): ``predicted_time_s``
    less, in a training plan, the backward pass and the optimizer step."""
    predicted_backward_busy_s: dict[str, float] = field(default_factory=dict)
    """Per device, seconds of one backward pass of a training plan: its backward compute plus
    the gradients it sends back for the copies it received (what ``monitor`` measures as the
    device's backward); {} for a plan that runs no backward."""
    latency_cap_s: float | None = None
    """For the energy objective: the time budget a call was held to (``Solution.latency_cap_s``)."""
    energy_eta: float | None = None
    """For the energy objective in Zeus's weighted form: its eta (``objective`` is that cost)."""
    energy_unknown: tuple[str, ...] = ()
    """Devices the call powers that have no power figures (``max_power_W``): counted as 0 W
    in ``predicted_energy_J``, which is too low by their energy."""
    predicted_backward_s: float = 0.0
    """Seconds of the backward pass of a training plan, the gradients' copies included (what
    ``monitor`` times as the backward's span): the makespan without the optimizer step
    (``PlacementProblem.without_step``) less that of the forward alone; 0 without a backward."""
    predicted_optimizer_s: float = 0.0
    """Seconds of the optimizer step of a training plan, all devices' updates together (the
    step runs after the backward pass, outside the compiled graph: ``monitor`` does not time
    it); counted in ``predicted_time_s``."""
    step_copies: tuple[Transfer, ...] = ()
    """Trainable parameters planned on a device other than the one they live on. The runtime
    leaves the model where it is, so a training step copies each of them to its planned device
    under autograd, its gradient comes back, and the optimizer steps where it lives
    (:func:`step_copies`). The predicted times count both copies as their tasks' time on the
    planned device, and its memory the copy and its gradient, while the gradient and optimizer
    state are counted where the parameter lives (:func:`autopart.coarsen.build_problem`). Empty
    for inference plans, where both devices are one local device (e.g. ``device_map="cpu"``),
    and with ``trainable_parameters="move"`` (they move to their planned device once instead)."""

    @property
    def assignment(self) -> tuple[tuple[str, ...], frozenset[int]]:
        """The solver's form of the plan: each task's device (in the order of the problem's
        tasks), and the indices of the tasks whose weights are streamed."""
        return tuple(t.device for t in self.tasks), frozenset(i for i, t in enumerate(self.tasks) if t.streamed_from)

    @property
    def compressed(self) -> bool:
        """Whether some copy is compressed: then the predicted times count what compression
        saves, and ``objective``, ``bound`` and ``gap`` (the solver's, which chose the placement
        without compression) do not."""
        return any(t.compression != "none" for t in self.transfers)

    @property
    def resident_bytes(self) -> dict[str, int]:
        """Bytes held all call long per device: the tasks' resident bytes where they live (on
        the stream host for streamed weights), what they hold elsewhere, and the weights copied
        once to a second device (``replicas``)."""
        held: dict[str, int] = {}
        for t in self.tasks:
            for device, nbytes in [(t.streamed_from or t.device, t.resident_bytes), *t.held_elsewhere.items()]:
                held[device] = held.get(device, 0) + nbytes
        for r in self.replicas:
            held[r.dst_device] = held.get(r.dst_device, 0) + r.nbytes
        return held

    @property
    def devices_used(self) -> list[str]:
        """Devices that run at least one task or hold resident bytes, in first-use order."""
        seen: dict[str, None] = {}
        for t in self.tasks:
            if t.num_nodes and (t.time_s > 0 or t.resident_bytes > 0):
                seen.setdefault(t.device, None)
                if t.streamed_from:
                    seen.setdefault(t.streamed_from, None)
        return list(seen)

    # --- text ---------------------------------------------------------------------------
    def summary(self, max_rows: int = 12) -> str:
        """A human-readable report: solver outcome, per-device load, transfers, tasks."""
        lines = [
            f"autopart plan for {self.graph_name} on {self.topology_name} "
            f"(objective: {self.objective_name}{', for training' if self.training else ''})",
            f"solver {self.solver}: {self.solver_status}, objective {self._value(self.objective)}"
            + (f" (Zeus cost, eta {self.energy_eta:g})" if self.energy_eta is not None else "")
            + (f" (within a time cap of {_ms(self.latency_cap_s)})" if self.latency_cap_s is not None else "")
            + ", "
            f"bound {self._value(self.bound)}, gap {_pct(self.gap)}"
            + (" (of the placement before compressing copies)" if self.compressed else "")
            + f", {self.solve_time_s:.2f} s, "
            f"{self.num_variables} variables, {self.num_constraints} constraints",
            f"predicted time {_ms(self.predicted_time_s)} (compute "
            f"{_ms(self.predicted_compute_s)} and transfers {_ms(self.predicted_transfer_s)}, "
            "overlapped where independent"
            + (f"; forward {_ms(self.predicted_forward_s)}" if self.predicted_forward_s < self.predicted_time_s else "")
            + (f"; optimizer step {_ms(self.predicted_optimizer_s)}" if self.predicted_optimizer_s else "")
            + "); "
            f"busiest device {_ms(self.predicted_bottleneck_s)}; energy "
            f"{self.predicted_energy_J:.3g} J"
            + (f" (not counting {', '.join(self.energy_unknown)}: no power figures)" if self.energy_unknown else "")
            + "; "
            f"{self.num_nodes} nodes in {len(self.tasks)} tasks on {len(self.devices_used)} "
            f"device(s): {', '.join(self.devices_used) or '-'}",
            "",
        ]
        header = ["device", "runs on", "tasks", "nodes", "compute", "resident", "peak", "capacity"]
        rows, resident = [], self.resident_bytes
        for dev in self.capacity_bytes:
            mine = [t for t in self.tasks if t.device == dev]
            if not mine and not self.capacity_bytes[dev]:
                continue
            rows.append(
                [
                    dev,
                    self.device_map.get(dev, "-"),
                    str(len(mine)),
                    str(sum(t.num_nodes for t in mine)),
                    _ms(sum(t.time_s for t in mine)),
                    format_bytes(resident.get(dev, 0)),
                    format_bytes(self.predicted_peak_bytes.get(dev, 0)),
                    format_bytes(self.capacity_bytes[dev]),
                ]
            )
        lines += _table(header, rows)
        total = sum(t.nbytes for t in self.transfers)
        if self.replicas:
            copied = sum(t.nbytes for t in self.replicas)
            lines += ["", f"weights copied once to a second device: {len(self.replicas)} ({format_bytes(copied)})"]
            lines += _table(
                ["from", "to", "size", "tensor", "why"],
                [[t.src_device, t.dst_device, format_bytes(t.nbytes), t.source_node, t.reason] for t in self.replicas],
            )
        if self.step_copies:
            copied = sum(t.nbytes for t in self.step_copies)
            lines += ["", f"trainable weights copied to their planned device every step, gradients back "
                          f"(counted in the tasks' time): {len(self.step_copies)} ({format_bytes(copied)} each way)"]
            lines += _table(
                ["from", "to", "size", "tensor"],
                [[t.src_device, t.dst_device, format_bytes(t.nbytes), t.source_node]
                 for t in sorted(self.step_copies, key=lambda t: -t.nbytes)[:max_rows]],
            )
            if len(self.step_copies) > max_rows:
                lines.append(f"... {len(self.step_copies) - max_rows} more")
        lines += ["", f"transfers per call: {len(self.transfers)} ({format_bytes(total)})"]
        if self.transfers:
            rows = [
                [t.src_device, t.dst_device, format_bytes(t.nbytes), t.compression, t.source_node, t.reason]
                for t in sorted(self.transfers, key=lambda t: -t.nbytes)[:max_rows]
            ]
            lines += _table(["from", "to", "size", "sent as", "tensor", "why"], rows)
            if len(self.transfers) > max_rows:
                lines.append(f"... {len(self.transfers) - max_rows} more")
        lines += ["", "tasks in execution order:"]
        rows = [
            [
                str(i),
                t.device + (f" <- {t.streamed_from}" if t.streamed_from else ""),
                t.name[:60],
                str(t.num_nodes),
                _ms(t.time_s),
                format_bytes(t.resident_bytes),
            ]
            for i, t in enumerate(self.tasks)
        ]
        if len(rows) > 2 * max_rows:
            rows = rows[:max_rows] + [["...", "", "", "", "", ""]] + rows[len(rows) - max_rows:]
        lines += _table(["#", "device", "task", "nodes", "time", "resident"], rows)
        return "\n".join(lines)

    def _value(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.4g} J" if self.objective_name == "energy" else _ms(value)

    def __str__(self) -> str:
        return self.summary()

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format_version"] = PLAN_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Rebuild a Plan from :meth:`to_dict` output.

        Raises:
            ValueError: not a JSON object, an annotated graph, a missing or unknown field, or
                another format version.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a plan is a JSON object, got {type(d).__name__}")
        if "nodes" in d and "placement" not in d:
            raise ValueError("this is an annotated graph, not a plan: plan it with `autopart solve "
                             "--graph FILE` or autopart.solve_graph")
        d = dict(d)
        version = d.pop("format_version", None)
        if version != PLAN_FORMAT_VERSION:
            raise ValueError(
                f"plan format_version {version!r} is not {PLAN_FORMAT_VERSION}; re-plan with "
                "this autopart version"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in d and n != "device_map")
        unknown = sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"plan JSON: missing fields {missing}, unknown fields {unknown}")
        d["energy_unknown"] = tuple(d["energy_unknown"])
        for key, kind in (("tasks", TaskPlacement), ("transfers", Transfer), ("replicas", Transfer),
                          ("step_copies", Transfer)):
            try:
                d[key] = tuple(kind(**t) for t in d[key])
            except TypeError as exc:  # not a list of objects with the dataclass's fields
                raise ValueError(f"plan JSON: {key!r} must be a list of {kind.__name__} objects: {exc}") from exc
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file. ValueError: a folder, or not a plan file (the
                message names it). TypeError: ``path`` is not a path.
        """
        data = read_json(path, "plan")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from exc


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f} ms"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]


def plan_transfers(
    graph: AnnotatedGraph, placement: dict[str, str], streamed: frozenset[str] = frozenset()
) -> tuple[tuple[Transfer, ...], tuple[Transfer, ...]]:
    """The copies a placement implies, one per (tensor, destination device), in graph order:
    ``(transfers, replicas)``.

    A tensor read on a device other than its producer's is copied there before its first reader
    on that device: on every call (``transfers``) for activations and for weights in
    ``streamed`` (held in host memory); once (``replicas``) for other weights. A graph output is
    copied to the device of the output task (where the captured graph returned it).
    """
    transfers: list[Transfer] = []
    replicas: list[Transfer] = []
    seen: set[tuple[str, str]] = set()
    output = graph.output.name
    for node in graph.nodes:
        dst = placement.get(node.name)
        if dst is None:
            continue
        for name in node.inputs:
            src = placement.get(name)
            producer = graph.node(name)
            if src is None or src == dst or not producer.tensors or (name, dst) in seen:
                continue
            seen.add((name, dst))
            weight = producer.role in RESIDENT_ROLES
            if node.name == output:
                reason = "graph output"
            elif weight and name in streamed:
                reason = f"weights streamed for {node.name}"
            elif weight:
                replicas.append(Transfer(name, src, dst, producer.output_bytes, f"shared with {node.name}"))
                continue
            else:
                reason = f"read by {node.name}"
            transfers.append(Transfer(name, src, dst, producer.output_bytes, reason))
    return tuple(transfers), tuple(replicas)


def choose_compression(
    transfers: tuple[Transfer, ...], graph: AnnotatedGraph, topology: Topology, method: str
) -> tuple[tuple[Transfer, ...], dict[str, float]]:
    """Compress the activation copies that ``method`` makes faster; returns the transfers
    (``compression`` set where chosen) and the seconds saved per destination device.

    A copy of ``n`` elements of ``b`` bytes over a link with latency ``a`` and bandwidth ``B``
    takes ``a + n b / B``; compressed to ``c`` bytes per element it takes ``a + n c / B`` plus
    encoding on the source and decoding on the destination, each an elementwise pass over
    ``n (b + c)`` bytes at the device's memory bandwidth plus one launch. The copy is compressed
    when that is shorter: on slow links (PCIe, network) for large tensors, never on NVLink-class
    links for small ones. Only tensors computed by the graph are compressed: graph inputs,
    graph outputs and weights cross exactly. ``"bf16"`` packs float32; ``"int8"`` packs float32
    and 16-bit floats, except a tensor autograd needs (``GraphNode.requires_grad``), which goes
    as ``"bf16"`` (int8 has no gradient; :func:`autopart.kernels.transfer.transfer_compressed`).

    Raises:
        ValueError: ``method`` is not ``"none"``, ``"bf16"`` or ``"int8"``.
    """
    if packed_element_size(torch.float32, method) is None:  # "none" (an unknown name raises)
        return transfers, {}
    chosen, saved = [], {}
    for t in transfers:
        source = graph.node(t.source_node)
        packed = None
        sent_as = "bf16" if method == "int8" and source.requires_grad else method
        if source.is_compute and t.reason.startswith("read by") and len(source.tensors) == 1:
            dtype = getattr(torch, source.tensors[0].dtype.removeprefix("torch."), None)
            packed = packed_element_size(dtype, sent_as) if isinstance(dtype, torch.dtype) else None
        if packed is None:
            chosen.append(t)
            continue
        numel = source.tensors[0].numel
        codec_bytes = t.nbytes + numel * packed
        src, dst = topology.device(t.src_device), topology.device(t.dst_device)
        raw_s = topology.transfer_time_s(t.src_device, t.dst_device, t.nbytes)
        packed_s = (
            topology.transfer_time_s(t.src_device, t.dst_device, numel * packed)
            + codec_bytes / src.mem_bandwidth_Bps + src.launch_overhead_s
            + codec_bytes / dst.mem_bandwidth_Bps + dst.launch_overhead_s
        )
        if packed_s < raw_s:
            saved[t.dst_device] = saved.get(t.dst_device, 0.0) + raw_s - packed_s
            t = dataclasses.replace(t, compression=sent_as)
        chosen.append(t)
    return tuple(chosen), saved


def step_copies(
    graph: AnnotatedGraph, plan: Plan, local_device: Callable[[str], str], origin_device: Callable[[str], str]
) -> tuple[Transfer, ...]:
    """The trainable parameters of ``graph`` that ``plan`` puts on a device they do not live on
    (:func:`autopart.coarsen.home_if_copied`, whose arguments these are): what a training step
    copies there and back (see :attr:`Plan.step_copies`)."""
    copies = []
    for node in graph.nodes:
        planned = plan.placement.get(node.name)
        home = None if planned is None else home_if_copied(node, planned, local_device, origin_device)
        if home is not None:
            copies.append(Transfer(node.name, home, planned, node.tensors[0].nbytes, "trainable parameter"))
    return tuple(copies)


def make_plan(
    graph: AnnotatedGraph,
    problem: PlacementProblem,
    solution: Solution,
    *,
    graph_name: str | None = None,
    objective_name: str = "latency",
    compression: str = "none",
) -> Plan:
    """Turn a solved problem into a :class:`Plan` for ``graph`` (node names must match).

    ``compression``: the lossy method allowed for activation copies (see
    :func:`choose_compression`); the predicted times and energy count the seconds the copies it
    compresses save (each saved second is one less busy second of the receiving device and one
    less second of the call, as :func:`autopart.solver.evaluate` prices them).
    """
    placement = {
        name: solution.assignment[i] for i, task in enumerate(problem.tasks) for name in task.nodes
    }
    hosts = {i: stream_host(problem, solution.assignment[i]) for i in solution.streamed}
    streamed = set()
    for i, host in hosts.items():  # streamed weights live on the host; transfers follow
        for name in problem.tasks[i].nodes:
            if graph.node(name).role in RESIDENT_ROLES:
                placement[name] = host
                streamed.add(name)
    transfers, replicas = plan_transfers(graph, placement, frozenset(streamed))
    transfers, saved = choose_compression(transfers, graph, problem.topology, compression)
    ev = evaluate(problem, solution.assignment, solution.streamed)
    busy = {d: b - saved.get(d, 0.0) for d, b in ev.busy_s.items()}
    forward, backward_busy, backward_s = ev, {}, 0.0
    if any(t.backward_time_s or t.step_time_s for t in problem.tasks):
        forward = evaluate(problem.forward_only(), solution.assignment, solution.streamed)
        passes = evaluate(problem.without_step(), solution.assignment, solution.streamed)
        backward_busy = {d: b - forward.busy_s.get(d, 0.0) for d, b in passes.busy_s.items()}
        backward_s = passes.time_s - forward.time_s
    total_saved = sum(saved.values())
    watts = {d: power_W(problem, d) for d in ev.busy_s}  # (active, idle)
    saved_J = sum((watts[d][0] - watts[d][1]) * s for d, s in saved.items()) + total_saved * sum(
        idle for _, idle in watts.values()
    )
    tasks = tuple(
        TaskPlacement(
            name=t.name,
            device=d,
            num_nodes=len(t.nodes),
            time_s=t.time_s.get(d, 0.0),
            resident_bytes=t.resident_bytes if i in hosts else t.held_bytes(d).get(d, 0),
            streamed_from=hosts.get(i),
            stream_time_s=stream_time_s(problem, i, d) if i in hosts else 0.0,
            held_elsewhere={} if i in hosts else {h: b for h, b in t.held_bytes(d).items() if h != d},
        )
        for i, (t, d) in enumerate(zip(problem.tasks, solution.assignment))
    )
    return Plan(
        graph_name=graph_name or graph.name,
        topology_name=problem.topology.name,
        objective_name=objective_name,
        placement=placement,
        tasks=tasks,
        transfers=transfers,
        replicas=replicas,
        predicted_time_s=ev.time_s - total_saved,
        predicted_compute_s=ev.compute_s,
        predicted_transfer_s=ev.transfer_s - total_saved,
        predicted_bottleneck_s=max(busy.values(), default=0.0) if saved else ev.bottleneck_s,
        predicted_busy_s={d: b - saved.get(d, 0.0) for d, b in forward.busy_s.items()},
        predicted_forward_s=forward.time_s - total_saved,
        predicted_backward_busy_s=backward_busy,
        predicted_backward_s=backward_s,
        predicted_optimizer_s=sum(
            t.step_time_s.get(d, 0.0) for t, d in zip(problem.tasks, solution.assignment)
        ),
        predicted_energy_J=ev.energy_J - saved_J,
        energy_unknown=energy_J(ev.busy_s, ev.time_s, problem.topology).unknown,
        latency_cap_s=solution.latency_cap_s,
        energy_eta=solution.energy_eta,
        predicted_peak_bytes={d: ev.peak_bytes.get(d, 0) for d in problem.capacity_bytes},
        capacity_bytes=dict(problem.capacity_bytes),
        solver=solution.solver,
        solver_status=solution.status,
        objective=solution.objective,
        bound=solution.bound,
        gap=solution.gap,
        solve_time_s=solution.solve_time_s,
        num_variables=solution.num_variables,
        num_constraints=solution.num_constraints,
        num_nodes=len(graph.nodes),
        training=problem.training,
    )
