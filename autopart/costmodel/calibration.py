"""Calibration: fit, per device and per class of op, the rate ops really reach and their
fixed cost, from timed representative ops.

Classes (:func:`autopart.costmodel.ops.op_class`, by aten op): ``matmul`` (mm, addmm, bmm),
``transcendental`` (tanh, exp, gelu, ...: elementwise but compute-heavy), ``reduction``
(softmax, layer/batch norm, sum, mean, ...), ``copy`` (clone, cat, index/gather, embedding,
dtype casts) and ``elementwise`` (everything else that launches work). Some ops are
fitted one by one, as ``<class>:<op>``: tanh, gelu, silu and exp, softmax
(``reduction:_softmax``), layer norm (``reduction:native_layer_norm``), max pooling
(``reduction:max_pool2d_with_indices``), batch norm with running statistics
(``elementwise:native_batch_norm``), the fused attention kernels (``matmul:attention``),
convolutions (``matmul:convolution``, with their own nearest-sample correction, as matmuls) and
their backward (``matmul:convolution_backward``: ResNet-50's backward convolutions ran about
30% below the forward's rate on an AMD EPYC). The optimizer step is fitted per parameter
update (``optimizer:adam`` for Adam and AdamW, ``optimizer:sgd`` for SGD with or without
momentum; :func:`autopart.passes.training.optimizer_step`): its ``overhead_s`` holds the
dispatch of the update's ops and torch.optim's own Python per parameter (Adam on ResNet-50's
159 parameters took three times as long as its bytes at the elementwise rate on an AMD EPYC).

For each class, representative ops at several sizes are timed (in each of ``ROUNDS`` passes
spread across the budget the median of repeated blocks of up to ``BLOCK_S``,
``autopart.profiler.median_time_s``, and the best over passes; after ``SUSTAIN_S`` of matmuls:
other tenants of a shared machine only add time, slow spells last seconds, and a model's run
holds the clock a sustained load gets) and costed by the same rules the cost pass uses
(:class:`autopart.costmodel.ops.CostRecorder`); then ``time = overhead_s + x / rate`` is fitted
by relative least squares (:func:`autopart.profiler.fit_alpha_beta`), with ``x`` the op's FLOPs
for the matmul classes and its bytes read + written for the others. A saturating efficiency
``rate(x) = peak * x / (x + x_half)`` gives exactly this line (``time = x_half / peak + x /
peak``), so the fitted ``overhead_s`` holds both the dispatch cost and the small-op
inefficiency (small matmuls run far below peak), and ``rate`` the large-op rate.

:func:`autopart.costmodel.roofline.roofline_time_s` uses a device's fit when
``Device.measured["calibration"]`` has one for the op's class, else the plain roofline.

Matmuls of one FLOP count do not all run at one rate: a projection onto a 32000-word
vocabulary streams its weights from memory and runs at about half the rate of a layer's
matmuls on a CPU, and one onto GPT-2's 50257 words, whose output rows are not aligned
(:func:`autopart.costmodel.ops.rows_aligned`), 20% slower again. So the matmul line is
corrected per op by the samples most like it: :func:`matmul_correction` scales it by the
measured/fitted ratio of the two nearest samples of the same row alignment in (log FLOPs, log
bytes), weighted by inverse distance (a nearest-neighbour efficiency table, as operator-level
profiling in FlexFlow or Alpa would measure the ops themselves).

The ``calibration`` dict (JSON)::

    format   3
    dtype    "float32" (rates of matmul for other dtypes scale with the device's peak_flops)
    classes  {class: {"unit": "FLOP" | "byte", "overhead_s": s, "rate": per second,
                      "r2": R^2, "samples": [[x, seconds], ...]}}  (samples of the
                      matmul classes: [FLOPs, seconds, bytes read + written, 1 if output
                      rows aligned else 0]; format 2 had no flag: all count as aligned)
    failed   {class: reason}  classes whose fit failed (they use the plain roofline)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .ops import CostRecorder, OpCost, base_class

log = logging.getLogger(__name__)

CALIBRATION_FORMAT_VERSION = 3


def matmul_correction(fit: dict[str, Any], flops: float, nbytes: float, aligned: bool = True) -> float:
    """Factor on the matmul line for an op of ``flops`` and ``nbytes`` (read + written): the
    measured/fitted time ratio of the two calibration samples nearest in (log10 FLOPs, log10
    bytes), weighted by inverse distance, among the samples whose output rows are ``aligned``
    like the op's (all samples when fewer than two are); 1 when the fit has no such samples
    (format 1).

    Returns a factor > 0 (an exact sample gets its own ratio).
    """
    samples = [s for s in fit.get("samples", ()) if len(s) >= 3 and s[0] > 0 and s[1] > 0 and s[2] > 0]
    alike = [s for s in samples if bool(s[3] if len(s) > 3 else 1) == aligned]
    samples = alike if len(alike) >= 2 else samples
    if len(samples) < 2 or flops <= 0 or nbytes <= 0:
        return 1.0
    here = (math.log10(flops), math.log10(nbytes))
    scored = []
    for x, seconds, b, *_ in samples:
        line = fit["overhead_s"] + x / fit["rate"]
        distance = math.hypot(math.log10(x) - here[0], math.log10(b) - here[1])
        scored.append((distance, seconds / line))
    scored.sort()
    nearest = scored[:2]
    if nearest[0][0] < 1e-9:
        return nearest[0][1]
    weights = [1 / d for d, _ in nearest]
    return sum(w * r for w, (_, r) in zip(weights, nearest)) / sum(weights)


GPU_LARGEST_S = 50e-6
"""On a GPU the largest sample of each bandwidth-bound class moves at least this many seconds
of bytes at 3.35 TB/s (H100 SXM's HBM3 peak, NVIDIA's datasheet), several times a launch's
cost (5-10 us), so that the fit sees the bandwidth and not only latency. A calibration on an
H100 with the CPU's sizes (at most 50 MB) failed for three classes: their times did not grow
with size."""


def _samples(device: torch.device, large: bool | None = None) -> dict[str, list[Callable[[], Any]]]:
    """Representative ops per class, sized like transformer and CNN layers (float32).

    ``large`` (default: on a GPU) adds sizes up to :data:`GPU_LARGEST_S` of bytes at GPU
    bandwidth (tensors up to 192 MiB, about 3.5 GiB held during a calibration).
    """
    large = device.type == "cuda" if large is None else large

    def t(*shape):
        return torch.randn(*shape, device=device)

    mm_shapes = [(16, 256, 256), (64, 768, 768), (128, 768, 2304), (128, 3072, 768),
                 (256, 1024, 1024), (512, 1024, 4096)]
    matmul = [(lambda a=t(m, k), b=t(k, n): torch.mm(a, b)) for m, k, n in mm_shapes]
    matmul += [(lambda a=t(12, 128, 64), b=t(12, 64, 128): torch.bmm(a, b))]
    # nn.Linear multiplies by the transposed weight (out_features, in_features)
    linear_shapes = [(64, 768, 768), (128, 1024, 4096), (128, 768, 8192)]
    matmul += [(lambda a=t(m, k), w=t(n, k): F.linear(a, w)) for m, k, n in linear_shapes]
    # with a bias (addmm), and an output projection over a vocabulary (weights beyond the caches)
    matmul += [(lambda a=t(m, k), w=t(n, k), b=t(n): F.linear(a, w, b))
               for m, k, n in [(128, 768, 3072), (128, 2048, 512), (128, 768, 32000)]]
    # output rows not a multiple of 64 bytes (GPT-2's 50257-word vocabulary), from 1 to 25 ms on a CPU
    matmul += [(lambda a=t(m, k), w=t(n, k), b=t(n): F.linear(a, w, b))
               for m, k, n in [(128, 768, 767), (128, 768, 4095), (128, 1024, 8191)]]
    sizes = [2**16, 2**19, 2**22, 2**24, 2**25] if large else [2**12, 2**15, 2**18, 2**20, 2**22]
    # a few hundred elements (RMSNorm's rsqrt of one number per token): the fixed cost alone
    tiny = 2**8
    elementwise = [(lambda a=t(n), b=t(n): torch.add(a, b)) for n in [tiny, *sizes]]
    elementwise += [(lambda a=t(n), b=t(n): torch.mul(a, b)) for n in sizes[1::2]]
    transcendental = [(lambda a=t(n): torch.sin(a)) for n in [tiny, *sizes[::2]]]
    transcendental += [(lambda a=t(n): torch.sigmoid(a)) for n in sizes[1::2]]
    transcendental += [(lambda a=t(n).abs() + 1: torch.rsqrt(a)) for n in (tiny, sizes[2])]
    one_by_one = {
        f"transcendental:{name}": [(lambda a=t(n), f=fn: f(a)) for n in sizes[::2]]
        for name, fn in (("tanh", torch.tanh), ("gelu", F.gelu), ("silu", F.silu), ("exp", torch.exp))
    }
    images = [(1, 64, 56), (1, 64, 112), (1, 256, 56), (4, 64, 112)]  # (batch, channels, side)
    if large:
        images = [(1, 64, 56), (4, 64, 112), (16, 256, 56), (32, 64, 112)]
    one_by_one["reduction:max_pool2d_with_indices"] = [
        (lambda x=t(b, c, s, s): F.max_pool2d(x, 3, 2, 1)) for b, c, s in images
    ]
    one_by_one["elementwise:native_batch_norm"] = [
        (lambda x=t(b, c, s, s), m=t(c), v=t(c).abs(), w=t(c), bias=t(c):
         F.batch_norm(x, m, v, w, bias, training=False))
        for b, c, s in images
    ]
    # ResNet-50's convolutions: (in channels, out channels, kernel, stride, input side)
    convs = [(3, 64, 7, 2, 224), (64, 256, 1, 1, 56), (256, 64, 1, 1, 56), (64, 64, 3, 1, 56),
             (256, 512, 1, 2, 56), (128, 128, 3, 1, 28), (1024, 256, 1, 1, 14), (512, 512, 3, 1, 7),
             (512, 2048, 1, 1, 7)]
    batches = (1, 32) if large else (1,)
    one_by_one["matmul:convolution"] = [
        (lambda x=t(b, ci, s, s), w=t(co, ci, k, k), stride=stride, pad=k // 2:
         F.conv2d(x, w, stride=stride, padding=pad))
        for b in batches for ci, co, k, stride, s in (convs if b == 1 else convs[1::2])
    ]
    # their backward, both gradients (the stem's input needs none), as autograd calls it
    one_by_one["matmul:convolution_backward"] = [
        (lambda g=t(b, co, (s + 2 * (k // 2) - k) // stride + 1, (s + 2 * (k // 2) - k) // stride + 1),
         x=t(b, ci, s, s), w=t(co, ci, k, k), stride=stride, pad=k // 2, inputs=ci > 3:
         torch.ops.aten.convolution_backward(g, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1,
                                             [inputs, True, False]))
        for b in batches for ci, co, k, stride, s in (convs[::2] if b == 1 else convs[1::2])
    ]
    # (batch, heads, sequence, head size); q, k, v transposed from (batch, sequence, heads, head size)
    # as transformers' attention layers make them
    heads = [(1, 12, 128, 64), (1, 16, 256, 64), (1, 12, 512, 64), (2, 16, 128, 128)]
    if large:
        heads = [(1, 12, 128, 64), (8, 16, 512, 64), (8, 16, 2048, 64), (4, 32, 2048, 128)]
    one_by_one["matmul:attention"] = [
        (lambda q=t(b, s, h, d).transpose(1, 2), k=t(b, s, h, d).transpose(1, 2),
         v=t(b, s, h, d).transpose(1, 2): F.scaled_dot_product_attention(q, k, v))
        for b, h, s, d in heads
    ]
    rows = [4, 128, 2048, 16384, 65536] if large else [4, 32, 128, 512, 2048]
    # sums and means over a layer's last dim (RMSNorm's mean): read n, write n / 768
    reduction = [(lambda a=t(r, 768): a.mean(-1, keepdim=True)) for r in rows]
    reduction += [(lambda a=t(r, 768): a.sum(-1)) for r in rows[1::2]]
    one_by_one["reduction:_softmax"] = [(lambda a=t(r, 768): torch.softmax(a, -1)) for r in rows]
    # with weight and bias, as nn.LayerNorm calls it: torch 2.13's CPU kernel took 2x longer without
    one_by_one["reduction:native_layer_norm"] = [
        (lambda a=t(r, 768), w=t(768), b=t(768): F.layer_norm(a, (768,), w, b)) for r in rows
    ]
    copy = [(lambda a=t(n): a.clone()) for n in sizes]
    copy += [(lambda a=t(n // 2), b=t(n // 2): torch.cat([a, b])) for n in sizes[1::2]]
    one_by_one["optimizer:adam"] = [_OptimizerUpdate("adam", n, device) for n in [tiny, *sizes[::2]]]
    one_by_one["optimizer:sgd"] = [_OptimizerUpdate("sgd_momentum", n, device) for n in [tiny, *sizes[::2]]]
    return {
        "matmul": matmul,
        "transcendental": transcendental,
        "reduction": reduction,
        "copy": copy,
        "elementwise": elementwise,
        **one_by_one,
    }


class _OptimizerUpdate:
    """A calibration sample: one step of ``optimizer`` (torch.optim's single-tensor
    implementation, its default on CPUs) on one float32 parameter of ``n`` elements; ``x`` its
    update's bytes read + written."""

    def __init__(self, optimizer: str, n: int, device: torch.device) -> None:
        from ..passes.training import _OPTIMIZERS, optimizer_step

        self.param = torch.nn.Parameter(torch.randn(n, device=device))
        self.param.grad = torch.randn(n, device=device)
        self.step = _OPTIMIZERS[optimizer](self.param)
        self.step.step()  # makes the state
        self.x = float(optimizer_step(optimizer, (n,), torch.float32).update.bytes_accessed)

    def __call__(self) -> None:
        self.step.step()


ROUNDS = 3
"""Passes over every sample: a sample's time is its best over passes spread across the
budget, so that a slow spell of a shared machine (seconds long) does not bend one class.
Within a pass it is the median over blocks, not the best: a model's run is a sum of many ops,
and the least time of a sum is more than the sum of each op's least time (predictions from
per-op minima came out 5-15% fast for all four models of bench/costmodel)."""

BLOCK_S = 0.02
"""Seconds a timed block of back-to-back calls lasts where the budget allows
(:data:`autopart.profiler.MIN_REPEATS` blocks per sample and pass), else less, down to
:data:`autopart.profiler.MIN_BLOCK_S`. A model's run holds the device for tens to hundreds of
ms; short blocks also catch the fast spells between other tenants' time slices on a shared
VM. Measured on a 2-core VM (a 128x768x3072 linear, the best of 240 calls in blocks of 1, 10
and 60 calls, interleaved): single calls 3.79 ms, blocks of 60 calls (250 ms) 4.15 ms, 9%
slower."""

SUSTAIN_S = 2.0
"""Seconds of matmuls run before the first timed sample, so that the device times ops at the
clock it holds under the sustained load of a model's run rather than a burst's boost clock."""


def _sustain(fn: Callable[[], Any], cuda: list[torch.device], seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()
    for dev in cuda:
        torch.cuda.synchronize(dev)


def _point(fn: Callable[[], Any], cls: str, seconds: float) -> list[float]:
    """A calibration sample of ``fn``'s ops of class ``cls``: ``[x, seconds]`` with ``x`` their
    FLOPs (matmul) or bytes read + written (others); matmul samples add their bytes and
    whether their output rows are aligned (1.0 or 0.0)."""
    if isinstance(fn, _OptimizerUpdate):
        return [fn.x, seconds]
    recorder = CostRecorder()
    with torch.no_grad(), recorder:
        fn()
    ops: list[OpCost] = [op for op in recorder.ops if op.kind == cls and op.launches]
    nbytes = float(sum(op.bytes_accessed for op in ops))
    if base_class(cls) == "matmul":
        return [float(sum(op.flops for op in ops)), seconds, nbytes, float(all(op.aligned for op in ops))]
    return [nbytes, seconds]


def calibrate_device(device: str | torch.device, *, budget_s: float = 10.0) -> dict[str, Any]:
    """Time representative ops on a local device and fit each class (module docstring).

    Args:
        device: a local torch device.
        budget_s: seconds to spend (> 0), shared evenly by the samples over
            :data:`ROUNDS` passes (each pass gives each sample at least 10 ms of repeats, in
            blocks of up to :data:`BLOCK_S`); a sample's time is the best over the passes of
            each pass's median block. Passes after the first run only while the budget lasts.
            A pass times each sample in at least ``MIN_REPEATS`` blocks of one call, so the
            first pass sets a floor whatever the budget: about 6 s on a 2-core CPU.

    Returns:
        The ``calibration`` dict (module docstring).

    Raises:
        ValueError: ``budget_s`` is not > 0.
    """
    from ..profiler import MIN_BLOCK_S, MIN_REPEATS, fit_alpha_beta, median_time_s

    if not budget_s > 0:
        raise ValueError(f"calibrate_device: budget_s must be > 0 seconds, got {budget_s!r}")
    dev = torch.device(device)
    cuda = [dev] if dev.type == "cuda" else []
    try:
        samples = _samples(dev)
    except torch.OutOfMemoryError:  # a GPU that others fill: the small sizes still fit
        log.warning("calibration on %s: too little free memory for GPU-sized samples (about 3.5 GiB); "
                    "using small ones, whose times may show launch latency only", dev)
        samples = _samples(dev, large=False)
    per_sample_s = max(0.01, budget_s / ROUNDS / sum(len(v) for v in samples.values()))
    block_s = min(BLOCK_S, max(MIN_BLOCK_S, per_sample_s / MIN_REPEATS))
    classes: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with torch.no_grad():
        _sustain(samples["matmul"][-1], cuda, min(SUSTAIN_S, 0.1 * budget_s))
        best: dict[tuple[str, int], float] = {}
        start = time.perf_counter()
        for done in range(ROUNDS):
            if done and (time.perf_counter() - start) * (done + 1) / done > budget_s:
                break  # one more pass would overrun the budget
            for cls, fns in samples.items():
                for i, fn in enumerate(fns):
                    seconds, _, _ = median_time_s(fn, cuda, time_s=per_sample_s, min_block_s=block_s)
                    best[cls, i] = min(best.get((cls, i), seconds), seconds)
        for cls, fns in samples.items():
            points = [_point(fn, cls, best[cls, i]) for i, fn in enumerate(fns)]
            try:
                overhead_s, rate, r2 = fit_alpha_beta([p[0] for p in points], [p[1] for p in points])
            except ValueError as exc:
                failed[cls] = str(exc)
                log.warning("calibration of %s on %s failed: %s", cls, dev, exc)
                continue
            classes[cls] = {
                "unit": "FLOP" if base_class(cls) == "matmul" else "byte",
                "overhead_s": overhead_s,
                "rate": rate,
                "r2": r2,
                "samples": points,
            }
    return {
        "format": CALIBRATION_FORMAT_VERSION,
        "dtype": "float32",
        "classes": classes,
        "failed": failed,
    }
