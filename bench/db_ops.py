"""What each recording transaction costs on SQLite, one call at a time, against batched
alternatives: the evidence behind the accounting recommendations in bench/README.md. The last
section times the batched operations the proxy now issues per finished run (outbox insert,
claim, record with sessions and job deletion) and the RowWriter's record_rows.

Calls proxy.db functions as the proxy does (a fresh, migrated database in a temp dir), on
uvloop, and reports wall time and the event-loop thread's CPU per row (aiosqlite's own threads
add about a quarter on top). Run: .venv/bin/python bench/db_ops.py [--rows 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

from sqlalchemy.dialects import sqlite

from proxy.accounting.usage import UsageRow
from proxy.db import jobs, run_usage
from proxy.db import usage as db_usage
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.models import UsageRecord

_FP = "f" * 64
_NOW = dt.datetime.now(dt.UTC)


def _row(i: int) -> UsageRow:
    return UsageRow(
        kind="assistants.run",
        object_id=f"run_{i}",
        occurred_at=_NOW,
        usage_source="estimated",
        thread_id=f"thread_{i}",
        model="gpt-4o",
        status="completed",
        key_fingerprint=_FP,
        prompt_tokens=300,
        completion_tokens=40,
        total_tokens=340,
        cost_usd=Decimal("0.0012"),
    )


def _params(i: int) -> dict[str, object]:
    return dataclasses.asdict(_row(i)) | {"recorded_at": _NOW, "code_interpreter_sessions": 0}


async def _timed(name: str, n: int, fn: Callable[[], Awaitable[object]]) -> None:
    t0, c0 = time.perf_counter(), time.thread_time()
    await fn()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    print(f"{name:58s} {1e6 * wall / n:7.0f} us {1e6 * cpu / n:7.0f} us {n / wall:7.0f}/s")


async def _main(url: str, n: int) -> None:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    table = UsageRecord.__table__
    prebuilt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["kind", "object_id"])
    print(f"{'per row, ' + str(n) + ' rows':58s} {'wall':>10s} {'loop CPU':>10s} {'rate':>9s}")

    async def enqueue(lo: int) -> None:
        for i in range(lo, lo + n):
            job = jobs.NewJob(
                object_id=f"run_{i}",
                thread_id=f"t{i}",
                api_prefix="/v1",
                object_json="{}",
                key_fingerprint=_FP,
            )
            await jobs.enqueue(sm, job)

    claimed: list[jobs.ClaimedJob] = []

    async def claim(limit: int) -> None:
        while got := await jobs.claim(
            sm, worker="w", fingerprints=[_FP], reported_wait=600, lease=120, limit=limit
        ):
            claimed.extend(got)

    async def record(lo: int, sessions: bool) -> None:
        for i in range(lo, lo + n):
            times = [_NOW] if sessions else []
            await run_usage.record_usage(
                sm,
                _row(i),
                code_interpreter_call_times=times,
                session_price=Decimal("0.03") if sessions else None,
            )

    async def complete() -> None:
        for job in claimed:
            await jobs.complete(sm, job.id, "w")

    async def batched(lo: int, size: int) -> None:
        rows = [_params(i) for i in range(lo, lo + n)]
        for k in range(0, n, size):
            async with sm.begin() as session:
                await session.execute(prebuilt, rows[k : k + size])

    def _job(i: int) -> jobs.NewJob:
        return jobs.NewJob(
            object_id=f"run_{i}",
            thread_id=f"t{i}",
            api_prefix="/v1",
            object_json="{}",
            key_fingerprint=_FP,
        )

    async def enqueue_many(lo: int, size: int) -> None:
        for k in range(lo, lo + n, size):
            await jobs.enqueue_many(sm, [_job(i) for i in range(k, min(k + size, lo + n))])

    async def record_many(lo: int, size: int) -> None:
        # What the collector does per batch: the runs' rows with their code interpreter
        # calls, and the deletion of their jobs, in one transaction.
        for k in range(lo, lo + n, size):
            items = [
                run_usage.RunUsage(_row(i), (_NOW,), Decimal("0.03"))
                for i in range(k, min(k + size, lo + n))
            ]
            ids = [job.id for job in claimed[k - lo : k - lo + size]]
            await run_usage.record_usage_many(
                sm, items, also=lambda s, ids=ids: jobs.complete_held(s, ids, "w")
            )

    async def record_rows(lo: int, size: int) -> None:
        rows = [_row(i) for i in range(lo, lo + n)]
        for k in range(0, n, size):
            await db_usage.record_rows(sm, rows[k : k + size])

    await _timed("jobs.enqueue, 1 transaction each (Accounting.open_job)", n, lambda: enqueue(0))
    await _timed("jobs.claim, limit 2 (collector_workers=2), per job", n, lambda: claim(2))
    await enqueue(n)
    await _timed("jobs.claim, limit 16, per job", n, lambda: claim(16))
    await _timed("run_usage.record_usage + code interpreter session", n, lambda: record(0, True))
    await _timed("run_usage.record_usage, no session (chat rows)", n, lambda: record(n, False))
    await _timed("jobs.complete, 1 transaction each", len(claimed), complete)
    await _timed("prebuilt Core insert, 1 row per transaction", n, lambda: batched(2 * n, 1))
    await _timed("prebuilt Core insert, executemany 10 rows/tx", n, lambda: batched(3 * n, 10))
    await _timed("prebuilt Core insert, executemany 100 rows/tx", n, lambda: batched(4 * n, 100))
    print("batched, as the proxy now issues them:")
    await _timed(
        "jobs.enqueue_many, 100 jobs/tx (Accounting.open_job)", n, lambda: enqueue_many(5 * n, 100)
    )
    claimed.clear()
    await _timed("jobs.claim, limit 100 (the collector), per job", n, lambda: claim(100))
    await _timed(
        "run_usage.record_usage_many + sessions + jobs.complete_held, 100/tx",
        n,
        lambda: record_many(5 * n, 100),
    )
    await _timed(
        "db_usage.record_rows, 256 rows/tx (RowWriter)", n, lambda: record_rows(6 * n, 256)
    )
    await engine.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500)
    args = ap.parse_args()
    n = max(20, min(args.rows, 20_000))
    with tempfile.TemporaryDirectory(prefix="usage-proxy-dbops-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'ops.sqlite'}"
        usage_proxy = str(Path(sys.executable).with_name("usage-proxy"))
        env = {**os.environ, "USAGE_PROXY_KEY_SECRET": "bench-secret-not-a-real-one"}
        subprocess.run(
            [usage_proxy, "migrate", "--database-url", url],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        import uvloop

        uvloop.run(_main(url, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
