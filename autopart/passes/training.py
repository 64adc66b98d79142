"""Training memory: what autograd saves for backward, gradients, and optimizer state.

Each compute node is re-run on fake tensors with gradients enabled, under
``torch.autograd.graph.saved_tensors_hooks``, so the tensors autograd really saves for the
backward pass are seen (inputs of a matmul, the output of a softmax, the mean and rstd of a
layer norm, ...) rather than guessed per op. Saved tensors are counted once per storage;
parameters, buffers and user inputs are not counted (they are held anyway).

    training bytes = parameters + gradients + optimizer state + saved activations
                     + the forward pass's own activation peak

Optimizer state per parameter byte (torch.optim's state tensors, same dtype as the parameter):
``"adam"``/``"adamw"``: 2 (``exp_avg``, ``exp_avg_sq``); ``"sgd_momentum"``: 1
(``momentum_buffer``); ``"sgd"``: 0. ``"none"``: no gradients and no state, only the saved
activations (a forward pass with gradients enabled and no training step, such as inference
not under ``torch.no_grad()``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx
from torch.utils._pytree import tree_leaves, tree_map

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
    """Nodes whose saved tensors could not be measured (counted as saving their inputs)."""

    @property
    def total_bytes(self) -> int:
        return (
            self.parameter_bytes
            + self.gradient_bytes
            + self.optimizer_state_bytes
            + self.saved_activation_bytes
            + self.forward_peak_bytes
        )


def _saved_storages(node: torch.fx.Node, fake_mode) -> list[tuple[Any, int]]:
    """(storage key, bytes) of each tensor autograd saves when the node runs with gradients.

    Inputs are re-run through gradient-requiring aliases; a saved alias (or output) is reported
    under the storage of the input node's (or this node's) own value, so that a tensor saved by
    two nodes counts once and weights and user inputs can be told apart.
    """
    saved: list[torch.Tensor] = []
    origin: dict[Any, Any] = {}  # alias storage -> the input node's storage

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    def grad_alias(arg: Any) -> Any:
        value = hinted(node_value(arg) if isinstance(arg, torch.fx.Node) else arg)
        if not isinstance(value, torch.Tensor):
            return value
        alias = in_fake_mode(value, fake_mode)
        if value.is_floating_point():
            alias = alias.detach().requires_grad_(True)
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
    out = []
    for t in saved:
        key = storage_key(t)
        out.append((origin.get(key, key), storage_nbytes(t)))
    return out


def training_memory_pass(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any] = (),
    *,
    memory: MemoryReport,
    optimizer: Optimizer = "adam",
) -> TrainingMemory:
    """Training memory of ``gm``'s forward graph (after ``propagate_shapes_pass`` and
    ``memory_pass``, whose report is ``memory``). Writes ``saved_bytes`` and ``training_bytes``
    into node records. Gradients and optimizer state count parameters that require grad
    (:func:`trainable`) only.

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
    held = {  # storages held whatever autograd saves: weights and user inputs
        storage_key(t)
        for n in nodes
        if record(n).role in ("parameter", "buffer", "constant", "input")
        for t in _tensors(node_value(n))
    }
    counted: set[Any] = set()
    saved_total = 0
    unknown: list[str] = []
    for node in nodes:
        rec = record(node)
        rec.saved_bytes = 0
        if node.op not in ("call_function", "call_method", "call_module") or not rec.tensors:
            continue
        try:
            if fake_mode is None:
                raise RuntimeError("graph has no fake tensors")
            storages = _saved_storages(node, fake_mode)
        except Exception as exc:  # noqa: BLE001 - count the node's inputs instead
            log.debug("saved tensors of %s unknown: %s", node.name, exc)
            unknown.append(node.name)
            storages = [
                (storage_key(t), storage_nbytes(t))
                for a in node.all_input_nodes
                for t in _tensors(node_value(a))
            ]
        for key, nbytes in storages:
            if key in held or key in counted:
                continue
            counted.add(key)
            rec.saved_bytes += nbytes
            saved_total += nbytes

    state_per_byte = OPTIMIZER_STATE_PER_PARAM_BYTE[optimizer]
    trained_bytes = 0  # parameters that get a gradient
    for node in nodes:
        rec = record(node)
        if rec.role != "parameter":
            rec.training_bytes = rec.saved_bytes
            continue
        trained = trainable(node) and optimizer != "none"
        nbytes = sum(storage_nbytes(t) for t in _tensors(node_value(node))) if trained else 0
        trained_bytes += nbytes
        rec.training_bytes = (1 + state_per_byte) * nbytes
    return TrainingMemory(
        parameter_bytes=memory.resident_bytes,
        gradient_bytes=trained_bytes,
        optimizer_state_bytes=state_per_byte * trained_bytes,
        saved_activation_bytes=saved_total,
        forward_peak_bytes=memory.peak_activation_bytes,
        unknown=tuple(unknown),
    )


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
