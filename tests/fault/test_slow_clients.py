"""2,000 slow and half-open clients against a real `usage-proxy serve` process (accounting on
SQLite), with the client limits lowered so the test takes seconds:

- 500 send a request head a byte at a time, 500 send 60 KiB of headers and stop, 500 send a
  head and 10 bytes of a 1 MB body and stop, 500 connect and send nothing; and 20 more try
  to send 1 MiB of headers (1,080 lines), and are refused and cut off: 431 from the guard's
  total, or 400 from aiohttp's own count of header lines when those arrive in one read;
- while all 2,000 are open, normal requests are served;
- resident memory and file handles grow by a bounded amount (measured from /proc/PID), and
  once the timeouts have run, every slow connection is closed by the proxy and the file
  handles are back to where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from proxy.db.migrate import upgrade
from tests.fake_keys import fake_key
from tests.fault.bulk import BulkUpstream
from tests.fault.harness import MiB, ProxyProcess, fd_count, rss_bytes, settled_rss, wait_until

KEY = fake_key("slow", "QRST")
PER_KIND = 500
KINDS = ("trickle", "fat", "body", "silent")
OVER_CAP = 20
TIMEOUT = 10.0  # client_header_timeout and client_body_timeout, in seconds
RSS_BOUND = 160 * MiB  # 500 heads of 60 KiB are 30 MiB of bytes; parsers and buffers the rest
FAT_HEADERS = b"".join(b"X-Fat-%d: %s\r\n" % (i, b"f" * 1000) for i in range(60))  # 60 KiB
HEAD = f"POST /v1/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n".encode()


@pytest.fixture
async def bulk() -> AsyncIterator[BulkUpstream]:
    upstream = BulkUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def proxy(bulk: BulkUpstream, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    await upgrade(url)
    env = {
        "USAGE_PROXY_KEY_SECRET": "slow-secret",
        "USAGE_PROXY_CLIENT_HEADER_TIMEOUT": str(TIMEOUT),
        "USAGE_PROXY_CLIENT_BODY_TIMEOUT": str(TIMEOUT),
        "USAGE_PROXY_CLIENT_KEEPALIVE_TIMEOUT": str(TIMEOUT),
        "USAGE_PROXY_CLIENT_MAX_CONNECTIONS": "3000",
    }
    proc = ProxyProcess("slow", bulk.url, url, tmp_path, env=env)
    await proc.start()
    yield proc
    await proc.stop()


class _Slow:
    """One slow client: it sends what its kind sends, then holds the connection and reads
    until the proxy closes it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.closed_at: float | None = None
        self.answer = b""
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._trickler: asyncio.Task[None] | None = None

    async def open(self, port: int) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._task = asyncio.create_task(self._run(reader, self._writer))

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            if self.kind == "fat":
                writer.write(HEAD + FAT_HEADERS)
            elif self.kind == "body":
                writer.write(HEAD + b"Content-Length: 60000\r\n\r\n0123456789")
            elif self.kind == "over":
                writer.write(HEAD + FAT_HEADERS * 18)  # 1 MiB of headers
            elif self.kind == "trickle":
                self._trickler = asyncio.create_task(self._trickle(writer))
            while chunk := await reader.read(65536):
                self.answer += chunk
        self.closed_at = time.monotonic()

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(len(HEAD)):
                if self.closed_at is not None:
                    return
                writer.write(HEAD[i : i + 1])
                await asyncio.sleep(1.0)  # the pacing is the scenario

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        tasks = [t for t in (self._task, self._trickler) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _open(port: int, kinds: list[str]) -> list[_Slow]:
    clients = [_Slow(kind) for kind in kinds]
    for start in range(0, len(clients), 50):  # in batches: the listen backlog is 128
        await asyncio.gather(*(c.open(port) for c in clients[start : start + 50]))
    return clients


async def _served(proxy: ProxyProcess) -> float:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        url = f"{proxy.url}/v1/bulk?size=4096&type=json"
        async with http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status == 200
            assert len(await resp.read()) == 4096
    return time.monotonic() - started


async def test_2000_slow_clients_are_bounded_and_cut_off_while_others_are_served(
    proxy: ProxyProcess,
) -> None:
    await _served(proxy)  # warm up
    rss0, fds0 = await settled_rss(proxy.pid), fd_count(proxy.pid)

    opened = time.monotonic()
    clients = await _open(proxy.port, [k for k in KINDS for _ in range(PER_KIND)])
    over = await _open(proxy.port, ["over"] * OVER_CAP)
    try:
        await wait_until(
            lambda: all(c.closed_at for c in over), 10, what="the over-cap heads refused"
        )
        refused = (b"HTTP/1.1 431 ", b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")
        assert all(c.answer.startswith(refused) for c in over), [c.answer[:40] for c in over]
        # Every slow client is still open (no timeout yet), and a normal request is served.
        await wait_until(
            lambda: fd_count(proxy.pid) >= fds0 + len(clients), 30, what="all connections open"
        )
        latency = await _served(proxy)
        held = time.monotonic() - opened
        assert held < TIMEOUT, f"opening took {held:.1f} s: the timeouts ran before measuring"
        assert not any(c.closed_at for c in clients)
        growth = rss_bytes(proxy.pid) - rss0
        fds = fd_count(proxy.pid)
        print(
            f"\n{len(clients)} slow clients: proxy RSS +{growth / MiB:.1f} MiB "
            f"({growth / len(clients) / 1024:.1f} KiB each; bound {RSS_BOUND // MiB} MiB), "
            f"fds {fds0} -> {fds}; a normal request took {latency * 1000:.0f} ms"
        )
        assert growth < RSS_BOUND
        assert fds < fds0 + len(clients) + 50

        # The proxy cuts every one of them off once its timeout has run.
        await wait_until(
            lambda: all(c.closed_at for c in clients), 3 * TIMEOUT, what="slow clients cut off"
        )
        by_kind = {k: max(c.closed_at - opened for c in clients if c.kind == k) for k in KINDS}
        print("cut off after (s): " + ", ".join(f"{k} {v:.1f}" for k, v in by_kind.items()))
        answers = {c.answer[:12] for c in clients if c.kind == "fat"}
        assert answers == {b"HTTP/1.1 408"}, answers
        await wait_until(lambda: fd_count(proxy.pid) <= fds0 + 5, 15, what="proxy sockets closed")
        await _served(proxy)
    finally:
        for c in clients + over:
            await c.close()
