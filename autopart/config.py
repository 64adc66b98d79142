"""User options for autopart: one dataclass, validated once.

``autopart.backend(**options)`` and ``autopart.plan_model(model, inputs, **options)`` take the
fields of :class:`Config` as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Union

from .kernels.compression import CompressionName
from .passes.training import Optimizer
from .topology import Topology

ObjectiveName = Literal["latency", "throughput", "energy"]
SolverName = Literal["auto", "highs", "cbc"]
InnerName = Literal["eager", "inductor"]
TrainableParameters = Literal["copy", "move"]
ProfileMode = Literal["cached", "always", "never"]

MemorySize = Union[int, str]


class AutopartWarning(UserWarning):
    """autopart could not do what was asked (plan a graph, split a batch) and does the safe
    thing instead: runs the graph as captured, or the whole batch at once."""

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def format_bytes(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that keeps it at 1 or more, to 3 significant
    digits, or whole units from 1000 up (``"33 KiB"``, ``"1.8 TiB"``, ``"1023 KiB"``,
    ``"512 B"``); :func:`parse_bytes` reads it back to within 0.5% and a byte."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        value = nbytes / _SIZE_UNITS[unit.upper()]
        if abs(value) >= 1:
            return f"{value:.0f} {unit}" if abs(value) >= 999.5 else f"{value:.3g} {unit}"
    return f"{nbytes} B"


def parse_bytes(value: MemorySize, *, what: str = "size") -> int:
    """Parse a memory size as accelerate's ``max_memory`` writes it, into bytes.

    Accepts an int (bytes) or a string with a decimal (``"30GB"`` = 30e9 bytes) or binary
    (``"10GiB"`` = 10 * 2**30 bytes) unit; units are case-insensitive, as in
    ``accelerate.utils.convert_file_size_to_int``.

    Raises:
        ValueError: the value is negative or the string has no number or an unknown unit.
        TypeError: the value is neither int nor str.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{what}: expected bytes as an int or a string like '10GiB' or '500MB', "
            f"got {value!r} of type {type(value).__name__}"
        )
    if isinstance(value, int):
        nbytes = value
    elif value.strip().startswith("-"):
        raise ValueError(f"{what}: memory size must be >= 0 bytes, got {value!r}")
    else:
        match = _SIZE_RE.match(value)
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(
                f"{what}: cannot read {value!r} as a memory size; write bytes as an int or a "
                f"number with one of the units {sorted(u for u in _SIZE_UNITS if u)} "
                "(e.g. '10GiB', '500MB')"
            )
        nbytes = int(Decimal(match.group(1)) * _SIZE_UNITS[unit])
    if nbytes < 0:
        raise ValueError(f"{what}: memory size must be >= 0 bytes, got {value!r}")
    return nbytes


@dataclass(kw_only=True)
class Config:
    """How autopart plans and runs a model. Every field has a default that works on any machine."""

    topology: Topology | str | os.PathLike | dict | None = None
    """Devices and links to plan for: a :class:`Topology`, a preset name (see
    ``autopart.presets()``), a path to a topology JSON file, a dict in that file's schema, or None
    for this machine (see ``profile``)."""

    profile: ProfileMode = "cached"
    """With ``topology=None``, which numbers describe this machine: ``"cached"`` its profile from
    the cache when one exists (``autopart topology --profile`` makes it), else nominal numbers;
    ``"always"`` the cached profile, profiling now (up to ``profile_budget_s``) if there is none;
    ``"never"`` nominal numbers only."""

    profile_budget_s: float = 60.0
    """Seconds a profile may take when ``profile="always"`` has to make one."""

    cache_dir: str | os.PathLike | None = None
    """Folder of cached profiles; None: the per-user cache folder (platformdirs)."""

    objective: ObjectiveName = "latency"
    """What the plan minimizes: ``"latency"``, the predicted time of one call; ``"throughput"``,
    the busiest device's time per call when the call's batch is split into micro-batches that
    are pipelined through the devices (see ``num_microbatches``); ``"energy"``, the joules of
    one call, with the time allowed to exceed the best by ``energy_slack``."""

    energy_slack: float = 0.1
    """For ``objective="energy"``: how much slower than the fastest plan (a fraction, >= 0)."""

    energy_eta: float | None = None
    """For ``objective="energy"``, instead of ``energy_slack``: minimize Zeus's weighted cost
    ``eta * energy + (1 - eta) * max_power * time`` (You et al., NSDI 2023), ``eta`` in [0, 1]
    (1: energy alone, 0: time alone). None (default): the slack form. Given with another
    objective, it is a ValueError."""

    optimizer: Optimizer = "adam"
    """For graphs compiled with gradients enabled and tensors that require them (training): the
    optimizer whose state the plan reserves next to each parameter, besides its gradient and
    the activations autograd saves for backward (:mod:`autopart.passes.training`). State bytes
    per parameter byte: ``"adam"`` and ``"adamw"`` 2, ``"sgd_momentum"`` 1, ``"sgd"`` 0;
    ``"none"``: no training step (no gradients, no state; saved activations only), for
    inference run with gradients enabled. Graphs compiled under ``torch.no_grad()`` or
    ``torch.inference_mode()`` reserve none of these."""

    max_memory: dict[str | int, MemorySize] | None = None
    """Memory each device may use, in accelerate's format: ``{"cuda:0": "10GiB", "cpu": "30GB"}``
    (ints are bytes, int keys ``i`` mean ``"cuda:i"``). As in accelerate, when given, devices not
    named get no memory and are not used. None: ``memory_fraction`` of each device's memory."""

    memory_fraction: float = 0.9
    """Share of each device's memory the plan may fill when ``max_memory`` is None (0 < f <= 1);
    the rest is headroom for allocator fragmentation and other processes."""

    device_map: dict[str, str] | str | None = None
    """Where topology devices run on this machine: ``{"cuda:1": "cpu"}`` runs the partitions planned
    for ``cuda:1`` on the local CPU; a single string maps every device. Devices not named must exist
    locally. Used to run plans for hardware this machine lacks (tests, experiments)."""

    solver: SolverName = "auto"
    """MILP solver: ``"highs"`` (HiGHS via highspy), ``"cbc"`` (CBC bundled with PuLP), or
    ``"auto"``: HiGHS when installed, else CBC."""

    time_limit_s: float = 10.0
    """Wall-clock budget of one solve, in seconds; the best solution found so far is returned."""

    mip_rel_gap: float = 1e-2
    """Relative optimality gap at which the solver stops: the plan is then proven within this
    fraction of the best plan under the cost model (the plan reports the gap it reached, often
    far smaller). 0 asks for a proven optimum, which can take much longer on large graphs."""

    min_split_gain: float = 0.05
    """Latency and throughput: a model that fits one device stays there unless a split is
    predicted faster by more than this fraction (a split adds copies and synchronization, and
    a few percent is within the cost model's error). 0 takes any predicted gain."""

    contiguous_stages: bool = False
    """Each device runs one contiguous run of the graph's tasks in execution order (pipeline
    stages as GPipe and PipeDream cut them). False lets the solver give a device several runs,
    which can balance a pipeline better; the runtime schedules either."""

    max_groups: int = 32
    """Coarsening target: the graph is contracted to at most about this many groups (contiguous
    runs of nodes, cut at module boundaries) before the ILP."""

    inner: InnerName = "eager"
    """How each partition runs: ``"eager"`` runs its FX graph op by op; ``"inductor"`` compiles
    it with TorchInductor (``torch._inductor.compile_fx``) on its first call, for the shapes
    and devices of that call (a new input signature compiles again)."""

    num_microbatches: int | None = None
    """Split each call's batch (dim 0 of the inputs) into this many micro-batches, pipelined
    through the plan's devices in fill-drain order (see ``autopart.pipeline``). None: 4 per
    device used for ``objective="throughput"``, 1 (no split) otherwise, and 1 for a plan that
    streams weights from host memory (each micro-batch would copy them again; the plan counts
    one copy per call). Needs a graph whose batch
    size is symbolic (``torch.compile(..., dynamic=True)`` or ``torch._dynamo.mark_dynamic``)
    and samples that do not interact; otherwise autopart runs whole batches (with a warning
    when this was set explicitly)."""

    compression: CompressionName = "none"
    """Lossy compression allowed for activations copied between devices: ``"bf16"`` (float32
    sent as bfloat16, relative error <= 2**-8) or ``"int8"`` (absmax int8 with a per-tensor
    scale, error <= about max|x|/254; inference only: a tensor autograd needs goes as bf16). The
    plan uses it only on copies it makes faster (slow links, large tensors), never for graph
    outputs or weights; ``Plan.transfers`` shows which. Bounds: ``autopart.kernels.compression``."""

    trainable_parameters: TrainableParameters = "copy"
    """What a training step does with a parameter that requires grad and lives on another
    device than its plan's: ``"copy"`` (default) copies it there under autograd on every step,
    so its gradient comes back and the optimizer steps where it lives (``Plan.step_copies``
    lists these); the plan counts the copy and its gradient on the planned device, and the
    gradient and optimizer state where the parameter lives. ``"move"`` moves it to its planned
    device, in place (``param.data``, and its ``.grad``), on the first step that needs it, so
    that its gradient and optimizer state stay there, where the plan then reserves them;
    optimizer state already made elsewhere follows it before the next ``optimizer.step()`` (a
    global ``torch.optim`` step pre-hook, for state tensors shaped as the parameter). The
    model then runs only where autopart runs it: its own ``forward`` outside ``torch.compile``
    meets parameters on several devices. A parameter is moved once; a later plan that wants it
    elsewhere copies it. Checked on CUDA only by
    ``tests/test_e2e.py::test_moved_trainable_parameters_train_on_their_planned_gpu``."""

    monitor: bool = False
    """Time every partition on every call after the first (CUDA events on GPUs, the wall clock
    on CPUs) and compare with the plan: ``Compilation.report()`` gives each device's predicted
    and measured busy time per call. Costs two timestamps per partition per call."""

    replan: float | None = None
    """Re-plan a graph when what runs departs from its plan: after ``REPLAN_CALLS`` (3) calls
    timed as with ``monitor`` (implied), if two devices' measured/predicted busy-time ratios
    differ by more than this factor (> 1, e.g. 1.5), the plan is solved again with each
    device's predicted task times multiplied by its ratio, and replaces the old one if it is
    predicted better by more than ``min_split_gain`` under those times
    (:func:`autopart.dynamo.replan_factors`). A new plan is checked the same way (its ratios
    multiply the earlier ones: devices the old plan left idle are measured once they run), up
    to ``REPLAN_MAX_ROUNDS`` (3) re-plans. None (default): never."""

    strict: bool = False
    """If True, a failure to plan or rewrite raises. If False, autopart warns once and runs the
    captured graph unchanged."""

    def __post_init__(self) -> None:
        _check_choice("objective", self.objective, ObjectiveName)
        _check_choice("solver", self.solver, SolverName)
        _check_choice("inner", self.inner, InnerName)
        _check_choice("profile", self.profile, ProfileMode)
        _check_choice("compression", self.compression, CompressionName)
        _check_choice("optimizer", self.optimizer, Optimizer)
        for name in ("profile_budget_s", "memory_fraction", "energy_slack", "time_limit_s", "mip_rel_gap",
                     "min_split_gain"):
            check_number(name, getattr(self, name))
        for name in ("energy_eta", "replan"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), "or None")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise TypeError(
                f"cache_dir must be a folder path or None, got {type(self.cache_dir).__name__} {self.cache_dir!r}"
            )
        if not self.profile_budget_s > 0:
            raise ValueError(f"profile_budget_s must be > 0 seconds, got {self.profile_budget_s!r}")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
        if self.energy_eta is not None and not 0 <= self.energy_eta <= 1:
            raise ValueError(
                f"energy_eta must be in [0, 1] (1: energy alone, 0: time alone) or None, got {self.energy_eta!r}"
            )
        if self.energy_eta is not None and self.objective != "energy":
            raise ValueError(
                f"energy_eta={self.energy_eta!r} applies to objective='energy' only, but objective="
                f"{self.objective!r}; add objective='energy' (or drop energy_eta)"
            )
        if not 0 <= self.energy_slack < math.inf:
            raise ValueError(f"energy_slack must be a finite fraction >= 0 of the best time, got "
                             f"{self.energy_slack!r} (for no time cap, pass energy_eta=1)")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 seconds, got {self.time_limit_s!r}")
        if not 0 <= self.mip_rel_gap < 1:
            raise ValueError(f"mip_rel_gap must be in [0, 1), got {self.mip_rel_gap!r}")
        if not self.min_split_gain >= 0:
            raise ValueError(f"min_split_gain must be >= 0 (a fraction), got {self.min_split_gain!r}")
        _check_count("num_microbatches", self.num_microbatches, " or None (autopart chooses)")
        _check_choice("trainable_parameters", self.trainable_parameters, TrainableParameters)
        for name in ("contiguous_stages", "monitor", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.replan is not None and not self.replan > 1:
            raise ValueError(
                f"replan must be a factor > 1 (e.g. 1.5: re-plan when two devices' measured/predicted "
                f"time ratios differ by more than 1.5x) or None, got {self.replan!r}"
            )
        _check_count("max_groups", self.max_groups)
        if self.max_memory is not None:
            if not isinstance(self.max_memory, dict):
                raise TypeError(
                    f"max_memory must be a dict like {{'cuda:0': '10GiB', 'cpu': '30GB'}}, "
                    f"got {self.max_memory!r}"
                )
            for key, value in self.max_memory.items():
                parse_bytes(value, what=f"max_memory[{key!r}]")
        if self.device_map is not None and not isinstance(self.device_map, (str, dict)):
            raise TypeError(
                "device_map must be a dict like {'cuda:0': 'cpu'} or a single device string, "
                f"got {self.device_map!r}"
            )

    @classmethod
    def from_options(cls, **options) -> Config:
        """Build a Config from keyword options; an unknown option raises TypeError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown autopart option(s) {unknown}; valid options: {sorted(known)}")
        return cls(**options)

    def resolve_topology(self) -> Topology:
        """The Topology this config names (discovering this machine when ``topology`` is None).

        Raises:
            ValueError: a string that is neither a preset name nor an existing file, or a file
                or dict that does not follow the topology schema.
        """
        topo = self.topology
        if topo is None:
            return self._this_machine()
        if isinstance(topo, Topology):
            return topo
        if isinstance(topo, dict):
            return Topology.from_dict(topo, source="topology option")
        if isinstance(topo, (str, os.PathLike)):
            from .topology import presets

            if isinstance(topo, str) and topo in presets():
                return Topology.preset(topo)
            if os.path.exists(topo):
                return Topology.load(topo)
            path = os.fspath(topo)
            if isinstance(topo, os.PathLike) or os.sep in path or path.endswith(".json"):
                raise ValueError(f"topology={path!r}: no such file; give the path of a topology JSON file "
                                 "(`autopart topology --save FILE` writes one), or a preset name")
            raise ValueError(
                f"topology={topo!r} is neither a preset ({presets()}) nor an existing file; "
                "pass a preset name, a path to a topology JSON file, or None to discover this machine"
            )
        raise TypeError(
            f"topology must be a Topology, a preset name, a path, a dict or None, got {topo!r}"
        )

    def _this_machine(self) -> Topology:
        from . import cache

        if self.profile == "never":
            return Topology.discover()
        if self.profile == "always":
            return cache.cached_profile(cache_dir=self.cache_dir, budget_s=self.profile_budget_s)
        profiled, _ = cache.load_cached_profile(cache_dir=self.cache_dir)
        return profiled if profiled is not None else Topology.discover()

    def capacities_bytes(self, topology: Topology) -> dict[str, int]:
        """Bytes each topology device may hold under this config (0 = do not use).

        Raises:
            ValueError: a ``max_memory`` key names no device of the topology.
        """
        if self.max_memory is None:
            return {d.name: int(d.memory_bytes * self.memory_fraction) for d in topology.devices}
        caps = {d.name: 0 for d in topology.devices}
        for key, value in self.max_memory.items():
            name = f"cuda:{key}" if isinstance(key, int) else key
            if name not in caps:
                raise ValueError(
                    f"max_memory names device {key!r}, which topology {topology.name!r} does not "
                    f"have; its devices are {topology.device_names}"
                )
            caps[name] = parse_bytes(value, what=f"max_memory[{key!r}]")
        return caps


def _check_count(name: str, value: object, alternative: str = "") -> None:
    """TypeError unless ``value`` is an int (not a bool), or None where ``alternative`` says so;
    ValueError if it is below 1."""
    if value is None and alternative:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int{alternative}, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int{alternative}, got {value!r}")


def check_number(name: str, value: object, alternative: str = "") -> None:
    """Raise TypeError naming ``name`` unless ``value`` is an int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number{' ' + alternative if alternative else ''}, "
                        f"got {type(value).__name__} {value!r}")


def check_type(value: object, kind: type, name: str, hint: str) -> None:
    """Raise TypeError naming ``name`` and the fix (``hint``) unless ``value`` is a ``kind``."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be an autopart {kind.__name__}, got {type(value).__name__}; {hint}")


def _check_choice(name: str, value: object, choices) -> None:
    allowed = choices.__args__
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


__all__ = ["AutopartWarning", "Config", "parse_bytes"]
