"""Device-side pieces the runtime needs: the transfer engine (copy streams, pinned memory,
coalescing, prefetch) and compression for slow links."""

from .transfer import pin_in_place, start_transfer, transfer, transfer_coalesced, wait_transfer

__all__ = ["pin_in_place", "start_transfer", "transfer", "transfer_coalesced", "wait_transfer"]
