"""Aliasing: which nodes in-place updates and views tie to a device or to one task.

Both results are plain data (node names, device strings), so the annotated graph keeps them
and offline planning (``autopart solve``) honours them as the backend does.
"""

from __future__ import annotations

from typing import Any

import torch.fx
from torch.utils._pytree import tree_flatten

from .cost import mutated_inputs
from .memory import node_storages, storage_key
from .records import record
from .shapes import node_value


def input_bound_nodes(gm: torch.fx.GraphModule) -> dict[str, str]:
    """Node name -> device (as captured, e.g. ``"cpu"``, ``"cuda:0"``) of the nodes that must
    run where a graph input lives for the graph to behave as in eager:

    * an in-place update of a user input or of a view of one (``x[:, 0].add_(y)``), and an
      output that is a view of one (``y.t()``), with the views in between, on the device the
      input lives on: elsewhere they would update or return a copy;
    * an output that is a view of another output (``return h, h.view(-1)``), made on the
      device the graph returns them on from the copy of its base: copied one by one, they
      would not alias. (Outputs that are views of one tensor the graph does not return, such
      as an attention's key and value split from one projection, are copied one by one: only
      an in-place update of one would show that they no longer alias.)"""
    inputs = {}
    for node in gm.graph.find_nodes(op="placeholder"):
        value = node_value(node)
        if record(node).role == "input" and isinstance(value, torch.Tensor):
            inputs[storage_key(value)] = str(value.device)
    bound: dict[str, str] = {}

    def views(node: torch.fx.Node, key: Any) -> list[torch.fx.Node]:
        """``node`` if it is a view (of a tensor with storage ``key``) and the views it is made
        from, back to (not including) the input or the node that made the storage."""
        chain = []
        while (base := next((a for a in node.all_input_nodes if _same_storage_as(a, key)), None)) is not None:
            chain.append(node)
            node = base
        return chain

    def bind_views(node: torch.fx.Node, key: Any, device: str) -> None:
        bound.update(dict.fromkeys((n.name for n in views(node, key)), device))

    for node in gm.graph.nodes:
        for target in mutated_inputs(node):
            key = _storage_of(target)
            if key is not None and key in inputs:
                bound[node.name] = inputs[key]
                bind_views(target, key, inputs[key])
    output = next(n for n in gm.graph.nodes if n.op == "output")
    aliases: dict[Any, list[torch.fx.Node]] = {}
    for leaf in dict.fromkeys(tree_flatten(output.args[0])[0]):
        if isinstance(leaf, torch.fx.Node) and _storage_of(leaf) is not None:
            aliases.setdefault(_storage_of(leaf), []).append(leaf)
    for key, leaves in aliases.items():
        if key in inputs:
            for leaf in leaves:
                bind_views(leaf, key, inputs[key])
        elif len(leaves) > 1:
            for leaf in leaves:  # views of another output; that base stays free
                chain = views(leaf, key)
                if chain and any(a in leaves for n in chain for a in n.all_input_nodes):
                    bind_views(leaf, key, str(node_value(leaf).device))
    return bound


def updated_together(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """(first, last) node names of each stretch of ``gm`` that must run in one task: from the
    first to the last node that reads a parameter, buffer or constant (``get_attr``) that the
    graph updates in place, or a view of one. Cut, an update would land on a copy (a view one
    update returns, updated again later: ``e = self.ema.mul_(0.5); ...; e.add_(h)``; a
    compiled optimizer's updates of its state), or a reader on another device would get a
    copy made before the call, without the update."""
    owned = set()
    for node in gm.graph.nodes:
        resident = node.op == "placeholder" and record(node).role in ("parameter", "buffer")
        if resident or node.op == "get_attr":
            owned.update(key for key, _ in node_storages(node))
    first: dict[Any, torch.fx.Node] = {}
    last: dict[Any, torch.fx.Node] = {}
    updated = set()
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        for a in node.all_input_nodes:
            for key, _ in node_storages(a):
                if key in owned:
                    first.setdefault(key, node)
                    last[key] = node
        updated.update(key for target in mutated_inputs(node) for key, _ in node_storages(target) if key in owned)
    return [(first[key].name, last[key].name) for key in updated if first[key] is not last[key]]


def _storage_of(node: torch.fx.Node) -> Any:
    value = node_value(node)
    return storage_key(value) if isinstance(value, torch.Tensor) else None


def _same_storage_as(node: torch.fx.Node, key: Any) -> bool:
    """Whether a tensor of ``node``'s value (a tensor, or a tuple of them: ``split``'s) has the
    storage ``key``."""
    return any(mine == key for mine, _ in node_storages(node))
