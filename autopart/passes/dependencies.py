"""Dependencies: the graph as a networkx DAG, its topological order and critical path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch.fx

from .records import record


@dataclass(frozen=True)
class DependencyGraph:
    """A DAG with one vertex per FX node (by name) and an edge per data dependency.

    Edge attribute ``nbytes``: bytes of the producer's output tensors (what a transfer on that
    edge would move). Vertex attribute ``op``: the FX opcode.
    """

    dag: nx.DiGraph

    @property
    def topological_order(self) -> list[str]:
        return list(nx.topological_sort(self.dag))

    def critical_path(self, weight: Callable[[str], float] | None = None) -> tuple[list[str], float]:
        """The longest path through the DAG and its length.

        Args:
            weight: cost of each vertex (e.g. predicted seconds on one device); None counts 1 per
                vertex.

        Returns:
            (vertex names along the path, sum of their weights).
        """
        w = weight or (lambda _: 1.0)
        best: dict[str, tuple[float, str | None]] = {}
        for v in nx.topological_sort(self.dag):
            preds = [(best[u][0], u) for u in self.dag.predecessors(v)]
            length, parent = max(preds, default=(0.0, None))
            best[v] = (length + w(v), parent)
        if not best:
            return [], 0.0
        end = max(best, key=lambda v: best[v][0])
        path, v = [], end
        while v is not None:
            path.append(v)
            v = best[v][1]
        return path[::-1], best[end][0]


def dependency_pass(gm: torch.fx.GraphModule, example_inputs: Sequence[Any] = ()) -> DependencyGraph:
    """Build the :class:`DependencyGraph` of ``gm`` (after ``propagate_shapes_pass``)."""
    del example_inputs
    dag = nx.DiGraph()
    for node in gm.graph.nodes:
        dag.add_node(node.name, op=node.op)
        for inp in node.all_input_nodes:
            dag.add_edge(inp.name, node.name, nbytes=record(inp).output_bytes)
    return DependencyGraph(dag)
