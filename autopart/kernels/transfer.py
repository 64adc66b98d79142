"""Device-to-device copies inserted by the rewrite on cut edges."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_map


def transfer(value: Any, device: torch.device) -> Any:
    """Copy every tensor in ``value`` (a tensor or pytree) to ``device``; others pass through.

    A tensor already on ``device`` is returned as is (no copy). Differentiable: gradients flow
    back to the source device. Copies to a GPU are ``non_blocking`` (ordered on the destination's
    current stream, where the reader runs); copies to the CPU block, since CPU readers do not
    wait on streams.
    """
    device = torch.device(device)
    non_blocking = device.type != "cpu"
    return tree_map(
        lambda t: t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t,
        value,
    )
