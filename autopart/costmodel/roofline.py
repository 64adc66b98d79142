"""Roofline time of an op on a device.

Plain roofline (a device with no calibration, e.g. a preset's datasheet numbers):

    time = max(flops / peak_flops(dtype), bytes / mem_bandwidth) + launches * launch_overhead

(Williams, Waterman, Patterson, "Roofline: an insightful visual performance model for multicore
architectures", CACM 2009), with a per-kernel launch/dispatch overhead added.

Calibrated (``Device.measured["calibration"]`` has a fit for the op's class -- for
``"transcendental:tanh"`` that class, else ``"transcendental"`` -- see
:mod:`autopart.costmodel.calibration`):

    time = launches * overhead_c + max(x / rate_c, other roofline bound)

with ``x`` the op's FLOPs for the matmul class (its rate scaled by ``peak_flops(dtype) /
peak_flops("float32")`` for other dtypes) and its bytes for the other classes; the other bound
is the plain roofline's memory (matmul) or compute (others) time. A byte-class op larger than
every sample of its fit is also held to the device's ``mem_bandwidth_Bps``: the samples may
have fitted in the caches (on an AMD EPYC VM the elementwise fit reached 150 GB/s up to 50 MB
while a 460 MB gradient sum ran below 35 GB/s, the profiled memory bandwidth). A matmul's
time is then scaled by :func:`autopart.costmodel.calibration.matmul_correction` (the
calibration samples most like it, of the same output row alignment).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..topology import Device
from .calibration import matmul_correction
from .ops import OpCost, base_class


def calibration_of(device: Device) -> dict[str, Any]:
    """The device's per-class fits (empty when it was never calibrated)."""
    measured = device.measured or {}
    return (measured.get("calibration") or {}).get("classes") or {}


def first_touch_Bps(device: Device) -> float | None:
    """Bytes/s at which the device first writes memory fresh from the operating system, beyond
    the write itself (page faults; profiled on CPUs: :mod:`autopart.profiler`); None when not
    measured or when its allocator keeps memory (no cost)."""
    value = (device.measured or {}).get("first_touch_Bps")
    return float(value) if value else None


def roofline_time_s(op: OpCost, device: Device, calibration: dict[str, Any] | None = None) -> float:
    """Predicted seconds for ``op`` on ``device`` (see module docstring).

    ``calibration``: the device's fits, if already looked up (:func:`calibration_of`).
    """
    if op.launches == 0:
        return 0.0
    compute_s = op.flops / device.peak_flops_for(op.dtype)
    memory_s = op.bytes_accessed / device.mem_bandwidth_Bps
    fits = calibration if calibration is not None else calibration_of(device)
    fit = fits.get(op.kind) or fits.get(base_class(op.kind))
    if fit is None:
        return max(compute_s, memory_s) + op.launches * device.launch_overhead_s
    if fit["unit"] == "FLOP":
        rate = fit["rate"] * device.peak_flops_for(op.dtype) / device.peak_flops_for("float32")
        line = op.launches * fit["overhead_s"] + max(op.flops / rate, memory_s)
        return line * matmul_correction(fit, op.flops, op.bytes_accessed, op.aligned)
    bytes_s = op.bytes_accessed / fit["rate"]
    if op.bytes_accessed > max((s[0] for s in fit.get("samples", ())), default=math.inf):
        bytes_s = max(bytes_s, memory_s)  # beyond the samples, which may have fitted in cache
    return op.launches * fit["overhead_s"] + max(bytes_s, compute_s)


def ops_time_s(ops: Iterable[OpCost], device: Device) -> float:
    """Sum of :func:`roofline_time_s` over ``ops`` (ops of one node run back to back)."""
    calibration = calibration_of(device)
    return sum(roofline_time_s(op, device, calibration) for op in ops)
