"""Issue #19's memory figure: the PSS of `usage-proxy serve` (the serving process and its
collector process, pages they share counted once) when idle after start, then after the
serving process has estimated a streamed chat completion, then after the collector process
has estimated an Assistants run (each loads the tokenizer then). Prints a table and a JSON
line. Run: .venv/bin/python bench/memory.py (about 20 s; no wrk needed).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from load import HEADERS
from procs import Proc, descendants, free_port, status_kib
from run import HERE, PY, proxy_proc

__all__ = ["measure"]

_STREAM_BODY = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise KeyError("Pss")


def _figures(proxy: Proc) -> dict[str, float]:
    proxy.settle()
    kids = descendants(proxy.pid)
    return {
        "pss_mib": proxy.pss_mib(),
        "serving_pss_mib": _pss_kib(proxy.pid) / 1024,
        "collector_pss_mib": sum(_pss_kib(k) for k in kids) / 1024,
        "serving_rss_mib": status_kib(proxy.pid, "VmRSS") / 1024,
        "collector_rss_mib": proxy.children_rss_mib(),
    }


async def _ready(proxy: Proc, timeout: float = 30.0) -> None:
    """Until health says the collector process runs."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{proxy.url}/_proxy/health") as resp:
                if (await resp.json()).get("collector", {}).get("ok"):
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the collector process did not start")


async def _stream_chat(proxy: Proc) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/v1/chat/completions?n=3&interval_ms=1", data=_STREAM_BODY, headers=HEADERS
        ) as resp,
    ):
        await resp.read()


async def _collect_one_run(fake: Proc, proxy: Proc, timeout: float = 60.0) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/bench/runs", json={"n": 1}) as resp:
            [[thread, run]] = await resp.json()
        async with session.get(
            f"{proxy.url}/v1/threads/{thread}/runs/{run}", headers=HEADERS
        ) as resp:
            await resp.read()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with session.get(f"{fake.url}/bench/stats") as resp:
                if (await resp.json())["messages"] >= 1:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the run was not collected")


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="usage-proxy-memory-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        fake = Proc("fake", [PY, str(HERE / "fake_upstream.py"), "--port", str(port)], port)
        proxy = proxy_proc("proxy", fake.url, tmp / "proxy.sqlite", tmp)
        try:
            fake.start()
            proxy.start()
            asyncio.run(_ready(proxy))
            out = {"idle": _figures(proxy)}
            asyncio.run(_stream_chat(proxy))
            out["after a streamed chat"] = _figures(proxy)
            asyncio.run(_collect_one_run(fake, proxy))
            out["after a collected run"] = _figures(proxy)
            return out
        finally:
            proxy.stop()
            fake.stop()


def main() -> int:
    res = measure()
    print("| moment | PSS both (MiB) | serving PSS | collector PSS | serving RSS | collector RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for moment, f in res.items():
        print(
            f"| {moment} | {f['pss_mib']:.1f} | {f['serving_pss_mib']:.1f} | "
            f"{f['collector_pss_mib']:.1f} | {f['serving_rss_mib']:.1f} | "
            f"{f['collector_rss_mib']:.1f} |"
        )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
