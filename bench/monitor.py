"""Monitoring and re-planning: what timing each partition costs, how far the plan's predictions
are from what runs, and what re-planning does about it.

One split plan of GPT-2 124M (random weights, batch 1 x 128 tokens), on:

- a CUDA machine: this machine's topology (profiled when a profile is cached: run
  ``autopart topology --profile`` first), with ``max_memory`` holding the GPU to 60% of the
  weights, so that the plan streams weights from the CPU or computes layers there;
- a CPU-only machine: the ``hetero-a100-t4-cpu`` preset mapped onto this CPU, each GPU holding
  60% of the weights (the A100 and T4 the plan predicts both run as this CPU: the plan departs
  from reality by design, and unevenly, which is what re-planning reacts to).

Three compiles of the same plan, each on its own copy of the model (one Dynamo cache entry
each; see bench/overhead.py):

1. **overhead**: ``monitor=False`` against ``monitor=True``, warmed up, then timed in alternating
   rounds of ``--calls`` calls; time per call is the median over rounds and the overhead the
   ratio - 1 (alternating and taking ratios in one run cancels most of a shared machine's drift);
2. **report**: ``Compilation.report()`` of the monitored compile: each device's predicted and
   measured busy time per call;
3. **replan**: ``replan=--replan``, run past its checks (call 1 + REPLAN_CALLS, and as many more
   for each new plan, up to REPLAN_MAX_ROUNDS re-plans), then timed in alternating rounds
   against the first compile (the first plan, not monitored); what was decided, and the ratio
   of the times per call.

With ``--training`` a call is a training step: the forward with gradients, then the backward of
the mean of the logits (gradients set to None after each step; no optimizer step). The plans
are for training with ``optimizer="sgd"`` (no optimizer state), each GPU held to 140% of the
weights (a parameter and its gradient make 200%); the report adds each device's backward.

    python bench/monitor.py [--rounds 7] [--calls 5] [--replan 1.5] [--training] [--out bench/results]
        [--no-write]

Writes bench/results/monitor[-training]-<machine>-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time

import torch
import transformers as tf
from _common import add_results_options, git_state, machine_name, sync, write_results

import autopart
from autopart.dynamo import REPLAN_CALLS, REPLAN_MAX_ROUNDS


def timed_calls(step, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``step()`` (GPU work waited for)."""
    out = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        step()
        sync()
        out.append(time.perf_counter() - start)
    return out


def steps(fn, ids, training: bool):
    """A call of compiled model ``fn``: its forward under ``no_grad``, or a training step."""
    if not training:
        def forward():
            with torch.no_grad():
                fn(ids)
        return forward

    def train_step():
        fn(ids).logits.mean().backward()
        for p in fn.parameters():
            p.grad = None
    return train_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument("--calls", type=int, default=5, help="calls per round (default 5)")
    parser.add_argument("--replan", type=float, default=1.5, help="replan factor (default 1.5)")
    parser.add_argument("--training", action="store_true", help="time training steps (forward and backward)")
    add_results_options(parser)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda:0" if cuda else "cpu"
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config()).eval().to(device)
    ids = torch.randint(0, 50257, (1, 128), generator=torch.Generator().manual_seed(0)).to(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    share = 1.4 if args.training else 0.6
    cap = int(share * weights)
    held = f"held to {share:.0%} of the weights"
    if cuda:
        setup = f"this machine, cuda:0 {held}"
        options = dict(max_memory={"cuda:0": cap, "cpu": 64 * 2**30})
        topology = autopart.Topology.discover()
    else:
        setup = f"hetero-a100-t4-cpu mapped onto this CPU, each GPU {held}"
        options = dict(topology="hetero-a100-t4-cpu", device_map="cpu", max_memory={"cuda:0": cap, "cuda:1": cap})
        topology = autopart.Topology.preset("hetero-a100-t4-cpu")
    machine = machine_name(autopart.Topology.discover())

    if args.training:
        options["optimizer"] = "sgd"
        model.train()
        setup += "; training steps, optimizer='sgd'"

    def compiled(**extra):
        backend = autopart.backend(strict=True, **options, **extra)
        return backend, steps(torch.compile(copy.deepcopy(model), backend=backend), ids, args.training)

    started = time.perf_counter()
    (_, plain), (monitored_backend, monitored) = compiled(), compiled(monitor=True)
    for step in (plain, monitored):
        timed_calls(step, 3)
    per_call: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for key, step in (("off", plain), ("on", monitored)):
            per_call[key].append(statistics.median(timed_calls(step, args.calls)))
    off, on = (statistics.median(per_call[k]) for k in ("off", "on"))
    (comp,) = monitored_backend.compilations
    report = comp.report()

    replan_backend, replanned = compiled(replan=args.replan)
    timed_calls(replanned, 1 + REPLAN_CALLS + 1)  # the first check runs after call 1 + REPLAN_CALLS
    (rcomp,) = replan_backend.compilations
    for _ in range(REPLAN_MAX_ROUNDS):  # each new plan: its first call, then REPLAN_CALLS timed
        if rcomp.replan_checked:
            break
        timed_calls(replanned, 1 + REPLAN_CALLS)
    versus: dict[str, list[float]] = {"first plan": [], "after the check": []}
    for _ in range(args.rounds):
        for key, step in (("first plan", plain), ("after the check", replanned)):
            versus[key].append(statistics.median(timed_calls(step, args.calls)))
    first = rcomp.replanned_from or rcomp.plan

    result = dict(
        machine=machine,
        date=datetime.date.today().isoformat(),
        torch=torch.__version__,
        autopart=git_state("bench/monitor.py"),
        setup=setup,
        device=torch.cuda.get_device_name() if cuda else topology.device("cpu").model,
        training=args.training,
        rounds=args.rounds,
        calls=args.calls,
        per_call_s={"monitor off": off, "monitor on": on},
        monitor_overhead=on / off - 1,
        report=report,
        replan=dict(
            factor=args.replan,
            note=rcomp.replan_note,
            rounds=rcomp.replan_rounds,
            before_s=statistics.median(versus["first plan"]),
            after_s=statistics.median(versus["after the check"]),
            devices_before=first.devices_used,
            devices_after=rcomp.plan.devices_used,
            predicted_before_s=first.predicted_time_s,
            predicted_after_s=rcomp.plan.predicted_time_s,
        ),
        run_s=time.perf_counter() - started,
    )
    r = result["replan"]
    lines = [
        f"# Monitoring and re-planning on {result['device']}",
        "",
        f"date {result['date']}, torch {result['torch']}, autopart {result['autopart']}; GPT-2 124M, batch 1 x "
        f"128 tokens; {setup}; {args.rounds} alternating rounds of {args.calls} calls; whole run "
        f"{result['run_s']:.0f} s",
        "",
        "## What monitoring costs",
        "",
        "| monitor | time per call (median of rounds) |",
        "|---|---|",
        f"| off | {off * 1e3:.3f} ms |",
        f"| on | {on * 1e3:.3f} ms |",
        "",
        f"overhead: {100 * result['monitor_overhead']:+.2f}%",
        "",
        "## Predicted against measured (the monitored compile)",
        "",
        "```",
        report,
        "```",
        "",
        "## Re-planning",
        "",
        f"replan={args.replan}: {r['rounds']} re-plan(s); the last check: {r['note']}",
        "",
        "| | plan's devices | predicted per call | measured per call (median of rounds) |",
        "|---|---|---|---|",
        f"| first plan (monitor off) | {', '.join(r['devices_before'])} | {r['predicted_before_s'] * 1e3:.3f} ms | "
        f"{r['before_s'] * 1e3:.3f} ms |",
        f"| after the check | {', '.join(r['devices_after'])} | {r['predicted_after_s'] * 1e3:.3f} ms | "
        f"{r['after_s'] * 1e3:.3f} ms |",
        "",
        f"after / first: {r['after_s'] / r['before_s']:.3f} (includes monitoring's own cost, measured above)",
        "",
        "The prediction after a re-plan is under the corrected times (each device's task times "
        "multiplied by its measured/predicted ratio).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(args, f"monitor{'-training' if args.training else ''}-{machine}-{result['date']}", text, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
