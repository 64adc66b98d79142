"""Device-side pieces the runtime needs: the transfer inserted on cut edges."""

from .transfer import transfer

__all__ = ["transfer"]
