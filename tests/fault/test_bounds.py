"""Resource bounds of a real `usage-proxy serve` process (with accounting on SQLite), measured
from /proc/PID/status (VmRSS):

- 500 concurrent idle event streams grow the proxy's resident memory by less than 64 MiB, and
  every upstream stream is released when its client goes away;
- slow clients (a 4 KiB receive buffer, reading 1 byte per second) of 256 MiB bodies, one each
  of octet-stream, JSON and event-stream, grow it by less than 64 MiB: the upstream's writes
  stall (backpressure) after less than 64 MiB each, instead of the proxy buffering the body;
- the copy of an event stream kept for observers stays near its cap (max_observed_body) also
  when the stream is made of many small events.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from proxy.db.migrate import upgrade
from tests.fake_keys import fake_key
from tests.fault.bulk import BulkUpstream
from tests.fault.harness import (
    MiB,
    ProxyProcess,
    fd_count,
    rss_bytes,
    settled_rss,
    wait_until,
)

KEY = fake_key("bounds", "GHJK")
IDLE_STREAMS = 500
IDLE_RSS_BOUND = 64 * MiB
SLOW_BODY = 256 * MiB + 1
SLOW_RSS_BOUND = 64 * MiB
SLOW_SENT_BOUND = 64 * MiB
STALL = 2.0  # seconds without an upstream write that count as stalled


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
    proc = ProxyProcess(
        "bounds", bulk.url, url, tmp_path, env={"USAGE_PROXY_KEY_SECRET": "bounds-secret"}
    )
    await proc.start()
    yield proc
    await proc.stop()


def _request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    ).encode()


async def _idle_stream(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("/v1/quiet"))
    seen = b""
    while b"data: ready" not in seen:
        chunk = await asyncio.wait_for(reader.read(4096), 30)
        assert chunk, f"the stream closed early: {seen!r}"
        seen += chunk
    return writer


async def _open_idle(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, n, 50):  # in batches: the listen backlog is 128
        writers += await asyncio.gather(*(_idle_stream(port) for _ in range(min(50, n - start))))
    return writers


async def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()


async def test_500_idle_streams_hold_memory_and_are_released(
    bulk: BulkUpstream, proxy: ProxyProcess
) -> None:
    await _close_all(await _open_idle(proxy.port, 20))  # warm up the code paths
    await wait_until(lambda: bulk.open_quiet == 0, 15, what="warm-up streams released")
    rss0, fds0 = await settled_rss(proxy.pid), fd_count(proxy.pid)

    writers = await _open_idle(proxy.port, IDLE_STREAMS)
    await wait_until(lambda: bulk.open_quiet == IDLE_STREAMS, 15, what="all streams upstream")
    growth = rss_bytes(proxy.pid) - rss0
    fds = fd_count(proxy.pid)
    print(
        f"\n{IDLE_STREAMS} idle streams: proxy RSS +{growth / MiB:.1f} MiB "
        f"({growth / IDLE_STREAMS / 1024:.1f} KiB each; bound {IDLE_RSS_BOUND // MiB} MiB), "
        f"fds {fds0} -> {fds}"
    )
    assert growth < IDLE_RSS_BOUND
    assert fds >= fds0 + 2 * IDLE_STREAMS  # a client and an upstream socket each

    await _close_all(writers)
    await wait_until(lambda: bulk.open_quiet == 0, 30, what="upstream streams released")
    await wait_until(lambda: fd_count(proxy.pid) <= fds0 + 5, 30, what="proxy sockets closed")


async def _slow_client(port: int, kind: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, _request(f"/v1/bulk?size={SLOW_BODY}&type={kind}"))
    return sock


async def _one_byte_per_second(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while await loop.sock_recv(sock, 1):
        await asyncio.sleep(1.0)  # the pacing is the scenario: a reader of 1 byte/s


async def test_slow_clients_stall_the_upstream_instead_of_filling_memory(
    bulk: BulkUpstream, proxy: ProxyProcess
) -> None:
    async with aiohttp.ClientSession() as http:  # warm up: each kind once, read in full
        for kind in ("octet", "json", "sse"):
            url = f"{proxy.url}/v1/bulk?size={MiB}&type={kind}"
            async with http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as resp:
                assert len(await resp.read()) == MiB
    rss0 = await settled_rss(proxy.pid)
    bulk.streams.clear()

    socks = [await _slow_client(proxy.port, kind) for kind in ("octet", "json", "sse")]
    readers = [asyncio.create_task(_one_byte_per_second(s)) for s in socks]
    try:

        def stalled() -> bool:
            return len(bulk.streams) == 3 and all(
                s.sent > 0 and s.stalled_for() > STALL for s in bulk.streams
            )

        await wait_until(stalled, 60, interval=0.1, what="the upstream's writes to stall")
        growth = rss_bytes(proxy.pid) - rss0
        sent = {s.kind: s.sent for s in bulk.streams}
        print(
            f"\nslow readers of {SLOW_BODY // MiB} MiB: upstream stalled after "
            + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in sent.items())
            + f"; proxy RSS +{growth / MiB:.1f} MiB (bound {SLOW_RSS_BOUND // MiB} MiB)"
        )
        assert not any(s.finished for s in bulk.streams)
        assert max(sent.values()) < SLOW_SENT_BOUND
        assert growth < SLOW_RSS_BOUND
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    # The proxy drops the upstream connection once its client is gone.
    await wait_until(lambda: all(s.ended for s in bulk.streams), 30, what="upstream released")


TINY_CAP = 512 * 1024
TINY_BODY = 4 * MiB  # 466,000 events, each 1 byte of data (under TINY_CAP in all)
TINY_RSS_BOUND = 16 * MiB


async def test_small_events_keep_the_observed_copy_near_its_cap(
    bulk: BulkUpstream, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    await upgrade(url)
    env = {"USAGE_PROXY_KEY_SECRET": "bounds-secret", "USAGE_PROXY_MAX_OBSERVED_BODY": "524288"}
    proxy = ProxyProcess("tiny", bulk.url, url, tmp_path, env=env)
    await proxy.start()
    try:
        rss0 = await settled_rss(proxy.pid)
        peak = rss0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes(proxy.pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            async with aiohttp.ClientSession() as http:
                url = f"{proxy.url}/v1/bulk?size={TINY_BODY}&type=tiny"
                async with http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as resp:
                    assert len(await resp.read()) == TINY_BODY
            peak = max(peak, await settled_rss(proxy.pid))
        finally:
            sampler.cancel()
    finally:
        await proxy.stop()
    growth = peak - rss0
    print(
        f"\n{TINY_BODY // MiB} MiB of 9-byte events, observed copy capped at {TINY_CAP // 1024} "
        f"KiB: proxy RSS +{growth / MiB:.1f} MiB at its peak (bound {TINY_RSS_BOUND // MiB} MiB)"
    )
    assert growth < TINY_RSS_BOUND
