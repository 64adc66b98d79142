"""Helpers shared by the benchmarks (run as ``python bench/<name>.py``, so importable as
``_common``)."""

from __future__ import annotations

import os
import re
import subprocess
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
