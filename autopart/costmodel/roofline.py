"""Roofline time of an op on a device.

time = max(flops / peak_flops(dtype), bytes / mem_bandwidth) + launches * launch_overhead

(Williams, Waterman, Patterson, "Roofline: an insightful visual performance model for multicore
architectures", CACM 2009), with a per-kernel launch/dispatch overhead added. Peak rates are the
device's nominal or profiled numbers from the topology; efficiency curves come later.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..topology import Device
from .ops import OpCost


def roofline_time_s(op: OpCost, device: Device) -> float:
    """Predicted seconds for ``op`` on ``device`` (see module docstring)."""
    compute_s = op.flops / device.peak_flops_for(op.dtype)
    memory_s = op.bytes_accessed / device.mem_bandwidth_Bps
    return max(compute_s, memory_s) + op.launches * device.launch_overhead_s


def ops_time_s(ops: Iterable[OpCost], device: Device) -> float:
    """Sum of :func:`roofline_time_s` over ``ops`` (ops of one node run back to back)."""
    return sum(roofline_time_s(op, device) for op in ops)
