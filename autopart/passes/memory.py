"""Memory: bytes per tensor, liveness of each storage, and a peak-memory estimate.

Liveness is tracked per storage, not per node, so views (which share their base's storage)
allocate nothing and keep their base alive. A storage is live from the node that first produces
it to the last node that reads it (or any view of it); graph outputs live to the end.

The estimate assumes nodes run one at a time in graph order, the allocator reuses freed memory
perfectly (no fragmentation), and kernels' internal workspaces are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.utils._pytree import tree_leaves

from .._compat import concrete_int
from .records import RESIDENT_ROLES, record
from .shapes import node_value


@dataclass(frozen=True)
class StorageLife:
    """One storage: who produced it, its size in bytes, and the graph-order steps it is live."""

    producer: str
    nbytes: int
    first: int
    last: int
    kind: str
    """``"activation"``, ``"input"`` (a user input), or ``"resident"`` (parameter, buffer, constant)."""


@dataclass(frozen=True)
class MemoryReport:
    """Liveness and peak memory of one graph, all sizes in bytes.

    ``live_activation_bytes[i]`` is the activation memory live while node ``order[i]`` runs.
    """

    order: tuple[str, ...]
    storages: tuple[StorageLife, ...]
    resident_bytes: int
    input_bytes: int
    live_activation_bytes: tuple[int, ...]

    @property
    def peak_activation_bytes(self) -> int:
        return max(self.live_activation_bytes, default=0)

    @property
    def peak_index(self) -> int:
        """Index in ``order`` of the first step at the activation peak."""
        live = self.live_activation_bytes
        return live.index(self.peak_activation_bytes) if live else 0

    @property
    def peak_bytes(self) -> int:
        """Resident + input + peak activation bytes: the estimated high-water mark of one call."""
        return self.resident_bytes + self.input_bytes + self.peak_activation_bytes


def storage_key(tensor: torch.Tensor) -> Any:
    """A hashable identity of the tensor's storage (shared by all its views)."""
    try:
        from torch.multiprocessing.reductions import StorageWeakRef

        return StorageWeakRef(tensor.untyped_storage())
    except Exception:  # noqa: BLE001 - tensors without storage (e.g. some subclasses)
        return ("tensor", id(tensor))


def storage_nbytes(tensor: torch.Tensor) -> int:
    """Bytes of the tensor's whole storage (a view's base included)."""
    try:
        return concrete_int(tensor.untyped_storage().nbytes())
    except Exception:  # noqa: BLE001
        return concrete_int(tensor.numel()) * tensor.element_size()


def node_storages(node: torch.fx.Node) -> list[tuple[Any, int]]:
    """(storage key, storage bytes) for each distinct storage among the node's output tensors."""
    seen: dict[Any, int] = {}
    for leaf in tree_leaves(node_value(node)):
        if isinstance(leaf, torch.Tensor):
            key = storage_key(leaf)
            if key not in seen:
                seen[key] = storage_nbytes(leaf)
    return list(seen.items())


def module_state(module: torch.nn.Module) -> list[tuple[Any, int]]:
    """(storage key, bytes) of each parameter and buffer storage of ``module``."""
    seen: dict[Any, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen.setdefault(storage_key(t), storage_nbytes(t))
    return list(seen.items())


def memory_pass(gm: torch.fx.GraphModule, example_inputs: Sequence[Any] = ()) -> MemoryReport:
    """Liveness and peak memory of ``gm`` (after ``propagate_shapes_pass``).

    Writes ``resident_bytes`` and ``alloc_bytes`` into each node's record.

    Returns:
        A :class:`MemoryReport`.
    """
    del example_inputs  # shapes come from the fake values left by propagate_shapes_pass
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    lives: dict[Any, list] = {}  # key -> [producer, nbytes, first, last, kind]
    keys_of: dict[torch.fx.Node, list[Any]] = {}
    module_state_seen: set[Any] = set()
    for i, node in enumerate(nodes):
        rec = record(node)
        rec.resident_bytes = rec.alloc_bytes = 0
        if node.op == "call_module":  # a module kept whole: its weights live with the node
            for key, nbytes in module_state(gm.get_submodule(str(node.target))):
                if key not in module_state_seen:
                    module_state_seen.add(key)
                    rec.resident_bytes += nbytes
        if node.op == "output":
            keys_of[node] = []
            continue
        keys = []
        for key, nbytes in node_storages(node):
            keys.append(key)
            if key in lives:
                continue
            kind = (
                "resident"
                if rec.role in RESIDENT_ROLES
                else "input" if rec.role == "input" else "activation"
            )
            lives[key] = [node.name, nbytes, i, i, kind]
            if kind == "resident":
                rec.resident_bytes += nbytes
            elif kind == "activation":
                rec.alloc_bytes += nbytes
        keys_of[node] = keys

    end = len(nodes) - 1
    for node in nodes:
        step = end if node.op == "output" else index[node]
        for inp in node.all_input_nodes:
            for key in keys_of.get(inp, ()):
                lives[key][3] = max(lives[key][3], step)

    delta = [0] * (len(nodes) + 1)
    for producer, nbytes, first, last, kind in lives.values():
        if kind == "activation":
            delta[first] += nbytes
            delta[last + 1] -= nbytes
    live, running = [], 0
    for i in range(len(nodes)):
        running += delta[i]
        live.append(running)

    storages = tuple(StorageLife(*life) for life in lives.values())
    return MemoryReport(
        order=tuple(n.name for n in nodes),
        storages=storages,
        resident_bytes=sum(record(n).resident_bytes for n in nodes),
        input_bytes=sum(s.nbytes for s in storages if s.kind == "input"),
        live_activation_bytes=tuple(live),
    )
