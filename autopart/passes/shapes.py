"""Shapes and dtypes: every node gets ``meta["val"]`` and a :class:`TensorInfo` per output tensor.

Dynamo leaves fake tensors in ``meta["example_value"]`` (and AOT/make_fx graphs in
``meta["val"]``); where neither is present the graph is run under ``FakeTensorProp``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.utils._pytree import tree_leaves, tree_map

from .._compat import concrete_int, detect_fake_mode, is_static_input, parameter_fqn
from .records import NodeRole, TensorInfo, record

log = logging.getLogger(__name__)


def tensor_infos(val: Any) -> tuple[TensorInfo, ...]:
    """A :class:`TensorInfo` for each tensor among the leaves of ``val`` (a tensor or pytree)."""
    infos = []
    for leaf in tree_leaves(val):
        if isinstance(leaf, torch.Tensor):
            shape = tuple(concrete_int(s) for s in leaf.shape)
            numel = 1
            for s in shape:
                numel *= s
            infos.append(
                TensorInfo(
                    shape=shape,
                    dtype=str(leaf.dtype).removeprefix("torch."),
                    device=str(leaf.device),
                    nbytes=numel * leaf.element_size(),
                )
            )
    return tuple(infos)


def node_value(node: torch.fx.Node) -> Any:
    """The fake value of a node: ``meta["val"]``, else Dynamo's ``meta["example_value"]``."""
    if "val" in node.meta:
        return node.meta["val"]
    return node.meta.get("example_value")


def propagate_shapes_pass(
    gm: torch.fx.GraphModule, example_inputs: Sequence[Any]
) -> torch.fx.GraphModule:
    """Give every node ``meta["val"]`` and its autopart record ``role``, ``tensors`` and ``fqn``.

    Args:
        gm: the graph; Dynamo graphs keep their own fake tensors, others are propagated.
        example_inputs: one value per placeholder, real or fake tensors (or SymInts/ints).

    Returns:
        ``gm``, annotated in place.

    Raises:
        ValueError: ``example_inputs`` does not have one value per placeholder.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise ValueError(
            f"graph has {len(placeholders)} placeholders but {len(example_inputs)} example inputs "
            "were given; pass one example value per graph input"
        )
    if any(node_value(n) is None for n in gm.graph.nodes if n.op not in ("output",)):
        _fake_propagate(gm, example_inputs)
    for node in gm.graph.nodes:
        if "val" not in node.meta and "example_value" in node.meta:
            node.meta["val"] = node.meta["example_value"]

    examples = dict(zip(placeholders, example_inputs))
    for node in gm.graph.nodes:
        rec = record(node)
        rec.role = _role(gm, node, examples.get(node))
        if node.op == "output":
            rec.tensors = tensor_infos([node_value(a) for a in _flat_nodes(node.args[0])])
        else:
            rec.tensors = tensor_infos(node_value(node))
        if rec.role in ("parameter", "buffer", "constant"):
            rec.fqn = parameter_fqn(gm, node)
    return gm


def _flat_nodes(arg: Any) -> list[torch.fx.Node]:
    return [a for a in tree_leaves(arg) if isinstance(a, torch.fx.Node)]


def _role(gm: torch.fx.GraphModule, node: torch.fx.Node, example: Any) -> NodeRole:
    if node.op == "placeholder":
        if is_static_input(node) or isinstance(example, torch.nn.Parameter):
            return "parameter" if isinstance(example, torch.nn.Parameter) else "buffer"
        return "input"
    if node.op == "get_attr":
        value = _get_attr(gm, str(node.target))
        if isinstance(value, torch.nn.Parameter):
            return "parameter"
        if isinstance(value, torch.Tensor) and str(node.target) in dict(gm.named_buffers()):
            return "buffer"
        return "constant"
    if node.op == "output":
        return "output"
    return "compute"


def _get_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _fake_propagate(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = detect_fake_mode(list(example_inputs))
    if mode is None:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
    log.debug("running FakeTensorProp on %s", type(gm).__name__)
    FakeTensorProp(gm, mode).propagate(*example_inputs)


def in_fake_mode(value: Any, fake_mode) -> Any:
    """``value``, or, if it is a fake tensor of another fake mode (Dynamo may fake parameters in
    a mode of their own), a new fake tensor in ``fake_mode`` with the same hinted sizes,
    strides, dtype and device."""
    if not isinstance(value, FakeTensor) or value.fake_mode is fake_mode:
        return value
    with fake_mode:
        return torch.empty_strided(
            [concrete_int(s) for s in value.shape],
            [concrete_int(s) for s in value.stride()],
            dtype=value.dtype,
            device=value.device,
        )


def requires_grad(node: torch.fx.Node) -> bool | None:
    """Whether a tensor of the node's value requires grad, from Dynamo's ``example_value`` (the
    ``val`` FakeTensorProp writes never does); None for a node without one (graphs not captured
    by Dynamo)."""
    value = node.meta.get("example_value")
    if value is None:
        return None
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in tree_leaves(value))


def rerun_mode(gm: torch.fx.GraphModule):
    """A fake mode to re-run ``gm``'s nodes in at the sizes they were traced with (see
    :func:`fake_inputs`), or None when the graph holds no fake values.

    The mode has no ShapeEnv, on purpose: re-running nodes in Dynamo's mode would record
    guards in the ShapeEnv the graph's guards come from (``view(-1, s1)`` of an input at its
    hinted size guards ``s1 == 12``), which specializes a ``dynamic=True`` graph to its first
    sizes, so that every new length compiles and plans again.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    values = [node_value(n) for n in gm.graph.nodes if n.op in ("placeholder", "call_function")]
    return None if detect_fake_mode(values) is None else FakeTensorMode(allow_non_fake_inputs=True)


def hinted(value: Any) -> Any:
    """``value`` with each SymInt (also in a ``torch.Size``, a list or tuple, or as a slice
    bound) replaced by its hint, adding no guard."""
    if isinstance(value, torch.SymInt):
        return concrete_int(value)
    if isinstance(value, slice):
        return slice(hinted(value.start), hinted(value.stop), hinted(value.step))
    if type(value) in (tuple, list, torch.Size):
        return type(value)(hinted(v) for v in value)
    return value


def fake_inputs(node: torch.fx.Node, fake_mode) -> tuple[tuple, dict]:
    """The node's args and kwargs with each input node replaced by its value, every fake tensor
    in ``fake_mode`` (see :func:`in_fake_mode`) and every SymInt at its hint (:func:`hinted`):
    ready to re-run the node in a :func:`rerun_mode`."""

    def fake(arg: Any) -> Any:
        value = node_value(arg) if isinstance(arg, torch.fx.Node) else arg
        return in_fake_mode(hinted(value), fake_mode)

    return tree_map(fake, (node.args, node.kwargs))
