"""Device-side pieces the runtime needs: the transfer engine (copy streams, pinned memory,
coalescing, prefetch) and compression for slow links (Triton kernels, torch fallback)."""

from .compression import Compressed, CompressionName, compress, compressed_transfer, decompress, max_abs_error
from .transfer import (
    pin_in_place,
    start_transfer,
    transfer,
    transfer_coalesced,
    transfer_compressed,
    wait_transfer,
)

__all__ = [
    "Compressed",
    "CompressionName",
    "compress",
    "compressed_transfer",
    "decompress",
    "max_abs_error",
    "pin_in_place",
    "start_transfer",
    "transfer",
    "transfer_coalesced",
    "transfer_compressed",
    "wait_transfer",
]
