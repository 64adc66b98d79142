"""Runtime overhead: a single-device autopart plan against the same inner compiler alone.

For each model and inner compiler (``eager``: Dynamo's eager backend; ``inductor``: TorchInductor),
compile the model twice in one process:

- **baseline**: ``torch.compile(model, backend="eager" | "inductor")``;
- **autopart**: ``torch.compile(model, backend=autopart.backend(inner=..., max_memory={dev: ...}))``,
  a plan held to the one device the model lives on, so any difference is the runtime's own cost.

Each is compiled on its own copy of the model (same weights). Two compiled functions of one
module share Dynamo's cache entries for its ``forward``, and each call checks the guards of
the other's entry too: with one module, the second of two identical ``eager`` backends took
0.6-1.3 us more per call on this CPU (on separate copies: 0.0 us), a bias larger than the
runtime's own cost (0.1 us).

Both are warmed up, then timed in alternating rounds (baseline, autopart, baseline, ...) of
``--calls`` calls each; the time per call is the median over rounds, and the overhead is the ratio
autopart / baseline - 1. Alternating and taking ratios in one run cancels most of the drift of a
shared machine. Target (issue 6): at most 2% added time per call at steady state.

Models: GPT-2 124M (random weights, batch 1 x 128 tokens) and a small MLP (4 x Linear(512) +
GELU, batch 32), on CUDA when available, else the CPU.

    python bench/overhead.py [--models gpt2 mlp] [--inners eager inductor] [--rounds 15]
        [--out bench/results] [--no-write]

Writes bench/results/overhead-<machine>-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time

import torch
from _common import add_results_options, machine_name, sync, write_results

import autopart

TARGET = 0.02


def build(name: str, device: str):
    """(model, example inputs as a tuple) on ``device``."""
    gen = torch.Generator().manual_seed(0)
    if name == "gpt2":
        import transformers as tf

        model = tf.GPT2LMHeadModel(tf.GPT2Config())
        inputs = (torch.randint(0, 50257, (1, 128), generator=gen),)
    elif name == "mlp":
        layers = []
        for _ in range(4):
            layers += [torch.nn.Linear(512, 512), torch.nn.GELU()]
        model = torch.nn.Sequential(*layers)
        inputs = (torch.randn(32, 512, generator=gen),)
    else:
        raise ValueError(f"unknown model {name!r}; choose gpt2 or mlp")
    return model.eval().to(device), tuple(x.to(device) for x in inputs)


def time_calls(fn, inputs, calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*inputs)
    sync()
    return (time.perf_counter() - start) / calls


def measure(name: str, inner: str, device: str, rounds: int, calls: int | None) -> dict:
    model, inputs = build(name, device)
    topology = autopart.Topology.discover()
    memory = topology.device(device).memory_bytes
    baseline = torch.compile(model, backend=inner)
    backend = autopart.backend(inner=inner, max_memory={device: memory}, strict=True)
    ours = torch.compile(copy.deepcopy(model), backend=backend)  # its own module: see the docstring
    with torch.no_grad():
        t0 = time.perf_counter()
        for fn in (baseline, ours):
            for _ in range(3):
                fn(*inputs)
        warm_s = time.perf_counter() - t0
        if calls is None:  # about 50 ms of calls per round
            calls = max(1, int(0.05 / max(time_calls(baseline, inputs, 3), 1e-6)))
        base, auto = [], []
        for _ in range(rounds):
            base.append(time_calls(baseline, inputs, calls))
            auto.append(time_calls(ours, inputs, calls))
    runners = [c.runner for c in backend.compilations if c.runner is not None]
    ratios = sorted(a / b for a, b in zip(auto, base))
    result = {
        "model": name,
        "inner": inner,
        "device": device,
        "graphs": len(backend.compilations),
        "direct": all(r._direct is not None for r in runners),
        "calls_per_round": calls,
        "rounds": rounds,
        "baseline_s": statistics.median(base),
        "autopart_s": statistics.median(auto),
        "overhead": statistics.median(ratios) - 1,
        "overhead_q1_q3": [ratios[len(ratios) // 4] - 1, ratios[(3 * len(ratios)) // 4] - 1],
        "warmup_s": warm_s,
    }
    torch._dynamo.reset()
    autopart.reset()
    return result


def report(results: list[dict], machine: str) -> str:
    lines = [
        f"# Runtime overhead on {machine} ({datetime.date.today()})",
        "",
        f"torch {torch.__version__}; single-device autopart plan against the same inner compiler "
        f"alone, alternating rounds in one process; target: overhead <= {TARGET:.0%} per call.",
        "",
        "| model | inner | device | graphs | direct path | baseline / call | autopart / call | "
        "overhead (median of round ratios) | IQR | met? |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        q1, q3 = r["overhead_q1_q3"]
        lines.append(
            f"| {r['model']} | {r['inner']} | {r['device']} | {r['graphs']} | {r['direct']} | "
            f"{r['baseline_s'] * 1e6:.1f} us | {r['autopart_s'] * 1e6:.1f} us | {r['overhead']:+.2%} | "
            f"{q1:+.2%} .. {q3:+.2%} | {'yes' if r['overhead'] <= TARGET else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "gpt2"])
    parser.add_argument("--inners", nargs="+", default=["eager", "inductor"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, help="calls per round (default: ~50 ms of calls)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_results_options(parser)
    args = parser.parse_args(argv)
    device = "cuda:0" if args.device == "cuda" else args.device
    results = []
    for name in args.models:
        for inner in args.inners:
            print(f"measuring {name} with {inner} on {device} ...", file=sys.stderr, flush=True)
            results.append(measure(name, inner, device, args.rounds, args.calls))
    machine = machine_name(autopart.Topology.discover())
    text = report(results, machine)
    print(text)
    write_results(args, f"overhead-{machine}-{datetime.date.today()}", text,
                  {"machine": machine, "torch": torch.__version__, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
