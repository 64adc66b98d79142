"""autopart.cache: fingerprints, cache files (corrupt, stale, concurrent), and the CLI."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import multiprocessing
import socket
import threading
import time

import platformdirs
import pytest

from autopart import cache, profiler
from autopart.cache import (
    cache_path,
    cached_profile,
    fingerprint,
    fingerprint_inputs,
    load_cached_profile,
    read_profile,
    write_profile,
)
from autopart.cli import main
from autopart.topology import Topology


@pytest.fixture(scope="module")
def discovered():
    return Topology.discover()


@pytest.fixture
def fake_profile(monkeypatch):
    """Replace the real profiler by a quick fake that marks the CPU and counts calls."""
    calls = []

    def fake(topology, *, budget_s, progress):
        calls.append(budget_s)
        time.sleep(0.05)
        cpu = dataclasses.replace(topology.device("cpu"), source="measured by fake",
                                  measured={"call": len(calls)})
        devices = tuple(cpu if d.name == "cpu" else d for d in topology.devices)
        return dataclasses.replace(topology, devices=devices)

    monkeypatch.setattr(profiler, "profile_topology", fake)
    return calls


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_names_what_it_keys(discovered):
    inputs = fingerprint_inputs(discovered)
    assert fingerprint(discovered) == fingerprint(discovered)
    assert len(fingerprint(discovered)) == 64
    assert inputs["hostname"] == socket.gethostname()
    cpu = {"name": "cpu", "kind": "cpu", "model": discovered.device("cpu").model,
           "memory_bytes": discovered.device("cpu").memory_bytes}
    assert cpu in inputs["devices"]
    for key in ("torch", "autopart", "cuda_runtime", "cuda_driver", "num_threads",
                "profile_format"):
        assert key in inputs
    json.dumps(inputs)


def test_fingerprint_changes_with_host(discovered, monkeypatch):
    before = fingerprint(discovered)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    assert fingerprint(discovered) != before


def test_fingerprint_changes_with_memory(discovered):
    """A VM or container resized in place keeps its host name: its memory keys the profile too."""
    cpu = discovered.device("cpu")
    smaller = dataclasses.replace(cpu, memory_bytes=cpu.memory_bytes // 4)
    resized = dataclasses.replace(discovered, devices=tuple(smaller if d is cpu else d for d in discovered.devices))
    assert fingerprint(resized) != fingerprint(discovered)


def test_cache_path_and_default_folder(tmp_path):
    fp = "ab" * 32
    assert cache_path(fp, tmp_path) == tmp_path / f"topology-{fp[:16]}.json"
    assert cache.default_cache_dir() == platformdirs.user_cache_path("autopart")
    with pytest.raises(ValueError, match="hex fingerprint"):
        cache_path("not-hex", tmp_path)


# --------------------------------------------------------------------------- cached_profile


def test_first_call_profiles_and_writes_second_loads(tmp_path, fake_profile):
    first = cached_profile(cache_dir=tmp_path, budget_s=7, progress=False)
    assert fake_profile == [7]
    (name,) = [n for n in _files(tmp_path) if n.endswith(".json")]
    path = tmp_path / name
    data = json.loads(path.read_text())
    assert data["format"] == "autopart-profile" and data["fingerprint"] == fingerprint()
    assert data["inputs"] == fingerprint_inputs()
    second = cached_profile(cache_dir=tmp_path, budget_s=7, progress=False)
    assert fake_profile == [7]  # not profiled again
    assert second == first and second.device("cpu").measured == {"call": 1}
    third = cached_profile(cache_dir=tmp_path, refresh=True, progress=False)
    assert len(fake_profile) == 2 and third.device("cpu").measured == {"call": 2}
    assert read_profile(path).device("cpu").measured == {"call": 2}


def test_corrupt_file_is_reported_and_replaced(tmp_path, fake_profile, caplog):
    path = cache_path(fingerprint(), tmp_path)
    path.write_text('{"format": "autopart-profile", "topology": {')  # truncated JSON
    with caplog.at_level(logging.WARNING, logger="autopart.cache"):
        topo = cached_profile(cache_dir=tmp_path, progress=False)
    assert len(fake_profile) == 1
    (record,) = [r for r in caplog.records if r.name == "autopart.cache"]
    assert str(path) in record.getMessage() and "invalid JSON" in record.getMessage()
    assert read_profile(path, fingerprint()) == topo


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "invalid JSON"),
        ("[1, 2]", "not an autopart profile"),
        ('{"format": "autopart-profile", "format_version": 99}', "format_version 99"),
        ('{"format": "autopart-profile", "format_version": 1, "fingerprint": "%s", '
         '"topology": {"name": "x", "devices": [], "links": []}}', "topology.devices"),
    ],
)
def test_unusable_files_are_reported_and_replaced(tmp_path, fake_profile, caplog, content,
                                                  problem):
    fp = fingerprint()
    path = cache_path(fp, tmp_path)
    path.write_text(content.replace("%s", fp))
    with caplog.at_level(logging.WARNING, logger="autopart.cache"):
        cached_profile(cache_dir=tmp_path, progress=False)
    assert len(fake_profile) == 1
    assert any(problem in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    read_profile(path, fp)  # valid now


def test_file_with_another_fingerprint_is_stale_and_replaced(tmp_path, fake_profile, caplog,
                                                            discovered):
    fp = fingerprint()
    path = cache_path(fp, tmp_path)
    write_profile(path, discovered, "0" * 64)
    with caplog.at_level(logging.WARNING, logger="autopart.cache"):
        cached_profile(cache_dir=tmp_path, progress=False)
    assert len(fake_profile) == 1
    assert any("stale" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["fingerprint"] == fp


def test_changed_fingerprint_profiles_again_into_another_file(tmp_path, fake_profile,
                                                             monkeypatch):
    cached_profile(cache_dir=tmp_path, progress=False)
    old = _files(tmp_path)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    cached_profile(cache_dir=tmp_path, progress=False)
    assert len(fake_profile) == 2
    new = [n for n in _files(tmp_path) if n.endswith(".json")]
    assert len(new) == 2 and set(old) <= set(_files(tmp_path))


def test_load_cached_profile_never_profiles(tmp_path, fake_profile, caplog):
    with caplog.at_level(logging.WARNING):
        topo, path = load_cached_profile(cache_dir=tmp_path)
    assert topo is None and not path.exists() and not caplog.records
    cached_profile(cache_dir=tmp_path, progress=False)
    topo, _ = load_cached_profile(cache_dir=tmp_path)
    assert topo is not None and topo.device("cpu").source == "measured by fake"
    assert len(fake_profile) == 1


def test_bad_budget_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="budget_s"):
        cached_profile(cache_dir=tmp_path, budget_s=0)


# --------------------------------------------------------------------------- concurrency


def test_concurrent_callers_profile_once(tmp_path, fake_profile):
    results = []

    def call():
        results.append(cached_profile(cache_dir=tmp_path, progress=False))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_profile) == 1  # the others waited on the lock, then read the file
    assert len(results) == 4 and all(r == results[0] for r in results)


def _named(topo: Topology, i: int) -> Topology:
    return dataclasses.replace(topo, name=f"writer-{i}", description="x" * (i * 5000))


def _write_many(path: str, i: int, n: int) -> None:
    topo = _named(Topology.preset("4xa100-pcie-cpu"), i)
    for _ in range(n):
        write_profile(path, topo, "f" * 64)


def test_concurrent_writers_never_leave_a_partial_file(tmp_path):
    path = tmp_path / "topology-ffffffffffffffff.json"
    stop = threading.Event()
    seen, errors = set(), []

    def reader():
        while not stop.is_set():
            try:
                seen.add(read_profile(path, "f" * 64).name)
            except FileNotFoundError:
                pass
            except Exception as e:  # a partial file would land here
                errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=_write_many, args=(str(path), i, 15)) for i in range(4)]
    procs = []
    if "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_write_many, args=(str(path), 10 + i, 15)) for i in range(2)]
    for t in (*readers, *writers, *procs):
        t.start()
    for t in (*writers, *procs):
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert all(p.exitcode == 0 for p in procs)
    final = read_profile(path, "f" * 64)
    assert final.name in {f"writer-{i}" for i in (0, 1, 2, 3, 10, 11)}
    assert seen <= {f"writer-{i}" for i in (0, 1, 2, 3, 10, 11)}
    assert _files(tmp_path) == [path.name]  # no temp files left behind


def test_no_pickle_anywhere(tmp_path, fake_profile):
    cached_profile(cache_dir=tmp_path, progress=False)
    for p in tmp_path.iterdir():
        assert not p.name.endswith((".pkl", ".pickle", ".pt"))
        if p.name.endswith(".json"):
            json.loads(p.read_text())
    for module in (cache, profiler):
        source = inspect.getsource(module)
        assert "import pickle" not in source and "torch.save" not in source
        assert "torch.load" not in source


# --------------------------------------------------------------------------- CLI


def test_cli_profile_prints_a_table_and_writes_the_cache(tmp_path, capsys):
    assert main(["topology", "--profile", "--budget", "2", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cpu" in out and "mem GB/s" in out and "numbers: measured" in out
    (name,) = [n for n in _files(tmp_path) if n.endswith(".json")]
    topo = read_profile(tmp_path / name, fingerprint())
    assert topo.device("cpu").source.startswith("measured by autopart.profiler")
    # default: the cached profile, no profiling
    saved = tmp_path / "saved.json"
    assert main(["topology", "--cache-dir", str(tmp_path), "--save", str(saved)]) == 0
    assert f"measured, from {tmp_path / name}" in capsys.readouterr().out
    assert Topology.load(saved) == topo
    assert main(["topology", "--no-profile", "--cache-dir", str(tmp_path)]) == 0
    assert "numbers: nominal" in capsys.readouterr().out


def test_cli_default_without_cache_is_nominal(tmp_path, capsys, fake_profile):
    assert main(["topology", "--cache-dir", str(tmp_path)]) == 0
    assert "numbers: nominal (no cached profile" in capsys.readouterr().out
    assert not fake_profile and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "--preset", "8xh100-nvlink"], "cannot be combined"),
        (["--refresh", "--no-profile"], "drop --no-profile"),
        (["--profile", "--budget", "0"], "--budget must be"),
    ],
)
def test_cli_rejects_contradictory_options(tmp_path, capsys, argv, message):
    assert main(["topology", "--cache-dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
