"""Create-and-runs that may be unrecorded (proxy.db.unseen_creates), on both backends: a run
first seen elsewhere deletes the closest create-and-run intent of its key in its job's
transaction (only when its job was really inserted); an intent is marked unseen once, however
many replicas mark it at the same moment; and the count reads back by the create's time."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from sqlalchemy import select

from proxy.db import jobs, run_intents, unseen_creates
from proxy.db import usage as db_usage
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.models import RunIntent
from proxy.db.unseen_creates import RunSeen
from tests.db.rows import make_row
from tests.db.test_jobs import make_job

T = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
ME, OTHER = "host:1:b.s.me", "host:2:b.s.other"


def create_and_run(
    worker: str = OTHER, fp: str = "fp-a", assistant: str | None = "asst_1"
) -> run_intents.NewIntent:
    return run_intents.NewIntent(
        thread_id=None,
        api_prefix="/v1",
        key_fingerprint=fp,
        key_hint="sk-...abcd",
        team="red",
        worker=worker,
        assistant_id=assistant,
    )


def seen(run_id: str, at: dt.datetime = T, **kw: Any) -> RunSeen:
    fields = {"thread_id": f"thread_{run_id}", "key_fingerprint": "fp-a", "assistant_id": "asst_1"}
    return RunSeen(object_id=run_id, created_at=at, **(fields | kw))


async def left(sm) -> list[int]:
    async with sm() as session:
        return sorted((await session.execute(select(RunIntent.id))).scalars())


async def match(sm, *runs: RunSeen, worker: str = ME) -> int:
    async with sm.begin() as session:
        return await unseen_creates.match(session, runs, worker=worker)


async def test_a_run_seen_elsewhere_deletes_the_closest_create_and_run_of_its_key(sm):
    s = dt.timedelta(seconds=1)
    early = await run_intents.add(sm, create_and_run(), now=T - 3 * s)
    await run_intents.add(sm, create_and_run(), now=T - s / 10)  # the closest
    late = await run_intents.add(sm, create_and_run(), now=T + 2 * s)
    assert await match(sm, seen("run_1")) == 1
    assert await left(sm) == [early, late]
    assert await match(sm, seen("run_2", T + 2 * s)) == 1
    assert await left(sm) == [early]


async def test_what_a_run_never_matches(sm):
    s = dt.timedelta(seconds=1)
    await run_intents.add(sm, create_and_run(worker=ME), now=T)  # this worker's own
    await run_intents.add(sm, create_and_run(fp="fp-b"), now=T)  # another key
    await run_intents.add(sm, create_and_run(assistant="asst_2"), now=T)  # another assistant
    await run_intents.add(sm, create_and_run(), now=T - 6 * s)  # outside the window
    before = await left(sm)
    assert await match(sm, seen("run_1")) == 0
    assert await left(sm) == before


async def test_a_run_whose_thread_has_an_intent_or_which_was_recorded_matches_nothing(sm):
    mine = await run_intents.add(sm, create_and_run(), now=T)
    on_thread = run_intents.NewIntent(
        thread_id="thread_x", api_prefix="/v1", key_fingerprint="fp-a", worker=OTHER
    )
    thread_intent = await run_intents.add(sm, on_thread, now=T)
    # Its thread had a create of its own in flight: that create made it.
    assert await match(sm, seen("run_x", thread_id="thread_x")) == 0
    # Recorded already (its job done and deleted): seen again, not a create in flight.
    await db_usage.record_rows(sm, [make_row("run_old", kind="assistants.run")])
    assert await match(sm, seen("run_old")) == 0
    assert await left(sm) == sorted([mine, thread_intent])
    # An intent with no assistant (its body named none) fits any run's.
    await run_intents.resolve(sm, [mine])
    anyone = await run_intents.add(sm, create_and_run(assistant=None), now=T)
    assert await match(sm, seen("run_y", assistant_id="asst_9")) == 1
    assert anyone not in await left(sm)


async def test_only_a_job_the_write_inserted_matches_in_its_transaction(sm):
    await run_intents.add(sm, create_and_run(), now=T)
    got: list[set[str]] = []

    async def matching(session, inserted: set[str]) -> None:
        got.append(inserted)
        runs = [seen(r) for r in inserted]
        await unseen_creates.match(session, runs, worker=ME)

    # In progress, first: inserted.
    first = make_job("run_a", in_progress=True)
    assert await jobs.enqueue_many(sm, [first], inserted=matching) == 1
    assert got == [{"run_a"}] and await left(sm) == []
    # Finished later: the job is updated, not inserted, and matches nothing.
    await run_intents.add(sm, create_and_run(), now=T)
    assert await jobs.enqueue_many(sm, [make_job("run_a")], inserted=matching) == 1
    assert got[-1] == set() and len(await left(sm)) == 1


async def test_a_create_and_run_is_marked_unseen_once_across_replicas(db_url, sm):
    ids = [await run_intents.add(sm, create_and_run(), now=T) for _ in range(20)]
    engines = [make_engine(db_url) for _ in range(2)]
    try:
        marked = await asyncio.gather(
            *(unseen_creates.mark_unseen(make_sessionmaker(e), ids, now=T) for e in engines)
        )
    finally:
        for e in engines:
            await e.dispose()
    a, b = ({i.id for i in m} for m in marked)
    assert not a & b and a | b == set(ids)
    assert all(i.unseen_at == T and i.thread_id is None for m in marked for i in m)
    assert await unseen_creates.mark_unseen(sm, ids, now=T) == []  # marked already
    assert await unseen_creates.pending(sm, older_than=T + dt.timedelta(hours=1)) == []


async def test_pending_and_the_count_by_the_creates_time(sm):
    s = dt.timedelta(seconds=1)
    old = await run_intents.add(sm, create_and_run(), now=T - 60 * s)
    await run_intents.add(sm, create_and_run(), now=T)  # young
    on_thread = run_intents.NewIntent(thread_id="t", api_prefix="/v1", worker=OTHER)
    await run_intents.add(sm, on_thread, now=T - 60 * s)  # recoverable, never unseen
    found = await unseen_creates.pending(sm, older_than=T - 10 * s)
    assert [i.id for i in found] == [old] and found[0].assistant_id == "asst_1"
    assert await unseen_creates.unseen(sm) == unseen_creates.Unseen(0, None)
    await unseen_creates.mark_unseen(sm, [old], now=T)
    assert await unseen_creates.unseen(sm) == unseen_creates.Unseen(1, T - 60 * s)
    assert (await unseen_creates.unseen(sm, since=T - 30 * s)).count == 0
    assert (await unseen_creates.unseen(sm, until=T - 30 * s)).count == 1
    # Never listed for recovery: there is no thread to list.
    listed = await run_intents.recoverable(
        sm, fingerprints=["fp-a"], older_than=T + s, host_like="%"
    )
    assert [i.thread_id for i in listed] == []
