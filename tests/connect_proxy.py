"""A forward (egress) proxy on loopback, as a corporate one behaves: CONNECT tunnels for https
URLs, and absolute-URI forwarding (`GET http://host/path HTTP/1.1`) for http ones. It counts
what it did and where to, and when given credentials it answers 407 to a request without the
matching Proxy-Authorization, as Squid does. Plain asyncio streams, so the tests see bytes as
they go on the wire and no HTTP library stands in between.

    async with ConnectProxy(user="u", password="p") as egress:
        egress.url      # http://u:p@127.0.0.1:PORT
        egress.tunnels  # CONNECTs it made
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections import Counter
from typing import Any

__all__ = ["ConnectProxy"]

_HEAD_LIMIT = 64 * 1024
_HOP = (b"proxy-authorization", b"proxy-connection", b"connection", b"keep-alive")


class ConnectProxy:
    def __init__(self, *, user: str | None = None, password: str | None = None) -> None:
        self.user, self.password = user, password
        self.tunnels = 0
        self.forwarded = 0
        self.refused = 0
        self.targets: Counter[str] = Counter()  # host:port reached, by tunnel or forwarding
        self.paths: list[str] = []  # of the requests forwarded by absolute URI
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        """The proxy's URL, with its credentials when it requires them."""
        auth = f"{self.user}:{self.password}@" if self.user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    @property
    def bare_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if self.user is None:
            return True
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return headers.get(b"proxy-authorization", b"").decode() == f"Basic {token}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            return
        line, *rest = head[:-4].split(b"\r\n")
        method, target, version = line.split(b" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in rest)}
        if not self._authorized(headers):
            self.refused += 1
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="egress"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self.tunnels += 1
            self.targets[target.decode()] += 1
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _pipe_both(reader, writer, up_reader, up_writer)
            return
        # Absolute-URI forwarding: one request per connection, closed after (a proxy may).
        if not target.startswith(b"http://"):
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        authority, slash, path = target[len(b"http://") :].partition(b"/")
        host, _, port = authority.decode().rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port or 80))
        self.forwarded += 1
        self.targets[authority.decode()] += 1
        self.paths.append((slash + path).decode())
        kept = [h for h in rest if h.partition(b":")[0].strip().lower() not in _HOP]
        up_writer.write(
            b"\r\n".join([method + b" " + slash + path + b" " + version, *kept])
            + b"\r\nConnection: close\r\n\r\n"
        )
        await _pipe_both(reader, writer, up_reader, up_writer)


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()
