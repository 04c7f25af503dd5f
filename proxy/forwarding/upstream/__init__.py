"""The upstream, behind one interface: a Transport sends a request and returns its Response
once the response's headers are in. Two transports: lean.py (a hand-written HTTP/1.1 client
for requests whose body is in hand: every API call) and session.py (aiohttp's ClientSession:
streamed uploads, a limited pool, everything when an egress proxy applies (egress.py: the lean
client cannot tunnel), and everything when compat.py finds aiohttp's internals changed). Both
raise aiohttp.ClientError for the forwarder to translate, and both reuse a connection only
after a clean exchange (checked.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Protocol

from aiohttp import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["Body", "Response", "Transport"]

Body = bytes | AsyncIterator[bytes] | None


class Response(Protocol):
    """The parts of aiohttp's ClientResponse the forwarder reads. The body must be read to its
    end and then `release()`d (the connection goes back to the pool), or `close()`d (it is
    dropped, which stops the upstream's generation)."""

    status: int
    reason: str | None
    headers: CIMultiDictProxy[str]
    content: StreamReader

    def release(self) -> object: ...

    def close(self) -> object: ...


class Transport(Protocol):
    def send(
        self, method: str, raw_path: str, headers: CIMultiDict[str], data: Body
    ) -> Awaitable[Response]:
        """Send `method` to the upstream's base path + `raw_path` (the client's request target,
        origin-form) with `headers` as given (nothing added but Host and a Content-Length)."""
        ...

    async def close(self) -> None: ...
