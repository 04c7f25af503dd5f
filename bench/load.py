"""Load generators: wrk for small requests (latency and throughput), and aiohttp clients that
keep connections alive for SSE pacing, 256 MiB transfers and fixed lists of requests."""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

__all__ = [
    "CHAT_BODY",
    "HEADERS",
    "download",
    "fire",
    "percentile",
    "require_wrk",
    "sse_delays",
    "upload",
    "wrk",
]

CHAT_BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-0123456789abcd"}
_MIB = 1 << 20
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,'
    .. '"mean_us":%%.1f,"max_us":%%d,"errors":%%d,"non_2xx":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "bench: wrk is not installed; install it first: "
            "apt-get update && apt-get install -y wrk"
        )
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on sorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def wrk(url: str, *, connections: int, seconds: float) -> dict[str, Any]:
    """POST the small chat completion to `url` for `seconds` over `connections` keep-alive
    connections (one wrk thread). Returns requests, rps, p50_ms, p99_ms, errors."""
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in HEADERS.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_WRK_SCRIPT % {"body": CHAT_BODY, "headers": headers})
        script = fh.name
    try:
        argv = [
            require_wrk(),
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
        ]
        done = subprocess.run(
            [*argv, "-s", script, url], capture_output=True, text=True, timeout=seconds + 30
        )
    finally:
        Path(script).unlink(missing_ok=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "requests": r["requests"],
        "seconds": r["duration_us"] / 1e6,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "mean_ms": r["mean_us"] / 1000,
        "errors": r["errors"] + r["non_2xx"],
    }


async def sse_delays(base: str, *, events: int, interval_ms: float) -> list[float]:
    """Stream `events` SSE chunks paced `interval_ms` apart; per event, milliseconds from the
    upstream's write (its embedded CLOCK_MONOTONIC stamp) to this client's read."""
    url = f"{base}/v1/chat/completions?n={events}&interval_ms={interval_ms:g}"
    body = CHAT_BODY[:-1] + ',"stream":true}'
    delays: list[float] = []
    buf = b""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=HEADERS) as resp,
    ):
        resp.raise_for_status()
        while True:
            chunk = await resp.content.readany()
            arrived = time.monotonic_ns()
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n\n")
            for event in complete:
                start = event.find(b'"t":')
                if start >= 0:
                    stamp = int(event[start + 4 : event.index(b",", start)])
                    delays.append((arrived - stamp) / 1e6)
    return delays


async def download(base: str, mib: int) -> float:
    """GET a `mib` MiB file and drop it; returns MB/s."""
    t0 = time.perf_counter()
    size = 0
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        url = f"{base}/v1/files/file-bench/content?mib={mib}"
        async with session.get(url, headers=HEADERS) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_chunked(_MIB):
                size += len(chunk)
    if size != mib * _MIB:
        raise RuntimeError(f"download got {size} bytes, expected {mib * _MIB}")
    return size / 1e6 / (time.perf_counter() - t0)


async def upload(base: str, mib: int) -> float:
    """POST a `mib` MiB multipart-typed body, streamed from one reusable buffer; MB/s."""
    block = b"u" * _MIB

    async def body():
        for _ in range(mib):
            yield block

    headers = {
        "Authorization": HEADERS["Authorization"],
        "Content-Type": "multipart/form-data; boundary=bench",
        "Content-Length": str(mib * _MIB),
    }
    t0 = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=300)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{base}/v1/files", data=body(), headers=headers) as resp,
    ):
        got = (await resp.json())["bytes"]
    if got != mib * _MIB:
        raise RuntimeError(f"upload delivered {got} bytes, expected {mib * _MIB}")
    return mib * _MIB / 1e6 / (time.perf_counter() - t0)


async def fire(
    urls: Sequence[str],
    *,
    concurrency: int,
    method: str = "GET",
    body: str | None = None,
    deadline: float = 120.0,
) -> dict[str, Any]:
    """Send each URL once over `concurrency` keep-alive connections; bounded by `deadline`
    seconds. Returns ok, failed, seconds and the median latency in ms."""
    queue = list(reversed(urls))
    latencies: list[float] = []
    failed = 0
    stop_at = time.monotonic() + deadline
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while queue and time.monotonic() < stop_at:
            url = queue.pop()
            t = time.perf_counter()
            async with session.request(method, url, data=body, headers=HEADERS) as resp:
                await resp.read()
                if resp.status != 200:
                    failed += 1
            latencies.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    return {
        "ok": len(latencies) - failed,
        "failed": failed + len(queue),
        "seconds": seconds,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
    }
