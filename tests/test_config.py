"""Config: option checking, accelerate-style max_memory, topology resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autopart import Config, Topology, parse_bytes
from autopart.config import format_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10GiB", 10 * 2**30),
        ("30GB", 30 * 10**9),
        ("500MB", 500 * 10**6),
        ("1.5gib", int(1.5 * 2**30)),
        ("64KiB", 64 * 1024),
        ("123", 123),
        (4096, 4096),
    ],
)
def test_parse_bytes_reads_accelerate_sizes(text, expected):
    assert parse_bytes(text) == expected


@given(st.integers(0, 2**50), st.sampled_from(["B", "KB", "MB", "GB", "KiB", "MiB", "GiB"]))
def test_parse_bytes_of_integer_strings(n, unit):
    factor = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    assert parse_bytes(f"{n}{unit}") == n * factor


@pytest.mark.parametrize("bad", ["ten GB", "10 XB", "", "GB"])
def test_parse_bytes_rejects_unreadable_strings(bad):
    with pytest.raises(ValueError, match=r"cannot read .* as a memory size"):
        parse_bytes(bad, what="max_memory['cuda:0']")


def test_parse_bytes_rejects_negative_and_wrong_types():
    with pytest.raises(ValueError, match="must be >= 0 bytes, got -1"):
        parse_bytes(-1)
    with pytest.raises(TypeError, match="expected bytes as an int or a string"):
        parse_bytes(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_bytes(True)  # type: ignore[arg-type]


def test_config_rejects_bad_values_with_their_name():
    with pytest.raises(ValueError, match=r"objective='fastest' is not one of \['latency', 'throughput', 'energy'\]"):
        Config(objective="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="solver='gurobi'"):
        Config(solver="gurobi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"trainable_parameters='keep' is not one of \['copy', 'move'\]"):
        Config(trainable_parameters="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_limit_s must be > 0"):
        Config(time_limit_s=0)
    with pytest.raises(ValueError, match="memory_fraction must be in"):
        Config(memory_fraction=1.5)
    with pytest.raises(ValueError, match="max_groups must be a positive int"):
        Config(max_groups=0)
    with pytest.raises(ValueError, match=r"max_memory\['cuda:0'\]: cannot read 'lots'"):
        Config(max_memory={"cuda:0": "lots"})
    with pytest.raises(TypeError, match="device_map must be a dict"):
        Config(device_map=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"energy_eta must be in \[0, 1\].*got -0.5"):
        Config(energy_eta=-0.5)
    with pytest.raises(ValueError, match="min_split_gain must be >= 0 .*got -1"):
        Config(min_split_gain=-1)
    with pytest.raises(TypeError, match="max_groups must be a positive int, got bool True"):
        Config(max_groups=True)
    with pytest.raises(TypeError, match=r"num_microbatches must be a positive int or None \(autopart chooses\), "
                                        "got str '4'"):
        Config(num_microbatches="4")  # type: ignore[arg-type]
    for name in ("contiguous_stages", "monitor", "strict"):
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'false'"):
            Config(**{name: "false"})


@pytest.mark.parametrize("name", ["profile_budget_s", "memory_fraction", "energy_slack", "time_limit_s",
                                  "mip_rel_gap", "min_split_gain", "energy_eta", "replan"])
def test_numbers_of_another_type_are_named(name):
    with pytest.raises(TypeError, match=f"{name} must be a number.*, got str '1'"):
        Config(**{name: "1"})
    if name not in ("energy_eta", "replan"):  # these two take None
        with pytest.raises(TypeError, match=f"{name} must be a number, got NoneType None"):
            Config(**{name: None})


def test_energy_eta_needs_the_energy_objective():
    for objective in ("latency", "throughput"):
        with pytest.raises(ValueError, match=rf"energy_eta=0.5 applies to objective='energy' only, but "
                           rf"objective='{objective}'; add objective='energy' \(or drop energy_eta\)"):
            Config(objective=objective, energy_eta=0.5)
    assert Config(objective="energy", energy_eta=0.5).energy_eta == 0.5


def test_cache_dir_must_be_a_path():
    with pytest.raises(TypeError, match="cache_dir must be a folder path or None, got int 5"):
        Config(cache_dir=5)  # type: ignore[arg-type]


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match=r"unknown autopart option\(s\) \['max_mem'\]"):
        Config.from_options(max_mem={"cpu": "1GB"})


def test_capacities_follow_accelerate_semantics():
    topo = Topology.preset("4xa100-pcie-cpu")
    caps = Config(max_memory={0: "1GiB", "cuda:1": 1000}).capacities_bytes(topo)
    assert caps == {"cpu": 0, "cuda:0": 2**30, "cuda:1": 1000, "cuda:2": 0, "cuda:3": 0}
    default = Config(memory_fraction=0.5).capacities_bytes(topo)
    assert default == {d.name: d.memory_bytes // 2 for d in topo.devices}
    with pytest.raises(ValueError, match=r"max_memory names device 'cuda:7'.* its devices are"):
        Config(max_memory={"cuda:7": "1GB"}).capacities_bytes(topo)


def test_backend_names_a_max_memory_device_the_topology_lacks_at_once():
    import autopart

    with pytest.raises(ValueError, match=r"max_memory names device 'cuda0'.*'4xa100-pcie-cpu'"):
        autopart.backend(topology="4xa100-pcie-cpu", device_map="cpu", max_memory={"cuda0": "1MB"})


def test_topology_resolution(tmp_path):
    assert Config(topology="8xh100-nvlink").resolve_topology().name == "8xh100-nvlink"
    topo = Topology.preset("1x4090-cpu")
    path = tmp_path / "t.json"
    topo.save(path)
    assert Config(topology=str(path)).resolve_topology() == topo
    assert Config(topology=topo).resolve_topology() is topo
    assert "cpu" in Config().resolve_topology().device_names
    with pytest.raises(ValueError, match=r"topology='nope' is neither a preset .* nor an existing file"):
        Config(topology="nope").resolve_topology()
    for missing in (tmp_path / "gone.json", str(tmp_path / "gone.json"), "gone.json"):
        with pytest.raises(ValueError, match=r"topology='.*gone\.json': no such file; give the path of a topology"):
            Config(topology=missing).resolve_topology()


def test_this_machine_uses_a_cached_profile_when_there_is_one(tmp_path, monkeypatch):
    import dataclasses

    from autopart import cache

    nominal = Config(profile="cached", cache_dir=tmp_path).resolve_topology()
    assert nominal.device("cpu").source.startswith("nominal")
    measured_cpu = dataclasses.replace(nominal.device("cpu"), source="measured in this test")
    profiled = dataclasses.replace(nominal, devices=(measured_cpu, *nominal.devices[1:]))
    fp = cache.fingerprint(nominal)
    cache.write_profile(cache.cache_path(fp, tmp_path), profiled, fp)
    assert Config(cache_dir=tmp_path).resolve_topology().device("cpu").source == "measured in this test"
    assert Config(profile="never", cache_dir=tmp_path).resolve_topology().device("cpu").source.startswith("nominal")

    calls = []
    monkeypatch.setattr(cache, "cached_profile", lambda **kw: calls.append(kw) or profiled)
    assert Config(profile="always", cache_dir=tmp_path, profile_budget_s=5).resolve_topology() is profiled
    assert calls == [{"cache_dir": tmp_path, "budget_s": 5}]
    with pytest.raises(ValueError, match="profile='sometimes' is not one of"):
        Config(profile="sometimes")  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**50))
def test_format_bytes_reads_back_within_its_three_digits(nbytes):
    text = format_bytes(nbytes)
    number, unit = text.split()
    assert unit in ("B", "KiB", "MiB", "GiB", "TiB")
    assert unit == "TiB" or float(number) < 1024
    assert parse_bytes(text.replace(" ", "")) == pytest.approx(nbytes, rel=5e-3, abs=1)  # rounded, then truncated
