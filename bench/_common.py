"""Helpers shared by the benchmarks (run as ``python bench/<name>.py``, so importable as
``_common``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

import autopart
from autopart.topology import Topology


def slug(text: str) -> str:
    """``text`` as a file-name fragment: lower case, runs of other characters as ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_name(topo: Topology, device: str | None = None) -> str:
    """Results-file name of a machine: its GPUs (``2xnvidia-h100``) or, when it has none or
    ``device`` is ``"cpu"``, its CPU and usable cores (``amd-epyc-2c``)."""
    gpus = [d for d in topo.devices if d.kind == "cuda"]
    if gpus and device != "cpu":
        return f"{len(gpus)}x{slug(gpus[0].model)}" if len(gpus) > 1 else slug(gpus[0].model)
    cpu = topo.device("cpu")
    return f"{slug(cpu.model)}-{len(os.sched_getaffinity(0))}c"


def sync() -> None:
    """Wait for queued GPU work (a no-op until CUDA is in use), so host timers see it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def git_state(*scripts: str) -> str:
    """The short commit of this checkout, marked when ``autopart/`` or the given files (paths
    from the repository root, e.g. ``bench/zoo.py``) differ from it, or when the autopart
    package imported is not this checkout's (an exported copy on ``PYTHONPATH``); ``"unknown"``
    without git."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        modified = git("status", "--porcelain", "--", "autopart", *scripts)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    imported = Path(autopart.__file__).resolve().parent
    if imported != root / "autopart":
        return f"{commit}, but autopart imported from {imported}"
    return commit + (" (autopart or this benchmark modified)" if modified else "")


RESULTS = Path(__file__).parent / "results"


def add_results_options(parser) -> None:
    """``--out`` (folder of the results files, default bench/results) and ``--no-write``."""
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--no-write", action="store_true", help="print only")


def write_results(args, name: str, text: str, payload: dict) -> None:
    """``args.out/name.md`` (the printed table) and ``.json`` (the raw numbers), unless
    ``args.no_write``."""
    if args.no_write:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / name
    stem.with_suffix(".md").write_text(text.rstrip("\n") + "\n")
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {stem}.md and .json", file=sys.stderr)
