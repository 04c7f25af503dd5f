"""The webhook's signature, as Stripe signs its webhooks: `X-Usage-Proxy-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 under alert_webhook_secret of "<t>.<body>">`, the same
timestamp also in `X-Usage-Proxy-Timestamp`. A receiver recomputes v1 over the raw body,
compares in constant time, and refuses a t more than a few minutes old (replay); pure."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-Usage-Proxy-Signature"
TIMESTAMP_HEADER = "X-Usage-Proxy-Timestamp"


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Usage-Proxy-Signature value of `body` sent at `timestamp`."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """What a receiver does (see the README): the header's v1 matches, and t is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(fields.get("v1", ""), _mac(secret, timestamp, body))
