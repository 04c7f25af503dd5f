"""Accounting (proxy.accounting.service): the outbox of finished runs as `open_job` fills it,
on a real database of each backend."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.service import Accounting
from proxy.accounting.sources.assistants.sightings import RunSighting
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.models import CollectionJob
from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.forward import Forwarder
from proxy.settings import Settings
from tests.accounting.writing.test_row_writer import Flaky
from tests.waiting import wait_until

SM = async_sessionmaker[AsyncSession]
KEY = {"Authorization": "Bearer sk-test-aaaaaaaaaaaaaaaaaaaa1234"}


def sighting(run_id: str, headers: dict[str, str] | None = None) -> RunSighting:
    run = {"id": run_id, "object": "thread.run", "thread_id": f"t_{run_id}", "status": "completed"}
    sent = headers if headers is not None else KEY
    return RunSighting(run, "/v1", "api-version=1", sent, sent)


class Collector:
    """Stands in for the RunCollector: counts its wake-ups."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def accounting_on(sm: Any) -> Accounting:
    acc = Accounting(Settings(key_secret="test-secret"))
    acc._sm = sm
    return acc


async def stored(sm: SM) -> dict[str, CollectionJob]:
    async with sm() as session:
        return {j.object_id: j for j in await session.scalars(select(CollectionJob))}


def backlog(acc: Accounting) -> float:
    return acc.metrics.registry.get_sample_value("usage_proxy_unwritten_jobs") or 0.0


async def test_open_job_queues_and_the_outbox_inserts_in_batches(sm: SM, commits: list[int]):
    acc = accounting_on(sm)
    collector = Collector()
    acc.collector = collector  # type: ignore[assignment]
    acc.outbox.start()
    try:
        for i in range(300):
            await acc.open_job(sighting(f"run_{i}"))
        await wait_until(lambda: acc.outbox.pending == 0 and collector.wakes > 0)
    finally:
        await acc.outbox.stop()
    got = await stored(sm)
    assert sorted(got) == sorted(f"run_{i}" for i in range(300))
    job = got["run_7"]
    assert (job.thread_id, job.api_prefix, job.api_query) == ("t_run_7", "/v1", "api-version=1")
    assert (job.team, job.key_hint) == ("unassigned", "sk-...1234")
    assert job.key_fingerprint is not None and job.has_reported_usage is False
    assert len(commits) <= 10  # not a transaction per run
    assert collector.wakes == len(commits)  # woken once the jobs can be claimed, not before


async def test_open_job_keeps_jobs_while_the_database_is_down(
    sm: SM, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="proxy.accounting")
    flaky = Flaky(sm)
    flaky.down = True
    acc = accounting_on(flaky)
    acc.outbox.start()
    try:
        for i in range(5):
            await acc.open_job(sighting(f"run_{i}"))  # returns at once: fail open
        await wait_until(lambda: "kept in memory" in caplog.text)
        assert await stored(sm) == {}
        assert backlog(acc) == 5
        await acc.open_job(sighting("run_5"))
        flaky.down = False
        await wait_until(lambda: acc.outbox.pending == 0)
    finally:
        await acc.outbox.stop()
    got = await stored(sm)
    assert sorted(got) == [f"run_{i}" for i in range(6)]
    # The team could not be looked up during the outage: the collector resolves it later.
    assert got["run_0"].team is None
    assert backlog(acc) == 0


async def test_shutdown_writes_every_job_seen(db_url: str):
    settings = Settings(
        key_secret="test-secret", database_url=db_url, upstream="http://127.0.0.1:9"
    )
    acc = Accounting(settings)
    acc.attach_forwarder(Forwarder(settings.upstream, Dispatcher([])))
    lifecycle = acc.context(web.Application())
    await anext(lifecycle)
    # No key: nothing here is collectable, so every run must end up a job in the table.
    for i in range(700):
        await acc.open_job(sighting(f"run_{i}", headers={}))
    with contextlib.suppress(StopAsyncIteration):
        await anext(lifecycle)
    engine = make_engine(db_url)
    try:
        got = await stored(make_sessionmaker(engine))
    finally:
        await engine.dispose()
    assert sorted(got) == sorted(f"run_{i}" for i in range(700))
