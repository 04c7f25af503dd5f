"""Accounting figures: how fast finished runs go from observed to collected to recorded, whether
chat completions become rows, how a burst of finished runs affects forwarding, and the
estimator alone. The database is read, never written: a read-only SQLite connection (WAL lets
it read while the proxy writes)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from load import CHAT_BODY, fire, percentile

__all__ = ["Db", "burst", "chat_rows", "estimator", "runs_throughput"]

_RUN_KIND = "assistants.run"
_POLL = 0.02
_WORDS = """the model reads a long user question about pandas dataframes and plots results with
matplotlib then explains each step in plain words for 2024 revenue"""


class Db:
    """Counts in the proxy's SQLite file, read-only."""

    def __init__(self, path: Path) -> None:
        self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)

    def counts(self) -> dict[str, int]:
        q = self._con.execute
        return {
            "runs": q("SELECT count(*) FROM usage_records WHERE kind = ?", (_RUN_KIND,)).fetchone()[
                0
            ],
            "other": q(
                "SELECT count(*) FROM usage_records WHERE kind != ?", (_RUN_KIND,)
            ).fetchone()[0],
            "jobs": q("SELECT count(*) FROM collection_jobs").fetchone()[0],
        }

    def close(self) -> None:
        self._con.close()


async def _new_runs(fake: str, n: int) -> list[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake}/bench/runs", json={"n": n}) as resp,
    ):
        pairs = await resp.json()
    return [f"/v1/threads/{tid}/runs/{rid}" for tid, rid in pairs]


async def _fetches(session: aiohttp.ClientSession, fake: str) -> dict[str, int]:
    async with session.get(f"{fake}/bench/stats") as resp:
        return await resp.json()


async def _follow(
    fake: str, proxy: str, db: Db, n: int, *, concurrency: int, deadline: float
) -> dict[str, Any]:
    """Create n completed runs, GET each once through the proxy, and time each stage until n
    rows are recorded (or `deadline` seconds pass). Times are monotonic seconds."""
    paths = await _new_runs(fake, n)
    base = db.counts()
    async with aiohttp.ClientSession() as control:
        fetched0 = await _fetches(control, fake)
        t0 = time.monotonic()
        firing = asyncio.create_task(
            fire([proxy + p for p in paths], concurrency=concurrency, deadline=deadline)
        )
        marks: dict[str, float] = {"start": t0}
        recorded = observed = collected = 0
        while time.monotonic() - t0 < deadline:
            await asyncio.sleep(_POLL)
            now = time.monotonic()
            c = db.counts()
            recorded = c["runs"] - base["runs"]
            observed = recorded + c["jobs"] - base["jobs"]
            f = await _fetches(control, fake)
            collected = min(f["steps"] - fetched0["steps"], f["messages"] - fetched0["messages"])
            if firing.done():
                marks.setdefault("answered", now)
            if observed >= n:
                marks.setdefault("observed", now)
            if collected >= n:
                marks.setdefault("collected", now)
            if recorded >= n:
                marks.setdefault("recorded", now)
                break
        sent = await firing
    elapsed = time.monotonic() - t0
    rates = {
        f"{stage}_per_s": n / (marks[stage] - t0) if stage in marks else count / elapsed
        for stage, count in (
            ("answered", sent["ok"]),
            ("observed", observed),
            ("collected", collected),
            ("recorded", recorded),
        )
    }
    return {
        "runs": n,
        "recorded": recorded,
        "complete": recorded >= n,
        "seconds": elapsed,
        "get_failures": sent["failed"],
        "marks": marks,
        **rates,
    }


async def runs_throughput(
    fake: str, proxy: str, db: Db, n: int, *, deadline: float
) -> dict[str, Any]:
    """Runs observed, collected and recorded per second, from the first GET (32 connections)."""
    return await _follow(fake, proxy, db, n, concurrency=32, deadline=deadline)


async def chat_rows(proxy: str, db: Db, n: int, *, wait: float) -> dict[str, Any]:
    """Send n chat completions through the proxy; rows of other kinds than runs per second,
    waiting up to `wait` seconds after the last answer for the rows to appear."""
    base = db.counts()["other"]
    t0 = time.monotonic()
    url = f"{proxy}/v1/chat/completions"
    sent = await fire([url] * n, concurrency=32, method="POST", body=CHAT_BODY, deadline=60)
    rows = 0
    last = time.monotonic()
    while time.monotonic() - last < wait:
        now_rows = db.counts()["other"] - base
        if now_rows != rows:
            rows, last = now_rows, time.monotonic()
        if rows >= n:
            break
        await asyncio.sleep(0.05)
    seconds = last - t0
    return {
        "requests": sent["ok"],
        "rows": rows,
        "rows_per_s": rows / seconds if rows else 0.0,
        "seconds": seconds,
    }


def _phase(samples: list[list[int]], start: float, end: float, target: int = 0) -> dict[str, Any]:
    ms = [lat / 1e6 for sent, lat, i in samples if i == target and start * 1e9 <= sent < end * 1e9]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50) if ms else None,
        "p99_ms": percentile(ms, 99) if ms else None,
    }


async def burst(
    fake: str, proxy: str, db: Db, n: int, *, quiet: float, deadline: float
) -> dict[str, Any]:
    """Serial chat latency (bench/probe.py, every 5 ms, its own process) through the proxy,
    quiet and then while n runs are answered (64 connections at once) and recorded; and,
    interleaved with it, straight to the fake upstream, which shares the machine and serves
    the collector's fetches: what slows it slows the proxied requests too, the proxy aside."""
    probe = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("probe.py")),
            f"{proxy}/v1/chat/completions",
            f"{fake}/v1/chat/completions",
            "--interval-ms",
            "5",
            "--duration",
            str(quiet + deadline + 10),
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        await asyncio.sleep(quiet + 0.5)  # the probe's own start-up is not part of "quiet"
        followed = await _follow(fake, proxy, db, n, concurrency=64, deadline=deadline)
        await asyncio.sleep(0.3)
        probe.send_signal(signal.SIGTERM)
        out, _ = probe.communicate(timeout=15)
    finally:
        if probe.poll() is None:
            probe.kill()
    samples = json.loads(out)
    marks = followed["marks"]
    t0 = marks["start"]
    answered = marks.get("answered", t0 + followed["seconds"])
    recorded = marks.get("recorded", t0 + followed["seconds"])
    first = samples[min(20, len(samples) - 1)][0] / 1e9 if samples else t0
    begin = max(first, t0 - quiet)
    return {
        **followed,
        "quiet": _phase(samples, begin, t0),
        "answering": _phase(samples, t0, answered),
        "recording": _phase(samples, answered, recorded),
        "burst": _phase(samples, t0, recorded),
        "direct": {
            "quiet": _phase(samples, begin, t0, 1),
            "recording": _phase(samples, answered, recorded, 1),
        },
    }


def estimator(seconds: float) -> dict[str, Any]:
    """estimate_run alone, single thread (the collector runs it in the default executor):
    the benchmark's small run, and one with a few thousand tokens of text."""
    from fake_upstream import Runs

    from proxy.accounting.estimate.runs import estimate_run
    from proxy.accounting.estimate.tokenizer import counter_for_model, warm_up

    warm_up()
    count = counter_for_model("gpt-4o")
    runs = Runs()
    tid, rid = runs.create(1)[0]
    small = (runs.run(rid), runs.steps(rid), runs.messages(tid))
    words = _WORDS.split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(1500))
    run, steps, messages = json.loads(json.dumps(small))
    run["instructions"] = text[:2000]
    messages[0]["content"][0]["text"]["value"] = text
    messages[1]["content"][0]["text"]["value"] = text[:3000]
    steps[0]["step_details"]["tool_calls"][0]["code_interpreter"]["input"] = text[:1500]
    large = (run, steps, messages)
    out: dict[str, Any] = {}
    for name, shape in (("small_run", small), ("large_run", large)):
        tokens = 0

        def counting(s: str) -> int:
            nonlocal tokens
            k = count(s)
            tokens += k
            return k

        calls = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds and calls < 1_000_000:
            estimate_run(*shape, counting)
            calls += 1
        elapsed = time.perf_counter() - t0
        out[name] = {
            "runs_per_s": calls / elapsed,
            "tokens_per_s": tokens / elapsed,
            "tokens_per_run": tokens / calls,
        }
    return out
