"""HTTP/1.1 exchanges with the upstream over kept-alive connections, for requests whose body
is already in hand (or that have none): every small API call.

aiohttp's ClientSession costs about half of a bare aiohttp pass-through's CPU per small
request (timers, traces, cookie and redirect handling, a ClientRequest and a ClientResponse
of ~40 attributes, a task to write the body): 108 against 51 us per request through a
pass-through that uses this instead (bench/README.md). Here the request line, headers and body
go out in one write, and the response is read with aiohttp's own protocol and C parser
(`ResponseHandler`), so the forwarder gets the same `StreamReader` body and the same errors
(`aiohttp.ClientError`) as from a ClientSession. Requests whose body streams, or that go
through a limited pool or an egress proxy, keep using the ClientSession (session.py).
(Expect: 100-continue is met by the proxy's server and never forwarded, so it needs no special
path here.) Every
connection is a CheckedConnection (checked.py), reused only after a clean exchange. The
aiohttp internals used here come from compat.py, which checks them at start-up.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Awaitable, Iterable

import aiohttp
from aiohttp import StreamReader, hdrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.forwarding.upstream import Body
from proxy.forwarding.upstream.checked import CheckedConnection
from proxy.forwarding.upstream.compat import (
    HttpProcessingError,
    ResponseHandler,
    connection_key,
)

__all__ = ["UpstreamClient", "UpstreamResponse"]

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
# What aiohttp's ClientSession does by default, so traffic is the same either way.
_KEEPALIVE = 15.0  # seconds an idle connection is kept (TCPConnector's keepalive_timeout)
_READ_BUFSIZE = 2**16
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no Content-Length: 0
# RFC 9112 section 9.3.1: a request on a kept-alive connection that the server closed
# before answering may be sent again if it is idempotent (aiohttp does the same).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def default_ssl_context() -> ssl.SSLContext:
    """Verified TLS as aiohttp's connector makes it: system trust store, HTTP/1.1 by ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    return context


class UpstreamResponse:
    """The parts of aiohttp's ClientResponse the forwarder reads. The body must be read to
    its end and then `release()`d, which returns the connection to the pool, or `close()`d,
    which drops it (a client that went away stops the upstream's generation)."""

    __slots__ = ("_client", "_conn", "content", "headers", "reason", "status")

    def __init__(
        self,
        client: UpstreamClient,
        conn: ResponseHandler,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
    ) -> None:
        self._client = client
        self._conn: ResponseHandler | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content

    def release(self) -> None:
        """Back to the pool, if the exchange ended cleanly (checked.py); else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._put(conn, self.content.at_eof())

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._drop(conn)


class UpstreamClient:
    """One upstream (scheme, host, port), a LIFO pool of idle connections to it, unbounded
    like the forwarder's default ClientSession. Not for a pool with a connection limit."""

    def __init__(
        self,
        upstream: URL,
        *,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        keepalive: float = _KEEPALIVE,
        base_path: str = "",
    ) -> None:
        if upstream.scheme not in ("http", "https") or not upstream.raw_host:
            raise ValueError(f"not an http(s) URL with a host: {upstream}")
        self._origin = upstream.origin()
        self._base_path = base_path
        self._host = upstream.host or upstream.raw_host
        self._port = upstream.port or (443 if upstream.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if upstream.scheme == "https":
            self._ssl = ssl_context or default_ssl_context()
        self._host_line = f"Host: {upstream.host_port_subcomponent}\r\n"
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        # What aiohttp's connect errors carry, so they read the same.
        self._key = connection_key(self._host, self._port, self._ssl is not None)
        self._idle: collections.deque[tuple[ResponseHandler, float]] = collections.deque()
        self._busy: set[ResponseHandler] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def send(
        self, method: str, raw_path: str, headers: CIMultiDict[str], data: Body
    ) -> Awaitable[UpstreamResponse]:
        """The Transport's `send`: `request` to the base path + `raw_path`, whose body is in
        hand (bytes or None). Not a coroutine of its own: `request`'s is awaited directly."""
        return self.request(
            method,
            # A fragment is the client's own: it never goes on the wire (RFC 9110 4.2.4).
            self._base_path + raw_path.partition("#")[0],
            headers.items(),
            data,  # type: ignore[arg-type]
            has_length=hdrs.CONTENT_LENGTH in headers,
        )

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        *,
        has_length: bool,
    ) -> UpstreamResponse:
        """Send one request and return once the response's headers are in. `target` is the
        request target as sent (origin-form); `headers` go out as given, after Host, and
        `has_length` says whether they hold a Content-Length already; if not, one is added
        for a body, and `0` for a method that expects one. Header values come from aiohttp's
        server parser, which refuses CR and LF, or from the proxy itself.

        Raises aiohttp.ClientError (connect failures as ClientConnectorError, a connect
        timeout as ConnectionTimeoutError, a broken response as ClientOSError,
        ServerDisconnectedError or a parser error) as a ClientSession would; a cancellation
        drops the connection."""
        lines = [method, " ", target, " HTTP/1.1\r\n", self._host_line]
        for name, value in headers:
            lines += (name, ": ", value, "\r\n")
        if not has_length:
            if body is not None:
                lines += ("Content-Length: ", str(len(body)), "\r\n")
            elif method not in _NO_BODY_METHODS:
                lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        # surrogateescape: a header value aiohttp's server decoded from non-UTF-8 bytes goes
        # out as the same bytes.
        data = "".join(lines).encode("utf-8", "surrogateescape")
        if body:
            data += body
        retry = method in _IDEMPOTENT
        while True:
            conn, reused = await self._get()
            try:
                return await self._exchange(conn, method, target, data)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                self._drop(conn)
                if not (retry and reused):
                    raise
                retry = False
            except BaseException:
                self._drop(conn)
                raise

    async def _exchange(
        self, conn: ResponseHandler, method: str, target: str, data: bytes
    ) -> UpstreamResponse:
        conn.set_response_params(
            skip_payload=method == "HEAD",
            read_until_eof=True,
            auto_decompress=False,
            read_bufsize=_READ_BUFSIZE,
        )
        transport = conn.transport
        if transport is None:
            raise aiohttp.ServerDisconnectedError()
        transport.write(data)
        while True:
            try:
                message, payload = await conn.read()
            except HttpProcessingError as exc:
                # What aiohttp's ClientResponse raises for a response it cannot parse.
                url = self._origin.with_path(target.partition("?")[0], encoded=True)
                info = aiohttp.RequestInfo(url, method, _NO_HEADERS, url)
                raise aiohttp.ClientResponseError(
                    info, (), status=exc.code, message=exc.message, headers=exc.headers
                ) from exc
            # Interim 1xx responses are skipped, as aiohttp's ClientResponse does; a 101
            # cannot come: Upgrade is a hop-by-hop header the forwarder drops.
            if not 100 <= message.code <= 199 or message.code == 101:
                break
        return UpstreamResponse(self, conn, message.code, message.reason, message.headers, payload)

    async def _get(self) -> tuple[ResponseHandler, bool]:
        """A connection: the most recently used idle one still open, else a new one; and
        whether it was used before."""
        if self._closed:
            raise aiohttp.ClientConnectionError("the upstream client is closed")
        idle = self._idle
        if idle:
            self._close_stale()
            while idle:
                conn = idle.pop()[0]
                if conn.is_connected() and not conn.should_close:
                    self._busy.add(conn)
                    return conn, True
                conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: CheckedConnection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"Connection timeout to host {self._host}:{self._port}"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise aiohttp.ClientConnectorCertificateError(self._key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(self._key, exc) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(self._key, exc) from exc
        self._busy.add(conn)
        return conn, False

    def _drop(self, conn: ResponseHandler) -> None:
        self._busy.discard(conn)
        conn.close()

    def _put(self, conn: ResponseHandler, complete: bool) -> None:
        self._busy.discard(conn)
        if self._closed or not complete or conn.should_close or not conn.is_connected():
            conn.close()
            return
        self._idle.append((conn, time.monotonic()))
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self._keepalive, self._sweep_idle)

    def _close_stale(self) -> None:
        idle, stale = self._idle, time.monotonic() - self._keepalive
        while idle and idle[0][1] <= stale:
            idle.popleft()[0].close()

    def _sweep_idle(self) -> None:
        # Idle connections are closed after `keepalive` seconds even when no request comes to
        # find them, as aiohttp's connector does: one timer per period, not per connection.
        self._sweep = None
        self._close_stale()
        if self._idle:
            wait = self._idle[0][1] + self._keepalive - time.monotonic()
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(max(wait, 0.0), self._sweep_idle)

    async def close(self) -> None:
        """Close every connection, idle or in use; later requests fail."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.pop()[0].close()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
