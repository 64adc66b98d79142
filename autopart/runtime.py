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


class StaticCopyCache:
    """Device copies of parameters and buffers, shared by every graph of one backend, so that
    graphs of one model (graph breaks, recompiles) never hold two copies of a tensor on one
    device. Keyed by (original tensor, device); an entry keeps its original alive."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, torch.device], _Copy] = {}

    def get(self, original: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, bool]:
        """The copy of ``original`` on ``device``, and whether it had to be made now.

        A copy is reused while the original is the same tensor with the same storage and
        version counter.
        """
        key = (id(original), device)
        entry = self.entries.get(key)
        if (
            entry is not None
            and entry.original is original
            and entry.version == original._version
            and entry.data_ptr == original.data_ptr()
        ):
            return entry.moved, False
        with torch.no_grad():
            moved = original.to(device)
        self.entries[key] = _Copy(original, original._version, original.data_ptr(), moved, moved._version)
        return moved, True

    def write_back(self, keys: list[tuple[int, torch.device]]) -> int:
        """Copy the given entries' mutated copies back into their originals; returns how many."""
        count = 0
        for key in keys:
            entry = self.entries[key]
            if entry.moved._version != entry.moved_version:
                with torch.no_grad():
                    entry.original.copy_(entry.moved)
                entry.version = entry.original._version
                entry.moved_version = entry.moved._version
                count += 1
        return count


class StaticInputMover:
    """Puts the parameters and buffers (placeholders Dynamo lifted) of one graph on their
    planned devices, through a :class:`StaticCopyCache`.

    An in-place update of the original (an optimizer step) or ``param.data = ...`` makes a fresh
    copy. When autograd needs the parameter's gradient, the copy is made under autograd on every
    call, so gradients reach the original. Buffers the graph mutates in place on their device
    copy (e.g. batch-norm running statistics) are copied back into the original after the call.
    """

    def __init__(
        self,
        targets: dict[int, torch.device],
        metrics: RuntimeMetrics,
        cache: StaticCopyCache | None = None,
    ) -> None:
        self.targets = targets
        self.metrics = metrics
        self.cache = cache if cache is not None else StaticCopyCache()
        self._used: list[tuple[int, torch.device]] = []

    def move(self, args: list[Any]) -> None:
        """Replace, in place, each static input in ``args`` by its copy on its target device."""
        self._used = []
        for i, device in self.targets.items():
            original = args[i]
            if not isinstance(original, torch.Tensor) or original.device == device:
                continue
            if original.requires_grad and torch.is_grad_enabled():
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


@dataclass
class PlacedGraph:
    """Runs one planned graph: ``module`` (partitions in order) with static inputs moved."""

    module: torch.fx.GraphModule
    plan: Plan
    static_moves: dict[int, torch.device]
    cache: StaticCopyCache = field(default_factory=StaticCopyCache)
    metrics: RuntimeMetrics = field(default_factory=RuntimeMetrics)
    replica_sources: list[int] = field(default_factory=list)
    """Inputs passed again, as extra arguments, for the weight copies the rewrite added."""

    def __post_init__(self) -> None:
        self._mover = StaticInputMover(self.static_moves, self.metrics, self.cache)

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        args_list = [*args, *(args[i] for i in self.replica_sources)]
        self._mover.move(args_list)
        out = self.module(*args_list)
        self._mover.write_back()
        elapsed = time.perf_counter() - start
        self.metrics.num_calls += 1
        self.metrics.last_call_s = elapsed
        self.metrics.total_call_s += elapsed
        return out
