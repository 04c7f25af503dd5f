"""Limits on what a client connection may hold: time to send a request's head, pauses in a
request body, bytes of head per request, and connections at once.

aiohttp's server bounds each header line, but not a head that trickles in, a body that
stalls, the sum of a head's header lines, or the number of connections, and its keep-alive
timer also runs while a head arrives. `ConnectionGuard`, the protocol factory of the
listening socket, adds those at the edge:

- a head (request line and headers) must be complete `header_timeout` seconds after its first
  byte (for a new connection: after it connected), else 408 and the connection is closed;
- a kept-alive connection may stay idle between requests `keepalive_timeout` seconds;
- a request body may pause `body_timeout` seconds at most while the proxy waits for it (not
  while the proxy itself has stopped reading, because the upstream is slow), else the
  connection is closed;
- a head may have `max_header_bytes` in all (checked after each read, so one read more at
  most is held), else 431 and the connection is closed;
- beyond `max_connections` open connections, a new one gets 503 and is closed.

Deadlines are checked by one task every tick for all connections, so a timeout fires up to a
tick late, and a request costs no timer of its own (bench/README.md counts microseconds).
Fail closed: a client that breaks a limit loses its connection, never another client.

The aiohttp internals used here are imported from, and checked by, upstream/compat.py; where
they are not as expected, app.start_site serves through a plain TCPSite instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from aiohttp import StreamReader, web

from proxy.forwarding.upstream.compat import RawRequestMessage, RequestHandler

__all__ = ["ClientLimits", "ConnectionGuard", "GuardedSite"]

_log = logging.getLogger("proxy.guard")

_LINGER = 1.0  # seconds a refused connection is read (and discarded) before it is closed
_MAX_LINGERING = 256  # refused connections lingering at once; beyond, closed at once
_FD_RESERVE = 64  # file descriptors kept for the database, logs, the collector and listening


@dataclass(frozen=True)
class ClientLimits:
    header_timeout: float = 30.0
    body_timeout: float = 120.0
    keepalive_timeout: float = 75.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024


def fd_budget() -> int:
    """Client connections the open-file limit leaves room for: each may need an upstream
    connection too."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max((soft - _FD_RESERVE) // 2, 1)


def _error(status: str, code: str, message: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response with an OpenAI-style error body, for a connection aiohttp's
    request handling never sees (or no longer may answer)."""
    body = json.dumps(
        {"error": {"message": message, "type": "proxy_error", "param": None, "code": code}}
    ).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _error(
    "503 Service Unavailable",
    "too_many_connections",
    "the proxy has too many open connections; retry later",
    "Retry-After: 1\r\n",
)
_SLOW_HEAD = _error(
    "408 Request Timeout", "request_timeout", "the request's headers came too slowly"
)


class ConnectionGuard:
    """The protocol factory for the listening socket: one `_Guarded` aiohttp RequestHandler per
    connection within the limits, a `_Refused` one beyond. `start()` the deadline task with the
    site, `stop()` it after."""

    def __init__(self, server: web.Server, limits: ClientLimits, **handler_args: Any) -> None:
        self.limits = limits
        self.max_connections = min(limits.max_connections, fd_budget())
        if self.max_connections < limits.max_connections:
            _log.warning(
                "client_max_connections lowered from %d to %d: the open-file limit allows no more",
                limits.max_connections,
                self.max_connections,
            )
        self._server = server
        self._handler_args = {
            **handler_args,
            # Idle kept-alive connections are closed here (see _Guarded.check); aiohttp's own
            # timer is only a backstop, since it also runs while a head is arriving.
            "keepalive_timeout": limits.keepalive_timeout + limits.header_timeout + 1,
            # One line may be as long as the whole head may be; the sum is checked here.
            "max_line_size": limits.max_header_bytes,
            "max_field_size": limits.max_header_bytes,
        }
        self.connections: set[_Guarded] = set()
        self.lingering = 0
        self.refused = 0
        self._task: asyncio.Task[None] | None = None
        self._tick = max(0.05, min(1.0, limits.header_timeout / 4, limits.body_timeout / 4))

    def __call__(self) -> asyncio.Protocol:
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            return _Refused(self)
        return _Guarded(self._server, self, loop=asyncio.get_running_loop(), **self._handler_args)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="client-deadlines")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            for conn in list(self.connections):
                conn.check(now, limits)


def _head_size(message: object) -> int:
    """Bytes of a parsed request head as it came (near enough: the line's spaces and version)."""
    if not isinstance(message, RawRequestMessage):
        return 0  # a parse error: aiohttp answers it
    size = len(message.method) + len(message.path) + 14
    for name, value in message.raw_headers:
        size += len(name) + len(value) + 4
    return size


# An aiohttp without the class leaves the guard unusable, and compat.check() says so.
_Handler: Any = RequestHandler if RequestHandler is not None else object


class _Guarded(_Handler):
    """aiohttp's RequestHandler, plus the head and body bookkeeping the guard checks. It reads
    aiohttp's `_messages` (the parsed requests not yet handled) and `_request_in_progress`."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_bytes = 0
        self._head_since: float | None = None  # when the head being read began
        self._body: StreamReader | None = None  # a request body still to arrive
        self._reads = 0  # reads of body bytes, so the deadline task can see progress
        self._reads_seen = -1
        self._idle_since = 0.0
        self._refused = False
        self._quiet_since: float | None = None  # idle between requests since, as last seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.connections.add(self)
        # A connection that sends nothing is a head that never completes.
        self._head_since = self._loop.time()
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.connections.discard(self)
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the linger ends
        body = self._body
        if body is not None:
            self._reads += 1
        elif self._head_since is None:
            self._head_since = self._loop.time()
        messages = self._messages
        queued = len(messages)
        idle = self._waiter is not None and not self._waiter.done()
        super().data_received(data)
        cap = self._guard.limits.max_header_bytes
        if len(messages) != queued:
            # Heads are complete; what this read held beyond them is body or the next head.
            # Only a read this large can hold a head over the cap: measure the heads then.
            if self._head_bytes + len(data) > cap and any(
                _head_size(messages[i][0]) > cap for i in range(queued, len(messages))
            ):
                while len(messages) > queued:
                    messages.pop()
                if idle and self._task_handler is not None:
                    self._task_handler.cancel()  # woken for the heads just dropped
                self._too_large()
                return
            self._head_bytes = 0
            self._head_since = None
            payload = messages[-1][1]
            body = None if payload.is_eof() else payload
            if body is not None:
                self._idle_since = self._loop.time()
            self._body = body
        elif body is None:
            self._head_bytes += len(data)
            if self._head_bytes > cap:
                self._too_large()
                return
        if body is not None and body.is_eof():
            self._body = None

    def _too_large(self) -> None:
        cap = self._guard.limits.max_header_bytes
        self._refuse(
            _error(
                "431 Request Header Fields Too Large",
                "request_header_too_large",
                f"the request's headers exceed {cap} bytes in all",
            )
        )

    def check(self, now: float, limits: ClientLimits) -> None:
        """Called every tick by the guard: close this connection if it broke a deadline."""
        if self._refused:
            return
        body = self._body
        if body is not None:
            transport = self.transport
            if body.is_eof():
                self._body = None
            elif self._reads != self._reads_seen or transport is None or not transport.is_reading():
                # Progress, or the proxy stopped reading (the upstream is slow): not idle.
                self._reads_seen = self._reads
                self._idle_since = now
            elif now - self._idle_since > limits.body_timeout:
                _log.info("client sent no body bytes for %g s: closed", limits.body_timeout)
                self.force_close()
            return
        since = self._head_since
        if self._request_in_progress:
            self._quiet_since = None  # pipelined heads wait while a request is handled
        elif since is not None:
            self._quiet_since = None
            if now - since > limits.header_timeout:
                self._refuse(_SLOW_HEAD)
        elif self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since > limits.keepalive_timeout:
            self.force_close()  # idle between requests: nothing to answer

    def _refuse(self, response: bytes) -> None:
        transport = self.transport
        self._refused = True
        if transport is None:
            return
        if not self._request_in_progress and not self._messages:
            transport.write(response)
        _linger(self._guard, transport, self.force_close)


def _linger(guard: ConnectionGuard, transport: asyncio.BaseTransport, close: Any) -> None:
    """Close after a moment of reading and dropping what the client still sends: closing a
    socket with unread input resets it, and the client would lose the answer written."""
    if guard.lingering >= _MAX_LINGERING:
        close()
        return
    guard.lingering += 1

    def done() -> None:
        guard.lingering -= 1
        close()

    asyncio.get_running_loop().call_later(_LINGER, done)


class _Refused(asyncio.Protocol):
    """A connection beyond max_connections: 503, then closed."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        _linger(self._guard, transport, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # dropped

    def eof_received(self) -> bool:
        return False  # the client is done: close now


class GuardedSite(web.TCPSite):
    """aiohttp's TCPSite with a ConnectionGuard as the protocol factory."""

    __slots__ = ("guard",)

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limits: ClientLimits,
        **handler_args: Any,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        assert runner.server is not None
        self.guard = ConnectionGuard(runner.server, limits, **handler_args)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
        self.guard.start()

    async def stop(self) -> None:
        await self.guard.stop()
        await super().stop()
