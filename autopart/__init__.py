"""autopart: a torch.compile backend that spreads a model over the devices it can reach.

    model = torch.compile(model, backend="autopart")                 # this machine, defaults
    model = torch.compile(model, backend=autopart.backend(**options)) # see autopart.Config
    plans = autopart.plan_model(model, example_inputs, **options)     # plan without running
"""

import importlib

from .coarsen import PlacementProblem
from .config import Config, parse_bytes
from .dynamo import (
    AutopartWarning,
    Backend,
    Compilation,
    analyze,
    autopart_backend,
    backend,
    compilations,
    last_plans,
    plan_graph,
    plan_model,
    reset,
    solve_graph,
)
from .graph import AnnotatedGraph
from .plan import Plan, Transfer
from .solver import Solution, solve
from .topology import Device, Link, Topology, presets

__version__ = "0.1.0"

_SUBMODULES = ("baselines", "explain", "viz")


def __getattr__(name: str):
    """``autopart.baselines``, ``autopart.explain`` and ``autopart.viz``, imported when first
    used (pictures need matplotlib and pydot only then)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'autopart' has no attribute {name!r}")

__all__ = [
    "AnnotatedGraph",
    "AutopartWarning",
    "Backend",
    "Compilation",
    "Config",
    "Device",
    "Link",
    "PlacementProblem",
    "Plan",
    "Solution",
    "Topology",
    "Transfer",
    "analyze",
    "autopart_backend",
    "backend",
    "compilations",
    "last_plans",
    "parse_bytes",
    "plan_graph",
    "plan_model",
    "presets",
    "reset",
    "solve",
    "solve_graph",
]
