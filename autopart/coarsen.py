"""Coarsening: contract an annotated graph into a placement problem of a few dozen tasks.

A **task** is a contiguous run of compute nodes in graph order. Because every task is a
contiguous run of a topological order, every edge between tasks goes forward, so the graph of
tasks, and any partition of tasks into devices executed in that order, is acyclic.

A model made of repeated blocks (:func:`repeated_blocks`: the layers of a transformer) is
grouped layer by layer (:func:`group_nodes`): identical layers become identical tasks and the
ILP stays small. They keep variables of their own: autoparallel's clustering makes identical
layers share one sharding decision, which suits SPMD sharding, where every layer is sharded
alike; in a placement, identical layers must be free to go to different devices. What
identical tasks give the solver instead is symmetry it exploits: classes of identical tasks
in the throughput bound (:func:`autopart.solver.aggregated_bottleneck_bound_s`).

How finely blocks are cut is chosen for memory (:func:`build_problem`). With
``MIN_BLOCKS_TO_KEEP_WHOLE`` blocks or more, each block is first one task. If no placement of
that problem fits the devices' memory, found quickly (:func:`autopart.solver.quick_placement`:
the greedy placement and the baselines), each block is cut into 2, 4, 8, ... tasks, the same
cut in every block, up to as many as ``max_groups`` allows (:func:`finer_block_pieces`), until
one fits; the finest is handed to the ILP when none does, which searches it exhaustively. So
whole blocks are kept whenever they are known to fit (the common case: same tasks, same ILP),
a placement that exists only inside blocks is found when ``max_groups`` allows the cut, and
"raise max_groups" is advice that works. (A quick placement is not a proof: blocks are cut
finer also when whole blocks would fit only by the ILP's search. That costs solve time, and
hardly ever a placement: a placement of whole blocks is one of the finer problem too, whose
memory rows count the same weights and differ only in how activations that live inside a block
are counted: over whole pieces rather than step by step.)

Otherwise, and for the nodes before and after the layers, runs are formed in three steps:

1. one run per maximal stretch of nodes from the same innermost module
   (``meta["nn_module_stack"]``), never cutting before an ``operator.getitem`` (which must stay
   with the tuple it indexes);
2. runs heavier than ``1 / max_groups`` of the total weight are cut into lighter pieces;
3. adjacent runs are merged until at most ``max_groups`` remain: first pairs whose merged weight
   stays under the limit, among those the pair sharing the deepest module, then the lightest.

Weight = share of predicted compute time + share of resident bytes, so groups are balanced in
both what they compute and what they hold. Parameters, buffers and constants join the task of
their first user; user inputs and the graph output become tasks fixed to their device.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .graph import AnnotatedGraph, GraphNode
from .passes.records import RESIDENT_ROLES
from .topology import Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """A group of FX nodes placed together.

    ``time_s``: predicted seconds per device of one call: the forward, and in a training graph
    also the backward, whose part is ``backward_time_s``, and the optimizer's update of the
    task's parameters, whose part is ``step_time_s``; both passes with the copies of trainable
    parameters that do not live on that device (``build_problem``'s ``copy_trainable``).
    ``resident_bytes``: parameters, buffers and constants it holds, and in a training graph
    their gradients and optimizer state and the activations its nodes save for backward (held
    from the forward pass into the backward pass); on the device it runs on, except where
    ``resident_on`` says otherwise (:meth:`held_bytes`).
    ``peak_bytes``: activation bytes live inside it at its busiest step (storages that are born
    and die inside the task). ``fixed_device``: inputs and outputs cannot move.
    """

    name: str
    nodes: tuple[str, ...]
    time_s: dict[str, float]
    resident_bytes: int = 0
    peak_bytes: int = 0
    fixed_device: str | None = None
    backward_time_s: dict[str, float] = field(default_factory=dict)
    step_time_s: dict[str, float] = field(default_factory=dict)
    resident_on: dict[str, dict[str, int]] = field(default_factory=dict)
    """For the devices where the task's resident bytes are not all held on the device it runs
    on: that device -> {device holding them: bytes}. A training task whose trainable
    parameters are copied to the device every step (``build_problem``'s ``copy_trainable``)
    holds there the copies and their gradients, and where each parameter lives its gradient
    and optimizer state."""
    unit_bytes: tuple[int, ...] = ()
    """Resident bytes of each run of its nodes that coarsening never cuts, whatever
    ``max_groups``, in order: a compute node with the weights it is the first to read and the
    ``getitem`` nodes that index its result (a node that neither computes nor holds anything
    goes with the next node of its module). A task of several units is one that a higher
    ``max_groups`` can cut finer (the solver's errors suggest it only then). Empty when not
    known: a task built by hand, the inputs and the output."""
    kept_whole: tuple[str, str] | None = None
    """(first, last) node names of a stretch that joins several of its units into one
    (``AnnotatedGraph.updated_together``: it reads a tensor the graph updates in place), for the
    solver's errors; None when no such stretch joins its units."""

    @property
    def prefetch_bytes(self) -> int:
        """Bytes of its first weights that the runtime copies ahead, while the task before it
        runs, when its weights are streamed (:func:`autopart.rewrite.rewrite` prefetches one
        layer ahead): its first unit that holds weights (``unit_bytes``), or all its resident
        bytes when its units are not known."""
        return next((b for b in self.unit_bytes if b), self.resident_bytes)

    def held_bytes(self, device: str) -> dict[str, int]:
        """Bytes held all call long on each device when the task runs on ``device``."""
        return self.resident_on[device] if device in self.resident_on else {device: self.resident_bytes}


@dataclass(frozen=True)
class Value:
    """Tensors produced in one task and read in others: candidates for transfers.

    ``nbytes`` bytes in ``count`` tensors, produced by task ``producer``, read by ``consumers``.
    In a training graph, ``grad_nbytes`` of them in ``grad_count`` tensors need a gradient,
    which backward sends back from each consumer's device to the producer's.
    """

    producer: int
    consumers: tuple[int, ...]
    nbytes: int
    count: int
    nodes: tuple[str, ...]
    grad_nbytes: int = 0
    grad_count: int = 0

    @property
    def received_span(self) -> tuple[int, int]:
        """(first, last) task position at which a device that receives the value holds its
        copy, as the memory model counts it: from the value's first reader to its last (the
        runtime copies it before its first reader on a device and frees the copy after its
        last reader there, within that span)."""
        return min(self.consumers), max(self.consumers)


@dataclass(frozen=True)
class SharedWeight:
    """Weights held by task ``home`` and read by other tasks too (e.g. a tied embedding):
    a reader on another device gets its own copy, made once and kept (``nbytes`` more there)."""

    node: str
    home: int
    readers: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class LiveRange:
    """An activation storage live from task ``producer`` to task ``last`` on the producer's device."""

    producer: int
    last: int
    nbytes: int


@dataclass(frozen=True)
class PlacementProblem:
    """Everything the solver needs, with no reference to a model or graph.

    Tasks are in execution order; memory is in bytes, times in seconds.
    """

    tasks: tuple[Task, ...]
    values: tuple[Value, ...]
    live_ranges: tuple[LiveRange, ...]
    capacity_bytes: dict[str, int]
    topology: Topology = field(repr=False)
    shared: tuple[SharedWeight, ...] = ()
    training: bool = False
    """Planned for training: tasks' ``resident_bytes`` include gradients, optimizer state and
    saved activations, and no task's weights are streamed from host memory (those bytes would
    stay on its device)."""
    activation_copies: int = 1
    """Copies of every activation a device holds at once: 1 for one call at a time (what
    autopart plans: its pipelines split one call into micro-batches); more to model several
    calls in flight, in offline experiments."""

    @property
    def devices(self) -> list[str]:
        """Devices the solver may use (capacity > 0), in topology order."""
        return [d for d in self.topology.device_names if self.capacity_bytes.get(d, 0) > 0]

    def scaled(self, factors: dict[str, float]) -> PlacementProblem:
        """This problem with every task's predicted time on device ``d`` multiplied by
        ``factors[d]`` (1 for a device not named), e.g. measured over predicted time."""

        def scale(times: dict[str, float]) -> dict[str, float]:
            return {d: s * factors.get(d, 1.0) for d, s in times.items()}

        tasks = tuple(
            dataclasses.replace(
                t,
                time_s=scale(t.time_s),
                backward_time_s=scale(t.backward_time_s),
                step_time_s=scale(t.step_time_s),
            )
            for t in self.tasks
        )
        return dataclasses.replace(self, tasks=tasks)

    def without_step(self) -> PlacementProblem:
        """This problem without the optimizer step: tasks' ``step_time_s`` taken out of their
        ``time_s`` (the forward and backward passes, which ``monitor`` times)."""
        tasks = tuple(
            dataclasses.replace(
                t, time_s={d: s - t.step_time_s.get(d, 0.0) for d, s in t.time_s.items()}, step_time_s={}
            )
            for t in self.tasks
        )
        return dataclasses.replace(self, tasks=tasks)

    def forward_only(self) -> PlacementProblem:
        """This problem without the backward pass and the optimizer step: tasks'
        ``backward_time_s`` and ``step_time_s`` taken out of their ``time_s``, and no gradient
        copies (the forward call ``monitor`` times)."""
        tasks = tuple(
            dataclasses.replace(
                t,
                time_s={d: s - t.backward_time_s.get(d, 0.0) for d, s in t.time_s.items()},
                backward_time_s={},
            )
            for t in self.without_step().tasks
        )
        values = tuple(dataclasses.replace(v, grad_nbytes=0, grad_count=0) for v in self.values)
        return dataclasses.replace(self, tasks=tasks, values=values)


def _common_depth(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    depth = 0
    for x, y in zip(a, b):
        if x != y:
            break
        depth += 1
    return depth


@dataclass
class _Run:
    nodes: list[GraphNode]
    weight: float
    path: tuple[str, ...]
    alive: bool = True
    prev: int = -1
    next: int = -1


def repeated_blocks(compute: list[GraphNode]) -> list[tuple[int, int]] | None:
    """The repeated blocks of ``compute`` (in graph order): ``[(start, end), ...]`` index ranges
    of consecutive, identical calls of the modules ``<prefix>.0``, ``<prefix>.1``, ... of one
    container (the layers of a transformer), or None if there are none.

    A node belongs to the outermost module of its ``module_path`` whose name ends in an index.
    Blocks must be adjacent, at least two, and run the same ops in the same order (FX opcode and
    target); otherwise None.
    """
    spans: list[tuple[str, int, int]] = []  # (module, start, end)
    for i, node in enumerate(compute):
        module = next((m for m in node.module_path if _INDEXED.search(m)), None)
        if spans and spans[-1][0] == module:
            spans[-1] = (module, spans[-1][1], i + 1)
        elif module is not None:
            spans.append((module, i, i + 1))
        else:
            spans.append(("", i, i + 1))
    families: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for span in spans:
        if span[0]:
            families[_INDEXED.sub("", span[0])].append(span)
    for blocks in sorted(families.values(), key=lambda b: -sum(e - s for _, s, e in b)):
        adjacent = all(a[2] == b[1] for a, b in zip(blocks, blocks[1:]))
        signatures = {tuple((n.op, n.target) for n in compute[s:e]) for _, s, e in blocks}
        if len(blocks) >= 2 and adjacent and len(signatures) == 1 and not compute[blocks[0][1]].sticky:
            return [(s, e) for _, s, e in blocks]
    return None


_INDEXED = re.compile(r"\.\d+$")

MIN_BLOCKS_TO_KEEP_WHOLE = 4
"""With at least this many repeated blocks, each is one group at first: layers are fine enough
a unit to balance a pipeline (as accelerate's ``no_split_module_classes`` and PiPPy's split
points assume), and cutting inside them multiplies the ILP's work (GPT-2 on 4 GPUs: 0.1 s with
12 layer tasks, 5 s with 24 half-layer tasks, for a plan 0.2% slower under the cost model).
:func:`build_problem` cuts them finer only when whole blocks fit no device split it can find
(the module docstring)."""


def _block_layout(
    compute: list[GraphNode], weight: Callable[[GraphNode], float], max_groups: int
) -> tuple[list[tuple[int, int]], int, int, int] | None:
    """``(blocks, n_before, n_after, budget)``: the repeated blocks of ``compute``, the groups
    for the nodes before and after them (in proportion to their weight, at least one each) and
    the groups left for the blocks (>= 1); None without repeated blocks."""
    blocks = repeated_blocks(compute) if max_groups >= 3 else None
    if blocks is None:
        return None
    total = sum(weight(n) for n in compute) or 1.0
    before, after = compute[: blocks[0][0]], compute[blocks[-1][1]:]

    def share(nodes: list[GraphNode]) -> int:
        return max(1, round(max_groups * sum(weight(n) for n in nodes) / total)) if nodes else 0

    n_before = min(share(before), max_groups - 1 - (1 if after else 0))
    n_after = min(share(after), max_groups - 1 - n_before)
    return blocks, n_before, n_after, max_groups - n_before - n_after


def group_nodes(
    compute: list[GraphNode],
    weight: Callable[[GraphNode], float],
    max_groups: int,
    *,
    block_pieces: int | None = None,
) -> list[list[GraphNode]]:
    """Split ``compute`` (in graph order) into at most ``max_groups`` contiguous runs.

    A model with :func:`repeated_blocks` (transformer layers) is grouped block by block: each
    block is cut into ``block_pieces`` groups at most, the same way in every block, as far as
    ``max_groups`` allows (default: 1, each block whole, with at least
    ``MIN_BLOCKS_TO_KEEP_WHOLE`` blocks; as many as ``max_groups`` allows with fewer), or ``c``
    whole blocks are merged per group when there are more blocks than groups for them; so
    identical layers become identical tasks, cuts fall between layers (or at the same places
    inside each), and the ILP stays small. The nodes before and after the blocks get groups in
    proportion to their weight (at least one each). Otherwise see the module docstring for the
    three steps. Returns the runs in order.

    Raises:
        ValueError: ``block_pieces`` < 1.
    """
    if block_pieces is not None and block_pieces < 1:
        raise ValueError(f"block_pieces must be >= 1, got {block_pieces!r}")
    layout = _block_layout(compute, weight, max_groups)
    if layout is None:
        return _group_runs(compute, weight, max_groups)
    blocks, n_before, n_after, budget = layout
    groups = _group_runs(compute[: blocks[0][0]], weight, n_before)
    if budget >= len(blocks):
        most = budget // len(blocks)
        if block_pieces is None:
            block_pieces = 1 if len(blocks) >= MIN_BLOCKS_TO_KEEP_WHOLE else most
        per_block = min(block_pieces, most)
        for s, e in blocks:
            groups += _group_runs(compute[s:e], weight, per_block)
    else:
        per_group = -(-len(blocks) // budget)
        for k in range(0, len(blocks), per_group):
            chunk = blocks[k : k + per_group]
            groups.append(compute[chunk[0][0] : chunk[-1][1]])
    return groups + _group_runs(compute[blocks[-1][1]:], weight, n_after)


def finer_block_pieces(
    compute: list[GraphNode], weight: Callable[[GraphNode], float], max_groups: int
) -> list[int]:
    """The finer cuts of repeated blocks that :func:`build_problem` tries, in order, when the
    default grouping (:func:`group_nodes`) keeps blocks whole and no placement of it fits:
    ``block_pieces`` of 2, 4, 8, ... up to the most ``max_groups`` allows (the groups left for
    the blocks divided by their number). Empty when blocks are not kept whole (no repeated
    blocks, fewer than ``MIN_BLOCKS_TO_KEEP_WHOLE`` of them, which are already cut as finely as
    ``max_groups`` allows, or several whole blocks per group: a higher ``max_groups`` cuts
    those)."""
    layout = _block_layout(compute, weight, max_groups)
    if layout is None or len(layout[0]) < MIN_BLOCKS_TO_KEEP_WHOLE:
        return []
    blocks, _, _, budget = layout
    most = budget // len(blocks)
    pieces = []
    k = 2
    while k < most:
        pieces.append(k)
        k *= 2
    return pieces + [most] if most > 1 else []


def _group_runs(
    compute: list[GraphNode], weight: Callable[[GraphNode], float], max_groups: int
) -> list[list[GraphNode]]:
    """The three steps of the module docstring."""
    if not compute:
        return []
    total = sum(weight(n) for n in compute) or 1.0
    limit = total / max_groups

    runs: list[_Run] = []
    for node in compute:
        path = node.module_path
        w = weight(node)
        if runs and (
            node.sticky
            or (path == runs[-1].path and runs[-1].weight + w <= limit)
            or (path == runs[-1].path and runs[-1].weight == 0)
        ):
            runs[-1].nodes.append(node)
            runs[-1].weight += w
        else:
            runs.append(_Run([node], w, path))
    for i, run in enumerate(runs):
        run.prev, run.next = i - 1, (i + 1 if i + 1 < len(runs) else -1)

    def key(i: int, j: int) -> tuple[bool, int, float, int]:
        a, b = runs[i], runs[j]
        combined = a.weight + b.weight
        return (combined > limit, -_common_depth(a.path, b.path), combined, i)

    heap = [(key(i, runs[i].next), i, runs[i].next) for i in range(len(runs) - 1)]
    heapq.heapify(heap)
    count = len(runs)
    while count > max_groups and heap:
        _, i, j = heapq.heappop(heap)
        a, b = runs[i], runs[j]
        if not (a.alive and b.alive and a.next == j):
            continue
        a.nodes += b.nodes
        a.weight += b.weight
        a.path = a.path[: _common_depth(a.path, b.path)]
        b.alive = False
        a.next = b.next
        if b.next != -1:
            runs[b.next].prev = i
            heapq.heappush(heap, (key(i, b.next), i, b.next))
        if a.prev != -1:
            heapq.heappush(heap, (key(a.prev, i), a.prev, i))
        count -= 1
    return [r.nodes for r in runs if r.alive]


def home_if_copied(
    node: GraphNode, device: str, local_device: Callable[[str], str], origin_device: Callable[[str], str]
) -> str | None:
    """The topology device a trainable parameter ``node`` lives on, when a call that runs it on
    topology device ``device`` copies it there under autograd (``device`` is run by another
    local device than the parameter's; see ``Config.trainable_parameters``); else None.

    Args:
        local_device: topology device -> the local device that runs it.
        origin_device: local device -> the topology device standing for it
            (:func:`autopart.rewrite.origin_resolver`).
    """
    if node.role != "parameter" or not node.requires_grad or len(node.tensors) != 1:
        return None
    live = node.tensors[0].device
    home = origin_device(live)
    return home if local_device(device) != live and device != home else None


def build_problem(
    graph: AnnotatedGraph,
    topology: Topology,
    capacity_bytes: dict[str, int],
    *,
    origin_device: Callable[[str], str],
    max_groups: int = 32,
    pinned: Mapping[str, str] | None = None,
    local_device: Callable[[str], str] | None = None,
    copy_trainable: bool = True,
) -> PlacementProblem:
    """Contract ``graph`` into a :class:`PlacementProblem` for ``topology``.

    Args:
        capacity_bytes: bytes each device may still take (what earlier graphs hold subtracted).
        origin_device: maps a device string of the captured graph (``"cpu"``) to the topology
            device that holds user inputs and receives outputs there.
        max_groups: coarsening target (number of compute tasks). With at least
            ``MIN_BLOCKS_TO_KEEP_WHOLE`` repeated blocks, each block is one task unless no
            placement of that problem that fits memory is found without the ILP
            (:func:`autopart.solver.quick_placement`); then blocks are cut into 2, 4, ... tasks
            each, up to as many as ``max_groups`` allows (:func:`finer_block_pieces`), until one
            is found, or the finest is returned (see the module docstring).
        pinned: node name -> device: parameters/buffers an earlier graph already placed (their
            bytes are not counted again). With them, the compute nodes the graph binds to an
            input's device (``GraphNode.bound_to``: an in-place update of a user input), on the
            topology device ``origin_device`` gives for it. Their task is fixed to that device;
            runs of pinned compute nodes are tasks of their own, so the work coarsened around
            them stays free. (A task with nodes pinned to two devices stays free, and counts
            pinned parameters in it as new copies.) The graph's ``updated_together`` stretches
            are never cut into two tasks (the groups holding any of their nodes are merged).
        local_device: topology device -> the local device that runs it (default: the same
            name), to tell where a parameter lives from where it is planned.
        copy_trainable: a parameter that requires grad, planned on a device whose local device
            is not the one it lives on, is copied there on every call under autograd, and in a
            training step its gradient comes back (``Config.trainable_parameters="copy"``, the
            runtime's :class:`~autopart.runtime.StaticInputMover`). Its task's time on such a
            device counts both copies (alpha-beta over the links from and to the topology device
            ``origin_device`` gives for where it lives), the gradient's as backward time; its
            memory there is the copy and its gradient, and its gradient and optimizer state are
            held where it lives (``Task.resident_on``; not counted when that device has no
            capacity in ``capacity_bytes``: it is outside the plan, as the model's own weights
            are). False: such parameters move to their planned device once, and cost nothing per
            call.
    """
    from .solver import quick_placement  # the solver imports this module

    pinned = {**{n.name: origin_device(n.bound_to) for n in graph.nodes if n.bound_to is not None}, **(pinned or {})}
    builder = _ProblemBuilder(
        graph, topology, capacity_bytes, origin_device, pinned, local_device or (lambda d: d), copy_trainable
    )
    compute, weight = builder.compute, builder.weight
    groups = group_nodes(compute, weight, max_groups)
    problem = builder.assemble(groups)
    for pieces in finer_block_pieces(compute, weight, max_groups):
        finer = group_nodes(compute, weight, max_groups, block_pieces=pieces)
        if [len(g) for g in finer] == [len(g) for g in groups]:
            continue  # the blocks cannot be cut that much finer
        if quick_placement(problem) is not None:
            break
        log.info("found no placement of %d tasks that fits memory without the ILP; cutting each "
                 "repeated block into up to %d tasks", len(problem.tasks), pieces)
        groups, problem = finer, builder.assemble(finer)
    return problem


class _ProblemBuilder:
    """What :func:`build_problem` needs to turn groups of compute nodes into a problem."""

    def __init__(
        self,
        graph: AnnotatedGraph,
        topology: Topology,
        capacity_bytes: dict[str, int],
        origin_device: Callable[[str], str],
        pinned: Mapping[str, str],
        local_device: Callable[[str], str],
        copy_trainable: bool,
    ) -> None:
        self.graph, self.topology, self.capacity_bytes = graph, topology, capacity_bytes
        self.origin_device, self.pinned, self.local_device = origin_device, pinned, local_device
        self.copy_trainable = copy_trainable
        nodes = graph.nodes
        self.times = graph.node_times(topology)
        self.backward_times = graph.node_times(topology, backward=True)
        self.step_times = graph.node_times(topology, step=True) if any(n.step_ops for n in nodes) else {}
        self.compute = [n for n in nodes if n.is_compute]
        self.candidates = [d for d in topology.device_names if capacity_bytes.get(d, 0) > 0]
        # Resident tensors join their first user.
        self.attached: dict[str, list[GraphNode]] = defaultdict(list)
        for n in nodes:
            if n.role in RESIDENT_ROLES and graph.users[n.name]:
                first_user = graph.node(min(graph.users[n.name], key=graph.index.__getitem__))
                if first_user.is_compute:
                    self.attached[first_user.name].append(n)
        self.total_time = sum(self.ref_time(n) for n in self.compute) or 1.0
        self.total_resident = sum(self.resident(n) for n in self.compute) or 1

    def ref_time(self, n: GraphNode) -> float:
        """Mean predicted time of ``n`` over the devices with capacity (s)."""
        return sum(self.times[n.name].get(d, 0.0) for d in self.candidates) / max(1, len(self.candidates))

    def resident(self, n: GraphNode, only: set[str] | None = None) -> int:
        """Bytes ``n`` and the resident tensors attached to it hold (those named in ``only``)."""
        members = [n, *self.attached.get(n.name, ())]
        return sum(m.resident_bytes + m.reserved_training_bytes for m in members if only is None or m.name in only)

    def weight(self, n: GraphNode) -> float:
        """Coarsening weight: share of compute time plus share of resident bytes."""
        return self.ref_time(n) / self.total_time + self.resident(n) / self.total_resident

    def parameter_costs(
        self, members: list[GraphNode], counted: set[str]
    ) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, dict[str, int]]]:
        """Per device, for ``members``' trainable parameters: seconds to copy them there from
        where they live, and (training step) their gradients back (``copy_trainable``);
        seconds of the optimizer's update of those in ``counted`` (not those an earlier graph
        placed: it counts their bytes and update), where it runs: on the device, or where a
        parameter the device copies lives; and, for those in ``counted`` that the device
        copies, the bytes that shift from its resident count (device -> bytes): their gradients
        and optimizer state (``reserved_training_bytes``) are held where they live, if that device has
        capacity, and the device holds the copy and its gradient (on their way back), not the
        state."""
        topology, devices = self.topology, self.topology.device_names
        local, origin = self.local_device, self.origin_device
        forward, backward, step = (dict.fromkeys(devices, 0.0) for _ in range(3))
        shifted: dict[str, dict[str, int]] = {}
        for m in members:
            if m.role != "parameter":
                continue
            for d in devices:
                home = home_if_copied(m, d, local, origin) if self.copy_trainable else None
                if home is not None:
                    nbytes = m.tensors[0].nbytes
                    forward[d] += topology.transfer_time_s(home, d, nbytes)
                    if self.graph.has_backward:
                        backward[d] += topology.transfer_time_s(d, home, nbytes)
                    if m.reserved_training_bytes and m.name in counted:
                        held = shifted.setdefault(d, {})
                        held[d] = held.get(d, 0) + nbytes - m.reserved_training_bytes
                        if self.capacity_bytes.get(home, 0) > 0:
                            held[home] = held.get(home, 0) + m.reserved_training_bytes
                if m.name in self.step_times and m.name in counted:
                    step[d] += self.step_times[m.name][home or d]
        return forward, backward, step, shifted

    def compute_task(self, group: list[GraphNode]) -> Task:
        """The task running ``group``, with the resident tensors attached to its nodes."""
        members: list[GraphNode] = []
        for n in group:
            members += self.attached.get(n.name, [])
            members.append(n)
        pinned = self.pinned
        homes = {pinned[m.name] for m in members if m.name in pinned}
        fixed = homes.pop() if len(homes) == 1 else None
        counted = [m for m in members if not (fixed and m.name in pinned and m.role in RESIDENT_ROLES)]
        resident_bytes = sum(m.resident_bytes + m.reserved_training_bytes for m in counted)
        counted_names = {m.name for m in counted}
        cuttable = _units(group, self.weight)
        units = _kept_together(cuttable, self.graph.updated_together, self.graph.index)
        unit_of = {n.name: i for i, unit in enumerate(cuttable) for n in unit}
        kept_whole = next(
            ((first, last) for first, last in self.graph.updated_together
             if first in unit_of and last in unit_of and unit_of[first] != unit_of[last]),
            None,
        )
        copy_forward_s, copy_backward_s, optimizer_s, shifted = self.parameter_costs(members, counted_names)
        devices = self.topology.device_names
        backward_s = {
            d: sum(self.backward_times[n.name][d] for n in group) + copy_backward_s[d] for d in devices
        }
        forward_s = {d: sum(self.times[n.name][d] for n in group) + copy_forward_s[d] for d in devices}
        resident_on = {
            d: {h: b + (resident_bytes if h == d else 0) for h, b in {d: 0, **held}.items()}
            for d, held in shifted.items()
        }
        return Task(
            name=_group_name(group),
            nodes=tuple(m.name for m in members),
            time_s={d: forward_s[d] + backward_s[d] + optimizer_s[d] for d in devices},
            resident_bytes=resident_bytes,
            fixed_device=fixed,
            backward_time_s=backward_s if any(backward_s.values()) else {},
            step_time_s=optimizer_s if any(optimizer_s.values()) else {},
            resident_on=resident_on,
            unit_bytes=tuple(sum(self.resident(n, only=counted_names) for n in unit) for unit in units),
            kept_whole=kept_whole,
        )

    def assemble(self, groups: list[list[GraphNode]]) -> PlacementProblem:
        """The problem whose compute tasks are ``groups`` (runs of pinned nodes cut apart,
        stretches kept together merged), between the tasks of the user inputs (one per device
        holding some) and of the output."""
        graph, topology = self.graph, self.topology
        groups = _kept_together(_pinned_apart(groups, self.pinned), graph.updated_together, graph.index)
        inputs_by_device: dict[str, list[str]] = defaultdict(list)
        for n in graph.nodes:
            if n.op == "placeholder" and n.role == "input" and graph.users[n.name]:
                origin = self.origin_device(n.tensors[0].device if n.tensors else "cpu")
                inputs_by_device[origin].append(n.name)
        tasks = [
            Task(name=f"inputs@{dev}", nodes=tuple(names), time_s={}, fixed_device=dev)
            for dev, names in inputs_by_device.items()
        ]
        tasks += [self.compute_task(group) for group in groups]
        out_devices = [t.device for t in graph.output.tensors]
        if out_devices:
            out_dev = self.origin_device(max(set(out_devices), key=out_devices.count))
        else:
            out_dev = next(iter(inputs_by_device), (self.candidates or topology.device_names)[0])
        tasks.append(
            Task(name=f"output@{out_dev}", nodes=(graph.output.name,), time_s={}, fixed_device=out_dev)
        )

        # Unused resident tensors and unused inputs belong to no task: they are not moved.
        task_of = {name: i for i, task in enumerate(tasks) for name in task.nodes}
        values, shared = _values(graph, task_of)
        tasks, live_ranges = _liveness(tasks, graph, task_of)
        return PlacementProblem(
            tasks=tuple(tasks),
            values=values,
            live_ranges=live_ranges,
            capacity_bytes=dict(self.capacity_bytes),
            topology=topology,
            shared=shared,
            training=graph.training,
        )


def _pinned_apart(groups: list[list[GraphNode]], pinned: Mapping[str, str]) -> list[list[GraphNode]]:
    """``groups`` with each run of compute nodes pinned to one device (an in-place update of a
    user input, a view returned: see ``build_problem``'s ``pinned``) a group of its own, so
    that the work around them stays free to go anywhere. A sticky node (``getitem``) that reads
    the node before it stays with it."""
    out: list[list[GraphNode]] = []
    for group in groups:
        runs: list[list[GraphNode]] = []
        for n in group:
            home = pinned.get(n.name)
            if runs and ((n.sticky and runs[-1][-1].name in n.inputs) or pinned.get(runs[-1][-1].name) == home):
                runs[-1].append(n)
            else:
                runs.append([n])
        out += runs
    return out


def _kept_together(
    groups: list[list[GraphNode]], stretches: Sequence[tuple[str, str]], position: Mapping[str, int]
) -> list[list[GraphNode]]:
    """``groups`` (contiguous, in order) with the groups that hold nodes of one stretch (first
    and last node name, both included) merged."""
    joined = [False] * len(groups)  # joined[i]: groups i and i + 1 are one
    for first, last in stretches:
        lo, hi = position[first], position[last]
        inside = [i for i, g in enumerate(groups) if any(lo <= position[n.name] <= hi for n in g)]
        for i in range(min(inside, default=0), max(inside, default=0)):
            joined[i] = True
    merged: list[list[GraphNode]] = []
    for i, group in enumerate(groups):
        if i and joined[i - 1]:
            merged[-1] = merged[-1] + group
        else:
            merged.append(group)
    return merged


def _units(group: list[GraphNode], weight: Callable[[GraphNode], float]) -> list[list[GraphNode]]:
    """The runs of ``group`` that :func:`_group_runs` never cuts, whatever ``max_groups``: a
    node starts one unless it is sticky (``getitem``), or the run before it has no weight and
    is of the same module."""
    units: list[list[GraphNode]] = []
    for node in group:
        if units and (
            node.sticky
            or (node.module_path == units[-1][0].module_path and not sum(weight(n) for n in units[-1]))
        ):
            units[-1].append(node)
        else:
            units.append([node])
    return units


def _group_name(group: list[GraphNode]) -> str:
    common = group[0].module_path
    for n in group[1:]:
        common = common[: _common_depth(common, n.module_path)]
    label = common[-1] if common else "<root>"
    if len(group) == 1:
        return f"{label} [{group[0].name}]"
    return f"{label} [{group[0].name}..{group[-1].name}]"


def _values(
    graph: AnnotatedGraph, task_of: dict[str, int]
) -> tuple[tuple[Value, ...], tuple[SharedWeight, ...]]:
    """Tensors read across tasks: activations (copied on each call) and weights (copied once)."""
    merged: dict[tuple[int, tuple[int, ...]], list] = {}
    shared: list[SharedWeight] = []
    users = graph.users
    has_backward = graph.has_backward
    for n in graph.nodes:
        if n.name not in task_of or n.output_bytes == 0:
            continue
        producer = task_of[n.name]
        consumers = tuple(sorted({task_of[u] for u in users[n.name] if u in task_of} - {producer}))
        if not consumers:
            continue
        if n.role in RESIDENT_ROLES:
            shared.append(SharedWeight(n.name, producer, consumers, n.output_bytes))
            continue
        entry = merged.setdefault((producer, consumers), [0, 0, [], 0, 0])
        entry[0] += n.output_bytes
        entry[1] += 1
        entry[2].append(n.name)
        if n.requires_grad and has_backward:
            entry[3] += n.output_bytes
            entry[4] += 1
    values = tuple(
        Value(producer=p, consumers=c, nbytes=b, count=k, nodes=tuple(ns), grad_nbytes=gb, grad_count=gk)
        for (p, c), (b, k, ns, gb, gk) in merged.items()
    )
    return values, tuple(shared)


def _liveness(
    tasks: list[Task], graph: AnnotatedGraph, task_of: dict[str, int]
) -> tuple[list[Task], tuple[LiveRange, ...]]:
    """Split storages into those inside one task (its peak) and those crossing tasks."""
    step_task = [task_of.get(n.name, -1) for n in graph.nodes]
    local = [defaultdict(int) for _ in tasks]  # task -> fine step -> live bytes
    ranges = []
    for s in graph.storages:
        if s.kind != "activation":
            continue
        first_task = task_of.get(s.producer, -1)
        last_task = step_task[s.last]
        if first_task < 0 or last_task < 0:
            continue
        if last_task == first_task:
            for step in range(s.first, s.last + 1):
                local[first_task][step] += s.nbytes
        else:
            ranges.append(LiveRange(first_task, max(first_task, last_task), s.nbytes))
    tasks = [
        dataclasses.replace(t, peak_bytes=max(local[i].values(), default=0)) for i, t in enumerate(tasks)
    ]
    return tasks, tuple(ranges)
