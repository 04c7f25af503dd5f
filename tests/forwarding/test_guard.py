"""proxy/forwarding/guard.py on real sockets: a bare proxy (no accounting) in front of the fake
upstream, with limits low enough to see each one act within a second or two."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from proxy.app import make_app, start_site
from proxy.settings import Settings
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key
from tests.waiting import free_port

KEY = fake_key("guard", "WXYZ")
LIMITS = {
    "client_header_timeout": 0.6,
    "client_body_timeout": 0.6,
    "client_keepalive_timeout": 0.6,
    "client_max_header_bytes": 16 * 1024,
    "client_max_connections": 8,
}
AUTH = f"Authorization: Bearer {KEY}\r\n"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def proxy(upstream: FakeUpstream) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    runners: list[web.AppRunner] = []

    async def start(**changes: object) -> int:
        port = free_port()
        settings = Settings(upstream=upstream.url, port=port, **{**LIMITS, **changes})
        runners.append(await start_site(make_app(settings, accounting=False), "127.0.0.1", port))
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the proxy sends until it closes the connection; fails after `timeout`."""
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def _code(data: bytes) -> str:
    return json.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"]


async def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_408(
    proxy: Callable[..., Awaitable[int]],
) -> None:
    port = await proxy(client_keepalive_timeout=60.0)
    reader, writer = await _connect(port)
    head = f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{AUTH}X-Slow: {'a' * 200}\r\n\r\n".encode()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(len(head)):
                writer.write(head[i : i + 1])
                await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    started = time.monotonic()
    try:
        data = await _until_closed(reader, 5.0)
    finally:
        sender.cancel()
        writer.close()
    assert _status(data) == 408, data
    assert _code(data) == "request_timeout"
    assert 0.5 < time.monotonic() - started < 3.0


async def test_a_connection_that_sends_nothing_is_closed(
    proxy: Callable[..., Awaitable[int]],
) -> None:
    port = await proxy(client_keepalive_timeout=60.0)
    reader, writer = await _connect(port)
    data = await _until_closed(reader, 5.0)
    writer.close()
    assert data == b"" or _status(data) == 408


async def test_headers_over_the_total_cap_get_431_though_each_line_is_small(
    proxy: Callable[..., Awaitable[int]], upstream: FakeUpstream
) -> None:
    port = await proxy()
    lines = "".join(f"X-Filler-{i}: {'b' * 500}\r\n" for i in range(40))  # 20 KiB, 40 lines
    reader, writer = await _connect(port)
    writer.write(f"GET /v1/echo HTTP/1.1\r\nHost: x\r\n{AUTH}{lines}\r\n".encode())
    data = await _until_closed(reader, 5.0)
    writer.close()
    assert _status(data) == 431, data[:200]
    assert _code(data) == "request_header_too_large"
    assert not upstream.requests


async def test_headers_under_the_cap_are_forwarded_also_in_one_read_with_a_large_body(
    proxy: Callable[..., Awaitable[int]], upstream: FakeUpstream
) -> None:
    port = await proxy()
    headers = {f"X-Filler-{i}": "c" * 500 for i in range(20)}  # 10 KiB
    headers["Authorization"] = f"Bearer {KEY}"
    body = b"d" * (256 * 1024)
    url = f"http://127.0.0.1:{port}/v1/echo-body"
    async with aiohttp.ClientSession() as http, http.post(url, headers=headers, data=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["bytes"] == len(body)


async def test_a_stalled_body_is_cut_off_and_a_slow_one_is_not(
    proxy: Callable[..., Awaitable[int]], upstream: FakeUpstream
) -> None:
    port = await proxy()
    head = (
        f"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\n{AUTH}"
        "Content-Type: application/octet-stream\r\nContent-Length: 20\r\n\r\n"
    ).encode()
    reader, writer = await _connect(port)
    writer.write(head + b"0123456789")  # half the body, then nothing
    started = time.monotonic()
    await _until_closed(reader, 5.0)
    writer.close()
    assert 0.5 < time.monotonic() - started < 3.0

    # One byte every 0.2 s: slower than the whole timeout, but never idle for it.
    reader, writer = await _connect(port)
    writer.write(head)
    for i in range(20):
        await asyncio.sleep(0.2)
        writer.write(b"%d" % (i % 10))
    data = await asyncio.wait_for(reader.readuntil(b"}"), 5.0)
    writer.close()
    assert _status(data) == 200
    assert b'"bytes": 20' in data


async def test_connections_beyond_the_cap_get_503_and_a_freed_slot_serves_again(
    proxy: Callable[..., Awaitable[int]],
) -> None:
    port = await proxy(client_header_timeout=60.0, client_keepalive_timeout=60.0)
    held = [await _connect(port) for _ in range(8)]
    reader, writer = await _connect(port)
    writer.write(f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode())
    data = await _until_closed(reader, 5.0)
    writer.close()
    assert _status(data) == 503, data
    assert _code(data) == "too_many_connections"

    held.pop()[1].close()
    url = f"http://127.0.0.1:{port}/v1/models"
    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # until the proxy has seen the close
            async with http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert resp.status == 200
    for _, w in held:
        w.close()


async def test_an_idle_kept_alive_connection_expires(
    proxy: Callable[..., Awaitable[int]],
) -> None:
    port = await proxy(client_header_timeout=60.0)
    reader, writer = await _connect(port)
    writer.write(f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    assert _status(head) == 200
    started = time.monotonic()
    await _until_closed(reader, 5.0)
    writer.close()
    assert time.monotonic() - started < 3.0
