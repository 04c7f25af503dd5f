"""Renewed leases and freed claims on collection jobs (proxy.db.job_claims), on both backends."""

from __future__ import annotations

import datetime as dt

from proxy.db import job_claims, jobs
from tests.db.test_jobs import T0, claim, make_job


async def test_renew_extends_only_the_claims_the_worker_still_holds(sm):
    for run in ("run_a", "run_b"):
        await jobs.enqueue(sm, make_job(run), now=T0)
    a, b = await claim(sm, "w1", lease=10.0)
    later = T0 + dt.timedelta(seconds=8)
    renewed, until = await job_claims.renew(sm, [a.id, b.id, 999], "w1", lease=10.0, now=later)
    assert (renewed, until) == ({a.id, b.id}, later + dt.timedelta(seconds=10))
    # Past the first lease, before the renewed one: nobody else can take them.
    assert await claim(sm, "w2", now=T0 + dt.timedelta(seconds=12)) == []
    assert (await job_claims.renew(sm, [a.id], "w2", lease=10.0, now=later))[0] == set()
    # Not renewed any more: free when the renewed lease ends.
    taken = await claim(sm, "w2", now=until + dt.timedelta(seconds=1))
    assert {j.id for j in taken} == {a.id, b.id}


async def test_the_claims_of_a_dead_worker_are_freed_at_once(sm):
    for run in ("run_a", "run_b", "run_c"):
        await jobs.enqueue(sm, make_job(run), now=T0)
    now = dt.datetime.now(dt.UTC)
    await claim(sm, "host:1:x", now=now, limit=2, lease=600.0)
    await claim(sm, "other:2:y", now=now, limit=1, lease=600.0)
    assert await job_claims.claimants(sm, like="host:%") == {"host:1:x"}
    assert await job_claims.claimants(sm, like="%") == {"host:1:x", "other:2:y"}
    assert await job_claims.free_claims(sm, ["host:1:x"]) == 2
    assert await job_claims.free_claims(sm, []) == 0
    again = await claim(sm, "w3", now=now, limit=5)
    assert len(again) == 2  # due at once, not after the 600 s lease
    assert await job_claims.claimants(sm, like="%") == {"w3", "other:2:y"}
