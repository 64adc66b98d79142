"""Backward cost: predicted against measured time of a training step's forward and backward.

For each model of bench/costmodel.py (transformers architectures with random weights, batch 1,
eval mode so that dropout is off; gradients enabled): capture the graph with Dynamo once, with
gradients enabled, as ``torch.compile`` does for a training step. Then, in each of
``--rounds`` rounds: profile and calibrate this machine (or load ``--topology``), predict each
node's forward and backward time (:mod:`autopart.passes.training` costs the aten ops autograd
runs for each node's backward) and measure, alternately, the best (least) time over runs of

- the forward alone, gradients enabled (autograd records what backward needs), and
- the forward followed by ``torch.autograd.backward`` of every output that requires grad,
  seeded with ones (parameters' ``.grad`` set to None before each run, as
  ``optimizer.zero_grad()`` does);

backward = step - forward. Then the optimizer step on its own: ``--optimizer`` (torch.optim's
default settings) over the parameters, after a first step that makes its state; predicted as
the sum of each trainable parameter's update (:func:`autopart.passes.training.optimizer_step`).
Why the least time: see bench/costmodel.py. Prints predicted against measured per model and
round (from the round with the median step error), and writes
bench/results/backward-<machine>-<date>.{md,json}.

    python bench/backward.py [--models gpt2 bert llama resnet] [--rounds 2] [--repeats 7]
        [--budget 30] [--topology FILE] [--device cpu|cuda:0] [--optimizer adam|adamw|sgd|sgd_momentum]
        [--out bench/results] [--no-write] [--tag TAG]

The header records the host allocator's settings (``LD_PRELOAD``, glibc's ``MALLOC_*``
variables): with glibc's defaults a CPU training step pays page faults on memory it allocates
anew (saved activations, gradients), which the profile measures and the cost model counts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from collections import defaultdict

import torch
from _common import add_results_options, git_state, machine_name, write_results
from costmodel import capture_models, rel, time_samples_s

import autopart
from autopart.profiler import profile_topology


def step_timers(gm, inputs):
    """(forward, forward + backward) as functions of no arguments (module docstring)."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward():
        with torch.enable_grad():
            return gm(*inputs)

    def step():
        for t in leaves:
            t.grad = None
        outs = [o for o in torch.utils._pytree.tree_leaves(forward()) if isinstance(o, torch.Tensor) and o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return forward, step


OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-3),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
}


def measure(name: str, gm, inputs, topology, device: str, repeats: int, optimizer: str) -> dict:
    """One round for one model: predict with ``topology``, then measure."""
    analysis = autopart.analyze(gm, inputs, topology, optimizer=optimizer)
    graph = analysis.graph
    fwd_pred = sum(t[device] for t in graph.node_times(topology).values())
    bwd_pred = sum(t[device] for t in graph.node_times(topology, backward=True).values())
    opt_pred = sum(t[device] for t in graph.node_times(topology, step=True).values())
    forward, step = step_timers(gm, inputs)
    fwd, both = [], []
    for _ in range(repeats):  # alternate, so that both see the same moments of the machine
        fwd += time_samples_s(forward, 1, min_time_s=0.0)
        both += time_samples_s(step, 1, min_time_s=0.0)
    fwd_meas, step_meas = min(fwd), min(both)
    params = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad and t.grad is not None]
    update = OPTIMIZERS[optimizer](params)
    update.step()  # makes the state
    opt = time_samples_s(update.step, repeats, min_time_s=0.0)
    return {
        "model": name,
        "nodes": sum(n.is_compute for n in graph.nodes),
        "unknown_nodes": len(analysis.training.unknown),
        "forward_measured_s": fwd_meas,
        "forward_predicted_s": fwd_pred,
        "backward_measured_s": step_meas - fwd_meas,
        "backward_predicted_s": bwd_pred,
        "step_measured_s": step_meas,
        "step_median_s": statistics.median(both),
        "step_predicted_s": fwd_pred + bwd_pred,
        "step_error": rel(fwd_pred + bwd_pred, step_meas),
        "optimizer": optimizer,
        "optimizer_measured_s": min(opt),
        "optimizer_predicted_s": opt_pred,
        "optimizer_error": rel(opt_pred, min(opt)),
        "forward_samples_s": fwd,
        "step_samples_s": both,
    }


def allocator() -> str:
    """The host allocator's settings that change how often fresh memory page-faults."""
    names = ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
    tuned = [f"{n}={os.environ[n]}" for n in names if os.environ.get(n)]
    return ", ".join(tuned) if tuned else "glibc malloc defaults"


def report(by_model: dict[str, list[dict]], machine: str, source: str) -> str:
    """Markdown table of the round with the median step error of each model."""
    n_rounds = len(next(iter(by_model.values())))
    lines = [f"# Backward cost against measurement on {machine}", "",
             f"date {datetime.date.today()}, torch {torch.__version__}, autopart {git_state('bench/backward.py')}, "
             f"{n_rounds} round(s); {source}; allocator: {allocator()}", "",
             "Best runs of the forward (gradients enabled) and of forward + backward; backward = the "
             f"difference; then of the optimizer step ({next(iter(by_model.values()))[0]['optimizer']}, "
             "torch.optim's defaults), not part of the step columns. Columns from the round with the "
             "median step error.", "",
             "| model | nodes | forward measured | predicted | error | backward measured | predicted | error | "
             "bwd/fwd measured | predicted | step measured | predicted | error | error per round | "
             "optimizer measured | predicted | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rounds in by_model.values():
        r = sorted(rounds, key=lambda x: x["step_error"])[(len(rounds) - 1) // 2]
        ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
        lines.append(
            f"| {r['model']} | {r['nodes']} | {ms(r['forward_measured_s'])} | {ms(r['forward_predicted_s'])} | "
            f"{rel(r['forward_predicted_s'], r['forward_measured_s']):+.1%} | {ms(r['backward_measured_s'])} | "
            f"{ms(r['backward_predicted_s'])} | {rel(r['backward_predicted_s'], r['backward_measured_s']):+.1%} | "
            f"{r['backward_measured_s'] / r['forward_measured_s']:.2f} | "
            f"{r['backward_predicted_s'] / r['forward_predicted_s']:.2f} | {ms(r['step_measured_s'])} | "
            f"{ms(r['step_predicted_s'])} | {r['step_error']:+.1%} | "
            f"{', '.join(format(x['step_error'], '+.1%') for x in rounds)} | "
            f"{ms(r['optimizer_measured_s'])} | {ms(r['optimizer_predicted_s'])} | {r['optimizer_error']:+.1%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "bert", "llama", "resnet"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--topology", help="a profiled topology file (default: profile each round)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per profile")
    parser.add_argument("--device", default="cpu", help='the device measured ("cpu", "cuda:0")')
    parser.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS), help="the optimizer measured")
    add_results_options(parser)
    parser.add_argument("--tag", default="", help="appended to the results files' names (e.g. tuned-malloc)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    device, captured = capture_models(args.models, args.device, grad=True)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for i in range(args.rounds):
        if args.topology:
            topology = autopart.Topology.load(args.topology)
        else:
            print(f"round {i + 1}: profiling this machine ({args.budget:.0f} s) ...", file=sys.stderr, flush=True)
            topology = profile_topology(autopart.Topology.discover(), budget_s=args.budget, progress=False)
        for name, (gm, inputs) in captured.items():
            print(f"round {i + 1}: measuring {name} ...", file=sys.stderr, flush=True)
            by_model[name].append(measure(name, gm, inputs, topology, device, args.repeats, args.optimizer))
    source = f"predicted with {args.topology}" if args.topology else f"each round profiles first ({args.budget:.0f} s)"
    text = report(by_model, topology.device(device).model or platform.processor() or "cpu", source)
    print(text)
    tag = f"-{args.tag}" if args.tag else ""
    write_results(args, f"backward-{machine_name(topology, device)}{tag}-{datetime.date.today()}", text,
                  {"allocator": allocator(), "rounds": by_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
