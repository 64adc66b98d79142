"""Pictures of a plan: where each task runs, how busy each device is, what it holds, and what
crosses between devices.

:func:`plot_plan` draws four panels from a :class:`~autopart.plan.Plan` alone, so it works
offline too, on plans loaded from JSON:

1. the tasks in execution order (the order the runtime runs them), one bar per task, as wide
   as the task's predicted time on its device (ms) and coloured by device;
2. each device's predicted busy time per call (ms): the forward pass (its compute and the
   copies it receives) and, in a training plan, the backward pass; with ``measured`` times
   (``Compilation.plot`` passes ``monitor``'s) a black marker for what was measured;
3. each device's memory (MiB): the predicted peak, of which the resident bytes (weights, and
   in training their gradients, optimizer state and saved activations), and its capacity;
4. the devices as a graph (networkx), an arrow for each pair that copies activations or
   streamed weights on every call, labelled with the MiB per call.

matplotlib draws them; it is an optional dependency (``pip install autopart[viz]``).

:func:`to_dot` draws the graph itself, node by node, in Graphviz's DOT language (pydot, also in
the ``viz`` extra): each node filled with its device's colour, and each tensor that crosses
devices drawn bold and labelled with its size.
"""

from __future__ import annotations

import importlib
import os
import shutil
from typing import TYPE_CHECKING, Any

from .config import check_type, format_bytes
from .graph import AnnotatedGraph
from .passes.records import RESIDENT_ROLES
from .plan import Plan, _ms

if TYPE_CHECKING:
    import pydot
    from matplotlib.figure import Figure

MiB = 2**20


def device_colors(plan: Plan) -> dict[str, tuple[float, float, float, float]]:
    """One colour per topology device of ``plan`` (matplotlib's ``tab10``, in topology order)."""
    cmap = _import("matplotlib", "plots").colormaps["tab10"]
    return {d: cmap(i % cmap.N) for i, d in enumerate(_devices(plan))}


def _devices(plan: Plan) -> list[str]:
    return list(dict.fromkeys([*plan.capacity_bytes, *(t.device for t in plan.tasks)]))


def plot_plan(
    plan: Plan,
    path: str | os.PathLike | None = None,
    *,
    measured_s: dict[str, float] | None = None,
    measured_backward_s: dict[str, float] | None = None,
) -> Figure:
    """Draw ``plan`` (module docstring) and return the matplotlib Figure; with ``path``, also
    save it there, in the format its suffix names (``.png``, ``.svg``, ``.pdf``, ...).

    Args:
        measured_s: measured forward busy seconds per call per device, to mark next to the
            predicted ones (e.g. :meth:`autopart.runtime.PlacedGraph.measured_busy_s`).
        measured_backward_s: the same for the backward pass.

    Raises:
        ImportError: matplotlib is not installed (the fix: ``pip install autopart[viz]``).
        ValueError: ``path``'s suffix names no format matplotlib can write.
    """
    check_type(plan, Plan, "plan", "load a saved one with autopart.Plan.load")
    for name, value in (("measured_s", measured_s), ("measured_backward_s", measured_backward_s)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict of seconds per device, got {type(value).__name__}")
    Figure = _import("matplotlib.figure", "plots").Figure  # no pyplot: no GUI backend, no global state
    if path is not None:
        check_picture_path(path, "plot")
    colors = device_colors(plan)
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    axes = fig.subplot_mosaic([["tasks", "tasks"], ["busy", "memory"], ["busy", "flow"]],
                              height_ratios=[0.5, 1, 1])
    fig.suptitle(
        f"autopart plan for {plan.graph_name} on {plan.topology_name} "
        f"({plan.objective_name}{', training' if plan.training else ''}): predicted "
        f"{_ms(plan.predicted_time_s)} per call, {plan.solver_status}"
    )
    _tasks(axes["tasks"], plan, colors)
    _busy(axes["busy"], plan, colors, measured_s, measured_backward_s)
    _memory(axes["memory"], plan, colors)
    _flow(axes["flow"], plan, colors)
    if path is not None:
        fig.savefig(path)
    return fig


def _import(module: str, what: str) -> Any:
    """``module``, or an ImportError that says how to install autopart's ``viz`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"autopart's {what} need {module.split('.')[0]}: pip install autopart[viz] (matplotlib and pydot)"
        ) from exc


def check_picture_path(path: str | os.PathLike, kind: str) -> None:
    """Raise ValueError unless ``path`` can take a picture of ``kind``: ``"plot"``
    (:func:`plot_plan`: a suffix matplotlib writes) or ``"dot"`` (:func:`write_dot`: ``.dot``,
    ``.gv``, or a format Graphviz renders, with Graphviz's ``dot`` program on the PATH), in a
    folder that exists. Needs matplotlib, or pydot."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    if kind == "plot":
        canvas = _import("matplotlib.backend_bases", "plots").FigureCanvasBase
        formats = set(canvas.get_supported_filetypes())
        fix = f"give the file one of the suffixes {', '.join('.' + f for f in sorted(formats))}"
    else:
        formats = {"dot", "gv", *_import("pydot", "graph pictures").Dot().formats}
        fix = "give the file the suffix .dot or .gv (DOT text), or .svg, .png, .pdf (rendered by Graphviz)"
    if suffix not in formats:
        raise ValueError(f"cannot save a {'plot' if kind == 'plot' else 'graph'} as {path!r}: {fix}")
    if kind == "dot" and suffix not in ("dot", "gv") and shutil.which("dot") is None:
        raise ValueError(
            f"rendering {path!r} needs Graphviz's dot program, which is not installed: install "
            "Graphviz, or write a .dot file and render it with `dot -Tsvg`"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot save {path!r}: folder {folder!r} does not exist")


def _used(plan: Plan) -> list[str]:
    """Devices that run tasks, hold bytes or have capacity, in topology order."""
    busy = {t.device for t in plan.tasks if t.num_nodes}
    return [
        d for d in _devices(plan)
        if d in busy or plan.capacity_bytes.get(d, 0) or plan.predicted_peak_bytes.get(d, 0)
    ]


def _tasks(ax, plan: Plan, colors) -> None:
    start = 0.0
    for t in plan.tasks:
        if not t.num_nodes or t.time_s <= 0:
            continue
        width = t.time_s * 1e3
        ax.barh(0, width, left=start, color=colors[t.device], edgecolor="white", label=t.device)
        start += width
        if t.stream_time_s:  # its weights' copy from the host, hatched
            ax.barh(0, t.stream_time_s * 1e3, left=start, color=colors[t.device], edgecolor="white",
                    hatch="//", label=f"{t.device}: weights copied from {t.streamed_from}")
            start += t.stream_time_s * 1e3
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper right", ncols=min(len(unique), 6), fontsize="small")
    ax.set_yticks([])
    ax.set_xlabel("ms (tasks in execution order, each as wide as its predicted time; hatched: streamed weights' copy)")
    ax.set_title(f"where the {sum(1 for t in plan.tasks if t.num_nodes and t.time_s > 0)} tasks run")


def _busy(ax, plan: Plan, colors, measured_s, measured_backward_s) -> None:
    devices = _used(plan)
    forward = [plan.predicted_busy_s.get(d, 0.0) * 1e3 for d in devices]
    backward = [plan.predicted_backward_busy_s.get(d, 0.0) * 1e3 for d in devices]
    ax.bar(devices, forward, color=[colors[d] for d in devices], label="forward")
    if any(backward):
        ax.bar(devices, backward, bottom=forward, color=[colors[d] for d in devices], alpha=0.5,
               hatch="//", label="backward")
    for label, seconds, base, marker in (
        ("measured forward", measured_s, [0.0] * len(devices), "o"),
        ("measured backward", measured_backward_s, forward, "x"),
    ):
        if seconds:
            ys = [seconds.get(d, 0.0) * 1e3 + b for d, b in zip(devices, base)]
            ax.scatter(devices, ys, color="black", marker=marker, zorder=3, label=label)
    title = "busy time per call, predicted"
    if plan.predicted_optimizer_s:
        title += f" (and {_ms(plan.predicted_optimizer_s)} of optimizer step)"
    ax.set_title(title)
    ax.set_ylabel("ms")
    ax.legend(fontsize="small")


def _memory(ax, plan: Plan, colors) -> None:
    devices, resident = _used(plan), plan.resident_bytes
    peak = [plan.predicted_peak_bytes.get(d, 0) / MiB for d in devices]
    ax.bar(devices, peak, color=[colors[d] for d in devices], alpha=0.5, label="predicted peak")
    ax.bar(devices, [resident.get(d, 0) / MiB for d in devices], color=[colors[d] for d in devices], label="resident")
    ax.scatter(devices, [plan.capacity_bytes.get(d, 0) / MiB for d in devices], marker="_", s=900,
               color="black", zorder=3, label="capacity")
    ax.set_title("memory per device")
    ax.set_ylabel("MiB")
    ax.legend(fontsize="small")


def _flow(ax, plan: Plan, colors) -> None:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(_used(plan))
    for t in plan.transfers:
        graph.add_nodes_from([t.src_device, t.dst_device])
        old = graph.get_edge_data(t.src_device, t.dst_device, {"nbytes": 0})["nbytes"]
        graph.add_edge(t.src_device, t.dst_device, nbytes=old + t.nbytes)
    pos = nx.circular_layout(graph)
    nx.draw_networkx(graph, pos, ax=ax, node_color=[colors.get(d, "grey") for d in graph.nodes],
                     node_size=1400, font_size=8, connectionstyle="arc3,rad=0.15", arrowsize=15)
    labels = {(u, v): format_bytes(d["nbytes"]) for u, v, d in graph.edges(data=True)}
    nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, ax=ax, font_size=7,
                                 connectionstyle="arc3,rad=0.15")
    ax.set_title(f"copies per call between devices: {len(plan.transfers)} tensors")
    ax.margins(0.25)
    ax.set_axis_off()


def to_dot(plan: Plan, graph: AnnotatedGraph, *, weights: bool = False) -> pydot.Dot:
    """``graph`` (the annotated graph ``plan`` places) as a DOT picture: one node per FX node,
    labelled with its name and target and filled with its device's colour
    (:func:`device_colors`); an edge per tensor read, bold and labelled with its size where it
    crosses devices (an activation is copied on every call, a weight once). ``weights``: draw
    parameters, buffers and constants too (they are many: GPT-2 has about 150).

    Write it with ``.to_string()`` (DOT text) or :func:`write_dot`.

    Raises:
        TypeError: ``plan`` or ``graph`` of another type.
        ValueError: ``plan`` places nodes ``graph`` does not have (a plan of another graph).
        ImportError: pydot or matplotlib is not installed (``pip install autopart[viz]``).
    """
    check_type(plan, Plan, "plan", "load a saved one with autopart.Plan.load")
    check_type(graph, AnnotatedGraph, "graph", "load a saved one with autopart.AnnotatedGraph.load")
    names = {n.name for n in graph.nodes}
    strangers = [name for name in plan.placement if name not in names]
    if strangers:
        raise ValueError(
            f"plan {plan.graph_name!r} places nodes graph {graph.name!r} does not have ({strangers[:3]}, "
            f"{len(strangers)} in all): pass the graph the plan was made for (Compilation.analysis.graph)"
        )
    pydot = _import("pydot", "graph pictures")
    to_hex = _import("matplotlib.colors", "graph pictures").to_hex
    colors = {d: to_hex(c) for d, c in device_colors(plan).items()}
    dot = pydot.Dot(graph_name="autopart", graph_type="digraph", rankdir="TB", fontsize="10",
                    label=f"{plan.graph_name} on {plan.topology_name}: nodes coloured by device",
                    fontname="Helvetica")
    dot.set_node_defaults(shape="box", style="filled,rounded", fontsize="9", fontname="Helvetica")
    shown = {n.name for n in graph.nodes if weights or n.role not in RESIDENT_ROLES}
    used = {plan.placement.get(name) for name in shown}
    for d, color in colors.items():  # a legend
        if d in used:
            dot.add_node(pydot.Node(_quote(f"device {d}"), label=d, fillcolor=color, shape="ellipse"))
    for n in graph.nodes:
        if n.name in shown:
            device = plan.placement.get(n.name, "")
            label = f"{n.name}\n{n.target}" if n.op in ("call_function", "call_method", "call_module") else n.name
            dot.add_node(pydot.Node(_quote(n.name), label=label, fillcolor=colors.get(device, "#dddddd"),
                                    tooltip=f"{n.op} {n.target} on {device or '-'}"))
    for n in graph.nodes:
        if n.name not in shown:
            continue
        for src in dict.fromkeys(n.inputs):
            if src not in shown:
                continue
            a, b = plan.placement.get(src), plan.placement.get(n.name)
            if a and b and a != b:
                nbytes = graph.node(src).output_bytes
                dot.add_edge(pydot.Edge(_quote(src), _quote(n.name), penwidth="2.5", color="#d62728",
                                        label=format_bytes(nbytes), fontsize="8"))
            else:
                dot.add_edge(pydot.Edge(_quote(src), _quote(n.name)))
    return dot


def write_dot(dot: pydot.Dot, path: str | os.PathLike) -> None:
    """Write ``dot`` to ``path``: DOT text for ``.dot`` or ``.gv``, else rendered by Graphviz in
    the format the suffix names (``.svg``, ``.png``, ``.pdf``).

    Raises:
        ValueError: a suffix that names no format, a folder that does not exist, or rendering
            without Graphviz's ``dot`` program.
    """
    check_picture_path(path, "dot")
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if suffix in ("dot", "gv"):
        with open(path, "w") as f:
            f.write(dot.to_string())
        return
    dot.write(os.fspath(path), format=suffix)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'

