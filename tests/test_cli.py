"""The autopart command line."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autopart import Plan, Topology
from autopart.cli import build_model, main

GPT2_GRAPH = Path(__file__).resolve().parent.parent / "bench" / "graphs" / "gpt2.json"


def test_help_for_every_subcommand(capsys):
    for argv in (["--help"], ["demo", "--help"], ["topology", "--help"], ["plan", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "--max-memory" in out and "--preset" in out and "--save" in out


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "autopart.cli", "topology", "--list"], capture_output=True, text=True, check=True
    ).stdout
    assert "8xh100-nvlink" in out and "4xa100-pcie-cpu" in out


def test_submodules_named_in_the_readme_need_no_import_of_their_own():
    code = ("import autopart; print(autopart.viz.plot_plan.__name__, autopart.explain.explain.__name__, "
            "autopart.baselines.run_baselines.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["plot_plan", "explain", "run_baselines"]


def test_topology_table_and_save(tmp_path, capsys):
    path = tmp_path / "t.json"
    assert main(["topology", "--preset", "hetero-a100-t4-cpu", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cuda:0" in out and "cuda:1" in out
    assert Topology.load(path) == Topology.preset("hetero-a100-t4-cpu")
    assert main(["topology", "--load", str(path)]) == 0


def test_plan_saves_a_loadable_plan(tmp_path, capsys):
    import torch

    torch._dynamo.reset()
    path = tmp_path / "plan.json"
    argv = ["plan", "--model", "gpt2", "--size", "tiny", "--topology", "4xa100-pcie-cpu",
            "--max-memory", "cuda:0=900KB", "cuda:1=900KB", "cuda:2=900KB", "cuda:3=900KB",
            "--out", str(path)]
    assert main(argv) == 0
    plan = Plan.load(path)
    assert len(plan.devices_used) >= 2
    assert "predicted time" in capsys.readouterr().out


def test_plan_training_reserves_training_memory_and_exports_a_training_graph(tmp_path, capsys):
    import torch

    from autopart.graph import AnnotatedGraph

    common = ["plan", "--model", "gpt2", "--size", "tiny", "--topology", "4xa100-pcie-cpu",
              "--max-memory", "cuda:0=3MiB", "cuda:1=3MiB", "cuda:2=3MiB", "cuda:3=3MiB", "cpu=0"]
    resident = {}
    for mode, extra in (("inference", []), ("sgd", ["--training", "--optimizer", "sgd"]),
                        ("adam", ["--training"]), ("adam-move", ["--training", "--trainable-parameters", "move"])):
        torch._dynamo.reset()
        path, graph_path = tmp_path / f"{mode}.json", tmp_path / f"{mode}-graph.json"
        assert main(common + extra + ["--out", str(path), "--export-graph", str(graph_path)]) == 0
        plan = Plan.load(path)
        assert plan.training == (mode != "inference")
        assert AnnotatedGraph.load(graph_path).training == plan.training
        resident[mode] = sum(t.resident_bytes for t in plan.tasks)
    assert "(objective: latency, for training)" in capsys.readouterr().out
    # The model lives on the CPU, which the plan may not use. Copied each step, a parameter
    # takes its copy and its gradient on its GPU (2w), and its optimizer state stays on the CPU,
    # outside the plan; moved, it takes its gradient and Adam's two moments there too (4w).
    # Saved activations come on top.
    assert resident["sgd"] >= 2 * resident["inference"]
    assert resident["adam"] == resident["sgd"]
    assert resident["adam-move"] >= resident["sgd"] + 2 * resident["inference"] * 0.99


def test_bad_input_is_an_error_message_not_a_traceback(capsys):
    assert main(["plan", "--model", "gpt2", "--size", "tiny", "--topology", "no-such-preset"]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'bloom'"):
        build_model("bloom")


def test_example_models_without_transformers_say_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    assert main(["plan", "--model", "gpt2", "--size", "tiny", "--topology", "4xa100-pcie-cpu"]) == 2
    assert "which is not installed: pip install 'autopart[bench]'" in capsys.readouterr().err


def test_demo_matches_eager_and_reports_predicted_against_measured(capsys, tmp_path):
    plot = tmp_path / "demo.png"
    drawn = importlib.util.find_spec("matplotlib") is not None  # the viz extra
    assert main(["demo", "--size", "tiny", "--rows", "2", *(["--plot", str(plot)] if drawn else [])]) == 0
    out = capsys.readouterr().out
    assert not drawn or (f"plotted {plot}" in out and plot.read_bytes()[:4] == b"\x89PNG")
    assert out.count("why graph 0 (compile id 0/0) is placed as it is (latency)") == 2
    diffs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("largest absolute")]
    assert len(diffs) == 2 and max(diffs) < 1e-5
    assert out.count("autopart monitor for graph 0") == 2 and "measured/predicted" in out
    used = re.search(r"on \d+ device\(s\): (.*)", out.split("=== 4xa100-pcie-cpu")[1]).group(1)
    assert len([d for d in used.split(", ") if d.startswith("cuda")]) >= 2, used


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "1x4090-cpu"], "--preset 1x4090-cpu has 1 GPU(s), and the demo splits the model over "
         "2 or more; choose a preset with 2 GPUs or more: 2x8xh100-ib, 4xa100-pcie-cpu"),
        (["--devices", "1"], "--devices 1: the demo splits the model over 2 GPUs or more and preset "
         "4xa100-pcie-cpu has 4; give 2 to 4, or leave it out for all"),
        (["--devices", "0"], "--devices 0: "),
        (["--devices", "9"], "--devices 9: "),
        (["--preset", "hetero-a100-t4-cpu", "--devices", "3"], "has 2; give 2, or leave it out for all"),
        (["--rows", "-3"], "--rows must be 1 or more (rows per table in the plan summaries), got -3"),
        (["--rows", "0"], "--rows must be 1 or more"),
        (["--preset", "nope"], "unknown topology preset 'nope'"),
    ],
)
def test_bad_demo_arguments_fail_before_building_the_model(argv, message, capsys, monkeypatch):
    import autopart.cli

    monkeypatch.setattr(autopart.cli, "build_model", lambda *a: pytest.fail("built the model"))
    assert main(["demo", "--size", "tiny", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("autopart: error: ") and message in captured.err
    assert captured.out == ""


def test_demo_gives_memory_to_every_gpu_of_the_preset_by_default():
    from autopart.cli import _demo_gpus

    assert _demo_gpus("hetero-a100-t4-cpu", None) == ["cuda:0", "cuda:1"]
    assert len(_demo_gpus("8xh100-nvlink", None)) == 8
    assert _demo_gpus("4xa100-pcie-cpu", 2) == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--list", "--save", "t.json"], "--list only lists the bundled presets; drop --save (or --list)"),
        (["--list", "--profile"], "drop --profile (or --list)"),
        (["--list", "--no-profile", "--budget", "5"], "drop --no-profile, --budget (or --list)"),
        (["--list", "--refresh", "--cache-dir", "d"], "drop --refresh, --cache-dir (or --list)"),
        (["--preset", "8xh100-nvlink", "--refresh"], "--refresh: for this machine's profile; cannot be "
         "combined with --preset (drop one or the other)"),
        (["--load", "t.json", "--budget", "5", "--cache-dir", "d"], "--budget, --cache-dir: for this "
         "machine's profile; cannot be combined with --load"),
    ],
)
def test_topology_rejects_options_it_would_ignore(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["topology", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("autopart: error: ") and message in captured.err
    assert captured.out == "" and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--energy-eta", "0.5"], "--energy-eta applies to --objective energy only, not latency; add "
         "--objective energy"),
        (["--objective", "throughput", "--energy-slack", "0.2"], "--energy-slack applies to --objective "
         "energy only, not throughput; add --objective energy"),
        (["--objective", "energy", "--energy-slack", "0.2", "--energy-eta", "0.5"],
         "--energy-eta replaces --energy-slack; give one of them"),
    ],
)
def test_energy_options_need_the_energy_objective(argv, message, capsys, monkeypatch):
    import autopart.cli

    monkeypatch.setattr(autopart.cli, "build_model", lambda *a: pytest.fail("built the model"))
    for command in (["plan", "--model", "gpt2", "--size", "tiny"], ["solve", "--graph", str(GPT2_GRAPH)]):
        assert main([*command, *argv, "--topology", "4xa100-pcie-cpu"]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("autopart: error: ") and message in captured.err
        assert captured.out == ""


def test_energy_slack_left_out_keeps_the_config_default():
    from autopart.cli import _plan_options, make_parser

    argv = ["solve", "--graph", "g.json", "--objective", "energy"]
    assert "energy_slack" not in _plan_options(make_parser().parse_args(argv))
    assert _plan_options(make_parser().parse_args([*argv, "--energy-slack", "0.3"]))["energy_slack"] == 0.3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-memory", "cuda:0"], "--max-memory expects DEVICE=VALUE, got 'cuda:0'"),
        (["--max-memory", "cuda:0=-5MB"], "memory size must be >= 0 bytes, got '-5MB'"),
        (["--out", "/no/such/folder/p.json"], "--out /no/such/folder/p.json: its folder does not exist"),
        (["--plot", "plan.xyz"], "cannot save a plot as 'plan.xyz': give the file one of the suffixes"),
        (["--dot", "graph.xyz"], "cannot save a graph as 'graph.xyz': give the file the suffix .dot or .gv"),
        (["--trainable-parameters", "move"], "--trainable-parameters applies to training graphs only; "
         f"{GPT2_GRAPH} was not exported with --training"),
        (["plan", "--optimizer", "sgd"], "--optimizer applies to training plans only; add --training"),
        (["plan", "--trainable-parameters", "move"], "--trainable-parameters applies to training plans only"),
    ],
)
def test_bad_plan_arguments_fail_before_planning(argv, message, capsys):
    if argv[0] == "plan":
        argv = ["plan", "--model", "gpt2", "--size", "tiny", *argv[1:]]
    else:
        argv = ["solve", "--graph", str(GPT2_GRAPH), *argv]
    assert main([*argv, "--topology", "4xa100-pcie-cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("autopart: error: ") and message in captured.err
    assert captured.out == ""  # nothing was planned or printed


def test_max_memory_given_twice_adds_up(tmp_path):
    path = tmp_path / "plan.json"
    assert main(["solve", "--graph", str(GPT2_GRAPH), "--topology", "4xa100-pcie-cpu", "--max-memory",
                 "cuda:0=1GB", "--max-memory", "cuda:1=1GB", "--out", str(path)]) == 0
    assert {d for d, cap in Plan.load(path).capacity_bytes.items() if cap} == {"cuda:0", "cuda:1"}


def test_plan_load_names_what_a_file_is_instead(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a plan is a JSON object, got list"):
        Plan.load(tmp_path / "list.json")
    with pytest.raises(ValueError, match="this is an annotated graph, not a plan: plan it with `autopart solve"):
        Plan.load(GPT2_GRAPH)
    with pytest.raises(ValueError, match=f"'{tmp_path}' is a folder; give the path of a plan JSON file"):
        Plan.load(tmp_path)
    with pytest.raises(TypeError, match="expected the path of a plan JSON file, got int 5"):
        Plan.load(5)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="plan file not found"):
        Plan.load(tmp_path / "none.json")
    main(["solve", "--graph", str(GPT2_GRAPH), "--topology", "4xa100-pcie-cpu", "--out", str(tmp_path / "p.json")])
    plan = json.loads((tmp_path / "p.json").read_text())
    plan["tasks"] = [{"name": "t", "color": "red"}]
    (tmp_path / "p.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match=r"p\.json: plan JSON: 'tasks' must be a list of TaskPlacement objects"):
        Plan.load(tmp_path / "p.json")


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`autopart topology | head`: the pipe closes before the table is printed."""
    proc = subprocess.Popen([sys.executable, "-m", "autopart.cli", "topology", "--preset", "2x8xh100-ib"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command, still importing torch, writes
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "Traceback" not in err and "BrokenPipeError" not in err, err
