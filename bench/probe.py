"""A paced, serial latency probe in its own process, so that the benchmark's other clients
never delay it: one keep-alive connection per URL, and every --interval-ms one small chat
completion to each URL in turn (the proxy and the upstream directly, say, so that a slowdown
of the upstream itself can be told apart from one the proxy adds).

Prints one JSON list of [sent_at_monotonic_ns, latency_ns, url_index] when --duration ends or
on SIGTERM, whichever comes first. CLOCK_MONOTONIC is shared by the machine's processes, so
the benchmark can cut the samples into phases.

Run: python bench/probe.py URL [URL ...] --interval-ms 5 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time

import aiohttp

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-probe-0001"}


async def probe(urls: list[str], interval: float, duration: float) -> list[list[int]]:
    samples: list[list[int]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    deadline = time.monotonic() + duration
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in urls]
    try:
        while not stop.is_set() and time.monotonic() < deadline and len(samples) < 1_000_000:
            began = time.monotonic_ns()
            for i, (url, session) in enumerate(zip(urls, sessions, strict=True)):
                sent = time.monotonic_ns()
                async with session.post(url, data=BODY, headers=HEADERS) as resp:
                    await resp.read()
                samples.append([sent, time.monotonic_ns() - sent, i])
            pause = interval - (time.monotonic_ns() - began) / 1e9
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
    finally:
        for session in sessions:
            await session.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="+")
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    run = uvloop.run if uvloop is not None else asyncio.run
    samples = run(probe(args.url, args.interval_ms / 1000, args.duration))
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
