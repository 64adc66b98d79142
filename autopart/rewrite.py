"""Rewrite: turn a captured graph and its Plan into per-device partitions with transfers.

1. Copy the graph; point device constants (``torch.arange(..., device=...)``, ``x.to(dev)``,
   ``x.cuda()``) at the local device of the node's placement.
2. Insert one ``autopart.kernels.transfer`` node per Plan transfer, before the first reader on
   the destination device, and let every reader there use it; outputs go back where the captured
   graph returned them. Weights streamed from host memory are copied in two steps
   (``start_transfer`` one layer ahead, ``wait_transfer`` before the reader); small activations
   entering one partition from one device are coalesced (``transfer_coalesced``). A copy that
   lands inside a ``torch.no_grad()`` region of the graph while autograd needs it outside runs
   with grad enabled.
3. Cut the graph into partitions: maximal runs of nodes on one device in graph order (so the
   partition graph is acyclic), with ``torch.fx.passes.split_module``.

Parameters and buffers (placeholders Dynamo lifted) are not moved here: the runtime moves them
once and reuses the copies. Constants reached by ``get_attr`` and modules kept whole
(``call_module``, when Dynamo does not inline modules) are copied to their device here, once:
later updates to the originals do not reach those copies (recompile after changing them).
"""

from __future__ import annotations

import copy
import functools
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.fx.passes.split_module import split_module
from torch.utils._pytree import tree_map

from .kernels.transfer import (
    COALESCE_MAX_BYTES,
    start_transfer,
    transfer,
    transfer_coalesced,
    transfer_compressed,
    wait_transfer,
)
from .passes.records import META_KEY, NodeRecord, record
from .passes.shapes import node_value, requires_grad
from .plan import Plan, Transfer
from .topology import Topology, local_devices

log = logging.getLogger(__name__)


def named_device_map(topology: Topology, device_map: dict[str, str] | str | None) -> dict[str, str]:
    """``device_map`` as ``{topology device: canonical device string}``: a single string stands
    for every topology device, None for none.

    Raises:
        ValueError: a key that is not a topology device, or a value that is not a device string.
    """
    names = topology.device_names
    if isinstance(device_map, str):
        device_map = dict.fromkeys(names, device_map)
    named = dict(device_map or {})
    for key in named:
        if key not in names:
            raise ValueError(
                f"device_map names {key!r}, which is not a device of topology "
                f"{topology.name!r}; its devices are {names}"
            )
    return {key: canonical_device(value) for key, value in named.items()}


def resolve_device_map(topology: Topology, device_map: dict[str, str] | str | None) -> dict[str, str]:
    """Local device that runs each topology device.

    Args:
        device_map: ``{"cuda:1": "cpu"}`` (topology device -> local device), one local device
            string for all, or None. Devices not named must exist on this machine.

    Raises:
        ValueError: a key that is not a topology device, a value that is not a local device, or
            a topology device that this machine lacks and the map does not name.
    """
    local = local_devices()
    if isinstance(device_map, str) and canonical_device(device_map) not in local:
        raise ValueError(f"device_map={device_map!r} is not a device of this machine; local devices are {local}")
    named = named_device_map(topology, device_map)
    for key, value in named.items():
        if value not in local:
            raise ValueError(
                f"device_map[{key!r}] = {value!r} is not a device of this machine; local devices "
                f"are {local}"
            )
    mapping = {}
    for name in topology.device_names:
        if name in named:
            mapping[name] = named[name]
        elif name in local:
            mapping[name] = name
        else:
            raise ValueError(
                f"topology {topology.name!r} has device {name!r}, which this machine lacks "
                f"(local devices: {local}); map it with device_map={{{name!r}: 'cpu'}}, or "
                "device_map='cpu' to run every device on the CPU"
            )
    return mapping


def canonical_device(device: str) -> str:
    """``device`` as torch writes it, with ``"cuda"`` as ``"cuda:0"``.

    Raises:
        ValueError: not a device string.
    """
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device_map: {device!r} is not a device string; write devices as 'cpu' or 'cuda:0'"
        ) from exc
    if d.type == "cuda" and d.index is None:
        return "cuda:0"
    return str(d)


def origin_resolver(topology: Topology, mapping: dict[str, str]) -> Callable[[str], str]:
    """Map a device of the captured graph (``"cpu"``) to the topology device standing for it:
    the topology device of that name if it runs there, else the first one mapped there, else
    (when only planning, with no local devices involved) the first device of the same kind.
    Tensors on ``meta`` (a model built without memory, to be planned) stand for host tensors.

    The returned function raises ValueError when no topology device can stand for it.
    """

    def origin(local: str) -> str:
        if torch.device(local).type == "meta":  # a model built on meta to be planned only
            local = "cpu"
        local = canonical_device(local)
        if mapping.get(local) == local:
            return local
        for name, dev in mapping.items():
            if dev == local:
                return name
        kind = torch.device(local).type
        for d in topology.devices:
            if d.kind == kind:
                return d.name
        raise ValueError(
            f"the graph has tensors on {local!r}, but no device of topology {topology.name!r} "
            f"stands for it (device map {mapping}); add a {kind} device to the topology or map "
            f"one to {local!r} with device_map"
        )

    return origin


@dataclass
class Rewritten:
    """The rewritten, partitioned graph and what the runtime needs to run it."""

    module: torch.fx.GraphModule
    """Top-level graph calling ``submod_<i>`` partitions in order."""
    flat: torch.fx.GraphModule
    """The same graph before it was cut into partitions (same inputs and outputs)."""
    partition_devices: dict[str, str]
    """Partition submodule name -> topology device."""
    static_moves: dict[int, torch.device]
    """Placeholder index of a parameter/buffer -> local device it must be on."""
    pinned_inputs: list[int]
    """Placeholder indices of weights streamed from host memory to a GPU: page-lock them."""
    replica_sources: list[int]
    """For each placeholder added for a weight copy (after the graph's own ones, in order), the
    index of the graph input it copies: the runner passes that input again."""


def rewrite(gm: torch.fx.GraphModule, plan: Plan, mapping: dict[str, str]) -> Rewritten:
    """Apply ``plan`` to a copy of ``gm`` (which must carry the passes' records).

    Raises:
        ValueError: the plan does not match the graph (a compute node it does not place).
    """
    graph = torch.fx.Graph()
    value_map: dict[torch.fx.Node, torch.fx.Node] = {}
    out = graph.graph_copy(gm.graph, value_map)
    old_output = next(n for n in gm.graph.nodes if n.op == "output")
    graph.output(out)
    new_output = next(n for n in graph.nodes if n.op == "output")
    new_output.meta = dict(old_output.meta)
    module = torch.fx.GraphModule(gm, graph)

    placement = dict(plan.placement)
    local = {name: torch.device(dev) for name, dev in mapping.items()}
    by_name = {n.name: n for n in graph.nodes}

    for node in graph.nodes:
        if node.op in ("call_function", "call_method", "call_module"):
            if node.name not in placement:
                raise ValueError(f"plan {plan.graph_name!r} does not place node {node.name!r}")
            _retarget_devices(node, local[placement[node.name]])
            if node.op == "call_module":
                _move_submodule(module, node, local[placement[node.name]])
        elif node.op == "get_attr" and node.name in placement:
            _move_attr(module, str(node.target), local[placement[node.name]])

    inserted = _insert_transfers(graph, plan, placement, local, by_name)
    replica_sources = _insert_replicas(module, graph, plan, placement, local, by_name)
    _prefetch_streamed(graph, inserted, placement)
    _coalesce(graph, inserted, placement, local)
    _keep_grad_through_copies(graph, placement)

    static_moves = {}
    for i, node in enumerate(n for n in graph.nodes if n.op == "placeholder"):
        if record(node).role in ("parameter", "buffer") and node.name in placement:
            static_moves[i] = local[placement[node.name]]

    pinned = sorted(
        i for i, node in enumerate(n for n in graph.nodes if n.op == "placeholder")
        if any(u.target is start_transfer and local[placement[u.name]].type == "cuda" for u in node.users)
    )
    partition_of, starts = _runs(graph, placement)
    module.recompile()
    split = split_module(
        module, module, lambda n: partition_of[n], keep_original_order=True
    )
    return Rewritten(
        module=split,
        flat=module,
        partition_devices={f"submod_{i}": placement[n.name] for i, n in enumerate(starts)},
        pinned_inputs=pinned,
        static_moves=static_moves,
        replica_sources=replica_sources,
    )


def _insert_transfers(
    graph: torch.fx.Graph,
    plan: Plan,
    placement: dict[str, str],
    local: dict[str, torch.device],
    by_name: dict[str, torch.fx.Node],
) -> list[tuple[torch.fx.Node, Transfer, torch.fx.Node]]:
    """Insert the plan's transfers; returns (copy node, transfer, first reader) for each."""
    inserted = []
    for t in plan.transfers:
        src = by_name[t.source_node]
        if t.reason == "graph output":
            readers = [u for u in src.users if u.op == "output"]
        else:
            readers = [u for u in src.users if placement.get(u.name) == t.dst_device]
        if not readers:
            raise ValueError(f"plan transfer of {t.source_node!r} to {t.dst_device} has no reader")
        first = min(readers, key=_position(graph))
        with graph.inserting_before(first):
            if t.compression != "none":
                copy = graph.call_function(transfer_compressed, (src, local[t.dst_device], t.compression))
            else:
                copy = graph.call_function(transfer, (src, local[t.dst_device]))
        copy.meta = {k: v for k, v in src.meta.items() if k in ("val", "example_value", "nn_module_stack")}
        copy.meta[META_KEY] = NodeRecord(role="compute", tensors=record(src).tensors)
        placement[copy.name] = t.dst_device
        for reader in readers:
            reader.replace_input_with(src, copy)
        inserted.append((copy, t, first))
    return inserted


def _prefetch_streamed(
    graph: torch.fx.Graph, inserted: list[tuple[torch.fx.Node, Transfer, torch.fx.Node]], placement: dict[str, str]
) -> None:
    """Split each copy of a streamed weight into ``start_transfer`` and ``wait_transfer``, and
    issue the start one layer ahead: before the wait of the previous reader's weights on the same
    device (readers in graph order; a reader is a layer's op, e.g. one linear)."""
    groups: dict[str, dict[torch.fx.Node, list[torch.fx.Node]]] = {}
    for copy_node, t, first in inserted:
        if t.reason.startswith("weights streamed"):
            groups.setdefault(t.dst_device, {}).setdefault(first, []).append(copy_node)
    for device, by_reader in groups.items():
        previous: torch.fx.Node | None = None
        for copies in by_reader.values():
            anchor = previous if previous is not None else copies[0]
            for copy_node in copies:
                with graph.inserting_before(anchor):
                    start = graph.call_function(start_transfer, copy_node.args)
                start.meta = dict(copy_node.meta)
                placement[start.name] = device
                copy_node.target = wait_transfer
                copy_node.args = (start,)
            previous = copies[0]


def _coalesce(
    graph: torch.fx.Graph, inserted: list[tuple[torch.fx.Node, Transfer, torch.fx.Node]], placement: dict[str, str],
    local: dict[str, torch.device],
) -> None:
    """Send the small activations that cross from one device into one partition (a run of
    nodes on one device) as one buffer per dtype, at the start of the partition: their producers
    all run before it, on other devices.

    Tensors that require grad are sent one by one: the backward of one buffer would give an
    output nobody differentiates a zero gradient (and the parameters behind it zeros, where
    eager leaves ``None``), and its outputs, views of one ``split``, could not be modified in
    place."""
    run_of, run_start = _runs(graph, placement)
    groups: dict[tuple[int, str], list[tuple[torch.fx.Node, Transfer]]] = {}
    for copy_node, t, _ in inserted:
        value = node_value(copy_node)
        if (t.reason.startswith("weights streamed") or t.compression != "none"
                or not isinstance(value, torch.Tensor) or requires_grad(copy_node)):
            continue
        if t.nbytes <= COALESCE_MAX_BYTES:
            groups.setdefault((run_of[copy_node], t.src_device), []).append((copy_node, t))
    replaced: list[torch.fx.Node] = []
    for (run, _), members in groups.items():
        if len(members) < 2:
            continue
        dst = members[0][1].dst_device
        with graph.inserting_before(run_start[run]):
            packed = graph.call_function(
                transfer_coalesced, (tuple(c.args[0] for c, _ in members), local[dst])
            )
            placement[packed.name] = dst
            packed.meta[META_KEY] = NodeRecord(role="compute")
            for k, (copy_node, _) in enumerate(members):
                part = graph.call_function(operator.getitem, (packed, k))
                part.meta = dict(copy_node.meta)
                placement[part.name] = dst
                copy_node.replace_all_uses_with(part)
                replaced.append(copy_node)
    for copy_node in replaced:  # after every insertion: a copy may be a partition's first node
        graph.erase_node(copy_node)


_COPIES = (transfer, transfer_compressed, transfer_coalesced, start_transfer)


def _keep_grad_through_copies(graph: torch.fx.Graph, placement: dict[str, str]) -> None:
    """Run with grad enabled each copy that lands inside a ``torch.no_grad()`` region of the
    graph (before its first reader, or at the start of a partition) while a tensor it copies
    requires grad and a reader of the copy runs with grad enabled: made with grad disabled, the
    copy would cut autograd, and the parameters behind it would get no gradient.

    Grad mode is the call's (Dynamo guards on it, so it is the mode of this compile) up to the
    graph's first ``torch._C._set_grad_enabled`` node; the copy is wrapped in two more of them,
    which ``split_module`` carries into the partitions as it does the graph's own.
    """
    mode, modes = torch.is_grad_enabled(), {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target is torch._C._set_grad_enabled:
            mode = bool(node.args[0])
        modes[node] = mode

    def readers(node: torch.fx.Node) -> list[torch.fx.Node]:
        direct = list(node.users)
        passing = [u for u in direct if u.target in (operator.getitem, wait_transfer)]
        return [u for u in direct if u not in passing] + [r for u in passing for r in readers(u)]

    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _COPIES or modes[node]:
            continue
        if not any(requires_grad(n) for n in node.all_input_nodes):
            continue
        if not any(modes.get(r, False) for r in readers(node)):
            continue
        with graph.inserting_before(node):
            enable = graph.call_function(torch._C._set_grad_enabled, (True,))
        with graph.inserting_after(node):
            disable = graph.call_function(torch._C._set_grad_enabled, (False,))
        for switch in (enable, disable):
            switch.meta[META_KEY] = NodeRecord(role="compute")
            placement[switch.name] = placement[node.name]


def _runs(graph: torch.fx.Graph, placement: dict[str, str]) -> tuple[dict[torch.fx.Node, int], list[torch.fx.Node]]:
    """Partition of each placed node: maximal runs of one device in graph order (so the
    partition graph is acyclic); and the first node of each run."""
    run_of: dict[torch.fx.Node, int] = {}
    starts: list[torch.fx.Node] = []
    last_device = None
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        device = placement[node.name]
        if device != last_device:
            starts.append(node)
            last_device = device
        run_of[node] = len(starts) - 1
    return run_of, starts


def _insert_replicas(
    module: torch.fx.GraphModule,
    graph: torch.fx.Graph,
    plan: Plan,
    placement: dict[str, str],
    local: dict[str, torch.device],
    by_name: dict[str, torch.fx.Node],
) -> list[int]:
    """Give the readers of a weight on a second device their own copy of it (kept, not copied
    per call): a new placeholder the runner fills with the same input (moved once by the static
    copy cache), or a moved copy of a constant. Returns the source index of each new
    placeholder."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    index = {n: i for i, n in enumerate(placeholders)}
    sources: list[int] = []
    for rep in plan.replicas:
        src = by_name[rep.source_node]
        readers = [u for u in src.users if placement.get(u.name) == rep.dst_device]
        if not readers:
            raise ValueError(f"plan copies {rep.source_node!r} to {rep.dst_device}, which has no reader of it")
        tag = f"{src.name}_on_{rep.dst_device.replace(':', '_').replace('/', '_')}"
        if src.op == "placeholder":
            with graph.inserting_after(placeholders[-1]):
                copy_node = graph.placeholder(tag)
            placeholders.append(copy_node)
            sources.append(index[src])
        else:
            value = functools.reduce(getattr, str(src.target).split("."), module)
            moved = value.to(local[rep.dst_device])
            if isinstance(value, torch.nn.Parameter):
                moved = torch.nn.Parameter(moved, requires_grad=value.requires_grad)
            setattr(module, tag, moved)
            with graph.inserting_before(min(readers, key=_position(graph))):
                copy_node = graph.get_attr(tag)
        copy_node.meta = {k: v for k, v in src.meta.items() if k in ("val", "example_value", "tensor_dict")}
        copy_node.meta[META_KEY] = NodeRecord(role=record(src).role, tensors=record(src).tensors)
        placement[copy_node.name] = rep.dst_device
        for reader in readers:
            reader.replace_input_with(src, copy_node)
    return sources


def _position(graph: torch.fx.Graph) -> Callable[[torch.fx.Node], int]:
    order = {n: i for i, n in enumerate(graph.nodes)}
    return order.__getitem__


def _retarget_devices(node: torch.fx.Node, device: torch.device) -> None:
    """Point the node's device constants at ``device``."""

    def swap(arg: Any) -> Any:
        return device if isinstance(arg, torch.device) else arg

    node.args = tree_map(swap, node.args)
    node.kwargs = tree_map(swap, node.kwargs)
    if isinstance(node.kwargs.get("device"), str):
        node.update_kwarg("device", device)
    if node.op == "call_method":
        if node.target in ("cuda", "cpu"):
            node.target = "to"
            node.args = (node.args[0], device)
            node.kwargs = {k: v for k, v in node.kwargs.items() if k == "non_blocking"}
        elif node.target == "to":
            node.args = tuple(
                device if isinstance(a, str) and _is_device_string(a) else a for a in node.args
            )


def _is_device_string(value: str) -> bool:
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return False
    return True


def _move_submodule(module: torch.fx.GraphModule, node: torch.fx.Node, device: torch.device) -> None:
    """Point a ``call_module`` node at a copy of its module on ``device`` (the user's module is
    left where it is). The copy is made once, at compile time."""
    sub = module.get_submodule(str(node.target))
    state = [*sub.parameters(), *sub.buffers()]
    if all(t.device == device for t in state):
        return
    name = f"_autopart_{str(node.target).replace('.', '_')}_{device.type}{device.index or 0}"
    if not hasattr(module, name):
        module.add_submodule(name, copy.deepcopy(sub).to(device))
    node.target = name


def _move_attr(module: torch.nn.Module, target: str, device: torch.device) -> None:
    *path, name = target.split(".")
    owner = module
    for atom in path:
        owner = getattr(owner, atom)
    value = getattr(owner, name)
    if not isinstance(value, torch.Tensor) or value.device == device:
        return
    with torch.no_grad():
        moved = value.to(device)
    if isinstance(value, torch.nn.Parameter):
        moved = torch.nn.Parameter(moved, requires_grad=value.requires_grad)
    setattr(owner, name, moved)
