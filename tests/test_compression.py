"""Tests for autopart.kernels.compression: error bounds, sizes, pass-through, Triton vs torch."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from autopart.kernels import compression as comp
from autopart.kernels.compression import (
    Compressed,
    compress,
    compressed_transfer,
    decompress,
    max_abs_error,
)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest magnitude drawn per dtype: finite after the cast.
LIMIT = {dtype: torch.finfo(dtype).max for dtype in FLOAT_DTYPES}
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@st.composite
def float_tensors(draw, dtypes=FLOAT_DTYPES):
    """Finite float tensors of 0-3 dims (sides 0-5), any sign and magnitude, maybe strided."""
    dtype = draw(st.sampled_from(dtypes))
    limit = draw(st.sampled_from([2.0**-130, 2.0**-20, 1.0, 2.0**10, LIMIT[dtype]]))
    elements = st.floats(-limit, limit, width=32, allow_nan=False, allow_infinity=False)
    values = draw(arrays(np.float32, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                         elements=elements))
    x = torch.from_numpy(values).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed" and x.dim() >= 2:
        x = x.mT
    elif layout == "strided" and x.dim() >= 1:
        x = torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    return x


def _err(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.double() - y.double()).abs()


@settings(max_examples=150, deadline=None)
@given(float_tensors(dtypes=(torch.float32,)))
def test_bf16_round_trip_within_bound(x):
    c = compress(x, "bf16")
    assert c.method == "bf16" and c.payload.dtype == torch.bfloat16 and c.payload.is_contiguous()
    y = compressed_transfer(x, "cpu", "bf16")
    assert y.dtype == x.dtype and y.shape == x.shape
    err = _err(x, y)
    # Per element: relative 2**-8, plus half the bf16 subnormal spacing below the normal range;
    # float32 values from halfway past the bf16 max up round to inf.
    overflow = x.double().abs() >= (2 - 2.0**-8) * 2.0**127
    assert (err <= 2.0**-8 * x.double().abs() + 2.0**-134)[~overflow].all()
    assert y[overflow].isinf().all()
    if x.numel():
        assert err.max().item() <= max_abs_error(x, "bf16")
        assert (max_abs_error(x, "bf16") == float("inf")) == bool(overflow.any())


@settings(max_examples=150, deadline=None)
@given(float_tensors())
def test_int8_round_trip_within_bound(x):
    c = compress(x, "int8")
    assert c.payload.dtype == torch.int8 and c.payload.is_contiguous()
    assert ((c.payload >= -127) & (c.payload <= 127)).all()
    y = decompress(c)
    assert y.dtype == x.dtype and y.shape == x.shape
    bound = max_abs_error(x, "int8")
    assert 0 <= bound < float("inf")
    if x.numel():
        assert _err(x, y).max().item() <= bound


def test_int8_edge_cases():
    zeros = torch.zeros(4, 3)
    c = compress(zeros, "int8")
    assert c.scale.item() == torch.finfo(torch.float32).tiny
    assert torch.equal(decompress(c), zeros)
    assert max_abs_error(zeros, "int8") == 0.0

    empty = torch.empty(0, 3)
    for method in ("bf16", "int8"):
        y = compressed_transfer(empty, "cpu", method)
        assert y.shape == (0, 3) and y.dtype == torch.float32
        assert max_abs_error(empty, method) == 0.0

    # Values at the float32 limits restore finite and within the bound.
    for v in (torch.finfo(torch.float32).max, 2.0**-149):
        x = torch.tensor([v, -v, v / 3])
        y = compressed_transfer(x, "cpu", "int8")
        assert y.isfinite().all() and _err(x, y).max().item() <= max_abs_error(x, "int8")

    # Scale 1: ties round half to even, the absmax element maps to +-127 exactly.
    x = torch.tensor([127.0, 0.5, 1.5, 2.5, -2.5, -0.5, -127.0])
    c = compress(x, "int8")
    assert c.payload.tolist() == [127, 0, 2, 2, -2, 0, -127]
    assert decompress(c).tolist() == [127.0, 0.0, 2.0, 2.0, -2.0, 0.0, -127.0]


def test_nbytes_ratios():
    x = torch.randn(1000, 8)
    original = x.numel() * x.element_size()
    assert compress(x, "none").nbytes == original
    assert compress(x, "bf16").nbytes * 2 == original
    int8 = compress(x, "int8")
    assert int8.nbytes == original // 4 + 4  # one byte per element + a float32 scale
    assert isinstance(int8, Compressed) and int8.method == "int8"


@pytest.mark.parametrize("method", ["none", "bf16", "int8"])
@pytest.mark.parametrize(
    "x",
    [
        torch.arange(12, dtype=torch.int64).reshape(3, 4),
        torch.tensor([True, False]),
        torch.arange(6, dtype=torch.int32)[::2],
        torch.randn(3, dtype=torch.float64),
    ],
    ids=["int64", "bool", "int32-strided", "float64"],
)
def test_other_dtypes_pass_through(x, method):
    c = compress(x, method)
    assert c.method == "none" and c.payload is x
    assert decompress(c) is x
    assert torch.equal(compressed_transfer(x, "cpu", method), x)
    assert max_abs_error(x, method) == 0.0


def test_two_byte_floats_skip_bf16():
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(5, dtype=dtype)
        c = compress(x, "bf16")
        assert c.method == "none" and c.payload is x
        assert decompress(c) is x


def test_unknown_method():
    x = torch.randn(3)
    with pytest.raises(ValueError, match=r"'fp8'.*'none', 'bf16', 'int8'"):
        compress(x, "fp8")
    with pytest.raises(ValueError, match="'fp8'"):
        compress(torch.arange(3), "fp8")  # checked before the dtype pass-through
    with pytest.raises(ValueError, match="'fp8'"):
        max_abs_error(x, "fp8")
    with pytest.raises(TypeError, match="list"):
        compress([1.0], "bf16")


def test_int8_refuses_grad():
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match="inference.*'bf16' or 'none'"):
        compress(x, "int8")
    with torch.no_grad():
        y = compressed_transfer(x, "cpu", "int8")
    assert not y.requires_grad
    assert _err(x.detach(), y).max().item() <= max_abs_error(x, "int8")


def test_bf16_gradient_matches_eager():
    base = torch.randn(6, 5)
    w = torch.randn(5, 6)
    x = base.clone().requires_grad_()
    y = compressed_transfer(x.mT, "cpu", "bf16")
    (y * w).sum().backward()
    ref = base.clone().requires_grad_()
    y_ref = ref.mT.to(torch.bfloat16).to(torch.float32)
    (y_ref * w).sum().backward()
    assert torch.equal(y, y_ref)
    assert torch.equal(x.grad, ref.grad)


def test_torch_path_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(comp, "_quantize_int8_triton", _fail)
    monkeypatch.setattr(comp, "_dequantize_int8_triton", _fail)
    x = torch.randn(7, 3)
    assert _err(x, compressed_transfer(x, "cpu", "int8")).max().item() <= max_abs_error(x, "int8")


def _fail(*args, **kwargs):
    raise AssertionError("the other int8 path was taken")


# Triton reads TRITON_INTERPRET when a kernel is decorated (triton.knobs.runtime.interpret), not
# at import; compression builds its kernels on first use, once per mode, so setting the variable
# in-process is enough.
@needs_triton
@settings(max_examples=40, deadline=None)
@given(float_tensors())
def test_triton_interpreter_matches_torch(x):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        scale = comp._int8_scale(x)
        q = comp._quantize_int8_triton(x, scale)
        q_ref = comp._quantize_int8_torch(x, scale)
        assert torch.equal(q, q_ref)
        y = comp._dequantize_int8_triton(q, scale, x.dtype)
        y_ref = comp._dequantize_int8_torch(q_ref, scale, x.dtype)
        assert y.dtype == y_ref.dtype and torch.equal(y, y_ref)


@needs_triton
def test_interpreter_used_by_public_api(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(comp, "_quantize_int8_torch", _fail)
    monkeypatch.setattr(comp, "_dequantize_int8_torch", _fail)
    x = torch.randn(5, 300, dtype=torch.bfloat16)[:, ::3]
    y = compressed_transfer(x, "cpu", "int8")
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert _err(x, y).max().item() <= max_abs_error(x, "int8")
    # Ties round half to even, as torch.round does.
    c = compress(torch.tensor([127.0, 0.5, 1.5, 2.5, -2.5, -0.5, -127.0]), "int8")
    assert c.payload.tolist() == [127, 0, 2, 2, -2, 0, -127]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_triton_cuda_matches_torch(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gen = torch.Generator().manual_seed(0)
    x_cpu = (torch.randn(257, 129, generator=gen) * 3).to(dtype)
    x_cpu[0, :4] = torch.tensor([0.5, 1.5, 2.5, -2.5]) * x_cpu.abs().amax().float() / 127
    x = x_cpu.cuda()[:, 1::2]
    scale = comp._int8_scale(x)
    q = comp._quantize_int8_triton(x, scale)
    assert torch.equal(q, comp._quantize_int8_torch(x, scale))
    assert torch.equal(q.cpu(), comp._quantize_int8_torch(x_cpu[:, 1::2], scale.cpu()))
    y = comp._dequantize_int8_triton(q, scale, dtype)
    assert torch.equal(y, comp._dequantize_int8_torch(q, scale, dtype))
    # Compress on the GPU, restore on the CPU, and the other way round.
    for src, dst in ((x, "cpu"), (x_cpu, "cuda")):
        out = compressed_transfer(src, dst, "int8")
        assert out.device.type == dst and out.dtype == dtype
        assert _err(src.cpu(), out.cpu()).max().item() <= max_abs_error(src, "int8")
