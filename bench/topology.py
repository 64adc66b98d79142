"""Profiler against an independent measurement: every profiled number next to torch.utils.benchmark.

Profiles this machine with ``autopart.profiler.profile_topology`` (the same call as
``autopart topology --profile``, cache bypassed), then measures the same quantities again
with ``torch.utils.benchmark.Timer.blocked_autorange`` -- another timing loop (its own block
sizing, ``torch.cuda.synchronize`` around blocks on CUDA instead of events), fresh tensors:

- matmul FLOP/s per dtype, at the size where the profiler found its peak and at the largest
  size it swept (``2 n^3`` FLOP for ``torch.mm`` of two n x n matrices);
- memory bandwidth: ``dst.copy_(src)`` at the profiler's largest copy (``2 * nbytes`` moved);
- launch overhead: ``x.add_(1)`` on a 1-element tensor;
- per link (GPU machines only) and host-memory kind: the copy time at the smallest and the
  largest swept size against the alpha-beta prediction ``latency_s + nbytes / bandwidth_Bps``.

Prints a table (quantity, profiler, torch.utils.benchmark, ratio = profiler / benchmark: 1.00
means agreement) and writes it, with the machine and the load average, to
``bench/results/topology-<machine>-<date>.md``, and the profiled topology (loadable with
``autopart topology --load``) to ``...json``. Ratios, not absolute times, are the result: a
busy machine lowers both columns.

    python bench/topology.py [--budget 60] [--min-run-time 0.5] [--out bench/results] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tb
from _common import machine_name

import autopart
from autopart.profiler import profile_topology
from autopart.topology import Topology

RESULTS = Path(__file__).parent / "results"


def median_s(stmt: str, env: dict, min_run_time_s: float) -> float:
    """Median seconds per ``stmt`` by torch.utils.benchmark (blocked_autorange)."""
    timer = tb.Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time_s).median




def fmt(value: float, unit: str) -> str:
    if unit == "FLOP/s":
        return f"{value / 1e9:.1f} GFLOP/s"
    if unit == "B/s":
        return f"{value / 1e9:.2f} GB/s"
    return f"{value * 1e6:.2f} µs"


def device_rows(dev, m: dict, min_run_time_s: float) -> list[tuple[str, float, float, str]]:
    """(quantity, profiler value, benchmark value, unit) for one profiled device."""
    rows = []
    device = torch.device(dev.name)
    for dtype_name, sweep in m["matmul_flops"].items():
        best_n = max(sweep, key=lambda p: p[1])[0]
        for n, rate in sweep:
            if n not in {best_n, sweep[-1][0]}:
                continue
            dtype = torch.float32 if dtype_name == "tfloat32" else getattr(torch, dtype_name)
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            c = torch.empty(n, n, device=device, dtype=dtype)
            old = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("high" if dtype_name == "tfloat32" else "highest")
            try:
                t = median_s("torch.mm(a, b, out=c)", {"torch": torch, "a": a, "b": b, "c": c},
                             min_run_time_s)
            finally:
                torch.set_float32_matmul_precision(old)
            tag = "peak" if n == best_n else "largest"
            rows.append((f"{dev.name} matmul {dtype_name} n={n} ({tag})", rate, 2 * n**3 / t,
                         "FLOP/s"))
            del a, b, c
    nbytes = m["copy_bytes"]
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = median_s("dst.copy_(src)", {"src": src, "dst": dst}, min_run_time_s)
    rows.append((f"{dev.name} copy {nbytes / 2**20:.3g} MiB", m["mem_bandwidth_Bps"],
                 2 * nbytes / t, "B/s"))
    del src, dst
    x = torch.zeros(1, device=device)
    t = median_s("x.add_(1)", {"x": x}, min_run_time_s)
    rows.append((f"{dev.name} launch overhead x.add_(1)", m["launch_overhead_s"], t, "s"))
    return rows


def link_rows(lk, min_run_time_s: float) -> list[tuple[str, float, float, str]]:
    rows = []
    src, dst = torch.device(lk.src), torch.device(lk.dst)
    for kind, fit in lk.measured["fits"].items():
        pin = kind == "pinned"
        for n in sorted({min(fit["sizes_bytes"]), max(fit["sizes_bytes"])}):
            s = torch.ones(n, dtype=torch.uint8, device=src, pin_memory=pin and src.type == "cpu")
            d = torch.empty(n, dtype=torch.uint8, device=dst, pin_memory=pin and dst.type == "cpu")
            t = median_s(f"d.copy_(s, non_blocking={pin or kind == 'device'})", {"s": s, "d": d},
                         min_run_time_s)
            predicted = fit["latency_s"] + n / fit["bandwidth_Bps"]
            rows.append((f"{lk.src}->{lk.dst} {kind} {n / 1024:.0f} KiB copy time (fit)",
                         predicted, t, "s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="profile budget, seconds")
    parser.add_argument("--min-run-time", type=float, default=0.5,
                        help="torch.utils.benchmark min_run_time per quantity, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    topo = profile_topology(Topology.discover(), budget_s=args.budget, progress=True)
    profile_s = time.perf_counter() - t0

    rows: list[tuple[str, float, float, str]] = []
    with torch.no_grad():
        for dev in topo.devices:
            if dev.measured is not None:
                rows += device_rows(dev, dev.measured, args.min_run_time)
        for lk in topo.links:
            if lk.measured is not None:
                rows += link_rows(lk, args.min_run_time)
    load_after = os.getloadavg()[0]

    cpu = topo.device("cpu")
    gpus = [d.model for d in topo.devices if d.kind == "cuda"]
    today = datetime.date.today().isoformat()
    header = [
        f"# Profiled topology against torch.utils.benchmark on {', '.join(gpus) or cpu.model}",
        "",
        f"date {today}, host {platform.node()}, CPU {cpu.model} "
        f"({len(os.sched_getaffinity(0))} usable cores, torch threads {torch.get_num_threads()})"
        + (f", GPUs {', '.join(gpus)}" if gpus else ", no GPU"),
        f"torch {torch.__version__}, autopart {autopart.__version__}, python "
        f"{platform.python_version()}",
        f"profile budget {args.budget:.0f} s, profile took {profile_s:.1f} s; "
        f"torch.utils.benchmark min_run_time {args.min_run_time} s per quantity; "
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after",
        "",
        "ratio = profiler / torch.utils.benchmark (1.00: the two agree). Link rows compare the "
        "alpha-beta prediction of the fitted link with the measured copy time.",
        "",
        "| quantity | profiler | torch.utils.benchmark | ratio |",
        "|---|---|---|---|",
    ]
    lines = [
        f"| {q} | {fmt(p, unit)} | {fmt(b, unit)} | {p / b:.2f} |" for q, p, b, unit in rows
    ]
    text = "\n".join(header + lines) + "\n"
    print()
    print(topo.table())
    print()
    print(text)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"topology-{machine_name(topo)}-{today}"
        stem.with_suffix(".md").write_text(text, encoding="utf-8")
        topo.save(stem.with_suffix(".json"))
        print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
