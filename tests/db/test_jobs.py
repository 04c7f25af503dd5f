from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from proxy.db import jobs
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.jobs import NewJob
from proxy.db.models import CollectionJob

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def make_job(run_id: str = "run_1", **overrides) -> NewJob:
    fields = {
        "object_id": run_id,
        "thread_id": "thread_1",
        "api_prefix": "/v1",
        "object_json": json.dumps({"id": run_id, "object": "thread.run"}),
        "key_fingerprint": "fp-a",
        "key_hint": "sk-...aaaa",
        "team": "red",
    }
    return NewJob(**(fields | overrides))


def claim(sm, worker: str = "w1", *, fingerprints=("fp-a",), now=T0, **kwargs):
    options = {"reported_wait": 600.0, "lease": 120.0, "limit": 10} | kwargs
    return jobs.claim(sm, worker=worker, fingerprints=fingerprints, now=now, **options)


async def test_enqueue_is_idempotent_on_source_and_object_id(sm):
    assert await jobs.enqueue(sm, make_job(), now=T0)
    assert not await jobs.enqueue(sm, make_job(team="other"), now=T0)
    assert await jobs.pending_count(sm) == 1
    [claimed] = await claim(sm)
    assert claimed.team == "red"
    assert claimed.object_json == make_job().object_json
    assert (claimed.attempts, claimed.created_at) == (0, T0)
    assert claimed.claimed_until == T0 + dt.timedelta(seconds=120)


async def test_each_source_has_its_own_jobs_and_claims_only_its_own(sm):
    assert await jobs.enqueue(sm, make_job(), now=T0)
    batch = make_job(source="batch", thread_id=None, object_json='{"id": "run_1"}')
    assert await jobs.enqueue(sm, batch, now=T0)  # the same id, another source: its own job
    assert await jobs.pending_count(sm) == 2
    [claimed] = await claim(sm, source="batch")
    assert (claimed.source, claimed.object_id, claimed.thread_id) == ("batch", "run_1", None)
    [claimed] = await claim(sm)
    assert claimed.source == jobs.ASSISTANTS_SOURCE


async def test_claim_takes_only_jobs_whose_key_is_held(sm):
    await jobs.enqueue(sm, make_job("run_a", key_fingerprint="fp-a"), now=T0)
    await jobs.enqueue(sm, make_job("run_b", key_fingerprint="fp-b"), now=T0)
    await jobs.enqueue(sm, make_job("run_none", key_fingerprint=None), now=T0)
    assert await claim(sm, fingerprints=()) == []
    assert [j.object_id for j in await claim(sm, fingerprints={"fp-b", "fp-x"})] == ["run_b"]
    assert [j.object_id for j in await claim(sm, fingerprints=["fp-a", "fp-b"])] == ["run_a"]


async def test_reported_usage_jobs_are_claimed_without_the_key_after_the_wait(sm):
    await jobs.enqueue(
        sm, make_job("run_r", key_fingerprint="fp-gone", has_reported_usage=True), now=T0
    )
    await jobs.enqueue(sm, make_job("run_u", key_fingerprint="fp-gone"), now=T0)
    assert await claim(sm, now=T0 + dt.timedelta(seconds=599), fingerprints=()) == []
    later = await claim(sm, now=T0 + dt.timedelta(seconds=600), fingerprints=())
    assert [j.object_id for j in later] == ["run_r"]
    assert later[0].has_reported_usage


async def test_claim_respects_next_attempt_at_and_counts_attempts_on_retry(sm):
    await jobs.enqueue(sm, make_job(), now=T0)
    [job] = await claim(sm)
    error = "HTTP 500 from upstream for key sk-proj-abcdefghijklmnop and Bearer sk-xyzxyzxyzxyz"
    assert await jobs.retry(sm, job.id, "w1", error=error, delay=60, now=T0)
    assert await claim(sm, now=T0 + dt.timedelta(seconds=59)) == []
    [again] = await claim(sm, now=T0 + dt.timedelta(seconds=60))
    assert again.attempts == 1
    assert "abcdefghijklmnop" not in again.last_error
    assert "xyzxyzxyz" not in again.last_error
    assert again.last_error.startswith("HTTP 500 from upstream")


async def test_retry_truncates_long_errors(sm):
    await jobs.enqueue(sm, make_job(), now=T0)
    [job] = await claim(sm)
    assert await jobs.retry(sm, job.id, "w1", error="x" * 10_000, delay=0, now=T0)
    [again] = await claim(sm)
    assert 100 < len(again.last_error) <= 2000


async def test_a_held_lease_blocks_other_claimers_until_it_expires(sm):
    await jobs.enqueue(sm, make_job(), now=T0)
    [job] = await claim(sm, "w1", lease=30)
    assert await claim(sm, "w2", now=T0 + dt.timedelta(seconds=29)) == []
    # w1 died: its lease runs out and w2 takes the job over.
    [taken] = await claim(sm, "w2", now=T0 + dt.timedelta(seconds=31))
    assert taken.id == job.id and taken.attempts == 0
    assert not await jobs.complete(sm, job.id, "w1")
    assert not await jobs.retry(sm, job.id, "w1", error="late", delay=1)
    assert not await jobs.release(sm, job.id, "w1")
    assert await jobs.complete(sm, job.id, "w2")
    assert await jobs.pending_count(sm) == 0


async def test_release_gives_the_job_back_without_counting_an_attempt(sm):
    await jobs.enqueue(sm, make_job(), now=T0)
    [job] = await claim(sm)
    assert await jobs.release(sm, job.id, "w1")
    [again] = await claim(sm, "w2")
    assert again.attempts == 0
    assert await jobs.release(sm, job.id, "w2", delay=30, now=T0)
    assert await claim(sm, now=T0 + dt.timedelta(seconds=29)) == []
    assert len(await claim(sm, now=T0 + dt.timedelta(seconds=30))) == 1


async def test_claim_limit_takes_the_oldest_due_first(sm):
    for i in range(5):
        await jobs.enqueue(sm, make_job(f"run_{i}"), now=T0 + dt.timedelta(seconds=i))
    first = await claim(sm, limit=2, now=T0 + dt.timedelta(seconds=10))
    rest = await claim(sm, limit=10, now=T0 + dt.timedelta(seconds=10))
    assert [j.object_id for j in first] == ["run_0", "run_1"]
    assert [j.object_id for j in rest] == ["run_2", "run_3", "run_4"]
    assert await claim(sm, limit=0, now=T0 + dt.timedelta(seconds=10)) == []


async def test_complete_deletes_only_the_claimed_job(sm):
    await jobs.enqueue(sm, make_job("run_1"), now=T0)
    await jobs.enqueue(sm, make_job("run_2"), now=T0)
    [one, _two] = await claim(sm)
    assert await jobs.complete(sm, one.id, "w1")
    async with sm() as session:
        left = (await session.scalars(select(CollectionJob.object_id))).all()
    assert left == ["run_2"]


@pytest.mark.parametrize(("n", "limit"), [(60, 3), (400, 30)], ids=["small", "large"])
async def test_concurrent_claimers_never_share_a_job(db_url: str, sm, n: int, limit: int):
    await jobs.enqueue_many(sm, [make_job(f"run_{i:03}") for i in range(n)], now=T0)
    engines = [make_engine(db_url) for _ in range(4)]
    # Every claimer takes a first batch before any takes a second, so they overlap however
    # the scheduler orders them (one could otherwise take every batch before the others
    # connect); what follows races freely.
    everyone = asyncio.Barrier(len(engines))

    async def worker(name: str, engine) -> list[int]:
        wsm = make_sessionmaker(engine)
        got: list[int] = []
        first = True
        while batch := await claim(wsm, name, limit=limit, now=T0 + dt.timedelta(seconds=1)):
            got += [j.id for j in batch]
            if first:
                first = False
                await everyone.wait()
            await asyncio.sleep(0)
        return got

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(worker(f"w{i}", e) for i, e in enumerate(engines))), timeout=60
        )
    finally:
        for engine in engines:
            await engine.dispose()
    claimed = [job_id for got in results for job_id in got]
    assert len(claimed) == len(set(claimed)) == n
    assert all(results), "every claimer took a batch"


@pytest.mark.parametrize(
    ("attempts", "kwargs", "expected"),
    [
        (1, {}, 1.0),
        (2, {}, 2.0),
        (5, {}, 16.0),
        (0, {}, 1.0),
        (30, {}, 300.0),
        (10_000, {}, 300.0),
        (3, {"base": 0.5}, 2.0),
        (20, {"cap": 60.0}, 60.0),
        (1, {"retry_after": 42.0}, 42.0),
        (9, {"retry_after": 1.0}, 256.0),
        (20, {"retry_after": 900.0}, 900.0),
    ],
)
def test_backoff(attempts: int, kwargs: dict, expected: float):
    assert jobs.backoff(attempts, **kwargs) == expected


# --- batches (the outbox writer and the collector) -----------------------------------------
async def stored_jobs(sm) -> dict[str, CollectionJob]:
    async with sm() as session:
        return {j.object_id: j for j in await session.scalars(select(CollectionJob))}


async def test_enqueue_many_inserts_new_run_ids_once_in_one_call(sm):
    assert await jobs.enqueue(sm, make_job("run_old", team="old"), now=T0)
    batch = [
        make_job("run_a"),
        make_job("run_old", team="new"),  # exists: untouched
        make_job("run_b", key_fingerprint=None, has_reported_usage=True, api_query="v=1"),
        make_job("run_a", team="second"),  # repeated in the batch: the first one wins
    ]
    assert await jobs.enqueue_many(sm, batch, now=T0 + dt.timedelta(seconds=5)) == 2
    assert await jobs.enqueue_many(sm, batch) == 0
    assert await jobs.enqueue_many(sm, []) == 0
    got = await stored_jobs(sm)
    assert sorted(got) == ["run_a", "run_b", "run_old"]
    assert (got["run_old"].team, got["run_a"].team) == ("old", "red")
    b = got["run_b"]
    assert (b.key_fingerprint, b.has_reported_usage, b.api_query) == (None, True, "v=1")
    t5 = T0 + dt.timedelta(seconds=5)
    assert (b.attempts, b.created_at, b.next_attempt_at) == (0, t5, t5)


async def test_enqueue_many_is_all_or_nothing(sm):
    refused = make_job("run_bad", has_reported_usage="yes")  # no boolean: a StatementError
    with pytest.raises(StatementError):
        await jobs.enqueue_many(sm, [make_job("run_good"), refused])
    assert await jobs.pending_count(sm) == 0


async def test_a_large_claim_takes_the_oldest_due_jobs_in_one_call(sm):
    await jobs.enqueue_many(sm, [make_job(f"run_{i:03}") for i in range(150)], now=T0)
    later = T0 + dt.timedelta(seconds=1)
    first = await claim(sm, limit=100, now=later)
    assert [j.object_id for j in first] == [f"run_{i:03}" for i in range(100)]
    assert {j.claimed_until for j in first} == {later + dt.timedelta(seconds=120)}
    rest = await claim(sm, "w2", limit=100, now=later)
    assert [j.object_id for j in rest] == [f"run_{i:03}" for i in range(100, 150)]
    assert await claim(sm, "w3", limit=100, now=later) == []


async def test_complete_many_deletes_only_the_jobs_the_worker_still_holds(sm):
    await jobs.enqueue_many(sm, [make_job(f"run_{i}") for i in range(4)], now=T0)
    mine = await claim(sm, "w1", limit=3, lease=30)
    # w1's lease on run_0 ran out and w2 took it over; run_3 was never w1's.
    [taken] = await claim(sm, "w2", limit=1, now=T0 + dt.timedelta(seconds=31))
    assert taken.object_id == "run_0"
    ids = {j.object_id: j.id for j in mine}
    got = await stored_jobs(sm)
    done = await jobs.complete_many(sm, [*ids.values(), got["run_3"].id], "w1")
    assert done == {ids["run_1"], ids["run_2"]}
    left = await stored_jobs(sm)
    assert sorted(left) == ["run_0", "run_3"]
    assert left["run_0"].claimed_by == "w2"
    assert await jobs.complete_many(sm, [], "w1") == set()


async def test_complete_held_deletes_with_the_callers_transaction(sm):
    await jobs.enqueue_many(sm, [make_job("run_1"), make_job("run_2")], now=T0)
    held = [j.id for j in await claim(sm)]
    with pytest.raises(RuntimeError):
        async with sm.begin() as session:
            assert await jobs.complete_held(session, held, "w1") == set(held)
            raise RuntimeError("the rest of the transaction failed")
    assert await jobs.pending_count(sm) == 2  # rolled back with it
    async with sm.begin() as session:
        assert await jobs.complete_held(session, held, "w1") == set(held)
    assert await jobs.pending_count(sm) == 0


async def test_release_many_gives_back_only_held_jobs_without_an_attempt(sm):
    await jobs.enqueue_many(sm, [make_job(f"run_{i}") for i in range(3)], now=T0)
    mine = await claim(sm, "w1", limit=2)
    assert await jobs.release_many(sm, [j.id for j in mine], "w2") == set()  # not w2's
    assert await jobs.release_many(sm, [j.id for j in mine], "w1") == {j.id for j in mine}
    again = await claim(sm, "w2", limit=10)
    assert [j.object_id for j in again] == ["run_0", "run_1", "run_2"]
    assert {j.attempts for j in again} == {0}
    assert await jobs.release_many(sm, [], "w1") == set()
