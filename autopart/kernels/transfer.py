"""Device-to-device copies inserted by the rewrite on cut edges.

* :func:`transfer` copies one tensor (or pytree). Copies to a GPU run on a **copy stream** per
  (source, destination) pair, so they overlap the kernels already queued on the destination's
  compute stream (another micro-batch, another layer); the destination's current stream then
  waits on an event recorded after the copy, and the allocator is told the tensors are used on
  both streams (``Tensor.record_stream``). Host tensors are staged in pinned memory
  (``Tensor.pin_memory``, which draws on PyTorch's caching host allocator) so the copy is an
  asynchronous DMA. Copies to the CPU land in pinned memory too (``non_blocking=True``) and
  return when done, since CPU readers do not wait on streams.
* :func:`start_transfer` / :func:`wait_transfer` split a copy in two, so the rewrite can issue
  it early (weights streamed from host memory, one layer ahead) and wait only where the reader
  runs.
* :func:`transfer_coalesced` sends many small tensors crossing one edge as one buffer per
  dtype (one copy's latency instead of many).
* :func:`pin_in_place` page-locks host memory already holding weights (``cudaHostRegister``),
  so streaming them needs no staging copy.

Copies a tensor that autograd must differentiate are made on the current stream with a plain
``Tensor.to`` (autograd then orders the backward copy itself). Without CUDA every function
reduces to ``Tensor.to``: plans for GPUs mapped onto the CPU run the same code paths.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_map

from .compression import compressed_transfer

log = logging.getLogger(__name__)

_streams: dict[tuple[torch.device, torch.device], Any] = {}
_streams_lock = threading.Lock()


def copy_stream(src: torch.device, dst: torch.device):
    """The CUDA stream on ``dst`` (a GPU) for copies from ``src`` to ``dst``; one per ordered
    pair, made on first use."""
    with _streams_lock:
        stream = _streams.get((src, dst))
        if stream is None:
            stream = _streams[(src, dst)] = torch.cuda.Stream(device=dst)
        return stream


@dataclass
class PendingCopy:
    """A copy issued on a copy stream and not yet waited for: pass it to :func:`wait_transfer`."""

    value: torch.Tensor
    source: torch.Tensor
    event: Any
    stream: Any


def _needs_autograd(t: torch.Tensor) -> bool:
    return t.requires_grad and torch.is_grad_enabled()


def _async_copy(t: torch.Tensor, device: torch.device) -> PendingCopy | torch.Tensor:
    """Issue the copy of ``t`` to ``device`` on the pair's copy stream (CUDA destinations, no
    autograd), else copy now."""
    if device.type == "cpu" and t.device.type == "cuda":
        # A non-blocking copy to the host lands in pinned memory (DMA at the pinned rate the
        # profiled link describes; a blocking one is staged through pageable memory, several
        # times slower); CPU readers do not wait on streams, so wait here.
        out = t.to(device, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return out
    if device.type != "cuda" or t.device == device or _needs_autograd(t):
        non_blocking = device.type == "cuda"
        if non_blocking and t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=non_blocking)
    stream = copy_stream(t.device, device)
    if t.device.type == "cuda":
        stream.wait_stream(torch.cuda.current_stream(t.device))  # the producer's kernels first
    elif not t.is_pinned():
        t = t.pin_memory()
    with torch.cuda.stream(stream):
        out = t.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
    return PendingCopy(out, t, event, stream)


def start_transfer(value: Any, device: torch.device) -> Any:
    """Issue the copy of every tensor in ``value`` (a tensor or pytree) to ``device``; returns
    what :func:`wait_transfer` turns into the copied value. Differentiable where autograd needs it
    (then the copy is made at once, on the current stream)."""
    device = torch.device(device)
    return tree_map(lambda t: _async_copy(t, device) if isinstance(t, torch.Tensor) else t, value)


def wait_transfer(pending: Any) -> Any:
    """The copied value of a :func:`start_transfer`: the current stream of the destination waits
    for the copy (without blocking the host)."""

    def finish(p: Any) -> Any:
        if not isinstance(p, PendingCopy):
            return p
        consumer = torch.cuda.current_stream(p.value.device)
        consumer.wait_event(p.event)
        p.value.record_stream(consumer)  # allocated on the copy stream, used on this one
        if p.source.is_cuda:
            p.source.record_stream(p.stream)  # read on the copy stream: keep it until then
        return p.value

    return tree_map(finish, pending, is_leaf=lambda x: isinstance(x, PendingCopy))


def transfer(value: Any, device: torch.device) -> Any:
    """Copy every tensor in ``value`` (a tensor or pytree) to ``device``; others pass through.

    A tensor already on ``device`` is returned as is (no copy). Differentiable: gradients flow
    back to the source device. See the module docstring for streams and pinned memory.
    """
    return wait_transfer(start_transfer(value, device))


def transfer_compressed(x: torch.Tensor, device: torch.device, method: str) -> torch.Tensor:
    """Copy ``x`` to ``device`` compressed with ``method`` (``"bf16"`` or ``"int8"``, see
    :mod:`autopart.kernels.compression`); a tensor autograd needs goes as bf16 when int8 was
    chosen, since int8 has no gradient."""
    return compressed_transfer(x, torch.device(device), _differentiable(x, method))


def plain_transfer_compressed(x: torch.Tensor, device: torch.device, method: str) -> torch.Tensor:
    """:func:`transfer_compressed` in plain torch ops (for graphs a compiler traces)."""
    return compressed_transfer(x, torch.device(device), _differentiable(x, method), triton=False)


def _differentiable(x: torch.Tensor, method: str) -> str:
    return "bf16" if method == "int8" and _needs_autograd(x) else method


def plain_transfer(value: Any, device: torch.device) -> Any:
    """:func:`transfer` as one plain ``Tensor.to`` per tensor (for graphs a compiler traces)."""
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def plain_transfer_coalesced(tensors: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """:func:`transfer_coalesced` with plain copies (for graphs a compiler traces)."""
    return _coalesced(tensors, device, plain_transfer)


def transfer_coalesced(tensors: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Copy ``tensors`` (all on one device) to ``device`` as one flat buffer per dtype.

    Returns the copies in the order given, with the shapes given (contiguous views into the
    buffers). Differentiable (``torch.cat`` and ``split``). The buffer costs one extra copy of
    the bytes on each side, which is cheaper than the per-copy latency for small tensors (the
    rewrite coalesces tensors under ``COALESCE_MAX_BYTES``).
    """
    return _coalesced(tensors, device, transfer)


def _coalesced(tensors: Sequence[torch.Tensor], device: torch.device, copy: Any) -> tuple[torch.Tensor, ...]:
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for indices in by_dtype.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
        moved = copy(flat, device)
        parts = moved.split([tensors[i].numel() for i in indices])
        for i, part in zip(indices, parts):
            out[i] = part.view(tensors[i].shape)
    return tuple(out)  # type: ignore[arg-type]


COALESCE_MAX_BYTES = 1 << 20
"""Tensors at most this large crossing one edge into one partition are coalesced. At PCIe's
~10 us per copy and ~25 GB/s, a copy of 1 MiB takes ~40 us of which latency is a quarter; past
that, the extra packing copy costs more than the latency saved."""


def pin_in_place(tensor: torch.Tensor) -> bool:
    """Page-lock the host memory of ``tensor`` (``cudaHostRegister``) so copies from it are
    asynchronous DMA without a staging copy; unregistered when ``tensor`` is freed (keep the
    tensor, e.g. a parameter, as long as its storage).

    Returns whether the memory is pinned now. A no-op (False) without CUDA, for a tensor not on
    the CPU, or when registration fails (logged).
    """
    if tensor.device.type != "cpu" or not torch.cuda.is_available():
        return False
    if tensor.is_pinned():
        return True
    storage = tensor.untyped_storage()
    ptr, nbytes = storage.data_ptr(), storage.nbytes()
    if nbytes == 0:
        return False
    cudart = torch.cuda.cudart()
    err = cudart.cudaHostRegister(ptr, nbytes, 0)
    if int(err) != 0:
        log.debug("cudaHostRegister of %d bytes failed (%s); copies stay pageable", nbytes, err)
        return False
    weakref.finalize(tensor, cudart.cudaHostUnregister, ptr)
    return True
