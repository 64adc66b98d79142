"""Runtime: the callable handed back to Dynamo for one planned graph.

It moves parameters and buffers to their planned devices once and reuses the copies while the
originals are unchanged (same storage, same version counter), runs the partitions (host ones on
a worker thread, micro-batches in fill-drain order: :mod:`autopart.pipeline`), and records what
each call cost.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.fx
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from .config import AutopartWarning
from .kernels.transfer import (
    pin_in_place,
    plain_transfer,
    plain_transfer_coalesced,
    plain_transfer_compressed,
    start_transfer,
    transfer,
    transfer_coalesced,
    transfer_compressed,
    wait_transfer,
)
from .pipeline import HOST, BatchSpec, PartitionSchedule, outputs_match
from .plan import Plan

log = logging.getLogger(__name__)


@dataclass
class RuntimeMetrics:
    """Counters of one compiled graph. Times in seconds, sizes in bytes."""

    num_calls: int = 0
    num_static_copies: int = 0
    """Parameter/buffer copies made to reach their planned device (first call, or after the
    original changed); 0 per call at steady state."""
    static_copy_bytes: int = 0
    num_write_backs: int = 0
    """Buffers the graph mutated on another device, copied back into the original."""
    total_call_s: float = 0.0
    last_call_s: float = 0.0
    num_microbatches: int = 1
    """Micro-batches the last call was split into."""
    num_host_steps: int = 0
    """Partition runs on the host worker thread, over all calls."""
    last_schedule: list[tuple[int, str, str]] = field(default_factory=list)
    """(micro-batch, partition, lane) of the last call, in the order issued."""
    num_monitored_calls: int = 0
    """Calls whose partitions were timed (with ``monitor``: every call after the first)."""
    monitored_call_s: float = 0.0
    """Wall-clock seconds of those calls, together (on a GPU: until the call returns, which
    may be before its kernels finish)."""


@dataclass
class _Copy:
    original: weakref.ref
    version: int
    data_ptr: int
    moved: torch.Tensor
    moved_version: int


class StaticCopyCache:
    """Device copies of parameters and buffers, shared by every graph of one backend, so that
    graphs of one model (graph breaks, recompiles) never hold two copies of a tensor on one
    device. Keyed by (original tensor, device); an entry goes when its original does (a model
    deleted frees its copies).

    An inference tensor (a weight made under ``torch.inference_mode()``) has no version counter
    and counts as unchanged while its storage is: an in-place update made to it under inference
    mode is not seen (replace it, or its ``.data``, instead). Copies are made outside inference
    mode, so they track versions and in-place updates of them are still written back."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, torch.device], _Copy] = {}

    def get(self, original: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, bool]:
        """The copy of ``original`` on ``device``, and whether it had to be made now.

        A copy is reused while the original is the same tensor with the same storage and
        version counter (which fused optimizer steps bump too: :func:`_fused_steps_count`).
        """
        key = (id(original), device)
        entry = self.entries.get(key)
        if (
            entry is not None
            and entry.original() is original
            and entry.version == _version(original)
            and entry.data_ptr == original.data_ptr()
        ):
            return entry.moved, False
        global _FUSED_HOOK
        if _FUSED_HOOK is None:
            _FUSED_HOOK = register_optimizer_step_post_hook(_fused_steps_count)
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, with a version counter
            moved = original.to(device)
        _COPIED[original] = None
        if entry is None or entry.original() is not original:
            weakref.finalize(original, self.entries.pop, key, None)
        self.entries[key] = _Copy(weakref.ref(original), _version(original), original.data_ptr(), moved,
                                  moved._version)
        return moved, True

    def write_back(self, keys: list[tuple[int, torch.device]]) -> int:
        """Copy the given entries' mutated copies back into their originals; returns how many."""
        count = 0
        for key in keys:
            entry = self.entries.get(key)
            original = entry.original() if entry is not None else None
            if original is not None and entry.moved._version != entry.moved_version:
                with torch.no_grad():
                    original.copy_(entry.moved)
                entry.version = _version(original)
                entry.moved_version = entry.moved._version
                count += 1
        return count


_FUSED_HOOK: Any = None
"""The handle of :func:`_fused_steps_count`, registered with the first copy."""

_COPIED = WeakIdKeyDictionary()
"""Tensors :class:`StaticCopyCache` copied (-> None), held weakly."""


def _fused_steps_count(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Step post-hook of every optimizer: a fused update (``fused=True``) changes parameters
    without bumping their version counters, as torch.optim's other updates do; bump those of
    the parameters :class:`StaticCopyCache` copied (``_COPIED``), so that it copies them again.
    Others are left as they are."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            for param in group["params"]:
                if param.grad is not None and param in _COPIED:
                    torch.autograd.graph.increment_version(param)


def _version(tensor: torch.Tensor) -> int:
    """``tensor._version``; 0 for an inference tensor, which has no version counter (and cannot
    be updated in place outside inference mode)."""
    return 0 if tensor.is_inference() else tensor._version


_MOVED = WeakIdKeyDictionary()
"""Parameters :func:`move_parameter` moved (each at most once) -> their ``data_ptr()`` after it."""


def moved_storage(param: torch.Tensor) -> int | None:
    """``param.data_ptr()`` as :func:`move_parameter` left it (None: never moved), so that a
    record of ``param`` made before the move can tell the move from a user's ``param.data =``."""
    return _MOVED.get(param)


_STATE_HOOK: Any = None
"""The handle of :func:`_state_follows_parameters`, registered with the first move."""


def movable(param: torch.Tensor, device: torch.device) -> bool:
    """Whether ``param.data`` can be set to a tensor on ``device`` (dense CPU and GPU tensors
    can; ``meta`` or sparse ones cannot, and are copied instead)."""
    return torch._has_compatible_shallow_copy_type(param, torch.empty((), device=device))


def move_parameter(param: torch.Tensor, device: torch.device) -> None:
    """Move leaf ``param`` (and its ``.grad``) to ``device`` in place, keeping the object that
    optimizers and the module hold; optimizer state made for it elsewhere follows before the
    next ``optimizer.step()`` (:func:`_state_follows_parameters`)."""
    global _STATE_HOOK
    with torch.no_grad():
        param.data = param.data.to(device)
        if param.grad is not None:
            param.grad = param.grad.to(device)
    _MOVED[param] = param.data_ptr()
    if _STATE_HOOK is None:
        _STATE_HOOK = register_optimizer_step_pre_hook(_state_follows_parameters)


def _state_follows_parameters(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Step pre-hook of every optimizer: state tensors shaped as a parameter autopart moved
    (Adam's moments, SGD's momentum) go to the parameter's device. Scalars such as Adam's
    ``step`` stay where the optimizer keeps them (on the CPU unless ``capturable``)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param not in _MOVED:
                continue
            state = optimizer.state.get(param)
            for key, value in (state or {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.device != param.device:
                    state[key] = value.to(param.device)


class StaticInputMover:
    """Puts the parameters and buffers (placeholders Dynamo lifted) of one graph on their
    planned devices, through a :class:`StaticCopyCache`.

    An in-place update of the original (an optimizer step) or ``param.data = ...`` makes a fresh
    copy. When autograd needs the parameter's gradient, the copy is made under autograd on every
    call, so gradients reach the original; with ``move_trainable`` such a leaf is instead moved
    to its target device once, where it can be (:func:`movable`, :func:`move_parameter`).
    Buffers the graph mutates in place on their device copy (e.g. batch-norm running
    statistics) are copied back into the original after the call.
    """

    def __init__(
        self,
        targets: dict[int, torch.device],
        metrics: RuntimeMetrics,
        cache: StaticCopyCache | None = None,
        move_trainable: bool = False,
    ) -> None:
        self.targets = targets
        self.metrics = metrics
        self.cache = cache if cache is not None else StaticCopyCache()
        self.move_trainable = move_trainable
        self._used: list[tuple[int, torch.device]] = []

    def move(self, args: list[Any]) -> None:
        """Replace, in place, each static input in ``args`` by its copy on its target device."""
        self._used = []
        for i, device in self.targets.items():
            original = args[i]
            if not isinstance(original, torch.Tensor) or original.device == device:
                continue
            if original.requires_grad and torch.is_grad_enabled():
                if self.move_trainable and original.is_leaf and original not in _MOVED and movable(original, device):
                    move_parameter(original, device)
                    for key in [k for k in self.cache.entries if k[0] == id(original)]:
                        del self.cache.entries[key]  # copies of it made for inference
                else:
                    args[i] = original.to(device)
                self._count(original)
                continue
            args[i], made = self.cache.get(original, device)
            self._used.append((id(original), device))
            if made:
                self._count(original)

    def write_back(self) -> None:
        """Copy buffers mutated on their device copy back into the originals."""
        self.metrics.num_write_backs += self.cache.write_back(self._used)

    def _count(self, tensor: torch.Tensor) -> None:
        self.metrics.num_static_copies += 1
        self.metrics.static_copy_bytes += tensor.numel() * tensor.element_size()


class PartitionTimer:
    """Times each partition of a split graph, forward and backward, while ``enabled``.

    Forward: pre- and post-hooks take the wall clock on a CPU partition, and record CUDA events
    on the current stream of a GPU partition's device, read once they are complete
    (:meth:`seconds`). A partition run several times in a call (micro-batches) adds up. The
    time an :class:`InductorPartition` spends compiling (for a new input signature, inside a
    timed call) is left out.

    Backward, when a call records autograd history: the forward post-hook walks the autograd
    graph the partition just built, from its outputs' ``grad_fn`` back to its inputs' (leaves'
    ``AccumulateGrad``, which only stores a gradient, is left out), and hooks each node, so the
    partition's backward time is the sum of its nodes' times, taken as its forward's are. Gaps
    between them, where autograd runs other partitions' nodes, are not counted. The hooks live
    on that call's autograd nodes and die with them; a call whose backward never runs adds
    nothing.

    Args:
        module: the split graph (``submod_<i>`` partitions).
        devices: partition name -> the local device it runs on.
    """

    def __init__(self, module: torch.fx.GraphModule, devices: dict[str, torch.device]) -> None:
        self.enabled = False
        self.call_compile_s = 0.0
        """Seconds Inductor spent compiling partitions in the current call (left out)."""
        self._total_s: dict[str, float] = dict.fromkeys(devices, 0.0)
        self._backward_s: dict[str, float] = dict.fromkeys(devices, 0.0)
        self._open: dict[str, Any] = {}
        self._boundary: dict[str, set[int]] = {}
        self._pending: list[tuple[dict[str, float], str, Any, Any]] = []
        self._call = 0
        self._claimed: set[int] = set()
        self._spans: dict[int, list[float]] = {}
        """Timed call -> host clock at its backward's first node start and last node end."""
        self._fold_floor = 1
        self._span_total_s = 0.0
        self._num_backwards = 0
        for name, device in devices.items():
            part = module.get_submodule(name)
            part.register_forward_pre_hook(functools.partial(self._start, name, device))
            part.register_forward_hook(functools.partial(self._stop, name, device))

    def begin_call(self) -> None:
        """Mark the start of a timed call (before its partitions run)."""
        self._call += 1
        self.call_compile_s = 0.0
        self._claimed.clear()
        for call in [c for c in self._spans if c < self._call - 1]:  # their backward has run
            self._fold(call)

    def _fold(self, call: int) -> None:
        first, last = self._spans.pop(call)
        self._span_total_s += last - first
        self._num_backwards += 1
        self._fold_floor = max(self._fold_floor, call + 1)  # a late node of it adds no span

    def _clock(self, device: torch.device) -> Any:
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(device))
            return event
        return time.perf_counter()

    def _add(self, totals: dict[str, float], name: str, device: torch.device, start: Any, less_s: float = 0.0) -> None:
        if device.type == "cuda":
            self._pending.append((totals, name, start, self._clock(device), less_s))
            if len(self._pending) > 1024:  # bound what waits to be read
                self._read()
        else:
            totals[name] += time.perf_counter() - start - less_s

    def _start(self, name: str, device: torch.device, _module: Any, args: tuple[Any, ...]) -> None:
        if not self.enabled:
            return
        self._open[name] = self._clock(device)
        if torch.is_grad_enabled():
            self._boundary[name] = {
                id(t.grad_fn) for t in tree_leaves(args) if isinstance(t, torch.Tensor) and t.grad_fn is not None
            }

    def _stop(self, name: str, device: torch.device, module: Any, _args: Any, output: Any) -> None:
        compile_s = module.take_compile_s() if isinstance(module, InductorPartition) else 0.0  # untimed too
        start = self._open.pop(name, None)
        if start is None:
            return
        self.call_compile_s += compile_s
        self._add(self._total_s, name, device, start, compile_s)
        boundary = self._boundary.pop(name, None)
        if boundary is not None:
            for node in self._backward_nodes(output, boundary):
                self._hook(node, name, device)

    def _backward_nodes(self, output: Any, boundary: set[int]) -> list[Any]:
        """The autograd nodes ``output`` was built by since the inputs (ids in ``boundary``),
        less those another partition of this call claimed."""
        stack = [t.grad_fn for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        nodes = []
        while stack:
            node = stack.pop()
            if node is None or id(node) in boundary or id(node) in self._claimed:
                continue
            if isinstance(node, torch._C._functions.AccumulateGrad):  # a leaf's: lives as long as it
                continue
            self._claimed.add(id(node))
            nodes.append(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
        return nodes

    def _hook(self, node: Any, name: str, device: torch.device) -> None:
        call, opened = self._call, []

        def pre(_grad_outputs: Any) -> None:
            opened.append(self._clock(device))
            if call >= self._fold_floor:
                now = time.perf_counter()
                self._spans.setdefault(call, [now, now])

        def post(_grad_inputs: Any, _grad_outputs: Any) -> None:
            if opened:
                self._add(self._backward_s, name, device, opened.pop())
            span = self._spans.get(call)
            if span is not None:
                span[1] = time.perf_counter()

        node.register_prehook(pre)
        node.register_hook(post)

    def _read(self) -> None:
        for totals, name, start, end, less_s in self._pending:
            end.synchronize()
            totals[name] += start.elapsed_time(end) / 1e3 - less_s
        self._pending.clear()

    def seconds(self) -> dict[str, float]:
        """Partition name -> forward seconds measured over all timed calls (waits for pending
        events)."""
        self._read()
        return dict(self._total_s)

    def backward_seconds(self) -> tuple[dict[str, float], int, float]:
        """``(per_partition, num_backwards, span_s)``: partition name -> backward seconds over
        all timed calls; how many timed calls' backward ran; and the wall-clock seconds of those
        backwards together, from their first node's start to their last node's end (on a GPU:
        as the host saw them, which may be before their kernels finish)."""
        self._read()
        for call in list(self._spans):
            self._fold(call)
        return dict(self._backward_s), self._num_backwards, self._span_total_s


class MeasuredBackward(NamedTuple):
    """What :meth:`PlacedGraph.measured_backward_s` measured. Times in seconds."""

    busy_s: dict[str, float]
    """Topology device -> its partitions' backward per backward pass."""
    span_s: float
    """One backward pass of the graph, first autograd node to last, wall clock."""
    passes: int
    """Backward passes timed."""


@dataclass
class PlacedGraph:
    """Runs one planned graph: ``module`` (the partitions) with static inputs moved, host
    partitions on a worker thread and, when asked, the batch split into micro-batches (see
    :mod:`autopart.pipeline`)."""

    module: torch.fx.GraphModule
    plan: Plan
    static_moves: dict[int, torch.device]
    cache: StaticCopyCache = field(default_factory=StaticCopyCache)
    metrics: RuntimeMetrics = field(default_factory=RuntimeMetrics)
    replica_sources: list[int] = field(default_factory=list)
    """Inputs passed again, as extra arguments, for the weight copies the rewrite added."""
    host_partitions: set[str] = field(default_factory=set)
    """Partitions of host (CPU) devices, run on the worker thread."""
    num_microbatches: int = 1
    batch: BatchSpec | str = "not requested"
    """How to split the batch, or why it cannot be split."""
    warn_if_unsplit: bool = False
    """Warn (once) when ``num_microbatches`` > 1 cannot be honoured: the user asked for it."""
    pinned_inputs: list[int] = field(default_factory=list)
    """Inputs (weights streamed to a GPU) whose host memory is page-locked on the first call."""
    partition_devices: dict[str, str] = field(default_factory=dict)
    """Partition name -> the topology device it was planned for."""
    monitor: bool = False
    """Time the partitions of every call after the first (:class:`PartitionTimer`)."""
    move_trainable: bool = False
    """Move trainable parameters to their planned device once, rather than copy them on every
    step (``Config.trainable_parameters="move"``; :class:`StaticInputMover`)."""

    flat: torch.fx.GraphModule | InductorPartition | None = None
    """The unpartitioned graph (an :class:`InductorPartition` of it when Inductor is the inner
    compiler): what a plan on one device with nothing to move runs directly."""

    def __post_init__(self) -> None:
        self._direct: Callable[..., Any] | None = None
        self._mover = StaticInputMover(self.static_moves, self.metrics, self.cache, self.move_trainable)
        self.schedule = PartitionSchedule(self.module, self.host_partitions)
        self._split_checked = False
        if self.num_microbatches > 1 and isinstance(self.batch, str):
            self._no_split(self.batch)
        self.timer: PartitionTimer | None = None
        if self.monitor:
            local = {d: torch.device(self.plan.device_map.get(d, d)) for d in self.partition_devices.values()}
            self.timer = PartitionTimer(self.module, {p: local[d] for p, d in self.partition_devices.items()})

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        if self.timer is not None:
            self.timer.enabled = self.metrics.num_calls > 0  # the first call copies weights, warms up
            if self.timer.enabled:
                self.timer.begin_call()
        if self._direct is not None:
            out = self._direct(*args)
        else:
            out = self._call(args)
        elapsed = time.perf_counter() - start
        if self.timer is not None and self.timer.enabled:
            self.metrics.num_monitored_calls += 1
            self.metrics.monitored_call_s += elapsed - self.timer.call_compile_s
        self.metrics.num_calls += 1
        self.metrics.last_call_s = elapsed
        self.metrics.total_call_s += elapsed
        return out

    def measured_busy_s(self) -> dict[str, float]:
        """Per topology device: the measured seconds of its partitions per timed call (with
        ``monitor``; {} before the first timed call). Compare with ``plan.predicted_busy_s``."""
        calls = self.metrics.num_monitored_calls
        if self.timer is None or not calls:
            return {}
        return self._per_device(self.timer.seconds(), calls)

    def measured_backward_s(self) -> MeasuredBackward:
        """The backward passes of the timed calls (with ``monitor``; empty before one ran): per
        topology device, the measured seconds of its partitions' backward per backward pass,
        and the wall-clock seconds of one backward pass of this graph, from its first autograd
        node to its last (see :class:`PartitionTimer`). Compare with
        ``plan.predicted_backward_busy_s`` and ``plan.predicted_time_s -
        plan.predicted_forward_s``."""
        if self.timer is None:
            return MeasuredBackward({}, 0.0, 0)
        seconds, count, span_s = self.timer.backward_seconds()
        if not count:
            return MeasuredBackward({}, 0.0, 0)
        return MeasuredBackward(self._per_device(seconds, count), span_s / count, count)

    def _per_device(self, per_partition: dict[str, float], count: int) -> dict[str, float]:
        busy: dict[str, float] = {}
        for part, seconds in per_partition.items():
            device = self.partition_devices[part]
            busy[device] = busy.get(device, 0.0) + seconds / count
        return busy

    def _call(self, args: tuple[Any, ...]) -> Any:
        args_list = [*args, *(args[i] for i in self.replica_sources)]
        if self.pinned_inputs:
            for i in self.pinned_inputs:
                pin_in_place(args_list[i])
            self.pinned_inputs = []
        if self.metrics.num_calls == 0 and self._runs_as_captured(args):  # decided once
            return self._first_direct(args)
        self._mover.move(args_list)
        out = self._run(args_list)
        self._mover.write_back()
        return out

    def _first_direct(self, args: tuple[Any, ...]) -> Any:
        """Run the graph as captured from now on: ``.forward`` (no nn.Module call machinery, as
        Dynamo calls a graph), then Inductor's compiled function itself once there is one."""
        graph = self.flat if self.flat is not None else self.module
        self._direct = graph.forward
        out = self._direct(*args)
        if isinstance(graph, InductorPartition) and graph._only is not None:
            self._direct = graph._only
        return out

    def _runs_as_captured(self, args: tuple[Any, ...]) -> bool:
        """Whether every call can go straight to one partition: one device, nothing to move
        (every parameter and buffer already on its device; Dynamo guards keep it so), no
        micro-batches, no weight copies, no worker thread."""
        return (
            sum(1 for step in self.schedule.steps if step.node.op == "call_module") == 1
            and self.timer is None
            and self.num_microbatches == 1
            and not self.replica_sources
            and not self.schedule.concurrent
            and all(
                not isinstance(args[i], torch.Tensor) or args[i].device == device
                for i, device in self.static_moves.items()
            )
        )

    def _run(self, args: list[Any]) -> Any:
        if self.num_microbatches > 1 and not self._split_checked:
            return self._first_split(args)
        trace: list[tuple[int, str, str]] = []
        microbatches = self.batch.split(args, self.num_microbatches) if self.num_microbatches > 1 else [args]
        outs = self.schedule.run(microbatches, trace)
        self._record(trace, len(outs))
        return self.batch.merge(outs) if len(outs) > 1 else outs[0]

    def _first_split(self, args: list[Any]) -> Any:
        """Run the whole batch, then the micro-batches without autograd: keep splitting only if
        both give the same outputs (a graph can mix samples in ways its shapes do not show).
        A batch whose samples are all alike (a warm-up batch of ones, or one sample) cannot
        show it: the check waits for a call with samples that differ."""
        assert isinstance(self.batch, BatchSpec)
        trace: list[tuple[int, str, str]] = []
        out = self.schedule.run([args], trace)[0]
        self._record(trace, 1)
        if all(_samples_alike(args[i]) for i in self.batch.tensor_inputs):
            return out
        with torch.no_grad():
            split_out = self.batch.merge(self.schedule.run(self.batch.split(args, self.num_microbatches)))
        self._split_checked = True
        if not outputs_match(out, split_out):
            self._no_split("its outputs differ when the batch is split (samples interact, e.g. a "
                           "reduction over the batch)")
        return out

    def _no_split(self, reason: str) -> None:
        if self.warn_if_unsplit:
            warnings.warn(
                f"autopart runs {self.plan.graph_name} on whole batches, not "
                f"num_microbatches={self.num_microbatches}: {reason}",
                AutopartWarning,
                stacklevel=3,
            )
        else:
            log.info("%s: no micro-batches: %s", self.plan.graph_name, reason)
        self.batch = reason
        self.num_microbatches = 1

    def _record(self, trace: list[tuple[int, str, str]], num_microbatches: int) -> None:
        self.metrics.last_schedule = trace
        self.metrics.num_microbatches = num_microbatches
        self.metrics.num_host_steps += sum(1 for _, _, lane in trace if lane == HOST)


def _samples_alike(batch: torch.Tensor) -> bool:
    """Whether every sample (index of dim 0) of ``batch`` equals the first."""
    return batch.shape[0] < 2 or torch.equal(batch, batch[:1].expand_as(batch))


class InductorPartition(torch.nn.Module):
    """A partition compiled by TorchInductor (``torch._inductor.compile_fx``) on its first call
    with each new input signature (shapes, strides, dtypes, devices, whether grad is needed).

    Copies between devices are compiled as plain ``Tensor.to`` (Inductor schedules them itself;
    the copy streams of :mod:`autopart.kernels.transfer` serve eager partitions). If Inductor
    fails on a partition, it warns once and runs the partition eagerly.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        name: str,
        *,
        static: bool = False,
        dynamo: DynamoMetadata | None = None,
    ) -> None:
        super().__init__()
        self.gm = _plain_copies(gm)
        self.name = name
        self.static = static
        """Inputs never change signature (a graph with static shapes, whose grad mode Dynamo
        guards): after the first compile, calls skip the signature check."""
        self.dynamo = dynamo
        """Metadata of the graph Dynamo captured: tells Inductor which inputs are parameters."""
        self.compiled: dict[tuple, Callable[..., Any]] = {}
        self.failed: str | None = None
        self._only: Callable[..., Any] | None = None
        self.compile_s = 0.0
        """Seconds spent compiling since :meth:`take_compile_s` last took them."""

    def take_compile_s(self) -> float:
        """The seconds spent compiling since the last call of this (``monitor`` leaves them out
        of the partition's time: a new input signature compiles inside a timed call)."""
        seconds, self.compile_s = self.compile_s, 0.0
        return seconds

    def forward(self, *args: Any) -> Any:
        if self._only is not None:
            return self._only(*args)
        if self.failed is not None:
            return self.gm(*args)
        key = (torch.is_grad_enabled(), *(_signature(a) for a in args))
        fn = self.compiled.get(key)
        if fn is None:
            start = time.perf_counter()
            try:
                from torch._inductor.compile_fx import compile_fx  # noqa: PLC0415 (heavy import)

                fresh = torch.fx.GraphModule(self.gm, copy.deepcopy(self.gm.graph))  # compile_fx edits it
                if self.dynamo is not None:
                    self.dynamo.apply(fresh)
                fn = self.compiled[key] = compile_fx(fresh, list(args))
                self.compile_s += time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - any Inductor failure: run the partition eagerly
                self.failed = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"autopart: Inductor could not compile partition {self.name} "
                    f"({self.failed}); it runs eagerly",
                    AutopartWarning,
                    stacklevel=2,
                )
                return self.gm(*args)
            if self.static:
                self._only = fn
        return fn(*args)


class DynamoMetadata(NamedTuple):
    """What Dynamo records on a graph it captured (``meta``, ``_param_name_to_source``, each
    placeholder's ``_dynamo_source``), for its partitions to carry to Inductor as Dynamo's
    DDPOptimizer does (``propagate_metadata`` and ``propagate_dynamo_source`` in
    ``torch/_dynamo/backends/distributed.py``). AOTAutograd then knows which inputs are
    parameters and buffers (``_dynamo_static_input_type``), and Inductor checks their alignment
    once when compiling instead of on every call (on a GPU, about a microsecond per input per
    call; GPT-2 has ~150)."""

    meta: dict[str, Any]
    param_name_to_source: dict[str, Any]
    sources: dict[str, Any]
    """Placeholder name -> Dynamo source."""

    @staticmethod
    def of(captured: torch.fx.GraphModule) -> DynamoMetadata | None:
        """The metadata of ``captured``, or None for a graph Dynamo did not capture."""
        if "dynamo_compile_id" not in captured.meta or not hasattr(captured, "_param_name_to_source"):
            return None
        sources = {n.name: getattr(n, "_dynamo_source", None) for n in captured.graph.find_nodes(op="placeholder")}
        return DynamoMetadata(dict(captured.meta), captured._param_name_to_source, sources)

    def apply(self, part: torch.fx.GraphModule) -> None:
        """Give partition ``part`` this metadata; skipped if it holds parameters or buffers as
        attributes (AOTAutograd would look their names up in ``_param_name_to_source``)."""
        if next(part.parameters(), None) is not None or next(part.buffers(), None) is not None:
            return
        part.meta.update(self.meta)
        part._param_name_to_source = self.param_name_to_source
        for node in part.graph.find_nodes(op="placeholder"):
            node._dynamo_source = self.sources.get(node.name)


def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad)
    return (type(value), value) if isinstance(value, (int, float, bool, str, type(None))) else type(value)


def _plain_copies(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of ``gm`` whose transfer calls are plain ``Tensor.to`` copies Inductor can trace."""
    gm = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    plain = {transfer: plain_transfer, start_transfer: plain_transfer, wait_transfer: _identity,
             transfer_coalesced: plain_transfer_coalesced, transfer_compressed: plain_transfer_compressed}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in plain:
            node.target = plain[node.target]
    gm.recompile()
    return gm


def _identity(value: Any) -> Any:
    return value


def use_inductor(module: torch.fx.GraphModule, *, static: bool, dynamo: DynamoMetadata | None = None) -> None:
    """Replace each ``submod_<i>`` partition of a split graph by an :class:`InductorPartition`
    (``static``: the graph's input shapes are fixed; ``dynamo``: the metadata of the graph Dynamo
    captured, which the partitions carry to Inductor)."""
    for name, sub in list(module.named_children()):
        if isinstance(sub, torch.fx.GraphModule):
            setattr(module, name, InductorPartition(sub, name, static=static, dynamo=dynamo))
