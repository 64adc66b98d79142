"""Tests for autopart.topology: schema validation, presets, routing, alpha-beta cost,
discovery without CUDA/NVML (and with a faked CUDA/NVML), atomic save."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autopart import topology as topo_mod
from autopart.topology import Device, Link, Topology, local_devices, presets

EXPECTED_PRESETS = {
    "8xh100-nvlink",
    "4xa100-pcie-cpu",
    "1x4090-cpu",
    "hetero-a100-t4-cpu",
    "2x8xh100-ib",
}


def _device(name="cpu", kind="cpu", **kw):
    d = {
        "name": name,
        "kind": kind,
        "memory_bytes": 8 * 2**30,
        "peak_flops": {"float32": 1e12},
        "mem_bandwidth_Bps": 50e9,
        "launch_overhead_s": 5e-6,
    }
    d.update(kw)
    return d


def _link(src="cpu", dst="cuda:0", **kw):
    d = {"src": src, "dst": dst, "bandwidth_Bps": 25e9, "latency_s": 1e-5, "kind": "pcie"}
    d.update(kw)
    return d


def _valid() -> dict:
    return {
        "name": "tiny",
        "devices": [
            _device(),
            _device("cuda:0", "cuda", peak_flops={"float32": 2e13, "bfloat16": 3e14}),
        ],
        "links": [_link(), _link("cuda:0", "cpu")],
    }


# --------------------------------------------------------------------------- presets


def test_presets_lists_bundled_files():
    assert set(presets()) == EXPECTED_PRESETS
    assert presets() == sorted(presets())


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_loads_roundtrips_and_routes_every_pair(name, tmp_path):
    t = Topology.preset(name)
    assert t.name == name
    assert any(d.kind == "cpu" for d in t.devices)
    assert all(d.source for d in t.devices), "every preset device cites its source"
    assert all(lk.source for lk in t.links), "every preset link cites its source"
    # dict and file round trips give an equal topology
    assert Topology.from_dict(t.to_dict()) == t
    path = tmp_path / f"{name}.json"
    t.save(path)
    again = Topology.load(path)
    assert again == t
    assert hash(again) == hash(t)
    # every ordered pair has a route with positive bandwidth
    for a in t.device_names:
        for b in t.device_names:
            lk = t.link(a, b)
            assert lk.src == a and lk.dst == b
            assert lk.bandwidth_Bps > 0 and lk.latency_s >= 0
            route = t.route(a, b)
            assert route[0] == a and route[-1] == b
            assert t.transfer_time_s(a, b, 2**20) > 0 or a == b


def test_preset_numbers_match_datasheets():
    h100 = Topology.preset("8xh100-nvlink")
    gpu = h100.device("cuda:3")
    assert gpu.peak_flops_for(torch.bfloat16) == pytest.approx(989e12)
    assert gpu.peak_flops_for(torch.float32) == pytest.approx(67e12)
    assert gpu.mem_bandwidth_Bps == pytest.approx(3.35e12)
    assert gpu.max_power_W == 700
    nv = h100.link("cuda:0", "cuda:7")
    assert nv.kind == "nvlink" and nv.bandwidth_Bps == pytest.approx(450e9)
    a100 = Topology.preset("4xa100-pcie-cpu").device("cuda:0")
    assert a100.peak_flops["float32"] == pytest.approx(19.5e12)
    assert a100.peak_flops["bfloat16"] == pytest.approx(312e12)
    assert a100.memory_bytes == 40 * 2**30


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match=r"unknown topology preset 'nope'.*8xh100-nvlink"):
        Topology.preset("nope")


def test_multi_host_preset_hosts_and_names():
    t = Topology.preset("2x8xh100-ib")
    assert t.hosts == ["node0", "node1"]
    assert "node1/cuda:7" in t.device_names
    assert all(d.name.startswith(d.host + "/") for d in t.devices)
    assert Topology.preset("1x4090-cpu").hosts == ["localhost"]


# --------------------------------------------------------------------------- validation


def _mutate(fn):
    d = _valid()
    fn(d)
    return d


BAD_INPUTS = [
    # (mutation, regex the message must match)
    (lambda d: d["devices"][1].update(kind="tpu"), r"topology\.devices\[1\]\.kind: expected one of .*'cuda'.*got 'tpu'"),
    (lambda d: d["devices"][0].pop("memory_bytes"), r"topology\.devices\[0\]\.memory_bytes: missing"),
    (lambda d: d["devices"][1].update(memory_bytes=-5),
     r"topology\.devices\[1\]\.memory_bytes: expected a positive integer \(bytes\), got -5"),
    (lambda d: d["devices"][1].update(memory_bytes=0), r"devices\[1\]\.memory_bytes: .*got 0"),
    (lambda d: d["devices"][1].update(memory_bytes=1.5), r"devices\[1\]\.memory_bytes: .*got 1\.5"),
    (lambda d: d["devices"][1].update(memory_bytes="80GiB"), r"devices\[1\]\.memory_bytes: .*got '80GiB'"),
    (lambda d: d["devices"][1].update(memory_bytes=True), r"devices\[1\]\.memory_bytes: .*got True"),
    (lambda d: d["devices"][0].update(mem_bandwidth_Bps=0), r"devices\[0\]\.mem_bandwidth_Bps: expected a positive finite number \(bytes/s\), got 0"),
    (lambda d: d["devices"][0].pop("mem_bandwidth_Bps"), r"devices\[0\]\.mem_bandwidth_Bps: missing"),
    (lambda d: d["devices"][0].update(launch_overhead_s=-1e-6), r"devices\[0\]\.launch_overhead_s: .*got -1e-06"),
    (lambda d: d["devices"][1]["peak_flops"].update(bfloat16=-1.0),
     r"devices\[1\]\.peak_flops\.bfloat16: expected a positive finite number \(FLOP/s\), got -1\.0"),
    (lambda d: d["devices"][1]["peak_flops"].update(float32=0), r"devices\[1\]\.peak_flops\.float32: .*got 0"),
    (lambda d: d["devices"][1].update(peak_flops={"bfloat16": 1e14}),
     r"devices\[1\]\.peak_flops: expected a \"float32\" entry.*got \{'bfloat16'"),
    (lambda d: d["devices"][1]["peak_flops"].update(bfloat61=1e14), r"devices\[1\]\.peak_flops: unknown dtype name 'bfloat61'"),
    (lambda d: d["devices"][1].update(peak_flops=5e12), r"devices\[1\]\.peak_flops: expected an object.*got 5000000000000\.0"),
    (lambda d: d["devices"][0].update(max_power_W=0), r"devices\[0\]\.max_power_W: .*got 0"),
    (lambda d: d["devices"][0].update(memory_byte=5), r"devices\[0\]: unknown key 'memory_byte'; allowed keys: name, kind, .*memory_bytes"),
    (lambda d: d["devices"][1].update(name="cpu"), r"devices\[1\]\.name: device 'cpu' is named twice"),
    (lambda d: d["devices"][1].update(name=""), r"devices\[1\]\.name: expected a non-empty string, got ''"),
    (lambda d: d["devices"].append("gpu"), r"devices\[2\]: expected an object.*got 'gpu'"),
    (lambda d: d["links"][0].update(dst="cuda:9"), r"topology\.links\[0\]\.dst: unknown device 'cuda:9'; known devices: cpu, cuda:0"),
    (lambda d: d["links"][1].update(src="gpu0"), r"links\[1\]\.src: unknown device 'gpu0'"),
    (lambda d: d["links"][0].pop("bandwidth_Bps"), r"links\[0\]\.bandwidth_Bps: missing"),
    (lambda d: d["links"][0].update(bandwidth_Bps=0), r"links\[0\]\.bandwidth_Bps: expected a positive finite number \(bytes/s\), got 0"),
    (lambda d: d["links"][0].update(bandwidth_Bps=-3e9), r"links\[0\]\.bandwidth_Bps: .*got -3000000000\.0"),
    (lambda d: d["links"][0].update(bandwidth_Bps=math.inf), r"links\[0\]\.bandwidth_Bps: .*got inf"),
    (lambda d: d["links"][1].update(latency_s=-1.0), r"links\[1\]\.latency_s: expected a finite number >= 0 \(seconds\), got -1\.0"),
    (lambda d: d["links"][0].update(kind="infiniband"), r"links\[0\]\.kind: expected one of 'pcie', 'nvlink'.*got 'infiniband'"),
    (lambda d: d["links"][0].update(bandwith_Bps=1e9), r"links\[0\]: unknown key 'bandwith_Bps'; allowed keys: src, dst, bandwidth_Bps"),
    (lambda d: d["links"].append(_link("cpu", "cpu")), r"links\[2\]: src and dst are both 'cpu'"),
    (lambda d: d["links"].append(_link()), r"links\[2\]: link 'cpu' -> 'cuda:0' is described twice"),
    (lambda d: d.update(devices=[]), r"topology\.devices: expected a non-empty list.*got \[\]"),
    (lambda d: d.pop("name"), r"topology\.name: missing"),
    (lambda d: d.pop("links"), r"topology\.links: missing"),
    (lambda d: d.update(links={}), r"topology\.links: expected a list.*got \{\}"),
    (lambda d: d.update(schema_version=2), r"topology\.schema_version: expected 1 .*got 2"),
    (lambda d: d.update(hosts=["a", "b"]), r"topology\.hosts: expected the hosts the devices name, \['localhost'\].*got \['a', 'b'\]"),
    (lambda d: d.update(device=[]), r"topology: unknown key 'device'; allowed keys: .*devices"),
]


@pytest.mark.parametrize("mutation,pattern", BAD_INPUTS, ids=[p for _, p in BAD_INPUTS])
def test_from_dict_rejects_bad_input(mutation, pattern):
    with pytest.raises(ValueError, match=pattern):
        Topology.from_dict(_mutate(mutation), source="bad.json")


def test_from_dict_error_names_source():
    d = _mutate(lambda d: d["devices"][1].update(memory_bytes=-5))
    with pytest.raises(ValueError, match=r"^my/file\.json: topology\.devices\[1\]\.memory_bytes"):
        Topology.from_dict(d, source="my/file.json")


def test_from_dict_accepts_integral_floats_and_defaults():
    d = _valid()
    d["devices"][1]["memory_bytes"] = 8.589934592e10
    d["schema_version"] = 1
    d["hosts"] = ["localhost"]
    t = Topology.from_dict(d)
    dev = t.device("cuda:0")
    assert dev.memory_bytes == 80 * 2**30 and isinstance(dev.memory_bytes, int)
    assert dev.host == "localhost" and dev.model == "" and dev.idle_power_W is None
    assert t.description == ""


def test_from_dict_does_not_mutate_input():
    d = _valid()
    before = copy.deepcopy(d)
    Topology.from_dict(d)
    assert d == before


def test_constructors_validate():
    with pytest.raises(ValueError, match=r"Device\(name='x'\)\.memory_bytes: .*got 0"):
        Device(name="x", kind="cpu", memory_bytes=0, peak_flops={"float32": 1.0},
               mem_bandwidth_Bps=1.0, launch_overhead_s=0.0)
    with pytest.raises(ValueError, match=r"latency_s: .*got -1"):
        Link(src="a", dst="b", bandwidth_Bps=1.0, latency_s=-1, kind="pcie")
    dev = Device(name="x", kind="cpu", memory_bytes=1, peak_flops={"float32": 1.0},
                 mem_bandwidth_Bps=1.0, launch_overhead_s=0.0)
    with pytest.raises(ValueError, match=r"links\[0\]\.dst: unknown device 'y'"):
        Topology("t", (dev,), (Link(src="x", dst="y", bandwidth_Bps=1.0, latency_s=0.0, kind="pcie"),))
    with pytest.raises(ValueError, match=r"devices: expected at least one device"):
        Topology("t", (), ())


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Topology.load(path)


def test_load_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": "x",\n  "devices": [,]\n}\n')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 3"):
        Topology.load(path)


def test_load_schema_error_names_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_mutate(lambda d: d["links"][0].update(kind="usb"))))
    with pytest.raises(ValueError, match=r"t\.json: topology\.links\[0\]\.kind: .*got 'usb'"):
        Topology.load(path)


# --------------------------------------------------------------------------- devices


def test_peak_flops_for_dtypes_and_fallbacks():
    t = Topology.from_dict(_valid())
    gpu = t.device("cuda:0")
    assert gpu.peak_flops_for(torch.bfloat16) == 3e14
    assert gpu.peak_flops_for("bfloat16") == 3e14
    assert gpu.peak_flops_for("torch.bfloat16") == 3e14
    assert gpu.peak_flops_for("bf16") == 3e14
    assert gpu.peak_flops_for(torch.float32) == 2e13
    assert gpu.peak_flops_for(torch.float16) == 2e13  # not listed -> float32 rate
    assert gpu.peak_flops_for(torch.int64) == 2e13
    assert gpu.peak_flops_for(torch.int8) == 2e13
    with pytest.raises(TypeError, match="torch.dtype or a dtype name"):
        gpu.peak_flops_for(3)  # type: ignore[arg-type]


def test_device_lookup_errors_list_known():
    t = Topology.from_dict(_valid())
    assert t.device("cuda:0").kind == "cuda"
    assert t.device_names == ["cpu", "cuda:0"]
    with pytest.raises(ValueError, match=r"unknown device 'cuda:1' .*known devices: cpu, cuda:0"):
        t.device("cuda:1")
    with pytest.raises(ValueError, match=r"unknown device 'cuda:1'"):
        t.link("cpu", "cuda:1")


def test_device_and_topology_are_hashable_and_comparable():
    a, b = Topology.from_dict(_valid()), Topology.from_dict(_valid())
    assert a == b and hash(a) == hash(b)
    assert len({a.device("cpu"), b.device("cpu")}) == 1
    c = Topology.from_dict(_mutate(lambda d: d["devices"][0].update(memory_bytes=9)))
    assert c != a


# --------------------------------------------------------------------------- routing


def test_link_direct_returns_described_link():
    t = Topology.preset("4xa100-pcie-cpu")
    lk = t.link("cpu", "cuda:2")
    assert lk is t.links[[(x.src, x.dst) for x in t.links].index(("cpu", "cuda:2"))]
    assert lk.kind == "pcie" and t.route("cpu", "cuda:2") == ("cpu", "cuda:2")


def test_link_via_host_cpu_sums_latency_and_takes_min_bandwidth():
    t = Topology.preset("hetero-a100-t4-cpu")
    up, down = t.link("cuda:0", "cpu"), t.link("cpu", "cuda:1")
    assert up.bandwidth_Bps != down.bandwidth_Bps  # heterogeneous PCIe generations
    lk = t.link("cuda:0", "cuda:1")
    assert lk.kind == "host"
    assert lk.latency_s == pytest.approx(up.latency_s + down.latency_s)
    assert lk.bandwidth_Bps == min(up.bandwidth_Bps, down.bandwidth_Bps)
    assert t.route("cuda:0", "cuda:1") == ("cuda:0", "cpu", "cuda:1")
    assert "cuda:0 -> cpu -> cuda:1" in lk.source
    assert t.link("cuda:0", "cuda:1") is lk  # cached


def test_loopback():
    t = Topology.preset("1x4090-cpu")
    lk = t.link("cuda:0", "cuda:0")
    assert lk.kind == "loopback" and lk.bandwidth_Bps == math.inf and lk.latency_s == 0
    assert t.transfer_time_s("cuda:0", "cuda:0", 10**12) == 0
    assert t.route("cpu", "cpu") == ("cpu",)


def test_link_across_hosts():
    t = Topology.preset("2x8xh100-ib")
    same_index = t.link("node0/cuda:3", "node1/cuda:3")
    assert same_index.kind == "network" and same_index.bandwidth_Bps == pytest.approx(50e9)
    lk = t.link("node0/cuda:0", "node1/cuda:3")
    assert lk.kind == "network"
    assert lk.bandwidth_Bps == pytest.approx(50e9)  # InfiniBand is the bottleneck
    assert lk.latency_s == pytest.approx(5e-6 + 2e-6)  # one NVLink hop + one network hop
    route = t.route("node0/cuda:0", "node1/cuda:3")
    assert len(route) == 3 and route[0] == "node0/cuda:0" and route[-1] == "node1/cuda:3"
    cpus = t.route("node0/cpu", "node1/cpu")
    assert cpus[0] == "node0/cpu" and cpus[-1] == "node1/cpu"
    assert t.link("node0/cpu", "node1/cpu").bandwidth_Bps == pytest.approx(50e9)
    # inside one host, routes never leave the host
    assert t.link("node1/cuda:0", "node1/cuda:5").kind == "nvlink"


def test_no_route_raises():
    t = Topology.preset("4xa100-pcie-cpu").subset(["cuda:0", "cuda:1"])
    assert t.device_names == ["cuda:0", "cuda:1"] and t.links == ()
    with pytest.raises(ValueError, match=r"no route from 'cuda:0' to 'cuda:1'.*'cpu' device"):
        t.link("cuda:0", "cuda:1")
    ib = Topology.preset("2x8xh100-ib")
    no_net = Topology(ib.name, ib.devices, tuple(lk for lk in ib.links if lk.kind != "network"))
    with pytest.raises(ValueError, match=r"no route from 'node0/cuda:0' to 'node1/cuda:0'.*'network' link"):
        no_net.link("node0/cuda:0", "node1/cuda:0")


def test_route_does_not_pass_through_another_gpu_inside_a_host():
    dev = lambda n, k="cuda": Device(name=n, kind=k, memory_bytes=1, peak_flops={"float32": 1.0},  # noqa: E731
                                     mem_bandwidth_Bps=1.0, launch_overhead_s=0.0)
    links = (
        Link(src="cuda:0", dst="cuda:1", bandwidth_Bps=1e11, latency_s=0.0, kind="nvlink"),
        Link(src="cuda:1", dst="cuda:2", bandwidth_Bps=1e11, latency_s=0.0, kind="nvlink"),
    )
    t = Topology("chain", (dev("cuda:0"), dev("cuda:1"), dev("cuda:2")), links)
    with pytest.raises(ValueError, match="no route"):
        t.link("cuda:0", "cuda:2")


def test_route_prefers_the_faster_of_two_cpu_paths():
    dev = lambda n, k: Device(name=n, kind=k, memory_bytes=1, peak_flops={"float32": 1.0},  # noqa: E731
                              mem_bandwidth_Bps=1.0, launch_overhead_s=0.0)

    def duplex(a, b, bw):
        return [Link(src=a, dst=b, bandwidth_Bps=bw, latency_s=1e-5, kind="pcie"),
                Link(src=b, dst=a, bandwidth_Bps=bw, latency_s=1e-5, kind="pcie")]

    links = duplex("cpu:0", "cuda:0", 10e9) + duplex("cpu:0", "cuda:1", 10e9)
    links += duplex("cpu:1", "cuda:0", 40e9) + duplex("cpu:1", "cuda:1", 30e9)
    t = Topology("two-sockets", tuple(dev(n, k) for n, k in
                                      [("cpu:0", "cpu"), ("cpu:1", "cpu"), ("cuda:0", "cuda"), ("cuda:1", "cuda")]),
                 tuple(links))
    assert t.route("cuda:0", "cuda:1") == ("cuda:0", "cpu:1", "cuda:1")
    assert t.link("cuda:0", "cuda:1").bandwidth_Bps == 30e9


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(1e9, 1e12), st.floats(0, 1e-4)), min_size=2, max_size=5),
    st.data(),
)
def test_single_host_routes_are_direct_or_via_cpu(host_links, data):
    """Random star topologies (cpu hub, k GPUs) with random direct GPU pairs: every pair's
    link is the direct one if described, else the two-hop route through the cpu."""
    k = len(host_links)
    gpus = [f"cuda:{i}" for i in range(k)]
    devices = [Device(name="cpu", kind="cpu", memory_bytes=1, peak_flops={"float32": 1.0},
                      mem_bandwidth_Bps=1.0, launch_overhead_s=0.0)]
    devices += [Device(name=g, kind="cuda", memory_bytes=1, peak_flops={"float32": 1.0},
                       mem_bandwidth_Bps=1.0, launch_overhead_s=0.0) for g in gpus]
    links = []
    for g, (bw, lat) in zip(gpus, host_links):
        links += [Link(src="cpu", dst=g, bandwidth_Bps=bw, latency_s=lat, kind="pcie"),
                  Link(src=g, dst="cpu", bandwidth_Bps=bw, latency_s=lat, kind="pcie")]
    pairs = [(a, b) for a in gpus for b in gpus if a != b]
    direct = data.draw(st.sets(st.sampled_from(pairs)))
    for a, b in sorted(direct):
        links.append(Link(src=a, dst=b, bandwidth_Bps=5e11, latency_s=1e-6, kind="nvlink"))
    t = Topology("star", tuple(devices), tuple(links))
    for a, b in pairs:
        lk = t.link(a, b)
        if (a, b) in direct:
            assert lk.kind == "nvlink" and lk.bandwidth_Bps == 5e11
        else:
            up, down = t.link(a, "cpu"), t.link("cpu", b)
            assert lk.kind == "host"
            assert lk.bandwidth_Bps == min(up.bandwidth_Bps, down.bandwidth_Bps)
            assert lk.latency_s == pytest.approx(up.latency_s + down.latency_s)


# --------------------------------------------------------------------------- alpha-beta


def test_transfer_time_is_alpha_beta():
    lk = Link(src="a", dst="b", bandwidth_Bps=25e9, latency_s=1e-5, kind="pcie")
    assert lk.transfer_time_s(0) == 1e-5
    assert lk.transfer_time_s(25 * 10**9) == pytest.approx(1 + 1e-5)
    t = Topology.preset("hetero-a100-t4-cpu")
    via = t.link("cuda:1", "cuda:0")
    assert t.transfer_time_s("cuda:1", "cuda:0", 10**8) == pytest.approx(via.latency_s + 10**8 / via.bandwidth_Bps)
    with pytest.raises(ValueError, match=r"nbytes must be a number >= 0 \(bytes\), got -1"):
        lk.transfer_time_s(-1)


@settings(max_examples=100, deadline=None)
@given(
    bw=st.floats(1.0, 1e13, allow_nan=False),
    lat=st.floats(0.0, 1.0, allow_nan=False),
    n1=st.integers(0, 2**50),
    n2=st.integers(0, 2**50),
)
def test_transfer_time_monotone_in_bytes(bw, lat, n1, n2):
    lk = Link(src="a", dst="b", bandwidth_Bps=bw, latency_s=lat, kind="network")
    lo, hi = sorted((n1, n2))
    assert lk.transfer_time_s(lo) <= lk.transfer_time_s(hi)
    assert lk.transfer_time_s(lo) == pytest.approx(lat + lo / bw)


# --------------------------------------------------------------------------- subset / table


def test_subset_keeps_devices_and_links_among_them():
    t = Topology.preset("8xh100-nvlink")
    s = t.subset(["cuda:1", "cpu", "cuda:0"])
    assert s.device_names == ["cpu", "cuda:0", "cuda:1"]
    assert {(lk.src, lk.dst) for lk in s.links} == {
        (a, b) for a in s.device_names for b in s.device_names if a != b
    }
    with pytest.raises(ValueError, match=r"unknown device 'cuda:8'"):
        t.subset(["cuda:8"])
    with pytest.raises(ValueError, match="at least one device"):
        t.subset([])


def test_table_lists_devices_and_links():
    text = Topology.preset("hetero-a100-t4-cpu").table()
    for word in ("cuda:0", "cuda:1", "Tesla T4", "float32=19.5", "bfloat16=312", "1555.0", "40.0", "12.5", "10.00"):
        assert word in text, word
    assert "no links" in Topology.from_dict({**_valid(), "links": []}).table()


# --------------------------------------------------------------------------- save


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path):
    t = Topology.preset("1x4090-cpu")
    path = tmp_path / "topo.json"
    path.write_text("old contents")
    t.save(path)
    assert os.listdir(tmp_path) == ["topo.json"]
    data = json.loads(path.read_text())
    assert data["name"] == "1x4090-cpu" and data["schema_version"] == 1
    assert path.read_text().startswith('{\n  "')  # indent 2


def test_save_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "topo.json"
    path.write_text("old contents")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(topo_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        Topology.preset("1x4090-cpu").save(path)
    assert os.listdir(tmp_path) == ["topo.json"]
    assert path.read_text() == "old contents"


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Topology.preset("1x4090-cpu").save(tmp_path / "no" / "topo.json")


# --------------------------------------------------------------------------- discovery


def test_discover_on_this_machine():
    t = Topology.discover()
    cpu = t.device("cpu")
    assert cpu.kind == "cpu" and cpu.memory_bytes > 0
    assert cpu.peak_flops["float32"] > 0 and cpu.mem_bandwidth_Bps > 0
    assert cpu.launch_overhead_s == 5e-6
    assert "nominal" in cpu.source
    assert Topology.from_dict(t.to_dict()) == t
    if not torch.cuda.is_available():
        assert t.device_names == ["cpu"] and t.links == ()
        assert local_devices() == ["cpu"]


def test_discover_without_nvml_does_not_raise(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    t = Topology.discover()
    assert t.device_names[0] == "cpu"


def test_discover_cpu_fallbacks(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "cpu_freq", lambda: None)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setattr(topo_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cpu = topo_mod._discover_cpu()
    assert cpu.peak_flops["float32"] == pytest.approx(4 * 2.5e9 * 32)
    assert cpu.mem_bandwidth_Bps == pytest.approx(40e9)


def _fake_props(name, total_memory, major, minor, sms, **extra):
    return types.SimpleNamespace(name=name, total_memory=total_memory, major=major, minor=minor,
                                 multi_processor_count=sms, uuid=f"uuid-{name}", **extra)


@pytest.fixture
def fake_cuda(monkeypatch):
    props = [
        _fake_props("NVIDIA H100 80GB HBM3", 85 * 10**9, 9, 0, 132),
        _fake_props("NVIDIA Future GPU", 48 * 2**30, 10, 0, 100,
                    clock_rate=2_000_000, memory_clock_rate=1_000_000, memory_bus_width=4096),
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    return props


def test_discover_fake_cuda_without_nvml(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    t = Topology.discover()
    assert t.device_names == ["cpu", "cuda:0", "cuda:1"]
    h100 = t.device("cuda:0")
    assert h100.memory_bytes == 85 * 10**9
    assert h100.peak_flops_for(torch.bfloat16) == pytest.approx(989e12)
    assert h100.max_power_W == 700
    unknown = t.device("cuda:1")
    assert unknown.peak_flops["float32"] == pytest.approx(100 * 128 * 2 * 2e9)
    assert unknown.peak_flops["bfloat16"] == pytest.approx(4 * 100 * 128 * 2 * 2e9)
    assert unknown.mem_bandwidth_Bps == pytest.approx(2 * 1e9 * 4096 / 8)
    assert {(lk.src, lk.dst, lk.kind) for lk in t.links} == {
        ("cpu", "cuda:0", "pcie"), ("cuda:0", "cpu", "pcie"),
        ("cpu", "cuda:1", "pcie"), ("cuda:1", "cpu", "pcie"),
    }
    assert t.link("cuda:0", "cuda:1").kind == "host"  # no NVML -> no NVLink, routed via cpu
    assert local_devices() == ["cpu", "cuda:0", "cuda:1"]


class _NVMLError(Exception):
    pass


def _fake_pynvml(*, fail_everything=False):
    m = types.ModuleType("pynvml")
    m.NVMLError = _NVMLError
    m.NVML_P2P_CAPS_INDEX_NVLINK = 3
    m.NVML_P2P_STATUS_OK = 0
    m.NVML_NVLINK_MAX_LINKS = 18
    m.NVML_FEATURE_ENABLED = 1

    def fail(*a):
        raise _NVMLError("NVML_ERROR_UNKNOWN")

    if fail_everything:
        for fn in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetHandleByIndex"):
            setattr(m, fn, fail)
        return m
    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetHandleByUUID = fail  # exercises the index fallback
    m.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 500_000  # milliwatts
    m.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: 5
    m.nvmlDeviceGetMaxPcieLinkWidth = lambda h: 16
    m.nvmlDeviceGetP2PStatus = lambda a, b, cap: 0
    m.nvmlDeviceGetNvLinkState = lambda h, link: 1 if link < 4 else 0
    return m


def test_discover_fake_cuda_with_failing_nvml(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_everything=True))
    t = Topology.discover()
    assert len(t.devices) == 3
    assert t.device("cuda:0").max_power_W == 700  # datasheet, NVML failed


def test_discover_fake_cuda_with_nvml(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    t = Topology.discover()
    assert t.device("cuda:0").max_power_W == 500.0
    assert t.link("cpu", "cuda:0").bandwidth_Bps == pytest.approx(50e9)  # Gen5 x16 effective
    nv = t.link("cuda:0", "cuda:1")
    assert nv.kind == "nvlink" and nv.bandwidth_Bps == pytest.approx(450e9)  # H100 table value
    assert t.link("cuda:1", "cuda:0").bandwidth_Bps == pytest.approx(4 * 25e9)  # 4 active links


@pytest.mark.parametrize(
    "torch_name,model",
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
        ("NVIDIA H200", "NVIDIA H200"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"),
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100-PCIE-40GB"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA A100 80GB PCIe"),
        ("NVIDIA L4", "NVIDIA L4"),
        ("NVIDIA L40S", "NVIDIA L40S"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
        ("Tesla V100-SXM2-32GB", "Tesla V100-SXM2-32GB"),
        ("Tesla V100-PCIE-16GB", "Tesla V100-PCIE-16GB"),
        ("Tesla T4", "Tesla T4"),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_gpu_datasheet_table_matches_torch_names(torch_name, model):
    spec = topo_mod._gpu_spec(torch_name)
    assert (spec.model if spec else None) == model
    if spec is not None:
        assert "float32" in spec.peak_flops and spec.mem_bandwidth_Bps > 0 and spec.source
