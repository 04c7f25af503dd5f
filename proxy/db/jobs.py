"""The outbox of objects still to collect, per usage source (table collection_jobs):
Assistants runs, so far, from the first time each is seen (`in_progress` until it is seen
finished: the collector follows such a job by retrieving the run itself, see `follow`).

This module is the enqueue side, and the one name callers import: it re-exports the job types
(proxy.db.job_rows) and the claim side (proxy.db.job_claims: `claim`, `complete`, `retry`,
`release`, `follow`, and the lease), so that `jobs.claim` and `jobs.enqueue_many` read alike.

Every function takes the async_sessionmaker and runs one short transaction of its own, so a
caller never holds a transaction open across an upstream fetch. The `_many` variants do the
same for many jobs in one transaction: that, not the database, is what makes a busy collector
cheap (a transaction costs ~0.5 ms of event-loop CPU).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import INSERTS, Insert, dialect_of
from proxy.db.engine import reading
from proxy.db.job_claims import (
    backoff,
    claim,
    complete,
    complete_held,
    complete_many,
    follow,
    release,
    release_many,
    retry,
)
from proxy.db.job_rows import ASSISTANTS_SOURCE, NEW_FIELDS, ClaimedJob, NewJob
from proxy.db.job_rows import table as _jobs
from proxy.db.models import utcnow

__all__ = [
    "ASSISTANTS_SOURCE",
    "ClaimedJob",
    "NewJob",
    "backoff",
    "claim",
    "complete",
    "complete_held",
    "complete_many",
    "enqueue",
    "enqueue_many",
    "follow",
    "pending_count",
    "release",
    "release_many",
    "retry",
]

# Seconds before the collector first retrieves a run seen in progress itself.
FOLLOW_FIRST = 2.0


# Built once, at import, and executed with parameters: building one per call costs more CPU
# than the database spends on it (bench/README.md, finding 2).
def _enqueue(insert: Insert) -> Any:
    stmt = insert(_jobs)
    new = stmt.excluded
    # A job opened in progress takes the object as it was seen finished (the collector stops
    # following it, and collects it at once); any other repeat changes nothing.
    return stmt.on_conflict_do_update(
        index_elements=["source", "object_id"],
        set_={
            "object_json": new.object_json,
            "has_reported_usage": new.has_reported_usage,
            "in_progress": new.in_progress,
            "next_attempt_at": new.next_attempt_at,
        },
        where=and_(_jobs.c.in_progress.is_(True), new.in_progress.is_(False)),
    ).returning(_jobs.c.object_id, _jobs.c.created_at)


_ENQUEUE = {name: _enqueue(insert) for name, insert in INSERTS.items()}


async def enqueue(
    sm: async_sessionmaker[AsyncSession], job: NewJob, *, now: dt.datetime | None = None
) -> bool:
    """Insert the job unless its source has one for its object, or finish the in-progress job
    it has with this finished one. True if this call inserted or finished it."""
    return await enqueue_many(sm, [job], now=now) == 1


async def enqueue_many(
    sm: async_sessionmaker[AsyncSession],
    new_jobs: Iterable[NewJob],
    *,
    now: dt.datetime | None = None,
    follow_after: float = FOLLOW_FIRST,
    also: Callable[[AsyncSession], Awaitable[object]] | None = None,  # in the same transaction
    inserted: Callable[[AsyncSession, set[str]], Awaitable[object]] | None = None,
) -> int:
    """Insert, in one transaction, the jobs whose (source, object_id) has no job yet, and turn
    an in-progress job into the finished one when a job of `new_jobs` is finished; how many
    this call inserted or finished. One repeated in `new_jobs` counts once: its first finished
    job, else its first. An in-progress job is first due `follow_after` seconds from now (the
    client's own polls usually show it finished before then). `also`, then `inserted` (given
    the object ids whose jobs this call inserted, not those it finished) run in the same
    transaction. All or nothing: a job the database refuses fails the whole call."""
    now = now or utcnow()
    params: dict[tuple[str, str], dict[str, Any]] = {}
    for job in new_jobs:
        key = (job.source, job.object_id)
        seen = params.get(key)
        if seen is None or (seen["in_progress"] and not job.in_progress):
            values = {name: getattr(job, name) for name in NEW_FIELDS}
            due = now + dt.timedelta(seconds=follow_after) if job.in_progress else now
            values.update(created_at=now, next_attempt_at=due, attempts=0)
            params[key] = values
    if not params:
        return 0
    async with sm.begin() as session:
        result = await session.execute(_ENQUEUE[dialect_of(session)], list(params.values()))
        rows = result.all()
        if also is not None:
            await also(session)
        if inserted is not None:
            # A finished job keeps its created_at: only an inserted one has this call's.
            await inserted(session, {r.object_id for r in rows if r.created_at == now})
        return len(rows)


async def pending_count(sm: async_sessionmaker[AsyncSession]) -> int:
    """Jobs not yet completed, claimed or not."""
    async with reading(sm) as session:
        return int((await session.scalar(select(func.count()).select_from(_jobs))) or 0)
