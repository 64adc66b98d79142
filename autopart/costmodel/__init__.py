"""Cost model: op cost rules (FLOPs, bytes), roofline time per device, transfer cost."""

from .ops import CostRecorder, OpCost, aten_op_cost, default_cost, register_cost
from .roofline import ops_time_s, roofline_time_s

__all__ = [
    "CostRecorder",
    "OpCost",
    "aten_op_cost",
    "default_cost",
    "ops_time_s",
    "register_cost",
    "roofline_time_s",
]
