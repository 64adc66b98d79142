"""The annotated graph: what the passes learned about an FX graph, as plain data.

An :class:`AnnotatedGraph` holds, per node in graph order, its data inputs, role, module path,
output tensors, resident bytes and the aten ops it runs (FLOPs, bytes, launches, dtype, class),
plus the liveness of every storage. Nothing in it depends on a topology, so it can be saved as
JSON, shipped, and planned later for any hardware (``autopart solve --graph G.json``): node
times are derived per topology with the roofline of :mod:`autopart.costmodel.roofline`.

JSON (``format_version`` 1)::

    format        "autopart-graph"
    format_version 1
    name          str
    nodes         [{"name", "op", "target", "role", "inputs": [names], "module_path": [str],
                    "tensors": [{"shape", "dtype", "device", "nbytes"}], "resident_bytes",
                    "ops": [{"flops", "bytes_read", "bytes_written", "launches", "dtype",
                    "kind", "aligned"}], "sticky": bool, "training_bytes",
                    "requires_grad": bool, "backward_ops": [like "ops"], "step_ops": [like "ops"],
                    "step_temporary_bytes"}]
                  (``aligned``, ``training_bytes``, ``requires_grad``, ``backward_ops``,
                  ``step_ops`` and ``step_temporary_bytes`` may be absent: true, 0, false, [],
                  [] and 0)
    storages      [{"producer", "nbytes", "first", "last", "kind"}]   (indices into nodes)
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import re
import typing
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch.fx
from torch.utils._pytree import tree_leaves

from ._io import atomic_write_text, read_json
from .costmodel.ops import OpCost
from .costmodel.roofline import calibration_of, first_touch_Bps, roofline_time_s
from .passes.aliasing import input_bound_nodes, updated_together
from .passes.memory import MemoryReport, StorageLife
from .passes.records import NodeRole, TensorInfo, record
from .topology import Device, Topology

GRAPH_FORMAT = "autopart-graph"
GRAPH_FORMAT_VERSION = 1
COMPUTE_OPS = ("call_function", "call_method", "call_module")


@dataclass(frozen=True)
class GraphNode:
    """One node: FX opcode and printable target, data inputs (node names), role, the module
    path it was called from, output tensors, resident bytes (weights it holds) and aten ops.

    ``sticky``: it must run with the node before it (``operator.getitem`` of a tuple output).
    """

    name: str
    op: str
    target: str
    role: str
    inputs: tuple[str, ...]
    module_path: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    resident_bytes: int
    ops: tuple[OpCost, ...]
    sticky: bool = False
    training_bytes: int = 0
    """Bytes a training step adds to the node's device (0 for graphs planned for inference):
    the activations autograd saves at a compute node; a parameter's gradient and optimizer
    state (:mod:`autopart.passes.training`)."""
    requires_grad: bool = False
    """In a training graph, its value needs a gradient: one flows back over its cut edges."""
    backward_ops: tuple[OpCost, ...] = ()
    """The aten ops of its backward pass in a training graph (:mod:`autopart.passes.training`)."""
    step_ops: tuple[OpCost, ...] = ()
    """A trainable parameter's update by the optimizer in a training graph
    (:func:`autopart.passes.training.optimizer_step`)."""
    step_temporary_bytes: int = 0
    """Bytes of temporaries that update allocates anew in every step."""
    bound_to: str | None = None
    """The device (as captured: ``"cpu"``, ``"cuda:0"``) of the graph input this node updates
    in place or returns a view of, where it must run (:func:`autopart.passes.aliasing.input_bound_nodes`)."""

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def reserved_training_bytes(self) -> int:
        """What a plan reserves for a training step at this node: ``training_bytes`` and the
        optimizer's temporaries (``step_temporary_bytes``, Adam's ``sqrt`` and division). The
        temporaries are reserved all step long, an upper bound: the update runs after backward
        has freed the saved activations, and torch.optim's ``foreach`` update (its default on
        GPUs) makes those of all of a device's parameters at once."""
        return self.training_bytes + self.step_temporary_bytes

    @property
    def is_compute(self) -> bool:
        return self.op in COMPUTE_OPS


@dataclass(frozen=True)
class AnnotatedGraph:
    """Nodes in graph (execution) order and the liveness of their storages."""

    name: str
    nodes: tuple[GraphNode, ...]
    storages: tuple[StorageLife, ...]
    updated_together: tuple[tuple[str, str], ...] = ()
    """(first, last) node names of the stretches that must run in one task, since they read a
    parameter, buffer or constant the graph updates in place
    (:func:`autopart.passes.aliasing.updated_together`)."""

    @cached_property
    def index(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    @cached_property
    def users(self) -> dict[str, tuple[str, ...]]:
        """Node name -> names of the nodes that read it, in graph order."""
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.name)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def training(self) -> bool:
        """Whether the graph was analysed for training (some node has ``training_bytes``)."""
        return any(n.training_bytes for n in self.nodes)

    @cached_property
    def has_backward(self) -> bool:
        """Whether the graph was analysed for a training step with a backward pass (some node
        has ``backward_ops``)."""
        return any(n.backward_ops for n in self.nodes)

    @property
    def output(self) -> GraphNode:
        return next(n for n in self.nodes if n.op == "output")

    def node(self, name: str) -> GraphNode:
        return self.nodes[self.index[name]]

    def node_times(
        self, topology: Topology, *, backward: bool = False, step: bool = False
    ) -> dict[str, dict[str, float]]:
        """Predicted seconds of every node's forward (with ``backward``: of its backward pass;
        with ``step``: of the optimizer's update of a trainable parameter) on every device of
        ``topology``: the roofline time of its ops, plus, in the forward and backward on a
        device that pays for first touches (:func:`~autopart.costmodel.roofline.first_touch_Bps`),
        the bytes it first writes fresh in each training step (:meth:`fresh_bytes`; in the
        optimizer's update, its temporaries: glibc returns a freed block this large, or the
        heap's top, to the system; the optimizer's state is made once and kept). An update off
        the CPU costs its FLOPs and bytes at the device's peak rates without launches:
        torch.optim's default there (``foreach``) updates all parameters in one launch per op."""
        devices = [(d.name, d, calibration_of(d), first_touch_Bps(d)) for d in topology.devices]
        if step:
            fresh = {n.name: n.step_temporary_bytes for n in self.nodes}
        else:
            fresh = self.fresh_bytes(backward=backward)

        def seconds(n: GraphNode, dev: Device, cal: dict[str, Any]) -> float:
            if step and dev.kind != "cpu":
                return sum(
                    max(op.flops / dev.peak_flops_for(op.dtype), op.bytes_accessed / dev.mem_bandwidth_Bps)
                    for op in n.step_ops
                )
            ops = n.step_ops if step else n.backward_ops if backward else n.ops
            return sum(roofline_time_s(op, dev, cal) for op in ops)

        return {
            n.name: {
                name: seconds(n, dev, cal) + (fresh.get(n.name, 0) / touch if touch else 0.0)
                for name, dev, cal, touch in devices
            }
            for n in self.nodes
        }

    def fresh_bytes(self, *, backward: bool = False) -> dict[str, int]:
        """Node name -> bytes a training step allocates there anew and keeps: in the forward,
        the activations a compute node saves for backward (they outlive the allocator's reuse
        of freed buffers); in the backward, each trainable parameter's gradient, at the
        parameter's first reader (``optimizer.zero_grad()`` sets gradients to None). Empty
        for inference graphs."""
        if not backward:
            return {n.name: n.training_bytes for n in self.nodes if n.is_compute and n.training_bytes}
        if not self.has_backward:
            return {}
        users, position = self.users, self.index
        fresh: dict[str, int] = {}
        for n in self.nodes:
            if n.role != "parameter" or not n.training_bytes:
                continue
            readers = [u for u in users[n.name] if self.node(u).is_compute]
            if readers:
                first = min(readers, key=position.__getitem__)
                fresh[first] = fresh.get(first, 0) + n.output_bytes
        return fresh

    # --- conversion ----------------------------------------------------------------------
    @classmethod
    def from_fx(cls, gm: torch.fx.GraphModule, memory: MemoryReport, name: str = "graph") -> AnnotatedGraph:
        """The annotated graph of ``gm`` after the shape, memory and cost passes."""
        bound = input_bound_nodes(gm)
        nodes = []
        for node in gm.graph.nodes:
            rec = record(node)
            if node.op == "output":
                inputs = [a for a in tree_leaves(node.args[0]) if isinstance(a, torch.fx.Node)]
            else:
                inputs = node.all_input_nodes
            nodes.append(
                GraphNode(
                    name=node.name,
                    op=node.op,
                    target=_target_name(node),
                    role=rec.role,
                    inputs=tuple(dict.fromkeys(a.name for a in inputs)),
                    module_path=module_path(node),
                    tensors=rec.tensors,
                    resident_bytes=rec.resident_bytes,
                    ops=tuple(rec.ops),
                    sticky=node.op == "call_function" and node.target is operator.getitem,
                    training_bytes=rec.training_bytes,
                    requires_grad=rec.requires_grad,
                    backward_ops=tuple(rec.backward_ops),
                    step_ops=tuple(rec.step_ops),
                    step_temporary_bytes=rec.step_temporary_bytes,
                    bound_to=bound.get(node.name),
                )
            )
        return cls(name=name, nodes=tuple(nodes), storages=memory.storages,
                   updated_together=tuple(updated_together(gm)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": GRAPH_FORMAT,
            "format_version": GRAPH_FORMAT_VERSION,
            "name": self.name,
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
            "storages": [dataclasses.asdict(s) for s in self.storages],
            "updated_together": [list(pair) for pair in self.updated_together],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<dict>") -> AnnotatedGraph:
        """Rebuild a graph from :meth:`to_dict` output.

        Raises:
            ValueError: not an autopart graph, another format version, or a malformed node
                (the message names the source and the node).
        """
        if not isinstance(d, dict) or d.get("format") != GRAPH_FORMAT:
            raise ValueError(f"{source}: not an autopart graph (expected format {GRAPH_FORMAT!r})")
        if d.get("format_version") != GRAPH_FORMAT_VERSION:
            raise ValueError(
                f"{source}: graph format_version {d.get('format_version')!r} is not "
                f"{GRAPH_FORMAT_VERSION}; export the graph again with this autopart"
            )
        nodes = []
        for i, raw in enumerate(d.get("nodes", [])):
            try:
                nodes.append(
                    GraphNode(
                        **{
                            **raw,
                            "inputs": tuple(raw["inputs"]),
                            "module_path": tuple(raw["module_path"]),
                            "tensors": tuple(TensorInfo(**{**t, "shape": tuple(t["shape"])}) for t in raw["tensors"]),
                            "ops": tuple(OpCost(**op) for op in raw["ops"]),
                            "backward_ops": tuple(OpCost(**op) for op in raw.get("backward_ops", ())),
                            "step_ops": tuple(OpCost(**op) for op in raw.get("step_ops", ())),
                        }
                    )
                )
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{source}: nodes[{i}] is malformed: {exc}") from exc
        names = {n.name for n in nodes}
        if len(names) < len(nodes):
            twice = sorted({n.name for n in nodes if sum(m.name == n.name for m in nodes) > 1})
            raise ValueError(f"{source}: node names must be unique; named twice: {twice}")
        if [n.op for n in nodes].count("output") != 1:
            raise ValueError(f"{source}: a graph has one node with op 'output' (its last), found "
                             f"{[n.op for n in nodes].count('output')}")
        for n in nodes:
            missing = [i for i in n.inputs if i not in names]
            if missing:
                raise ValueError(f"{source}: node {n.name!r} reads unknown nodes {missing}")
            if n.role not in typing.get_args(NodeRole):
                raise ValueError(f"{source}: node {n.name!r} has role {n.role!r}, not one of {typing.get_args(NodeRole)}")
            if n.bound_to is not None and not isinstance(n.bound_to, str):
                raise ValueError(f"{source}: node {n.name!r} has bound_to {n.bound_to!r}; give a device "
                                 "such as 'cpu' or 'cuda:0', or null")
            negative = [k for k in ("resident_bytes", "training_bytes", "step_temporary_bytes") if getattr(n, k) < 0]
            if negative:
                raise ValueError(f"{source}: node {n.name!r} has negative {negative}")
            dtypes = [x.dtype for x in (*n.tensors, *n.ops, *n.backward_ops, *n.step_ops)]
            unknown = sorted({str(dt) for dt in dtypes if not isinstance(getattr(torch, str(dt), None), torch.dtype)})
            if unknown:
                raise ValueError(f"{source}: node {n.name!r} has unknown dtypes {unknown}; use torch's "
                                 "names without 'torch.', e.g. 'float32', 'bfloat16', 'int64'")
        try:
            storages = tuple(StorageLife(**s) for s in d.get("storages", []))
        except TypeError as exc:
            raise ValueError(f"{source}: 'storages' must be a list of StorageLife objects: {exc}") from exc
        stretches = d.get("updated_together", [])
        if not isinstance(stretches, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(p in names for p in pair) for pair in stretches
        ):
            raise ValueError(f"{source}: 'updated_together' must be a list of [first, last] node names, "
                             f"got {stretches!r}")
        return cls(name=str(d.get("name", "graph")), nodes=tuple(nodes), storages=storages,
                   updated_together=tuple(tuple(pair) for pair in stretches))

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnnotatedGraph:
        """Read a graph written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file. ValueError: a folder, not JSON or not an autopart
                graph. TypeError: ``path`` is not a path.
        """
        return cls.from_dict(read_json(path, "annotated graph"), source=os.fspath(path))


_DYNAMO_ROOT = re.compile(r"^(?:L\['[^']*'\]|L__[A-Za-z0-9_]*?__)\.?")


def module_path(node: torch.fx.Node) -> tuple[str, ...]:
    """The module call path of a node, outermost first (``("transformer", "transformer.h.0")``),
    from Dynamo's ``nn_module_stack``, with Dynamo's root name (``L['self']``) removed."""
    paths = []
    for value in (node.meta.get("nn_module_stack") or {}).values():
        path = value[0] if isinstance(value, tuple) else str(value)
        paths.append(_DYNAMO_ROOT.sub("", path))
    return tuple(paths)


def _target_name(node: torch.fx.Node) -> str:
    if isinstance(node.target, str):
        return node.target
    return getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", None) or str(node.target)
