"""Whether the upstream answers: when it last did, and when it last could not be reached or
sent no response in time. Kept by the Forwarder from the traffic it forwards (no probe of its
own), reported by /_proxy/health, and never a reason for health to fail: the proxy itself is
up either way, and a load balancer that took it out of service would not bring the upstream
back."""

from __future__ import annotations

import datetime as dt

__all__ = ["Reachability"]


class Reachability:
    __slots__ = ("last_failure", "last_failure_reason", "last_success", "via")

    def __init__(self) -> None:
        self.last_success: float | None = None  # time.time() of the latest response headers
        self.last_failure: float | None = None
        self.last_failure_reason: str | None = None  # upstream_unreachable, upstream_timeout
        self.via: str | None = None  # the egress proxy, its password masked (None: direct)

    def failed(self, at: float, reason: str) -> None:
        self.last_failure, self.last_failure_reason = at, reason

    def report(self) -> dict[str, object]:
        """For /_proxy/health: ISO 8601 UTC times (null: not yet), and whether the latest
        attempt got a response."""
        ok = None
        if self.last_success is not None or self.last_failure is not None:
            ok = (self.last_success or 0.0) >= (self.last_failure or 0.0)
        return {
            "ok": ok,
            "last_success": _iso(self.last_success),
            "last_failure": _iso(self.last_failure),
            "last_failure_reason": self.last_failure_reason,
            "via_proxy": self.via,
        }


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds")
