"""Optional lossy compression of tensors sent over slow links.

A transfer over a slow link (PCIe to a far socket, Ethernet between hosts) costs
``latency_s + nbytes / bandwidth_Bps``; sending fewer bytes and restoring on the destination
trades a little accuracy for time. Methods:

``"none"``
    The tensor crosses as is. Exact.
``"bf16"``
    float32 is cast to bfloat16 (2 bytes per element instead of 4) and cast back on the
    destination. Differentiable. bfloat16 keeps float32's 8 exponent bits and 8 significant bits
    (7 stored + the implicit one), so round-to-nearest-even gives, per element,
    ``|x - y| <= 2**-8 * |x|`` (unit roundoff ``u = 2**-p`` with ``p = 8``; Higham, *Accuracy
    and Stability of Numerical Algorithms*, 2nd ed., Thm 2.2). float16 and bfloat16 inputs
    already take 2 bytes per element and pass through unchanged (no bytes saved, no error).
``"int8"``
    Symmetric per-tensor absmax quantization (Jacob et al. 2018, "Quantization and Training of
    Neural Networks for Efficient Integer-Arithmetic-Only Inference"; Dettmers et al. 2022,
    "LLM.int8()"): ``s = max|x| / 127`` in float32 (clamped to ``[2**-126, 0x1.020406p+121]``
    to stay normal and keep ``127 * s`` finite), ``q = clamp(round(x / s), -127, 127)`` as int8,
    restored as ``q * s``. 1 byte per element plus a 4-byte scale. Rounding is
    round-half-to-even, as ``torch.round`` does; the Triton kernel and the torch fallback give
    bit-identical ``q`` and restored values. Inference only (not differentiable).

Only float32, float16 and bfloat16 tensors are compressed; every other dtype (integers, bool,
float64, complex, float8) passes through unchanged. Inputs must be finite: ``inf``/``nan`` give
unspecified int8 values, and bf16 rounds float32 values at or above ``(2 - 2**-8) * 2**127`` to
``inf`` (:func:`max_abs_error` then returns ``inf``).

The int8 quantize/dequantize runs as a Triton kernel when the tensor is on CUDA and Triton can
be imported, or on any device when ``TRITON_INTERPRET`` is set (Triton's interpreter runs the
kernel on CPU tensors; Triton reads the flag when a kernel is decorated, so the kernels here are
built on first use, once per mode). Otherwise a torch fallback computes the same values.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

logger = logging.getLogger(__name__)

CompressionName = Literal["none", "bf16", "int8"]

_METHODS: tuple[str, ...] = get_args(CompressionName)
_COMPRESSIBLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT8_MAX = 127
_MIN_SCALE = torch.finfo(torch.float32).tiny  # 2**-126, smallest normal float32
_MAX_SCALE = float.fromhex("0x1.020406p+121")  # largest float32 s with 127 * s finite
# Rounding of the int8 restore's float32 -> dtype cast: unit roundoff (2**-p, p significant
# bits) and half the smallest subnormal. float32 is not cast (and q * s is 0 or normal).
_CAST_ROUNDOFF = {torch.float32: (0.0, 0.0), torch.float16: (2.0**-11, 2.0**-25),
                  torch.bfloat16: (2.0**-8, 2.0**-134)}
# float32 values at or above this round to inf when cast to bfloat16 (halfway past its max).
_BF16_OVERFLOW = (2.0 - 2.0**-8) * 2.0**127
_TRITON_BLOCK = 1024  # elements per program
# Truthy spellings of TRITON_INTERPRET, as triton.knobs reads them.
_TRUE_STRINGS = frozenset({"1", "true", "on", "yes", "y"})


@dataclass(frozen=True, eq=False)
class Compressed:
    """A tensor packed for a link, plus what is needed to restore it.

    Attributes:
        payload: the packed tensor, contiguous, same shape as the original. dtype bfloat16 for
            ``"bf16"``, int8 for ``"int8"``, the original tensor itself for ``"none"``.
        method: the method actually applied: ``"none"`` when the input was passed through
            (method ``"none"``, a dtype that is not compressed, or bf16 of a 2-byte float).
        dtype: the original dtype, restored by :func:`decompress`.
        shape: the original shape.
        scale: for ``"int8"``, the float32 scale ``s ~ max|x| / 127`` (see the module
            docstring) as a 0-dim tensor on the payload's device; ``None`` otherwise.
    """

    payload: torch.Tensor
    method: CompressionName
    dtype: torch.dtype
    shape: torch.Size
    scale: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes that cross the link: payload elements times element size, plus the scale."""
        total = self.payload.numel() * self.payload.element_size()
        if self.scale is not None:
            total += self.scale.numel() * self.scale.element_size()
        return total


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(
            f"unknown compression method {method!r}; choose one of {', '.join(map(repr, _METHODS))}"
        )


def packed_element_size(dtype: torch.dtype, method: CompressionName) -> int | None:
    """Bytes per element that cross the link when ``method`` packs a tensor of ``dtype``:
    2 for ``"bf16"`` of float32, 1 for ``"int8"`` of float32/float16/bfloat16; None when the
    tensor passes through unchanged (any other pair).

    Raises:
        ValueError: ``method`` is not ``"none"``, ``"bf16"`` or ``"int8"``.
    """
    _check_method(method)
    if method == "none" or dtype not in _COMPRESSIBLE_DTYPES:
        return None
    if method == "bf16":
        return 2 if dtype.itemsize > 2 else None
    return 1


def _effective_method(x: torch.Tensor, method: CompressionName) -> CompressionName:
    """The method compress() really applies to ``x`` ("none" for pass-through)."""
    return "none" if packed_element_size(x.dtype, method) is None else method


def _int8_scale(x: torch.Tensor) -> torch.Tensor:
    """``s = max|x| / 127`` as a float32 0-dim tensor on ``x``'s device, clamped to a range.

    The floor ``2**-126`` (smallest normal float32) keeps ``s`` off 0 (empty or all-zero ``x``:
    nothing divides by zero, every element quantizes to 0) and off the subnormals, where ``s``
    would lose precision and ``x / s`` could exceed 127 by more than rounding. The ceiling
    (``0x1.020406p+121``, just under float32 max / 127) keeps ``127 * s`` finite.
    """
    if x.numel() == 0:
        return torch.full((), _MIN_SCALE, dtype=torch.float32, device=x.device)
    scale = x.detach().abs().amax().to(torch.float32) / _INT8_MAX
    return scale.clamp(_MIN_SCALE, _MAX_SCALE)


def _quantize_int8_torch(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference quantizer: ``clamp(round(float32(x) / scale), -127, 127)`` as int8.

    Args:
        x: float32/float16/bfloat16 tensor of any shape and strides.
        scale: float32 0-dim tensor on ``x``'s device (see ``_int8_scale``).
    Returns:
        contiguous int8 tensor of ``x``'s shape. Rounding is half-to-even (``torch.round``).
    """
    v = x.to(torch.float32) / scale
    return torch.round(v.clamp(-_INT8_MAX, _INT8_MAX)).to(torch.int8).contiguous()


def _dequantize_int8_torch(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reference dequantizer: ``float32(q) * scale`` cast (round-to-nearest-even) to ``dtype``."""
    return (q.to(torch.float32) * scale).to(dtype)


def _triton_interpret() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE_STRINGS


_triton_import_error: str | None = None
_triton_checked = False
_triton: Any = None
# Kernels look up ``tl`` in this module's globals (Triton's interpreter requires it there).
tl: Any = None
_KERNELS: dict[bool, tuple[Any, Any]] = {}


def _triton_available() -> bool:
    """Import Triton once, on first need; False (with the reason logged) if it cannot be."""
    global _triton, tl, _triton_checked, _triton_import_error
    if not _triton_checked:
        _triton_checked = True
        try:
            import triton
            import triton.language as triton_language
        except ImportError as exc:
            _triton_import_error = f"{type(exc).__name__}: {exc}"
            logger.debug("triton unavailable, int8 compression uses torch: %s", _triton_import_error)
        else:
            _triton, tl = triton, triton_language
    return _triton is not None


def _use_triton(t: torch.Tensor) -> bool:
    """Triton for CUDA tensors, or for any tensor under TRITON_INTERPRET; torch otherwise."""
    if t.numel() == 0 or not (t.is_cuda or _triton_interpret()):
        return False
    return _triton_available()


def _triton_kernels() -> tuple[Any, Any]:
    """The (quantize, dequantize) kernels, built on first use for the current interpret mode."""
    interpret = _triton_interpret()
    if interpret in _KERNELS:
        return _KERNELS[interpret]
    if not _triton_available():
        raise RuntimeError(f"Triton cannot be imported: {_triton_import_error}")
    triton = _triton

    # Both kernels convert bfloat16 <-> float32 by bits: Triton 3.9's interpreter flushes
    # bfloat16 subnormals to 0 and truncates on the way down; the bit forms are exact/RNE.
    @triton.jit
    def quantize_int8_kernel(x_ptr, scale_ptr, q_ptr, numel, BLOCK: tl.constexpr,
                             IN_BF16: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if IN_BF16:
            x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            x = x.to(tl.float32)
        v = tl.math.div_rn(x, tl.load(scale_ptr))  # IEEE division, as torch's
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        # Round half to even: adding 1.5 * 2**23 leaves no fraction bits (valid for |v| < 2**22).
        r = (v + 12582912.0) - 12582912.0
        tl.store(q_ptr + offs, r.to(tl.int8), mask=mask)

    @triton.jit
    def dequantize_int8_kernel(q_ptr, scale_ptr, out_ptr, numel, BLOCK: tl.constexpr,
                               OUT_BF16: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.float32)
        y = q * tl.load(scale_ptr)
        if OUT_BF16:
            bits = y.to(tl.uint32, bitcast=True)  # RNE by bits, as c10::BFloat16 (finite y)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
            out = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            out = y.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs, out, mask=mask)

    _KERNELS[interpret] = (quantize_int8_kernel, dequantize_int8_kernel)
    return _KERNELS[interpret]


def _quantize_int8_triton(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Triton quantizer, bit-identical to :func:`_quantize_int8_torch` (same arguments/result).

    Raises:
        RuntimeError: Triton cannot be imported.
    """
    x = x.detach().contiguous()
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    if x.numel() == 0:
        return q
    kernel, _ = _triton_kernels()
    kernel[(_triton.cdiv(x.numel(), _TRITON_BLOCK),)](x, scale, q, x.numel(), BLOCK=_TRITON_BLOCK,
                                                      IN_BF16=x.dtype == torch.bfloat16,
                                                      enable_fp_fusion=False)
    return q


def _dequantize_int8_triton(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Triton dequantizer, bit-identical to :func:`_dequantize_int8_torch` (same arguments/result).

    Raises:
        RuntimeError: Triton cannot be imported.
    """
    q = q.contiguous()
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    if q.numel() == 0:
        return out
    _, kernel = _triton_kernels()
    kernel[(_triton.cdiv(q.numel(), _TRITON_BLOCK),)](q, scale, out, q.numel(), BLOCK=_TRITON_BLOCK,
                                                      OUT_BF16=dtype == torch.bfloat16,
                                                      enable_fp_fusion=False)
    return out


def compress(x: torch.Tensor, method: CompressionName, *, triton: bool = True) -> Compressed:
    """Pack ``x`` for a link with ``method``, on ``x``'s device.

    Args:
        x: tensor of any shape (empty included), strides and device. float32 is compressed by
            ``"bf16"``; float32, float16 and bfloat16 by ``"int8"``; anything else passes through.
        method: ``"none"``, ``"bf16"`` or ``"int8"`` (see the module docstring for error bounds).
        triton: False keeps to torch ops (the same values), e.g. in a graph a compiler traces.
    Returns:
        a :class:`Compressed`; ``nbytes`` is ``numel * 2`` for bf16 and ``numel + 4`` for int8.
    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: ``method`` is not one of the names above; or ``method`` is ``"int8"`` while
            ``x.requires_grad`` and grad mode is on (int8 is not differentiable).
    """
    _check_method(method)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"compress expects a torch.Tensor, got {type(x).__name__}")
    applied = _effective_method(x, method)
    if applied == "none":
        return Compressed(payload=x, method="none", dtype=x.dtype, shape=x.shape)
    if applied == "bf16":
        payload = x.to(torch.bfloat16, memory_format=torch.contiguous_format)
        return Compressed(payload=payload, method="bf16", dtype=x.dtype, shape=x.shape)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "int8 compression is for inference and is not differentiable, but the tensor "
            "requires grad; use method 'bf16' or 'none', or run under torch.no_grad()"
        )
    scale = _int8_scale(x)
    quantize = _quantize_int8_triton if triton and _use_triton(x) else _quantize_int8_torch
    return Compressed(payload=quantize(x, scale), method="int8", dtype=x.dtype, shape=x.shape,
                      scale=scale)


def decompress(c: Compressed, device: torch.device | str | None = None, *, triton: bool = True) -> torch.Tensor:
    """Restore the original dtype and shape of ``c``, optionally on another device.

    With ``device``, the payload (and scale) move there first, so only ``c.nbytes`` cross the
    link and the restore runs on the destination. Copies to CUDA are ``non_blocking`` (ordered on
    the destination's current stream); copies to the CPU block, as in
    :func:`autopart.kernels.transfer.transfer`. ``triton``: as in :func:`compress`.

    Returns:
        tensor of ``c.shape`` and ``c.dtype`` on ``device`` (or the payload's device);
        differentiable for ``"none"`` and ``"bf16"``.
    """
    payload, scale = c.payload, c.scale
    if device is not None:
        device = torch.device(device)
        non_blocking = device.type == "cuda"
        payload = payload.to(device, non_blocking=non_blocking)
        if scale is not None:
            scale = scale.to(device, non_blocking=non_blocking)
    if c.method == "none":
        return payload
    if c.method == "bf16":
        return payload.to(c.dtype)
    assert c.method == "int8" and scale is not None, c.method
    dequantize = _dequantize_int8_triton if triton and _use_triton(payload) else _dequantize_int8_torch
    return dequantize(payload, scale, c.dtype).reshape(c.shape)


def compressed_transfer(x: torch.Tensor, device: torch.device | str,
                        method: CompressionName, *, triton: bool = True) -> torch.Tensor:
    """Compress ``x`` on its device, move the payload to ``device``, restore it there.

    Same dtype and shape as ``x``, on ``device``; errors as :func:`compress`. With ``"none"``
    this is ``x.to(device)``. ``triton``: as in :func:`compress`.
    """
    return decompress(compress(x, method, triton=triton), device, triton=triton)


def max_abs_error(x: torch.Tensor, method: CompressionName) -> float:
    """Bound on ``max |x - decompress(compress(x, method))|`` over the elements of ``x``.

    - ``"none"``, or a dtype/method pair that passes through: 0.
    - ``"bf16"`` (float32 input): ``2**-8 * max|x| + 2**-134``. Round-to-nearest with 8
      significant bits has relative error at most ``u = 2**-8`` per element (bfloat16 format;
      Higham, Thm 2.2); ``2**-134`` is half the bfloat16 subnormal spacing, for inputs below the
      normal range. ``inf`` when ``max|x| >= (2 - 2**-8) * 2**127`` (rounds to inf).
    - ``"int8"``: ``s/2 + 127*s*(u + 2**-22) + h``, ``s`` the scale
      (``max|x|/127`` in float32, clamped to ``[2**-126, 0x1.020406p+121]``).
      ``s/2`` is the half step of the absmax grid (Jacob et al. 2018; Dettmers et al. 2022); the
      second term covers the float32 rounding of ``x / s`` and ``q * s`` and the cast back to
      the original dtype (``u``: 0 for float32, ``2**-11`` float16, ``2**-8`` bfloat16); ``h``
      is half the smallest subnormal of that dtype (0 for float32). 0 for an all-zero tensor.

    Returns a Python float in the units of ``x`` (reads ``max|x|``, so it synchronizes with the
    device). Raises ValueError for an unknown method.
    """
    _check_method(method)
    applied = _effective_method(x, method)
    if applied == "none" or x.numel() == 0:
        return 0.0
    if applied == "bf16":
        absmax = float(x.detach().abs().amax())
        if absmax >= _BF16_OVERFLOW:
            return math.inf
        return 2.0**-8 * absmax + 2.0**-134
    if not x.detach().any():
        return 0.0  # all zero: restored exactly
    s = float(_int8_scale(x))
    u, h = _CAST_ROUNDOFF[x.dtype]
    return s / 2 + _INT8_MAX * s * (u + 2.0**-22) + h
