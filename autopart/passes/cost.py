"""Cost: FLOPs, bytes and predicted time of every node on every device of a topology.

Each compute node is re-run on its fake input values inside a :class:`CostRecorder`, which
decomposes it into the aten ops it really dispatches and costs each with the rules in
``autopart.costmodel.ops``. Time per device is the roofline sum over those ops. A node that
cannot be re-run gets a default (read inputs, write outputs, one FLOP per output element, one
launch) and is listed in :attr:`CostReport.unknown`.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.utils._pytree import tree_leaves, tree_map

from ..costmodel.ops import CostRecorder, OpCost, tensor_bytes
from ..costmodel.roofline import ops_time_s
from ..topology import Topology
from .memory import node_storages
from .records import record
from .shapes import fake_inputs, node_value, rerun_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostReport:
    """Totals of the cost pass. Times in seconds, per topology device."""

    total_flops: int
    total_time_s: dict[str, float]
    unknown: dict[str, str]
    """Node name -> why its cost is a default estimate."""


_AUGMENTED_ASSIGNMENTS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
    operator.ilshift, operator.irshift,
})


def mutated_inputs(node: torch.fx.Node) -> tuple[torch.fx.Node, ...]:
    """The input nodes whose tensors ``node`` updates in place (none for most nodes).

    In place are: a call whose name ends in one ``_`` (``x.add_(y)``, ``torch.relu_``), which
    updates its first argument, or each tensor of it (``torch._foreach_mul_(tensors, 0.9)``);
    one given ``inplace=True`` (``F.relu(x, inplace=True)``); ``x[i] = y`` and ``x += y`` on a
    tensor (Dynamo records ``operator.setitem`` and ``operator.iadd``, and so on;
    ``operator.and_`` and its like are not in place); an aten overload, for each argument its
    schema writes (``_foreach_mul_.Scalar``, ``_fused_adam_``); and the tensors given as
    ``out=``. (Batch norm's running statistics: see :func:`mutates_in_place`.)"""
    if node.op not in ("call_function", "call_method"):
        return ()
    out = node.kwargs.get("out")
    if out is not None:
        return _nodes(out)
    if isinstance(node.target, torch._ops.OpOverload):
        return _written(node, [node.target._schema])
    first = node.args[0] if node.args else None
    if node.target in _AUGMENTED_ASSIGNMENTS:
        return (first,) if isinstance(first, torch.fx.Node) and isinstance(node_value(first), torch.Tensor) else ()
    if getattr(node.target, "__module__", None) == "_operator":  # and_, or_, not_: new values
        return ()
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if node.kwargs.get("inplace") is True:
        return _nodes(first)
    if isinstance(name, str) and name.endswith("_") and not name.endswith("__"):
        return _written(node, _aten_schemas(name)) or _nodes(first)
    return ()


def _written(node: torch.fx.Node, schemas: list[torch._C.FunctionSchema]) -> tuple[torch.fx.Node, ...]:
    """The nodes given to ``node`` for arguments that one of ``schemas`` marks as written
    (``Tensor(a!)``), by position or name."""
    written = []
    for schema in schemas:
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            if i < len(node.args) and not arg.kwarg_only:
                written.append(node.args[i])
            elif arg.name in node.kwargs:
                written.append(node.kwargs[arg.name])
    return tuple(dict.fromkeys(n for a in written for n in _nodes(a)))


@functools.cache
def _aten_schemas(name: str) -> list[torch._C.FunctionSchema]:
    """The schemas of every overload of ``aten::<name>`` (none if there is no such op): what a
    torch-level call of that name (``torch._fused_adam_``, ``x.add_``) writes."""
    try:
        packet = getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return []
    return [getattr(packet, overload)._schema for overload in packet.overloads()]


def _nodes(arg: Any) -> tuple[torch.fx.Node, ...]:
    """``arg`` if it is a node, the nodes of a list or tuple of them, else none."""
    if isinstance(arg, torch.fx.Node):
        return (arg,)
    if isinstance(arg, (list, tuple)):
        return tuple(a for a in arg if isinstance(a, torch.fx.Node))
    return ()


def is_inplace(node: torch.fx.Node) -> bool:
    """True for a call that updates a tensor in place (:func:`mutated_inputs`)."""
    return bool(mutated_inputs(node))


def mutates_in_place(gm: torch.fx.GraphModule) -> bool:
    """True if a node of ``gm`` updates a graph input in place (a user input, parameter or
    buffer, or a view of one; :func:`updates_inputs`), or is batch norm in training mode with
    running statistics, which it updates. Updates of tensors the graph made (``out += x``) do
    not count: running the graph again, or on part of a batch, makes them anew."""
    return updates_inputs(gm) or any(_updates_running_stats(node) for node in gm.graph.nodes)


def updates_inputs(gm: torch.fx.GraphModule, roles: tuple[str, ...] | None = None) -> bool:
    """True if a node of ``gm`` updates in place a graph input (of one of ``roles``, the
    placeholders' ``record(...).role``; any by default) or a view of one (:func:`mutated_inputs`)."""
    inputs = {
        key for node in gm.graph.find_nodes(op="placeholder") if roles is None or record(node).role in roles
        for key, _ in node_storages(node)
    }
    return any(key in inputs for node in gm.graph.nodes for target in mutated_inputs(node)
               for key, _ in node_storages(target))


def _updates_running_stats(node: torch.fx.Node) -> bool:
    """``F.batch_norm(input, running_mean, running_var, weight, bias, training, ...)`` with
    ``training`` not False and running statistics given."""
    if node.op != "call_function" or node.target is not torch.nn.functional.batch_norm:
        return False
    running_mean = node.kwargs.get("running_mean", node.args[1] if len(node.args) > 1 else None)
    training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
    return running_mean is not None and training is not False


def _rerun(gm: torch.fx.GraphModule, node: torch.fx.Node, fake_mode) -> list[OpCost]:
    args, kwargs = fake_inputs(node, fake_mode)
    if is_inplace(node):  # keep upstream fake values unmutated
        args, kwargs = tree_map(
            lambda t: t.clone() if isinstance(t, torch.Tensor) else t, (args, kwargs)
        )
    recorder = CostRecorder()
    with fake_mode, torch.no_grad(), recorder:
        if node.op == "call_function":
            node.target(*args, **kwargs)
        elif node.op == "call_method":
            getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            gm.get_submodule(node.target)(*args, **kwargs)
    return recorder.ops


def _default_ops(node: torch.fx.Node) -> list[OpCost]:
    out = node_value(node)
    inputs = [node_value(a) for a in node.all_input_nodes]
    dtype = next(
        (
            str(t.dtype).removeprefix("torch.")
            for t in tree_leaves((out, inputs))
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        ),
        "float32",
    )
    numel = sum(t.numel for t in record(node).tensors)
    return [OpCost(numel, tensor_bytes(inputs), tensor_bytes(out), 1, dtype)]


def cost_pass(
    gm: torch.fx.GraphModule, example_inputs: Sequence[Any] = (), *, topology: Topology
) -> CostReport:
    """Write ``flops``, ``bytes_accessed``, ``num_kernels``, ``cost_rule`` and ``time_s`` (per
    device of ``topology``) into each node's record (after ``propagate_shapes_pass``).

    Returns:
        A :class:`CostReport` with totals and the nodes whose cost is a default estimate.
    """
    del example_inputs
    fake_mode = rerun_mode(gm)
    unknown: dict[str, str] = {}
    total_flops = 0
    total_time = {d.name: 0.0 for d in topology.devices}
    for node in gm.graph.nodes:
        rec = record(node)
        ops: list[OpCost] = []
        if node.op in ("call_function", "call_method", "call_module") and rec.tensors:
            try:
                if fake_mode is None:
                    raise RuntimeError("graph has no fake tensors")
                ops = _rerun(gm, node, fake_mode)
                rec.cost_rule = "aten"
            except Exception as exc:  # noqa: BLE001 - any failure: default estimate
                ops = _default_ops(node)
                rec.cost_rule = f"unknown: {type(exc).__name__}: {exc}".splitlines()[0][:200]
                unknown[node.name] = rec.cost_rule
                log.debug("cost of %s: %s", node.name, rec.cost_rule)
        else:
            rec.cost_rule = "free"
        rec.ops = tuple(ops)
        rec.flops = sum(op.flops for op in ops)
        rec.bytes_accessed = sum(op.bytes_accessed for op in ops)
        rec.num_kernels = sum(op.launches for op in ops)
        rec.time_s = {d.name: ops_time_s(ops, d) for d in topology.devices}
        total_flops += rec.flops
        for name, t in rec.time_s.items():
            total_time[name] += t
    return CostReport(total_flops=total_flops, total_time_s=total_time, unknown=unknown)
