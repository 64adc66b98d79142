"""autopart.profiler: the alpha-beta fit, timing, and real (small-budget) profiles."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autopart import profiler
from autopart.profiler import (
    fit_alpha_beta,
    profile_device,
    profile_link,
    profile_topology,
)
from autopart.topology import Device, Link, Topology

SIZES = [4096 * 4**k for k in range(8)]  # 4 KiB .. 64 MiB, the link sweep
HAS_CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------- fit_alpha_beta


@settings(max_examples=200, deadline=None)
@given(
    latency_s=st.floats(1e-7, 1e-2),
    bandwidth_Bps=st.floats(1e7, 1e13),
    noise=st.floats(0.0, 0.02),
    seed=st.integers(0, 2**32 - 1),
)
def test_fit_recovers_known_latency_and_bandwidth(latency_s, bandwidth_Bps, noise, seed):
    n = np.array(SIZES, dtype=float)
    true = latency_s + n / bandwidth_Bps
    rng = np.random.default_rng(seed)
    times = true * (1 + rng.uniform(-noise, noise, size=n.size))
    try:
        a, bw, r2 = fit_alpha_beta(n, times)
    except ValueError as e:
        # only when the per-byte cost hides in the noise of the largest transfer
        assert "do not grow with size" in str(e)
        assert n[-1] / bandwidth_Bps < 4 * noise * true[-1]
        return
    assert a >= 0 and bw > 0 and r2 <= 1
    slack = 5 * noise + 1e-9
    # Each parameter is known to within the noise of the times that reveal it: latency from
    # the smallest transfer, the per-byte cost from the largest.
    assert abs(a - latency_s) <= slack * true[0] + 1e-15
    assert abs(1 / bw - 1 / bandwidth_Bps) * n[-1] <= slack * true[-1]
    # Where a parameter dominates its end of the sweep, it is recovered to a relative bound.
    if latency_s >= 0.5 * true[0]:
        assert abs(a - latency_s) / latency_s <= 2 * slack
    if n[-1] / bandwidth_Bps >= 0.5 * true[-1]:
        assert abs(bw - bandwidth_Bps) / bandwidth_Bps <= 2 * slack / (1 - 2 * slack)
    fitted = a + n / bw
    assert np.all(np.abs(fitted - true) <= 2 * slack * true)


def test_fit_is_exact_on_noise_free_data():
    n = np.array(SIZES, dtype=float)
    a, bw, r2 = fit_alpha_beta(n, 10e-6 + n / 25e9)
    assert a == pytest.approx(10e-6, rel=1e-9)
    assert bw == pytest.approx(25e9, rel=1e-9)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_negative_intercept_is_clipped_to_zero_latency():
    n = np.array(SIZES, dtype=float)
    # small transfers faster than the line through the origin: the free fit has a < 0
    times = n / 10e9 * np.array([0.8, 0.9, 1, 1, 1, 1, 1, 1])
    (a_free, _), *_ = np.linalg.lstsq(np.column_stack([1 / times, n / times]),
                                      np.ones_like(n), rcond=None)
    assert a_free < 0
    a, bw, _ = fit_alpha_beta(n, times)
    assert a == 0.0
    assert bw == pytest.approx(10e9, rel=0.1)


@pytest.mark.parametrize(
    ("sizes", "times", "match"),
    [
        (SIZES, [1e-5] * len(SIZES), "do not grow with size"),
        (SIZES, [1e-3 / (k + 1) for k in range(len(SIZES))], "do not grow with size"),
        ([4096, 4096, 4096], [1e-5, 2e-5, 3e-5], "two distinct sizes"),
        ([4096, 8192], [1e-5], "equal length"),
        ([4096, 8192], [1e-5, 0.0], "times_s must be finite and > 0"),
        ([4096, 8192], [1e-5, math.nan], "times_s must be finite and > 0"),
        ([-1, 8192], [1e-5, 2e-5], "sizes_bytes must be finite and >= 0"),
    ],
)
def test_fit_rejects_bad_sweeps(sizes, times, match):
    with pytest.raises(ValueError, match=match):
        fit_alpha_beta(sizes, times)


# --------------------------------------------------------------------------- timing


def test_median_time_is_per_call_and_not_below_a_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    t, inner, repeats = profiler.median_time_s(fn, [], time_s=0.01)
    assert t >= 0.002  # sleep never returns early; t is per call, not per block
    assert inner == 1 and profiler.MIN_REPEATS <= repeats <= 5
    assert len(calls) == 1 + 1 + repeats  # warm-up, calibration block, timed blocks


def test_median_time_batches_tiny_calls_into_blocks():
    x = torch.zeros(1)
    t, inner, _ = profiler.median_time_s(lambda: x.add_(1), [], time_s=0.01)
    assert inner > 1  # a µs-scale op is timed in blocks of >= 1 ms
    assert 0 < t < 1e-3


# --------------------------------------------------------------------------- profile_device


@pytest.fixture(scope="module")
def cpu_profile():
    return profile_device(
        "cpu", budget_s=1.0, matmul_sizes=(64, 128, 256), copy_max_bytes=4 * 2**20
    )


def test_profile_device_cpu_gives_positive_plausible_numbers(cpu_profile):
    m = cpu_profile
    json.dumps(m, allow_nan=False)  # JSON-ready, no NaN or inf
    assert m["format"] == profiler.PROFILE_FORMAT_VERSION and m["device"] == "cpu"
    assert m["torch"] == torch.__version__ and m["num_threads"] == torch.get_num_threads()
    assert "float32" in m["matmul_flops"]
    nominal = Topology.discover().device("cpu").peak_flops
    for dtype, sweep in m["matmul_flops"].items():
        sizes = [n for n, _ in sweep]
        assert sizes == sorted(sizes) and sizes[0] == 64
        for n, rate in sweep:
            assert rate > 0
            # 2 n^3 FLOP per product: a rate 10x the nominal peak would mean wrong counting
            assert rate < 10 * nominal.get(dtype, nominal["float32"]), (dtype, n, rate)
    assert [n for n, _ in m["copy_Bps"]][0] == profiler.COPY_MIN_BYTES
    assert all(bps > 0 for _, bps in m["copy_Bps"])
    assert m["mem_bandwidth_Bps"] == m["copy_Bps"][-1][1] > 0
    assert m["copy_bytes"] == m["copy_Bps"][-1][0] <= 4 * 2**20
    assert 0 < m["launch_overhead_s"] < 1e-2


def test_profile_device_measures_something_even_with_a_tiny_budget():
    m = profile_device("cpu", budget_s=1e-3, dtypes=("float32",), copy_max_bytes=2**20)
    assert m["matmul_flops"]["float32"][0][0] == 64
    assert m["copy_Bps"] and m["launch_overhead_s"] > 0
    assert "first_touch_Bps" in m


@pytest.mark.parametrize(("kept_s", "fresh_s", "expected"), [(1e-3, 3e-3, 2**26 / 2e-3), (1e-3, 1.05e-3, None)])
def test_first_touch_is_what_fresh_memory_costs_beyond_a_write(kept_s, fresh_s, expected):
    """first_touch_Bps = bytes / (fresh - kept write time); None within 10% of the kept write
    (an allocator that keeps memory). The real probe on this CPU gives one or the other."""
    real = profiler._first_touch_Bps(torch.device("cpu"), profiler._Budget(0.1))
    assert real is None or real > 0
    rate = profiler.first_touch_rate(2**26, kept_s, fresh_s)
    assert rate == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(device="cuda:7"), "not on this machine"),
        (dict(device="nonsense"), "not a torch device name"),
        (dict(device="cpu", budget_s=0), "budget_s must be"),
        (dict(device="cpu", budget_s=math.inf), "budget_s must be"),
        (dict(device="cpu", dtypes=("int8",)), "not a floating-point torch dtype"),
        (dict(device="cpu", dtypes=("nosuch",)), "not a floating-point torch dtype"),
        (dict(device="cpu", matmul_sizes=(256, 64)), "ascending"),
        (dict(device="cpu", copy_max_bytes=1024), "copy_max_bytes"),
    ],
)
def test_profile_device_rejects_bad_arguments(kwargs, match):
    device = kwargs.pop("device")
    with pytest.raises(ValueError, match=match):
        profile_device(device, **kwargs)


def test_tfloat32_is_skipped_on_cpu():
    m = profile_device("cpu", budget_s=0.2, dtypes=("tfloat32",), copy_max_bytes=2**20)
    assert "tfloat32" in m["matmul_skipped"] and not m["matmul_flops"]


def test_profile_link_needs_a_cuda_end():
    with pytest.raises(ValueError, match="cpu"):
        profile_link("cpu", "cpu")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="not on this machine"):
            profile_link("cpu", "cuda:0")


# --------------------------------------------------------------------------- profile_topology


def _with_absent_gpu(topo: Topology) -> Topology:
    gpu = Device(name="cuda:9", kind="cuda", model="Imaginary GPU", memory_bytes=2**34,
                 peak_flops={"float32": 1e13}, mem_bandwidth_Bps=1e12, launch_overhead_s=1e-5,
                 source="datasheet")
    links = [Link(src="cpu", dst="cuda:9", bandwidth_Bps=2e10, latency_s=1e-5, kind="pcie"),
             Link(src="cuda:9", dst="cpu", bandwidth_Bps=2e10, latency_s=1e-5, kind="pcie")]
    return Topology(name=topo.name, devices=(*topo.devices, gpu), links=(*topo.links, *links),
                    description=topo.description)


@pytest.fixture(scope="module")
def profiled():
    base = _with_absent_gpu(Topology.discover())
    return base, profile_topology(base, budget_s=2.0, progress=False, dtypes=("float32",))


def test_profile_topology_marks_measured_and_round_trips(profiled):
    base, topo = profiled
    cpu, before = topo.device("cpu"), base.device("cpu")
    assert cpu.source.startswith("measured by autopart.profiler on ")
    assert cpu.measured is not None and cpu.measured["device"] == "cpu"
    best = max(rate for _, rate in cpu.measured["matmul_flops"]["float32"])
    assert cpu.peak_flops["float32"] == best
    # dtypes the device listed but the profile did not measure keep their numbers
    for dtype in set(before.peak_flops) - {"float32"}:
        assert cpu.peak_flops[dtype] == before.peak_flops[dtype]
    assert cpu.mem_bandwidth_Bps == cpu.measured["mem_bandwidth_Bps"]
    assert cpu.launch_overhead_s == cpu.measured["launch_overhead_s"]
    assert "profiled by autopart.profiler" in topo.description
    again = Topology.from_dict(json.loads(json.dumps(topo.to_dict())))
    assert again == topo
    assert again.device("cpu").measured == cpu.measured


def test_profile_topology_keeps_devices_and_links_the_machine_lacks(profiled):
    base, topo = profiled
    if HAS_CUDA and torch.cuda.device_count() > 9:
        pytest.skip("this machine has a cuda:9")
    assert topo.device("cuda:9") == base.device("cuda:9")
    assert topo.link("cpu", "cuda:9") == base.link("cpu", "cuda:9")
    assert topo.device("cuda:9").measured is None


def test_profile_topology_on_a_preset_only_touches_local_devices():
    preset = Topology.preset("8xh100-nvlink")
    if HAS_CUDA:
        pytest.skip("a GPU machine may own cuda:0 of the preset")
    out = profile_topology(preset, budget_s=0.5, progress=False, dtypes=("float32",))
    assert out.devices == preset.devices and out.links == preset.links


# --------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_profile_device_cuda():
    m = profile_device("cuda:0", budget_s=3.0, matmul_sizes=(256, 512, 1024, 2048))
    assert m["matmul_flops"]["float32"] and m["launch_overhead_s"] > 0
    assert m["mem_bandwidth_Bps"] > 1e9
    spec = Topology.discover().device("cuda:0").peak_flops
    for dtype, sweep in m["matmul_flops"].items():
        assert max(r for _, r in sweep) < 10 * spec.get(dtype, spec["float32"])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_profile_link_cuda_pinned_and_pageable():
    for src, dst in (("cpu", "cuda:0"), ("cuda:0", "cpu")):
        m = profile_link(src, dst, budget_s=2.0)
        assert set(m["fits"]) == {"pinned", "pageable"} and m["chosen"] == "pinned"
        for fit in m["fits"].values():
            assert fit["bandwidth_Bps"] > 1e8 and fit["latency_s"] >= 0
            assert len(fit["sizes_bytes"]) >= 3
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="pinned"):
            profile_link("cuda:0", "cuda:1", pinned=True)
