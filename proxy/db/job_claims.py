"""The claim side of the collection-job outbox (proxy.db.jobs holds the enqueue side).

A job is claimed by one worker at a time, for a lease: `claim` sets claimed_by and
claimed_until, and a claim whose lease has run out is claimable again, so a replica that dies
mid-job strands nothing. `complete`, `retry`, `release` and `follow` act only while the job is
still claimed by the same worker; they return False when it is not (the lease ran out and
another worker took the job), and the caller then drops its copy. Leases are short and
`renew`ed while a worker holds its jobs, so a dead worker's jobs are free a lease after its last
renewal; and `claimants` and `free_claims` let a worker free at once the claims of a worker it
knows is dead (a predecessor on the same host).

Claiming is one UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING. On PostgreSQL the
SELECT is FOR UPDATE SKIP LOCKED, so concurrent claimers skip each other's rows instead of
waiting (and a row another claimer took meanwhile fails the lease re-check). On SQLite the
transaction begins IMMEDIATE (proxy.db.engine): SQLite has one writer at a time, and the UPDATE
re-checks the lease, so two processes cannot both win a job.

Every function takes the async_sessionmaker and runs one short transaction of its own (but
`complete_held`, which joins the caller's).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import Integer, and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import dialect_of
from proxy.db.engine import reading
from proxy.db.job_rows import ASSISTANTS_SOURCE, CLAIMED_FIELDS, ClaimedJob
from proxy.db.job_rows import table as _t
from proxy.db.models import utcnow
from proxy.redact import redact

__all__ = [
    "backoff",
    "claim",
    "claimants",
    "complete",
    "complete_held",
    "complete_many",
    "follow",
    "free_claims",
    "release",
    "release_many",
    "renew",
    "retry",
]

_MAX_ERROR = 2000


# Statements are built once, at import, and executed with parameters: building one per call
# costs more CPU than the database spends on it (bench/README.md, finding 2).
def _claim(*, skip_locked: bool) -> Any:
    now = bindparam("now", type_=_t.c.next_attempt_at.type)
    unclaimed = or_(_t.c.claimed_until.is_(None), _t.c.claimed_until < now)
    eligible = or_(
        _t.c.key_fingerprint.in_(bindparam("fingerprints", expanding=True)),
        and_(_t.c.has_reported_usage.is_(True), _t.c.created_at <= bindparam("cutoff")),
        # Out of attempts: recorded from the run alone, which needs no key.
        _t.c.attempts >= bindparam("max_attempts", type_=Integer),
    )
    pick = (
        select(_t.c.id)
        .where(
            _t.c.source == bindparam("of_source"),
            _t.c.next_attempt_at <= now,
            unclaimed,
            eligible,
        )
        .order_by(_t.c.next_attempt_at, _t.c.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(_t)
        .where(_t.c.id.in_(pick), unclaimed)
        .values(claimed_by=bindparam("worker"), claimed_until=bindparam("until"))
        .returning(*(_t.c[name] for name in CLAIMED_FIELDS))
    )


# PostgreSQL: claimers skip each other's locked rows instead of waiting. SQLite: the
# transaction holds the single write lock, and the UPDATE re-checks the lease.
_CLAIM = {"postgresql": _claim(skip_locked=True), "sqlite": _claim(skip_locked=False)}
_HELD = and_(_t.c.id.in_(bindparam("ids", expanding=True)), _t.c.claimed_by == bindparam("worker"))
_COMPLETE = delete(_t).where(_HELD).returning(_t.c.id)
_RELEASE = update(_t).where(_HELD).values(claimed_by=None, claimed_until=None).returning(_t.c.id)
_RENEW = (
    update(_t)
    .where(_HELD)
    .values(claimed_until=bindparam("u", type_=_t.c.claimed_until.type))
    .returning(_t.c.id)
)


async def claim(
    sm: async_sessionmaker[AsyncSession],
    *,
    worker: str,
    fingerprints: Collection[str],
    reported_wait: float,
    lease: float,
    limit: int,
    max_attempts: int = 2**31 - 1,
    source: str = ASSISTANTS_SOURCE,
    now: dt.datetime | None = None,
) -> list[ClaimedJob]:
    """Claim up to `limit` due jobs of `source` for `worker`, oldest due first.

    Due: next_attempt_at <= now and not claimed (or the claim's lease has run out). Eligible:
    the job's key fingerprint is in `fingerprints` (this process holds the credential), or the
    object reported its usage and the job is at least `reported_wait` seconds old (recorded
    without fetching), or the job has failed `max_attempts` times (recorded from the object
    alone). The claim lasts `lease` seconds; attempts is not changed. One statement
    in one transaction, whatever `limit` is.
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    params = {
        "now": now,
        "until": now + dt.timedelta(seconds=lease),
        "cutoff": now - dt.timedelta(seconds=reported_wait),
        "fingerprints": list(fingerprints),
        "limit": limit,
        "worker": worker,
        "max_attempts": max_attempts,
        "of_source": source,
    }
    async with sm.begin() as session:
        rows = (await session.execute(_CLAIM[dialect_of(session)], params)).all()
    jobs = [ClaimedJob(**dict(zip(CLAIMED_FIELDS, row, strict=True))) for row in rows]
    # RETURNING promises no order.
    jobs.sort(key=lambda j: (j.next_attempt_at, j.id))
    return jobs


async def complete(sm: async_sessionmaker[AsyncSession], job_id: int, worker: str) -> bool:
    """Delete the job, if `worker` still holds it. True if deleted."""
    return bool(await complete_many(sm, [job_id], worker))


async def complete_many(
    sm: async_sessionmaker[AsyncSession], job_ids: Collection[int], worker: str
) -> set[int]:
    """Delete those of the jobs that `worker` still holds, in one transaction; their ids."""
    if not job_ids:
        return set()
    async with sm.begin() as session:
        return await complete_held(session, job_ids, worker)


async def complete_held(session: AsyncSession, job_ids: Collection[int], worker: str) -> set[int]:
    """`complete_many` inside the caller's transaction, so that a job is deleted together with
    what recording it wrote (run_usage.record_usage_many's `also`)."""
    if not job_ids:
        return set()
    result = await session.execute(_COMPLETE, {"ids": list(job_ids), "worker": worker})
    return set(result.scalars())


async def retry(
    sm: async_sessionmaker[AsyncSession],
    job_id: int,
    worker: str,
    *,
    error: str,
    delay: float,
    now: dt.datetime | None = None,
) -> bool:
    """Count a failed attempt, keep `error` (truncated), make the job due again in `delay`
    seconds and release the claim. True if `worker` still held the job."""
    due = (now or utcnow()) + dt.timedelta(seconds=max(delay, 0.0))
    async with sm.begin() as session:
        return await _give_back(
            session,
            job_id,
            worker,
            attempts=_t.c.attempts + 1,
            last_error=_safe_error(error),
            next_attempt_at=due,
        )


async def release(
    sm: async_sessionmaker[AsyncSession],
    job_id: int,
    worker: str,
    *,
    delay: float = 0.0,
    now: dt.datetime | None = None,
) -> bool:
    """Give the job back without counting an attempt (e.g. its key is no longer in memory);
    with `delay`, it is not due again before then. True if `worker` still held the job."""
    if delay <= 0:
        return bool(await release_many(sm, [job_id], worker))
    due = (now or utcnow()) + dt.timedelta(seconds=delay)
    async with sm.begin() as session:
        return await _give_back(session, job_id, worker, next_attempt_at=due)


async def release_many(
    sm: async_sessionmaker[AsyncSession], job_ids: Collection[int], worker: str
) -> set[int]:
    """Give back those of the jobs that `worker` still holds, due at once and without counting
    an attempt, in one transaction (at shutdown); their ids."""
    if not job_ids:
        return set()
    async with sm.begin() as session:
        result = await session.execute(_RELEASE, {"ids": list(job_ids), "worker": worker})
        return set(result.scalars())


async def _give_back(
    session: AsyncSession, job_id: int, worker: str, *also: Any, **values: Any
) -> bool:
    """Release the claim `worker` holds on the job (and the `also` conditions hold), setting
    `values` too; True if it did."""
    # Rare (a failed fetch, a followed job): built per call, for the values differ.
    stmt = (
        update(_t)
        .where(_t.c.id == job_id, _t.c.claimed_by == worker, *also)
        .values(claimed_by=None, claimed_until=None, **values)
    )
    return (await session.execute(stmt)).rowcount == 1


async def follow(
    sm: async_sessionmaker[AsyncSession],
    job_id: int,
    worker: str,
    *,
    object_json: str,
    delay: float,
    now: dt.datetime | None = None,
) -> bool:
    """An in-progress job whose object `worker` retrieved and found still in progress: keep
    the fresher object, make the job due in `delay` seconds and release the claim, without
    counting an attempt. When the job was finished meanwhile (a client's poll showed the
    object finished), only release it, due at once. True if `worker` still held the job."""
    due = (now or utcnow()) + dt.timedelta(seconds=max(delay, 0.0))
    in_progress = _t.c.in_progress.is_(True)
    async with sm.begin() as session:
        if await _give_back(
            session, job_id, worker, in_progress, object_json=object_json, next_attempt_at=due
        ):
            return True
        result = await session.execute(_RELEASE, {"ids": [job_id], "worker": worker})
        return bool(result.scalars().all())


def backoff(
    attempts: int, *, base: float = 1.0, cap: float = 300.0, retry_after: float | None = None
) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base, 2*base, 4*base, ... up to
    `cap`, and never less than the upstream's `retry_after` (which the cap does not shorten).

    Deterministic, without jitter: a job is held by one worker at a time, so there is no herd
    of retries of the same job to spread out.
    """
    exponent = min(max(attempts - 1, 0), 64)
    delay = min(cap, base * 2.0**exponent)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(delay, 0.0)


def _safe_error(error: str) -> str:
    text = redact(error)
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


async def renew(
    sm: async_sessionmaker[AsyncSession],
    job_ids: Collection[int],
    worker: str,
    *,
    lease: float,
    now: dt.datetime | None = None,
) -> tuple[set[int], dt.datetime]:
    """Extend to `lease` seconds from now the claims `worker` still holds of these jobs, in one
    transaction: (their ids, the new end of the lease)."""
    until = (now or utcnow()) + dt.timedelta(seconds=lease)
    if not job_ids:
        return set(), until
    async with sm.begin() as session:
        result = await session.execute(_RENEW, {"ids": list(job_ids), "worker": worker, "u": until})
        return set(result.scalars()), until


async def claimants(
    sm: async_sessionmaker[AsyncSession], *, like: str, now: dt.datetime | None = None
) -> set[str]:
    """The workers whose id matches the LIKE pattern `like` and that hold a live claim."""
    now = now or utcnow()
    async with reading(sm) as session:
        rows = await session.execute(
            select(_t.c.claimed_by)
            .where(_t.c.claimed_by.like(like), _t.c.claimed_until >= now)
            .distinct()
        )
        return {worker for worker in rows.scalars() if worker}


async def free_claims(sm: async_sessionmaker[AsyncSession], workers: Collection[str]) -> int:
    """Release every claim of these workers (known dead), due at once; how many jobs."""
    if not workers:
        return 0
    async with sm.begin() as session:
        stmt = (
            update(_t)
            .where(_t.c.claimed_by.in_(list(workers)))
            .values(claimed_by=None, claimed_until=None)
        )
        return int((await session.execute(stmt)).rowcount or 0)
