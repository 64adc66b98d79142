"""The transfer engine (autopart.kernels.transfer): coalesced copies, split start/wait copies,
pinning. CPU tests run everywhere; the CUDA tests (copy streams, pinned memory) skip without a
GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autopart.kernels.transfer import (
    PendingCopy,
    pin_in_place,
    start_transfer,
    transfer,
    transfer_coalesced,
    wait_transfer,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DTYPES = [torch.float32, torch.float16, torch.int64, torch.bool]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 5), max_size=3), st.sampled_from(DTYPES)),
                min_size=1, max_size=6))
def test_coalesced_copies_equal_the_inputs(specs):
    tensors = [torch.randn(shape).to(dtype) for shape, dtype in specs]
    out = transfer_coalesced(tensors, torch.device("cpu"))
    assert len(out) == len(tensors)
    for got, want in zip(out, tensors):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_coalesced_copies_take_non_contiguous_inputs_and_pass_gradients():
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    out = transfer_coalesced([a.t(), b], "cpu")
    (out[0].sum() * 2 + (out[1] ** 2).sum()).backward()
    torch.testing.assert_close(a.grad, torch.full((4, 6), 2.0))
    torch.testing.assert_close(b.grad, 2 * b.detach())


def test_start_and_wait_on_the_cpu_are_a_plain_copy():
    x = {"a": torch.randn(3), "n": 4}
    pending = start_transfer(x, torch.device("cpu"))
    assert not isinstance(pending["a"], PendingCopy)
    out = wait_transfer(pending)
    assert out["n"] == 4 and out["a"] is x["a"]  # already there: no copy
    assert transfer(x, "cpu")["a"] is x["a"]


def test_pin_in_place_is_a_no_op_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    w = torch.randn(4)
    assert pin_in_place(w) is False


@cuda
def test_copies_to_a_gpu_go_through_a_copy_stream_and_match():
    x = torch.randn(1024, 1024)
    pending = start_transfer(x, torch.device("cuda:0"))
    assert isinstance(pending, PendingCopy)
    y = wait_transfer(pending)
    torch.testing.assert_close(y.cpu(), x)
    z = transfer(y * 2, "cpu")
    torch.testing.assert_close(z, x * 2)


@cuda
def test_copies_to_the_host_land_in_pinned_memory_and_are_complete():
    x = torch.randn(4096, 1024, device="cuda:0")
    z = transfer(x * 2, "cpu")  # after a queued kernel
    got = z.clone()  # read on the host at once, before anything else synchronizes
    assert z.is_pinned() and z.device.type == "cpu"
    torch.testing.assert_close(got, (x * 2).cpu())


@cuda
def test_copies_under_autograd_stay_differentiable_on_a_gpu():
    x = torch.randn(8, requires_grad=True)
    y = transfer(x, "cuda:0")
    (y * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((8,), 3.0))
    w = torch.randn(8, device="cuda:0", requires_grad=True)
    (transfer(w, "cpu") * 2).sum().backward()  # to the host and back
    torch.testing.assert_close(w.grad, torch.full((8,), 2.0, device="cuda:0"))


@cuda
def test_pin_in_place_page_locks_the_memory():
    w = torch.randn(256, 256)
    assert pin_in_place(w)
    assert w.is_pinned()
    torch.testing.assert_close(transfer(w, "cuda:0").cpu(), w)


@pytest.mark.parametrize("method", ["bf16", "int8"])
def test_the_traceable_compressed_copy_gives_the_same_values(method):
    from autopart.kernels.transfer import plain_transfer_compressed, transfer_compressed

    x = torch.randn(64, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain_transfer_compressed(x, "cpu", method),
                                   transfer_compressed(x, "cpu", method), rtol=0, atol=0)
    y = torch.randn(8, requires_grad=True)  # autograd needs it: int8 goes as bf16
    out = plain_transfer_compressed(y, "cpu", method)
    torch.testing.assert_close(out, y.to(torch.bfloat16).float())
    out.sum().backward()
    torch.testing.assert_close(y.grad, torch.ones(8))
