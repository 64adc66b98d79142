"""Profiled topologies cached as JSON files, keyed by a fingerprint of the machine.

A profile (:func:`autopart.profiler.profile_topology`) takes tens of seconds, so
:func:`cached_profile` keeps it in ``<cache folder>/topology-<fingerprint[:16]>.json``; the
cache folder is ``platformdirs.user_cache_path("autopart")`` (``~/.cache/autopart`` on
Linux, honouring ``XDG_CACHE_HOME``) unless ``cache_dir`` is given.

The **fingerprint** (:func:`fingerprint`) is the sha256 of a canonical JSON (sorted keys, no
spaces) of :func:`fingerprint_inputs`: the host name, each local device's name, kind, model
and memory, the CUDA runtime and driver versions, the torch and autopart versions, the number
of torch CPU threads, and :data:`autopart.profiler.PROFILE_FORMAT_VERSION`. Any change there
(a new GPU, a VM or container given other memory, a driver or torch upgrade,
``torch.set_num_threads``) gives another file name, so the machine is profiled again.

A cache file is JSON only (never pickle)::

    format          "autopart-profile"
    format_version  1 (CACHE_FORMAT_VERSION)
    fingerprint     the full sha256 hex digest
    inputs          the fingerprint inputs (for a human reading the file)
    created         ISO 8601 UTC time the file was written
    topology        the profiled topology (the schema of autopart.topology)

A file that is not valid JSON, not in this format, holds another fingerprint (stale), or
holds an invalid topology is logged as a warning naming the file and the problem, then the
machine is re-profiled and the file rewritten; it never raises. Files are written atomically
(a temp file in the same folder, ``fsync``, then ``os.replace``), so readers and concurrent
writers never see a partial file; a lock file (``filelock``) lets one process profile while
others wait for its result instead of profiling at the same time (which would also disturb
each other's measurements).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write_text
from .topology import Topology, local_devices

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT",
    "CACHE_FORMAT_VERSION",
    "default_cache_dir",
    "fingerprint_inputs",
    "fingerprint",
    "cache_path",
    "read_profile",
    "write_profile",
    "load_cached_profile",
    "cached_profile",
]

CACHE_FORMAT = "autopart-profile"
CACHE_FORMAT_VERSION = 1
#: Seconds to wait for another process that is profiling, on top of the profile budget,
#: before profiling without the lock.
LOCK_SLACK_S = 60.0


def default_cache_dir() -> Path:
    """The per-user cache folder: ``platformdirs.user_cache_path("autopart")``."""
    import platformdirs

    return Path(platformdirs.user_cache_path("autopart"))


def _cuda_driver_version(topology: Topology | None) -> str | None:
    """The NVIDIA driver version: from the topology's discovery report when it has one,
    else NVML (``nvmlSystemGetDriverVersion``); ``None`` without CUDA or NVML."""
    report = getattr(topology, "discovery", None)
    version = getattr(report, "nvml_driver_version", None)
    if version:
        return str(version)
    try:
        if not torch.cuda.is_available():
            return None
    except Exception:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception as e:  # no NVML: the CUDA runtime version still keys the profile
        log.debug("NVML driver version unavailable: %s", e)
        return None


def fingerprint_inputs(topology: Topology | None = None) -> dict[str, Any]:
    """What a cached profile is keyed by (see the module docstring).

    Args:
        topology: the discovered topology of this machine (its local devices are used); by
            default :meth:`Topology.discover` is called.

    Returns:
        A JSON-ready dict.
    """
    from . import __version__
    from .profiler import PROFILE_FORMAT_VERSION

    topo = Topology.discover() if topology is None else topology
    local = set(local_devices())
    devices = [
        {"name": d.name, "kind": d.kind, "model": d.model, "memory_bytes": d.memory_bytes}
        for d in topo.devices
        if d.name in local
    ]
    return {
        "hostname": socket.gethostname(),
        "devices": devices,
        "cuda_runtime": torch.version.cuda,
        "cuda_driver": (
            _cuda_driver_version(topo) if any(d["kind"] == "cuda" for d in devices) else None
        ),
        "torch": str(torch.__version__),
        "autopart": __version__,
        "num_threads": torch.get_num_threads(),
        "profile_format": PROFILE_FORMAT_VERSION,
        "cache_format": CACHE_FORMAT_VERSION,
    }


def _digest(inputs: dict[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def fingerprint(topology: Topology | None = None) -> str:
    """The sha256 hex digest of :func:`fingerprint_inputs` as canonical JSON (sorted keys)."""
    return _digest(fingerprint_inputs(topology))


def cache_path(fp: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache_dir or default_cache_dir()>/topology-<fp[:16]>.json``.

    Raises:
        ValueError: ``fp`` is not a hex digest of at least 16 characters.
    """
    if not isinstance(fp, str) or len(fp) < 16 or any(c not in "0123456789abcdef" for c in fp):
        raise ValueError(
            f"cache_path: expected a lower-case hex fingerprint of >= 16 characters (from "
            f"autopart.cache.fingerprint()), got {fp!r}"
        )
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return folder / f"topology-{fp[:16]}.json"


def read_profile(path: str | os.PathLike[str], expected_fp: str | None = None) -> Topology:
    """Read a cache file written by :func:`write_profile`.

    Args:
        path: the file.
        expected_fp: the fingerprint it must hold; ``None`` accepts any.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid JSON, not a cache file of this format version, another
            fingerprint (stale), or an invalid topology; the message says which.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ValueError(f"not an autopart profile (no \"format\": {CACHE_FORMAT!r})")
    if data.get("format_version") != CACHE_FORMAT_VERSION:
        raise ValueError(
            f"format_version {data.get('format_version')!r}, this autopart reads "
            f"{CACHE_FORMAT_VERSION}"
        )
    if expected_fp is not None and data.get("fingerprint") != expected_fp:
        raise ValueError(
            f"stale: fingerprint {str(data.get('fingerprint'))[:16]}... does not match this "
            f"machine's {expected_fp[:16]}..."
        )
    return Topology.from_dict(data.get("topology"), source=str(path))


def write_profile(
    path: str | os.PathLike[str],
    topology: Topology,
    fp: str,
    inputs: dict[str, Any] | None = None,
) -> None:
    """Write ``topology`` as a cache file (format in the module docstring), atomically: a
    temp file in the same folder, ``fsync``, then ``os.replace``. Creates the folder.

    Raises:
        OSError: the folder cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "fingerprint": fp,
        "inputs": inputs or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "topology": topology.to_dict(),
    }
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of ``path``, or None if it does not exist: tells whether
    another writer replaced the file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _try_read(path: Path, fp: str) -> Topology | None:
    """The cached topology, or None (missing: silently; unusable: a warning)."""
    try:
        topo = read_profile(path, fp)
    except FileNotFoundError:
        return None
    except Exception as e:  # corrupt or stale: re-profile, never crash
        log.warning("profile cache %s is unusable (%s: %s); re-profiling this machine", path,
                    type(e).__name__, e)
        return None
    log.info("profile cache: loaded %s", path)
    return topo


def load_cached_profile(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    topology: Topology | None = None,
) -> tuple[Topology | None, Path]:
    """The cached profile of this machine if a valid one exists; never profiles.

    Args:
        cache_dir: the cache folder; default :func:`default_cache_dir`.
        topology: this machine's discovered topology (default: discover it).

    Returns:
        ``(topology or None, cache file path)``. An unusable file is logged as a warning and
        gives ``None``.
    """
    topo = Topology.discover() if topology is None else topology
    fp = fingerprint(topo)
    path = cache_path(fp, cache_dir)
    return _try_read(path, fp), path


def cached_profile(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    budget_s: float = 60.0,
    progress: bool = True,
) -> Topology:
    """This machine's profiled topology: from the cache, else profiled now and cached.

    Discovers the machine (:meth:`Topology.discover`), computes its :func:`fingerprint`, and
    loads ``topology-<fingerprint[:16]>.json`` from the cache folder when it is valid. Otherwise
    (missing, corrupt, stale -- the last two logged as warnings) profiles with
    :func:`autopart.profiler.profile_topology` and writes the file atomically. Concurrent
    callers (threads or processes) serialise on ``<file>.lock``: the first profiles, the others
    then load its file.

    Args:
        cache_dir: the cache folder (created if missing); default :func:`default_cache_dir`.
        refresh: profile again even if a valid cache file exists.
        budget_s: seconds for a profile (> 0).
        progress: show a progress bar while profiling (only on a terminal).

    Raises:
        ValueError: ``budget_s`` is not > 0.
        OSError: the cache folder cannot be created or written.
    """
    from filelock import FileLock, Timeout

    from . import profiler

    if not isinstance(budget_s, (int, float)) or isinstance(budget_s, bool) or not budget_s > 0:
        raise ValueError(f"cached_profile: budget_s must be seconds > 0, got {budget_s!r}")
    discovered = Topology.discover()
    inputs = fingerprint_inputs(discovered)
    fp = _digest(inputs)
    path = cache_path(fp, cache_dir)
    seen = _stat_key(path)
    if not refresh and seen is not None:
        topo = _try_read(path, fp)
        if topo is not None:
            return topo
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock", timeout=budget_s + LOCK_SLACK_S)
    try:
        lock.acquire()
    except Timeout:
        log.warning("profile cache: %s.lock held for over %.0f s; profiling without it", path,
                    budget_s + LOCK_SLACK_S)
        lock = None
    try:
        now = _stat_key(path)
        if not refresh and now is not None and now != seen:
            # another process wrote the file while this one waited for the lock
            topo = _try_read(path, fp)
            if topo is not None:
                return topo
        log.info("profile cache: profiling this machine (budget %.0f s) for %s", budget_s, path)
        topo = profiler.profile_topology(discovered, budget_s=budget_s, progress=progress)
        write_profile(path, topo, fp, inputs)
        log.info("profile cache: wrote %s", path)
        return topo
    finally:
        if lock is not None:
            lock.release()
