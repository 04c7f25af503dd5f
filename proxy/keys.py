"""Client credentials: extraction from headers, HMAC fingerprint, printable hint, and the
in-memory store that lets the collector fetch a run with the key that ran it.

Keys are never written anywhere: rows carry only `fingerprint()` and `hint()`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "CREDENTIAL_HEADERS",
    "REFUSED",
    "Credential",
    "CredentialStore",
    "Headers",
    "UsedCredential",
    "conflicting_keys",
    "extract_key",
    "fingerprint",
    "hint",
    "replay_request",
    "sendable",
    "split_query",
    "used_credential",
]

# Upstream answers that say the key is not good: such a request's key is not kept, so made-up
# keys cost no memory.
REFUSED = frozenset({401, 403})

# Query parameters that carry the key, and those that look like a credential of any kind: the
# latter are never stored or logged (split_query). A replayed credential holds them beside its
# headers, marked with "?", which no header name can contain.
_QUERY_KEYS = frozenset({"api-key", "api_key", "key"})
_SECRET_NAME = re.compile(
    r"(?:^|[-_.])(?:api[-_]?key|key|token|secret|password|passwd|sig|signature|auth\w*)$", re.I
)
_SECRET_VALUE = re.compile(r"sk-[A-Za-z0-9_-]{6,}|^(?:Bearer|Basic)\s", re.I)
_QUERY = "?"

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


def conflicting_keys(sent: Mapping[str, str]) -> bool:
    """Whether `Authorization: Bearer` and `api-key` carry two different keys. Which one an
    upstream honours depends on the upstream (OpenAI reads the first, Azure the second), so
    such a request cannot be attributed to the key that pays for it: it is refused."""
    bearer = extract_key({"Authorization": sent.get("Authorization") or ""})
    api_key = (sent.get("api-key") or "").strip()
    return bool(bearer and api_key and bearer != api_key)


class UsedCredential(NamedTuple):
    """The credential a request used: its key, and the headers the collector replays for it
    (None when the key cannot be sent again: it carried bytes that were not UTF-8)."""

    key: str
    replay: tuple[tuple[str, str], ...] | None


def used_credential(sent: Mapping[str, str] | None, query: str = "") -> UsedCredential | None:
    """The credential a request used, or None: decided once, from the headers as they were
    sent upstream (after hop-by-hop removal, so a decoy named in `Connection` is not it) and
    the credential parameters of its query string (`?api-key=...`, when no header has a
    key), for attribution (the fingerprint) and for forwarding (the collector's fetches
    replay it, query parameters included, from memory: see `replay_request`)."""
    key = extract_key(sent) if sent else None
    secret = split_query(query)[1] if query else ()
    from_query = key is None
    if from_query:
        key = next((v.strip() for n, v in secret if n.lower() in _QUERY_KEYS and v.strip()), None)
        if key is None:
            return None
    get = sent.get if sent else {}.get
    headers = tuple([(n, v) for n in CREDENTIAL_HEADERS if (v := get(n)) is not None])
    if not all(sendable(v) for _, v in headers):
        headers = tuple([(n, v) for n, v in headers if sendable(v)])
        if not from_query and extract_key(dict(headers)) != key:
            # The key itself cannot be sent again: what is left would fetch with another
            # key, or none.
            return UsedCredential(key, None)
    return UsedCredential(key, headers + tuple([(_QUERY + n, v) for n, v in secret]))


def split_query(query: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(the query string without its credential-looking parameters, those parameters):
    named like a key (`api-key`, `key`, `api_key`, `token`, ...) or valued like one (`sk-...`).
    What is stored or logged gets the first part only."""
    if not query:
        return "", ()
    kept: list[tuple[str, str]] = []
    secret: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        looks = _SECRET_NAME.search(name) or _SECRET_VALUE.search(value)
        (secret if looks else kept).append((name, value))
    return (urlencode(kept) if secret else query), tuple(secret)


def replay_request(headers: Mapping[str, str], query: str) -> tuple[dict[str, str], str]:
    """The headers and query string to fetch with, from a credential's replay (whose query
    parameters are held beside its headers, marked) and the stored query string."""
    out: dict[str, str] = {}
    params: list[tuple[str, str]] = []
    for name, value in headers.items():
        if name.startswith(_QUERY):
            params.append((name[len(_QUERY) :], value))
        else:
            out[name] = value
    extra = urlencode(params)
    return out, "&".join(q for q in (query, extra) if q)


def fingerprint(key: str, secret: bytes) -> str:
    """HMAC-SHA256 of the key's bytes under the server secret, hex. A header that was not
    valid UTF-8 reaches us with its bad bytes as surrogate escapes (aiohttp decodes that way):
    those are fingerprinted as the bytes they stand for, so any key the upstream was sent has
    a fingerprint, and one row."""
    return hmac.new(secret, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def hint(key: str) -> str:
    """`sk-...abcd` for OpenAI keys, `...abcd` for others; nothing of keys too short to hide,
    and no tail that is not printable (a control character or a byte that was not UTF-8 has
    no place in a report, and PostgreSQL would refuse the latter)."""
    prefix = "sk-" if key.startswith("sk-") else ""
    tail = key[-4:]
    return f"{prefix}...{tail}" if len(key) >= 12 and tail.isprintable() else f"{prefix}..."


def sendable(value: str) -> bool:
    """Whether a header value can be sent again (by aiohttp, and over the collector's pipe,
    which are UTF-8 only): not one that carried bytes that were not UTF-8."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


class Credential(NamedTuple):
    headers: tuple[tuple[str, str], ...]
    expires_at: float


# Headers of a credential, in the order of CREDENTIAL_HEADERS.
Headers = tuple[tuple[str, str], ...]
# A credential seen again within this many seconds is not refreshed: every request refreshes
# its key, and once a second keeps the expiry exact enough for a TTL of hours.
_REFRESH = 1.0
# How often a listener hears of a key that is still in use (it holds its own copy, with its
# own expiry): at most this long before the store's, the listener's copy may expire.
_RETELL = 60.0


class CredentialStore:
    """fingerprint -> the headers to replay, held in memory only, each for `ttl` seconds after
    it was last seen, and at most `limit` of them: beyond it the least recently seen is
    forgotten (its jobs wait until it is seen again), so made-up keys cannot fill memory. The
    expiry bounds how long a key outlives its last use in this process.

    `listener(fp, headers)` hears of each key when it is new, when its headers change, and
    every minute while it stays in use: the collector process keeps its copy that way, over a
    private pipe (proxy.accounting.process.supervisor)."""

    def __init__(
        self,
        ttl: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
        listener: Callable[[str, Headers], None] | None = None,
        limit: int = 10_000,
    ) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._items: dict[str, Credential] = {}
        self._told: dict[str, float] = {}
        self.listener = listener

    def remember(self, fp: str, sent: Mapping[str, str], query: str = "") -> bool:
        """Keep (or refresh) the credential of `fp`, the one `sent` (the headers as sent
        upstream) used; whether it was not held before. A key that cannot be sent again is
        not kept: its jobs wait as if it were gone."""
        now = self._clock()
        old = self._items.get(fp)
        if old is not None and old.expires_at - now > self._ttl - _REFRESH:
            return False
        used = used_credential(sent, query)
        if used is None or used.replay is None:
            return False
        headers = used.replay
        self._keep(fp, Credential(headers, now + self._ttl))
        if self.listener is not None and (
            old is None or old.headers != headers or now - self._told.get(fp, -_RETELL) >= _RETELL
        ):
            self._told[fp] = now
            self.listener(fp, headers)
        return old is None or old.expires_at < now

    def put(self, fp: str, headers: Headers) -> bool:
        """Keep `headers` as they are (a copy told by another process); whether `fp` is new."""
        new = fp not in self
        self._keep(fp, Credential(tuple(headers), self._clock() + self._ttl))
        return new

    def get(self, fp: str) -> dict[str, str] | None:
        cred = self._items.get(fp)
        if cred is None:
            return None
        if cred.expires_at < self._clock():
            self._forget(fp)
            return None
        return dict(cred.headers)

    def __contains__(self, fp: object) -> bool:
        """Whether a live credential is held for `fp` (without copying its headers)."""
        cred = self._items.get(fp)  # type: ignore[call-overload]
        return cred is not None and cred.expires_at >= self._clock()

    def fingerprints(self) -> list[str]:
        now = self._clock()
        for fp in [fp for fp, c in self._items.items() if c.expires_at < now]:
            self._forget(fp)
        return list(self._items)

    def live(self) -> list[tuple[str, Headers]]:
        """Every live credential: what a new listener must be told first."""
        return [(fp, self._items[fp].headers) for fp in self.fingerprints()]

    def _keep(self, fp: str, credential: Credential) -> None:
        # Re-inserted, so the dict's order is the order of last use: the first is the LRU.
        self._items.pop(fp, None)
        self._items[fp] = credential
        while len(self._items) > self._limit:
            self._forget(next(iter(self._items)))

    def _forget(self, fp: str) -> None:
        del self._items[fp]
        self._told.pop(fp, None)
