"""Retry-After as the upstream and the admin API send it: seconds, never an HTTP date from them."""

from __future__ import annotations

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After value; None when absent or not a number (an HTTP date is rare
    from these APIs, and the caller's own backoff serves as well)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0)
