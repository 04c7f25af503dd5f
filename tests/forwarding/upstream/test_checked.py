"""proxy/forwarding/upstream/checked.py: a connection goes back to its pool only after a clean
exchange.
Each test runs a scripted, non-compliant upstream on a real socket behind a bare proxy, once
with the lean client (upstream_limit 0) and once with aiohttp's pool (a limit), and sends
requests one after another, each of which must get its own answer."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from proxy.app import make_app, start_site
from proxy.settings import Settings
from tests.waiting import free_port, wait_until

POOLS = [pytest.param(0, id="lean-client"), pytest.param(4, id="aiohttp-pool")]


@dataclass
class Script:
    """How the scripted upstream answers a head: `early` answers without reading the body and
    reads nothing more for a moment (its receive buffer is small, so the proxy's write backs
    up); `leftover` is written right after each answer's body; `late` is written a moment
    after it, on a connection the proxy then holds idle."""

    early: bool = False
    leftover: bytes = b""
    late: bytes = b""
    connections: int = 0
    late_sent: int = 0
    answered: list[str] = field(default_factory=list)


class _Upstream(asyncio.Protocol):
    def __init__(self, script: Script) -> None:
        self._script = script
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._script.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            head, self._buf = self._buf[:end], self._buf[end + 4 :]
            self._answer(head)

    def _answer(self, head: bytes) -> None:
        # Every head is answered with the path of its request line, whatever came before it.
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        path = parts[1].decode("latin-1") if len(parts) == 3 else "?"
        self._script.answered.append(path)
        body = json.dumps({"path": path}).encode()
        transport = self._transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s%s" % (len(body), body, self._script.leftover)
        )
        loop = asyncio.get_running_loop()
        if self._script.early:
            transport.pause_reading()
            loop.call_later(0.3, self._resume)
        if self._script.late:
            loop.call_later(0.05, self._late)

    def _resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _late(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._script.late)
            self._script.late_sent += 1


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], str]]:
    servers: list[asyncio.AbstractServer] = []
    loop = asyncio.get_running_loop()

    async def start(script: Script) -> str:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited when accepted
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(lambda: _Upstream(script), sock=sock)
        servers.append(server)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


@pytest.fixture
async def proxy_for() -> AsyncIterator[Callable[[str, int], str]]:
    runners: list[web.AppRunner] = []

    async def start(upstream: str, limit: int) -> str:
        port = free_port()
        settings = Settings(upstream=upstream, port=port, upstream_limit=limit, upstream_timeout=5)
        runners.append(await start_site(make_app(settings, accounting=False), "127.0.0.1", port))
        return f"http://127.0.0.1:{port}"

    yield start  # type: ignore[misc]
    for runner in runners:
        await runner.cleanup()


async def _paths(http: aiohttp.ClientSession, url: str, n: int, **kwargs: object) -> list[str]:
    got = []
    for i in range(n):
        async with http.post(f"{url}/v1/r{i}", **kwargs) as resp:  # type: ignore[arg-type]
            assert resp.status == 200, await resp.text()
            got.append((await resp.json())["path"])
    return got


@pytest.mark.parametrize("limit", POOLS)
async def test_an_answer_before_the_body_was_taken_closes_the_connection(
    scripted: Callable, proxy_for: Callable, limit: int
) -> None:
    script = Script(early=True)
    proxy = await proxy_for(await scripted(script), limit)
    # 60 KiB: read whole by the proxy (the lean client's case), more than the upstream takes.
    body = json.dumps({"pad": "p" * 60_000}).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        got = await _paths(http, proxy, 5, data=body, headers=headers)
    assert got == [f"/v1/r{i}" for i in range(5)]
    assert script.connections == 5


@pytest.mark.parametrize("limit", POOLS)
async def test_an_answer_before_a_streamed_body_was_sent_closes_the_connection(
    scripted: Callable, proxy_for: Callable, limit: int
) -> None:
    script = Script(early=True)
    proxy = await proxy_for(await scripted(script), limit)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"s" * 65536

    async with aiohttp.ClientSession() as http:
        got = [
            (await _paths(http, proxy, 1, data=body(), headers={"Content-Type": "text/plain"}))[0]
            for _ in range(3)
        ]
    assert got == ["/v1/r0"] * 3
    assert script.connections == 3


@pytest.mark.parametrize("limit", POOLS)
async def test_bytes_after_the_content_length_close_the_connection(
    scripted: Callable, proxy_for: Callable, limit: int
) -> None:
    script = Script(leftover=b"HTTP/1.1 200 OK\r\nCont")
    proxy = await proxy_for(await scripted(script), limit)
    async with aiohttp.ClientSession() as http:
        got = await _paths(http, proxy, 5)
    assert got == [f"/v1/r{i}" for i in range(5)]
    assert script.connections == 5


@pytest.mark.parametrize("limit", POOLS)
async def test_bytes_on_an_idle_connection_close_it(
    scripted: Callable, proxy_for: Callable, limit: int
) -> None:
    script = Script(late=b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"path": "late"}')
    proxy = await proxy_for(await scripted(script), limit)
    got = []
    async with aiohttp.ClientSession() as http:
        for i in range(4):
            got += await _paths(http, proxy, 1)
            await wait_until(lambda i=i: script.late_sent > i, 5, what="the late bytes sent")
    assert got == ["/v1/r0"] * 4
    assert script.connections == 4


@pytest.mark.parametrize("limit", POOLS)
async def test_clean_exchanges_reuse_the_connection(
    scripted: Callable, proxy_for: Callable, limit: int
) -> None:
    script = Script()
    proxy = await proxy_for(await scripted(script), limit)
    async with aiohttp.ClientSession() as http:
        got = await _paths(http, proxy, 5, data=b"{}", headers={"Content-Type": "application/json"})
    assert got == [f"/v1/r{i}" for i in range(5)]
    assert script.connections == 1
