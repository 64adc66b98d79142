"""Microbenchmarks that replace a topology's nominal numbers by measured ones.

What is measured, and how
-------------------------
Per device (:func:`profile_device`):

* **matmul throughput** per dtype (``float32``, ``bfloat16``, ``float16``; on CUDA GPUs of
  compute capability >= 8 also ``tfloat32``, i.e. float32 inputs with
  ``torch.set_float32_matmul_precision("high")``) over a sweep of square sizes
  ``n = 64, 128, ..., 8192``: ``torch.mm(a, b, out=c)`` with ``a, b`` of shape ``(n, n)``
  counts ``2 n^3`` FLOP (n^3 multiply-adds). The sweep stops once two sizes in a row fail to
  beat the best rate by 5% (the rate has saturated), when the next size would not fit the time
  budget, or when it would not fit in a quarter of the free memory. ``peak_flops[dtype]`` is
  the best rate of the sweep. float32 is measured with precision ``"highest"`` (no TF32).
* **memory bandwidth**: ``dst.copy_(src)`` of ``uint8`` tensors from 64 KiB up to 256 MiB
  (4x steps); each copy reads and writes ``nbytes``, so the rate is ``2 * nbytes / time``.
  ``mem_bandwidth_Bps`` is the rate of the largest copy measured (256 MiB is far beyond the
  last-level cache of current CPUs and GPUs, so it is the DRAM/HBM rate).
* **launch overhead**: the median time per call of ``x.add_(1)`` on a 1-element tensor,
  issued back to back (eager dispatch plus, on CUDA, the kernel launch).
* **first touch** (CPU): ``torch.empty(n).fill_(1)`` of a new 64 MiB tensor against
  ``x.fill_(1)`` of one kept, the least time of each over alternating calls: what writing
  memory fresh from the operating system (page faults) costs beyond the write. glibc's malloc
  returns allocations of 32 MiB and more (and the free top of its heap) to the system at once,
  so each such allocation faults anew; a caching allocator (jemalloc, tcmalloc, or glibc with
  ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` raised) keeps them and measures no
  cost. ``first_touch_Bps`` is ``64 MiB / (fresh - kept)``, None when that difference is under
  10% of the kept write. The cost model charges it on what a training step allocates and keeps
  (saved activations, gradients: :meth:`autopart.graph.AnnotatedGraph.node_times`). Not on
  CUDA, whose caching allocator keeps memory.
* **calibration**: representative ops of each op class timed and fitted
  (:func:`autopart.costmodel.calibration.calibrate_device`), for the cost model.

Per link (:func:`profile_link`): ``dst.copy_(src)`` from 4 KiB up to 64 MiB (4x steps), fitted
by :func:`fit_alpha_beta` to the alpha-beta (Hockney) model ``time_s = latency_s + nbytes /
bandwidth_Bps``. Host <-> GPU links are measured from pinned (page-locked,
``pin_memory=True``, copies with ``non_blocking=True``) and from pageable host memory.

Timing: every quantity is the **median** over repeats (at least 3) of a block of back-to-back
calls, after a warm-up call; the block is made long enough (>= 1 ms) that timer resolution and
synchronisation do not matter (the scheme of ``torch.utils.benchmark.Timer.blocked_autorange``).
On CPU blocks are timed with ``time.perf_counter``; on one CUDA device with CUDA events on the
current stream; across two CUDA devices with ``time.perf_counter`` between
``torch.cuda.synchronize`` of both.

Time budget: :func:`profile_topology` splits ``budget_s`` over its tasks by weight (a matmul
sweep weighs 3, a copy sweep 1, a link fit per host-memory kind 1, the launch and first-touch
probes 0.5 each), each task getting its weight's share of the time still left; a sweep checks
the predicted cost of its next size against its share and stops early. The smallest size of
each sweep is always measured, and the calibration always makes one pass over its samples
(:func:`autopart.costmodel.calibration.calibrate_device`), so even a tiny budget returns
numbers, and a profile takes at least about 10 s on a 2-core CPU whatever the budget.

The ``measured`` dict
---------------------
:func:`profile_device` returns (and :func:`profile_topology` stores in ``Device.measured``)::

    format            7 (PROFILE_FORMAT_VERSION)
    profiler          "autopart.profiler"
    date              ISO 8601 UTC time of the profile
    torch             torch.__version__
    device            the torch device profiled ("cpu", "cuda:0")
    model             CPU model / GPU name
    num_threads       torch.get_num_threads() during the profile (CPU matters)
    load_avg_1m       os.getloadavg()[0] before profiling (other load lowers every number)
    matmul_flops      {dtype: [[n, FLOP/s], ...]}    the sweep, n ascending
    matmul_skipped    {dtype: reason}                dtypes that could not be measured
    copy_Bps          [[nbytes, bytes/s], ...]       the copy sweep (2 * nbytes per copy)
    mem_bandwidth_Bps the rate of the largest copy
    copy_bytes        the size of that copy
    launch_overhead_s median seconds per x.add_(1)
    first_touch_Bps   bytes/s of first writes to fresh memory (CPU; null: no cost measured)
    calibration       per-class fits of representative ops (autopart.costmodel.calibration)
    elapsed_s         wall time of this profile

:func:`profile_link` returns (stored in ``Link.measured``)::

    format, profiler, date, torch     as above
    src, dst                          device names
    fits      {kind: {"sizes_bytes": [...], "times_s": [...], "latency_s": s,
                      "bandwidth_Bps": B/s, "r2": R^2}}
              kind: "pinned" / "pageable" (host memory of a cpu <-> cuda link) or "device"
              (cuda <-> cuda); a fit that failed holds "error" and the fallback numbers
    chosen    the kind whose numbers the Link carries ("pinned" when measured)
    elapsed_s wall time

Nothing here reads environment variables or writes files; caching is :mod:`autopart.cache`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .topology import Device, Link, Topology, local_devices

log = logging.getLogger(__name__)

__all__ = [
    "PROFILE_FORMAT_VERSION",
    "fit_alpha_beta",
    "profile_device",
    "profile_link",
    "profile_topology",
    "default_dtypes",
    "median_time_s",
]

#: Version of the ``measured`` dicts written here (bump when their keys or the calibration's
#: classes change: cached profiles of another version are re-measured, see :mod:`autopart.cache`).
PROFILE_FORMAT_VERSION = 7

#: Square matmul sizes tried, ascending (n for an n x n x n product).
MATMUL_SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: A sweep stops after this many sizes in a row that do not beat the best rate by
#: :data:`PLATEAU_GAIN` (the rate has saturated; larger sizes would only cost time).
PLATEAU_PATIENCE = 2
PLATEAU_GAIN = 1.05
#: On-device copy sweep, bytes: 64 KiB, 256 KiB, ..., 256 MiB.
COPY_MIN_BYTES = 64 * 2**10
COPY_MAX_BYTES = 256 * 2**20
#: Link sweep, bytes: 4 KiB, 16 KiB, ..., 64 MiB.
LINK_MIN_BYTES = 4 * 2**10
LINK_MAX_BYTES = 64 * 2**20
#: A timed block of back-to-back calls lasts at least this long (timer resolution and
#: synchronisation cost become negligible: perf_counter ~100 ns, cudaEventSynchronize ~10 µs).
MIN_BLOCK_S = 1e-3
#: Median over at least / at most this many blocks.
MIN_REPEATS = 3
MAX_REPEATS = 50
#: Time spent on one point of a sweep, seconds (more repeats only narrow the median).
POINT_TIME_S = 0.25
#: Only this fraction of the free memory of a device is used by one benchmark's tensors.
MEMORY_FRACTION = 0.25
#: Task weights for splitting a budget (see the module docstring).
_WEIGHT_MATMUL, _WEIGHT_COPY, _WEIGHT_LAUNCH, _WEIGHT_LINK, _WEIGHT_CALIBRATE = 3.0, 1.0, 0.5, 1.0, 3.0

_PROFILER = "autopart.profiler"


# --------------------------------------------------------------------------- alpha-beta fit


def fit_alpha_beta(
    sizes_bytes: Sequence[float], times_s: Sequence[float]
) -> tuple[float, float, float]:
    """Fit ``time_s = latency_s + nbytes / bandwidth_Bps`` to a transfer-size sweep.

    Source: the alpha-beta (Hockney) model of point-to-point communication, R. W. Hockney,
    "The communication challenge for MPP: Intel Paragon and Meiko CS-2", Parallel Computing
    20(3), 1994. The fit is linear least squares (``numpy.linalg.lstsq``) for ``a + b * n``
    on *relative* residuals -- each equation ``a + b n_i = t_i`` is divided by ``t_i`` -- so a
    4 KiB transfer counts as much as a 64 MiB one (on absolute residuals the largest sizes
    would decide the latency alone). If the unconstrained intercept is negative, the fit is
    redone through the origin (``a = 0``), the least-squares optimum under ``a >= 0``.
    ``bandwidth_Bps = 1 / b``.

    Args:
        sizes_bytes: message sizes in bytes (>= 0), at least two distinct.
        times_s: the measured seconds per transfer for each size (> 0, finite).

    Returns:
        ``(latency_s, bandwidth_Bps, r2)``: latency >= 0 in seconds, bandwidth > 0 in
        bytes/s, and the coefficient of determination of the fitted times (1 = perfect).

    Raises:
        ValueError: lengths differ, fewer than two distinct sizes, a non-finite or
            non-positive time, a negative size, or times that do not grow with size (a slope
            <= 0: the sweep measured noise or latency only; sweep to larger sizes).
    """
    n = np.asarray(sizes_bytes, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if n.ndim != 1 or t.ndim != 1 or n.shape != t.shape:
        raise ValueError(
            f"fit_alpha_beta: sizes_bytes and times_s must be 1-D and of equal length, got "
            f"{n.shape} and {t.shape}; pass one time per size"
        )
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(
            f"fit_alpha_beta: sizes_bytes must be finite and >= 0, got {n.tolist()}"
        )
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(
            f"fit_alpha_beta: times_s must be finite and > 0 seconds, got {t.tolist()}; "
            f"drop failed measurements before fitting"
        )
    if np.unique(n).size < 2:
        raise ValueError(
            f"fit_alpha_beta: need at least two distinct sizes to separate latency from "
            f"bandwidth, got sizes_bytes={n.tolist()}"
        )
    w = 1.0 / t
    ones = np.ones_like(t)
    (a, b), *_ = np.linalg.lstsq(np.column_stack([w, n * w]), ones, rcond=None)
    if a < 0:
        a = 0.0
        (b,), *_ = np.linalg.lstsq((n * w)[:, None], ones, rcond=None)
    span_s = b * (n.max() - n.min())
    if not (b > 0 and span_s > 1e-6 * t.max()):
        raise ValueError(
            f"fit_alpha_beta: times do not grow with size (fitted slope {b:.3g} s/byte over "
            f"sizes {n.min():.0f}..{n.max():.0f} bytes, times {t.min():.3g}..{t.max():.3g} s); "
            f"the sweep measured latency or noise only: extend it to larger sizes or repeat "
            f"each size more often"
        )
    pred = a + b * n
    ss_res = float(np.sum((t - pred) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return float(a), float(1.0 / b), r2


# --------------------------------------------------------------------------- timing


class _Budget:
    """A deadline on ``time.perf_counter``; ``share`` carves a sub-budget."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + seconds

    def left_s(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def share(self, seconds: float) -> _Budget:
        child = _Budget(0.0)
        child.deadline = min(self.deadline, child.start + max(0.0, seconds))
        return child


def _sync(cuda_devices: Sequence[torch.device]) -> None:
    for d in cuda_devices:
        torch.cuda.synchronize(d)


def _time_block_s(fn: Callable[[], Any], cuda_devices: Sequence[torch.device], inner: int) -> float:
    """Seconds per call of ``fn`` over one block of ``inner`` back-to-back calls."""
    if len(cuda_devices) == 1:
        dev = cuda_devices[0]
        with torch.cuda.device(dev):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner  # elapsed_time is in ms
    _sync(cuda_devices)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(cuda_devices)
    return (time.perf_counter() - t0) / inner


def median_time_s(
    fn: Callable[[], Any],
    cuda_devices: Sequence[torch.device],
    *,
    time_s: float,
    min_block_s: float = MIN_BLOCK_S,
) -> tuple[float, int, int]:
    """Median seconds per call of ``fn``: warm-up, calibrate a block of ``inner`` calls lasting
    ``>= min_block_s``, then time ``clamp(time_s / block, MIN_REPEATS, MAX_REPEATS)`` blocks.

    Returns:
        (median seconds per call, calls per block, number of blocks).
    """
    fn()  # warm-up: lazy initialisation, allocator, first-touch page faults
    inner = 1
    while True:
        per_call = _time_block_s(fn, cuda_devices, inner)
        if per_call * inner >= min_block_s or inner >= 100_000:
            break
        want = math.ceil(1.2 * min_block_s / max(per_call, 1e-9))
        inner = min(100_000, max(inner * 2, want))
    block_s = per_call * inner
    repeats = int(min(MAX_REPEATS, max(MIN_REPEATS, time_s // max(block_s, 1e-9))))
    samples = [_time_block_s(fn, cuda_devices, inner) for _ in range(repeats)]
    return statistics.median(samples), inner, len(samples)


def _cuda_of(*devices: torch.device) -> list[torch.device]:
    return list(dict.fromkeys(d for d in devices if d.type == "cuda"))


def _free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (``torch.cuda.mem_get_info``; psutil on the host)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception as e:  # psutil is a dependency, but a sandbox may hide /proc
        log.debug("psutil.virtual_memory failed: %s", e)
        return 4 * 2**30


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _device_model(device: torch.device) -> str:
    """The GPU name torch reports, or the CPU model the way discovery names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        from .topology import _cpu_model_name  # discovery's reader of /proc/cpuinfo
    except ImportError:  # pragma: no cover - kept in step with autopart.topology
        import platform

        return platform.processor() or platform.machine() or "unknown CPU"
    return _cpu_model_name()


def _warn_if_busy() -> float | None:
    """The 1-minute load average before profiling (None where the OS has none); a warning
    when other processes keep more than half the usable cores busy, since they lower every
    measured number."""
    import os

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        log.warning(
            "profile: load average %.2f on %d usable cores: other processes compete for the "
            "CPU and the measured numbers will be low; profile again when the machine is idle "
            "(autopart topology --profile --refresh)", load, cores,
        )
    return load


def _check_local(device: str | torch.device, what: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{what}: {device!r} is not a torch device name ({e})") from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)
    if dev.type == "cpu":
        dev = torch.device("cpu")
    name = str(dev)
    if dev.type not in ("cpu", "cuda") or name not in local_devices():
        raise ValueError(
            f"{what}: device {str(device)!r} is not on this machine; local devices: "
            f"{', '.join(local_devices())}"
        )
    return dev


# --------------------------------------------------------------------------- device benchmarks


def default_dtypes(device: str | torch.device) -> tuple[str, ...]:
    """The matmul dtypes profiled by default on ``device``: float32, bfloat16 and float16,
    plus tfloat32 on CUDA GPUs of compute capability >= 8.0 (Ampere and newer: TF32 tensor
    cores, NVIDIA A100 whitepaper)."""
    dev = torch.device(device)
    out = ["float32"]
    if dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 8:
        out.append("tfloat32")
    return (*out, "bfloat16", "float16")


@contextlib.contextmanager
def _matmul_precision(precision: str) -> Iterator[None]:
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _dtype_of(name: str) -> torch.dtype:
    if name == "tfloat32":
        return torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"matmul dtype {name!r} is not a floating-point torch dtype name; use e.g. "
            f"'float32', 'bfloat16', 'float16' or 'tfloat32'"
        )
    return dtype


def _matmul_sweep(
    dev: torch.device, dtype_name: str, budget: _Budget, sizes: Sequence[int]
) -> tuple[list[list[float]], str | None]:
    """``[[n, FLOP/s], ...]`` for ``torch.mm`` of n x n by n x n (2 n^3 FLOP), and the reason
    the dtype was skipped (None if measured)."""
    dtype = _dtype_of(dtype_name)
    if dtype_name == "tfloat32" and (
        dev.type != "cuda" or torch.cuda.get_device_capability(dev)[0] < 8
    ):
        return [], "tfloat32 needs a CUDA GPU of compute capability >= 8.0"
    precision = "high" if dtype_name == "tfloat32" else "highest"
    cuda = _cuda_of(dev)
    free = _free_bytes(dev) * MEMORY_FRACTION
    itemsize = torch.empty((), dtype=dtype).element_size()
    out: list[list[float]] = []
    best, stale = 0.0, 0
    last: tuple[int, float] | None = None
    with _matmul_precision(precision), torch.no_grad():
        for i, n in enumerate(sizes):
            if 3 * n * n * itemsize > free:
                log.debug("matmul %s %s: n=%d would not fit in memory, sweep stops", dev,
                          dtype_name, n)
                break
            if last is not None:
                predicted_s = last[1] * (n / last[0]) ** 3 * (MIN_REPEATS + 3)
                if predicted_s > budget.left_s():
                    log.debug("matmul %s %s: n=%d predicted %.2f s, over budget", dev, dtype_name,
                              n, predicted_s)
                    break
            try:
                a = torch.randn(n, n, device=dev).to(dtype)
                b = torch.randn(n, n, device=dev).to(dtype)
                c = torch.empty(n, n, device=dev, dtype=dtype)
                torch.mm(a, b, out=c)
            except (RuntimeError, NotImplementedError) as e:  # dtype unsupported on device
                if not out:
                    return [], f"torch.mm failed: {e}".splitlines()[0]
                break
            left = max(budget.left_s(), 0.0)
            point_s = min(POINT_TIME_S, left / max(1, len(sizes) - i))
            t, _, _ = median_time_s(lambda: torch.mm(a, b, out=c), cuda, time_s=point_s)
            del a, b, c
            rate = 2.0 * n**3 / t
            out.append([n, rate])
            last = (n, t)
            if rate > best * PLATEAU_GAIN:
                best, stale = max(best, rate), 0
            else:
                best, stale = max(best, rate), stale + 1
                if stale >= PLATEAU_PATIENCE:
                    break
    return out, None


def _copy_sweep(dev: torch.device, budget: _Budget, max_bytes: int) -> list[list[float]]:
    """``[[nbytes, bytes/s], ...]`` for ``dst.copy_(src)`` on ``dev`` (2 * nbytes moved)."""
    cuda = _cuda_of(dev)
    free = _free_bytes(dev) * MEMORY_FRACTION
    out: list[list[float]] = []
    last: tuple[int, float] | None = None
    sizes = _sizes(COPY_MIN_BYTES, max_bytes)
    with torch.no_grad():
        for i, nbytes in enumerate(sizes):
            if out and 2 * nbytes > free:
                break
            if last is not None:
                # allocation + first touch + warm-up + calibration + repeats, with a margin
                predicted_s = last[1] * nbytes / last[0] * (MIN_REPEATS + 6) * 2
                if predicted_s > budget.left_s():
                    break
            try:
                src = torch.ones(nbytes, dtype=torch.uint8, device=dev)
                dst = torch.empty_like(src)
            except torch.OutOfMemoryError:
                if not out:
                    raise
                break
            point_s = min(POINT_TIME_S, max(budget.left_s(), 0.0) / max(1, len(sizes) - i))
            t, _, _ = median_time_s(lambda: dst.copy_(src), cuda, time_s=point_s)
            del src, dst
            out.append([nbytes, 2.0 * nbytes / t])
            last = (nbytes, t)
    return out


def _launch_overhead_s(dev: torch.device, budget: _Budget) -> float:
    """Median seconds per ``x.add_(1)`` on a 1-element tensor, issued back to back."""
    x = torch.zeros(1, device=dev)
    with torch.no_grad():
        t, _, _ = median_time_s(
            lambda: x.add_(1), _cuda_of(dev), time_s=min(0.5, max(budget.left_s(), 0.0))
        )
    return t


FIRST_TOUCH_BYTES = 64 * 2**20
"""Size of the first-touch probe: above glibc's largest dynamic mmap threshold (32 MiB)."""


def _first_touch_Bps(dev: torch.device, budget: _Budget) -> float | None:
    """Bytes/s of first writes to fresh memory beyond a write to memory kept (module
    docstring), from the least time of each over alternating calls (other tenants only add
    time; at least 5 pairs, more while the budget lasts, at most 25); None when the
    difference is under 10% of the kept write."""
    n = FIRST_TOUCH_BYTES // 4
    kept = torch.empty(n, device=dev).fill_(0.0)
    kept_s = fresh_s = math.inf
    with torch.no_grad():
        for i in range(25):
            start = time.perf_counter()
            kept.fill_(1.0)
            kept_s = min(kept_s, time.perf_counter() - start)
            start = time.perf_counter()
            torch.empty(n, device=dev).fill_(1.0)
            fresh_s = min(fresh_s, time.perf_counter() - start)
            if i >= 4 and budget.left_s() <= 0:
                break
    return first_touch_rate(FIRST_TOUCH_BYTES, kept_s, fresh_s)


def first_touch_rate(nbytes: int, kept_s: float, fresh_s: float) -> float | None:
    """Bytes/s of first touches: ``nbytes / (fresh_s - kept_s)``, from the seconds to write
    ``nbytes`` to memory kept and to fresh memory; None when the difference is under 10% of
    ``kept_s`` (no cost worth charging)."""
    extra_s = fresh_s - kept_s
    return nbytes / extra_s if extra_s > 0.1 * kept_s else None


def _sizes(lo: int, hi: int) -> list[int]:
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= 4
    return out or [lo]


def _device_tasks(
    dev: torch.device,
    dtypes: Sequence[str],
    result: dict[str, Any],
    *,
    matmul_sizes: Sequence[int],
    copy_max_bytes: int,
) -> list[tuple[str, float, Callable[[_Budget], None]]]:
    """(label, weight, run) per benchmark of ``dev``; each ``run`` fills ``result``."""
    tasks: list[tuple[str, float, Callable[[_Budget], None]]] = []

    def matmul(dtype_name: str) -> Callable[[_Budget], None]:
        def run(budget: _Budget) -> None:
            sweep, skipped = _matmul_sweep(dev, dtype_name, budget, matmul_sizes)
            if sweep:
                result["matmul_flops"][dtype_name] = sweep
            else:
                result["matmul_skipped"][dtype_name] = skipped or "no size measured"
                log.info("profile %s: %s not measured: %s", dev, dtype_name, skipped)

        return run

    for name in dtypes:
        _dtype_of(name)  # reject bad names before any measuring
        tasks.append((f"{dev} matmul {name}", _WEIGHT_MATMUL, matmul(name)))

    def copy(budget: _Budget) -> None:
        sweep = _copy_sweep(dev, budget, copy_max_bytes)
        result["copy_Bps"] = sweep
        result["copy_bytes"] = int(sweep[-1][0])
        result["mem_bandwidth_Bps"] = float(sweep[-1][1])

    def launch(budget: _Budget) -> None:
        result["launch_overhead_s"] = _launch_overhead_s(dev, budget)

    def first_touch(budget: _Budget) -> None:
        result["first_touch_Bps"] = _first_touch_Bps(dev, budget)

    def calibrate(budget: _Budget) -> None:
        from .costmodel.calibration import calibrate_device

        result["calibration"] = calibrate_device(dev, budget_s=max(budget.left_s(), 0.5))

    tasks.append((f"{dev} copy", _WEIGHT_COPY, copy))
    tasks.append((f"{dev} launch", _WEIGHT_LAUNCH, launch))
    if dev.type == "cpu":
        tasks.append((f"{dev} first touch", _WEIGHT_LAUNCH, first_touch))
    tasks.append((f"{dev} calibrate", _WEIGHT_CALIBRATE, calibrate))
    return tasks


def _new_device_result(dev: torch.device, load_avg: float | None) -> dict[str, Any]:
    return {
        "format": PROFILE_FORMAT_VERSION,
        "profiler": _PROFILER,
        "date": _now_iso(),
        "torch": str(torch.__version__),
        "device": str(dev),
        "model": _device_model(dev),
        "num_threads": torch.get_num_threads(),
        "load_avg_1m": load_avg,
        "matmul_flops": {},
        "matmul_skipped": {},
    }


def _run_tasks(
    tasks: Sequence[tuple[str, float, Callable[[_Budget], None]]],
    budget: _Budget,
    *,
    progress: bool,
) -> None:
    """Run ``tasks`` in order; each gets its weight's share of the budget still left."""
    from tqdm.auto import tqdm

    total_weight = sum(w for _, w, _ in tasks)
    with tqdm(
        total=len(tasks), desc="autopart profile", unit="bench", disable=None if progress else True,
        leave=False,
    ) as bar:
        for label, weight, run in tasks:
            bar.set_postfix_str(label, refresh=True)
            share_s = max(budget.left_s(), 0.0) * weight / total_weight
            total_weight -= weight
            t0 = time.perf_counter()
            run(budget.share(share_s))
            log.debug("profile: %s took %.2f s (share %.2f s)", label, time.perf_counter() - t0,
                      share_s)
            bar.update(1)


def profile_device(
    device: str | torch.device,
    *,
    budget_s: float = 20.0,
    dtypes: Sequence[str] | None = None,
    matmul_sizes: Sequence[int] = MATMUL_SIZES,
    copy_max_bytes: int = COPY_MAX_BYTES,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure one local device: matmul FLOP/s per dtype, copy bandwidth, launch overhead.

    Args:
        device: a local torch device (``"cpu"``, ``"cuda:0"``).
        budget_s: seconds to spend, > 0 (a soft limit: the smallest size of each sweep is
            always measured).
        dtypes: matmul dtype names; default :func:`default_dtypes`. Dtypes the device cannot
            multiply are listed under ``matmul_skipped`` rather than raising.
        matmul_sizes: square sizes n to sweep, ascending.
        copy_max_bytes: the largest on-device copy, bytes (>= 64 KiB).
        progress: show a tqdm progress bar (on a terminal).

    Returns:
        The ``measured`` dict described in the module docstring (JSON-ready).

    Raises:
        ValueError: ``device`` is not a local device, ``budget_s`` is not > 0, a dtype
            name is not a floating-point torch dtype (nor ``"tfloat32"``), sizes are not
            ascending, or ``copy_max_bytes`` is below 64 KiB.
    """
    dev = _check_local(device, "profile_device")
    budget = _budget(budget_s, "profile_device")
    sizes = _check_sizes(matmul_sizes)
    if not isinstance(copy_max_bytes, int) or copy_max_bytes < COPY_MIN_BYTES:
        raise ValueError(
            f"profile_device: copy_max_bytes must be an int >= {COPY_MIN_BYTES} bytes (the "
            f"smallest copy), got {copy_max_bytes!r}"
        )
    dtypes = tuple(default_dtypes(dev) if dtypes is None else dtypes)
    result = _new_device_result(dev, _warn_if_busy())
    tasks = _device_tasks(dev, dtypes, result, matmul_sizes=sizes, copy_max_bytes=copy_max_bytes)
    _run_tasks(tasks, budget, progress=progress)
    result["elapsed_s"] = budget.elapsed_s()
    return result


def _budget(budget_s: float, what: str) -> _Budget:
    if not isinstance(budget_s, (int, float)) or isinstance(budget_s, bool) or not (
        math.isfinite(budget_s) and budget_s > 0
    ):
        raise ValueError(
            f"{what}: budget_s must be a finite number of seconds > 0, got {budget_s!r}"
        )
    return _Budget(float(budget_s))


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(n) for n in sizes)
    if not out or any(n <= 0 for n in out) or list(out) != sorted(set(out)):
        raise ValueError(
            f"matmul_sizes must be positive, distinct and ascending, got {list(sizes)!r}"
        )
    return out


# --------------------------------------------------------------------------- link benchmarks


def _link_kinds(src: torch.device, dst: torch.device, pinned: bool | None) -> list[str]:
    host_side = "cpu" in (src.type, dst.type)
    if not host_side:
        if pinned is not None:
            raise ValueError(
                f"profile_link: pinned={pinned!r} applies to host memory, but {src} -> {dst} "
                f"has no cpu end; pass pinned=None"
            )
        return ["device"]
    if pinned is None:
        if not torch.cuda.is_available():  # pinning needs a CUDA context
            return ["pageable"]
        return ["pinned", "pageable"]
    return ["pinned" if pinned else "pageable"]


def _link_sweep(
    src: torch.device, dst: torch.device, kind: str, budget: _Budget, max_bytes: int
) -> tuple[list[int], list[float]]:
    """Sizes and median seconds per ``dst_t.copy_(src_t)`` for one host-memory kind."""
    cuda = _cuda_of(src, dst)
    pin = kind == "pinned"
    free = min(_free_bytes(src), _free_bytes(dst)) * MEMORY_FRACTION
    sizes = _sizes(LINK_MIN_BYTES, max_bytes)
    done_sizes: list[int] = []
    times: list[float] = []
    with torch.no_grad():
        for i, nbytes in enumerate(sizes):
            if times and nbytes > free:
                break
            if times:
                predicted_s = (times[-1] * nbytes / done_sizes[-1]) * (MIN_REPEATS + 6) * 2
                if predicted_s > budget.left_s() and len(times) >= 3:
                    break
            try:
                s = torch.ones(nbytes, dtype=torch.uint8, device=src,
                               pin_memory=pin and src.type == "cpu")
                d = torch.empty(nbytes, dtype=torch.uint8, device=dst,
                                pin_memory=pin and dst.type == "cpu")
            except torch.OutOfMemoryError:
                if len(times) < 2:
                    raise
                break
            point_s = min(POINT_TIME_S, max(budget.left_s(), 0.0) / max(1, len(sizes) - i))
            t, _, _ = median_time_s(
                lambda: d.copy_(s, non_blocking=pin or kind == "device"), cuda, time_s=point_s
            )
            del s, d
            done_sizes.append(nbytes)
            times.append(t)
    return done_sizes, times


def _fit_record(sizes: list[int], times: list[float], what: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"sizes_bytes": sizes, "times_s": times}
    try:
        latency_s, bandwidth_Bps, r2 = fit_alpha_beta(sizes, times)
    except ValueError as e:
        # Fallback: the smallest transfer's time as latency, the largest one's rate.
        latency_s = min(times)
        bandwidth_Bps = max(sizes) / max(times)
        r2 = float("nan")
        rec["error"] = str(e)
        log.warning("profile %s: alpha-beta fit failed (%s); using the smallest time as latency "
                    "and the largest transfer's rate as bandwidth", what, e)
    rec.update(latency_s=latency_s, bandwidth_Bps=bandwidth_Bps)
    if math.isfinite(r2):
        rec["r2"] = r2
    return rec


def profile_link(
    src: str | torch.device,
    dst: str | torch.device,
    *,
    pinned: bool | None = None,
    budget_s: float = 5.0,
    max_bytes: int = LINK_MAX_BYTES,
) -> dict[str, Any]:
    """Measure the copy ``src -> dst`` over a size sweep and fit latency and bandwidth.

    Sizes go from 4 KiB to ``max_bytes`` in 4x steps (fewer when the budget runs out, but at
    least three); each point is the median time of ``dst_t.copy_(src_t)`` (see the module
    docstring for timing), fitted by :func:`fit_alpha_beta`.

    Args:
        src, dst: two different local devices, at least one of them a CUDA device.
        pinned: for a link with a ``cpu`` end: ``True`` measures from/to pinned host memory
            (``non_blocking=True`` copies), ``False`` pageable memory, ``None`` both. Must be
            ``None`` for a GPU -> GPU link.
        budget_s: seconds to spend (> 0), split evenly over the host-memory kinds.
        max_bytes: largest transfer, bytes.

    Returns:
        The link ``measured`` dict of the module docstring: ``fits`` per kind and ``chosen``.

    Raises:
        ValueError: a device is not local, ``src == dst``, neither end is a CUDA device, or
            ``pinned`` is given for a GPU -> GPU link.
    """
    s = _check_local(src, "profile_link")
    d = _check_local(dst, "profile_link")
    if s == d:
        raise ValueError(f"profile_link: src and dst are both {str(s)!r}; a link joins two devices")
    if s.type != "cuda" and d.type != "cuda":
        raise ValueError(
            f"profile_link: {s} -> {d} has no CUDA end; only host <-> GPU and GPU <-> GPU "
            f"copies are links"
        )
    budget = _budget(budget_s, "profile_link")
    result = _new_link_result(s, d)
    kinds = _link_kinds(s, d, pinned)
    for i, kind in enumerate(kinds):
        share = budget.share(max(budget.left_s(), 0.0) / (len(kinds) - i))
        sizes, times = _link_sweep(s, d, kind, share, max_bytes)
        result["fits"][kind] = _fit_record(sizes, times, f"{s} -> {d} ({kind})")
    result["chosen"] = kinds[0]
    result["elapsed_s"] = budget.elapsed_s()
    return result


def _new_link_result(s: torch.device, d: torch.device) -> dict[str, Any]:
    return {
        "format": PROFILE_FORMAT_VERSION,
        "profiler": _PROFILER,
        "date": _now_iso(),
        "torch": str(torch.__version__),
        "src": str(s),
        "dst": str(d),
        "fits": {},
    }


# --------------------------------------------------------------------------- topology


def _is_local(device: Device, local: Sequence[str]) -> bool:
    """A topology device is profiled when its name is a local torch device of the same kind
    and, if the topology names a model, the local device is that model (so the ``cpu`` of a
    preset describing another machine keeps its numbers)."""
    if device.name not in local or torch.device(device.name).type != device.kind:
        return False
    if device.model:
        actual = _device_model(torch.device(device.name))
        if actual != device.model:
            log.warning(
                "profile: topology device %s is a %r but the local %s is a %r; keeping its numbers",
                device.name, device.model, device.name, actual,
            )
            return False
    return True


def _peer_ok(a: str, b: str) -> bool:
    ia, ib = torch.device(a).index, torch.device(b).index
    try:
        return bool(torch.cuda.can_device_access_peer(ia, ib))
    except Exception as e:
        log.debug("can_device_access_peer(%s, %s) failed: %s", a, b, e)
        return False


def profile_topology(
    topology: Topology | None = None,
    *,
    budget_s: float = 60.0,
    progress: bool = True,
    dtypes: Sequence[str] | None = None,
) -> Topology:
    """Profile the devices of ``topology`` that this machine has, and the links among them.

    Devices are profiled by :func:`profile_device`, links by :func:`profile_link` (see the
    module docstring for what is measured). The result is a new topology
    (``dataclasses.replace``) in which each profiled device has

    * ``peak_flops[dtype]`` = the best measured matmul rate, per measured dtype (dtypes the
      device listed but that were not measured keep their previous numbers);
    * ``mem_bandwidth_Bps`` = the copy rate of the largest on-device copy;
    * ``launch_overhead_s`` = the measured small-op time;
    * ``source`` = ``"measured by autopart.profiler on <date> ..."`` and ``measured`` = the raw
      sweeps.

    Each link between two profiled devices (one of them a GPU) gets ``latency_s`` and
    ``bandwidth_Bps`` from the alpha-beta fit of pinned host memory (host <-> GPU) or of a
    direct copy (GPU <-> GPU); the pageable fit is kept in ``measured``. Host <-> GPU pairs
    and peer-accessible GPU pairs without a described link gain a measured ``"pcie"`` link.
    Devices and links the machine lacks keep their numbers.

    Args:
        topology: the topology to update; default :meth:`Topology.discover`.
        budget_s: seconds for the whole profile (> 0); split over devices and links by weight.
        progress: show a tqdm progress bar (only on a terminal).
        dtypes: matmul dtypes for every device; default :func:`default_dtypes` per device.

    Raises:
        ValueError: ``budget_s`` is not > 0, or a bad dtype name.
    """
    budget = _budget(budget_s, "profile_topology")
    topo = Topology.discover() if topology is None else topology
    local = local_devices()
    devices = [d for d in topo.devices if _is_local(d, local)]
    names = [d.name for d in devices]
    if not devices:
        log.warning("profile: no device of topology %r is on this machine (local: %s); nothing "
                    "measured", topo.name, ", ".join(local))
        return topo

    load_avg = _warn_if_busy()
    tasks: list[tuple[str, float, Callable[[_Budget], None]]] = []
    dev_results: dict[str, dict[str, Any]] = {}
    for d in devices:
        dev = torch.device(d.name)
        res = _new_device_result(dev, load_avg)
        dev_results[d.name] = res
        tasks += _device_tasks(
            dev, tuple(default_dtypes(dev) if dtypes is None else dtypes), res,
            matmul_sizes=MATMUL_SIZES, copy_max_bytes=COPY_MAX_BYTES,
        )

    described = {(lk.src, lk.dst): lk for lk in topo.links}
    pairs: list[tuple[str, str]] = []
    for a in names:
        for b in names:
            if a == b or "cuda" not in (torch.device(a).type, torch.device(b).type):
                continue
            both_gpu = torch.device(a).type == torch.device(b).type == "cuda"
            if (a, b) in described or not both_gpu or _peer_ok(a, b):
                pairs.append((a, b))
    link_results: dict[tuple[str, str], dict[str, Any]] = {}

    def link_task(a: str, b: str) -> Callable[[_Budget], None]:
        def run(share: _Budget) -> None:
            link_results[(a, b)] = profile_link(a, b, budget_s=max(share.left_s(), 1e-3))

        return run

    for a, b in pairs:
        s, d = torch.device(a), torch.device(b)
        weight = _WEIGHT_LINK * len(_link_kinds(s, d, None))
        tasks.append((f"{a} -> {b}", weight, link_task(a, b)))

    log.info("profile: %d benchmarks on %s, budget %.0f s", len(tasks), ", ".join(names), budget_s)
    _run_tasks(tasks, budget, progress=progress)
    date = _dt.date.today().isoformat()

    new_devices = []
    for d in topo.devices:
        res = dev_results.get(d.name)
        new_devices.append(d if res is None else _measured_device(d, res, budget, date))
    new_links = []
    for lk in topo.links:
        res = link_results.pop((lk.src, lk.dst), None)
        new_links.append(lk if res is None else _measured_link(lk, res, date))
    for (a, b), res in link_results.items():  # pairs without a described link
        base = Link(src=a, dst=b, bandwidth_Bps=1.0, latency_s=0.0, kind="pcie")
        new_links.append(_measured_link(base, res, date))
    description = f"profiled by autopart.profiler on {date} in {budget.elapsed_s():.1f} s" + (
        f"; before profiling: {topo.description}" if topo.description else ""
    )
    log.info("profile: done in %.1f s", budget.elapsed_s())
    return dataclasses.replace(
        topo, devices=tuple(new_devices), links=tuple(new_links), description=description
    )


def _measured_device(d: Device, res: dict[str, Any], budget: _Budget, date: str) -> Device:
    res["elapsed_s"] = budget.elapsed_s()
    flops = dict(d.peak_flops)
    for dtype_name, sweep in res["matmul_flops"].items():
        flops[dtype_name] = max(rate for _, rate in sweep)
    kept = sorted(set(d.peak_flops) - set(res["matmul_flops"]))
    source = (
        f"measured by autopart.profiler on {date} (torch {res['torch']}, "
        f"{res['num_threads']} threads): peak_flops = best torch.mm rate over an n x n x n sweep "
        f"(2 n^3 FLOP) for {', '.join(res['matmul_flops']) or 'no dtype'}; mem_bandwidth_Bps = "
        f"dst.copy_(src) of {res['copy_bytes'] / 2**20:.3g} MiB (2 x nbytes moved); "
        f"launch_overhead_s = median x.add_(1) on a 1-element tensor"
    )
    if kept:
        source += f"; {', '.join(kept)} kept from: {d.source or 'the topology'}"
    return dataclasses.replace(
        d,
        peak_flops=flops,
        mem_bandwidth_Bps=res["mem_bandwidth_Bps"],
        launch_overhead_s=res["launch_overhead_s"],
        source=source,
        measured=res,
    )


def _measured_link(lk: Link, res: dict[str, Any], date: str) -> Link:
    chosen = res["chosen"]
    fit = res["fits"][chosen]
    how = "alpha-beta least-squares fit" if "error" not in fit else "fallback (fit failed)"
    source = (
        f"measured by autopart.profiler on {date}: dst.copy_(src) from "
        f"{min(fit['sizes_bytes']) // 1024} KiB to {max(fit['sizes_bytes']) / 2**20:.3g} MiB, "
        f"{how}, {chosen} memory"
    )
    others = [k for k in res["fits"] if k != chosen]
    if others:
        source += f" ({', '.join(others)} in measured)"
    return dataclasses.replace(
        lk,
        bandwidth_Bps=fit["bandwidth_Bps"],
        latency_s=fit["latency_s"],
        source=source,
        measured=res,
    )
