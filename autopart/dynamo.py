"""The TorchDynamo backend: plan each captured graph, rewrite it, and hand back a runner.

``torch.compile(model, backend="autopart")`` finds :data:`autopart_backend` through the
``torch_dynamo_backends`` entry point; ``autopart.backend(**options)`` makes a configured one.
Every graph compiled is recorded as a :class:`Compilation` (graph, plan, timings, fallback).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from ._compat import reset_with_dynamo
from .coarsen import PlacementProblem, build_problem
from .config import AutopartWarning, Config
from .graph import AnnotatedGraph
from .passes import (
    CostReport,
    DependencyGraph,
    MemoryReport,
    cost_pass,
    dependency_pass,
    memory_pass,
    propagate_shapes_pass,
    record,
)
from .passes.cost import mutates_in_place, updates_inputs
from .passes.memory import storage_key
from .passes.shapes import node_value, requires_grad
from .passes.training import Optimizer, TrainingMemory, training_memory_pass
from .pipeline import BatchSpec, auto_microbatches, batch_spec, is_random
from .plan import Plan, _ms, _table, make_plan, step_copies
from .rewrite import named_device_map, origin_resolver, resolve_device_map, rewrite
from .runtime import (
    DynamoMetadata,
    InductorPartition,
    PlacedGraph,
    RuntimeMetrics,
    StaticCopyCache,
    moved_storage,
    use_inductor,
)
from .solver import evaluate, solve
from .topology import Topology

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Analysis:
    """What the analysis passes found in one graph; ``graph`` is the same as plain data
    (saveable, plannable offline)."""

    memory: MemoryReport
    dependencies: DependencyGraph
    cost: CostReport
    graph: AnnotatedGraph
    training: TrainingMemory | None = None
    """Training memory, for a graph analysed for training (else None)."""


def analyze(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    topology: Topology,
    name: str = "graph",
    *,
    optimizer: Optimizer | None = None,
) -> Analysis:
    """Run the analysis passes (shapes, memory, dependencies, cost) over ``gm``, in place; with
    ``optimizer``, also :func:`~autopart.passes.training.training_memory_pass`, whose bytes
    (gradients, that optimizer's state, saved activations) the plan then reserves.

    Raises:
        ValueError: an unknown optimizer.
    """
    propagate_shapes_pass(gm, example_inputs)
    memory = memory_pass(gm, example_inputs)
    dependencies = dependency_pass(gm, example_inputs)
    cost = cost_pass(gm, example_inputs, topology=topology)
    training = None
    if optimizer is not None:
        training = training_memory_pass(gm, example_inputs, memory=memory, optimizer=optimizer)
    graph = AnnotatedGraph.from_fx(gm, memory, name=name)
    return Analysis(memory=memory, dependencies=dependencies, cost=cost, graph=graph, training=training)


def is_training(gm: torch.fx.GraphModule) -> bool:
    """Whether a graph Dynamo captured runs for training: gradients are enabled (Dynamo calls
    the backend in the grad mode it guards on) and some placeholder's ``example_value``
    requires grad (a trainable parameter, or an input that needs a gradient)."""
    if not torch.is_grad_enabled():
        return False
    return any(requires_grad(n) for n in gm.graph.nodes if n.op == "placeholder")


def plan_graph(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    config: Config,
    topology: Topology,
    *,
    graph_name: str = "graph",
    mapping: dict[str, str] | None = None,
    ledger: ResidentLedger | None = None,
    analysis: Analysis | None = None,
) -> tuple[Plan, PlacementProblem, Analysis]:
    """Analyze ``gm``, build and solve its placement problem, and return the Plan.

    Args:
        mapping: topology device -> local device (see ``resolve_device_map``); it decides which
            topology device stands for the device the inputs were captured on.
        ledger: what earlier graphs of the same model hold (parameters and buffers; in
            training also their gradients, optimizer state and saved activations): their bytes
            are taken from the devices' capacity, and tasks using those parameters and buffers
            stay where they are.
        analysis: ``gm``'s analysis from an earlier plan, to plan it again (other parameters,
            other free memory) without analyzing it again.

    Raises:
        ValueError: bad options, a model that cannot fit (needed and available bytes), or no
            placement found.
    """
    mapping = mapping if mapping is not None else resolve_device_map(topology, config.device_map)
    optimizer = config.optimizer if is_training(gm) else None
    if analysis is None:
        analysis = analyze(gm, example_inputs, topology, name=graph_name, optimizer=optimizer)
    if analysis.training is not None:
        log.info("%s is planned for training: %d bytes of gradients, %d of %s state, %d of its "
                 "temporaries and %d of saved activations reserved", graph_name,
                 analysis.training.gradient_bytes, analysis.training.optimizer_state_bytes, optimizer,
                 analysis.training.optimizer_temporary_bytes, analysis.training.saved_activation_bytes)
    capacity = config.capacities_bytes(topology)
    pinned = {}
    if ledger is not None:
        held = ledger.held_bytes(saved_key(gm, example_inputs))
        capacity = {d: max(0, c - held.get(d, 0)) for d, c in capacity.items()}
        for _, node, example in _static_inputs(gm, example_inputs):
            device = ledger.device_of(example)
            if device is not None:
                pinned[node.name] = device
    plan, problem = solve_annotated(
        analysis.graph, config, topology, mapping=mapping, capacity=capacity, pinned=pinned
    )
    return plan, problem, analysis


def solve_annotated(
    graph: AnnotatedGraph,
    config: Config,
    topology: Topology,
    *,
    mapping: dict[str, str] | None = None,
    capacity: dict[str, int] | None = None,
    pinned: dict[str, str] | None = None,
) -> tuple[Plan, PlacementProblem]:
    """Coarsen, solve and make the Plan of an annotated graph: the part of planning that needs
    no model (used online by :func:`plan_graph` and offline by :func:`solve_graph`).

    Args:
        mapping: topology device -> local device; {} when only planning.
        capacity: bytes per device (default: ``config.capacities_bytes(topology)``).
        pinned: see :func:`autopart.coarsen.build_problem`.
    """
    mapping = {} if mapping is None else mapping
    problem = build_problem(
        graph,
        topology,
        config.capacities_bytes(topology) if capacity is None else capacity,
        origin_device=origin_resolver(topology, mapping),
        max_groups=config.max_groups,
        pinned=pinned,
        local_device=lambda d: mapping.get(d, d),
        copy_trainable=config.trainable_parameters == "copy",
    )
    return solve_problem(graph, problem, config, mapping), problem


def solve_problem(graph: AnnotatedGraph, problem: PlacementProblem, config: Config, mapping: dict[str, str]) -> Plan:
    """Solve ``problem`` (built from ``graph``) with ``config``'s solver options; the Plan
    (``mapping``: topology device -> local device, recorded as its ``device_map``)."""
    solution = solve(
        problem,
        objective=config.objective,
        energy_slack=config.energy_slack,
        energy_eta=config.energy_eta,
        solver=config.solver,
        time_limit_s=config.time_limit_s,
        mip_rel_gap=config.mip_rel_gap,
        min_split_gain=config.min_split_gain,
        contiguous_stages=config.contiguous_stages,
    )
    plan = make_plan(graph, problem, solution, objective_name=config.objective, compression=config.compression)
    copies = ()
    if config.trainable_parameters == "copy":
        copies = step_copies(graph, plan, lambda d: mapping.get(d, d), origin_resolver(problem.topology, mapping))
    return dataclasses.replace(plan, device_map=dict(mapping), step_copies=copies)


def solve_graph(graph: AnnotatedGraph | str | os.PathLike, **options: Any) -> Plan:
    """Plan a saved annotated graph offline (no model needed), for any topology.

    Args:
        graph: an :class:`AnnotatedGraph` or the path of one saved as JSON.
        options: fields of :class:`autopart.Config` (``topology``, ``max_memory``, ``solver``,
            ``time_limit_s``, ``max_groups``, ...). Nothing runs, so ``device_map`` only says
            which topology device holds the graph's inputs and outputs: the one mapped to the
            device they were captured on (e.g. ``device_map={"cuda:0": "cpu"}`` for a topology
            of GPUs alone and a graph captured on the CPU); by default the topology's first
            device of that kind.

    Raises:
        ValueError / TypeError: a bad file or option, or a model that cannot fit.
    """
    if not isinstance(graph, AnnotatedGraph):
        graph = AnnotatedGraph.load(graph)
    config = Config.from_options(**options)
    topology = config.resolve_topology()
    plan, _ = solve_annotated(graph, config, topology, mapping=named_device_map(topology, config.device_map))
    return plan


def _static_inputs(
    gm: torch.fx.GraphModule, example_inputs: Sequence[Any], roles: tuple[str, ...] = ("parameter", "buffer")
) -> list[tuple[int, torch.fx.Node, torch.Tensor]]:
    """(input index, placeholder, tensor) for each parameter or buffer (``roles``) Dynamo lifted
    to a graph input."""
    placeholders = gm.graph.find_nodes(op="placeholder")
    return [
        (i, node, example)
        for i, (node, example) in enumerate(zip(placeholders, example_inputs))
        if record(node).role in roles and isinstance(example, torch.Tensor)
    ]


class ResidentLedger:
    """What earlier graphs of one model hold on each device while a later graph runs, in bytes.

    Every graph of one model (graph breaks, recompiles for new shapes) shares the devices'
    memory: a parameter or buffer placed once stays there for all graphs (the runtime's copies
    are shared through one ``StaticCopyCache``), so later plans see less free memory. In
    training the parameters' gradients and optimizer state count too, and so do the activations
    each earlier graph saves for backward: they stay alive until the backward pass, while the
    graphs after it run their forward. Saved activations are counted once per Dynamo frame (the
    code a graph was captured from) and set of parameters, the most any of its graphs saves on
    a device: a frame's recompiles with the same parameters run instead of one another, not
    together; a frame run several times in one forward with other parameters (a graph break
    inside a repeated layer, :meth:`Backend._per_instance`) saves for each, all alive at once.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, str, dict[str, int], int]] = {}  # ref, device, bytes held, data_ptr
        self._saved: dict[object, tuple[list[weakref.ref], dict[str, int]]] = {}  # refs to its weights, bytes

    def device_of(self, tensor: torch.Tensor) -> str | None:
        """Where an earlier plan put ``tensor``; None if none did, or if its data has been
        replaced since (``model.to(dtype)`` sets ``param.data``: the next plan places it anew),
        unless autopart itself moved it there (``trainable_parameters="move"``)."""
        entry = self._entries.get(id(tensor))
        if entry is None or entry[0]() is not tensor or not _same_storage(tensor, entry[3]):
            return None
        return entry[1]

    def held_bytes(self, frame: object = None) -> dict[str, int]:
        """Bytes held per device by tensors still alive, and by the activations that frames
        other than ``frame`` save for backward (a frame run with a set of parameters: see
        :func:`saved_key`) while those parameters are alive. Records of dead tensors and
        parameter sets are dropped (a model deleted in a notebook or a sweep holds nothing)."""
        held: dict[str, int] = {}
        for key, (ref, _, where, data_ptr) in list(self._entries.items()):
            tensor = ref()
            if tensor is None:
                del self._entries[key]
            elif _same_storage(tensor, data_ptr):
                for device, nbytes in where.items():
                    held[device] = held.get(device, 0) + nbytes
        for other, (refs, saved) in list(self._saved.items()):
            if any(r() is None for r in refs):
                del self._saved[other]
            elif other != frame:
                for device, nbytes in saved.items():
                    held[device] = held.get(device, 0) + nbytes
        return held

    def add(
        self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], plan: Plan, graph: AnnotatedGraph,
        *, replace: bool = False,
    ) -> None:
        """Record the devices ``plan`` gave the graph's parameters and buffers, with their bytes
        (and, in a graph planned for training, their gradients' and optimizer state's, and the
        activations its compute nodes save for backward; those of a parameter copied every step
        (``plan.step_copies``) where it lives). ``replace``: ``plan`` replaces an earlier plan
        of the same graph (re-planning), whose records it overwrites."""
        frame = saved_key(gm, example_inputs)
        if replace:
            self._saved.pop(frame, None)
        homes = {t.source_node: t.src_device for t in plan.step_copies}
        counted = set()  # storages: parameters that are views of one are counted once
        for _, node, tensor in _static_inputs(gm, example_inputs):
            device = plan.placement.get(node.name)
            if device is not None and (replace or self.device_of(tensor) is None):
                storage = storage_key(tensor)
                nbytes = 0 if storage in counted else tensor.untyped_storage().nbytes()
                counted.add(storage)
                extra = record(node).training_bytes + record(node).step_temporary_bytes
                if node.name in homes and extra:  # the copy and its gradient; the rest at home
                    where = {device: 2 * nbytes, homes[node.name]: extra}
                else:
                    where = {device: nbytes + extra}
                self._entries[id(tensor)] = (weakref.ref(tensor), device, where, tensor.data_ptr())
        mine: dict[str, int] = {}
        for node in graph.nodes:
            device = plan.placement.get(node.name)
            if node.role == "compute" and device is not None:
                mine[device] = mine.get(device, 0) + node.training_bytes
        entry = self._saved.get(frame)
        if entry is None or any(r() is None for r in entry[0]):  # new, or ids reused by new weights
            entry = self._saved[frame] = ([weakref.ref(t) for _, _, t in _static_inputs(gm, example_inputs)], {})
        saved = entry[1]
        for device, nbytes in mine.items():
            saved[device] = max(saved.get(device, 0), nbytes)


def _same_storage(tensor: torch.Tensor, data_ptr: int) -> bool:
    """Whether ``tensor`` still has the storage recorded as ``data_ptr``, or the one autopart
    moved it to since (:func:`autopart.runtime.move_parameter`)."""
    return tensor.data_ptr() in (data_ptr, moved_storage(tensor))


#: Parameter sets one graph gets plans for (:meth:`Backend._per_instance`): enough for the
#: layers of any model; more means parameters made anew on every call.
MAX_INSTANCES = 256

#: Calls timed before the measured times are checked against the plan (``replan``).
REPLAN_CALLS = 3

#: Re-plans at most per graph: each new plan is timed and checked again, so that devices the
#: first plan left idle (whose times it could not measure) are measured once they run.
REPLAN_MAX_ROUNDS = 3

#: Devices busy less than this share of the busiest one's predicted time are too short to
#: measure well: they get the typical ratio (see :func:`replan_factors`).
REPLAN_MIN_SHARE = 0.1


def replan_factors(
    plan: Plan, measured_busy_s: dict[str, float], measured_backward_s: dict[str, float] | None = None
) -> tuple[dict[str, float], float]:
    """How far each device's measured busy time departs from the plan's: ``(factors, spread)``.

    ``factors[d]`` = measured / predicted busy seconds per call of device ``d`` (forward, plus
    backward when ``measured_backward_s`` has the backward's: a training step), for devices the
    plan keeps busy at least ``REPLAN_MIN_SHARE`` of the busiest one's time; every other device
    of the plan (idle, or too briefly busy to measure) gets the lower median of those ratios,
    as if it departed from the model as a typical device does. ``spread`` = largest over
    smallest measured ratio (1.0 with fewer than two): how differently the devices depart from
    the model, which is what can change the best placement (all devices slower by the same
    factor leaves it as it is). Returns ``({}, 1.0)`` when nothing was measured.
    """
    backward = measured_backward_s or {}
    predicted = {
        d: plan.predicted_busy_s.get(d, 0.0) + (plan.predicted_backward_busy_s.get(d, 0.0) if backward else 0.0)
        for d in {*plan.predicted_busy_s, *plan.predicted_backward_busy_s}
    }
    measured = {d: measured_busy_s.get(d, 0.0) + backward.get(d, 0.0) for d in {*measured_busy_s, *backward}}
    busiest = max(predicted.values(), default=0.0)
    ratios = {
        d: seconds / predicted[d]
        for d, seconds in measured.items()
        if seconds > 0 and predicted.get(d, 0.0) >= REPLAN_MIN_SHARE * busiest > 0
    }
    if not ratios:
        return {}, 1.0
    typical = statistics.median_low(ratios.values())
    factors = {d: ratios.get(d, typical) for d in plan.capacity_bytes}
    return factors, max(ratios.values()) / min(ratios.values())


def _ratio(measured: float, predicted: float) -> str:
    return f"{measured / predicted:.2f}x" if predicted > 0 else "-"


def saved_key(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> tuple[object, tuple[int, ...]]:
    """What the activations a graph saves for backward are counted under in the ledger: its
    frame (:func:`frame_of`) and the ids of the parameters and buffers it runs with."""
    return frame_of(gm), tuple(id(t) for _, _, t in _static_inputs(gm, example_inputs))


def frame_of(gm: torch.fx.GraphModule) -> object:
    """The Dynamo frame ``gm`` was captured from (its compile id's ``frame_id``), or the graph
    module itself for a graph not captured by Dynamo."""
    compile_id = getattr(gm, "meta", {}).get("dynamo_compile_id")
    frame = getattr(compile_id, "frame_id", None)
    return ("frame", frame) if frame is not None else ("graph", id(gm))


@dataclass
class Compilation:
    """One graph Dynamo handed to autopart, and what became of it. Times in seconds."""

    graph_name: str
    graph: torch.fx.GraphModule
    plan: Plan | None = None
    analysis: Analysis | None = None
    runner: PlacedGraph | None = None
    fallback_reason: str | None = None
    plan_s: float = 0.0
    rewrite_s: float = 0.0
    problem: PlacementProblem | None = None
    """The placement problem ``plan`` solves (after re-planning, with the measured ratios)."""
    replan_checked: bool = False
    """Whether re-planning is done with this graph (``replan``): a check kept the plan, or
    ``REPLAN_MAX_ROUNDS`` re-plans were made, or a new plan failed."""
    replan_rounds: int = 0
    """Re-plans made."""
    replan_note: str | None = None
    """What the last check decided, and why."""
    replanned_from: Plan | None = None
    """The first plan, when re-planning replaced it by ``plan``."""
    instance: int = 0
    """Which of the parameter sets the graph runs with this compilation plans (0: those it was
    captured with; see :meth:`Backend._per_instance`)."""

    @property
    def metrics(self) -> RuntimeMetrics | None:
        return self.runner.metrics if self.runner else None

    def __repr__(self) -> str:
        """One line: the graph and its outcome (``plan.summary()`` and ``report()`` say more)."""
        if self.plan is None:
            outcome = f"runs as captured: {self.fallback_reason}"
        else:
            outcome = (f"{self.plan.objective_name} plan on {', '.join(self.plan.devices_used) or '-'} "
                       f"({self.plan.solver_status}), {self.metrics.num_calls if self.metrics else 0} call(s)")
            if self.fallback_reason:
                outcome += f"; runs as captured: {self.fallback_reason}"
        return f"Compilation({self.graph_name!r}, {len(self.graph.graph.nodes)} nodes: {outcome})"

    def report(self) -> str:
        """Predicted against measured: each device's busy time per call (its partitions:
        compute and the copies it receives) and the whole call, averaged over the calls timed
        with ``monitor=True`` (every call after the first). A call is the forward pass. When
        the backward of timed calls ran (a training step), three more columns give each
        device's backward (its partitions' autograd nodes, and the gradients it sends back)
        and the backward pass of the graph. A ratio far from 1 means the cost model or topology
        departs from this machine (e.g. a preset run on other hardware).

        Raises:
            ValueError: the graph was not compiled with ``monitor=True``, fell back to the
                captured graph, or has not been called twice yet.
        """
        runner, plan = self.runner, self.plan
        if plan is not None and runner is None and self.fallback_reason is None:
            raise ValueError(f"{self.graph_name} was planned, not run (plan_model): nothing to report")
        if runner is None or plan is None:
            raise ValueError(f"{self.graph_name} runs as captured ({self.fallback_reason}): nothing to report")
        if runner.timer is None:
            raise ValueError(f"{self.graph_name} is not monitored: compile with autopart.backend(monitor=True)")
        calls = runner.metrics.num_monitored_calls
        if not calls:
            raise ValueError(f"{self.graph_name} has no timed call yet: the first call is not timed, call it again")
        measured_backward = runner.measured_backward_s()
        backward = measured_backward.busy_s

        def columns(predicted: float, measured: float) -> list[str]:
            return [_ms(predicted), _ms(measured), _ratio(measured, predicted)]

        rows = []
        for device, seconds in runner.measured_busy_s().items():
            row = [device, plan.device_map.get(device, device), *columns(plan.predicted_busy_s.get(device, 0.0), seconds)]
            if backward:
                row += columns(plan.predicted_backward_busy_s.get(device, 0.0), backward.get(device, 0.0))
            rows.append(row)
        call_s = runner.metrics.monitored_call_s / calls
        rows.append(["(call)", "-", *columns(plan.predicted_forward_s, call_s)])
        header = ["device", "runs on", "predicted", "measured", "measured/predicted"]
        title = f"autopart monitor for {self.graph_name}: busy time per call, mean of {calls} timed call(s)"
        if backward:
            rows[-1] += columns(plan.predicted_backward_s, measured_backward.span_s)
            header += ["backward predicted", "measured", "measured/predicted"]
            title += f"; backward: mean of {measured_backward.passes} pass(es)"
        return "\n".join([title, *_table(header, rows)])

    def explain(self, max_rows: int = 40) -> str:
        """Why each task of the plan runs where it does: its fastest device, and what moving it
        there alone would do (:func:`autopart.explain.explain`).

        Raises:
            ValueError: the graph runs as captured (no plan).
        """
        from .explain import explain

        if self.plan is None or self.problem is None:
            raise ValueError(f"{self.graph_name} runs as captured ({self.fallback_reason}): nothing to explain")
        return explain(self.plan, self.problem, max_rows)

    def plot(self, path: str | os.PathLike | None = None) -> Figure:
        """The plan's picture (:func:`autopart.viz.plot_plan`), with the busy times per call
        ``monitor`` measured, when it has timed a call (forward, and backward once a training
        step's backward ran); saved to ``path`` if given.

        Raises:
            ValueError: the graph runs as captured (no plan), or ``path``'s suffix names no
                image format.
            ImportError: matplotlib is not installed.
        """
        from .viz import plot_plan

        if self.plan is None:
            raise ValueError(f"{self.graph_name} runs as captured ({self.fallback_reason}): nothing to plot")
        measured = backward = None
        runner = self.runner
        if runner is not None and runner.timer is not None and runner.metrics.num_monitored_calls:
            measured = runner.measured_busy_s()
            backward = runner.measured_backward_s().busy_s or None
        return plot_plan(self.plan, path, measured_s=measured, measured_backward_s=backward)


_REGISTRY: list[weakref.ref[Compilation]] = []  # weak: a deleted backend's graphs are freed
_LAST_BACKEND: list[Backend] = []


class Backend:
    """A Dynamo backend with fixed options: ``torch.compile(model, backend=Backend(config))``.

    ``compilations`` lists every graph it compiled, in order.
    """

    def __repr__(self) -> str:
        default = Config()
        changed = {
            f.name: getattr(self.config, f.name)
            for f in dataclasses.fields(Config)
            if getattr(self.config, f.name) != getattr(default, f.name)
        }
        return f"autopart.backend({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def __init__(self, config: Config | None = None, *, execute: bool = True) -> None:
        self.config = config or Config()
        self.execute = execute
        self.compilations: list[Compilation] = []
        self._topology: Topology | None = None
        self._mapping: dict[str, str] | None = None
        self._ledger = ResidentLedger()
        self._copies = StaticCopyCache()
        self._configured: dict[str, Backend] = {}

    def __deepcopy__(self, memo: dict) -> Backend:
        """A backend is shared, not copied: ``copy.deepcopy`` of a model compiled with it
        compiles the copy with this backend too, whose memory ledger then counts both."""
        return self

    def __reduce__(self) -> tuple:
        """Pickled as its options: unpickled, the default backend is ``autopart_backend`` and
        another is a new backend with the same options and no compilations."""
        if self is autopart_backend:
            return _default_backend, ()
        return _backend_of, (self.config, self.execute)

    @property
    def topology(self) -> Topology:
        """The topology this backend plans for (resolved, or discovered, once)."""
        if self._topology is None:
            self._topology = self.config.resolve_topology()
        return self._topology

    def reset(self) -> None:
        """Forget every graph compiled, and free what they hold: worker threads, weight copies,
        the memory ledger. ``torch._dynamo.reset()`` calls this for backends it compiled with.
        A compiled function still called afterwards runs, starting a new worker thread and
        copying its weights again."""
        mine = {id(c) for c in self.compilations}
        _REGISTRY[:] = [r for r in _REGISTRY if r() is not None and id(r()) not in mine]
        for comp in self.compilations:  # a compiled function Dynamo keeps may still call these
            if comp.runner is not None:
                comp.runner.schedule.close()  # its next run starts a new worker
        self._copies.entries.clear()  # its next call copies the weights again
        for child in self._configured.values():
            child.reset()
        self.compilations.clear()
        self._configured.clear()
        self._ledger = ResidentLedger()

    @property
    def plans(self) -> list[Plan]:
        return [c.plan for c in self.compilations if c.plan is not None]

    def _resolve_mapping(self) -> dict[str, str]:
        if not self.execute and self.config.device_map is None:
            return {}  # planning only: nothing runs, so no local device is needed
        return resolve_device_map(self.topology, self.config.device_map)

    def __call__(
        self,
        gm: torch.fx.GraphModule,
        example_inputs: Sequence[Any],
        *,
        options: dict[str, Any] | None = None,
        mode: str | None = None,
    ) -> Callable:
        """Plan ``gm`` and return what runs it (Dynamo's backend protocol).

        ``options`` are what ``torch.compile(model, backend="autopart", options={...})`` passes:
        :class:`~autopart.config.Config` fields, as for :func:`backend`, over this backend's
        own. Each set of options gets one backend, so that the graphs of one model compiled with
        it share its memory ledger and weight copies.

        Raises:
            TypeError: an unknown option. ValueError: a bad option value, or a ``mode`` (Inductor's
                ``"reduce-overhead"``, ``"max-autotune"``: autopart has none).
        """
        reset_with_dynamo(self)
        if mode is not None:
            raise ValueError(
                f"autopart takes no torch.compile mode (got mode={mode!r}); leave mode out, and "
                "pass options={'inner': 'inductor'} to compile each partition with Inductor"
            )
        if options:
            Config.from_options(**options)  # names an unknown option
            config = dataclasses.replace(self.config, **options)
            child = self._configured.get(repr(config))
            if child is None:
                child = Backend(config)
                child._mapping = child._resolve_mapping()
                config.capacities_bytes(child.topology)  # names a max_memory device the topology lacks
                self._configured[repr(config)] = child
            return child(gm, example_inputs)
        compile_id = getattr(gm, "meta", {}).get("dynamo_compile_id")
        name = f"graph {len(self.compilations)}" + (f" (compile id {compile_id})" if compile_id else "")
        return self._per_instance(gm, example_inputs, self._compile(gm, example_inputs, name))

    def _per_instance(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], first: Callable) -> Callable:
        """What runs ``gm`` for any parameters: ``first`` (its compiled plan) for the parameters
        it was compiled with, and a plan of its own for each other set ``gm`` is called with
        (one graph serving several layers, e.g. after a graph break inside a repeated layer:
        Dynamo reuses the graph, passing each layer's parameters as inputs). Each instance is
        planned with the memory the earlier ones hold (the ledger), so the layers spread over
        the devices as they would in one graph; its compilation is named
        ``"<graph> [instance k]"``. An instance whose parameters are gone (a model deleted) is
        forgotten when the next set comes: its worker thread stops and its compilation leaves
        ``compilations``. Past ``MAX_INSTANCES`` sets planned (forgotten ones included: sets
        made anew on every call), further ones run with ``first``."""
        comp = getattr(first, "compilation", None)
        indices = [i for i, _, _ in _static_inputs(gm, example_inputs, roles=("parameter",))]
        if comp is None or comp.analysis is None or comp.fallback_reason is not None or not indices:
            return first  # runs as captured, or no parameters to tell instances apart
        # parameter ids -> (the parameters, to tell a reused id from the same tensor; what runs them)
        instances: dict[tuple[int, ...], tuple[list[weakref.ref], Callable]] = {
            tuple(id(example_inputs[i]) for i in indices): ([weakref.ref(example_inputs[i]) for i in indices], first)
        }

        planned = [1]  # sets of parameters planned so far, the first included

        def run(*args: Any) -> Any:
            key = tuple(id(args[i]) for i in indices)
            refs, call = instances.get(key, ((), None))
            if call is not None and all(r() is args[i] for r, i in zip(refs, indices)):
                return call(*args)
            for gone in [k for k, (refs, call) in instances.items() if call is not first and any(r() is None for r in refs)]:
                self._forget(getattr(instances.pop(gone)[1], "compilation", None))
            k = planned[0]
            if k >= MAX_INSTANCES:  # parameters made anew on every call: plan no more
                if k == MAX_INSTANCES:
                    warnings.warn(f"autopart: {comp.graph_name} ran with {k} sets of parameters; further "
                                  "sets run with its first plan", AutopartWarning, stacklevel=2)
                    planned[0] += 1  # warned once
                return first(*args)
            planned[0] += 1
            call = self._compile(gm, list(args), f"{comp.graph_name} [instance {k}]", comp.analysis, k)
            instances[key] = ([weakref.ref(args[i]) for i in indices], call)
            return call(*args)

        run.compilation = comp  # type: ignore[attr-defined]
        return run

    def _forget(self, comp: Compilation | None) -> None:
        """Drop ``comp`` (an instance whose parameters are gone) and stop its worker thread."""
        if comp is None:  # planned only, or no plan to forget
            return
        if comp.runner is not None:
            comp.runner.schedule.close()
        self.compilations[:] = [c for c in self.compilations if c is not comp]

    def _compile(
        self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], name: str,
        analysis: Analysis | None = None, instance: int = 0,
    ) -> Callable:
        """Plan ``gm`` for ``example_inputs`` (as :func:`plan_graph`, whose ``analysis`` this is),
        record it as a :class:`Compilation` (its ``instance``-th parameter set), and return what
        runs it: the guarded plan, or, when planning fails and not ``strict``, the captured
        graph."""
        comp = Compilation(graph_name=name, graph=gm, instance=instance)
        self.compilations.append(comp)
        _REGISTRY[:] = [r for r in _REGISTRY if r() is not None] + [weakref.ref(comp)]
        _LAST_BACKEND[:] = [self]
        try:
            start = time.perf_counter()
            if self._mapping is None:
                self._mapping = self._resolve_mapping()
            comp.plan, comp.problem, comp.analysis = plan_graph(
                gm,
                example_inputs,
                self.config,
                self.topology,
                graph_name=name,
                mapping=self._mapping,
                ledger=self._ledger,
                analysis=analysis,
            )
            comp.plan_s = time.perf_counter() - start
            log.info("autopart planned %s:\n%s", name, comp.plan.summary())
            if not self.execute:
                self._ledger.add(gm, example_inputs, comp.plan, comp.analysis.graph)
                return _planned_only(gm, comp)
            start = time.perf_counter()
            comp.runner = self._runner(gm, example_inputs, comp.plan)
            comp.rewrite_s = time.perf_counter() - start
            self._ledger.add(gm, example_inputs, comp.plan, comp.analysis.graph)
        except Exception as exc:
            if self.config.strict:
                raise
            comp.fallback_reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"autopart could not plan {name} ({comp.fallback_reason}); running the captured "
                "graph unchanged. Pass strict=True to raise instead.",
                AutopartWarning,
                stacklevel=2,
            )
            captured = functools.partial(_as_captured, gm)
            captured.compilation = comp  # type: ignore[attr-defined]
            return captured
        return _guard_first_call(comp, gm, self.config.strict, self if self.config.replan else None)

    def _runner(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], plan: Plan) -> PlacedGraph:
        """Rewrite ``gm`` for ``plan`` and make the callable that runs it."""
        rewritten = rewrite(gm, plan, self._mapping)
        flat: torch.fx.GraphModule | InductorPartition = rewritten.flat
        if self.config.inner == "inductor":
            static, dynamo_metadata = not _has_symbolic_shapes(gm), DynamoMetadata.of(gm)
            use_inductor(rewritten.module, static=static, dynamo=dynamo_metadata)
            flat = InductorPartition(rewritten.flat, "flat", static=static, dynamo=dynamo_metadata)
        num_microbatches, batch = self._microbatches(gm, example_inputs, plan)
        host = {p for p, d in rewritten.partition_devices.items() if self.topology.device(d).kind == "cpu"}
        on_cpu = {p for p, d in rewritten.partition_devices.items() if torch.device(self._mapping.get(d, d)).type == "cpu"}
        if on_cpu - host and host and any(n.op == "call_function" and is_random(n) for n in gm.graph.nodes):
            host = set()  # both lanes would draw from the CPU generator at once: keep eager's order
        if updates_inputs(gm, roles=("input",)):
            host = set()  # readers of the input on the other lane would race with the update
        return PlacedGraph(
            rewritten.module,
            plan,
            rewritten.static_moves,
            cache=self._copies,
            replica_sources=rewritten.replica_sources,
            pinned_inputs=rewritten.pinned_inputs,
            flat=flat,
            host_partitions=host,
            num_microbatches=num_microbatches,
            batch=batch,
            warn_if_unsplit=self.config.num_microbatches is not None,
            partition_devices=rewritten.partition_devices,
            monitor=self.config.monitor or self.config.replan is not None,
            move_trainable=self.config.trainable_parameters == "move",
        )

    def _maybe_replan(self, comp: Compilation, gm: torch.fx.GraphModule, args: Sequence[Any]) -> None:
        """Once ``REPLAN_CALLS`` calls are timed: re-plan ``comp`` with the measured ratios
        (:func:`replan_factors`) if they spread beyond ``config.replan``, and switch to the new
        plan if it is predicted better under them; a new plan is checked the same way, its
        ratios compounding the earlier ones, up to ``REPLAN_MAX_ROUNDS`` re-plans. ``args``:
        this call's inputs (real tensors)."""
        runner, plan, problem = comp.runner, comp.plan, comp.problem
        assert runner is not None and plan is not None and problem is not None and comp.analysis is not None
        comp.replan_checked = True
        threshold = self.config.replan
        assert threshold is not None
        factors, spread = replan_factors(plan, runner.measured_busy_s(), runner.measured_backward_s().busy_s)
        if spread <= threshold:
            comp.replan_note = f"kept: measured/predicted ratios spread {spread:.2f}x <= {threshold}x"
            return
        corrected = problem.scaled(factors)
        new_plan = solve_problem(comp.analysis.graph, corrected, self.config, self._mapping)
        objective, eta = self.config.objective, self.config.energy_eta
        old_value = evaluate(corrected, *plan.assignment).value(objective, eta)
        new_value = evaluate(corrected, *new_plan.assignment).value(objective, eta)
        if not new_value < old_value * (1 - self.config.min_split_gain):
            comp.replan_note = (f"kept: ratios spread {spread:.2f}x, but a new plan is predicted no better "
                                f"({new_value:.4g} against {old_value:.4g})")
            return
        self._adopt(comp, gm, args, new_plan, self._runner(gm, args, new_plan), corrected)
        comp.replanned_from = comp.replanned_from or plan
        comp.replan_rounds += 1
        comp.replan_checked = comp.replan_rounds >= REPLAN_MAX_ROUNDS
        comp.replan_note = (f"re-planned ({comp.replan_rounds} of at most {REPLAN_MAX_ROUNDS}): measured/predicted "
                            f"ratios spread {spread:.2f}x > {threshold}x; predicted {new_value:.4g} against "
                            f"{old_value:.4g} for the old plan under them")
        log.info("autopart %s %s:\n%s", comp.graph_name, comp.replan_note, new_plan.summary())

    def _adopt(
        self, comp: Compilation, gm: torch.fx.GraphModule, args: Sequence[Any], plan: Plan, runner: PlacedGraph,
        problem: PlacementProblem,
    ) -> None:
        """Make ``plan`` (run by ``runner``, solving ``problem``) the plan of ``comp`` in place
        of its current one: the ledger records it, and weight copies only the current plan used
        are dropped."""
        assert comp.runner is not None and comp.analysis is not None
        for i, device in comp.runner.static_moves.items():
            if runner.static_moves.get(i) != device and isinstance(args[i], torch.Tensor):
                self._copies.entries.pop((id(args[i]), device), None)
        self._ledger.add(gm, args, plan, comp.analysis.graph, replace=True)
        comp.plan, comp.runner, comp.problem = plan, runner, problem

    def _microbatches(
        self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], plan: Plan
    ) -> tuple[int, BatchSpec | str]:
        """Micro-batches per call (the user's ``num_microbatches``, else 4 per device for a
        throughput plan on several devices that streams no weights, else 1) and the batch
        layout (or why none). Each micro-batch would copy the streamed weights again: the plan
        counts one copy per call."""
        wanted = self.config.num_microbatches
        if wanted is None and (self.config.objective != "throughput" or len(plan.devices_used) < 2):
            return 1, "not requested"
        if wanted is None and any(t.streamed_from for t in plan.tasks):
            return 1, "the plan streams weights from host memory, once per call"
        spec = batch_spec(gm)
        if wanted is not None or isinstance(spec, str):
            return wanted or 1, spec
        batch_size = example_inputs[spec.tensor_inputs[0]].shape[0]
        return auto_microbatches(len(plan.devices_used), batch_size), spec


def _planned_only(gm: torch.fx.GraphModule, comp: Compilation) -> Callable:
    """The captured graph, for a backend that only plans, tagged with its compilation."""

    def run(*args: Any) -> Any:
        return gm(*args)

    run.compilation = comp  # type: ignore[attr-defined]
    return run


def _as_captured(gm: torch.fx.GraphModule, *args: Any) -> Any:
    """Run ``gm`` as Dynamo captured it (a graph whose planning failed)."""
    return gm.forward(*args)


def _has_symbolic_shapes(gm: torch.fx.GraphModule) -> bool:
    """Whether an input of ``gm`` is a ``SymInt`` or has a symbolic size (dynamic shapes)."""
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node_value(node)
        if isinstance(value, torch.SymInt) or (
            isinstance(value, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in value.shape)
        ):
            return True
    return False


def _guard_first_call(
    comp: Compilation, gm: torch.fx.GraphModule, strict: bool, replanner: Backend | None = None
) -> Callable:
    """Run the planned graph; if its first call fails (and not strict), fall back for good.

    Only a graph that mutates nothing in place is retried as captured, so a failed first call
    can never apply an update twice. With ``replanner`` (a backend with ``replan`` set), the
    measured times are checked once ``REPLAN_CALLS`` calls are timed; the first call of a new
    plan is guarded in the same way, falling back to the old plan.
    """
    assert comp.runner is not None
    state: dict[str, Any] = {"ok": False, "fallback": False, "previous": None}
    retry_safe = not mutates_in_place(gm)

    def guarded(args: tuple[Any, ...]) -> Any:
        runner = comp.runner
        assert runner is not None
        try:
            out = runner(*args)
        except Exception as exc:
            if strict or not retry_safe:
                raise
            previous = state["previous"]
            what = "the re-planned graph's first call" if previous else "its first call"
            comp.fallback_reason = f"{what} failed: {type(exc).__name__}: {exc}"
            warnings.warn(
                f"autopart's plan for {comp.graph_name}: {comp.fallback_reason}; running "
                f"{'the plan before it' if previous else 'the captured graph unchanged'}",
                AutopartWarning,
                stacklevel=3,
            )
            if previous is None:
                state["fallback"] = True
                return gm(*args)
            assert replanner is not None
            replanner._adopt(comp, gm, args, *previous)
            comp.replan_checked, state["previous"], state["ok"] = True, None, True
            if comp.plan is comp.replanned_from:
                comp.replanned_from = None
            return previous[1](*args)
        state["ok"], state["previous"] = True, None
        return out

    def run(*args: Any) -> Any:
        if not state["ok"]:
            return gm(*args) if state["fallback"] else guarded(args)
        runner = comp.runner
        out = runner(*args)  # type: ignore[misc]
        if replanner is not None and not comp.replan_checked and (
            runner.metrics.num_monitored_calls >= REPLAN_CALLS  # type: ignore[union-attr]
        ):
            previous = (comp.plan, runner, comp.problem)
            try:
                replanner._maybe_replan(comp, gm, args)
            except Exception as exc:
                if strict:
                    raise
                comp.replan_note = f"re-planning failed: {type(exc).__name__}: {exc}"
                warnings.warn(f"autopart could not re-plan {comp.graph_name} ({comp.replan_note}); "
                              "it keeps its plan", AutopartWarning, stacklevel=2)
            if comp.runner is not runner:
                state["ok"], state["previous"] = False, previous
        return out

    run.compilation = comp  # type: ignore[attr-defined]
    return run


#: The backend ``torch.compile(..., backend="autopart")`` uses (default options).
autopart_backend = Backend()


def _default_backend() -> Backend:
    return autopart_backend


def _backend_of(config: Config, execute: bool) -> Backend:
    """A backend with ``config``, its device map resolved (a bad one raises here)."""
    b = Backend(config, execute=execute)
    b._mapping = b._resolve_mapping() if execute else None
    return b


def backend(**options: Any) -> Backend:
    """A Dynamo backend with the given options (the fields of :class:`autopart.Config`).

    Example: ``torch.compile(model, backend=autopart.backend(topology="4xa100-pcie-cpu",
    device_map="cpu", max_memory={"cuda:0": "300MB", "cuda:1": "300MB"}))``.

    Raises:
        TypeError: an unknown option. ValueError: an invalid option value (the topology, device
            map and ``max_memory`` devices are resolved here, so a bad preset name or device
            fails now, not at the first compile).
    """
    b = _backend_of(Config.from_options(**options), execute=True)
    b.config.capacities_bytes(b.topology)  # names a max_memory device the topology lacks
    return b


def plan_model(
    model: torch.nn.Module | Callable, example_inputs: Any, *, training: bool = False, **options: Any
) -> list[Plan]:
    """Plan ``model`` without running the plans: one Plan per graph Dynamo captures.

    The model runs once, eagerly, on ``example_inputs`` (a tuple of positional arguments, a dict
    of keyword arguments, or a single tensor) so that Dynamo can capture it. A model built on
    the ``meta`` device (no memory, e.g. an 8B model on a laptop) can be planned too. The
    annotated graphs are in ``autopart.last_plans``' backend: see :func:`plan_model_backend`.

    Args:
        training: False (default): plan for inference (the model runs under ``torch.no_grad``).
            True: plan for training, as ``torch.compile`` does for a call with gradients
            enabled: each device also reserves its parameters' gradients, the state of
            ``optimizer`` (an option, default ``"adam"``) and the activations saved for
            backward. The model's train/eval mode is left as it is (dropout is captured only
            in train mode).
        options: :class:`~autopart.config.Config` fields (``topology``, ``max_memory``, ...).

    Raises:
        ValueError / TypeError: bad options, or a model that cannot be planned (e.g. too large
            for ``max_memory``: the message gives needed and available bytes); no graph captured
            (Dynamo ran the model eagerly); with ``training=True``, a model in which no
            parameter or input requires grad.
    """
    return plan_model_backend(model, example_inputs, training=training, **options).plans


def plan_model_backend(
    model: torch.nn.Module | Callable, example_inputs: Any, *, training: bool = False, **options: Any
) -> Backend:
    """As :func:`plan_model`, returning the planning :class:`Backend`, whose ``compilations``
    hold each graph's plan and analysis (``compilation.analysis.graph`` can be saved)."""
    options.setdefault("strict", True)
    planner = Backend(Config.from_options(**options), execute=False)
    compiled = torch.compile(model, backend=planner)
    args, kwargs = _split_inputs(example_inputs)
    try:
        with torch.enable_grad() if training else torch.no_grad():
            compiled(*args, **kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as exc:
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if isinstance(inner, (ValueError, TypeError)):
            raise inner from None
        raise
    if not planner.compilations:
        raise ValueError(
            "plan_model captured no graph: Dynamo ran the model eagerly (it has no tensor "
            "operations, or earlier compiles of the same code reached Dynamo's recompile limit, "
            "torch._dynamo.config.recompile_limit, 8 by default: each plan_model call compiles "
            "the model once more); call torch._dynamo.reset() and plan again. To plan one model "
            "for many options, capture it once and solve its graph for each: graph = "
            "autopart.dynamo.plan_model_backend(model, inputs).compilations[0].analysis.graph, "
            "then autopart.solve_graph(graph, **options)"
        )
    if training and not any(p.training for p in planner.plans):
        raise ValueError(
            "training=True, but no parameter or input of the model requires grad, so there is "
            "nothing to train; call model.requires_grad_() first, or plan with training=False"
        )
    return planner


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), example_inputs
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def last_plans() -> list[Plan]:
    """Plans of the autopart backend that compiled most recently, in compile order."""
    return _LAST_BACKEND[0].plans if _LAST_BACKEND else []


def compilations() -> list[Compilation]:
    """Every graph compiled by an autopart backend still alive (or the last one used) since the
    last :func:`reset` or ``torch._dynamo.reset()``, in compile order."""
    return [c for c in (r() for r in _REGISTRY) if c is not None]


def reset() -> None:
    """Forget recorded compilations (does not reset Dynamo's own caches)."""
    _REGISTRY.clear()
    _LAST_BACKEND.clear()
