"""Tests for autopart.topology: schema validation, presets, routing, alpha-beta cost,
discovery without CUDA/NVML (and with a faked CUDA/NVML), atomic save."""

from __future__ import annotations

import copy
import dataclasses
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
from autopart.topology import Device, Link, Mesh, Topology, local_devices, presets

try:  # DeviceMesh's own rank layout (torch >= 2.9), to check Mesh.axis_groups against
    from torch.distributed._mesh_layout import _FlatLayout, _MeshLayout
except ImportError:
    _FlatLayout = _MeshLayout = None

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


# --------------------------------------------------------------------------- hosts


def test_host_queries_on_two_host_preset():
    t = Topology.preset("2x8xh100-ib")
    assert t.host_of("node1/cuda:3") == "node1"
    assert t.devices_on("node0") == ["node0/cpu"] + [f"node0/cuda:{i}" for i in range(8)]
    assert t.devices_on("node1", kind="cuda") == [f"node1/cuda:{i}" for i in range(8)]
    assert t.devices_on("node1", kind="cpu") == ["node1/cpu"]
    assert t.same_host("node0/cuda:0", "node0/cpu")
    assert not t.same_host("node0/cuda:0", "node1/cuda:0")
    with pytest.raises(ValueError, match=r"unknown host 'node2' .*hosts: node0, node1"):
        t.devices_on("node2")
    with pytest.raises(ValueError, match=r"devices_on: kind: expected one of 'cpu', 'cuda'.*got 'gpu'"):
        t.devices_on("node0", kind="gpu")
    with pytest.raises(ValueError, match=r"unknown device 'node0/cuda:8'"):
        t.host_of("node0/cuda:8")
    with pytest.raises(ValueError, match=r"unknown device 'x'"):
        t.same_host("x", "node0/cpu")


def test_hops_and_bottleneck_tell_what_limits_a_pair():
    t = Topology.preset("2x8xh100-ib")
    # across hosts, different GPU index: one NVLink hop then the InfiniBand rail (or vice versa)
    hops = t.hops("node0/cuda:0", "node1/cuda:3")
    assert [h.kind for h in hops].count("network") == 1 and len(hops) == 2
    assert hops[0].src == "node0/cuda:0" and hops[-1].dst == "node1/cuda:3"
    assert all(a.dst == b.src for a, b in zip(hops, hops[1:]))
    worst = t.bottleneck("node0/cuda:0", "node1/cuda:3")
    assert worst.kind == "network" and worst.bandwidth_Bps == pytest.approx(50e9)
    assert worst.bandwidth_Bps == t.link("node0/cuda:0", "node1/cuda:3").bandwidth_Bps
    # inside a host the slowest hop is NVLink; a direct link is its own only hop
    assert t.hops("node1/cuda:0", "node1/cuda:5") == (t.link("node1/cuda:0", "node1/cuda:5"),)
    assert t.bottleneck("node1/cuda:0", "node1/cuda:5").kind == "nvlink"
    # loopback: no hops, the bottleneck is the loopback link
    assert t.hops("node0/cpu", "node0/cpu") == ()
    assert t.bottleneck("node0/cpu", "node0/cpu").kind == "loopback"
    # routed through the host cpu on a PCIe-only machine
    p = Topology.preset("4xa100-pcie-cpu")
    assert [(h.src, h.dst) for h in p.hops("cuda:0", "cuda:1")] == [("cuda:0", "cpu"), ("cpu", "cuda:1")]
    assert p.bottleneck("cuda:0", "cuda:1").kind == "pcie" and p.same_host("cuda:0", "cuda:1")


# --------------------------------------------------------------------------- meshes


def test_preset_meshes():
    t = Topology.preset("2x8xh100-ib")
    m = t.mesh("gpus")
    assert t.meshes == (m,)
    assert m.axis_names == ("dp", "tp") and m.shape == (2, 8) and m.ndim == 2
    assert m.axis_size("tp") == 8 and m.axis_size(0) == 2 and m.axis_size(-1) == 8
    assert m.axis_groups("tp") == [t.devices_on("node0", kind="cuda"), t.devices_on("node1", kind="cuda")]
    assert m.axis_groups("dp") == [[f"node0/cuda:{i}", f"node1/cuda:{i}"] for i in range(8)]
    assert all(not t.same_host(*g) for g in m.axis_groups("dp"))
    assert all(t.same_host(g[0], d) for g in m.axis_groups("tp") for d in g)
    assert m.coordinate("node1/cuda:5") == (1, 5)
    one = Topology.preset("8xh100-nvlink").mesh("gpus")
    assert one.axis_names == ("tp",) and one.shape == (8,)
    assert one.axis_groups("tp") == [[f"cuda:{i}" for i in range(8)]]
    assert Topology.preset("1x4090-cpu").meshes == ()


def test_mesh_lookup_and_axis_errors():
    t = Topology.preset("2x8xh100-ib")
    m = t.mesh("gpus")
    with pytest.raises(ValueError, match=r"unknown mesh 'dp' .*meshes: gpus"):
        t.mesh("dp")
    with pytest.raises(ValueError, match=r"unknown mesh 'gpus' .*meshes: none"):
        Topology.preset("1x4090-cpu").mesh("gpus")
    with pytest.raises(ValueError, match=r"mesh 'gpus' has no axis 'pp'; its axes are \['dp', 'tp'\]"):
        m.axis_groups("pp")
    with pytest.raises(ValueError, match=r"has no axis 2;"):
        m.axis_size(2)
    with pytest.raises(ValueError, match=r"device 'node0/cpu' is not in mesh 'gpus'"):
        m.coordinate("node0/cpu")


def test_mesh_constructor_normalises_and_hashes():
    m = Mesh(name="m", axis_names=["a", "b"], devices=[["x", "y", "z"], ["u", "v", "w"]])
    assert m.axis_names == ("a", "b") and m.devices == (("x", "y", "z"), ("u", "v", "w"))
    assert m.shape == (2, 3) and m.device_names == ["x", "y", "z", "u", "v", "w"]
    assert hash(m) == hash(Mesh(name="m", axis_names=("a", "b"), devices=(("x", "y", "z"), ("u", "v", "w"))))
    assert m.to_dict() == {"name": "m", "axis_names": ["a", "b"], "devices": [["x", "y", "z"], ["u", "v", "w"]]}
    with pytest.raises(ValueError, match=r"Mesh\(name='m'\)\.devices\[1\]: the mesh is not rectangular"):
        Mesh(name="m", axis_names=("a", "b"), devices=(("x", "y"), ("z",)))


def _gpu_topology(n=4):
    d = _valid()
    d["devices"] = [_device()] + [_device(f"cuda:{i}", "cuda") for i in range(n)]
    d["links"] = [_link("cpu", f"cuda:{i}") for i in range(n)]
    d["meshes"] = [{"name": "gpus", "axis_names": ["dp", "tp"], "devices": [["cuda:0", "cuda:1"], ["cuda:2", "cuda:3"]]}]
    return d


def _mesh_mutate(fn):
    d = _gpu_topology()
    fn(d)
    return d


def _m0(d):
    return d["meshes"][0]


BAD_MESHES = [
    (lambda d: _m0(d).update(devices=[["cuda:0", "cuda:1"], ["cuda:2", "cuda:9"]]),
     r"topology\.meshes\[0\]\.devices: unknown device 'cuda:9'; known devices: cpu, cuda:0"),
    (lambda d: _m0(d).update(devices=[["cuda:0", "cuda:1"], ["cuda:2"]]),
     r"topology\.meshes\[0\]\.devices\[1\]: the mesh is not rectangular: this entry has shape \(1,\), "
     r"topology\.meshes\[0\]\.devices\[0\] has shape \(2,\)"),
    (lambda d: _m0(d).update(devices=["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
     r"topology\.meshes\[0\]\.devices\[0\]: expected a non-empty list: devices nests one list level "
     r"per axis \(2 axes in axis_names, so 2 levels\), got 'cuda:0'"),
    (lambda d: _m0(d).update(axis_names=["tp"]),
     r"topology\.meshes\[0\]\.devices\[0\]: expected a device name \(string\): devices nests deeper "
     r"than the 1 axes in axis_names"),
    (lambda d: _m0(d).update(devices=[["cuda:0", "cuda:1"], ["cuda:2", "cuda:0"]]),
     r"topology\.meshes\[0\]\.devices: device 'cuda:0' appears twice in mesh 'gpus'"),
    (lambda d: d["meshes"].append(dict(_m0(d), devices=[["cuda:3"]])),
     r"topology\.meshes\[1\]\.name: mesh 'gpus' is named twice"),
    (lambda d: _m0(d).update(axis_names=["dp", "dp"]),
     r"topology\.meshes\[0\]\.axis_names\[1\]: axis 'dp' is named twice"),
    (lambda d: _m0(d).update(axis_names=[]), r"topology\.meshes\[0\]\.axis_names: expected a non-empty list"),
    (lambda d: _m0(d).update(axis_names=["dp", ""]), r"topology\.meshes\[0\]\.axis_names\[1\]: expected a non-empty string"),
    (lambda d: _m0(d).update(axis_names="dp"), r"topology\.meshes\[0\]\.axis_names: expected a non-empty list.*got 'dp'"),
    (lambda d: _m0(d).update(devices=[]), r"topology\.meshes\[0\]\.devices: expected a non-empty list"),
    (lambda d: _m0(d).update(devices=[[], []]), r"topology\.meshes\[0\]\.devices\[0\]: expected a non-empty list"),
    (lambda d: _m0(d).update(devices=[["cuda:0", 3], ["cuda:2", "cuda:3"]]),
     r"topology\.meshes\[0\]\.devices\[0\]\[1\]: expected a non-empty string, got 3"),
    (lambda d: _m0(d).update(devices=[["cpu", "cuda:1"], ["cuda:2", "cuda:3"]]),
     r"topology\.meshes\[0\]\.devices: mesh 'gpus' mixes device kinds \['cpu', 'cuda'\]"),
    (lambda d: _m0(d).update(name=""), r"topology\.meshes\[0\]\.name: expected a non-empty string"),
    (lambda d: _m0(d).pop("axis_names"), r"topology\.meshes\[0\]\.axis_names: missing"),
    (lambda d: _m0(d).update(shape=[2, 2]), r"topology\.meshes\[0\]: unknown key 'shape'; allowed keys: name, axis_names, devices"),
    (lambda d: d.update(meshes={"gpus": []}), r"topology\.meshes: expected a list of mesh objects"),
    (lambda d: d["meshes"].append("gpus"), r"topology\.meshes\[1\]: expected an object"),
]


@pytest.mark.parametrize("mutation,pattern", BAD_MESHES, ids=[p[:60] for _, p in BAD_MESHES])
def test_from_dict_rejects_bad_mesh(mutation, pattern):
    with pytest.raises(ValueError, match=pattern):
        Topology.from_dict(_mesh_mutate(mutation), source="bad.json")


def test_topology_constructor_checks_meshes():
    t = Topology.from_dict(_gpu_topology())
    bad = Mesh(name="m", axis_names=("x",), devices=("cuda:0", "cuda:7"))
    with pytest.raises(ValueError, match=r"Topology\(name='tiny'\)\.meshes\[1\]\.devices: unknown device 'cuda:7'"):
        dataclasses.replace(t, meshes=(*t.meshes, bad))
    with pytest.raises(TypeError, match=r"meshes\[0\]: expected a Mesh"):
        dataclasses.replace(t, meshes=({"name": "m"},))


def test_meshes_roundtrip_and_subset(tmp_path):
    t = Topology.from_dict(_gpu_topology())
    assert t.mesh("gpus").shape == (2, 2)
    d = t.to_dict()
    assert d["meshes"] == [{"name": "gpus", "axis_names": ["dp", "tp"],
                            "devices": [["cuda:0", "cuda:1"], ["cuda:2", "cuda:3"]]}]
    assert Topology.from_dict(json.loads(json.dumps(d))) == t
    t.save(tmp_path / "t.json")
    assert Topology.load(tmp_path / "t.json").meshes == t.meshes
    assert t.subset(["cpu", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]).meshes == t.meshes
    assert t.subset(["cuda:0", "cuda:1"]).meshes == ()  # a mesh loses a device -> dropped
    without = Topology.from_dict({k: v for k, v in _gpu_topology().items() if k != "meshes"})
    assert without.meshes == () and without != t


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.data())
def test_mesh_axis_groups_partition_the_devices(shape, data):
    n = math.prod(shape)
    names = [f"d{i}" for i in range(n)]

    def nest(flat, dims):
        if not dims:
            return flat[0]
        step = len(flat) // dims[0]
        return [nest(flat[i * step:(i + 1) * step], dims[1:]) for i in range(dims[0])]

    axes = [f"a{i}" for i in range(len(shape))]
    m = Mesh(name="m", axis_names=axes, devices=nest(names, shape))
    assert m.shape == tuple(shape) and m.device_names == names
    axis = data.draw(st.sampled_from(axes))
    k = axes.index(axis)
    groups = m.axis_groups(axis)
    assert len(groups) == n // shape[k] and all(len(g) == shape[k] for g in groups)
    assert sorted(d for g in groups for d in g) == sorted(names)  # a partition
    for g in groups:
        coords = [m.coordinate(d) for d in g]
        # along the axis: the axis coordinate runs 0..size-1, all others fixed
        assert [c[k] for c in coords] == list(range(shape[k]))
        assert len({c[:k] + c[k + 1:] for c in coords}) == 1
    # DeviceMesh order: groups sorted by their other coordinates, row-major
    others = [m.coordinate(g[0])[:k] + m.coordinate(g[0])[k + 1:] for g in groups]
    assert others == sorted(others)
    if _MeshLayout is not None:  # the very groups DeviceMesh forms (private API, may move)
        stride = [math.prod(shape[j + 1:]) for j in range(len(shape))]
        sub = _FlatLayout((shape[k],), (stride[k],))
        ranks = _MeshLayout([sub]).remap_to_tensor(torch.arange(n)).reshape(-1, shape[k])
        assert groups == [[names[r] for r in row] for row in ranks.tolist()]
    # coordinate is the inverse of row-major flattening
    assert all(names[int(sum(c * math.prod(shape[j + 1:]) for j, c in enumerate(m.coordinate(d))))] == d
               for d in names)


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
    assert "hosts: localhost (1 cpu, 1 cuda)" in Topology.from_dict(_valid()).table()


def test_table_shows_hosts_and_meshes():
    text = Topology.preset("2x8xh100-ib").table()
    assert "hosts: node0 (1 cpu, 8 cuda); node1 (1 cpu, 8 cuda)" in text
    assert "mesh 'gpus': dp=2 x tp=8 (16 devices: node0/cuda:0 .. node1/cuda:7)" in text
    assert "discovered on" not in text and "notes:" not in text  # a preset has no report


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


def test_discover_without_nvml_module_notes_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    t = Topology.discover()
    assert t.device_names[0] == "cpu"
    assert any(n.startswith("NVML not installed") and "pip install nvidia-ml-py" in n
               for n in t.notes), t.notes


def test_discover_cpu_only_notes_what_it_skipped(monkeypatch):
    """This machine's case, made certain: no CUDA, NVML library missing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([], init_error="NVML Shared Library Not Found").module())
    t = Topology.discover()
    assert t.device_names == ["cpu"] and t.links == ()
    assert any(n.startswith("no CUDA device: torch.cuda.is_available() is False") for n in t.notes)
    nvml = [n for n in t.notes if n.startswith("NVML not available")]
    assert len(nvml) == 1 and "NVML Shared Library Not Found" in nvml[0]
    assert "no GPU power, PCIe, NVLink" in nvml[0]
    r = t.discovery
    assert r.gpus == () and r.gpu_pairs == () and r.nvml_driver_version is None
    assert r.notes == t.notes
    text = t.table()
    assert "notes:" in text and "NVML not available" in text and "discovered on" in text


def test_discover_host_facts_on_this_machine():
    t = Topology.discover()
    h = t.discovery.host
    assert h.num_logical_cores >= 1 and 1 <= h.num_usable_cores
    assert h.num_physical_cores is None or 1 <= h.num_physical_cores <= h.num_logical_cores
    assert h.memory_bytes is not None and h.memory_bytes == t.device("cpu").memory_bytes
    assert h.cpu_model == t.device("cpu").model
    assert t.discovery.torch_version == str(torch.__version__)
    if os.path.isdir("/sys/devices/system/node/node0"):
        assert h.numa_nodes and h.numa_nodes[0].id == 0
    else:
        assert any(n.startswith("NUMA:") for n in t.notes)
    if not torch.cuda.is_available():
        assert any(n.startswith("no CUDA device") for n in t.notes)
        assert any("NVML" in n for n in t.notes) or t.discovery.nvml_driver_version


def test_discover_reads_numa_nodes(monkeypatch, tmp_path):
    for i, (cpus, kb) in enumerate([("0-3,8-11\n", 16318048), ("4-7\n", 8000000), ("\n", 1024)]):
        node = tmp_path / f"node{i}"
        node.mkdir()
        (node / "cpulist").write_text(cpus)
        (node / "meminfo").write_text(f"Node {i} MemTotal:       {kb} kB\nNode {i} MemFree: 1 kB\n")
    (tmp_path / "node2" / "meminfo").unlink()  # unreadable meminfo -> memory unknown
    (tmp_path / "possible").write_text("0-2\n")  # not a node folder
    monkeypatch.setattr(topo_mod, "NUMA_SYSFS_DIR", tmp_path)
    notes = []
    nodes = topo_mod._numa_nodes(notes)
    assert [n.id for n in nodes] == [0, 1, 2]
    assert nodes[0].cpus == (0, 1, 2, 3, 8, 9, 10, 11) and nodes[0].memory_bytes == 16318048 * 1024
    assert nodes[1].cpus == (4, 5, 6, 7)
    assert nodes[2].cpus == () and nodes[2].memory_bytes is None  # memory-only or unreadable
    assert notes == []


def test_discover_without_numa_folder_notes_it(monkeypatch, tmp_path):
    monkeypatch.setattr(topo_mod, "NUMA_SYSFS_DIR", tmp_path / "missing")
    t = Topology.discover()
    assert t.discovery.host.numa_nodes == ()
    assert any(n.startswith("NUMA:") and "missing" in n and "not visible" in n for n in t.notes)


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 300), max_size=40))
def test_cpulist_format_and_parse_roundtrip(cpus):
    text = topo_mod._format_cpulist(tuple(cpus))
    assert topo_mod._parse_cpulist("" if text == "-" else text) == tuple(sorted(cpus))


def test_discover_cpu_fallbacks(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "cpu_freq", lambda: None)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setattr(topo_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    notes = []
    cpu = topo_mod._discover_cpu("cpu", topo_mod._host_facts(notes))
    assert cpu.peak_flops["float32"] == pytest.approx(4 * 2.5e9 * 32)
    assert cpu.mem_bandwidth_Bps == pytest.approx(40e9)
    assert any(n.startswith("CPU clock unknown") and "2.5 GHz" in n for n in notes)


def test_a_cpu_gets_its_power_limit_from_rapl(tmp_path, monkeypatch):
    """Two packages of 125 W and 105 W (RAPL PL1, microwatts); a package's sub-zone and an
    unreadable zone do not count."""
    for zone, microwatts in (("intel-rapl:0", "125000000"), ("intel-rapl:1", "105000000"),
                             ("intel-rapl:0:0", "999000000"), ("intel-rapl:2", "n/a")):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "constraint_0_power_limit_uw").write_text(microwatts + "\n")
    assert topo_mod._rapl_power_limit_W(tmp_path) == pytest.approx(230.0)
    assert topo_mod._rapl_power_limit_W(tmp_path / "missing") is None
    real = topo_mod._rapl_power_limit_W
    monkeypatch.setattr(topo_mod, "_rapl_power_limit_W", lambda: real(tmp_path))
    cpu = topo_mod._discover_cpu("cpu", topo_mod._host_facts([]))
    assert cpu.max_power_W == pytest.approx(230.0) and cpu.idle_power_W is None


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
    gpus = t.discovery.gpus
    assert [(g.device, g.name, g.num_sms, g.compute_capability) for g in gpus] == [
        ("cuda:0", "NVIDIA H100 80GB HBM3", 132, (9, 0)),
        ("cuda:1", "NVIDIA Future GPU", 100, (10, 0)),
    ]
    assert gpus[1].memory_bytes == 48 * 2**30
    assert all(g.power_limit_W is None and g.pcie_max_generation is None and g.nvlinks == ()
               for g in gpus)
    assert t.discovery.gpu_pairs == ()
    assert any(n.startswith("NVML not installed") for n in t.notes)


class _NVMLError(Exception):
    pass


class _FakeNvml:
    """A stand-in for the ``pynvml`` module: GPUs described by dicts, any call made to fail.

    Each GPU: ``bus`` (NVML form), ``links``: list of (state, version, remote bus, remote type)
    per link index (NVML rejects indices past the list), ``power_mw``, ``limit_mw``, PCIe
    ``cur``/``max`` (generation, width). ``levels``: {(i, j): NVML topology level}.
    """

    GPU, SWITCH = 0, 2

    def __init__(self, gpus, *, levels=None, fail=(), missing=(), init_error=None, p2p_ok=True):
        self.gpus, self.levels = gpus, levels or {}
        self.fail, self.missing, self.init_error, self.p2p_ok = set(fail), set(missing), init_error, p2p_ok
        self.calls = []

    def module(self):
        m = types.ModuleType("pynvml")
        m.NVMLError = _NVMLError
        m.NVML_P2P_CAPS_INDEX_NVLINK = 2
        m.NVML_P2P_STATUS_OK = 0
        m.NVML_NVLINK_MAX_LINKS = 36
        m.NVML_FEATURE_ENABLED = 1
        m.NVML_NVLINK_DEVICE_TYPE_GPU, m.NVML_NVLINK_DEVICE_TYPE_IBMNPU = 0, 1
        m.NVML_NVLINK_DEVICE_TYPE_SWITCH = 2
        g = self.gpus

        def link(h, i):
            if i >= len(g[h]["links"]):
                raise _NVMLError("Invalid Argument")
            return g[h]["links"][i]

        fns = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: "550.54.15",
            "nvmlDeviceGetCount": lambda: len(g),
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=g[h]["bus"]),
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: g[h].get("limit_mw", 500_000),
            "nvmlDeviceGetPowerUsage": lambda h: g[h].get("power_mw", 123_456),
            "nvmlDeviceGetCurrPcieLinkGeneration": lambda h: g[h].get("cur", (1, 16))[0],
            "nvmlDeviceGetCurrPcieLinkWidth": lambda h: g[h].get("cur", (1, 16))[1],
            "nvmlDeviceGetMaxPcieLinkGeneration": lambda h: g[h].get("max", (5, 16))[0],
            "nvmlDeviceGetMaxPcieLinkWidth": lambda h: g[h].get("max", (5, 16))[1],
            "nvmlDeviceGetNvLinkState": lambda h, i: link(h, i)[0],
            "nvmlDeviceGetNvLinkVersion": lambda h, i: link(h, i)[1],
            "nvmlDeviceGetNvLinkRemotePciInfo": lambda h, i: types.SimpleNamespace(busId=link(h, i)[2]),
            "nvmlDeviceGetNvLinkRemoteDeviceType": lambda h, i: link(h, i)[3],
            "nvmlDeviceGetTopologyCommonAncestor": lambda a, b: self.levels.get((min(a, b), max(a, b)), 50),
            "nvmlDeviceGetP2PStatus": lambda a, b, cap: 0 if self.p2p_ok and cap == 2 else 5,
        }

        def wrap(name, fn):
            def call(*args):
                self.calls.append(name)
                if name in self.fail:
                    raise _NVMLError("Not Supported")
                return fn(*args)
            return call

        for name, fn in fns.items():
            if name not in self.missing:
                setattr(m, name, wrap(name, fn))
        m.nvmlDeviceGetHandleByUUID = wrap("nvmlDeviceGetHandleByUUID", lambda u: (_ for _ in ()).throw(_NVMLError("Not Found")))
        if self.init_error is not None:
            m.nvmlInit = wrap("nvmlInit", lambda: (_ for _ in ()).throw(_NVMLError(self.init_error)))
        return m


BUS0, BUS1 = "00000000:07:00.0", "00000000:0A:00.0"


def _two_gpus_joined_by_nvlink(num_links=4, version=6):
    """GPU0 and GPU1 with ``num_links`` NVLink 4.0 links to each other, 2 inactive links each."""
    def links(peer):
        return [(1, version, peer, _FakeNvml.GPU)] * num_links + [(0, None, None, None)] * 2
    return [{"bus": BUS0, "links": links(BUS1)}, {"bus": BUS1, "links": links(BUS0), "max": (4, 8)}]


def test_discover_fake_nvml_two_gpus_joined_by_nvlink(monkeypatch, fake_cuda):
    nvml = _FakeNvml(_two_gpus_joined_by_nvlink(), levels={(0, 1): 10})
    monkeypatch.setitem(sys.modules, "pynvml", nvml.module())
    t = Topology.discover()
    assert t.device_names == ["cpu", "cuda:0", "cuda:1"]
    for a, b in (("cuda:0", "cuda:1"), ("cuda:1", "cuda:0")):
        nv = t.link(a, b)
        assert nv.kind == "nvlink" and t.route(a, b) == (a, b)
        assert nv.bandwidth_Bps == pytest.approx(4 * 25e9)  # 4 links x NVLink 4.0 per-link rate
        assert nv.latency_s == topo_mod.NVLINK_LATENCY_S
        assert "4 NVLink links" in nv.source and "H100 datasheet" in nv.source
    assert t.device("cuda:0").max_power_W == 500.0  # NVML enforced limit over the datasheet
    assert t.link("cpu", "cuda:0").bandwidth_Bps == pytest.approx(50e9)  # Gen5 x16 effective
    assert t.link("cuda:1", "cpu").bandwidth_Bps == pytest.approx(25e9 * 8 / 16)  # Gen4 x8
    r = t.discovery
    assert r.nvml_driver_version == "550.54.15"
    g0, g1 = r.gpus
    assert g0.pci_bus_id == "0000:07:00.0" and g1.pci_bus_id == "0000:0a:00.0"
    assert g0.power_limit_W == 500.0 and g0.power_draw_W == pytest.approx(123.456)
    assert (g0.pcie_generation, g0.pcie_width, g0.pcie_max_generation, g0.pcie_max_width) == (1, 16, 5, 16)
    assert [(lk.link, lk.active) for lk in g0.nvlinks] == [(i, i < 4) for i in range(6)]
    active = g0.nvlinks[0]
    assert (active.version, active.remote_pci_bus_id, active.remote_kind, active.peer) == (
        6, "0000:0a:00.0", "gpu", "cuda:1")
    (pair,) = r.gpu_pairs
    assert (pair.a, pair.b, pair.level, pair.level_name, pair.num_nvlinks, pair.nvswitch) == (
        "cuda:0", "cuda:1", 10, "PIX", 4, False)
    assert not [n for n in t.notes if n.startswith("NVML")], t.notes  # every call answered
    # the UUID lookup fails quietly and the index is used; NVML is shut down
    assert "nvmlDeviceGetHandleByIndex" in nvml.calls and nvml.calls[-1] == "nvmlShutdown"
    text = t.table()
    assert "NV4" in text and "Gen1x16/Gen5x16" in text and "123/500" in text


def test_discover_fake_nvml_nvswitch(monkeypatch, fake_cuda):
    switch = [(1, 6, f"00000000:{0xc0 + i:02X}:00.0", _FakeNvml.SWITCH) for i in range(4)]
    gpus = [{"bus": BUS0, "links": switch * 4 + switch[:2]}, {"bus": BUS1, "links": switch * 4 + switch[:2]}]
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(gpus).module())
    t = Topology.discover()
    nv = t.link("cuda:0", "cuda:1")
    assert nv.kind == "nvlink" and nv.bandwidth_Bps == pytest.approx(18 * 25e9)  # = H100's 450 GB/s
    assert "NVSwitch" in nv.source
    (pair,) = t.discovery.gpu_pairs
    assert pair.nvswitch and pair.num_nvlinks == 0 and pair.level_name == "SYS"
    assert {lk.remote_kind for lk in t.discovery.gpus[0].nvlinks} == {"switch"}


def test_discover_fake_nvml_without_nvlink_routes_via_host(monkeypatch, fake_cuda):
    gpus = [{"bus": BUS0, "links": []}, {"bus": BUS1, "links": []}]  # NvLinkState rejects link 0
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(gpus, levels={(0, 1): 30}).module())
    t = Topology.discover()
    assert t.link("cuda:0", "cuda:1").kind == "host"
    assert t.discovery.gpu_pairs[0].level_name == "PHB"
    assert any(n.startswith("NVML nvmlDeviceGetNvLinkState failed for cuda:0, cuda:1") for n in t.notes)


def test_discover_fake_nvml_raising_on_some_calls(monkeypatch, fake_cuda):
    fail = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTopologyCommonAncestor",
            "nvmlDeviceGetNvLinkRemotePciInfo", "nvmlDeviceGetMaxPcieLinkGeneration",
            "nvmlSystemGetDriverVersion"}
    nvml = _FakeNvml(_two_gpus_joined_by_nvlink(), fail=fail,
                     missing={"nvmlDeviceGetNvLinkRemoteDeviceType"})  # an older nvidia-ml-py
    monkeypatch.setitem(sys.modules, "pynvml", nvml.module())
    t = Topology.discover()
    assert t.device_names == ["cpu", "cuda:0", "cuda:1"]
    # far ends unknown -> NVML P2P status decides; 4 active links each
    nv = t.link("cuda:0", "cuda:1")
    assert nv.kind == "nvlink" and nv.bandwidth_Bps == pytest.approx(4 * 25e9)
    assert "P2P status" in nv.source
    # PCIe generation unread -> the datasheet host link (H100) or Gen4 x16 (unknown GPU)
    assert t.link("cpu", "cuda:0").bandwidth_Bps == pytest.approx(50e9)
    assert t.link("cpu", "cuda:1").bandwidth_Bps == pytest.approx(25e9)
    g0 = t.discovery.gpus[0]
    assert g0.power_draw_W is None and g0.power_limit_W == 500.0 and g0.pcie_max_generation is None
    assert g0.nvlinks[0].remote_kind == "unknown" and g0.nvlinks[0].peer is None
    assert t.discovery.gpu_pairs[0].level is None and t.discovery.nvml_driver_version is None
    for fn in fail | {"nvmlDeviceGetNvLinkRemoteDeviceType"}:
        assert any(n.startswith(f"NVML {fn} failed") for n in t.notes), (fn, t.notes)
    power = next(n for n in t.notes if n.startswith("NVML nvmlDeviceGetPowerUsage"))
    assert "cuda:0, cuda:1" in power and "Not Supported" in power and "power draw unknown" in power
    assert "AttributeError" in next(n for n in t.notes if "RemoteDeviceType" in n)


def test_discover_fake_nvml_failing_init(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([], init_error="Driver Not Loaded").module())
    t = Topology.discover()
    assert len(t.devices) == 3
    assert t.device("cuda:0").max_power_W == 700  # datasheet, NVML failed
    assert t.link("cuda:0", "cuda:1").kind == "host"
    assert any("nvmlInit failed" in n and "Driver Not Loaded" in n for n in t.notes)


def test_discover_fake_nvml_get_properties_raising(monkeypatch, fake_cuda):
    def boom(i):
        raise RuntimeError("CUDA error: unknown error")

    monkeypatch.setattr(torch.cuda, "get_device_properties", boom)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(_two_gpus_joined_by_nvlink()).module())
    t = Topology.discover()
    assert t.device_names == ["cpu"]
    assert any(n.startswith("CUDA discovery failed (RuntimeError: CUDA error") for n in t.notes)


def test_discover_notes_gpus_torch_cannot_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(_two_gpus_joined_by_nvlink()).module())
    t = Topology.discover()
    assert t.device_names == ["cpu"]
    assert any(n.startswith("NVML sees 2 GPU(s) that torch cannot use") for n in t.notes)


def test_discovered_topology_roundtrips_with_its_report(monkeypatch, fake_cuda, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(_two_gpus_joined_by_nvlink(), fail={"nvmlDeviceGetPowerUsage"}).module())
    t = Topology.discover()
    d = json.loads(json.dumps(t.to_dict()))
    assert d["discovery"]["gpus"][0]["compute_capability"] == [9, 0]
    again = Topology.from_dict(d)
    assert again == t and again.discovery == t.discovery and again.notes == t.notes
    t.save(tmp_path / "t.json")
    assert Topology.load(tmp_path / "t.json").discovery == t.discovery
    # the report is not part of equality: a topology without it equals one with it
    assert dataclasses.replace(t, discovery=None) == t


@pytest.mark.parametrize(
    "mutation,pattern",
    [
        (lambda r: r["gpus"][0].update(num_sms="many"), r"topology\.discovery\.gpus\[0\]\.num_sms: expected an integer, got 'many'"),
        (lambda r: r["gpus"][0].update(compute_capability=[9]), r"discovery\.gpus\[0\]\.compute_capability: expected a list of 2 items"),
        (lambda r: r["host"].update(cores=2), r"discovery\.host: unknown key 'cores'"),
        (lambda r: r.pop("host"), r"discovery\.host: missing"),
        (lambda r: r["gpus"][0]["nvlinks"][0].update(active="yes"), r"nvlinks\[0\]\.active: expected true or false"),
        (lambda r: r.update(notes="x"), r"discovery\.notes: expected a list, got 'x'"),
    ],
)
def test_from_dict_rejects_bad_discovery(monkeypatch, fake_cuda, mutation, pattern):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(_two_gpus_joined_by_nvlink()).module())
    d = Topology.discover().to_dict()
    mutation(d["discovery"])
    with pytest.raises(ValueError, match=pattern):
        Topology.from_dict(d)


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
