"""The run collector (proxy.accounting.sources.assistants.collector) against a real database
of each backend and a fake fetcher: how it claims, fetches and records in batches, and what it
gives back."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.estimate.runs import default_table, estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.accounting.pricing import load_price_table
from proxy.accounting.process.owners import worker_id
from proxy.accounting.sources.assistants.collector import RunCollector
from proxy.accounting.sources.assistants.fetch import FetchedRun
from proxy.accounting.usage import UsageRecorded, UsageRow
from proxy.accounting.usage_metrics import UsageMetrics
from proxy.db import jobs, run_usage
from proxy.db import usage as db_usage
from proxy.db.models import CollectionJob, UsageRecord, utcnow
from proxy.keys import CredentialStore
from proxy.metrics import Metrics
from tests.waiting import wait_until

SM = async_sessionmaker[AsyncSession]
FP = "fp-a"
T0 = int(dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC).timestamp())


def run_of(run_id: str, thread_id: str, at: int) -> dict[str, Any]:
    return {
        "id": run_id,
        "object": "thread.run",
        "thread_id": thread_id,
        "created_at": at,
        "completed_at": at + 3,
        "status": "completed",
        "model": "gpt-4o",
        "usage": None,
    }


def fetched_objects(run: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The steps and messages the Fetcher answers for `run`: one code interpreter call a second
    into the run, and an answer."""
    run_id, at = run["id"], run["created_at"]
    call = {
        "id": f"call_{run_id}",
        "type": "code_interpreter",
        "code_interpreter": {"input": "print(2+2)", "outputs": []},
    }
    step = {
        "id": f"step_{run_id}",
        "object": "thread.run.step",
        "run_id": run_id,
        "created_at": at + 1,
        "completed_at": at + 2,
        "type": "tool_calls",
        "step_details": {"type": "tool_calls", "tool_calls": [call]},
    }
    answer = {
        "id": f"msg_{run_id}",
        "object": "thread.message",
        "created_at": at + 2,
        "role": "assistant",
        "run_id": run_id,
        "content": [{"type": "text", "text": {"value": "4", "annotations": []}}],
    }
    return [step], [answer]


class Fetcher:
    """A RunFetcher that answers at once from memory (`fetched_objects`). A run whose id is in
    `gates` waits for its event first."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.fetched: list[str] = []
        self.active = 0
        self.most = 0
        # Runs in progress: how many retrieves each answers in progress before it has ended.
        self.progress: dict[str, int] = {}
        self.retrieved: list[str] = []

    async def retrieve(
        self, prefix: str, query: str, thread_id: str, run_id: str, headers: Any
    ) -> dict[str, Any]:
        self.retrieved.append(run_id)
        left = self.progress.get(run_id, 0)
        self.progress[run_id] = left - 1
        if left > 0:
            return {**self.runs[run_id], "status": "in_progress", "completed_at": None}
        return self.runs[run_id]

    async def run(
        self,
        prefix: str,
        query: str,
        thread_id: str,
        run_id: str,
        headers: Any,
        *,
        file_search_results: bool = False,
    ) -> FetchedRun:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            if run_id in self.gates:
                await self.gates[run_id].wait()
            await asyncio.sleep(0)  # a real fetch takes a turn of the loop at least
            self.fetched.append(run_id)
            steps, messages = fetched_objects(self.runs[run_id])
            return FetchedRun(steps, messages, 300)
        finally:
            self.active -= 1


Start = Callable[..., Awaitable[RunCollector]]


@pytest.fixture
async def start(sm: SM) -> AsyncIterator[Start]:
    started: list[RunCollector] = []

    async def start(fetcher: Fetcher, **kw: Any) -> RunCollector:
        credentials = CredentialStore()
        credentials.remember(FP, {"Authorization": "Bearer sk-test-aaaa1234"})
        metrics = kw.pop("metrics", None) or Metrics()
        recorded = kw.pop("recorded", None) or UsageMetrics(metrics)
        options = {"workers": 2, "poll_interval": 0.05, "retry_base": 0.05} | kw
        collector = RunCollector(
            lambda: sm,
            fetcher,  # type: ignore[arg-type]
            credentials,
            load_price_table(None),
            default_table(),
            recorded,
            metrics.collection_failed,
            **options,
        )
        collector.start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        await collector.stop()


async def add_runs(sm: SM, fetcher: Fetcher, n: int, threads: int = 10) -> list[str]:
    new = []
    for i in range(n):
        run = run_of(f"run_{i:03}", f"thread_{i % threads}", T0 + 60 * i)
        fetcher.runs[run["id"]] = run
        new.append(
            jobs.NewJob(
                object_id=run["id"],
                thread_id=run["thread_id"],
                api_prefix="/v1",
                object_json=json.dumps(run),
                key_fingerprint=FP,
                team="red",
            )
        )
    await jobs.enqueue_many(sm, new)
    return [j.object_id for j in new]


async def usage(sm: SM) -> dict[str, UsageRecord]:
    async with sm() as session:
        return {r.object_id: r for r in await session.scalars(select(UsageRecord))}


async def left(sm: SM) -> dict[str, CollectionJob]:
    async with sm() as session:
        return {j.object_id: j for j in await session.scalars(select(CollectionJob))}


async def test_claims_in_bulk_fetches_workers_at_a_time_and_records_in_batches(
    sm: SM, start: Start, monkeypatch: pytest.MonkeyPatch
):
    claimed: list[int] = []
    recorded: list[int] = []
    claim, record_many = jobs.claim, run_usage.record_usage_many

    async def counting_claim(*args: Any, **kw: Any) -> list[jobs.ClaimedJob]:
        got = await claim(*args, **kw)
        claimed.append(len(got))
        return got

    async def counting_record(sm: SM, items: Any, **kw: Any) -> list[Any]:
        recorded.append(len(items))
        return await record_many(sm, items, **kw)

    monkeypatch.setattr(jobs, "claim", counting_claim)
    monkeypatch.setattr(run_usage, "record_usage_many", counting_record)
    fetcher = Fetcher()
    ids = await add_runs(sm, fetcher, 250)
    await start(fetcher, workers=2, claim_size=100)
    await wait_until(lambda: _all_done(sm, 250), timeout=30)

    assert max(claimed) == 100  # the claim size, not the number of workers
    assert fetcher.most == 2  # but never more than `workers` fetches at once
    assert sorted(fetcher.fetched) == ids  # each run fetched once
    assert sum(recorded) == 250 and len(recorded) < 250 / 4  # rows in batches
    rows = await usage(sm)
    assert sorted(rows) == ids
    # Ten threads, each with 25 calls ten minutes apart, over exactly four hours: sessions
    # open at 0, 1, 2, 3 and 4 hours in each.
    per_thread: dict[str, int] = {}
    for row in rows.values():
        run = fetcher.runs[row.object_id]
        expected = estimate_run(run, *fetched_objects(run), counter_for_model("gpt-4o"))
        assert (row.usage_source, row.prompt_tokens, row.completion_tokens) == (
            "estimated",
            expected.prompt_tokens,
            expected.completion_tokens,
        )
        assert row.code_interpreter_calls == 1
        per_thread[row.thread_id] = per_thread.get(row.thread_id, 0) + (
            row.code_interpreter_sessions
        )
    assert per_thread == {f"thread_{t}": 5 for t in range(10)}


async def test_usage_is_signalled_per_batch_not_per_run(sm: SM, start: Start):
    fetcher = Fetcher()
    await add_runs(sm, fetcher, 120)
    signals: list[UsageRecorded] = []
    await start(fetcher, workers=4, claim_size=60, recorded=signals.append)
    await wait_until(lambda: _all_done(sm, 120), timeout=30)
    totals = [t for event in signals for t in event.totals]
    assert len(signals) < 120 / 4 and len(totals) == len(signals)  # one team and model
    assert {(t.kind, t.usage_source) for t in totals} == {("assistants.run", "estimated")}
    assert sum(t.events for t in totals) == 120
    rows = (await usage(sm)).values()
    assert sum(t.prompt_tokens for t in totals) == sum(r.prompt_tokens for r in rows)
    assert sum(t.completion_tokens for t in totals) == sum(r.completion_tokens for r in rows)
    # The cost signalled is the cost stored, code interpreter sessions included (they are
    # counted in the write's transaction, after the row was built without them).
    assert sum(r.code_interpreter_sessions for r in rows) > 0
    assert sum(t.cost_usd for t in totals) == sum(r.cost_usd for r in rows)


async def _all_done(sm: SM, n: int) -> bool:
    return len(await usage(sm)) == n and not await left(sm)


async def test_a_job_taken_over_mid_fetch_is_left_to_its_new_holder(sm: SM, start: Start):
    fetcher = Fetcher()
    [run_id] = await add_runs(sm, fetcher, 1)
    fetcher.gates[run_id] = asyncio.Event()
    collector = await start(fetcher, lease=120.0)
    await wait_until(lambda: fetcher.active == 1)
    # The collector's lease ran out (say, a long pause) and another replica took the job.
    later = utcnow() + dt.timedelta(seconds=121)
    [taken] = await jobs.claim(
        sm, worker="other", fingerprints=[FP], reported_wait=600, lease=120, limit=5, now=later
    )
    assert taken.object_id == run_id
    fetcher.gates[run_id].set()
    await wait_until(lambda: _recorded(sm, run_id))
    await wait_until(lambda: run_id not in collector._held)
    # Its row is in (the unique key makes it the only one), but the job is not the
    # collector's to delete any more: it is the other replica's, which then finds the row.
    [job] = (await left(sm)).values()
    assert job.claimed_by == "other"
    assert await db_usage.recorded(sm, "assistants.run", [run_id]) == {run_id}
    assert await jobs.complete(sm, taken.id, "other")
    assert len(await usage(sm)) == 1


async def _recorded(sm: SM, run_id: str) -> bool:
    return run_id in await usage(sm)


async def test_stop_gives_back_the_jobs_it_holds(sm: SM, start: Start):
    fetcher = Fetcher()
    ids = await add_runs(sm, fetcher, 3)
    fetcher.gates[ids[0]] = asyncio.Event()  # never set: stop() finds it mid-fetch
    collector = await start(fetcher, workers=1)
    await wait_until(lambda: fetcher.active == 1 and len(collector._held) == 3)
    await collector.stop()
    jobs_left = await left(sm)
    assert sorted(jobs_left) == ids
    assert {(j.claimed_by, j.attempts) for j in jobs_left.values()} == {(None, 0)}
    assert await usage(sm) == {}

    # Given back, so another collector takes them at once, not after their lease.
    again = Fetcher()
    again.runs = fetcher.runs
    await start(again)
    await wait_until(lambda: _all_done(sm, 3))


async def test_a_run_recorded_before_is_completed_without_a_fetch(sm: SM, start: Start):
    fetcher = Fetcher()
    ids = await add_runs(sm, fetcher, 2)
    row = UsageRow(
        kind="assistants.run", object_id=ids[0], occurred_at=utcnow(), usage_source="reported"
    )
    assert await run_usage.record_usage(sm, row)
    await start(fetcher)
    await wait_until(lambda: _all_done(sm, 2))
    assert fetcher.fetched == [ids[1]]
    assert (await usage(sm))[ids[0]].usage_source == "reported"


async def test_held_jobs_keep_their_claim_while_a_fetch_outlasts_the_lease(sm: SM, start: Start):
    fetcher = Fetcher()
    ids = await add_runs(sm, fetcher, 4)
    fetcher.gates[ids[0]] = asyncio.Event()
    # One fetch slot, held by ids[0] for several leases: the leases of all four are renewed
    # meanwhile, so no other replica takes them, and each is fetched once.
    # Its claim loop sleeps meanwhile: only renewal keeps the claims.
    collector = await start(fetcher, workers=1, lease=1.0, poll_interval=30.0)
    await wait_until(lambda: fetcher.active == 1 and len(collector._held) == 4)
    first = utcnow()
    await wait_until(lambda: utcnow() > first + dt.timedelta(seconds=3))
    assert {j.claimed_by for j in (await left(sm)).values()} == {collector.worker_id}
    taken = await jobs.claim(
        sm, worker="other", fingerprints=[FP], reported_wait=600, lease=1.0, limit=5
    )
    assert taken == []
    fetcher.gates[ids[0]].set()
    await wait_until(lambda: _all_done(sm, 4), timeout=15)
    assert sorted(fetcher.fetched) == ids  # once each


async def test_a_run_in_progress_is_followed_until_it_ends(sm: SM, start: Start):
    fetcher = Fetcher()
    run = run_of("run_live", "thread_live", T0)
    fetcher.runs[run["id"]] = run
    fetcher.progress[run["id"]] = 2
    seen = {**run, "status": "queued", "completed_at": None}
    job = jobs.NewJob(
        object_id=run["id"],
        thread_id=run["thread_id"],
        api_prefix="/v1",
        object_json=json.dumps(seen),
        key_fingerprint=FP,
        in_progress=True,
    )
    await jobs.enqueue_many(sm, [job], follow_after=0.0)
    collector = await start(fetcher)
    await wait_until(lambda: _all_done(sm, 1), timeout=20)
    # Retrieved until it ended (twice in progress, then completed), then collected once.
    assert fetcher.retrieved == [run["id"]] * 3
    assert fetcher.fetched == [run["id"]]
    row = (await usage(sm))[run["id"]]
    assert (row.status, row.usage_source) == ("completed", "estimated")
    assert not collector._held


async def test_a_finished_sighting_ends_the_following(sm: SM, start: Start):
    fetcher = Fetcher()
    run = run_of("run_seen", "thread_seen", T0)
    fetcher.runs[run["id"]] = run
    fetcher.progress[run["id"]] = 1000  # the collector would never see it end by itself
    opened = jobs.NewJob(
        object_id=run["id"],
        thread_id=run["thread_id"],
        api_prefix="/v1",
        object_json=json.dumps({**run, "status": "queued"}),
        key_fingerprint=FP,
        in_progress=True,
    )
    await jobs.enqueue_many(sm, [opened], follow_after=0.0)
    await start(fetcher)
    await wait_until(lambda: len(fetcher.retrieved) >= 2, timeout=20)
    # A client's poll through a proxy saw it completed: the job takes that run.
    ended = dataclasses.replace(opened, object_json=json.dumps(run), in_progress=False)
    assert await jobs.enqueue(sm, ended)
    await wait_until(lambda: _all_done(sm, 1), timeout=20)
    assert (await usage(sm))[run["id"]].status == "completed"
    assert fetcher.fetched == [run["id"]]
    assert len(fetcher.retrieved) < 1000  # it stopped following: the fake never ends it


async def test_a_restart_takes_over_a_dead_predecessors_claims_at_once(sm: SM, start: Start):
    fetcher = Fetcher()
    ids = await add_runs(sm, fetcher, 5)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    # Claimed for ten minutes by a process of this host that has died since.
    dead = worker_id("dead").replace(f":{os.getpid()}:", f":{child.pid}:")
    claimed = await jobs.claim(
        sm, worker=dead, fingerprints=[FP], reported_wait=600, lease=600, limit=10
    )
    assert len(claimed) == 5
    # A live neighbour's claims stay its own.
    [live] = await add_runs_named(sm, fetcher, ["run_live"])
    neighbour = worker_id("alive")
    assert await jobs.claim(
        sm, worker=neighbour, fingerprints=[FP], reported_wait=600, lease=600, limit=10
    )
    await start(fetcher, lease=600.0)
    await wait_until(lambda: _recorded_all(sm, ids), timeout=10)
    assert sorted(fetcher.fetched) == ids
    assert [j.claimed_by for j in (await left(sm)).values()] == [neighbour]
    assert live not in fetcher.fetched


async def _recorded_all(sm: SM, ids: list[str]) -> bool:
    return set(ids) <= set(await usage(sm)) and len(await left(sm)) == 1


async def add_runs_named(sm: SM, fetcher: Fetcher, names: list[str]) -> list[str]:
    new = []
    for name in names:
        run = run_of(name, f"thread_{name}", T0)
        fetcher.runs[name] = run
        new.append(
            jobs.NewJob(
                object_id=name,
                thread_id=run["thread_id"],
                api_prefix="/v1",
                object_json=json.dumps(run),
                key_fingerprint=FP,
            )
        )
    await jobs.enqueue_many(sm, new)
    return names
