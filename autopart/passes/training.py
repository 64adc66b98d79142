"""Training: what autograd saves for backward, gradients, optimizer state, and the backward
pass's own work.

Each compute node is re-run on fake tensors with gradients enabled for the inputs that need
one (:func:`needs_grad_flags`), under ``torch.autograd.graph.saved_tensors_hooks``, so the
tensors autograd really saves for the backward pass are seen (inputs of a matmul, the output
of a softmax, the mean and rstd of a layer norm, ...) rather than guessed per op. Saved
tensors are counted once per storage; parameters, buffers and user inputs are not counted
(they are held anyway).

The node's backward is then run on those fake tensors too (``torch.autograd.grad`` of its
outputs), and the aten ops autograd dispatches are costed by the same rules as the forward
(:mod:`autopart.costmodel.ops`): a linear layer's backward is two matrix products when its
input needs a gradient and one when it does not (the first layer, a frozen trunk's head), a
softmax's is its own backward kernel, a view's costs nothing. A value read by ``k`` nodes
that pass gradients back adds ``k - 1`` gradient additions (for a weight or an input, such as
a tied embedding, to its first reader's backward). A node that cannot be re-run is
costed at twice its forward ops, the usual rule of thumb (backward ~ 2x forward FLOPs:
J. Kaplan et al., "Scaling Laws for Neural Language Models", 2020, section 2.1). Not
counted: accumulating into ``.grad`` that already holds a gradient.

The optimizer step is recorded the same way, per trainable parameter
(:func:`optimizer_step`): torch.optim's own update, run on ``meta`` tensors shaped as the
parameter. Adam reads and writes the parameter's bytes 19 times over (its moments, the
denominator, the update), which on a CPU takes a quarter to a third as long as GPT-2's
forward and backward (bench/backward.py).

    training bytes = parameters + gradients + optimizer state + saved activations
                     + the forward pass's own activation peak

Optimizer state per parameter byte (torch.optim's state tensors, same dtype as the parameter):
``"adam"``/``"adamw"``: 2 (``exp_avg``, ``exp_avg_sq``); ``"sgd_momentum"``: 1
(``momentum_buffer``); ``"sgd"``: 0. ``"none"``: no gradients and no state, only the saved
activations (a forward pass with gradients enabled and no training step, such as inference
not under ``torch.no_grad()``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.fx
from torch.utils._pytree import tree_leaves, tree_map

from .._compat import concrete_int
from ..costmodel.ops import CostRecorder, OpCost, aten_op_cost, tensor_bytes
from .cost import is_inplace
from .memory import MemoryReport, storage_key, storage_nbytes
from .records import record
from .shapes import hinted, in_fake_mode, node_value, requires_grad, rerun_mode

log = logging.getLogger(__name__)

Optimizer = Literal["adam", "adamw", "sgd", "sgd_momentum", "none"]
OPTIMIZER_STATE_PER_PARAM_BYTE: dict[str, int] = {"adam": 2, "adamw": 2, "sgd_momentum": 1, "sgd": 0, "none": 0}


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one training step holds at its peak, by kind."""

    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    saved_activation_bytes: int
    forward_peak_bytes: int
    unknown: tuple[str, ...]
    """Nodes that could not be re-run with gradients (counted as saving their inputs), or whose
    backward could not (costed as twice their forward ops)."""

    optimizer_temporary_bytes: int = 0
    """Temporaries of the optimizer's update (``step_temporary_bytes``), all at once as
    torch.optim's ``foreach`` update makes them."""

    @property
    def total_bytes(self) -> int:
        return (
            self.parameter_bytes
            + self.gradient_bytes
            + self.optimizer_state_bytes
            + self.saved_activation_bytes
            + self.forward_peak_bytes
            + self.optimizer_temporary_bytes
        )


def _rerun_with_grad(
    node: torch.fx.Node, fake_mode, needs_grad: dict[str, bool], *, backward: bool
) -> tuple[list[tuple[Any, int]], list[OpCost] | None]:
    """Re-run ``node`` on fake tensors with gradients enabled: the (storage key, bytes) of each
    tensor autograd saves for backward and, with ``backward``, the aten ops of its backward pass
    (``torch.autograd.grad`` of its outputs, seeded with ones, with respect to the inputs that
    need a gradient), recorded by a :class:`~autopart.costmodel.ops.CostRecorder`; None for
    a backward that fails on fake tensors.

    Inputs that need a gradient (``needs_grad``) are re-run as gradient-requiring leaves (cloned
    first for an in-place node, which may not update a leaf); a saved alias (or output) is
    reported under the storage of the input node's (or this node's) own value, so that a tensor
    saved by two nodes counts once and weights and user inputs can be told apart.
    """
    saved: list[torch.Tensor] = []
    origin: dict[Any, Any] = {}  # alias storage -> the input node's storage
    leaves: list[torch.Tensor] = []
    inplace = is_inplace(node)

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    def grad_alias(arg: Any) -> Any:
        value = hinted(node_value(arg) if isinstance(arg, torch.fx.Node) else arg)
        if not isinstance(value, torch.Tensor):
            return value
        alias = in_fake_mode(value, fake_mode)
        if isinstance(arg, torch.fx.Node) and needs_grad.get(arg.name) and alias.is_floating_point():
            leaf = alias.detach().requires_grad_(True)
            leaves.append(leaf)
            with fake_mode:
                alias = leaf.clone() if inplace else leaf
        origin[storage_key(alias)] = storage_key(value)
        return alias

    args, kwargs = tree_map(grad_alias, (node.args, node.kwargs))
    with fake_mode, torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if node.op == "call_function":
            result = node.target(*args, **kwargs)
        elif node.op == "call_method":
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            raise RuntimeError("modules kept whole are not re-run for saved tensors")
    # A saved output is the node's own value, which later readers save again: one storage.
    for new, own in zip(_tensors(result), _tensors(node_value(node))):
        origin[storage_key(new)] = storage_key(own)
    storages = [(origin.get(storage_key(t), storage_key(t)), storage_nbytes(t)) for t in saved]

    ops: list[OpCost] | None = []
    outputs = [t for t in _tensors(result) if t.requires_grad]
    if backward and outputs and leaves:
        recorder = CostRecorder()
        try:
            with fake_mode:
                seeds = [torch.ones_like(t) for t in outputs]
            with fake_mode, recorder:
                torch.autograd.grad(outputs, leaves, seeds, allow_unused=True)
            ops = [op for op in recorder.ops if op.launches or op.flops or op.bytes_accessed]
        except Exception as exc:  # noqa: BLE001 - the caller costs a default backward
            log.debug("backward of %s not re-run: %s", node.name, exc)
            ops = None
    return storages, ops


def needs_grad_flags(gm: torch.fx.GraphModule) -> dict[str, bool]:
    """Node name -> whether its value needs a gradient in backward: Dynamo's ``example_value``
    says so where there is one; otherwise a trainable parameter (:func:`trainable`) does, a
    user input, buffer or constant does not, and a compute node does when it outputs a
    floating-point tensor and an input of it (or, for a module kept whole, a parameter of the
    module) does."""
    flags: dict[str, bool] = {}
    for node in gm.graph.nodes:
        known = requires_grad(node)
        role = record(node).role
        if known is not None:
            flags[node.name] = known
        elif role == "parameter":
            flags[node.name] = trainable(node)
        elif role != "compute" or node.op not in ("call_function", "call_method", "call_module"):
            flags[node.name] = False
        else:
            own = node.op == "call_module" and any(
                p.requires_grad for p in gm.get_submodule(node.target).parameters()
            )
            flags[node.name] = (own or any(flags.get(a.name, False) for a in node.all_input_nodes)) and any(
                t.is_floating_point() for t in _tensors(node_value(node))
            )
    return flags


def _gradient_sums(node: torch.fx.Node, needs_grad: dict[str, bool]) -> list[OpCost]:
    """The additions autograd makes to sum the gradients of a value read by several nodes
    that pass a gradient back: one elementwise add per reader after the first."""
    readers = sum(1 for u in node.users if needs_grad.get(u.name))
    floats = [t for t in record(node).tensors if t.dtype.startswith(("float", "bfloat"))]
    if readers < 2 or not floats:
        return []
    nbytes = sum(t.nbytes for t in floats)
    return [OpCost(sum(t.numel for t in floats), 2 * nbytes, nbytes, 1, floats[0].dtype)] * (readers - 1)


def training_memory_pass(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any] = (),
    *,
    memory: MemoryReport,
    optimizer: Optimizer = "adam",
) -> TrainingMemory:
    """Training memory and backward work of ``gm``'s forward graph (after
    ``propagate_shapes_pass``, ``memory_pass``, whose report is ``memory``, and ``cost_pass``).
    Writes ``requires_grad``, ``saved_bytes``, ``training_bytes``, ``backward_ops`` (none for
    ``optimizer="none"``, which runs no backward), ``step_ops`` and ``step_temporary_bytes``
    (trainable parameters' updates) into node records. Gradients and optimizer
    state count parameters that require grad (:func:`trainable`) only.

    Raises:
        ValueError: an unknown optimizer name.
    """
    del example_inputs
    if optimizer not in OPTIMIZER_STATE_PER_PARAM_BYTE:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of {list(OPTIMIZER_STATE_PER_PARAM_BYTE)}"
        )
    nodes = list(gm.graph.nodes)
    fake_mode = rerun_mode(gm)
    needs_grad = needs_grad_flags(gm)
    backward = optimizer != "none"
    held = {  # storages held whatever autograd saves: weights and user inputs
        storage_key(t)
        for n in nodes
        if record(n).role in ("parameter", "buffer", "constant", "input")
        for t in _tensors(node_value(n))
    }
    position = {n: i for i, n in enumerate(nodes)}
    first_reader = {
        n: min(n.users, key=position.__getitem__) for n in nodes if n.op in ("placeholder", "get_attr") and n.users
    }
    counted: set[Any] = set()
    saved_total = 0
    unknown: list[str] = []
    for node in nodes:
        rec = record(node)
        rec.saved_bytes = 0
        rec.requires_grad = needs_grad.get(node.name, False)
        rec.backward_ops = ()
        if node.op not in ("call_function", "call_method", "call_module") or not rec.tensors:
            continue
        try:
            if fake_mode is None:
                raise RuntimeError("graph has no fake tensors")
            storages, backward_ops = _rerun_with_grad(node, fake_mode, needs_grad, backward=backward)
        except Exception as exc:  # noqa: BLE001 - count the node's inputs instead
            log.debug("saved tensors of %s unknown: %s", node.name, exc)
            unknown.append(node.name)
            storages = [
                (storage_key(t), storage_nbytes(t))
                for a in node.all_input_nodes
                for t in _tensors(node_value(a))
            ]
            backward_ops = None
        if backward_ops is None:  # costed by the rule of thumb
            if node.name not in unknown[-1:]:
                unknown.append(node.name)
            backward_ops = list(rec.ops) * 2 if rec.requires_grad else []
        if backward:
            # the sums of a weight's or input's gradients run where its first reader runs
            sums = [op for a in node.all_input_nodes if first_reader.get(a) is node
                    for op in _gradient_sums(a, needs_grad)]
            rec.backward_ops = (*backward_ops, *_gradient_sums(node, needs_grad), *sums)
        for key, nbytes in storages:
            if key in held or key in counted:
                continue
            counted.add(key)
            rec.saved_bytes += nbytes
            saved_total += nbytes

    state_per_byte = OPTIMIZER_STATE_PER_PARAM_BYTE[optimizer]
    trained_bytes = 0  # parameters that get a gradient
    temporary_bytes = 0
    for node in nodes:
        rec = record(node)
        if rec.role != "parameter":
            rec.training_bytes, rec.step_ops, rec.step_temporary_bytes = rec.saved_bytes, (), 0
            continue
        trained = trainable(node) and optimizer != "none"
        nbytes = tensor_bytes(node_value(node)) if trained else 0  # views of one flat storage: their own
        trained_bytes += nbytes
        rec.training_bytes = (1 + state_per_byte) * nbytes
        steps = [
            optimizer_step(optimizer, tuple(concrete_int(d) for d in t.shape), t.dtype)
            for t in (_tensors(node_value(node)) if trained else ())
        ]
        rec.step_ops = tuple(step.update for step in steps)
        rec.step_temporary_bytes = sum(step.temporary_bytes for step in steps)
        temporary_bytes += rec.step_temporary_bytes
    return TrainingMemory(
        parameter_bytes=memory.resident_bytes,
        gradient_bytes=trained_bytes,
        optimizer_state_bytes=state_per_byte * trained_bytes,
        saved_activation_bytes=saved_total,
        forward_peak_bytes=memory.peak_activation_bytes,
        unknown=tuple(unknown),
        optimizer_temporary_bytes=temporary_bytes,
    )


_OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam([p], foreach=False),
    "adamw": lambda p: torch.optim.AdamW([p], foreach=False),
    "sgd": lambda p: torch.optim.SGD([p], lr=0.1, foreach=False),
    "sgd_momentum": lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, foreach=False),
}


OPTIMIZER_CLASS = {"adam": "optimizer:adam", "adamw": "optimizer:adam", "sgd": "optimizer:sgd",
                   "sgd_momentum": "optimizer:sgd"}
"""The op class (:mod:`autopart.costmodel.calibration`) of each optimizer's per-parameter update."""


class OptimizerStep(NamedTuple):
    """One parameter's update by an optimizer (:func:`optimizer_step`)."""

    ops: tuple[OpCost, ...]
    """The aten ops, as :class:`OpCost`."""
    temporary_bytes: int
    """Bytes of the temporaries it allocates (outputs of ops not in place, e.g. Adam's square
    root of ``exp_avg_sq`` and its quotient), freed within the step and allocated anew in the
    next one."""
    kind: str = ""
    """Its op class (:data:`OPTIMIZER_CLASS`)."""

    @property
    def update(self) -> OpCost:
        """The update as one op of its class (FLOPs and bytes of its ops, one launch), so that a
        calibrated per-update overhead covers its ops' dispatch and torch.optim's own Python."""
        if not self.ops:
            return OpCost(0, 0, 0, 0, "float32", self.kind)
        return OpCost(
            sum(op.flops for op in self.ops),
            sum(op.bytes_read for op in self.ops),
            sum(op.bytes_written for op in self.ops),
            1,
            self.ops[0].dtype,
            self.kind,
        )


@functools.lru_cache(maxsize=256)
def optimizer_step(optimizer: Optimizer, shape: tuple[int, ...], dtype: torch.dtype) -> OptimizerStep:
    """One steady-state step of ``optimizer`` (torch.optim's default settings) on a parameter of
    ``shape`` and ``dtype``: the update torch.optim's single-tensor implementation runs (its
    default on CPUs; on GPUs its ``foreach`` implementation makes the same passes over memory in
    fewer launches), recorded on ``meta`` tensors after a first step that makes the state. Only
    ops whose output is shaped as the parameter are kept: the step counter's scalar arithmetic
    is host bookkeeping, and torch.optim does more of it while Dynamo compiles
    (``torch.compiler.is_compiling()``), where this may run. No ops for ``"none"``.

    Raises:
        ValueError: an unknown optimizer name.
    """
    if optimizer == "none":
        return OptimizerStep((), 0)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of {list(OPTIMIZER_STATE_PER_PARAM_BYTE)}"
        )
    param = torch.nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"))
    param.grad = torch.empty_like(param)
    step = _OPTIMIZERS[optimizer](param)
    step.step()
    recorder = _ShapedLikeRecorder(param)
    with recorder:
        step.step()
    return OptimizerStep(tuple(recorder.ops), recorder.allocated_bytes, OPTIMIZER_CLASS[optimizer])


class _ShapedLikeRecorder(CostRecorder):
    """A :class:`CostRecorder` of the ops whose output has the device and shape of ``like``;
    ``allocated_bytes`` adds up the outputs of those not in place."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.like = like
        self.allocated_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shaped = [
            t for t in tree_leaves(out)
            if isinstance(t, torch.Tensor) and t.device == self.like.device and t.shape == self.like.shape
        ]
        if shaped:
            self.ops.append(aten_op_cost(func, args, kwargs or {}, out))
            if not func.overloadpacket.__name__.endswith("_") and "out" not in (kwargs or {}):
                self.allocated_bytes += sum(t.numel() * t.element_size() for t in shaped)
        return out


def trainable(node: torch.fx.Node) -> bool:
    """Whether a parameter node gets a gradient: its Dynamo ``example_value`` requires grad
    (FakeTensorProp's ``val`` never does); without one (graphs not captured by Dynamo), whether
    it is floating point."""
    known = requires_grad(node)
    if known is not None:
        return known
    return any(t.is_floating_point() for t in _tensors(node_value(node)))


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]
