"""The one place where autopart touches private or version-dependent torch APIs.

Private modules move between releases (autopart supports torch >= 2.11); each helper here
has a fallback, so a moved symbol degrades an estimate instead of breaking a compile.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Size used for a symbolic dimension that has no hint (an unbacked symbol), in elements.
UNHINTED_SIZE = 64


def concrete_int(value: Any, fallback: int = UNHINTED_SIZE) -> int:
    """Return a plain int for an int or a SymInt, without adding guards.

    A SymInt gives its optimization hint (the size seen when it was traced); an unbacked
    symbol with no hint gives ``fallback``. Used for cost and memory estimates only.
    """
    if isinstance(value, int):
        return value
    if isinstance(value, torch.SymInt):
        try:
            from torch.fx.experimental.symbolic_shapes import optimization_hint

            return int(optimization_hint(value, fallback=fallback))
        except ImportError:
            pass
        except Exception:  # noqa: BLE001 - any failure means "no hint"
            return fallback
        node = value.node
        for attr in ("hint", "_hint"):
            hint = getattr(node, attr, None)
            if hint is not None:
                return int(hint)
        return fallback
    return int(value)


def flop_registry() -> dict:
    """torch.utils.flop_counter's registry: aten overload packet -> FLOP formula.

    Each formula is called as ``f(*args, out_val=out, **kwargs)`` (see ``shape_wrapper`` in
    torch/utils/flop_counter.py). Returns an empty dict if the module moved.
    """
    try:
        from torch.utils.flop_counter import flop_registry as registry
    except ImportError:  # pragma: no cover - present in every supported release
        log.warning("torch.utils.flop_counter.flop_registry not found; FLOPs will count as 0")
        return {}
    return registry


def detect_fake_mode(values: list[Any]):
    """The FakeTensorMode that owns any fake tensor among ``values``, or None."""
    from torch._guards import detect_fake_mode as _detect

    return _detect(values)


def is_static_input(node: torch.fx.Node) -> bool:
    """True if Dynamo marked this placeholder as a parameter or buffer (a static input).

    Dynamo (with ``inline_inbuilt_nn_modules``, the default since 2.5) lifts module parameters
    and buffers to placeholders and tags them with ``_dynamo_static_input_type``.
    """
    tensor_dict = node.meta.get("tensor_dict") or {}
    return "_dynamo_static_input_type" in tensor_dict


_SOURCE_TOKEN = re.compile(r"_(?:modules|parameters|buffers)_")


def parameter_fqn(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    """The name a lifted parameter or buffer has in the user's model (``"fc1.weight"``).

    Dynamo names the placeholder after its source, ``L['self']._modules['fc1']._parameters
    ['weight']`` becoming ``l_self_modules_fc1_parameters_weight_``; graphs that keep modules
    record names in ``gm.meta["dynamo_flat_name_to_original_fqn"]``. Falls back to the node name.
    """
    fqns = getattr(gm, "meta", {}).get("dynamo_flat_name_to_original_fqn", {})
    if node.name in fqns:
        return fqns[node.name]
    if node.op == "get_attr":
        return str(node.target)
    parts = _SOURCE_TOKEN.split(node.name)
    if len(parts) < 2:
        return node.name
    return ".".join(parts[1:]).rstrip("_")


def reset_with_dynamo(backend: Any) -> None:
    """Have ``torch._dynamo.reset()`` call ``backend.reset()``. Dynamo records the backends of
    ``torch.compile`` calls in ``eval_frame.cached_backends`` and forgets them on a reset, while
    the functions compiled before keep calling them: a backend must record itself again when
    it compiles, or a second reset passes it by. Without that dict (a later torch), nothing."""
    cached = getattr(getattr(torch._dynamo, "eval_frame", None), "cached_backends", None)
    if isinstance(cached, dict):
        cached.setdefault(id(backend), backend)
