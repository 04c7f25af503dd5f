"""Run intents (proxy.db.run_intents), on both backends: written, deleted with a job in the
job's own transaction, and listed for recovery by age or by this host's workers."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from proxy.db import jobs, run_intents
from proxy.db.models import CollectionJob, RunIntent
from tests.db.test_jobs import T0, make_job


def intent(thread: str, worker: str = "host:1:b.s.x", fp: str = "fp-a") -> run_intents.NewIntent:
    return run_intents.NewIntent(
        thread_id=thread, api_prefix="/v1", key_fingerprint=fp, key_hint="sk-...abcd", worker=worker
    )


async def threads(sm) -> list[str]:
    async with sm() as session:
        return sorted((await session.execute(select(RunIntent.thread_id))).scalars())


async def test_a_job_deletes_its_intent_in_its_own_transaction(sm):
    first = await run_intents.add(sm, intent("thread_a"), now=T0)
    second = await run_intents.add(sm, intent("thread_b"), now=T0)
    assert await jobs.enqueue_many(sm, [make_job("run_a")], also=run_intents.resolved_by([first]))
    assert await threads(sm) == ["thread_b"]

    async def fails(session):
        await run_intents.resolved_by([second])(session)
        raise RuntimeError("the job's transaction fails")

    with pytest.raises(RuntimeError):
        await jobs.enqueue_many(sm, [make_job("run_b")], also=fails)
    # All or nothing: no job, and the intent is still there.
    assert await threads(sm) == ["thread_b"]
    async with sm() as session:
        assert list((await session.execute(select(CollectionJob.object_id))).scalars()) == ["run_a"]


async def test_recoverable_lists_old_intents_and_this_hosts_of_known_keys(sm):
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(seconds=60)
    await run_intents.add(sm, intent("old_other_host", worker="other:2:b.s.y"), now=old)
    await run_intents.add(sm, intent("young_other_host", worker="other:2:b.s.y"), now=now)
    await run_intents.add(sm, intent("young_this_host", worker="host:1:b.s.x"), now=now)
    await run_intents.add(sm, intent("unknown_key", fp="fp-z"), now=old)
    found = await run_intents.recoverable(
        sm, fingerprints=["fp-a"], older_than=now - dt.timedelta(seconds=10), host_like="host:%"
    )
    assert [i.thread_id for i in found] == ["old_other_host", "young_this_host"]
    assert found[0].created_at == old and found[0].key_hint == "sk-...abcd"
    assert await run_intents.recoverable(sm, fingerprints=[], older_than=now, host_like="%") == []
    await run_intents.resolve(sm, [i.id for i in found])
    assert await threads(sm) == ["unknown_key", "young_other_host"]
