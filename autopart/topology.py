"""Devices, links and hosts: the hardware a plan is made for.

A :class:`Topology` is a set of :class:`Device` (places that compute and hold memory) and
directed :class:`Link` (connections between two devices, costed by the alpha-beta model
``time_s = latency_s + nbytes / bandwidth_Bps``). It comes from one of three places:

* :meth:`Topology.discover` -- this machine, with nominal (not profiled) numbers;
* :meth:`Topology.preset` -- a bundled JSON file (``autopart/presets/<name>.json``, list them
  with :func:`presets`), with datasheet numbers;
* :meth:`Topology.load` / :meth:`Topology.from_dict` -- a user's JSON file or dict.

JSON schema (version 1)
-----------------------
Top level, an object::

    name            str, required      a label for the topology ("8xh100-nvlink")
    description     str, optional      free text
    schema_version  int, optional      1 (the only version this module reads)
    hosts           list[str], opt.    the hosts the devices name; if given it must equal
                                       the set of ``device.host`` values (checked, not needed)
    devices         list, required     one object per device, at least one (below)
    links           list, required     one object per directed link, may be empty (below)
    meshes          list, optional     named device meshes (below); default none
    discovery       object, optional   facts found by :meth:`Topology.discover` (below);
                                       written by autopart, not needed in hand-written files

A device object (unknown keys are rejected, so a typo cannot pass silently)::

    name               str, required    unique in the topology: "cpu", "cuda:0"; on multi-host
                                        topologies prefix the host: "node1/cuda:0"
    kind               str, required    "cpu" or "cuda"
    host               str, optional    the machine it sits in; default "localhost"
    model              str, optional    "NVIDIA H100 80GB HBM3", "AMD EPYC 7543 32-Core ..."
    memory_bytes       int, required    memory capacity in bytes, > 0 (a float with an
                                        integral value such as 8.589934592e10 is accepted)
    peak_flops         object, required dtype name -> peak FLOP/s, each > 0; must hold
                                        "float32". Keys are torch dtype names ("bfloat16",
                                        "float16", "float8_e4m3fn", ...) or "tfloat32" (the
                                        TF32 tensor-core matmul rate for float32 inputs).
    mem_bandwidth_Bps  number, required memory bandwidth in bytes/s, > 0
    launch_overhead_s  number, required per-op dispatch/launch overhead in seconds, >= 0
    idle_power_W       number|null, opt. power drawn when idle, watts, >= 0
    max_power_W        number|null, opt. power limit / TDP, watts, > 0
    source             str, optional    where the numbers come from (datasheet, "measured",
                                        "nominal")
    measured           object|null, opt. raw profile data written by the profiler (sweeps,
                                        fits); see ``autopart.profiler``

A link object (directed: give both directions for a duplex connection)::

    src, dst           str, required    device names, different, both in ``devices``
    bandwidth_Bps      number, required bytes/s in the src -> dst direction, > 0, finite
    latency_s          number, required seconds per transfer (the alpha term), >= 0
    kind               str, required    "pcie", "nvlink", "host", "network" or "loopback"
    source             str, optional    where the numbers come from
    measured           object|null, opt. raw profile data written by the profiler

A mesh object (a ``torch.distributed.DeviceMesh`` to be: identical devices, named axes)::

    name        str, required        unique among the meshes: "gpus"
    axis_names  list[str], required  one name per axis, unique, e.g. ["dp", "tp"]
    devices     nested list, required  device names nested one list level per axis, so its
                                     shape is the mesh shape: [["node0/cuda:0", ...],
                                     ["node1/cuda:0", ...]] is shape (2, 8) for ["dp", "tp"].
                                     Rectangular, every name in ``devices``, all of one
                                     ``kind``, each device at most once in the mesh.

The discovery object is :class:`DiscoveryReport` as a dict (``host``, ``gpus``, ``gpu_pairs``,
``notes``, ...); see that class for the fields. It is not compared by ``==`` (two discoveries
of one machine differ in power draw).

Routing
-------
:meth:`Topology.link` returns the direct link when one is described. Otherwise it derives a
route and caches it: inside a host, through the host's ``cpu`` device(s) (data staged in host
memory); across hosts, through the network links described between the hosts' devices (plus
intra-host hops at either end). A derived link's latency is the sum over its hops and its
bandwidth the minimum (a pipelined, cut-through copy). Among candidate routes the one with
the least time for a 16 MiB reference message (:data:`ROUTE_REFERENCE_BYTES`) wins, ties broken
by fewer hops, then by device names. ``src == dst`` is a ``"loopback"`` link with infinite
bandwidth and zero latency.

Hosts and hierarchy
-------------------
Every device names its ``host``. A cost model asks:

* :meth:`Topology.host_of` ``(device) -> str`` and :meth:`Topology.devices_on`
  ``(host, kind=None) -> list[str]`` (the hierarchy: hosts, then devices on each);
* :meth:`Topology.same_host` ``(a, b) -> bool``: whether a copy stays inside one machine;
* :meth:`Topology.hops` ``(a, b) -> tuple[Link, ...]``: the described links along the route,
  and :meth:`Topology.bottleneck` ``(a, b) -> Link``: the slowest of them (its ``kind`` says
  whether the network, PCIe or NVLink limits the pair). ``Topology.link(a, b)`` already costs
  the whole route; its ``kind`` is ``"network"`` whenever the route leaves the host.
* :attr:`Topology.meshes` and :meth:`Topology.mesh` ``(name)``: named meshes; a
  :class:`Mesh` gives its ``shape`` and :meth:`Mesh.axis_groups` (the device groups along an
  axis, in the order ``DeviceMesh`` forms its process groups).

Discovery
---------
:meth:`Topology.discover` builds the devices and links of this machine and keeps what it found
in :attr:`Topology.discovery` (a :class:`DiscoveryReport`): the CPU (model, physical/logical/
usable cores, memory, NUMA nodes from ``/sys/devices/system/node``), each CUDA GPU (name,
memory, SM count, compute capability from ``torch.cuda``; with NVML from nvidia-ml-py: power
limit and draw, PCIe generation and width, NVLink state, version and remote peer per link), and
the NVML topology level between each GPU pair. A GPU pair gets an ``"nvlink"`` link when NVML
shows links joining it: n direct links x the per-link rate of their NVLink version
(:data:`NVLINK_PER_LINK_Bps_BY_VERSION`), or, through NVSwitches, the lesser of the two GPUs'
switch links x that rate; other pairs route through the ``cpu`` over PCIe. What could not be
read -- no CUDA, NVML missing or failing, no NUMA information -- is listed in
:attr:`Topology.notes`; discovery itself never raises for it.
"""

from __future__ import annotations

import dataclasses
import glob
import heapq
import json
import logging
import math
import os
import platform
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ._io import atomic_write_text, read_json

log = logging.getLogger(__name__)

__all__ = [
    "DeviceKind",
    "LinkKind",
    "Device",
    "Link",
    "Mesh",
    "Topology",
    "DiscoveryReport",
    "HostFacts",
    "NumaNode",
    "GpuFacts",
    "NvLinkFacts",
    "GpuPairFacts",
    "presets",
    "local_devices",
    "SCHEMA_VERSION",
    "ROUTE_REFERENCE_BYTES",
]

DeviceKind = Literal["cpu", "cuda"]
LinkKind = Literal["pcie", "nvlink", "host", "network", "loopback"]

_DEVICE_KINDS: tuple[str, ...] = typing.get_args(DeviceKind)
_LINK_KINDS: tuple[str, ...] = typing.get_args(LinkKind)

#: The JSON schema version this module writes and reads.
SCHEMA_VERSION = 1

#: Message size used only to choose between candidate routes (a typical activation tensor,
#: e.g. 2048 tokens x 4096 hidden x 2 bytes); the chosen route is then costed per transfer.
ROUTE_REFERENCE_BYTES = 16 * 2**20

_PRESET_DIR = Path(__file__).resolve().parent / "presets"

#: Extra peak_flops key besides torch dtype names: TF32 tensor-core rate for float32 matmuls.
_EXTRA_FLOPS_KEYS = ("tfloat32",)

_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "double": "float64",
    "tf32": "tfloat32",
    "fp8": "float8_e4m3fn",
}

_GiB = 2**30


# --------------------------------------------------------------------------- validation


def _fail(path: str, expected: str, got: Any) -> typing.NoReturn:
    raise ValueError(f"{path}: expected {expected}, got {got!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any, path: str, unit: str) -> int:
    """``value`` as an int > 0; integral floats (``8.0e9``) are accepted."""
    expected = f"a positive integer ({unit})"
    if not _is_number(value):
        _fail(path, expected, value)
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            _fail(path, expected, value)
        value = int(value)
    if value <= 0:
        _fail(path, expected, value)
    return int(value)


def _positive_float(value: Any, path: str, unit: str, *, allow_inf: bool = False) -> float:
    expected = f"a positive {'' if allow_inf else 'finite '}number ({unit})"
    if not _is_number(value) or math.isnan(value) or value <= 0:
        _fail(path, expected, value)
    if not allow_inf and math.isinf(value):
        _fail(path, expected, value)
    return float(value)


def _nonneg_float(value: Any, path: str, unit: str) -> float:
    expected = f"a finite number >= 0 ({unit})"
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        _fail(path, expected, value)
    return float(value)


def _string(value: Any, path: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str) or (nonempty and not value):
        _fail(path, "a non-empty string" if nonempty else "a string", value)
    return value


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        _fail(path, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def _is_flops_key(key: str) -> bool:
    return key in _EXTRA_FLOPS_KEYS or isinstance(getattr(torch, key, None), torch.dtype)


def _peak_flops(value: Any, path: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        _fail(path, 'an object {dtype name: FLOP/s}, e.g. {"float32": 6.7e13}', value)
    out: dict[str, float] = {}
    for key, flops in value.items():
        if not isinstance(key, str) or not _is_flops_key(key):
            raise ValueError(
                f"{path}: unknown dtype name {key!r}; expected a torch dtype name such as "
                f"'float32', 'bfloat16', 'float16', 'float8_e4m3fn', or 'tfloat32'"
            )
        out[key] = _positive_float(flops, f"{path}.{key}", "FLOP/s")
    if "float32" not in out:
        _fail(path, 'a "float32" entry (FLOP/s; the fallback rate for other dtypes)', value)
    return out


def _optional_power(value: Any, path: str, *, positive: bool) -> float | None:
    if value is None:
        return None
    if positive:
        return _positive_float(value, path, "W")
    return _nonneg_float(value, path, "W")


def _measured(value: Any, path: str) -> dict[str, Any] | None:
    """Raw profile data: None, or a JSON object (kept as is; the profiler defines its keys)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        _fail(path, "null or an object of profile data", value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        _fail(path, "JSON-serialisable profile data", value)
    return dict(value)


def _check_device_values(v: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Validate and normalise the field values of one device; errors name ``path.field``."""
    return {
        "name": _string(v["name"], f"{path}.name", nonempty=True),
        "kind": _choice(v["kind"], f"{path}.kind", _DEVICE_KINDS),
        "host": _string(v["host"], f"{path}.host", nonempty=True),
        "model": _string(v["model"], f"{path}.model"),
        "memory_bytes": _positive_int(v["memory_bytes"], f"{path}.memory_bytes", "bytes"),
        "peak_flops": _peak_flops(v["peak_flops"], f"{path}.peak_flops"),
        "mem_bandwidth_Bps": _positive_float(
            v["mem_bandwidth_Bps"], f"{path}.mem_bandwidth_Bps", "bytes/s"
        ),
        "launch_overhead_s": _nonneg_float(
            v["launch_overhead_s"], f"{path}.launch_overhead_s", "seconds"
        ),
        "idle_power_W": _optional_power(v["idle_power_W"], f"{path}.idle_power_W", positive=False),
        "max_power_W": _optional_power(v["max_power_W"], f"{path}.max_power_W", positive=True),
        "source": _string(v["source"], f"{path}.source"),
        "measured": _measured(v["measured"], f"{path}.measured"),
    }


def _check_link_values(v: Mapping[str, Any], path: str, *, allow_inf: bool) -> dict[str, Any]:
    """Validate and normalise the field values of one link; errors name ``path.field``."""
    return {
        "src": _string(v["src"], f"{path}.src", nonempty=True),
        "dst": _string(v["dst"], f"{path}.dst", nonempty=True),
        "bandwidth_Bps": _positive_float(
            v["bandwidth_Bps"], f"{path}.bandwidth_Bps", "bytes/s", allow_inf=allow_inf
        ),
        "latency_s": _nonneg_float(v["latency_s"], f"{path}.latency_s", "seconds"),
        "kind": _choice(v["kind"], f"{path}.kind", _LINK_KINDS),
        "source": _string(v["source"], f"{path}.source"),
        "measured": _measured(v["measured"], f"{path}.measured"),
    }


def _record_from_json(raw: Any, path: str, cls: type) -> dict[str, Any]:
    """Check keys of a JSON object for dataclass ``cls``; return all fields (defaults filled)."""
    if not isinstance(raw, Mapping):
        _fail(path, f"an object with the fields of a {cls.__name__}", raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ValueError(
            f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(fields)}"
        )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = raw[name]
        elif f.default is not dataclasses.MISSING:
            values[name] = f.default
        else:
            raise ValueError(f"{path}.{name}: missing (required field of a {cls.__name__})")
    return values


# --------------------------------------------------------------------------- Device / Link


@dataclass(frozen=True, kw_only=True)
class Device:
    """One place that computes and holds memory.

    Attributes:
        name: unique in the topology: ``"cpu"``, ``"cuda:0"``; on multi-host topologies
            prefixed with the host: ``"node1/cuda:0"``.
        kind: ``"cpu"`` or ``"cuda"``.
        host: the machine the device sits in (default ``"localhost"``).
        model: marketing name, e.g. ``"NVIDIA H100 80GB HBM3"``.
        memory_bytes: memory capacity in bytes (> 0).
        peak_flops: dtype name -> peak FLOP/s (> 0); holds ``"float32"``. ``"tfloat32"`` is
            the TF32 tensor-core rate for float32 matmuls where TF32 is allowed.
        mem_bandwidth_Bps: peak memory bandwidth, bytes/s (> 0).
        launch_overhead_s: per-op dispatch/launch overhead, seconds (>= 0).
        idle_power_W, max_power_W: idle draw and power limit in watts, ``None`` if unknown.
        source: where the numbers come from (datasheet, ``"measured"``, ``"nominal"``).

    Raises:
        ValueError: a field is out of range (message names the field and the value).
    """

    name: str
    kind: DeviceKind
    host: str = "localhost"
    model: str = ""
    memory_bytes: int
    peak_flops: dict[str, float]
    mem_bandwidth_Bps: float
    launch_overhead_s: float
    idle_power_W: float | None = None
    max_power_W: float | None = None
    source: str = ""
    measured: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        clean = _check_device_values(values, f"Device(name={self.name!r})")
        idle, active = clean["idle_power_W"], clean["max_power_W"]
        if idle is not None and active is not None and idle > active:
            raise ValueError(
                f"Device(name={self.name!r}): idle_power_W={idle} is above max_power_W={active}; "
                "give the idle draw and the power limit (TDP) in watts, idle the smaller"
            )
        for key, value in clean.items():
            object.__setattr__(self, key, value)

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.kind,
                self.host,
                self.model,
                self.memory_bytes,
                tuple(sorted(self.peak_flops.items())),
                self.mem_bandwidth_Bps,
                self.launch_overhead_s,
                self.idle_power_W,
                self.max_power_W,
                self.source,
            )
        )

    def peak_flops_for(self, dtype: torch.dtype | str) -> float:
        """Peak FLOP/s for ``dtype``.

        Args:
            dtype: a ``torch.dtype`` or a dtype name (``"bfloat16"``, ``"torch.bfloat16"``,
                aliases ``"bf16"``, ``"fp16"``, ``"fp32"``, ``"tf32"``).

        Returns:
            ``peak_flops[name]`` if present, else the ``"float32"`` rate (so integer dtypes and
            dtypes the device lists no rate for are costed at the float32 rate).

        Raises:
            TypeError: ``dtype`` is neither a ``torch.dtype`` nor a string.
        """
        if isinstance(dtype, torch.dtype):
            key = str(dtype).removeprefix("torch.")
        elif isinstance(dtype, str):
            key = dtype.removeprefix("torch.")
            key = _DTYPE_ALIASES.get(key.lower(), key)
        else:
            raise TypeError(
                f"peak_flops_for: expected a torch.dtype or a dtype name such as 'bfloat16', "
                f"got {dtype!r} of type {type(dtype).__name__}"
            )
        return self.peak_flops.get(key, self.peak_flops["float32"])

    def to_dict(self) -> dict[str, Any]:
        """The device as a JSON-ready dict (the schema in the module docstring)."""
        d = dataclasses.asdict(self)
        d["peak_flops"] = dict(self.peak_flops)
        return d


@dataclass(frozen=True, kw_only=True)
class Link:
    """A directed connection ``src -> dst`` costed by the alpha-beta model.

    Attributes:
        src, dst: device names.
        bandwidth_Bps: bytes/s in the src -> dst direction (> 0; ``inf`` only for loopback).
        latency_s: fixed cost per transfer in seconds (>= 0).
        kind: ``"pcie"``, ``"nvlink"``, ``"host"`` (staged through host memory),
            ``"network"`` or ``"loopback"``.
        source: where the numbers come from; for a derived route, the hops taken.

    Raises:
        ValueError: a field is out of range (message names the field and the value).
    """

    src: str
    dst: str
    bandwidth_Bps: float
    latency_s: float
    kind: LinkKind
    source: str = ""
    measured: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        clean = _check_link_values(values, f"Link({self.src!r} -> {self.dst!r})", allow_inf=True)
        for key, value in clean.items():
            object.__setattr__(self, key, value)

    def __hash__(self) -> int:  # ``measured`` (a dict) is left out
        return hash((self.src, self.dst, self.bandwidth_Bps, self.latency_s, self.kind, self.source))

    def transfer_time_s(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` bytes: ``latency_s + nbytes / bandwidth_Bps``.

        Source: the alpha-beta (Hockney) model of point-to-point communication.

        Raises:
            ValueError: ``nbytes`` is negative or not a number.
        """
        if not _is_number(nbytes) or not nbytes >= 0:
            raise ValueError(
                f"transfer_time_s: nbytes must be a number >= 0 (bytes), got {nbytes!r}"
            )
        return self.latency_s + nbytes / self.bandwidth_Bps

    def to_dict(self) -> dict[str, Any]:
        """The link as a JSON-ready dict (the schema in the module docstring)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- Mesh


def _mesh_array(value: Any, depth: int, num_axes: int, path: str) -> tuple[Any, tuple[int, ...]]:
    """``value`` as nested tuples of device names, ``depth`` list levels deep; and its shape."""
    if depth == 0:
        if isinstance(value, (list, tuple)):
            _fail(
                path,
                f"a device name (string): devices nests deeper than the {num_axes} axes "
                f"in axis_names; add an axis name or flatten one level",
                value,
            )
        return _string(value, path, nonempty=True), ()
    if not isinstance(value, (list, tuple)) or not value:
        _fail(
            path,
            f"a non-empty list: devices nests one list level per axis ({num_axes} axes in "
            f"axis_names, so {num_axes} levels)",
            value,
        )
    items, shape = [], None
    for i, child in enumerate(value):
        item, child_shape = _mesh_array(child, depth - 1, num_axes, f"{path}[{i}]")
        if shape is None:
            shape = child_shape
        elif child_shape != shape:
            raise ValueError(
                f"{path}[{i}]: the mesh is not rectangular: this entry has shape "
                f"{child_shape}, {path}[0] has shape {shape}; give every row the same length"
            )
        items.append(item)
    assert shape is not None
    return tuple(items), (len(items), *shape)


def _flatten(nested: Any) -> list[str]:
    if isinstance(nested, str):
        return [nested]
    return [name for child in nested for name in _flatten(child)]


def _check_mesh_values(v: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Validate one mesh on its own (not against a topology); errors name ``path.field``."""
    name = _string(v["name"], f"{path}.name", nonempty=True)
    raw_axes = v["axis_names"]
    if not isinstance(raw_axes, (list, tuple)) or not raw_axes:
        _fail(f"{path}.axis_names", 'a non-empty list of axis names, e.g. ["dp", "tp"]', raw_axes)
    axes = tuple(
        _string(a, f"{path}.axis_names[{i}]", nonempty=True) for i, a in enumerate(raw_axes)
    )
    for i, a in enumerate(axes):
        if a in axes[:i]:
            raise ValueError(
                f"{path}.axis_names[{i}]: axis {a!r} is named twice; axis names must be unique"
            )
    devices, _ = _mesh_array(v["devices"], len(axes), len(axes), f"{path}.devices")
    seen: set[str] = set()
    for dev in _flatten(devices):
        if dev in seen:
            raise ValueError(
                f"{path}.devices: device {dev!r} appears twice in mesh {name!r}; a device may "
                f"appear at most once per mesh"
            )
        seen.add(dev)
    return {"name": name, "axis_names": axes, "devices": devices}


@dataclass(frozen=True, kw_only=True)
class Mesh:
    """A named, rectangular arrangement of identical devices: a ``DeviceMesh`` to be.

    Attributes:
        name: unique among the topology's meshes.
        axis_names: one name per axis (``("dp", "tp")``), unique; ``axis`` means a mesh axis,
            ``dim`` a tensor dimension.
        devices: device names as nested tuples, one level per axis (lists are accepted and
            turned into tuples); the nesting's shape is :attr:`shape`.

    Raises:
        ValueError: an empty or duplicated axis name, a nesting depth other than the number of
            axes, a ragged (non-rectangular) nesting, or a device named twice. Whether the
            devices exist and share one kind is checked by :class:`Topology`.
    """

    name: str
    axis_names: tuple[str, ...]
    devices: tuple[Any, ...]

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        clean = _check_mesh_values(values, f"Mesh(name={self.name!r})")
        for key, value in clean.items():
            object.__setattr__(self, key, value)

    @property
    def shape(self) -> tuple[int, ...]:
        """Devices along each axis, in ``axis_names`` order."""
        shape, level = [], self.devices
        while not isinstance(level, str):
            shape.append(len(level))
            level = level[0]
        return tuple(shape)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.axis_names)

    @property
    def device_names(self) -> list[str]:
        """All devices, flattened in row-major order (the rank order of a ``DeviceMesh``)."""
        return _flatten(self.devices)

    def axis_index(self, axis: str | int) -> int:
        """The position of ``axis`` (a name, or an index that may be negative).

        Raises:
            ValueError: an unknown axis name or an index out of range (lists the axes).
        """
        if isinstance(axis, str):
            if axis in self.axis_names:
                return self.axis_names.index(axis)
        elif isinstance(axis, int) and not isinstance(axis, bool):
            if -self.ndim <= axis < self.ndim:
                return axis % self.ndim
        raise ValueError(
            f"mesh {self.name!r} has no axis {axis!r}; its axes are {list(self.axis_names)} "
            f"(give a name or an index in [{-self.ndim}, {self.ndim}))"
        )

    def axis_size(self, axis: str | int) -> int:
        """Devices along ``axis``. Raises ValueError as :meth:`axis_index`."""
        return self.shape[self.axis_index(axis)]

    def axis_groups(self, axis: str | int) -> list[list[str]]:
        """The groups of devices that communicate along ``axis``: each group varies the
        coordinate of ``axis`` and fixes all others, so the groups partition the mesh and
        each has ``axis_size(axis)`` devices.

        Groups come in the order ``torch.distributed.DeviceMesh`` creates its per-axis process
        groups: row-major in the coordinates of the other axes (``_MeshLayout.remap_to_tensor``
        in torch 2.13; the set of groups is the same in every torch version). Inside a group,
        devices run along ``axis``. For a ``("dp", "tp")`` mesh of shape (2, 8),
        ``axis_groups("tp")`` is the 2 rows (one host's 8 GPUs each) and
        ``axis_groups("dp")`` the 8 columns (one GPU of each host).

        Raises:
            ValueError: as :meth:`axis_index`.
        """
        index = self.axis_index(axis)
        names = self.device_names
        ranks = torch.arange(len(names)).reshape(self.shape)
        groups = ranks.movedim(index, -1).reshape(-1, self.shape[index]).tolist()
        return [[names[r] for r in group] for group in groups]

    def coordinate(self, device: str) -> tuple[int, ...]:
        """The index of ``device`` along each axis.

        Raises:
            ValueError: ``device`` is not in the mesh.
        """
        names = self.device_names
        if device not in names:
            raise ValueError(
                f"device {device!r} is not in mesh {self.name!r}; its devices: {', '.join(names)}"
            )
        flat, coord = names.index(device), []
        for size in reversed(self.shape):
            flat, rest = divmod(flat, size)
            coord.append(rest)
        return tuple(reversed(coord))

    def to_dict(self) -> dict[str, Any]:
        """The mesh as a JSON-ready dict (nested lists)."""
        return {"name": self.name, "axis_names": list(self.axis_names),
                "devices": _to_json(self.devices)}


def _to_json(value: Any) -> Any:
    """Tuples (also nested, also in dicts) as lists, for JSON and for dict comparison."""
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _check_meshes(
    meshes: list[Mesh], kinds: Mapping[str, str], where: str
) -> None:
    """Meshes against a topology: unique names, existing devices, one device kind each."""
    names: set[str] = set()
    for i, mesh in enumerate(meshes):
        path = f"{where}.meshes[{i}]"
        if mesh.name in names:
            raise ValueError(
                f"{path}.name: mesh {mesh.name!r} is named twice; mesh names must be unique"
            )
        names.add(mesh.name)
        for dev in mesh.device_names:
            if dev not in kinds:
                raise ValueError(
                    f"{path}.devices: unknown device {dev!r}; known devices: "
                    f"{', '.join(kinds)}"
                )
        mesh_kinds = sorted({kinds[d] for d in mesh.device_names})
        if len(mesh_kinds) > 1:
            raise ValueError(
                f"{path}.devices: mesh {mesh.name!r} mixes device kinds {mesh_kinds}; a mesh "
                f"holds devices of one kind (as a DeviceMesh has one device_type)"
            )


# --------------------------------------------------------------------------- discovery facts


@dataclass(frozen=True, kw_only=True)
class NumaNode:
    """One NUMA node as Linux lists it under ``/sys/devices/system/node/node<id>/``.

    Attributes:
        id: the node number.
        cpus: logical CPU ids of the node (``cpulist``); empty for a memory-only node.
        memory_bytes: the node's ``MemTotal`` (``meminfo``), ``None`` if unreadable.
    """

    id: int
    cpus: tuple[int, ...]
    memory_bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    """The machine discovery ran on.

    Attributes:
        hostname: ``platform.node()``.
        cpu_model: ``model name`` of ``/proc/cpuinfo``, else ``platform.processor()``.
        num_physical_cores: ``psutil.cpu_count(logical=False)``; ``None`` if psutil cannot
            tell.
        num_logical_cores: ``psutil.cpu_count()`` (hardware threads), else ``os.cpu_count()``.
        num_usable_cores: logical cores this process may run on (``os.sched_getaffinity``).
        memory_bytes: ``psutil.virtual_memory().total``; ``None`` if unreadable.
        cpu_clock_hz: ``psutil.cpu_freq()`` max (else current) in Hz; ``None`` if unknown.
        numa_nodes: the NUMA nodes, empty where Linux does not show them.
        cpu_power_limit_W: the CPU packages' power limit (:func:`_rapl_power_limit_W`);
            ``None`` where Linux does not show it (most VMs).
    """

    hostname: str
    cpu_model: str
    num_physical_cores: int | None
    num_logical_cores: int
    num_usable_cores: int
    memory_bytes: int | None
    cpu_clock_hz: float | None = None
    numa_nodes: tuple[NumaNode, ...] = ()
    cpu_power_limit_W: float | None = None


@dataclass(frozen=True, kw_only=True)
class NvLinkFacts:
    """One NVLink link of a GPU, from NVML.

    Attributes:
        link: the link index (0 .. ``NVML_NVLINK_MAX_LINKS`` - 1).
        active: ``nvmlDeviceGetNvLinkState`` is ``NVML_FEATURE_ENABLED``.
        version: ``nvmlDeviceGetNvLinkVersion``: an ``nvmlNvlinkVersion_t`` value (1 = 1.0,
            2 = 2.0, 3 = 2.2, 4 = 3.0, 5 = 3.1, 6 = 4.0, 7 = 5.0), not the NVLink generation.
        remote_pci_bus_id: the far end's PCI bus id (``nvmlDeviceGetNvLinkRemotePciInfo``),
            lower-case ``"0000:07:00.0"``.
        remote_kind: ``"gpu"``, ``"switch"`` (an NVSwitch), ``"cpu"`` (an IBM NPU) or
            ``"unknown"`` (``nvmlDeviceGetNvLinkRemoteDeviceType``, else inferred: a bus id
            of a local GPU is a GPU).
        peer: the local device (``"cuda:1"``) at the far end, when it is a GPU torch sees.
    """

    link: int
    active: bool
    version: int | None = None
    remote_pci_bus_id: str | None = None
    remote_kind: str = "unknown"
    peer: str | None = None


@dataclass(frozen=True, kw_only=True)
class GpuFacts:
    """One CUDA GPU: torch facts, and NVML facts when NVML answered (else ``None``).

    Attributes:
        device: the device name in the topology (``"cuda:0"``, torch's index).
        name: ``torch.cuda.get_device_properties(i).name``.
        memory_bytes: its ``total_memory``.
        num_sms: its ``multi_processor_count``.
        compute_capability: ``(major, minor)``.
        pci_bus_id: ``nvmlDeviceGetPciInfo().busId``, lower-case ``"0000:07:00.0"``.
        numa_node: ``/sys/bus/pci/devices/<bus id>/numa_node``, ``None`` if none or unknown.
        power_limit_W: ``nvmlDeviceGetEnforcedPowerLimit`` (mW) / 1000.
        power_draw_W: ``nvmlDeviceGetPowerUsage`` (mW) / 1000, at discovery time.
        pcie_generation, pcie_width: current PCIe link (``nvmlDeviceGetCurrPcieLink*``); an
            idle GPU may train down, so the link cost uses the max below.
        pcie_max_generation, pcie_max_width: ``nvmlDeviceGetMaxPcieLink*`` (GPU and slot).
        nvlinks: the NVLink links NVML lists, in link order.
    """

    device: str
    name: str
    memory_bytes: int
    num_sms: int
    compute_capability: tuple[int, int]
    pci_bus_id: str | None = None
    numa_node: int | None = None
    power_limit_W: float | None = None
    power_draw_W: float | None = None
    pcie_generation: int | None = None
    pcie_width: int | None = None
    pcie_max_generation: int | None = None
    pcie_max_width: int | None = None
    nvlinks: tuple[NvLinkFacts, ...] = ()


#: ``nvmlGpuTopologyLevel_t`` values and the names ``nvidia-smi topo -m`` prints for them.
NVML_TOPOLOGY_LEVEL_NAMES = {
    0: "internal",  # same board (multi-GPU card)
    10: "PIX",  # one PCIe switch
    20: "PXB",  # several PCIe switches, no host bridge
    30: "PHB",  # a PCIe host bridge (the CPU)
    40: "NODE",  # host bridges within one NUMA node
    50: "SYS",  # across NUMA nodes (QPI/UPI/Infinity Fabric)
}


@dataclass(frozen=True, kw_only=True)
class GpuPairFacts:
    """How two GPUs (``a`` before ``b`` in topology order) are connected, from NVML.

    Attributes:
        a, b: device names.
        level: ``nvmlDeviceGetTopologyCommonAncestor(a, b)`` (``nvmlGpuTopologyLevel_t``:
            0 internal, 10 PIX, 20 PXB, 30 PHB, 40 NODE, 50 SYS); ``None`` if unread.
        level_name: its ``nvidia-smi topo -m`` name (:data:`NVML_TOPOLOGY_LEVEL_NAMES`).
        num_nvlinks: active NVLink links from ``a`` whose far end is ``b``.
        nvswitch: both have active links to an NVSwitch (so they reach each other over it).
    """

    a: str
    b: str
    level: int | None = None
    level_name: str | None = None
    num_nvlinks: int = 0
    nvswitch: bool = False


@dataclass(frozen=True, kw_only=True)
class DiscoveryReport:
    """What :meth:`Topology.discover` found, and what it skipped.

    Attributes:
        host: CPU, memory and NUMA facts.
        torch_version: ``torch.__version__``.
        torch_cuda_version: ``torch.version.cuda`` (``None`` for a CPU-only build).
        nvml_driver_version: ``nvmlSystemGetDriverVersion()``; ``None`` without NVML.
        gpus: one entry per CUDA device torch sees, in index order.
        gpu_pairs: one entry per unordered GPU pair (NVML facts), empty without NVML.
        notes: what discovery could not read and what that costs, one sentence each
            (``"NVML not available (...): no power, PCIe or NVLink facts; ..."``).
    """

    host: HostFacts
    torch_version: str
    torch_cuda_version: str | None = None
    nvml_driver_version: str | None = None
    gpus: tuple[GpuFacts, ...] = ()
    gpu_pairs: tuple[GpuPairFacts, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (tuples as lists)."""
        return _to_json(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Any, *, path: str = "discovery") -> DiscoveryReport:
        """Read a report written by :meth:`to_dict`.

        Raises:
            ValueError: an unknown or missing key, or a value of the wrong type (the message
                names the field path, e.g. ``discovery.gpus[0].num_sms``).
        """
        return _facts_from_json(cls, d, path)


def _facts_from_json(cls: type, raw: Any, path: str) -> Any:
    """Build the facts dataclass ``cls`` from JSON, checking each field's type hint."""
    values = _record_from_json(raw, path, cls)
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(hints[k], v, f"{path}.{k}") for k, v in values.items()})


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(path, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(path, f"a list of {len(args)} items", value)
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        return _facts_from_json(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, "true or false", value)
        return value
    if tp is int:
        if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
            _fail(path, "an integer", value)
        return int(value)
    if tp is float:
        if not _is_number(value):
            _fail(path, "a number", value)
        return float(value)
    if tp is str:
        return _string(value, path)
    raise AssertionError(f"no JSON rule for type {tp!r} at {path}")


# --------------------------------------------------------------------------- Topology


@dataclass(frozen=True)
class Topology:
    """Devices and directed links between them; see the module docstring for the schema.

    Attributes:
        name: a label.
        devices: the devices, in a fixed order (``device_names`` keeps it).
        links: the described directed links; routes between other pairs are derived by
            :meth:`link`.
        description: free text.
        meshes: named device meshes (:class:`Mesh`), default none.
        discovery: what :meth:`discover` found and skipped, ``None`` for presets and files
            written by hand. Left out of ``==`` and ``hash``: it describes how the topology
            was found, not what a plan runs on.

    Raises:
        ValueError: no devices, a device named twice, a link naming an absent device, a link
            from a device to itself, the same directed link described twice, a mesh named
            twice, or a mesh naming an absent device or mixing device kinds.
    """

    name: str
    devices: tuple[Device, ...]
    links: tuple[Link, ...]
    description: str = ""
    meshes: tuple[Mesh, ...] = ()
    discovery: DiscoveryReport | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "links", tuple(self.links))
        object.__setattr__(self, "meshes", tuple(self.meshes))
        where = f"Topology(name={self.name!r})"
        _string(self.name, f"{where}.name")
        _string(self.description, f"{where}.description")
        for i, dev in enumerate(self.devices):
            if not isinstance(dev, Device):
                raise TypeError(f"{where}.devices[{i}]: expected a Device, got {dev!r}")
        for i, lnk in enumerate(self.links):
            if not isinstance(lnk, Link):
                raise TypeError(f"{where}.links[{i}]: expected a Link, got {lnk!r}")
        _check_structure(
            [d.name for d in self.devices], [(lk.src, lk.dst) for lk in self.links], where
        )
        for i, mesh in enumerate(self.meshes):
            if not isinstance(mesh, Mesh):
                raise TypeError(f"{where}.meshes[{i}]: expected a Mesh, got {mesh!r}")
        _check_meshes(list(self.meshes), {d.name: d.kind for d in self.devices}, where)
        if self.discovery is not None and not isinstance(self.discovery, DiscoveryReport):
            raise TypeError(
                f"{where}.discovery: expected a DiscoveryReport or None, got {self.discovery!r}"
            )
        object.__setattr__(self, "_by_name", {d.name: d for d in self.devices})
        object.__setattr__(self, "_direct", {(lk.src, lk.dst): lk for lk in self.links})
        # (src, dst) -> (derived Link, route as device names); filled lazily by link().
        object.__setattr__(self, "_routes", {})

    def __repr__(self) -> str:
        meshes = f", meshes={[m.name for m in self.meshes]!r}" if self.meshes else ""
        return (
            f"Topology(name={self.name!r}, devices={self.device_names!r}, "
            f"num_links={len(self.links)}{meshes})"
        )

    # ------------------------------------------------------------------ lookups

    @property
    def device_names(self) -> list[str]:
        """Device names in topology order."""
        return [d.name for d in self.devices]

    @property
    def hosts(self) -> list[str]:
        """Host names in order of first appearance among the devices."""
        return list(dict.fromkeys(d.host for d in self.devices))

    def device(self, name: str) -> Device:
        """The device called ``name``.

        Raises:
            ValueError: no such device (the message lists the known ones).
        """
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown device {name!r} in topology {self.name!r}; known devices: "
                f"{', '.join(self.device_names)}"
            ) from None

    @property
    def notes(self) -> tuple[str, ...]:
        """What discovery skipped and why (``discovery.notes``); empty when not discovered."""
        return () if self.discovery is None else self.discovery.notes

    # ------------------------------------------------------------------ hosts and meshes

    def host_of(self, device: str) -> str:
        """The host ``device`` sits in.

        Raises:
            ValueError: an unknown device (the message lists the known ones).
        """
        return self.device(device).host

    def devices_on(self, host: str, *, kind: DeviceKind | None = None) -> list[str]:
        """Names of the devices on ``host`` (of ``kind`` only, if given), in topology order.

        Raises:
            ValueError: an unknown host (lists the hosts) or an unknown kind.
        """
        if host not in self.hosts:
            raise ValueError(
                f"unknown host {host!r} in topology {self.name!r}; hosts: {', '.join(self.hosts)}"
            )
        if kind is not None:
            _choice(kind, "devices_on: kind", _DEVICE_KINDS)
        return [d.name for d in self.devices if d.host == host and kind in (None, d.kind)]

    def same_host(self, a: str, b: str) -> bool:
        """Whether devices ``a`` and ``b`` sit in one host (a copy between them stays off the
        network).

        Raises:
            ValueError: an unknown device.
        """
        return self.host_of(a) == self.host_of(b)

    def mesh(self, name: str) -> Mesh:
        """The mesh called ``name``.

        Raises:
            ValueError: no such mesh (the message lists the meshes, or says there are none).
        """
        for m in self.meshes:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.meshes) or "none; add 'meshes' to the topology"
        raise ValueError(f"unknown mesh {name!r} in topology {self.name!r}; meshes: {known}")

    def link(self, src: str, dst: str) -> Link:
        """The link ``src -> dst``: described, derived (cached), or loopback.

        ``src == dst`` gives a ``"loopback"`` link (infinite bandwidth, zero latency). A
        described link is returned as is. Otherwise a route is derived (module docstring,
        "Routing"): latency is the sum over hops, bandwidth the minimum; ``kind`` is
        ``"network"`` if a hop crosses the network, else ``"host"`` if the route is staged
        through a cpu device, else the bottleneck hop's kind; ``source`` lists the hops.

        Raises:
            ValueError: an unknown device name, or no route between the two devices.
        """
        return self._resolve(src, dst)[0]

    def route(self, src: str, dst: str) -> tuple[str, ...]:
        """Device names along the path :meth:`link` uses, ``src`` first and ``dst`` last
        (``(src,)`` for ``src == dst``).

        Raises:
            ValueError: as :meth:`link`.
        """
        return self._resolve(src, dst)[1]

    def hops(self, src: str, dst: str) -> tuple[Link, ...]:
        """The described links along :meth:`route`, in order (empty for ``src == dst``).

        Raises:
            ValueError: as :meth:`link`.
        """
        path = self.route(src, dst)
        direct: dict = self._direct  # type: ignore[attr-defined]
        return tuple(direct[(a, b)] for a, b in zip(path, path[1:]))

    def bottleneck(self, src: str, dst: str) -> Link:
        """The slowest hop (least bandwidth, first on ties) of the route ``src -> dst``: a
        described link, or the loopback link for ``src == dst``. Its ``kind`` tells what
        limits the pair (``"network"`` across hosts, ``"pcie"``, ``"nvlink"``).

        Raises:
            ValueError: as :meth:`link`.
        """
        hops = self.hops(src, dst)
        if not hops:
            return self.link(src, dst)
        return min(hops, key=lambda h: h.bandwidth_Bps)

    def transfer_time_s(self, src: str, dst: str, nbytes: int) -> float:
        """Seconds to move ``nbytes`` bytes from ``src`` to ``dst`` (alpha-beta over
        :meth:`link`).

        Raises:
            ValueError: as :meth:`link`, or ``nbytes`` < 0.
        """
        return self.link(src, dst).transfer_time_s(nbytes)

    def _resolve(self, src: str, dst: str) -> tuple[Link, tuple[str, ...]]:
        self.device(src)
        self.device(dst)
        if src == dst:
            loop = Link(
                src=src,
                dst=dst,
                bandwidth_Bps=math.inf,
                latency_s=0.0,
                kind="loopback",
                source="loopback: same device, no copy",
            )
            return loop, (src,)
        direct = self._direct.get((src, dst))  # type: ignore[attr-defined]
        if direct is not None:
            return direct, (src, dst)
        routes: dict = self._routes  # type: ignore[attr-defined]
        cached = routes.get((src, dst))
        if cached is None:
            cached = self._derive(src, dst)
            routes[(src, dst)] = cached
        return cached

    def _derive(self, src: str, dst: str) -> tuple[Link, tuple[str, ...]]:
        hops = self._search(src, dst)
        if hops is None:
            s, d = self.device(src), self.device(dst)
            if s.host == d.host:
                hint = (
                    f"describe a link {src!r} -> {dst!r}, or links to and from a 'cpu' device "
                    f"on host {s.host!r}"
                )
            else:
                hint = (
                    f"describe a 'network' link between devices of hosts {s.host!r} and "
                    f"{d.host!r}, reachable from both ends through direct links or a 'cpu' device"
                )
            raise ValueError(
                f"no route from {src!r} to {dst!r} in topology {self.name!r}: {hint}"
            )
        path = (hops[0].src, *(h.dst for h in hops))
        bottleneck = min(hops, key=lambda h: h.bandwidth_Bps)
        if any(h.kind == "network" for h in hops):
            kind: str = "network"
        elif any(self.device(n).kind == "cpu" for n in path[1:-1]):
            kind = "host"
        else:
            kind = bottleneck.kind
        derived = Link(
            src=src,
            dst=dst,
            bandwidth_Bps=bottleneck.bandwidth_Bps,
            latency_s=sum(h.latency_s for h in hops),
            kind=kind,  # type: ignore[arg-type]
            source="derived route " + " -> ".join(path)
            + " (latency = sum over hops, bandwidth = min over hops)",
        )
        log.debug("topology %s: derived route %s", self.name, " -> ".join(path))
        return derived, path

    def _search(self, src: str, dst: str) -> list[Link] | None:
        """Cheapest allowed path ``src -> dst`` by ``latency + REF / min bandwidth``.

        Allowed intermediate devices: inside one host, that host's cpu devices; across
        hosts, any cpu device and any device with a network link (a NIC-attached GPU). The
        cost is not additive, so for each candidate bottleneck bandwidth ``b`` (descending)
        a Dijkstra over links with bandwidth >= ``b`` minimises (latency, hops, names); the
        best of those paths is exact for the cost. Graphs here are small (tens of devices).
        """
        src_host = self.device(src).host
        same_host = src_host == self.device(dst).host
        gateways = {n for lk in self.links if lk.kind == "network" for n in (lk.src, lk.dst)}

        def allowed(name: str) -> bool:
            if name == dst:
                return True
            dev = self.device(name)
            if same_host:
                return dev.kind == "cpu" and dev.host == src_host
            return dev.kind == "cpu" or name in gateways

        out_links: dict[str, list[Link]] = {}
        for lk in self.links:
            if allowed(lk.dst):
                out_links.setdefault(lk.src, []).append(lk)

        best: tuple[float, int, tuple[str, ...], list[Link]] | None = None
        for floor_Bps in sorted({lk.bandwidth_Bps for lk in self.links}, reverse=True):
            hops = _dijkstra(src, dst, out_links, floor_Bps)
            if hops is None:
                continue
            cost_s = sum(h.latency_s for h in hops) + ROUTE_REFERENCE_BYTES / min(
                h.bandwidth_Bps for h in hops
            )
            key = (cost_s, len(hops), tuple(h.dst for h in hops), hops)
            if best is None or key[:3] < best[:3]:
                best = key
        return None if best is None else best[3]

    # ------------------------------------------------------------------ derived topologies

    def subset(self, names: Iterable[str]) -> Topology:
        """Only the devices ``names`` (kept in topology order) and the links among them.

        Routes through a dropped device (e.g. the host ``cpu``) are no longer available.
        Meshes whose devices are all kept stay; the others are dropped. ``discovery`` stays.

        Raises:
            ValueError: an unknown name, or no names.
        """
        if isinstance(names, str):
            raise TypeError(
                f"subset: expected an iterable of device names, got the string {names!r}; "
                f"wrap it in a list: [{names!r}]"
            )
        keep = set()
        for n in names:
            self.device(n)
            keep.add(n)
        if not keep:
            raise ValueError(
                f"subset: expected at least one device name of {self.device_names}, got none"
            )
        return Topology(
            name=self.name,
            devices=tuple(d for d in self.devices if d.name in keep),
            links=tuple(lk for lk in self.links if lk.src in keep and lk.dst in keep),
            description=self.description,
            meshes=tuple(m for m in self.meshes if keep.issuperset(m.device_names)),
            discovery=self.discovery,
        )

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """The topology as a JSON-ready dict (schema in the module docstring); ``discovery``
        only when there is a report."""
        d = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "hosts": self.hosts,
            "devices": [d.to_dict() for d in self.devices],
            "links": [lk.to_dict() for lk in self.links],
            "meshes": [m.to_dict() for m in self.meshes],
        }
        if self.discovery is not None:
            d["discovery"] = self.discovery.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> Topology:
        """Build and validate a topology from a dict in the JSON schema.

        Args:
            d: the dict (as read from JSON).
            source: where ``d`` came from (a file path); prefixes error messages.

        Raises:
            ValueError: a schema violation; the message names ``source``, the field path
                (``topology.devices[1].memory_bytes``), the bad value and the expected form.
        """
        try:
            return cls._from_dict(d)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def _from_dict(cls, d: Any) -> Topology:
        top = "topology"
        if not isinstance(d, Mapping):
            _fail(top, "an object with keys name, devices, links", d)
        allowed = (
            "schema_version", "name", "description", "hosts", "devices", "links", "meshes",
            "discovery",
        )
        unknown = [k for k in d if k not in allowed]
        if unknown:
            raise ValueError(
                f"{top}: unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}"
            )
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION or isinstance(version, bool):
            _fail(
                f"{top}.schema_version",
                f"{SCHEMA_VERSION} (the version this autopart reads)",
                version,
            )
        for key in ("name", "devices", "links"):
            if key not in d:
                raise ValueError(f"{top}.{key}: missing (required)")
        name = _string(d["name"], f"{top}.name")
        description = _string(d.get("description", ""), f"{top}.description")
        raw_devices, raw_links = d["devices"], d["links"]
        if not isinstance(raw_devices, list) or not raw_devices:
            _fail(f"{top}.devices", "a non-empty list of device objects", raw_devices)
        if not isinstance(raw_links, list):
            _fail(f"{top}.links", "a list of link objects (may be empty)", raw_links)

        devices = []
        for i, raw in enumerate(raw_devices):
            path = f"{top}.devices[{i}]"
            values = _record_from_json(raw, path, Device)
            devices.append(Device(**_check_device_values(values, path)))
        links = []
        for i, raw in enumerate(raw_links):
            path = f"{top}.links[{i}]"
            values = _record_from_json(raw, path, Link)
            links.append(Link(**_check_link_values(values, path, allow_inf=False)))
        _check_structure(
            [dev.name for dev in devices], [(lk.src, lk.dst) for lk in links], top
        )
        if "hosts" in d:
            hosts = d["hosts"]
            named = list(dict.fromkeys(dev.host for dev in devices))
            if not isinstance(hosts, list) or sorted(map(str, hosts)) != sorted(named):
                _fail(
                    f"{top}.hosts", f"the hosts the devices name, {named}, (or leave it out)", hosts
                )
        raw_meshes = d.get("meshes", [])
        if not isinstance(raw_meshes, list):
            _fail(f"{top}.meshes", "a list of mesh objects (may be empty)", raw_meshes)
        meshes = []
        for i, raw in enumerate(raw_meshes):
            path = f"{top}.meshes[{i}]"
            values = _record_from_json(raw, path, Mesh)
            meshes.append(Mesh(**_check_mesh_values(values, path)))
        _check_meshes(meshes, {dev.name: dev.kind for dev in devices}, top)
        discovery = None
        if d.get("discovery") is not None:
            discovery = DiscoveryReport.from_dict(d["discovery"], path=f"{top}.discovery")
        return cls(
            name=name,
            devices=tuple(devices),
            links=tuple(links),
            description=description,
            meshes=tuple(meshes),
            discovery=discovery,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the topology as JSON (indent 2) to ``path`` atomically (temp file in the same
        folder, then ``os.replace``), so readers never see a partial file.

        Raises:
            FileNotFoundError: the folder of ``path`` does not exist.
        """
        path = Path(path)
        folder = path.parent
        if not folder.is_dir():
            raise FileNotFoundError(
                f"cannot save topology to {str(path)!r}: folder {str(folder)!r} does not exist"
            )
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Topology:
        """Read a topology JSON file (see the schema in the module docstring).

        Raises:
            FileNotFoundError: ``path`` does not exist (the message names it).
            ValueError: a folder, malformed JSON (names the file, line and column) or a schema
                violation.
        """
        return cls.from_dict(read_json(path, "topology"), source=os.fspath(path))

    @classmethod
    def preset(cls, name: str) -> Topology:
        """A bundled topology (``autopart/presets/<name>.json``); see :func:`presets`.

        Raises:
            ValueError: unknown preset (the message lists the bundled ones).
        """
        names = presets()
        if name not in names:
            raise ValueError(
                f"unknown topology preset {name!r}; autopart presets: {', '.join(names)}"
            )
        return cls.load(_PRESET_DIR / f"{name}.json")

    @classmethod
    def discover(cls) -> Topology:
        """This machine with nominal numbers (no profiling yet), and what was found.

        Devices: the host CPU as ``"cpu"`` (:func:`_discover_cpu`) and each CUDA GPU torch
        sees as ``"cuda:<i>"`` (:func:`_discover_cuda`), all on host ``"localhost"``. Links:
        ``cpu`` <-> GPU over PCIe; GPU -> GPU over NVLink where NVML lists NVLink links joining
        the pair (directly or through NVSwitches); other GPU pairs route through the ``cpu``.
        The facts behind the numbers, and what was skipped, are in :attr:`discovery`
        (:attr:`notes` for the skipped parts).

        Never raises because CUDA, NVML or ``/sys`` is missing or failing: each such part is
        logged, noted and skipped.
        """
        notes: list[str] = []
        host = _host_facts(notes)
        cpu = _discover_cpu("cpu", host)
        try:
            found = _discover_cuda(cpu.name, notes)
        except Exception as e:  # discovery must not fail because of a driver quirk
            log.warning("CUDA discovery failed, continuing with the CPU only", exc_info=True)
            _note(notes, f"CUDA discovery failed ({_describe(e)}): only the CPU is used")
            found = _CudaFound()
        report = DiscoveryReport(
            host=host,
            torch_version=str(torch.__version__),
            torch_cuda_version=torch.version.cuda,
            nvml_driver_version=found.driver_version,
            gpus=tuple(found.gpus),
            gpu_pairs=tuple(found.pairs),
            notes=tuple(dict.fromkeys(notes)),
        )
        return cls(
            name="discovered",
            devices=(cpu, *found.devices),
            links=tuple(found.links),
            description=f"discovered on {host.hostname or 'this machine'} with nominal numbers",
            discovery=report,
        )

    # ------------------------------------------------------------------ display

    def table(self) -> str:
        """A human-readable summary: devices (name, kind, host, model, memory GiB, peak
        TFLOP/s per dtype, memory GB/s), links (src, dst, kind, GB/s, latency µs), hosts,
        meshes, and for a discovered topology the host and GPU facts and the notes."""
        dev_rows = [("device", "kind", "host", "model", "mem GiB", "peak TFLOP/s", "mem GB/s")]
        for d in self.devices:
            ordered = sorted(d.peak_flops.items(), key=lambda kv: kv[0] != "float32")
            flops = " ".join(f"{k}={v / 1e12:.4g}" for k, v in ordered)
            dev_rows.append(
                (d.name, d.kind, d.host, d.model or "-", f"{d.memory_bytes / _GiB:.1f}", flops,
                 f"{d.mem_bandwidth_Bps / 1e9:.1f}")
            )
        link_rows = [("src", "dst", "kind", "GB/s", "latency µs")]
        for lk in self.links:
            link_rows.append(
                (lk.src, lk.dst, lk.kind, f"{lk.bandwidth_Bps / 1e9:.1f}",
                 f"{lk.latency_s * 1e6:.2f}")
            )
        head = f"topology {self.name!r}" + (f": {self.description}" if self.description else "")
        parts = [head, "", _format_rows(dev_rows), ""]
        if len(link_rows) > 1:
            parts.append(_format_rows(link_rows))
        else:
            parts.append("(no links)")
        parts.append("")
        host_parts = []
        for h in self.hosts:
            kinds = [self.device(n).kind for n in self.devices_on(h)]
            counts = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
            host_parts.append(f"{h} ({counts})")
        parts.append("hosts: " + "; ".join(host_parts))
        for m in self.meshes:
            axes = " x ".join(f"{a}={n}" for a, n in zip(m.axis_names, m.shape))
            names = m.device_names
            span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
            parts.append(f"mesh {m.name!r}: {axes} ({len(names)} devices: {span})")
        if self.discovery is not None:
            parts += ["", _format_discovery(self.discovery)]
        return "\n".join(parts)

def _format_rows(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

def _format_cpulist(cpus: tuple[int, ...]) -> str:
    """``(0, 1, 2, 3, 8)`` -> ``"0-3,8"`` (the kernel's cpulist format)."""
    spans: list[list[int]] = []
    for c in sorted(cpus):
        if spans and c == spans[-1][1] + 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "-"


def _format_discovery(r: DiscoveryReport) -> str:
    h = r.host
    cores = (
        f"{h.num_physical_cores if h.num_physical_cores is not None else '?'} physical / "
        f"{h.num_logical_cores} logical cores ({h.num_usable_cores} usable)"
    )
    mem = f"{h.memory_bytes / _GiB:.1f} GiB" if h.memory_bytes else "memory ?"
    clock = f", {h.cpu_clock_hz / 1e9:.2f} GHz" if h.cpu_clock_hz else ""
    lines = [f"discovered on {h.hostname or '?'}: {h.cpu_model}, {cores}, {mem}{clock}"]
    if h.numa_nodes:
        numa = "; ".join(
            f"node{n.id} cpus {_format_cpulist(n.cpus)}"
            + (f" {n.memory_bytes / _GiB:.1f} GiB" if n.memory_bytes else "")
            for n in h.numa_nodes
        )
        lines.append(f"NUMA: {numa}")
    lines.append(
        f"torch {r.torch_version} (CUDA {r.torch_cuda_version or 'none'}), NVML driver "
        f"{r.nvml_driver_version or '-'}"
    )
    if r.gpus:
        rows = [("gpu", "name", "cc", "SMs", "mem GiB", "PCIe now/max", "W draw/limit",
                 "NVLink", "NUMA")]

        def pcie(gen: int | None, width: int | None) -> str:
            return "?" if gen is None else f"Gen{gen}x{width if width is not None else '?'}"

        for g in r.gpus:
            active = [lk for lk in g.nvlinks if lk.active]
            ends = sorted({lk.peer or lk.remote_kind for lk in active})
            nvl = f"{len(active)} ({', '.join(ends)})" if active else "-"
            draw = f"{g.power_draw_W:.0f}" if g.power_draw_W is not None else "?"
            limit = f"{g.power_limit_W:.0f}" if g.power_limit_W is not None else "?"
            rows.append(
                (g.device, g.name, "%d.%d" % g.compute_capability, str(g.num_sms),
                 f"{g.memory_bytes / _GiB:.1f}",
                 f"{pcie(g.pcie_generation, g.pcie_width)}/"
                 f"{pcie(g.pcie_max_generation, g.pcie_max_width)}",
                 f"{draw}/{limit}", nvl, "-" if g.numa_node is None else str(g.numa_node))
            )
        lines += ["", _format_rows(rows)]
    if r.gpu_pairs:
        names = [g.device for g in r.gpus]
        cell = {}
        for p in r.gpu_pairs:
            text = (f"NV{p.num_nvlinks}" if p.num_nvlinks else "NVS" if p.nvswitch
                    else p.level_name or "?")
            cell[(p.a, p.b)] = cell[(p.b, p.a)] = text
        rows = [("", *names)]
        rows += [(a, *("X" if a == b else cell.get((a, b), "?") for b in names)) for a in names]
        lines += ["", "GPU pairs (NV<n>: n NVLink links, NVS: NVSwitch, else the nvidia-smi "
                  "topo level):", _format_rows(rows)]
    if r.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in r.notes]
    return "\n".join(lines)


def _check_structure(names: list[str], pairs: list[tuple[str, str]], where: str) -> None:
    if not names:
        _fail(f"{where}.devices", "at least one device", [])
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(
                f"{where}.devices[{i}].name: device {n!r} is named twice; "
                f"device names must be unique"
            )
        seen.add(n)
    seen_pairs: set[tuple[str, str]] = set()
    for i, (s, d) in enumerate(pairs):
        for field, n in (("src", s), ("dst", d)):
            if n not in seen:
                raise ValueError(
                    f"{where}.links[{i}].{field}: unknown device {n!r}; "
                    f"known devices: {', '.join(names)}"
                )
        if s == d:
            raise ValueError(
                f"{where}.links[{i}]: src and dst are both {s!r}; a device's copy to itself is "
                f"the implicit loopback, remove this link"
            )
        if (s, d) in seen_pairs:
            raise ValueError(
                f"{where}.links[{i}]: link {s!r} -> {d!r} is described twice; keep one"
            )
        seen_pairs.add((s, d))


def _dijkstra(
    src: str, dst: str, out_links: Mapping[str, list[Link]], floor_Bps: float
) -> list[Link] | None:
    """Min (latency, hops, names) path over links with bandwidth >= ``floor_Bps``."""
    heap: list[tuple[float, int, tuple[str, ...], str, tuple[Link, ...]]]
    heap = [(0.0, 0, (src,), src, ())]
    done: set[str] = set()
    while heap:
        lat, nhops, names, node, hops = heapq.heappop(heap)
        if node in done:
            continue
        if node == dst:
            return list(hops)
        done.add(node)
        for lk in out_links.get(node, ()):
            if lk.bandwidth_Bps >= floor_Bps and lk.dst not in done:
                heapq.heappush(
                    heap, (lat + lk.latency_s, nhops + 1, (*names, lk.dst), lk.dst, (*hops, lk))
                )
    return None


# --------------------------------------------------------------------------- module functions


def presets() -> list[str]:
    """Names of the bundled topology presets (file stems in ``autopart/presets/``), sorted."""
    return sorted(p.stem for p in _PRESET_DIR.glob("*.json"))


def local_devices() -> list[str]:
    """Devices this process can run on: ``"cpu"`` plus ``"cuda:i"`` for
    ``i < torch.cuda.device_count()`` (none when CUDA is absent)."""
    names = ["cpu"]
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as e:  # a broken driver must not break CPU-only use
        log.warning("torch.cuda unavailable: %s", e)
        count = 0
    names += [f"cuda:{i}" for i in range(count)]
    return names


# --------------------------------------------------------------------------- discovery: CPU

#: FLOP per cycle per core for float32 on an AVX2 core with 2 FMA units: 2 units x 8 lanes x
#: 2 (multiply + add). Source: Intel/AMD optimisation manuals (Haswell+ / Zen2+ FMA throughput).
CPU_FP32_FLOP_PER_CYCLE = 32
#: Used when psutil reports no clock: a typical server base clock (nominal).
CPU_FALLBACK_CLOCK_HZ = 2.5e9
#: Nominal memory bandwidth per physical core and the cap (a DDR4/DDR5 server socket sustains
#: roughly 100-300 GB/s; a core streams ~10 GB/s): nominal, to be replaced by profiling.
CPU_BANDWIDTH_PER_CORE_Bps = 10e9
CPU_BANDWIDTH_CAP_Bps = 100e9
#: Per-op eager PyTorch dispatch overhead on CPU (nominal; measured values are a few µs).
CPU_LAUNCH_OVERHEAD_S = 5e-6


#: Where Linux lists NUMA nodes, one ``node<id>`` folder each with ``cpulist`` and ``meminfo``
#: (kernel Documentation/ABI/stable/sysfs-devices-node). psutil has no NUMA API.
NUMA_SYSFS_DIR = Path("/sys/devices/system/node")
#: Where Linux lists PCI devices; ``<bus id>/numa_node`` is a GPU's NUMA node (-1: none).
PCI_SYSFS_DIR = Path("/sys/bus/pci/devices")


def _note(notes: list[str], text: str) -> None:
    """Record one thing discovery skipped (and log it once)."""
    if text not in notes:
        log.info("topology discovery: %s", text)
        notes.append(text)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _parse_cpulist(text: str) -> tuple[int, ...]:
    """The kernel's cpulist format (``"0-3,8,10-11"``) as sorted CPU ids; ``""`` -> ``()``.

    Raises:
        ValueError: malformed text.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        start, stop = int(lo), int(hi) if sep else int(lo)
        if stop < start:
            raise ValueError(f"cpulist range {part!r} runs backwards")
        cpus.update(range(start, stop + 1))
    return tuple(sorted(cpus))


def _numa_nodes(notes: list[str]) -> tuple[NumaNode, ...]:
    """NUMA nodes from :data:`NUMA_SYSFS_DIR`; ``()`` with a note where Linux shows none."""
    root = NUMA_SYSFS_DIR
    try:
        dirs = [p for p in root.iterdir() if re.fullmatch(r"node\d+", p.name)]
    except OSError as e:
        _note(notes, f"NUMA: {root} not visible ({_describe(e)}): no NUMA nodes listed")
        return ()
    if not dirs:
        _note(notes, f"NUMA: no node<id> folders in {root}: no NUMA nodes listed")
        return ()
    nodes = []
    for d in sorted(dirs, key=lambda p: int(p.name[4:])):
        try:
            cpus = _parse_cpulist((d / "cpulist").read_text(encoding="ascii"))
        except (OSError, ValueError) as e:
            _note(notes, f"NUMA: cannot read {d / 'cpulist'} ({_describe(e)}): its CPUs unknown")
            cpus = ()
        memory = None
        try:
            for line in (d / "meminfo").read_text(encoding="ascii").splitlines():
                # "Node 0 MemTotal:       16318048 kB"
                m = re.match(r"Node\s+\d+\s+MemTotal:\s+(\d+)\s*kB", line)
                if m:
                    memory = int(m.group(1)) * 1024
                    break
        except OSError:
            pass
        nodes.append(NumaNode(id=int(d.name[4:]), cpus=cpus, memory_bytes=memory))
    return tuple(nodes)


def _host_facts(notes: list[str]) -> HostFacts:
    """CPU, memory and NUMA facts of this machine (psutil, ``/proc/cpuinfo``, ``/sys``);
    what cannot be read is ``None`` and noted."""
    try:
        import psutil
    except ImportError as e:
        psutil = None
        _note(notes, f"psutil not installed ({e}; pip install psutil): no physical core count, "
              f"memory size or clock")
    physical = logical = memory = clock_hz = None
    if psutil is not None:
        try:
            physical = psutil.cpu_count(logical=False)
            logical = psutil.cpu_count(logical=True)
        except Exception as e:
            log.debug("psutil.cpu_count failed: %s", e)
        try:
            memory = int(psutil.virtual_memory().total)
        except Exception as e:
            _note(notes, f"psutil.virtual_memory failed ({_describe(e)}): the cpu device "
                  f"assumes 8 GiB")
        try:
            freq = psutil.cpu_freq()
        except Exception as e:
            log.debug("psutil.cpu_freq failed: %s", e)
            freq = None
        if freq is not None and (freq.max or freq.current):
            clock_hz = float(freq.max or freq.current) * 1e6
    if psutil is not None and not physical:
        _note(notes, "psutil reports no physical core count: peak FLOP/s counts logical cores")
        physical = None
    if psutil is not None and clock_hz is None:
        _note(notes, f"CPU clock unknown (psutil.cpu_freq() gave none): peak FLOP/s assume "
              f"{CPU_FALLBACK_CLOCK_HZ / 1e9:.1f} GHz")
    logical = int(logical or os.cpu_count() or 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    return HostFacts(
        hostname=platform.node(),
        cpu_model=_cpu_model_name(),
        num_physical_cores=int(physical) if physical else None,
        num_logical_cores=logical,
        num_usable_cores=max(1, usable),
        memory_bytes=memory,
        cpu_clock_hz=clock_hz,
        numa_nodes=_numa_nodes(notes),
        cpu_power_limit_W=_rapl_power_limit_W(),
    )


def _rapl_power_limit_W(root: str | os.PathLike = "/sys/class/powercap") -> float | None:
    """Sum over CPU packages of their long-term power limit (RAPL PL1, about the TDP), in watts:
    ``constraint_0_power_limit_uw`` (microwatts) of each package zone ``intel-rapl:<n>``
    (Linux powercap sysfs, Documentation/power/powercap/powercap.rst; AMD CPUs show the same
    zones). None when no package zone can be read."""
    total, found = 0.0, False
    for zone in sorted(glob.glob(os.path.join(os.fspath(root), "intel-rapl:*"))):
        if os.path.basename(zone).count(":") != 1:  # intel-rapl:0:0 is a part of package 0
            continue
        try:
            with open(os.path.join(zone, "constraint_0_power_limit_uw")) as f:
                microwatts = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if microwatts > 0:
            total, found = total + microwatts / 1e6, True
    return total if found else None


def _discover_cpu(name: str = "cpu", host: HostFacts | None = None) -> Device:
    """The host CPU as one device, with nominal numbers, from ``host`` (read now if None).

    * memory_bytes: ``psutil.virtual_memory().total`` (8 GiB if unreadable).
    * peak float32 FLOP/s: physical cores (logical if unknown; capped by the CPU affinity
      mask, which containers and taskset restrict) x clock (``psutil.cpu_freq().max``, else
      ``.current``, else 2.5 GHz) x 32 FLOP/cycle (AVX2 FMA: 2 units x 8 lanes x 2).
      bfloat16 and float16 are given the float32 rate, float64 half. A nominal estimate, to
      be replaced by profiling.
    * mem_bandwidth_Bps: 10 GB/s per physical core, capped at 100 GB/s (nominal).
    * launch_overhead_s: 5 µs (nominal eager dispatch).
    * max_power_W: the packages' RAPL power limit where Linux shows it, else None (unknown).
    """
    if host is None:
        host = _host_facts([])
    cores = max(1, min(host.num_physical_cores or host.num_logical_cores, host.num_usable_cores))
    clock_hz = host.cpu_clock_hz or CPU_FALLBACK_CLOCK_HZ
    fp32 = cores * clock_hz * CPU_FP32_FLOP_PER_CYCLE
    return Device(
        name=name,
        kind="cpu",
        model=host.cpu_model,
        memory_bytes=host.memory_bytes or 8 * _GiB,
        peak_flops={"float32": fp32, "bfloat16": fp32, "float16": fp32, "float64": fp32 / 2},
        mem_bandwidth_Bps=min(cores * CPU_BANDWIDTH_PER_CORE_Bps, CPU_BANDWIDTH_CAP_Bps),
        launch_overhead_s=CPU_LAUNCH_OVERHEAD_S,
        max_power_W=host.cpu_power_limit_W,
        source=(
            f"nominal (discover): {cores} cores x {clock_hz / 1e9:.2f} GHz x "
            f"{CPU_FP32_FLOP_PER_CYCLE} FLOP/cycle (AVX2 FMA); memory bandwidth 10 GB/s per core "
            f"capped at 100 GB/s; replace by profiling"
        ),
    )


# --------------------------------------------------------------------------- discovery: CUDA


@dataclass(frozen=True)
class _GpuSpec:
    """Datasheet numbers for one GPU model (dense, i.e. without structured sparsity)."""

    pattern: str  # regex searched in the lower-cased torch device name
    model: str
    peak_flops: dict[str, float]
    mem_bandwidth_Bps: float
    max_power_W: float
    idle_power_W: float | None
    nvlink_Bps: float | None  # per direction, to one peer (datasheet; reference only: discovery
    # costs NVLink from NVML's link count x per-link rate)
    pcie_Bps: float  # effective host link, per direction
    source: str


#: Effective per-direction PCIe x16 throughput (about 80% of the raw rate: 128b/130b
#: encoding plus TLP overhead) by generation; raw per-lane rates from the PCI-SIG specs
#: (Gen3 8 GT/s, Gen4 16 GT/s, Gen5 32 GT/s). Gen4 x16 -> 25 GB/s is the figure commonly
#: measured with cudaMemcpy from pinned memory.
PCIE_X16_EFFECTIVE_Bps = {3: 12.5e9, 4: 25e9, 5: 50e9, 6: 100e9}
#: Nominal latency of one host <-> GPU copy (cudaMemcpyAsync launch + DMA setup).
PCIE_LATENCY_S = 10e-6
#: Nominal latency of one GPU <-> GPU NVLink copy.
NVLINK_LATENCY_S = 2e-6
#: Per-link, per-direction NVLink bandwidth used when the version is unknown (NVLink 2-4:
#: 25 GB/s per link per direction; NVIDIA A100/H100 datasheets: 12 links = 600 GB/s, 18 links
#: = 900 GB/s bidirectional).
NVLINK_PER_LINK_Bps = 25e9
#: Per-link, per-direction NVLink bandwidth by the value ``nvmlDeviceGetNvLinkVersion``
#: returns. That value is an ``nvmlNvlinkVersion_t`` (1 = 1.0, 2 = 2.0, 3 = 2.2, 4 = 3.0,
#: 5 = 3.1, 6 = 4.0, 7 = 5.0), not the generation: an A100 answers 4 (NVML API reference,
#: nvmlNvlinkVersion_t; hwloc issue #658). Each rate is a datasheet's bidirectional total
#: / 2 / links, see :data:`_NVLINK_VERSION_SOURCES`.
NVLINK_PER_LINK_Bps_BY_VERSION = {
    1: 20e9, 2: 25e9, 3: 25e9, 4: 25e9, 5: 14.0625e9, 6: 25e9, 7: 50e9,
}
_NVLINK_VERSION_NAMES = {1: "1.0", 2: "2.0", 3: "2.2", 4: "3.0", 5: "3.1", 6: "4.0", 7: "5.0"}
_NVLINK_VERSION_SOURCES = {
    1: "Tesla P100 whitepaper: 4 links, 160 GB/s bidirectional",
    2: "V100 datasheet: 6 links, 300 GB/s bidirectional",
    3: "Quadro RTX 8000 datasheet: 2 links, 100 GB/s bidirectional",
    4: "A100 datasheet: 12 links, 600 GB/s bidirectional",
    5: "A40 datasheet: 4 links, 112.5 GB/s bidirectional",
    6: "H100 datasheet: 18 links, 900 GB/s bidirectional",
    7: "B200 / DGX B200 datasheet: 18 links, 1.8 TB/s bidirectional",
}
#: Per-op launch overhead on a GPU: eager PyTorch dispatch + cudaLaunchKernel (nominal;
#: measured values are 5-20 µs).
CUDA_LAUNCH_OVERHEAD_S = 10e-6

_T = 1e12
_H100_SRC = (
    "NVIDIA H100 Tensor Core GPU datasheet; dense = half the 'with sparsity' Tensor Core figures"
)
_A100_FLOPS = {"float32": 19.5 * _T, "tfloat32": 156 * _T, "bfloat16": 312 * _T, "float16": 312 * _T}
_A100_SRC = "NVIDIA A100 Tensor Core GPU datasheet; dense Tensor Core figures"

#: Known GPUs, most specific pattern first. Idle power is a nominal ~10% of the board power
#: (not on the datasheets).
GPU_SPECS: tuple[_GpuSpec, ...] = (
    _GpuSpec(r"h200", "NVIDIA H200",
             {"float32": 67 * _T, "tfloat32": 494 * _T, "bfloat16": 989 * _T, "float16": 989 * _T,
              "float8_e4m3fn": 1979 * _T, "float8_e5m2": 1979 * _T},
             4.8e12, 700.0, 70.0, 450e9, 50e9,
             "NVIDIA H200 Tensor Core GPU datasheet (SXM); dense = half the sparsity figures"),
    _GpuSpec(r"h100.*pcie", "NVIDIA H100 PCIe",
             {"float32": 51 * _T, "tfloat32": 378 * _T, "bfloat16": 756 * _T, "float16": 756 * _T,
              "float8_e4m3fn": 1513 * _T, "float8_e5m2": 1513 * _T},
             2.0e12, 350.0, 35.0, 300e9, 50e9, _H100_SRC + " (PCIe column)"),
    _GpuSpec(r"h100", "NVIDIA H100 80GB HBM3",
             {"float32": 67 * _T, "tfloat32": 494 * _T, "bfloat16": 989 * _T, "float16": 989 * _T,
              "float8_e4m3fn": 1979 * _T, "float8_e5m2": 1979 * _T},
             3.35e12, 700.0, 70.0, 450e9, 50e9, _H100_SRC + " (SXM column)"),
    _GpuSpec(r"a100.*80gb.*pcie|a100.*pcie.*80gb", "NVIDIA A100 80GB PCIe",
             _A100_FLOPS,
             1.935e12, 300.0, 30.0, 300e9, 25e9, _A100_SRC + " (80GB PCIe column)"),
    _GpuSpec(r"a100.*pcie", "NVIDIA A100-PCIE-40GB",
             _A100_FLOPS,
             1.555e12, 250.0, 25.0, 300e9, 25e9, _A100_SRC + " (40GB PCIe column)"),
    _GpuSpec(r"a100.*80gb", "NVIDIA A100-SXM4-80GB",
             _A100_FLOPS,
             2.039e12, 400.0, 40.0, 300e9, 25e9, _A100_SRC + " (80GB SXM column)"),
    _GpuSpec(r"a100", "NVIDIA A100-SXM4-40GB",
             _A100_FLOPS,
             1.555e12, 400.0, 40.0, 300e9, 25e9, _A100_SRC + " (40GB SXM column)"),
    _GpuSpec(r"l40s", "NVIDIA L40S",
             {"float32": 91.6 * _T, "tfloat32": 183 * _T, "bfloat16": 362 * _T, "float16": 362 * _T,
              "float8_e4m3fn": 733 * _T, "float8_e5m2": 733 * _T},
             864e9, 350.0, 35.0, None, 25e9,
             "NVIDIA L40S datasheet; dense = half the 'with sparsity' Tensor Core figures"),
    _GpuSpec(r"\bl4\b", "NVIDIA L4",
             {"float32": 30.3 * _T, "tfloat32": 60 * _T, "bfloat16": 121 * _T, "float16": 121 * _T,
              "float8_e4m3fn": 242.5 * _T, "float8_e5m2": 242.5 * _T},
             300e9, 72.0, 16.0, None, 25e9,
             "NVIDIA L4 datasheet; dense = half the 'with sparsity' Tensor Core figures"),
    _GpuSpec(r"4090", "NVIDIA GeForce RTX 4090",
             {"float32": 82.6 * _T, "tfloat32": 82.6 * _T, "bfloat16": 165.2 * _T, "float16": 165.2 * _T},
             1008e9, 450.0, 20.0, None, 25e9,
             "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 "
             "(Tensor rates with FP32 accumulate, dense)"),
    _GpuSpec(r"v100.*pcie", "Tesla V100-PCIE-16GB",
             {"float32": 14 * _T, "float16": 112 * _T},
             900e9, 250.0, 25.0, None, 12.5e9, "NVIDIA V100 Tensor Core GPU datasheet (PCIe column)"),
    _GpuSpec(r"v100", "Tesla V100-SXM2-32GB",
             {"float32": 15.7 * _T, "float16": 125 * _T},
             900e9, 300.0, 30.0, 150e9, 12.5e9,
             "NVIDIA V100 Tensor Core GPU datasheet (SXM2 column; NVLink 2: 300 GB/s bidirectional)"),
    _GpuSpec(r"\bt4\b", "Tesla T4",
             {"float32": 8.1 * _T, "float16": 65 * _T},
             320e9, 70.0, 10.0, None, 12.5e9,
             "NVIDIA T4 datasheet (FP16/FP32 mixed-precision Tensor Core rate; no bfloat16 hardware)"),
)

#: FP32 lanes per SM by compute capability major.minor (NVIDIA CUDA C++ Programming Guide,
#: "Arithmetic Instructions" throughput table); 128 for newer or unknown architectures.
_FP32_LANES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64}
#: Used for unknown GPUs when torch reports no clock (nominal).
_FALLBACK_GPU_CLOCK_HZ = 1.5e9
#: Used for unknown GPUs when torch reports no memory clock / bus width (nominal).
_FALLBACK_GPU_BANDWIDTH_Bps = 500e9


def _gpu_spec(name: str) -> _GpuSpec | None:
    lowered = name.lower()
    for spec in GPU_SPECS:
        if re.search(spec.pattern, lowered):
            return spec
    return None


def _fallback_gpu_numbers(props: Any) -> tuple[dict[str, float], float, str]:
    """Peak FLOP/s and memory bandwidth for a GPU not in :data:`GPU_SPECS`.

    float32 = SMs x FP32 lanes per SM x 2 (FMA) x clock; float16 = 4x float32 from compute
    capability 7.0 (tensor cores), bfloat16 = 4x float32 from 8.0 (a conservative ratio; the
    datasheet ratio is 2x-16x). Memory bandwidth = 2 (double data rate) x memory clock x bus
    width / 8, the formula of NVIDIA's "How to Query Device Properties" CUDA blog post.
    """
    major, minor = int(getattr(props, "major", 0)), int(getattr(props, "minor", 0))
    sms = int(getattr(props, "multi_processor_count", 0)) or 1
    clock_khz = int(getattr(props, "clock_rate", 0) or 0)
    clock_hz = clock_khz * 1e3 if clock_khz > 0 else _FALLBACK_GPU_CLOCK_HZ
    lanes = _FP32_LANES_PER_SM.get((major, minor), 128)
    fp32 = sms * lanes * 2 * clock_hz
    flops = {"float32": fp32}
    if major >= 7:
        flops["float16"] = 4 * fp32
    if major >= 8:
        flops["bfloat16"] = 4 * fp32
    mem_khz = int(getattr(props, "memory_clock_rate", 0) or 0)
    bus_bits = int(getattr(props, "memory_bus_width", 0) or 0)
    if mem_khz > 0 and bus_bits > 0:
        bandwidth = 2 * mem_khz * 1e3 * bus_bits / 8
    else:
        bandwidth = _FALLBACK_GPU_BANDWIDTH_Bps
    source = (
        f"nominal (discover, unknown GPU): {sms} SMs x {lanes} FP32 lanes x 2 x "
        f"{clock_hz / 1e9:.2f} GHz; tensor rates 4x float32; bandwidth from memory clock x bus width"
    )
    return flops, bandwidth, source


#: What is lost when NVML cannot be used at all.
_NVML_LOSS = (
    "no GPU power, PCIe, NVLink or GPU-pair facts; host links use datasheet numbers and GPU "
    "pairs route through the cpu"
)

#: What is lost when one NVML call fails (the note names the call, the devices and the error).
_NVML_CALL_LOSS = {
    "nvmlDeviceGetHandleByIndex": "no NVML facts for these GPUs",
    "nvmlDeviceGetEnforcedPowerLimit": "max_power_W from the datasheet table",
    "nvmlDeviceGetPowerUsage": "power draw unknown",
    "nvmlDeviceGetCurrPcieLinkGeneration": "current PCIe generation unknown",
    "nvmlDeviceGetCurrPcieLinkWidth": "current PCIe width unknown",
    "nvmlDeviceGetMaxPcieLinkGeneration": "host link bandwidth from the datasheet table",
    "nvmlDeviceGetMaxPcieLinkWidth": "host link bandwidth from the datasheet table",
    "nvmlDeviceGetPciInfo": "PCI bus id unknown, so NVLink peers cannot be matched to it",
    "nvmlDeviceGetNvLinkState": "no NVLink links from these GPUs (a GPU without NVLink "
    "answers 'Not Supported')",
    "nvmlDeviceGetNvLinkVersion": "NVLink per-link rate assumed 25 GB/s",
    "nvmlDeviceGetNvLinkRemotePciInfo": "NVLink peers unknown (NVML P2P status decides)",
    "nvmlDeviceGetNvLinkRemoteDeviceType": "NVLink far-end kind inferred from its PCI bus id",
    "nvmlDeviceGetTopologyCommonAncestor": "PCIe topology level unknown",
    "nvmlDeviceGetP2PStatus": "no NVLink link for these pairs",
    "nvmlSystemGetDriverVersion": "driver version unknown",
    "nvmlDeviceGetCount": "GPU count by NVML unknown",
}


class _Nvml:
    """NVML through nvidia-ml-py (``pynvml``). Every call returns ``None`` on any failure;
    failures are logged and, by :meth:`finish`, turned into one note per call and error."""

    def __init__(self, notes: list[str]) -> None:
        self.mod: Any = None
        self._failures: dict[tuple[str, str], list[str]] = {}
        try:
            import pynvml
        except ImportError as e:
            _note(notes, f"NVML not installed ({e}; pip install nvidia-ml-py): {_NVML_LOSS}")
            return
        try:
            pynvml.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, driver mismatch, ...
            _note(notes, f"NVML not available (nvmlInit failed: {_describe(e)}): {_NVML_LOSS}")
            return
        self.mod = pynvml

    def const(self, name: str, default: int) -> Any:
        return getattr(self.mod, name, default)

    def call(self, fn: str, *args: Any, who: str, quiet: bool = False) -> Any:
        """``pynvml.<fn>(*args)``, or ``None`` when NVML is absent or the call fails (noted
        under ``who`` unless ``quiet``)."""
        if self.mod is None:
            return None
        try:
            return getattr(self.mod, fn)(*args)
        except Exception as e:  # NVMLError_*, AttributeError for an older nvidia-ml-py
            log.debug("NVML %s for %s failed: %s", fn, who, e)
            if not quiet:
                whos = self._failures.setdefault((fn, _describe(e)), [])
                if who not in whos:
                    whos.append(who)
            return None

    def handle(self, index: int, props: Any, who: str) -> Any:
        """The NVML handle of torch's GPU ``index``: by UUID, else PCI bus id (both survive
        ``CUDA_VISIBLE_DEVICES`` reordering), else by index."""
        uuid = getattr(props, "uuid", None)
        if uuid:
            text = str(uuid)
            if not text.startswith(("GPU-", "MIG-")):
                text = f"GPU-{text}"
            h = self.call("nvmlDeviceGetHandleByUUID", text, who=who, quiet=True)
            if h is not None:
                return h
        bus = getattr(props, "pci_bus_id", None)
        if isinstance(bus, int):
            domain = getattr(props, "pci_domain_id", 0) or 0
            dev = getattr(props, "pci_device_id", 0) or 0
            h = self.call("nvmlDeviceGetHandleByPciBusId", f"{domain:04x}:{bus:02x}:{dev:02x}.0",
                          who=who, quiet=True)
            if h is not None:
                return h
        return self.call("nvmlDeviceGetHandleByIndex", index, who=who)

    def finish(self, notes: list[str]) -> None:
        """Shut NVML down and note the failed calls."""
        if self.mod is not None:
            self.call("nvmlShutdown", who="NVML", quiet=True)
        for (fn, err), whos in self._failures.items():
            loss = _NVML_CALL_LOSS.get(fn, "that fact is unknown")
            _note(notes, f"NVML {fn} failed for {', '.join(whos)} ({err}): {loss}")
        self._failures.clear()


def _bus_id(value: Any) -> str | None:
    """A PCI bus id in sysfs form, lower-case ``"0000:07:00.0"`` (NVML writes an 8-digit
    domain, ``"00000000:07:00.0"``); ``None`` if unparsable."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\s*(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])\s*", value)
    if m is None:
        return None
    domain, bus, dev, fn = m.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{fn}"


def _pci_numa_node(bus_id: str | None) -> int | None:
    if bus_id is None:
        return None
    try:
        node = int((PCI_SYSFS_DIR / bus_id / "numa_node").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if _is_number(value) else None


@dataclass
class _CudaFound:
    devices: list[Device] = dataclasses.field(default_factory=list)
    links: list[Link] = dataclasses.field(default_factory=list)
    gpus: list[GpuFacts] = dataclasses.field(default_factory=list)
    pairs: list[GpuPairFacts] = dataclasses.field(default_factory=list)
    driver_version: str | None = None


def _cuda_count(notes: list[str]) -> int:
    try:
        if not torch.cuda.is_available():
            why = (
                "torch is built without CUDA" if torch.version.cuda is None
                else "no GPU or driver visible to torch"
            )
            _note(notes, f"no CUDA device: torch.cuda.is_available() is False ({why})")
            return 0
        count = int(torch.cuda.device_count())
    except Exception as e:
        _note(notes, f"no CUDA device: torch.cuda is not usable ({_describe(e)})")
        return 0
    if count == 0:
        _note(notes, "no CUDA device: torch.cuda.device_count() is 0")
    return count


def _discover_cuda(cpu_name: str, notes: list[str]) -> _CudaFound:
    """CUDA GPUs visible to torch, their links, and the facts behind them.

    Per GPU: name, memory, SM count and compute capability from
    ``torch.cuda.get_device_properties``; peak FLOP/s, memory bandwidth and power from
    :data:`GPU_SPECS` (datasheets) when the name is known, else :func:`_fallback_gpu_numbers`;
    the power limit from NVML when it answers. Links: ``cpu`` <-> GPU over PCIe (NVML's max
    generation and width, :data:`PCIE_X16_EFFECTIVE_Bps`; else the datasheet's host link);
    GPU -> GPU over NVLink when NVML lists links joining them (:func:`_nvlink_Bps`),
    otherwise no direct link (the pair routes through the ``cpu``). NVML is asked even
    without CUDA, to note GPUs torch cannot use.
    """
    found = _CudaFound()
    count = _cuda_count(notes)
    nvml = _Nvml(notes)
    try:
        found.driver_version = _driver_version(nvml)
        if count == 0:
            n = nvml.call("nvmlDeviceGetCount", who="system")
            if isinstance(n, int) and n > 0:
                _note(notes, f"NVML sees {n} GPU(s) that torch cannot use (a CPU-only torch "
                      f"build, or CUDA_VISIBLE_DEVICES hides them): they are left out")
            return found
        handles: list[Any] = []
        for i in range(count):
            device, facts, h = _discover_gpu(i, nvml)
            found.devices.append(device)
            found.gpus.append(facts)
            handles.append(h)
        bus_to_device = {g.pci_bus_id: g.device for g in found.gpus if g.pci_bus_id}
        for i, h in enumerate(handles):
            if h is not None:
                nvlinks = _nvlink_facts(nvml, h, found.gpus[i].device, bus_to_device)
                found.gpus[i] = dataclasses.replace(found.gpus[i], nvlinks=nvlinks)
        for i, (dev, g) in enumerate(zip(found.devices, found.gpus)):
            bw, src = _pcie_Bps(g, _gpu_spec(g.name))
            for s, d in ((cpu_name, dev.name), (dev.name, cpu_name)):
                found.links.append(Link(src=s, dst=d, bandwidth_Bps=bw, latency_s=PCIE_LATENCY_S,
                                        kind="pcie", source=src))
        found.pairs = _gpu_pairs(nvml, found.gpus, handles)
        for i, gi in enumerate(found.gpus):
            for j, gj in enumerate(found.gpus):
                if i == j:
                    continue
                nv = _nvlink_Bps(gi, gj)
                if nv is None and handles[i] is not None and handles[j] is not None:
                    nv = _nvlink_by_p2p_status(nvml, handles[i], handles[j], gi, gj)
                if nv is not None:
                    found.links.append(Link(src=gi.device, dst=gj.device, bandwidth_Bps=nv[0],
                                            latency_s=NVLINK_LATENCY_S, kind="nvlink",
                                            source=nv[1] + "; latency nominal 2 µs"))
    finally:
        nvml.finish(notes)
    return found


def _driver_version(nvml: _Nvml) -> str | None:
    v = nvml.call("nvmlSystemGetDriverVersion", who="system")
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    return v if isinstance(v, str) else None


def _discover_gpu(index: int, nvml: _Nvml) -> tuple[Device, GpuFacts, Any]:
    """Device, facts and NVML handle (``None`` without NVML) of torch's GPU ``index``."""
    props = torch.cuda.get_device_properties(index)
    name = f"cuda:{index}"
    spec = _gpu_spec(props.name)
    if spec is not None:
        flops, bandwidth = dict(spec.peak_flops), spec.mem_bandwidth_Bps
        max_w, idle_w, source = spec.max_power_W, spec.idle_power_W, spec.source
    else:
        log.warning(
            "GPU %r not in autopart's datasheet table; using nominal numbers from its "
            "properties (profile it, or pass a topology file)", props.name
        )
        flops, bandwidth, source = _fallback_gpu_numbers(props)
        max_w, idle_w = None, None
    h = nvml.handle(index, props, name)
    facts = GpuFacts(
        device=name,
        name=str(props.name),
        memory_bytes=int(props.total_memory),
        num_sms=int(getattr(props, "multi_processor_count", 0)),
        compute_capability=(int(getattr(props, "major", 0)), int(getattr(props, "minor", 0))),
    )
    if h is not None:
        def ask(fn: str) -> Any:
            return nvml.call(fn, h, who=name)

        pci = ask("nvmlDeviceGetPciInfo")
        bus = _bus_id(getattr(pci, "busId", None)) if pci is not None else None
        limit_mw, draw_mw = ask("nvmlDeviceGetEnforcedPowerLimit"), ask("nvmlDeviceGetPowerUsage")
        facts = dataclasses.replace(
            facts,
            pci_bus_id=bus,
            numa_node=_pci_numa_node(bus),
            power_limit_W=limit_mw / 1000.0 if _is_number(limit_mw) and limit_mw > 0 else None,
            power_draw_W=draw_mw / 1000.0 if _is_number(draw_mw) and draw_mw >= 0 else None,
            pcie_generation=_int_or_none(ask("nvmlDeviceGetCurrPcieLinkGeneration")),
            pcie_width=_int_or_none(ask("nvmlDeviceGetCurrPcieLinkWidth")),
            pcie_max_generation=_int_or_none(ask("nvmlDeviceGetMaxPcieLinkGeneration")),
            pcie_max_width=_int_or_none(ask("nvmlDeviceGetMaxPcieLinkWidth")),
        )
        if facts.power_limit_W is not None:
            max_w = facts.power_limit_W
            source += "; max_power_W from NVML enforced power limit"
    device = Device(
        name=name,
        kind="cuda",
        model=facts.name,
        memory_bytes=facts.memory_bytes,
        peak_flops=flops,
        mem_bandwidth_Bps=bandwidth,
        launch_overhead_s=CUDA_LAUNCH_OVERHEAD_S,
        idle_power_W=idle_w,
        max_power_W=max_w,
        source=source,
    )
    return device, facts, h


def _nvlink_facts(
    nvml: _Nvml, h: Any, who: str, bus_to_device: Mapping[str, str]
) -> tuple[NvLinkFacts, ...]:
    """The NVLink links of one GPU: state for each index until NVML refuses one (the GPU's
    link count is below ``NVML_NVLINK_MAX_LINKS``, and NVML rejects indices past it), and for
    active links the version and the far end."""
    enabled = nvml.const("NVML_FEATURE_ENABLED", 1)
    kinds = {
        nvml.const("NVML_NVLINK_DEVICE_TYPE_GPU", 0): "gpu",
        nvml.const("NVML_NVLINK_DEVICE_TYPE_IBMNPU", 1): "cpu",
        nvml.const("NVML_NVLINK_DEVICE_TYPE_SWITCH", 2): "switch",
    }
    out = []
    for link in range(int(nvml.const("NVML_NVLINK_MAX_LINKS", 18))):
        state = nvml.call("nvmlDeviceGetNvLinkState", h, link, who=who, quiet=link > 0)
        if state is None:
            break
        if state != enabled:
            out.append(NvLinkFacts(link=link, active=False))
            continue
        version = _int_or_none(nvml.call("nvmlDeviceGetNvLinkVersion", h, link, who=who))
        pci = nvml.call("nvmlDeviceGetNvLinkRemotePciInfo", h, link, who=who)
        bus = _bus_id(getattr(pci, "busId", None)) if pci is not None else None
        peer = bus_to_device.get(bus) if bus is not None else None
        remote = nvml.call("nvmlDeviceGetNvLinkRemoteDeviceType", h, link, who=who)
        kind = kinds.get(remote, "gpu" if peer is not None else "unknown")
        out.append(NvLinkFacts(link=link, active=True, version=version, remote_pci_bus_id=bus,
                               remote_kind=kind, peer=peer if kind == "gpu" else None))
    return tuple(out)


def _gpu_pairs(nvml: _Nvml, gpus: list[GpuFacts], handles: list[Any]) -> list[GpuPairFacts]:
    """One :class:`GpuPairFacts` per unordered pair; empty without NVML."""
    if nvml.mod is None:
        return []
    pairs = []
    for i, gi in enumerate(gpus):
        for j in range(i + 1, len(gpus)):
            gj = gpus[j]
            level = None
            if handles[i] is not None and handles[j] is not None:
                level = _int_or_none(nvml.call("nvmlDeviceGetTopologyCommonAncestor", handles[i],
                                               handles[j], who=f"{gi.device}-{gj.device}"))
            pairs.append(GpuPairFacts(
                a=gi.device,
                b=gj.device,
                level=level,
                level_name=NVML_TOPOLOGY_LEVEL_NAMES.get(level) if level is not None else None,
                num_nvlinks=sum(lk.active and lk.peer == gj.device for lk in gi.nvlinks),
                nvswitch=_switch_links(gi) > 0 and _switch_links(gj) > 0,
            ))
    return pairs


def _switch_links(g: GpuFacts) -> int:
    return sum(lk.active and lk.remote_kind == "switch" for lk in g.nvlinks)


def _nvlink_rate(links: Iterable[NvLinkFacts]) -> tuple[float, str]:
    """Per-direction bandwidth of one link and where the number comes from."""
    versions = [lk.version for lk in links if lk.version is not None]
    if versions and versions[0] in NVLINK_PER_LINK_Bps_BY_VERSION:
        v = versions[0]
        return NVLINK_PER_LINK_Bps_BY_VERSION[v], (
            f"NVLink {_NVLINK_VERSION_NAMES[v]} at {NVLINK_PER_LINK_Bps_BY_VERSION[v] / 1e9:g} "
            f"GB/s per link per direction ({_NVLINK_VERSION_SOURCES[v]})"
        )
    what = f"unknown NVLink version {versions[0]}" if versions else "NVLink version unread"
    return NVLINK_PER_LINK_Bps, f"{what}: assumed {NVLINK_PER_LINK_Bps / 1e9:g} GB/s per link"


def _nvlink_Bps(src: GpuFacts, dst: GpuFacts) -> tuple[float, str] | None:
    """Per-direction NVLink bandwidth ``src -> dst`` and its source, from NVML's links:

    * direct links (far end is ``dst``): number of links x per-link rate;
    * both GPUs on NVSwitches: min over the two GPUs of (links to switches x per-link rate),
      since an NVSwitch fabric lets any GPU pair use all of a GPU's links (NVIDIA HGX/DGX);
    * else ``None``.
    """
    direct = [lk for lk in src.nvlinks if lk.active and lk.peer == dst.device]
    if direct:
        rate, why = _nvlink_rate(direct)
        return len(direct) * rate, (
            f"NVML: {len(direct)} NVLink links {src.device} -> {dst.device} x {why}"
        )
    if _switch_links(src) and _switch_links(dst):
        ends = [[lk for lk in g.nvlinks if lk.active and lk.remote_kind == "switch"]
                for g in (src, dst)]
        (r_src, why), (r_dst, _) = _nvlink_rate(ends[0]), _nvlink_rate(ends[1])
        bw = min(len(ends[0]) * r_src, len(ends[1]) * r_dst)
        return bw, (
            f"NVML: through NVSwitch, {len(ends[0])} links from {src.device} and "
            f"{len(ends[1])} from {dst.device}, the lesser x {why}"
        )
    return None


def _nvlink_by_p2p_status(
    nvml: _Nvml, h_src: Any, h_dst: Any, src: GpuFacts, dst: GpuFacts
) -> tuple[float, str] | None:
    """Fallback when the far ends of active links are unknown: NVML's P2P status says
    whether the pair talks over NVLink; bandwidth = the lesser number of such links x rate."""
    unknown = [[lk for lk in g.nvlinks if lk.active and lk.remote_kind == "unknown"]
               for g in (src, dst)]
    if not unknown[0] or not unknown[1]:
        return None
    status = nvml.call("nvmlDeviceGetP2PStatus", h_src, h_dst,
                       nvml.const("NVML_P2P_CAPS_INDEX_NVLINK", 2),
                       who=f"{src.device}-{dst.device}")
    if status is None or status != nvml.const("NVML_P2P_STATUS_OK", 0):
        return None
    n = min(len(unknown[0]), len(unknown[1]))
    rate, why = _nvlink_rate(unknown[0])
    return n * rate, (
        f"NVML P2P status: NVLink (far ends unknown); {n} links (the lesser active count) x {why}"
    )


def _pcie_Bps(g: GpuFacts, spec: _GpuSpec | None) -> tuple[float, str]:
    """Per-direction host link bandwidth of a GPU and its source: NVML's max generation and
    width (:data:`PCIE_X16_EFFECTIVE_Bps` x width / 16), else the datasheet's host link,
    else PCIe Gen4 x16."""
    gen, width = g.pcie_max_generation, g.pcie_max_width
    if gen in PCIE_X16_EFFECTIVE_Bps and width is not None and width > 0:
        bw = PCIE_X16_EFFECTIVE_Bps[gen] * min(width, 16) / 16
        return bw, (
            f"nominal: PCIe Gen{gen} x{width} from NVML, ~80% of the raw rate; "
            f"latency nominal 10 µs"
        )
    if spec is not None:
        return spec.pcie_Bps, (
            f"nominal: host link of a {spec.model} (datasheet PCIe generation, ~80% of raw); "
            f"latency nominal 10 µs"
        )
    return PCIE_X16_EFFECTIVE_Bps[4], "nominal: PCIe Gen4 x16, 25 GB/s effective, 10 µs"
