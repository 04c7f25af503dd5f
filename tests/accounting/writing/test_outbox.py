"""The collection job writer (proxy.accounting.writing.outbox), on a real database of each
backend."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.writing.outbox import JobWriter
from proxy.db import jobs
from proxy.db.models import CollectionJob
from proxy.metrics import Metrics
from tests.accounting.writing.test_row_writer import Flaky
from tests.waiting import wait_until

SM = async_sessionmaker[AsyncSession]


def job(run_id: str, **overrides: Any) -> jobs.NewJob:
    fields: dict[str, Any] = {
        "object_id": run_id,
        "thread_id": f"thread_{run_id}",
        "api_prefix": "/v1",
        "object_json": json.dumps({"id": run_id}),
        "key_fingerprint": "fp-a",
        "team": "red",
    }
    return jobs.NewJob(**(fields | overrides))


class Calls:
    """What the writer reports: jobs pending after each transaction, and writes done."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.written = 0

    def wrote(self) -> None:
        self.written += 1


def writer_for(sm: Any, calls: Calls | None = None, **kw: Any) -> JobWriter:
    calls = calls or Calls()
    return JobWriter(
        lambda: sm,
        kw.pop("metrics", None) or Metrics(),
        on_written=calls.wrote,
        on_pending=calls.pending.append,
        **({"retry_base": 0.01, "max_backoff": 0.05} | kw),
    )


async def stored(sm: SM) -> list[str]:
    async with sm() as session:
        query = select(CollectionJob.object_id).order_by(CollectionJob.id)
        return list(await session.scalars(query))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_jobs_are_written_in_batches(sm: SM, commits: list[int]):
    calls = Calls()
    writer = writer_for(sm, calls)
    writer.start()
    try:
        for i in range(2_000):
            writer.submit(job(f"run_{i}"))
        await wait_until(lambda: writer.pending == 0 and calls.written >= 4)
    finally:
        await writer.stop()
    assert sorted(await stored(sm)) == sorted(f"run_{i}" for i in range(2_000))
    assert len(commits) <= 25  # 100 jobs per transaction, not one each
    assert calls.written == len(commits)  # the collector is woken after each write


async def test_a_lone_job_is_written_at_once(sm: SM):
    # The outbox must hold a run's job within a transaction of its sighting: no waiting for
    # company, so a crash right after it loses nothing.
    calls = Calls()
    writer = writer_for(sm, calls)
    writer.start()
    try:
        writer.submit(job("run_1"))
        await wait_until(lambda: calls.written == 1, timeout=5)
        assert await stored(sm) == ["run_1"]
        writer.submit(job("run_1"))  # seen again: still one job
        writer.submit(job("run_2"))
        await wait_until(lambda: writer.pending == 0 and calls.written >= 2, timeout=5)
    finally:
        await writer.stop()
    assert await stored(sm) == ["run_1", "run_2"]


async def test_jobs_are_kept_in_order_while_the_database_is_unreachable(
    sm: SM, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="proxy.accounting.outbox")
    flaky = Flaky(sm)
    flaky.down = True
    calls = Calls()
    writer = writer_for(flaky, calls)
    writer.start()
    try:
        for i in range(10):
            writer.submit(job(f"run_{i}"))
        await wait_until(lambda: len(calls.pending) >= 3)  # it has retried
        assert writer.pending == 10 and calls.pending[-1] == 10
        assert "kept in memory" in caplog.text
        assert await stored(sm) == []
        writer.submit(job("run_10"))
        flaky.down = False
        await wait_until(lambda: writer.pending == 0)
    finally:
        await writer.stop()
    assert await stored(sm) == [f"run_{i}" for i in range(11)]
    assert calls.pending[-1] == 0


async def test_retry_now_ends_the_backoff(sm: SM):
    flaky = Flaky(sm)
    flaky.down = True
    calls = Calls()
    writer = writer_for(flaky, calls, retry_base=600.0, max_backoff=600.0)
    writer.start()
    try:
        writer.submit(job("run_1"))
        await wait_until(lambda: calls.pending == [1])  # failed once, now waiting 10 minutes
        flaky.down = False
        writer.retry_now()
        await wait_until(lambda: writer.pending == 0, timeout=5)
    finally:
        await writer.stop()
    assert await stored(sm) == ["run_1"]


async def test_a_full_backlog_drops_the_oldest_jobs_and_counts_them(sm: SM):
    flaky = Flaky(sm)
    flaky.down = True
    metrics = Metrics()
    writer = writer_for(flaky, metrics=metrics, limit=5)
    writer.start()
    try:
        for i in range(8):
            writer.submit(job(f"run_{i}"))
        assert writer.pending == 5
        flaky.down = False
        await wait_until(lambda: writer.pending == 0)
    finally:
        await writer.stop()
    assert await stored(sm) == [f"run_{i}" for i in range(3, 8)]
    assert sample(metrics, "usage_proxy_collection_failures_total", reason="backlog_full") == 3


async def test_stop_writes_everything_submitted(sm: SM):
    writer = writer_for(sm)
    writer.start()
    for i in range(1_200):
        writer.submit(job(f"run_{i}"))
    await writer.stop()
    assert len(await stored(sm)) == 1_200
    await writer.stop()  # a second stop is harmless


async def test_stop_while_unreachable_does_not_hang(sm: SM, caplog: pytest.LogCaptureFixture):
    flaky = Flaky(sm)
    flaky.down = True
    calls = Calls()
    writer = writer_for(flaky, calls, retry_base=30.0, max_backoff=30.0)
    writer.start()
    writer.submit(job("run_1"))
    await wait_until(lambda: calls.pending == [1])
    await asyncio.wait_for(writer.stop(), 5)
    assert writer.pending == 0
    assert "1 collection jobs are lost" in caplog.text


async def test_a_refused_job_does_not_drop_its_neighbours(sm: SM, caplog: pytest.LogCaptureFixture):
    metrics = Metrics()
    writer = writer_for(sm, metrics=metrics)
    writer.start()
    for i in range(20):
        # Not a boolean: the database layer refuses it (a StatementError), on either backend.
        writer.submit(job(f"run_{i}", has_reported_usage="yes" if i == 7 else False))
    await writer.stop()
    assert await stored(sm) == [f"run_{i}" for i in range(20) if i != 7]
    assert sample(metrics, "usage_proxy_collection_failures_total", reason="database_refused") == 1
    assert "run run_7" in caplog.text


async def test_submit_never_raises_before_start(sm: SM):
    writer = writer_for(sm, limit=2)
    for i in range(5):
        writer.submit(job(f"run_{i}"))
    assert writer.pending == 2
    await writer.stop()  # never started: nothing to do
    writer.start()
    await writer.stop()
    assert await stored(sm) == ["run_3", "run_4"]


async def test_after_written_calls_back_once_what_was_submitted_is_in_the_database(
    sm: SM, caplog: pytest.LogCaptureFixture
):
    """The hold seam's wait (proxy.accounting.writing.stored): a callback once every job
    submitted before it is stored, none while the database is down, and at once when nothing
    is pending."""
    flaky = Flaky(sm)
    writer = writer_for(flaky)
    seen: list[list[str]] = []
    writer.after_written(lambda: seen.append(["idle"]))
    assert seen == [["idle"]]
    flaky.down = True
    writer.start()
    writer.submit(job("run_a"))
    writer.after_written(lambda: seen.append(["a"]))
    writer.submit(job("run_b"))
    await wait_until(lambda: "kept in memory" in caplog.text, 10, what="a failed write")
    assert seen == [["idle"]]  # nothing stored, nothing called back
    flaky.down = False
    writer.retry_now()

    async def after() -> None:
        seen.append(await stored(sm))

    writer.after_written(lambda: asyncio.ensure_future(after()))
    await wait_until(lambda: len(seen) == 3, 10, what="both callbacks")
    assert seen[1] == ["a"] and seen[2] == ["run_a", "run_b"]
    await writer.stop()
