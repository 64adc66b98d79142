"""Runtime: the callable handed back to Dynamo for one planned graph.

It moves parameters and buffers to their planned devices once and reuses the copies while the
originals are unchanged (same storage, same version counter), runs the partitions in order,
and records what each call cost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

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


@dataclass
class _Copy:
    original: torch.Tensor
    version: int
    data_ptr: int
    moved: torch.Tensor
    moved_version: int


class StaticInputMover:
    """Keeps device copies of parameters and buffers (placeholders Dynamo lifted).

    A copy is reused while the original is the same tensor with the same storage and version
    counter; an in-place update (an optimizer step) or ``param.data = ...`` makes a fresh copy.
    When autograd needs the parameter's gradient, the copy is made under autograd on every call,
    so gradients reach the original. Buffers the graph mutates in place on their device copy
    (e.g. batch-norm running statistics) are copied back into the original after the call.
    """

    def __init__(self, targets: dict[int, torch.device], metrics: RuntimeMetrics) -> None:
        self.targets = targets
        self.metrics = metrics
        self._copies: dict[int, _Copy] = {}

    def move(self, args: list[Any]) -> None:
        """Replace, in place, each static input in ``args`` by its copy on its target device."""
        for i, device in self.targets.items():
            original = args[i]
            if not isinstance(original, torch.Tensor) or original.device == device:
                continue
            if original.requires_grad and torch.is_grad_enabled():
                args[i] = original.to(device)
                self._count(original)
                continue
            entry = self._copies.get(i)
            if (
                entry is None
                or entry.original is not original
                or entry.version != original._version
                or entry.data_ptr != original.data_ptr()
            ):
                with torch.no_grad():
                    moved = original.to(device)
                entry = _Copy(original, original._version, original.data_ptr(), moved, moved._version)
                self._copies[i] = entry
                self._count(original)
            args[i] = entry.moved

    def write_back(self) -> None:
        """Copy buffers mutated on their device copy back into the originals."""
        for entry in self._copies.values():
            if entry.moved._version != entry.moved_version:
                with torch.no_grad():
                    entry.original.copy_(entry.moved)
                entry.version = entry.original._version
                entry.moved_version = entry.moved._version
                self.metrics.num_write_backs += 1

    def _count(self, tensor: torch.Tensor) -> None:
        self.metrics.num_static_copies += 1
        self.metrics.static_copy_bytes += tensor.numel() * tensor.element_size()


@dataclass
class PlacedGraph:
    """Runs one planned graph: ``module`` (partitions in order) with static inputs moved."""

    module: torch.fx.GraphModule
    plan: Plan
    static_moves: dict[int, torch.device]
    metrics: RuntimeMetrics = field(default_factory=RuntimeMetrics)

    def __post_init__(self) -> None:
        self._mover = StaticInputMover(self.static_moves, self.metrics)

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        args_list = list(args)
        self._mover.move(args_list)
        out = self.module(*args_list)
        self._mover.write_back()
        elapsed = time.perf_counter() - start
        self.metrics.num_calls += 1
        self.metrics.last_call_s = elapsed
        self.metrics.total_call_s += elapsed
        return out
