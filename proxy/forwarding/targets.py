"""Which request targets may be forwarded, and which headers cross: hop-by-hop headers
(RFC 9110 section 7.6.1, plus Proxy-* and those a Connection header names) never do, nor the
X-Usage-* request headers addressed to this proxy, nor Expect (the proxy meets it). Nothing
under /_proxy/, however spelled, is forwarded."""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["filter_headers", "reserved", "unsafe_target"]

# RFC 9110 section 7.6.1, plus Proxy-* (matched by prefix below).
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _dropped(name: str, request: bool) -> bool:
    low = name.lower()
    if low in _HOP_BY_HOP or low.startswith("proxy-"):
        return True
    # X-Usage-* is addressed to this proxy only. Expect is met here, once: aiohttp's server
    # answers 100 Continue before the handler reads the body, so the upstream gets a plain
    # request (waiting for its 100 as well hung until upstream_timeout when it sent none).
    return request and (low.startswith("x-usage-") or low == "expect")


# Verdicts per header name as spelled on the wire: the same few dozen names arrive on every
# request, and a dict hit is cheaper than lowering and prefix-testing each one (bench/README.md).
_VERDICTS: tuple[dict[str, bool], dict[str, bool]] = ({}, {})
_MAX_VERDICTS = 4096  # made-up header names must not grow the cache without bound


def filter_headers(headers: CIMultiDictProxy[str], *, request: bool) -> CIMultiDict[str]:
    """The headers that cross, of a request (`request=True`) or of a response."""
    verdicts = _VERDICTS[request]
    named = _connection_tokens(headers) if hdrs.CONNECTION in headers else None
    kept: list[tuple[str, str]] = []
    for name, value in headers.items():
        drop = verdicts.get(name)
        if drop is None:
            drop = _dropped(name, request)
            if len(verdicts) < _MAX_VERDICTS:
                verdicts[name] = drop
        if drop or (named and name.lower() in named):
            continue
        kept.append((name, value))
    return CIMultiDict(kept)


def unsafe_target(raw_path: str) -> str | None:
    """Why a request target must not be forwarded, or None. Only origin-form is accepted, and
    no dot-segment may climb out of the upstream's base path (also when percent-encoded, any
    number of times, or hidden behind a path parameter as in `..;`)."""
    if raw_path[:1] != "/" or raw_path[:2] == "//":
        return "only origin-form request targets are accepted"
    path = raw_path.partition("?")[0]
    decoded = path
    for _ in range(8):  # %252e%252e and deeper: decode until nothing changes
        if "%" not in decoded:
            break
        decoded = unquote(decoded)
    if "." in decoded:
        for segment in decoded.replace("\\", "/").split("/"):
            if segment.partition(";")[0] in (".", ".."):
                return "dot-segments are not allowed in the path"
    if decoded is not path and any(c in decoded for c in "\r\n\0"):
        return "control characters are not allowed in the path"
    return None


def reserved(raw_path: str) -> bool:
    """Whether a request target is under the proxy's own /_proxy/ prefix, in any case or
    encoding: such a request is never forwarded (it may carry the admin token)."""
    path = raw_path.partition("?")[0]
    for _ in range(8):  # as in unsafe_target: %255F and deeper
        if "%" not in path:
            break
        path = unquote(path)
    first = path.replace("\\", "/").lstrip("/").partition("/")[0]
    return first.partition(";")[0].lower() == "_proxy"
