"""The ``autopart`` command: ``demo``, ``topology``, ``plan`` and ``solve``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import typing
from collections.abc import Sequence

from .config import TrainableParameters, format_bytes
from .passes.training import Optimizer
from .topology import Topology, presets

MODELS = ("gpt2", "bert", "llama", "vit", "resnet")


def build_model(name: str, size: str = "base"):
    """A transformers model with random weights from a config (no download), and example inputs.

    ``size="base"``: the published architecture's config (GPT-2 124M, BERT-base, ...);
    ``"tiny"``: a 2-layer, 64-wide version of the same architecture.

    Returns:
        (model in eval mode, dict of example keyword inputs, batch 1).

    Raises:
        ValueError: an unknown model name or size.
        ImportError: transformers is not installed.
    """
    import torch

    try:
        import transformers as tf
    except ImportError as exc:
        raise ImportError(
            "autopart builds its example models with transformers, which is not installed: "
            "pip install 'autopart[bench]' (or pip install transformers)"
        ) from exc

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODELS)}")
    if size not in ("base", "tiny"):
        raise ValueError(f"unknown size {size!r}; choose 'base' or 'tiny'")
    tiny = size == "tiny"
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    gen = torch.Generator().manual_seed(0)
    if name == "gpt2":
        cfg = (
            tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0)
            if tiny
            else tf.GPT2Config()
        )
        model = tf.GPT2LMHeadModel(cfg)
        inputs = {"input_ids": torch.randint(0, cfg.vocab_size, (1, 128), generator=gen)}
    elif name == "bert":
        cfg = tf.BertConfig(vocab_size=1000, **small) if tiny else tf.BertConfig()
        model = tf.BertForMaskedLM(cfg)
        inputs = {"input_ids": torch.randint(0, cfg.vocab_size, (1, 128), generator=gen)}
    elif name == "llama":
        cfg = (
            tf.LlamaConfig(vocab_size=1000, num_key_value_heads=2, **small)
            if tiny
            else tf.LlamaConfig(
                vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4,
            )
        )
        model = tf.LlamaForCausalLM(cfg)
        inputs = {"input_ids": torch.randint(0, cfg.vocab_size, (1, 128), generator=gen)}
    elif name == "vit":
        cfg = tf.ViTConfig(image_size=32, patch_size=8, **small) if tiny else tf.ViTConfig()
        model = tf.ViTForImageClassification(cfg)
        inputs = {"pixel_values": torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=gen)}
    else:
        cfg = (
            tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
            if tiny
            else tf.ResNetConfig()
        )
        model = tf.ResNetForImageClassification(cfg)
        inputs = {"pixel_values": torch.randn(1, 3, 224, 224, generator=gen)}
    return model.eval(), inputs


def _parse_pairs(pairs: Sequence[str] | None, what: str) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} expects DEVICE=VALUE, got {pair!r}")
        out[key] = value
    return out


def _load_topology(spec: str | None) -> Topology:
    from .config import Config

    return Config(topology=spec).resolve_topology()


def _this_machine_flags(args: argparse.Namespace) -> list[str]:
    """The ``topology`` flags given that apply to this machine's profile only."""
    flags = [] if args.profile is None else ["--profile" if args.profile else "--no-profile"]
    given = {"--refresh": args.refresh, "--budget": args.budget is not None,
             "--cache-dir": args.cache_dir is not None}
    return flags + [flag for flag, on in given.items() if on]


def cmd_topology(args: argparse.Namespace) -> int:
    if args.list:
        ignored = (["--save"] if args.save else []) + _this_machine_flags(args)
        if ignored:
            raise ValueError(f"--list only lists the bundled presets; drop {', '.join(ignored)} (or --list)")
        for name in presets():
            topo = Topology.preset(name)
            print(f"{name:24s} {len(topo.devices):3d} devices  {topo.description}")
        return 0
    if args.budget is not None and not args.budget > 0:
        raise ValueError(f"--budget must be seconds > 0, got {args.budget!r}")
    if args.refresh and args.profile is False:
        raise ValueError("--refresh re-profiles this machine; drop --no-profile")
    profile = True if args.refresh else args.profile
    if args.load or args.preset:
        given = [f for f in _this_machine_flags(args) if f != "--no-profile"]
        if given:
            raise ValueError(
                f"{', '.join(given)}: for this machine's profile; cannot be combined with "
                f"--{'load' if args.load else 'preset'} (drop one or the other)"
            )
        topo = _load_topology(args.load or args.preset)
        print(topo.table())
    else:
        from . import cache

        if profile:
            budget_s = 60.0 if args.budget is None else args.budget
            topo = cache.cached_profile(cache_dir=args.cache_dir, refresh=args.refresh,
                                        budget_s=budget_s)
            note = f"numbers: measured (cache folder {_cache_folder(args.cache_dir)})"
        elif profile is None:
            discovered = Topology.discover()
            cached, path = cache.load_cached_profile(cache_dir=args.cache_dir, topology=discovered)
            if cached is not None:
                topo, note = cached, f"numbers: measured, from {path}"
            else:
                topo = discovered
                note = ("numbers: nominal (no cached profile of this machine); "
                        "`autopart topology --profile` measures it in under a minute")
        else:
            topo, note = Topology.discover(), "numbers: nominal (--no-profile)"
        print(topo.table())
        print()
        print(note)
    if args.save:
        topo.save(args.save)
        print(f"saved {args.save}")
    return 0


def _cache_folder(cache_dir: str | None) -> str:
    from .cache import default_cache_dir

    return str(cache_dir or default_cache_dir())


def _plan_options(args: argparse.Namespace) -> dict:
    """Config options from the plan and solve flags, checked before any model is built.

    Raises:
        ValueError: a missing output folder, a picture suffix that cannot be drawn, or an energy
            flag given without ``--objective energy`` or alongside the other energy flag.
    """
    for flag in ("out", "export_graph"):  # --plot and --dot: check_picture_path below
        path = getattr(args, flag, None)
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"--{flag.replace('_', '-')} {path}: its folder does not exist")
    for flag in ("plot", "dot"):  # before planning, which takes a while
        if getattr(args, flag, None):
            from .viz import check_picture_path

            check_picture_path(getattr(args, flag), flag)
    energy = [f"--energy-{f}" for f in ("slack", "eta") if getattr(args, f"energy_{f}") is not None]
    if energy and args.objective != "energy":
        raise ValueError(f"{energy[0]} applies to --objective energy only, not {args.objective}; "
                         "add --objective energy")
    if len(energy) == 2:
        raise ValueError("--energy-eta replaces --energy-slack; give one of them")
    slack = {} if args.energy_slack is None else {"energy_slack": args.energy_slack}
    return dict(
        topology=args.topology,
        max_memory=_parse_pairs(args.max_memory, "--max-memory"),
        solver=args.solver,
        time_limit_s=args.time_limit,
        max_groups=args.max_groups,
        objective=args.objective,
        **slack,
        energy_eta=args.energy_eta,
        compression=args.compression,
        contiguous_stages=args.contiguous_stages,
        trainable_parameters=args.trainable_parameters or "copy",
    )


def _print_and_save(
    plans: list, args: argparse.Namespace, problems: list | None = None, graphs: list | None = None
) -> None:
    """Print each plan's summary (and, with ``--explain``, why each task runs where it does),
    save it as JSON (``--out``), draw it (``--plot``) and its graph (``--dot``), numbering the
    files when there are several plans."""

    def numbered(path: str, i: int) -> str:
        return _numbered(path, i, len(plans))

    out, plot, dot = args.out, args.plot, args.dot
    for i, plan in enumerate(plans):
        print(plan.summary())
        print()
        if args.explain:
            from .explain import explain

            print(explain(plan, problems[i]))
            print()
        if out:
            plan.save(numbered(out, i))
            print(f"saved {numbered(out, i)}")
        if plot:
            from .viz import plot_plan

            plot_plan(plan, numbered(plot, i))
            print(f"plotted {numbered(plot, i)}")
        if dot:
            from .viz import to_dot, write_dot

            write_dot(to_dot(plan, graphs[i]), numbered(dot, i))
            print(f"drew the graph to {numbered(dot, i)}")


def _numbered(path: str, i: int, count: int) -> str:
    """``path`` for file ``i`` of ``count``: numbered before its suffix when there are several."""
    stem, suffix = os.path.splitext(path)
    return path if count == 1 else f"{stem}.{i}{suffix}"


def cmd_plan(args: argparse.Namespace) -> int:
    from .dynamo import plan_model_backend

    options = _plan_options(args)
    if not args.training:
        given = [f for f in ("optimizer", "trainable_parameters") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to training plans only; add --training")
    model, inputs = build_model(args.model, args.size)
    if args.training:
        model.train()
    planner = plan_model_backend(
        model, inputs, device_map=args.device_map, training=args.training, optimizer=args.optimizer or "adam",
        **options
    )
    planned = [c for c in planner.compilations if c.plan is not None]
    _print_and_save(planner.plans, args, [c.problem for c in planned], [c.analysis.graph for c in planned])
    if args.export_graph:
        graphs = [c.analysis.graph for c in planner.compilations if c.analysis is not None]
        for i, graph in enumerate(graphs):
            stem = args.export_graph.removesuffix(".json")
            path = args.export_graph if len(graphs) == 1 else f"{stem}.{i}.json"
            graph.save(path)
            print(f"exported {graph.name} ({len(graph.nodes)} nodes) to {path}")
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    from .config import Config
    from .dynamo import solve_annotated
    from .graph import AnnotatedGraph

    config = Config.from_options(**_plan_options(args))
    graph = AnnotatedGraph.load(args.graph)
    if args.trainable_parameters is not None and not graph.has_backward:
        raise ValueError(f"--trainable-parameters applies to training graphs only; {args.graph} was not "
                         "exported with --training")
    plan, problem = solve_annotated(graph, config, config.resolve_topology())
    _print_and_save([plan], args, [problem], [graph])
    return 0


def _demo_gpus(preset: str, devices: int | None) -> list[str]:
    """The GPUs of ``preset`` that the demo gives memory: its first ``devices``, or all of them.

    Raises:
        ValueError: an unknown preset, one with fewer than 2 GPUs, or ``devices`` outside
            2 to the preset's number of GPUs.
    """

    def gpus_of(name: str) -> list[str]:
        return [d.name for d in Topology.preset(name).devices if d.kind == "cuda"]

    gpus = gpus_of(preset)
    if len(gpus) < 2:
        able = [name for name in presets() if len(gpus_of(name)) >= 2]
        raise ValueError(f"--preset {preset} has {len(gpus)} GPU(s), and the demo splits the model over 2 "
                         f"or more; choose a preset with 2 GPUs or more: {', '.join(able)}")
    if devices is None:
        return gpus
    if not 2 <= devices <= len(gpus):
        allowed = "2" if len(gpus) == 2 else f"2 to {len(gpus)}"
        raise ValueError(f"--devices {devices}: the demo splits the model over 2 GPUs or more and preset "
                         f"{preset} has {len(gpus)}; give {allowed}, or leave it out for all")
    return gpus[:devices]


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from . import backend

    gpus = _demo_gpus(args.preset, args.devices)  # before the minutes of work
    if args.rows < 1:
        raise ValueError(f"--rows must be 1 or more (rows per table in the plan summaries), got {args.rows}")
    if args.plot:
        from .viz import check_picture_path

        check_picture_path(args.plot, "plot")

    def timed(label: str, fn):
        start = time.perf_counter()
        out = fn()
        print(f"{label}: {time.perf_counter() - start:.2f} s")
        return out

    print(f"building {args.model} ({args.size}) with random weights ...")
    model, inputs = build_model(args.model, args.size)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    with torch.no_grad():
        reference = timed("eager forward", lambda: _main_output(model(**inputs)))

    def run(label: str, **options) -> list:
        print(f"\n=== {label} ===")
        torch._dynamo.reset()
        be = backend(strict=True, monitor=True, **options)
        compiled = torch.compile(model, backend=be)
        with torch.no_grad():
            out = timed("compile + first call", lambda: _main_output(compiled(**inputs)))
            timed("second call", lambda: compiled(**inputs))
        diff = (out - reference).abs().max().item()
        print(f"largest absolute difference from eager: {diff:.3e}")
        for comp in be.compilations:
            print()
            print(comp.plan.summary(max_rows=args.rows))
            print()
            print(comp.explain(max_rows=args.rows))
            print()
            print(comp.report())  # the second call, timed against the plan
        return be.compilations

    plans = [c.plan for c in run("this machine", topology=None)]
    # Each GPU may hold the activations' peak on this machine and a share of the weights, 1.5
    # times them over all GPUs (at most 40% each when there are 4 or more): none holds the
    # model, so the plan must split it.
    activations = max(0, max(sum(p.predicted_peak_bytes.values()) for p in plans) - weight_bytes)
    cap = int(weight_bytes * max(0.4, 1.5 / len(gpus))) + activations
    split = run(f"{args.preset} mapped onto this machine's CPU, max_memory {format_bytes(cap)} per GPU",
                topology=args.preset, device_map="cpu", max_memory={g: cap for g in gpus})
    for i, comp in enumerate(split if args.plot else []):
        comp.plot(_numbered(args.plot, i, len(split)))
        print(f"plotted {_numbered(args.plot, i, len(split))}")
    return 0


def _main_output(out):
    return out.logits if hasattr(out, "logits") else out[0]


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", metavar="PRESET|FILE", help="default: this machine")
    p.add_argument(
        "--max-memory", nargs="+", action="extend", metavar="DEV=SIZE", help="e.g. cuda:0=10GiB cpu=30GB"
    )
    p.add_argument(
        "--objective", choices=("latency", "throughput", "energy"), default="latency",
        help="what to minimize (default latency)",
    )
    p.add_argument(
        "--energy-slack", type=float, default=None, metavar="FRACTION",
        help="energy objective: the time may exceed the fastest plan's by this fraction (default 0.1)",
    )
    p.add_argument(
        "--energy-eta", type=float, default=None, metavar="ETA",
        help="energy objective, instead of --energy-slack: minimize Zeus's eta * energy + "
        "(1 - eta) * max power * time, eta in [0, 1] (1: energy alone, 0: time alone)",
    )
    p.add_argument(
        "--compression", choices=("none", "bf16", "int8"), default="none",
        help="lossy compression allowed for activations on slow links (default none)",
    )
    p.add_argument("--solver", choices=("auto", "highs", "cbc"), default="auto")
    p.add_argument("--time-limit", type=float, default=10.0, help="solver seconds (default 10)")
    p.add_argument("--max-groups", type=int, default=32, help="coarsening target (default 32)")
    p.add_argument(
        "--contiguous-stages", action="store_true",
        help="each device runs one contiguous run of tasks in execution order (pipeline stages)",
    )
    p.add_argument(
        "--trainable-parameters", choices=typing.get_args(TrainableParameters),
        help="training: a trainable parameter planned away from the device it lives on is copied "
        "there every step, its gradient and optimizer state staying where it lives (copy, the "
        "default), or moved there once with them (move)",
    )
    p.add_argument("--out", metavar="FILE", help="save the plan as JSON")
    p.add_argument(
        "--explain", action="store_true",
        help="also print why each task runs where it does: its fastest device, and what moving "
        "it there alone would change (or the memory it would overflow)",
    )
    p.add_argument(
        "--plot", metavar="FILE",
        help="draw the plan (tasks, busy time, memory, copies between devices) as an image: "
        ".png, .svg or .pdf (needs matplotlib)",
    )
    p.add_argument(
        "--dot", metavar="FILE",
        help="draw the graph, its nodes coloured by device and the tensors crossing devices in "
        "bold: .dot (Graphviz's DOT text), or .svg, .png, .pdf rendered by Graphviz if installed",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopart",
        description="Plan and run PyTorch models over several devices (a torch.compile backend).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what autopart does")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="compile a transformers model on this machine and on a mapped multi-GPU preset",
        description="Compile a model (GPT-2 124M by default, random weights) with autopart twice: "
        "on this machine's topology, and on a multi-GPU preset whose devices run on the local CPU, "
        "with max_memory so small that the plan must split the model. Prints the largest absolute "
        "difference from eager, both plans, and each device's predicted against measured time.",
    )
    demo.add_argument("--model", choices=MODELS, default="gpt2", help="architecture (default gpt2)")
    demo.add_argument("--size", choices=("base", "tiny"), default="base", help="config size")
    demo.add_argument(
        "--preset", default="4xa100-pcie-cpu",
        help="preset with 2 GPUs or more to plan for (default 4xa100-pcie-cpu)",
    )
    demo.add_argument(
        "--devices", type=int, metavar="N",
        help="give memory to the preset's first N GPUs only, N >= 2 (default: all)",
    )
    demo.add_argument("--rows", type=int, default=8, help="rows per table in plan summaries")
    demo.add_argument(
        "--plot", metavar="FILE", help="draw the split plan, with the times measured, as an image (.png, .svg, .pdf)"
    )
    demo.set_defaults(func=cmd_demo)

    topo = sub.add_parser(
        "topology",
        help="print a topology (this machine, a preset, or a file); profile this machine",
        description="Print devices and links of this machine (default), a preset or a file. "
        "With --profile, this machine is measured (microbenchmarks, under a minute) and the "
        "result cached per machine fingerprint; later runs print the cached profile.",
    )
    src = topo.add_mutually_exclusive_group()
    src.add_argument("--preset", metavar="NAME", help=f"a bundled preset: {', '.join(presets())}")
    src.add_argument("--load", metavar="FILE", help="a topology JSON file")
    src.add_argument("--list", action="store_true", help="list the bundled presets")
    topo.add_argument("--save", metavar="FILE", help="write the topology as JSON")
    topo.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--profile: measure this machine (matmul FLOP/s per dtype, memory bandwidth, "
        "launch overhead, links, and the cost model's per-op-class calibration), or reuse its "
        "cached profile; --no-profile: nominal numbers "
        "from discovery. Default: the cached profile if there is one, else nominal numbers",
    )
    topo.add_argument(
        "--refresh", action="store_true", help="profile again even if a cached profile exists"
    )
    topo.add_argument(
        "--cache-dir", metavar="DIR",
        help="folder of cached profiles (default: the per-user cache folder, ~/.cache/autopart)",
    )
    topo.add_argument(
        "--budget", type=float, metavar="SECONDS", default=None,
        help="time for a profile, seconds (default 60; a soft limit: a profile takes at least about 10 s "
        "on a 2-core CPU)",
    )
    topo.set_defaults(func=cmd_topology)

    plan = sub.add_parser(
        "plan",
        help="plan a transformers model without running the plan",
        description="Build a transformers model from its config (random weights), plan it for a "
        "topology, print each graph's plan and optionally save it, and the annotated graph, as "
        "JSON.",
    )
    plan.add_argument("--model", choices=MODELS, default="gpt2", help="architecture (default gpt2)")
    plan.add_argument("--size", choices=("base", "tiny"), default="base", help="config size")
    plan.add_argument(
        "--device-map", metavar="DEVICE", help="run every topology device on this local device"
    )
    plan.add_argument(
        "--export-graph", metavar="FILE", help="save the annotated graph as JSON (for solve)"
    )
    plan.add_argument(
        "--training", action="store_true",
        help="plan a training step (model in train mode, gradients enabled): the plan also "
        "holds the parameters' gradients, the optimizer state and the activations saved for "
        "backward (default: inference)",
    )
    plan.add_argument(
        "--optimizer", choices=typing.get_args(Optimizer),
        help="with --training: the optimizer whose state is reserved (default adam)",
    )
    _add_plan_options(plan)
    plan.set_defaults(func=cmd_plan)

    solve = sub.add_parser(
        "solve",
        help="plan a saved annotated graph for a topology (no model needed)",
        description="Solve the placement of an annotated graph (exported with `autopart plan "
        "--export-graph`, or shipped in bench/graphs/) for a topology, print the plan and "
        "optionally save it (load it with autopart.Plan.load).",
    )
    solve.add_argument("--graph", required=True, metavar="FILE", help="annotated graph JSON")
    _add_plan_options(solve)
    solve.set_defaults(func=cmd_solve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"autopart: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`autopart topology | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
