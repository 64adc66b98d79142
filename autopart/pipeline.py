"""Running partitions: host work on a worker thread, micro-batches in a fill-drain schedule.

A rewritten graph is a top-level FX graph that calls ``submod_<i>`` partitions, each on one
device. :class:`PartitionSchedule` runs it in two *lanes*:

* the **main lane** (the calling thread) launches the partitions of accelerators; their kernels
  are asynchronous, so the thread moves on at once;
* the **host lane** (one worker thread) runs the partitions of host (CPU) devices, which block
  the thread that runs them. Launching accelerator work first and running host work on its own
  thread lets the two overlap, as in a heterogeneous plan's independent branches or pipelined
  micro-batches.

A plan whose partitions all sit in one lane runs the top-level graph directly (no thread).

Micro-batches (``num_microbatches`` > 1) split the batched inputs along dim 0 and run each
chunk through the partitions in the fill-drain order of GPipe (Huang et al., 2019, "GPipe:
Efficient Training of Giant Neural Networks using Pipeline Parallelism", section 2.2): at
step ``t`` stage ``s`` works on micro-batch ``t - s``, so stage ``s`` of micro-batch ``m``
overlaps stage ``s + 1`` of micro-batch ``m - 1``. Outputs are concatenated along dim 0.

Splitting a batch is only valid when the graph treats samples independently and its batch
size is symbolic (the graph was captured with ``dynamic=True``, after a recompile for a new
batch size, or with ``torch._dynamo.mark_dynamic(x, 0)``): a graph captured for one batch size
bakes that size into its ``view`` calls. :func:`batch_spec` checks what it can see in the
graph; the runtime checks the rest on the first call whose samples differ, by comparing the
micro-batched outputs with the whole-batch ones.

Modes a graph switches inside (``with torch.no_grad():`` in a forward, autocast regions) are
thread-local. ``split_module`` sets grad mode and autocast again at the start of each partition
inside such a region, so each partition runs alike on either thread. A partition before any
such region runs under the caller's modes, and after a call the caller's thread is left in the
grad mode the graph ends in, as a run in one thread would. ``torch.inference_mode()`` regions,
which ``split_module`` does not carry over, keep the whole graph in the calling thread and in one
batch.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.utils._pytree import tree_flatten, tree_unflatten

from .passes.cost import mutates_in_place
from .passes.records import record
from .passes.shapes import node_value

log = logging.getLogger(__name__)

MAIN, HOST = "main", "host"


# --------------------------------------------------------------------------- micro-batches


@dataclass(frozen=True)
class BatchSpec:
    """Which graph inputs and outputs carry the batch on dim 0.

    ``tensor_inputs``: indices of placeholders split along dim 0. ``size_inputs``: indices of
    ``SymInt`` placeholders equal to the batch size (given each micro-batch's size).
    ``outputs``: for each leaf of the flattened graph output, whether it is concatenated along
    dim 0 (else it must not depend on the batch and micro-batch 0's value is returned).
    """

    tensor_inputs: tuple[int, ...]
    size_inputs: tuple[int, ...]
    outputs: tuple[bool, ...]

    def split(self, args: Sequence[Any], num_microbatches: int) -> list[list[Any]]:
        """Argument lists of each micro-batch (at most the batch size of them)."""
        batch = args[self.tensor_inputs[0]].shape[0]
        chunks = {i: torch.tensor_split(args[i], min(num_microbatches, batch)) for i in self.tensor_inputs}
        result = []
        for m in range(len(chunks[self.tensor_inputs[0]])):
            mb = list(args)
            for i, parts in chunks.items():
                mb[i] = parts[m]
            for i in self.size_inputs:
                mb[i] = chunks[self.tensor_inputs[0]][m].shape[0]
            result.append(mb)
        return result

    def merge(self, outputs: list[Any]) -> Any:
        """One output from the micro-batches' outputs (concatenated leaves along dim 0)."""
        flat = [tree_flatten(out) for out in outputs]
        leaves, spec = flat[0]
        merged = [
            torch.cat([f[0][k] for f in flat]) if batched else leaf
            for k, (leaf, batched) in enumerate(zip(leaves, self.outputs))
        ]
        return tree_unflatten(merged, spec)


def batch_spec(gm: torch.fx.GraphModule) -> BatchSpec | str:
    """The batch layout of a Dynamo graph, or the reason it cannot be split into micro-batches.

    ``gm`` must carry the records of ``propagate_shapes_pass`` (which inputs are parameters).

    The batch size is dim 0 of the first tensor input (not a parameter or buffer) whose dim 0 is
    symbolic, which must be a symbol of the graph's shape environment. Refused: a static batch
    size, an input or output whose shape mixes the batch symbol into a dimension other than a
    leading ``batch`` exactly, a node that makes a tensor without the batch symbol from one with
    it (a reduction over the batch: samples interact), in-place updates (of parameters and
    buffers, e.g. batch norm statistics, a step counter), random ops. Samples that interact
    with shapes intact (``softmax(x, dim=0)``) are left to the runtime, which compares split
    and whole outputs on the first call whose samples differ.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = [
        (i, node, node_value(node)) for i, node in enumerate(placeholders)
        if record(node).role not in ("parameter", "buffer")
    ]
    tensors = [(node, v) for _, node, v in inputs if isinstance(v, torch.Tensor)]
    if not tensors:
        return "the graph has no tensor input to split"
    first = next(((node, v) for node, v in tensors if v.dim() and isinstance(v.shape[0], torch.SymInt)), None)
    if first is None:
        return (
            "the batch size is static in this graph; compile with dynamic=True or call "
            "torch._dynamo.mark_dynamic(x, 0) on the batched input to allow micro-batches"
        )
    symbol = first[1].shape[0].node.expr
    if not symbol.is_Symbol:
        return f"dim 0 of input {first[0].name} is {symbol}, not a plain batch symbol"
    tensor_inputs, size_inputs = [], []
    for i, node, value in inputs:
        if isinstance(value, torch.SymInt):
            size_inputs.append((i, value))
            continue
        if not isinstance(value, torch.Tensor):
            continue
        if _leading_is(value, symbol):
            tensor_inputs.append(i)
        elif value.dim() and isinstance(value.shape[0], torch.SymInt) and value.shape[0].node.expr == symbol:
            return (
                f"input {node.name} has shape {tuple(value.shape)}: its batch size equals another "
                "of its sizes, and Dynamo gives equal sizes one symbol (duck sizing), so a split "
                "cannot tell them apart; call torch._dynamo.mark_dynamic(x, 0) on the batched "
                "input before compiling (its batch size then gets a symbol of its own), or set "
                "torch.fx.experimental._config.use_duck_shape = False"
            )
        elif _mentions(value, symbol):
            return f"input {node.name} has shape {tuple(value.shape)}, with the batch not on dim 0"
    sizes = []
    for i, value in size_inputs:
        if value.node.expr == symbol:
            sizes.append(i)
        elif symbol in value.node.expr.free_symbols:
            return f"input {placeholders[i].name} = {value.node.expr} depends on the batch size"
    output = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = []
    for leaf in tree_flatten(output.args[0])[0]:
        value = node_value(leaf) if isinstance(leaf, torch.fx.Node) else leaf
        if isinstance(value, torch.Tensor) and _leading_is(value, symbol):
            outputs.append(True)
        elif _mentions(value, symbol):
            return f"output {leaf} ({_describe(value)}) depends on the batch but is not batched on dim 0"
        else:
            outputs.append(False)
    for node in gm.graph.nodes:
        if node.op == "call_function" and is_random(node):
            return f"node {node.name} ({node.target}) draws random numbers"
        if switches_inference_mode(node):
            return (f"node {node.name} enters or leaves inference mode inside the graph: "
                    "micro-batches would interleave its regions")
        if node.op in ("call_function", "call_method") and _reduces_the_batch(node, symbol):
            return (f"node {node.name} ({getattr(node.target, '__name__', node.target)}) makes a "
                    "tensor without the batch dimension from one with it: samples interact")
    if mutates_in_place(gm):
        return "the graph updates tensors in place (e.g. batch-norm statistics)"
    return BatchSpec(tuple(tensor_inputs), tuple(sizes), tuple(outputs))


def _reduces_the_batch(node: torch.fx.Node, symbol) -> bool:
    """Whether ``node`` reads a tensor whose shape has the batch symbol and makes tensors whose
    shapes do not (``h.mean(0)``, ``x.sum()``, ``h.T @ h``). ``x.new_zeros(n)`` and the other
    ``new_*`` methods read only ``x``'s dtype and device."""
    if node.op == "call_method" and str(node.target).startswith("new_"):
        return False
    outputs = [v for v in tree_flatten(node_value(node))[0] if isinstance(v, torch.Tensor)]
    if not outputs or any(_mentions(v, symbol) for v in outputs):
        return False
    return any(_mentions(node_value(a), symbol) for a in node.all_input_nodes)


def _leading_is(value: torch.Tensor, symbol) -> bool:
    if value.dim() == 0 or not isinstance(value.shape[0], torch.SymInt):
        return False
    if value.shape[0].node.expr != symbol:
        return False
    return not any(_mentions(d, symbol) for d in value.shape[1:])


def _mentions(value: Any, symbol) -> bool:
    if isinstance(value, torch.SymInt):
        return symbol in value.node.expr.free_symbols
    if isinstance(value, torch.Tensor):
        return any(_mentions(d, symbol) for d in value.shape)
    return False


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)


_RANDOM_TARGETS = {
    torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
    torch.bernoulli, torch.multinomial, torch.normal,
}
_DROPOUTS = {
    torch.nn.functional.dropout, torch.nn.functional.dropout1d, torch.nn.functional.dropout2d,
    torch.nn.functional.dropout3d, torch.nn.functional.alpha_dropout,
    torch.nn.functional.feature_alpha_dropout,
}


def switches_inference_mode(node: torch.fx.Node) -> bool:
    """Whether ``node`` enters or leaves a ``torch.inference_mode()`` region of its graph."""
    return node.op == "call_function" and node.target in (
        torch.autograd.grad_mode._enter_inference_mode,
        torch.autograd.grad_mode._exit_inference_mode,
    )


def is_random(node: torch.fx.Node) -> bool:
    """Whether ``node`` draws random numbers (dropout in training, ``torch.rand*``, seeded ops)."""
    if node.target in _DROPOUTS:  # (input, p=0.5, training=..., inplace=False)
        training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
        return bool(training) and node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5) > 0
    if node.target in _RANDOM_TARGETS:
        return True
    overload = node.target if isinstance(node.target, torch._ops.OpOverload) else None
    return overload is not None and torch.Tag.nondeterministic_seeded in overload.tags


def outputs_match(a: Any, b: Any) -> bool:
    """Whether two outputs of one graph agree leaf by leaf (tensors within a tolerance that
    allows a different summation order: rtol 1e-3, atol 1e-3 times the largest magnitude; ten
    times that for 16-bit floats)."""
    la, lb = tree_flatten(a)[0], tree_flatten(b)[0]
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if not x.is_floating_point():
                if not torch.equal(x, y):
                    return False
                continue
            tol = 1e-2 if x.element_size() < 4 else 1e-3
            scale = float(x.detach().abs().max()) if x.numel() else 0.0
            if not torch.allclose(x.detach(), y.detach(), rtol=tol, atol=tol * max(1.0, scale)):
                return False
        elif x != y:
            return False
    return True


def auto_microbatches(num_stages: int, batch_size: int) -> int:
    """Micro-batches for a throughput plan: 4 per pipeline stage, GPipe's advice for a bubble
    under about 20% (Huang et al., 2019, section 3), capped by the batch size."""
    return max(1, min(batch_size, 4 * num_stages))


# --------------------------------------------------------------------------- schedule


@dataclass
class _Step:
    node: torch.fx.Node
    fn: Callable[..., Any]
    lane: str
    stage: int
    partition: str


class PartitionSchedule:
    """Runs a split graph (``submod_<i>`` partitions) with host partitions on a worker thread
    and micro-batches in fill-drain order; see the module docstring.

    Args:
        split: the top-level graph from ``torch.fx.passes.split_module``.
        host_partitions: names of partitions to run on the host lane.
    """

    def __init__(self, split: torch.fx.GraphModule, host_partitions: set[str]) -> None:
        self.split = split
        # an InductorPartition keeps its graph as .gm
        partitions = [getattr(m, "gm", m) for name, m in split.named_children() if name.startswith("submod_")]
        inner = [n for m in partitions if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes]
        if any(switches_inference_mode(n) for n in inner):
            host_partitions = set()  # its region may span partitions: one thread, in order
        grad_settings = [
            n.args[0] for n in inner if n.op == "call_function" and n.target is torch._C._set_grad_enabled
        ]
        self.final_grad: bool | None = grad_settings[-1] if grad_settings else None
        """The grad mode the graph leaves its thread in (None: the caller's)."""
        self.placeholders = [n for n in split.graph.nodes if n.op == "placeholder"]
        self.output = next(n for n in split.graph.nodes if n.op == "output")
        self.steps: list[_Step] = []
        self.constants: dict[torch.fx.Node, Any] = {}
        step_of: dict[torch.fx.Node, _Step] = {}
        stage = -1
        for node in split.graph.nodes:
            if node.op == "get_attr":
                self.constants[node] = functools.reduce(getattr, str(node.target).split("."), split)
                continue
            if node.op == "call_module":
                stage += 1
                lane = HOST if node.target in host_partitions else MAIN
                step = _Step(node, split.get_submodule(str(node.target)), lane, stage, str(node.target))
            elif node.op == "call_function":  # getitem of a partition's outputs
                producer = next((step_of[a] for a in node.all_input_nodes if a in step_of), None)
                lane = producer.lane if producer else MAIN
                step = _Step(node, node.target, lane, producer.stage if producer else 0,
                             producer.partition if producer else "")
            else:
                continue
            step_of[node] = step
            self.steps.append(step)
        self._lane = {s.node: s.lane for s in self.steps}
        self.lanes = {s.lane for s in self.steps if s.node.op == "call_module"}
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def concurrent(self) -> bool:
        """Whether partitions run in two lanes (host partitions on a worker thread)."""
        return len(self.lanes) > 1

    def run(self, microbatches: list[list[Any]], trace: list[tuple[int, str, str]] | None = None) -> list[Any]:
        """Run every micro-batch's argument list through the partitions; returns each output.

        ``trace`` (if given) receives ``(micro-batch, partition, lane)`` in the order issued.
        """
        if len(microbatches) == 1 and not self.concurrent:
            if trace is not None:
                trace.extend((0, s.partition, s.lane) for s in self.steps if s.node.op == "call_module")
            return [self.split(*microbatches[0])]
        env: dict[tuple[int, torch.fx.Node], Any] = {}
        for m, args in enumerate(microbatches):
            for node, value in zip(self.placeholders, args):
                env[(m, node)] = value
            for node, value in self.constants.items():
                env[(m, node)] = value
        order = sorted(
            ((m, i) for m in range(len(microbatches)) for i in range(len(self.steps))),
            key=lambda mi: (mi[0] + self.steps[mi[1]].stage, self.steps[mi[1]].stage, mi[1]),
        )
        host = deque(mi for mi in order if self.steps[mi[1]].lane == HOST)
        done: set[tuple[int, torch.fx.Node]] = set()
        futures: list[concurrent.futures.Future] = []
        modes = ThreadModes.capture()

        def ready(m: int, step: _Step) -> bool:
            return all(
                (m, n) in done or n.op in ("placeholder", "get_attr") or self._lane.get(n) == HOST
                for n in step.node.all_input_nodes
            )

        def submit_ready_host_steps() -> None:
            while host and ready(host[0][0], self.steps[host[0][1]]):
                m, i = host.popleft()
                step = self.steps[i]
                args, kwargs = self._inputs(env, m, step, resolve=False)
                if trace is not None and step.node.op == "call_module":
                    trace.append((m, step.partition, HOST))
                future = self._pool().submit(_run_host, step.fn, args, kwargs, modes)
                env[(m, step.node)] = future
                futures.append(future)

        try:
            for m, i in order:
                step = self.steps[i]
                if step.lane == HOST:
                    continue
                submit_ready_host_steps()
                args, kwargs = self._inputs(env, m, step, resolve=True)
                if trace is not None and step.node.op == "call_module":
                    trace.append((m, step.partition, MAIN))
                with modes():
                    env[(m, step.node)] = step.fn(*args, **kwargs)
                done.add((m, step.node))
            submit_ready_host_steps()
            assert not host, "host steps left unscheduled"
            outputs = [
                _resolve(torch.fx.node.map_arg(self.output.args[0], lambda n, m=m: env[(m, n)]))
                for m in range(len(microbatches))
            ]
        finally:
            concurrent.futures.wait(futures)
        if self.final_grad is not None:
            torch._C._set_grad_enabled(self.final_grad)
        return outputs

    @staticmethod
    def _inputs(env, m: int, step: _Step, *, resolve: bool) -> tuple[tuple, dict]:
        args = torch.fx.node.map_arg(step.node.args, lambda n: env[(m, n)])
        kwargs = torch.fx.node.map_arg(step.node.kwargs, lambda n: env[(m, n)])
        return (_resolve(args), _resolve(kwargs)) if resolve else (args, kwargs)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="autopart-host")
            weakref.finalize(self, self._worker.shutdown, wait=False)  # no idle thread left behind
        return self._worker

    def close(self) -> None:
        """Stop the worker thread (a later run starts a new one)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None


def _resolve(value: Any) -> Any:
    """``value`` with every pending host result (a Future) replaced by the result."""
    if isinstance(value, concurrent.futures.Future):
        return value.result()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_resolve(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_resolve(v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ThreadModes:
    """The calling thread's modes at the start of a call, which every partition starts from, on
    either thread (each is thread-local): grad mode, inference mode, autocast, and the
    saved-tensor hooks in force (``torch.autograd.graph.saved_tensors_hooks``, e.g.
    ``save_on_cpu``)."""

    grad: bool
    inference: bool
    autocast: tuple[tuple[str, torch.dtype], ...]
    """(device type, dtype) of each device type whose autocast is on."""
    autocast_cache: bool
    saved_tensors_hooks: tuple[Callable, Callable] | None = None
    """(pack, unpack) of the innermost saved-tensor hooks, or None."""

    @staticmethod
    def capture() -> ThreadModes:
        return ThreadModes(
            grad=torch.is_grad_enabled(),
            inference=torch.is_inference_mode_enabled(),
            autocast=tuple(
                (d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)
            ),
            autocast_cache=torch.is_autocast_cache_enabled(),
            saved_tensors_hooks=_top_saved_tensors_hooks(),
        )

    def __call__(self) -> contextlib.ExitStack:
        """A context that enters these modes, and leaves the thread as it found it."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(self.inference))
        stack.enter_context(torch.set_grad_enabled(self.grad))
        for device_type, dtype in self.autocast:
            stack.enter_context(torch.autocast(device_type, dtype=dtype, cache_enabled=self.autocast_cache))
        if self.saved_tensors_hooks is not None:
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(*self.saved_tensors_hooks))
        return stack


def _top_saved_tensors_hooks() -> tuple[Callable, Callable] | None:
    """The innermost saved-tensor hooks of this thread (None where torch cannot tell)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)  # private API
    return top(True) if top is not None else None


def _run_host(fn: Callable, args: Any, kwargs: Any, modes: ThreadModes) -> Any:
    with modes():
        return fn(*_resolve(args), **_resolve(kwargs))
