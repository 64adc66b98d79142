"""Per-op cost rules: FLOPs, bytes read and written, and kernel launches of one aten op.

A rule is registered with :func:`register_cost` on aten overloads or overload packets
(DESIGN.md convention 5). Ops with no rule get :func:`default_cost`:

- views (``OpOverload.is_view``), ``prim`` ops and ops that return no tensor (metadata
  queries such as ``prim.device``) move no bytes and launch nothing;
- every other op reads all its input tensors and writes all its outputs once (``embedding``
  has its own rule: it reads only the rows it gathers);
- FLOPs come from ``torch.utils.flop_counter``'s registry when it has a formula (matmul, conv,
  attention, ...); otherwise one FLOP per output element (elementwise ops), which keeps
  bandwidth-bound ops bandwidth-bound in the roofline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .._compat import concrete_int, flop_registry

aten = torch.ops.aten


@dataclass(frozen=True)
class OpCost:
    """Work of one aten op: FLOPs, bytes moved to/from memory, kernel launches, the dtype that
    selects the device's peak FLOP rate, the op's class (:func:`op_class`), and whether a
    matrix product's output rows are aligned (:func:`rows_aligned`)."""

    flops: int
    bytes_read: int
    bytes_written: int
    launches: int
    dtype: str
    kind: str = "elementwise"
    aligned: bool = True

    @property
    def bytes_accessed(self) -> int:
        return self.bytes_read + self.bytes_written


_ATTENTION = {
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward", "_efficient_attention_forward",
    "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
    "_flash_attention_backward", "_efficient_attention_backward",
}
"""Fused attention kernels and their backward: class ``"matmul:attention"``, fitted apart from
the matmul line (on an AMD EPYC the CPU flash kernel ran at 0.55-0.7x the rate of the matmuls
it fuses, in models whose q, k, v are transposed views)."""
_CONVOLUTION = {"convolution", "_convolution", "mkldnn_convolution", "cudnn_convolution"}
"""Convolutions: class ``"matmul:convolution"``, fitted apart from the matmul line (on an AMD
EPYC with torch 2.13's oneDNN, ResNet-50's 1x1 convolutions at batch 1 ran 15-40% below the
rate of matrix products of their FLOPs and bytes, its 3x3 convolutions at about that rate)."""
_CONVOLUTION_BACKWARD = {"convolution_backward", "mkldnn_convolution_backward", "cudnn_convolution_backward"}
"""Their backward (input and weight gradients): class ``"matmul:convolution_backward"`` (on the
same EPYC, ResNet-50's convolution backward at batch 1 ran about 30% below the forward
convolutions' rate)."""
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "_int_mm"}
_TRANSCENDENTAL = {
    "tanh", "exp", "exp2", "log", "log2", "log1p", "expm1", "sigmoid", "gelu", "erf", "erfc",
    "silu", "mish", "elu", "softplus", "rsqrt", "sqrt", "sin", "cos", "tan", "atan",
}
#: Ops calibrated one by one, their class "<class>:<name>" (falling back to the class fit):
#: transcendentals whose cost per element differs several-fold, normalizations whose kernels
#: run far off their class's rate (on an AMD EPYC with torch 2.13, per byte: softmax and layer
#: norm 3-5x slower than a mean, max pooling 13x slower than a reduction, batch norm with
#: running statistics 2x slower than an add).
CALIBRATED_ONE_BY_ONE = ("tanh", "gelu", "silu", "exp", "max_pool2d_with_indices", "native_batch_norm",
                         "_softmax", "native_layer_norm")
_REDUCTION = {
    "_softmax", "_log_softmax", "native_layer_norm", "native_batch_norm",
    "_native_batch_norm_legit", "cudnn_batch_norm", "miopen_batch_norm", "native_group_norm",
    "sum", "mean", "amax", "amin", "max", "min", "var", "var_mean", "std", "std_mean", "prod",
    "cumsum", "cumprod", "norm", "linalg_vector_norm", "argmax", "argmin", "logsumexp",
    "_fused_rms_norm", "avg_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d",
}
_COPY = {
    "clone", "_to_copy", "copy_", "cat", "stack", "index_select", "embedding", "gather",
    "index", "_unsafe_index", "index_put", "index_put_", "scatter", "scatter_add",
    "slice_scatter", "select_scatter", "constant_pad_nd", "repeat", "roll", "flip",
    "tril", "triu", "masked_select",
}


def op_class(func: Any) -> str:
    """The class of an aten op, for calibration (:mod:`autopart.costmodel.calibration`):
    ``"matmul"``, ``"transcendental"``, ``"reduction"``, ``"copy"``, else ``"elementwise"``;
    ``"<class>:<op>"`` for the ops in :data:`CALIBRATED_ONE_BY_ONE`, ``"matmul:attention"``
    for every fused attention kernel (and its backward), ``"matmul:convolution"`` for every
    convolution and ``"matmul:convolution_backward"`` for their backward."""
    packet = getattr(func, "overloadpacket", func)
    name = getattr(packet, "__name__", str(packet)).split(".")[-1]
    if name in _ATTENTION:
        return "matmul:attention"
    if name in _CONVOLUTION:
        return "matmul:convolution"
    if name in _CONVOLUTION_BACKWARD:
        return "matmul:convolution_backward"
    if name in _MATMUL:
        return "matmul"
    base = "elementwise"
    if name in _TRANSCENDENTAL:
        base = "transcendental"
    elif name in _REDUCTION:
        base = "reduction"
    elif name in _COPY:
        base = "copy"
    return f"{base}:{name}" if name in CALIBRATED_ONE_BY_ONE else base


def base_class(kind: str) -> str:
    """The class an op kind belongs to: ``"matmul"`` for ``"matmul:attention"``, the kind itself
    for a class (:func:`op_class`)."""
    return kind.split(":")[0]


CostRule = Callable[[Any, tuple, dict, Any], OpCost]
_RULES: dict[Any, CostRule] = {}


def register_cost(*targets: Any) -> Callable[[CostRule], CostRule]:
    """Register ``rule(func, args, kwargs, out) -> OpCost`` for aten overloads or packets."""

    def decorate(rule: CostRule) -> CostRule:
        for target in targets:
            _RULES[target] = rule
        return rule

    return decorate


def tensor_bytes(value: Any) -> int:
    """Bytes of the elements of every tensor among the leaves of ``value`` (views: their own)."""
    return sum(
        concrete_int(t.numel()) * t.element_size()
        for t in tree_leaves(value)
        if isinstance(t, torch.Tensor)
    )


def _dtype_of(args: Any, out: Any) -> str:
    for t in tree_leaves((out, args)):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return str(t.dtype).removeprefix("torch.")
    return "float32"


def _free(func, args, kwargs, out) -> OpCost:
    return OpCost(0, 0, 0, 0, _dtype_of(args, out))


# Ops that allocate or read metadata only, and _unsafe_view (a view whose schema does not say
# so; torch.utils._runtime_estimation lists it among views). Views are free too (default_cost).
register_cost(
    aten._unsafe_view,
    aten.lift_fresh,
    aten.sym_size,
    aten.sym_stride,
    aten.sym_numel,
    aten.empty,
    aten.empty_strided,
)(_free)


def default_cost(func, args, kwargs, out) -> OpCost:
    """Cost of an op with no registered rule (see the module docstring)."""
    if getattr(func, "is_view", False) or getattr(func, "namespace", "") == "prim":
        return _free(func, args, kwargs, out)
    if not any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
        return _free(func, args, kwargs, out)  # metadata queries (sizes, devices, scalars)
    registry = flop_registry()
    packet = getattr(func, "overloadpacket", func)
    if packet in registry:
        flops = concrete_int(registry[packet](*args, **kwargs, out_val=out))
    else:
        flops = tensor_bytes(out) // max(1, _itemsize(out))
    return OpCost(
        flops=flops,
        bytes_read=tensor_bytes((args, kwargs)),
        bytes_written=tensor_bytes(out),
        launches=1,
        dtype=_dtype_of(args, out),
    )


def _itemsize(value: Any) -> int:
    for t in tree_leaves(value):
        if isinstance(t, torch.Tensor):
            return t.element_size()
    return 1


def aten_op_cost(func, args: tuple, kwargs: dict, out: Any) -> OpCost:
    """Cost of one aten op call: its registered rule, else :func:`default_cost`."""
    packet = getattr(func, "overloadpacket", None)
    rule = _RULES.get(func) or _RULES.get(packet) or default_cost
    kind = "elementwise:native_batch_norm" if _eval_batch_norm(func, args, kwargs) else op_class(func)
    aligned = rows_aligned(out) if packet in _MATRIX_PRODUCTS else True
    return dataclasses.replace(rule(func, args, kwargs, out), kind=kind, aligned=aligned)


_MATRIX_PRODUCTS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)

ALIGN_BYTES = 64
"""Alignment of a matrix product's output rows, bytes (:func:`rows_aligned`)."""


def rows_aligned(out: Any) -> bool:
    """Whether a matrix product's output ``(..., M, N)`` has rows of a multiple of
    :data:`ALIGN_BYTES` (a cache line; 16 float32), or rows of at most that many bytes.

    Unaligned rows cost BLAS kernels their vectorised edge: a float32 ``x @ W.T`` with ``x``
    128 x 768 ran 22% slower for ``N = 50257`` (GPT-2's vocabulary) than for ``N = 50264`` on
    an AMD EPYC with torch 2.13's oneDNN/MKL, and 40% slower for 512 x 1024 x 4095 than for
    4096; unaligned ``M`` cost 2-4%, so only ``N`` counts. This is why nanoGPT pads GPT-2's
    vocabulary to 50304 ("nearest multiple of 64 for efficiency"), and NVIDIA's "Matrix
    Multiplication Background User's Guide" asks for dimensions that are multiples of 16 bytes
    for Tensor Cores.
    """
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        return True
    row_bytes = concrete_int(out.shape[-1]) * out.element_size()
    return row_bytes <= ALIGN_BYTES or row_bytes % ALIGN_BYTES == 0


_BATCH_NORMS = (aten.native_batch_norm, aten.cudnn_batch_norm, aten.miopen_batch_norm)
"""Batch norm kernels taking ``(input, weight, bias, running_mean, running_var, training, ...)``:
CPU, and CUDA's cuDNN and ROCm's MIOpen (which ``batch_norm`` dispatches to on those GPUs)."""


def _eval_batch_norm(func: Any, args: tuple, kwargs: dict) -> bool:
    """Batch norm with the running statistics (no reduction): a :data:`_BATCH_NORMS` kernel
    with ``training`` False, or ``_native_batch_norm_legit_no_training`` (its name in
    decomposed graphs)."""
    packet = getattr(func, "overloadpacket", None)
    if packet is aten._native_batch_norm_legit_no_training:
        return True
    return packet in _BATCH_NORMS and not kwargs.get("training", args[5] if len(args) > 5 else True)


class CostRecorder(TorchDispatchMode):
    """Records the :class:`OpCost` of every aten op run while it is active.

    Use inside a FakeTensorMode to cost an FX node without running real kernels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(aten_op_cost(func, args, kwargs, out))
        return out


@register_cost(aten.embedding)
def _embedding_cost(func, args, kwargs, out) -> OpCost:
    """A lookup reads the indices and only the rows it gathers, not the whole table."""
    rows = tensor_bytes(out)
    return OpCost(0, tensor_bytes(args[1]) + rows, rows, 1, _dtype_of(args, out))


@register_cost(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_cpu_backward_cost(func, args, kwargs, out) -> OpCost:
    """The CPU flash-attention backward kernel, which torch.utils.flop_counter has no formula for.

    FLOPs of dQ, dK (2 b h s_q s_k d each), dV and dP (2 b h s_q s_k d_v each), as
    ``torch.utils.flop_counter.sdpa_backward_flop_count`` counts them for the GPU kernels (the
    recomputed scores are not counted, as there).
    """
    q, k, v = args[1:4]
    b, h, s_q, d = (concrete_int(x) for x in q.shape)
    s_k, d_v = concrete_int(k.shape[-2]), concrete_int(v.shape[-1])
    flops = 4 * b * h * s_q * s_k * d + 4 * b * h * s_q * s_k * d_v
    return OpCost(flops, tensor_bytes((args, kwargs)), tensor_bytes(out), 1, _dtype_of(args, out))


@register_cost(aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_cost(func, args, kwargs, out) -> OpCost:
    """The CPU flash-attention kernel, which torch.utils.flop_counter has no formula for.

    FLOPs of Q K^T plus P V: 2 b h s_q s_k d + 2 b h s_q s_k d_v, as
    ``torch.utils.flop_counter.sdpa_flop_count`` counts them for the GPU kernels.
    """
    q, k, v = args[:3]
    b, h, s_q, d = (concrete_int(x) for x in q.shape)
    s_k, d_v = concrete_int(k.shape[-2]), concrete_int(v.shape[-1])
    flops = 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v
    read = tensor_bytes((args, kwargs))
    return OpCost(flops, read, tensor_bytes(out), 1, _dtype_of(args, out))
