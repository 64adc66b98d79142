"""The typed record each FX node carries under ``node.meta["autopart"]``.

Every pass fills its own fields of one :class:`NodeRecord` and reads upstream fields; nothing
else is written on nodes. ``record(node)`` returns the node's record, creating it if needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch.fx

META_KEY = "autopart"

NodeRole = Literal["input", "parameter", "buffer", "constant", "compute", "output"]

RESIDENT_ROLES: tuple[NodeRole, ...] = ("parameter", "buffer", "constant")
"""Roles of the tensors a graph holds all call long (weights), not computed by it."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor a node produces: shape (elements per dim), dtype, origin device, bytes."""

    shape: tuple[int, ...]
    dtype: str
    device: str
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class NodeRecord:
    """What autopart knows about one FX node. Fields are filled by the pass that owns them."""

    # propagate_shapes_pass
    role: NodeRole = "compute"
    tensors: tuple[TensorInfo, ...] = ()
    """Tensors in the node's output (flattened pytree), in order; empty for non-tensor values."""
    fqn: str | None = None
    """Parameter/buffer name in the user's model (``"transformer.wte.weight"``), when known."""

    # memory_pass
    resident_bytes: int = 0
    """Bytes held for the whole call: parameters, buffers, constants (0 for activations)."""
    alloc_bytes: int = 0
    """Bytes of new storage this node allocates (views allocate none)."""

    # training_memory_pass
    saved_bytes: int = 0
    """Bytes of activations autograd saves for backward at this node (new storages only)."""
    training_bytes: int = 0
    """Bytes a training step adds to the node's device: ``saved_bytes`` for a compute node; the
    gradient and optimizer state of a parameter that requires grad."""
    requires_grad: bool = False
    """The node's value needs a gradient in backward (a gradient crosses its cut edges back)."""
    backward_ops: tuple = ()
    """The aten ops of the node's backward pass, as :class:`OpCost` (empty for inference)."""
    step_ops: tuple = ()
    """The aten ops of the optimizer's update of a trainable parameter, as :class:`OpCost`
    (empty for other nodes, for inference, and for ``optimizer="none"``)."""
    step_temporary_bytes: int = 0
    """Bytes of temporaries that update allocates anew in each step."""

    # cost_pass
    ops: tuple = ()
    """The aten ops the node runs, as :class:`autopart.costmodel.ops.OpCost` (topology-free)."""
    flops: int = 0
    bytes_accessed: int = 0
    """Bytes read plus bytes written by the node's kernels (views move none)."""
    num_kernels: int = 0
    """aten ops that launch work (views and metadata ops excluded)."""
    cost_rule: str = ""
    """How the cost was derived: ``"aten"`` (decomposed and counted), ``"free"`` (no work),
    or ``"unknown: <reason>"`` (default estimate used)."""
    time_s: dict[str, float] = field(default_factory=dict)
    """Predicted run time on each topology device, seconds."""

    @property
    def output_bytes(self) -> int:
        """Bytes of all tensors this node outputs (views count their own elements)."""
        return sum(t.nbytes for t in self.tensors)


def record(node: torch.fx.Node) -> NodeRecord:
    """The node's :class:`NodeRecord`, created empty on first access."""
    rec = node.meta.get(META_KEY)
    if rec is None:
        rec = node.meta[META_KEY] = NodeRecord()
    return rec
