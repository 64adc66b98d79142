"""Analysis passes over FX graphs. Each writes its fields of ``node.meta["autopart"]``
(:class:`NodeRecord`) and returns the graph or a frozen report."""

from .cost import CostReport, cost_pass
from .dependencies import DependencyGraph, dependency_pass
from .memory import MemoryReport, StorageLife, memory_pass
from .records import NodeRecord, TensorInfo, record
from .shapes import node_value, propagate_shapes_pass

__all__ = [
    "CostReport",
    "DependencyGraph",
    "MemoryReport",
    "NodeRecord",
    "StorageLife",
    "TensorInfo",
    "cost_pass",
    "dependency_pass",
    "memory_pass",
    "node_value",
    "propagate_shapes_pass",
    "record",
]
