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
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import os
import platform
import re
import tempfile
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

__all__ = [
    "DeviceKind",
    "LinkKind",
    "Device",
    "Link",
    "Topology",
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

    Raises:
        ValueError: no devices, a device named twice, a link naming an absent device, a link
            from a device to itself, or the same directed link described twice.
    """

    name: str
    devices: tuple[Device, ...]
    links: tuple[Link, ...]
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "links", tuple(self.links))
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
        object.__setattr__(self, "_by_name", {d.name: d for d in self.devices})
        object.__setattr__(self, "_direct", {(lk.src, lk.dst): lk for lk in self.links})
        # (src, dst) -> (derived Link, route as device names); filled lazily by link().
        object.__setattr__(self, "_routes", {})

    def __repr__(self) -> str:
        return (
            f"Topology(name={self.name!r}, devices={self.device_names!r}, "
            f"num_links={len(self.links)})"
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
        )

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """The topology as a JSON-ready dict (schema in the module docstring)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "hosts": self.hosts,
            "devices": [d.to_dict() for d in self.devices],
            "links": [lk.to_dict() for lk in self.links],
        }

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
        allowed = ("schema_version", "name", "description", "hosts", "devices", "links")
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
        return cls(name=name, devices=tuple(devices), links=tuple(links), description=description)

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
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Topology:
        """Read a topology JSON file (see the schema in the module docstring).

        Raises:
            FileNotFoundError: ``path`` does not exist (the message names it).
            ValueError: malformed JSON (names the file, line and column) or a schema violation.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(
                2, f"topology file not found: {str(path)!r}", str(path)
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            ) from None
        return cls.from_dict(data, source=str(path))

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
        """This machine with nominal numbers (no profiling yet): see :func:`_discover_cpu`
        and :func:`_discover_cuda` for each number's source. Never raises because CUDA or
        NVML is missing; such parts are logged and skipped.
        """
        devices = [_discover_cpu()]
        links: list[Link] = []
        try:
            gpu_devices, gpu_links = _discover_cuda(devices[0].name)
        except Exception as e:  # discovery must not fail because of a driver quirk
            log.warning("CUDA discovery failed, continuing with the CPU only: %s", e)
            gpu_devices, gpu_links = [], []
        devices += gpu_devices
        links += gpu_links
        return cls(
            name="discovered",
            devices=tuple(devices),
            links=tuple(links),
            description=f"discovered on {platform.node() or 'this machine'} with nominal numbers",
        )

    # ------------------------------------------------------------------ display

    def table(self) -> str:
        """A human-readable table of devices (name, kind, model, memory GiB, peak TFLOP/s per
        dtype, memory GB/s) and links (src, dst, kind, GB/s, latency µs)."""
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
        return "\n".join(parts)


def _format_rows(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
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


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_core_count() -> int:
    """Physical cores this process may use: psutil's physical count, capped by the CPU
    affinity mask (containers and taskset restrict it)."""
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception as e:
        log.debug("psutil.cpu_count failed: %s", e)
    logical = os.cpu_count() or 1
    cores = physical or logical
    try:
        allowed = len(os.sched_getaffinity(0))
        cores = min(cores, allowed)
    except (AttributeError, OSError):
        pass
    return max(1, int(cores))


def _cpu_clock_hz() -> float:
    try:
        import psutil

        freq = psutil.cpu_freq()
    except Exception as e:
        log.debug("psutil.cpu_freq failed: %s", e)
        freq = None
    if freq is not None:
        mhz = freq.max or freq.current
        if mhz and mhz > 0:
            return float(mhz) * 1e6
    return CPU_FALLBACK_CLOCK_HZ


def _cpu_memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception as e:
        log.warning("psutil.virtual_memory failed (%s); assuming 8 GiB", e)
        return 8 * _GiB


def _discover_cpu(name: str = "cpu") -> Device:
    """The host CPU as one device, with nominal numbers.

    * memory_bytes: ``psutil.virtual_memory().total``.
    * peak float32 FLOP/s: physical cores (capped by CPU affinity) x clock
      (``psutil.cpu_freq().max``, else ``.current``, else 2.5 GHz) x 32 FLOP/cycle (AVX2 FMA:
      2 units x 8 lanes x 2). bfloat16 and float16 are given the float32 rate, float64 half.
      A nominal estimate, to be replaced by profiling.
    * mem_bandwidth_Bps: 10 GB/s per physical core, capped at 100 GB/s (nominal).
    * launch_overhead_s: 5 µs (nominal eager dispatch).
    """
    cores = _cpu_core_count()
    clock_hz = _cpu_clock_hz()
    fp32 = cores * clock_hz * CPU_FP32_FLOP_PER_CYCLE
    return Device(
        name=name,
        kind="cpu",
        model=_cpu_model_name(),
        memory_bytes=_cpu_memory_bytes(),
        peak_flops={"float32": fp32, "bfloat16": fp32, "float16": fp32, "float64": fp32 / 2},
        mem_bandwidth_Bps=min(cores * CPU_BANDWIDTH_PER_CORE_Bps, CPU_BANDWIDTH_CAP_Bps),
        launch_overhead_s=CPU_LAUNCH_OVERHEAD_S,
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
    nvlink_Bps: float | None  # per direction, to one peer
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
#: Per-link, per-direction NVLink bandwidth (NVLink 3 and 4: 25 GB/s per link per direction;
#: NVIDIA A100/H100 datasheets: 12 links = 600 GB/s, 18 links = 900 GB/s bidirectional).
NVLINK_PER_LINK_Bps = 25e9
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


class _Nvml:
    """Optional NVML access: every call returns ``None`` on any failure (logged once)."""

    def __init__(self) -> None:
        self.mod: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.mod = pynvml
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, driver mismatch, ...
            log.info("NVML not available, skipping power limits and NVLink detection: %s", e)

    def call(self, fn: str, *args: Any) -> Any:
        if self.mod is None:
            return None
        try:
            return getattr(self.mod, fn)(*args)
        except Exception as e:
            log.debug("NVML %s%s failed: %s", fn, args, e)
            return None

    def handle(self, index: int, props: Any) -> Any:
        uuid = getattr(props, "uuid", None)
        if uuid:
            text = str(uuid)
            if not text.startswith(("GPU-", "MIG-")):
                text = f"GPU-{text}"
            h = self.call("nvmlDeviceGetHandleByUUID", text)
            if h is not None:
                return h
        return self.call("nvmlDeviceGetHandleByIndex", index)

    def shutdown(self) -> None:
        if self.mod is not None:
            self.call("nvmlShutdown")


def _discover_cuda(cpu_name: str) -> tuple[list[Device], list[Link]]:
    """CUDA GPUs visible to torch, and their links.

    Per GPU: name and memory from ``torch.cuda.get_device_properties``; peak FLOP/s, memory
    bandwidth and power from :data:`GPU_SPECS` (datasheets) when the name is known, else
    :func:`_fallback_gpu_numbers`; the power limit from NVML when available. Links: host
    ``cpu`` <-> GPU over PCIe (generation and width from NVML if readable, else Gen4 x16:
    25 GB/s effective, 10 µs); GPU <-> GPU over NVLink where NVML reports NVLink P2P (per-
    direction bandwidth from the spec table, else 25 GB/s x active links), otherwise no
    direct link (routed through the host ``cpu``).
    """
    try:
        if not torch.cuda.is_available():
            return [], []
        count = torch.cuda.device_count()
    except Exception as e:
        log.info("torch.cuda not usable: %s", e)
        return [], []
    if count == 0:
        return [], []
    nvml = _Nvml()
    devices: list[Device] = []
    links: list[Link] = []
    handles: list[Any] = []
    specs: list[_GpuSpec | None] = []
    try:
        for i in range(count):
            props = torch.cuda.get_device_properties(i)
            name = f"cuda:{i}"
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
            h = nvml.handle(i, props)
            limit_mw = nvml.call("nvmlDeviceGetEnforcedPowerLimit", h) if h is not None else None
            if isinstance(limit_mw, (int, float)) and limit_mw > 0:
                max_w = limit_mw / 1000.0
                source += "; max_power_W from NVML enforced power limit"
            devices.append(
                Device(
                    name=name,
                    kind="cuda",
                    model=props.name,
                    memory_bytes=int(props.total_memory),
                    peak_flops=flops,
                    mem_bandwidth_Bps=bandwidth,
                    launch_overhead_s=CUDA_LAUNCH_OVERHEAD_S,
                    idle_power_W=idle_w,
                    max_power_W=max_w,
                    source=source,
                )
            )
            handles.append(h)
            specs.append(spec)
            pcie_Bps, pcie_src = _pcie_Bps(nvml, h, spec)
            for s, d in ((cpu_name, name), (name, cpu_name)):
                links.append(
                    Link(src=s, dst=d, bandwidth_Bps=pcie_Bps, latency_s=PCIE_LATENCY_S,
                         kind="pcie", source=pcie_src)
                )
        for i in range(count):
            for j in range(count):
                if i == j or handles[i] is None or handles[j] is None:
                    continue
                bw = _nvlink_Bps(nvml, handles[i], handles[j], specs[i])
                if bw is not None:
                    links.append(
                        Link(src=f"cuda:{i}", dst=f"cuda:{j}", bandwidth_Bps=bw,
                             latency_s=NVLINK_LATENCY_S, kind="nvlink",
                             source="NVML reports NVLink P2P; bandwidth nominal per direction, "
                             "latency nominal 2 µs")
                    )
    finally:
        nvml.shutdown()
    return devices, links


def _pcie_Bps(nvml: _Nvml, handle: Any, spec: _GpuSpec | None) -> tuple[float, str]:
    gen = nvml.call("nvmlDeviceGetMaxPcieLinkGeneration", handle) if handle is not None else None
    width = nvml.call("nvmlDeviceGetMaxPcieLinkWidth", handle) if handle is not None else None
    known_gen = isinstance(gen, int) and gen in PCIE_X16_EFFECTIVE_Bps
    if known_gen and isinstance(width, int) and width > 0:
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


def _nvlink_Bps(nvml: _Nvml, h_src: Any, h_dst: Any, spec: _GpuSpec | None) -> float | None:
    mod = nvml.mod
    if mod is None:
        return None
    cap = getattr(mod, "NVML_P2P_CAPS_INDEX_NVLINK", 3)
    status = nvml.call("nvmlDeviceGetP2PStatus", h_src, h_dst, cap)
    if status is None or status != getattr(mod, "NVML_P2P_STATUS_OK", 0):
        return None
    if spec is not None and spec.nvlink_Bps:
        return spec.nvlink_Bps
    active = 0
    for link in range(int(getattr(mod, "NVML_NVLINK_MAX_LINKS", 18))):
        state = nvml.call("nvmlDeviceGetNvLinkState", h_src, link)
        if state is None:
            break
        active += int(state == getattr(mod, "NVML_FEATURE_ENABLED", 1))
    return NVLINK_PER_LINK_Bps * max(active, 1)
