"""Plan pictures: each panel draws the plan's own numbers (and monitor's measured ones)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib", reason="the viz extra (matplotlib, pydot) is not installed")
pytest.importorskip("pydot", reason="the viz extra (matplotlib, pydot) is not installed")

from matplotlib.colors import to_hex  # noqa: E402
from test_e2e import _mlp, model_bytes  # noqa: E402
from test_runtime import _inference_plan, _mlp_on_gpus  # noqa: E402

import autopart  # noqa: E402
from autopart.cli import main  # noqa: E402
from autopart.config import format_bytes  # noqa: E402
from autopart.graph import AnnotatedGraph  # noqa: E402
from autopart.viz import MiB, check_picture_path, device_colors, plot_plan, to_dot, write_dot  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # each test compiles with its own backend


def _axes(fig) -> dict[str, object]:
    """The four panels by the first word of their title."""
    return {ax.get_title().split()[0]: ax for ax in fig.axes}


def _bars(ax, label: str) -> list[float]:
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return [bar.get_height() for bar in container]


def test_plot_plan_draws_the_plans_tasks_busy_times_memory_and_copies():
    plan = _inference_plan()
    axes = _axes(plot_plan(plan))
    colors = device_colors(plan)
    assert len(set(colors.values())) == len(colors)

    drawn = [t for t in plan.tasks if t.num_nodes and t.time_s > 0]
    bars = axes["where"].patches
    assert [b.get_width() for b in bars] == pytest.approx([t.time_s * 1e3 for t in drawn])
    assert [b.get_facecolor() for b in bars] == [colors[t.device] for t in drawn]
    starts = [b.get_x() for b in bars]
    assert starts == pytest.approx([sum(t.time_s * 1e3 for t in drawn[:k]) for k in range(len(drawn))])

    devices = [label.get_text() for label in axes["busy"].get_xticklabels()]
    assert set(plan.devices_used) <= set(devices)
    assert _bars(axes["busy"], "forward") == pytest.approx([plan.predicted_busy_s.get(d, 0.0) * 1e3 for d in devices])
    assert not [c for c in axes["busy"].containers if c.get_label() == "backward"]  # inference

    assert [label.get_text() for label in axes["memory"].get_xticklabels()] == devices
    peak = _bars(axes["memory"], "predicted peak")
    assert peak == pytest.approx([plan.predicted_peak_bytes.get(d, 0) / MiB for d in devices])
    resident = {d: sum(t.resident_bytes for t in plan.tasks if t.device == d) / MiB for d in devices}
    assert _bars(axes["memory"], "resident") == pytest.approx([resident[d] for d in devices])
    (capacity,) = [c for c in axes["memory"].collections if c.get_label() == "capacity"]
    assert [y for _, y in capacity.get_offsets()] == pytest.approx([plan.capacity_bytes[d] / MiB for d in devices])

    pairs = {}
    for t in plan.transfers:
        pairs[t.src_device, t.dst_device] = pairs.get((t.src_device, t.dst_device), 0) + t.nbytes
    labels = sorted(text.get_text() for text in axes["copies"].texts if text.get_text().endswith("B"))
    assert labels == sorted(format_bytes(nbytes) for nbytes in pairs.values())
    assert f"{len(plan.transfers)} tensors" in axes["copies"].get_title()


def test_a_monitored_training_step_plots_backward_and_what_was_measured(tmp_path):
    model, backend, compiled = _mlp_on_gpus(training=True, squash=False, strict=True, monitor=True)
    x = torch.randn(8, 32)
    for _ in range(3):  # the first call is not timed
        compiled(x).sum().backward()
    (comp,) = backend.compilations
    path = tmp_path / "plan.png"
    axes = _axes(comp.plot(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan, busy = comp.plan, axes["busy"]
    devices = [label.get_text() for label in busy.get_xticklabels()]
    forward = [plan.predicted_busy_s.get(d, 0.0) * 1e3 for d in devices]
    assert _bars(busy, "backward") == pytest.approx([plan.predicted_backward_busy_s.get(d, 0.0) * 1e3 for d in devices])
    assert [b.get_y() for b in next(c for c in busy.containers if c.get_label() == "backward")] == pytest.approx(forward)
    marks = {c.get_label(): [y for _, y in c.get_offsets()] for c in busy.collections}
    measured = comp.runner.measured_busy_s()
    measured_backward = comp.runner.measured_backward_s().busy_s
    assert marks["measured forward"] == pytest.approx([measured.get(d, 0.0) * 1e3 for d in devices])
    assert marks["measured backward"] == pytest.approx(
        [f + measured_backward.get(d, 0.0) * 1e3 for d, f in zip(devices, forward)]
    )
    assert "optimizer step" in busy.get_title()


def test_memory_counts_what_a_task_holds_where_its_copied_parameters_live():
    """A training plan whose trainable parameters are copied to GPUs every step: their
    gradients and optimizer state count in the CPU's resident bar."""
    torch.manual_seed(0)
    model = _mlp().train()
    cap = int(model_bytes(model) * 1.5)
    (plan,) = autopart.plan_model(model, torch.randn(4, 16), training=True, topology="4xa100-pcie-cpu",
                                  max_memory={"cuda:0": cap, "cuda:1": cap, "cpu": 4 * cap})
    elsewhere = sum(t.held_elsewhere.get("cpu", 0) for t in plan.tasks)
    assert plan.step_copies and elsewhere > 0
    memory = _axes(plot_plan(plan))["memory"]
    devices = [label.get_text() for label in memory.get_xticklabels()]
    on_cpu = sum(t.resident_bytes for t in plan.tasks if t.device == "cpu") + elsewhere
    assert _bars(memory, "resident")[devices.index("cpu")] == pytest.approx(on_cpu / MiB)


def test_plot_names_the_suffixes_it_can_write(tmp_path):
    plan = _inference_plan()
    with pytest.raises(ValueError, match=r"cannot save a plot as '.*plan\.xyz': give the file one of the suffixes .*\.png"):
        plot_plan(plan, tmp_path / "plan.xyz")
    assert not (tmp_path / "plan.xyz").exists()


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    plan = _inference_plan()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"autopart's plots need matplotlib: pip install autopart\[viz\]"):
        plot_plan(plan)


def test_a_graph_run_as_captured_has_nothing_to_plot():
    model = torch.nn.Linear(32, 32)
    backend = autopart.backend(topology="4xa100-pcie-cpu", device_map="cpu", max_memory={"cuda:0": 16})
    with pytest.warns(autopart.AutopartWarning, match="could not plan"):
        torch.compile(model, backend=backend)(torch.randn(8, 32))
    (comp,) = backend.compilations
    with pytest.raises(ValueError, match="runs as captured .*nothing to plot"):
        comp.plot()


def test_cli_solve_plots_the_plan(tmp_path, capsys):
    path = tmp_path / "gpt2.svg"
    assert main(["solve", "--graph", "bench/graphs/gpt2.json", "--topology", "4xa100-pcie-cpu",
                 "--plot", str(path)]) == 0
    assert f"plotted {path}" in capsys.readouterr().out
    assert path.read_text().lstrip().startswith("<?xml")


@pytest.mark.filterwarnings("ignore:'[a-zA-Z]+' deprecated:DeprecationWarning")  # pydot's parser on pyparsing 3.3
def test_to_dot_colours_nodes_by_device_and_marks_the_tensors_that_cross(tmp_path):
    import pydot

    model, backend, compiled = _mlp_on_gpus()
    with torch.no_grad():
        compiled(torch.randn(8, 32))
    (comp,) = backend.compilations
    plan, graph = comp.plan, comp.analysis.graph
    path = tmp_path / "graph.dot"
    write_dot(to_dot(plan, graph), path)
    (dot,) = pydot.graph_from_dot_file(str(path))
    colors = {d: to_hex(c) for d, c in device_colors(plan).items()}
    drawn = {n.get_name().strip('"'): n for n in dot.get_nodes() if n.get_name() not in ("node", "edge")}
    shown = [n for n in graph.nodes if n.role not in ("parameter", "buffer", "constant")]
    for n in shown:
        assert drawn[n.name].get_fillcolor().strip('"') == colors[plan.placement[n.name]]
    legend = {name.removeprefix("device ") for name in drawn if name.startswith("device ")}
    assert legend == {plan.placement[n.name] for n in shown}
    crossing = 0
    for e in dot.get_edges():
        src, dst = e.get_source().strip('"'), e.get_destination().strip('"')
        crosses = plan.placement[src] != plan.placement[dst]
        assert (e.get_penwidth() is not None) == crosses
        if crosses:
            crossing += 1
            assert e.get_label().strip('"') == format_bytes(graph.node(src).output_bytes)
    expected = {(i, n.name) for n in shown for i in n.inputs if plan.placement.get(i) not in (None, plan.placement[n.name])
                and graph.node(i).role not in ("parameter", "buffer", "constant")}
    assert crossing == len(expected) > 0
    with_weights = to_dot(plan, graph, weights=True)
    assert len(with_weights.get_nodes()) == len(dot.get_nodes()) + sum(
        n.role in ("parameter", "buffer", "constant") for n in graph.nodes)


@pytest.mark.skipif(shutil.which("dot") is not None, reason="Graphviz is installed: rendering works")
def test_rendering_without_graphviz_says_to_write_dot_text(tmp_path):
    model, backend, compiled = _mlp_on_gpus()
    with torch.no_grad():
        compiled(torch.randn(8, 32))
    (comp,) = backend.compilations
    with pytest.raises(ValueError, match=r"needs Graphviz's dot program.*write a \.dot file"):
        write_dot(to_dot(comp.plan, comp.analysis.graph), tmp_path / "graph.svg")
    # the command line checks before it plans
    with pytest.raises(ValueError, match=r"rendering '.*graph\.png' needs Graphviz's dot program"):
        check_picture_path(tmp_path / "graph.png", "dot")
    check_picture_path(tmp_path / "graph.gv", "dot")


def test_cli_plan_draws_the_graph(tmp_path, capsys):
    path = tmp_path / "graph.dot"
    assert main(["plan", "--model", "gpt2", "--size", "tiny", "--topology", "4xa100-pcie-cpu",
                 "--max-memory", "cuda:0=3MiB", "cuda:1=3MiB", "cpu=0", "--dot", str(path)]) == 0
    assert f"drew the graph to {path}" in capsys.readouterr().out
    assert path.read_text().startswith("digraph autopart {")


def test_pictures_check_what_they_are_given(tmp_path):
    plan = _inference_plan()
    with pytest.raises(TypeError, match="plan must be an autopart Plan, got str; load a saved one with autopart.Plan.load"):
        plot_plan("plan.json")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="measured_s must be a dict of seconds per device, got list"):
        plot_plan(plan, measured_s=[1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="graph must be an autopart AnnotatedGraph, got NoneType"):
        to_dot(plan, None)  # type: ignore[arg-type]
    other = AnnotatedGraph.load(Path(__file__).resolve().parents[1] / "bench" / "graphs" / "bert.json")
    with pytest.raises(ValueError, match="places nodes graph 'bert' does not have .*pass the graph the plan was made for"):
        to_dot(plan, other)
    with pytest.raises(ValueError, match="folder .*no-such-folder' does not exist"):
        plot_plan(plan, tmp_path / "no-such-folder" / "plan.png")
