"""Client credentials: extraction from headers, HMAC fingerprint, printable hint, and the
in-memory store that lets the collector fetch a run with the key that ran it.

Keys are never written anywhere: rows carry only `fingerprint()` and `hint()`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import NamedTuple

__all__ = [
    "CREDENTIAL_HEADERS",
    "Credential",
    "CredentialStore",
    "extract_key",
    "fingerprint",
    "hint",
]

# What the collector replays on its follow-up fetches: the key header plus the headers that
# select the organisation, project and API beta the run lives in.
CREDENTIAL_HEADERS = (
    "Authorization",
    "api-key",
    "OpenAI-Organization",
    "OpenAI-Project",
    "OpenAI-Beta",
)


def extract_key(headers: Mapping[str, str]) -> str | None:
    """The API key from `Authorization: Bearer` or Azure's `api-key`, else None."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("api-key")
    return key.strip() if key and key.strip() else None


def fingerprint(key: str, secret: bytes) -> str:
    """HMAC-SHA256 of the key under the server secret, hex."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def hint(key: str) -> str:
    """`sk-...abcd` for OpenAI keys, `...abcd` for others; nothing of keys too short to hide."""
    prefix = "sk-" if key.startswith("sk-") else ""
    return f"{prefix}...{key[-4:]}" if len(key) >= 12 else f"{prefix}..."


class Credential(NamedTuple):
    headers: tuple[tuple[str, str], ...]
    expires_at: float


class CredentialStore:
    """fingerprint -> the headers to replay, held in memory only, each for `ttl` seconds after
    it was last seen. The expiry bounds how long a key outlives its last use in this process."""

    def __init__(self, ttl: float = 24 * 3600.0, clock=time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._items: dict[str, Credential] = {}

    def remember(self, fp: str, request_headers: Mapping[str, str]) -> None:
        get = request_headers.get
        headers = tuple([(n, v) for n in CREDENTIAL_HEADERS if (v := get(n)) is not None])
        self._items[fp] = Credential(headers, self._clock() + self._ttl)

    def get(self, fp: str) -> dict[str, str] | None:
        cred = self._items.get(fp)
        if cred is None:
            return None
        if cred.expires_at < self._clock():
            del self._items[fp]
            return None
        return dict(cred.headers)

    def __contains__(self, fp: object) -> bool:
        """Whether a live credential is held for `fp` (without copying its headers)."""
        cred = self._items.get(fp)  # type: ignore[call-overload]
        return cred is not None and cred.expires_at >= self._clock()

    def fingerprints(self) -> list[str]:
        now = self._clock()
        for fp in [fp for fp, c in self._items.items() if c.expires_at < now]:
            del self._items[fp]
        return list(self._items)
