"""Create-and-runs that may be unrecorded (table run_intents, rows whose thread_id is NULL).

A create-and-run (POST .../threads/runs) names no thread, so its intent cannot be recovered by
listing one (proxy.db.run_intents). What this module does with such an intent instead:

- `match`: a run first recorded from a sighting at another worker (a poll, a list, a stream
  of submit_tool_outputs) deletes the closest create-and-run intent of its key, in the job's
  transaction: the create's answer reached its client, which showed the run again.
- `mark_unseen`: an intent whose worker died, left unmatched `unseen_after` seconds, is marked
  (unseen_at, set once: the UPDATE's `unseen_at IS NULL` decides which replica reports it).
- `unseen`: how many are marked, and since when: an upper bound of the runs a crash lost
  (docs/architecture.md, "Runs at any moment of a crash").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.job_rows import ASSISTANTS_SOURCE
from proxy.db.models import RunIntent, UsageRecord
from proxy.db.run_intents import Intent

__all__ = ["MATCH_WINDOW", "RunSeen", "Unseen", "mark_unseen", "match", "pending", "unseen"]

_intents: Table = RunIntent.__table__  # type: ignore[assignment]
_usage: Table = UsageRecord.__table__  # type: ignore[assignment]

# How far a run's created_at (the upstream's, whole seconds) may lie from its intent's.
MATCH_WINDOW = dt.timedelta(seconds=5)

_CANDIDATES = (
    select(_intents.c.id, _intents.c.thread_id, _intents.c.assistant_id, _intents.c.created_at)
    .where(
        _intents.c.key_fingerprint == bindparam("fp"),
        or_(_intents.c.thread_id.is_(None), _intents.c.thread_id == bindparam("thread")),
        _intents.c.worker != bindparam("worker"),
        _intents.c.created_at >= bindparam("lo"),
        _intents.c.created_at <= bindparam("hi"),
    )
    .limit(50)
)
_RECORDED = select(_usage.c.id).where(
    _usage.c.kind == ASSISTANTS_SOURCE, _usage.c.object_id == bindparam("run")
)
_DELETE_ONE = delete(_intents).where(_intents.c.id == bindparam("id"))


@dataclass(frozen=True, slots=True)
class RunSeen:
    """A run whose job a sighting other than its own create's answer opened."""

    object_id: str
    thread_id: str | None
    key_fingerprint: str
    created_at: dt.datetime  # the upstream's
    assistant_id: str | None = None


async def match(session: AsyncSession, runs: Sequence[RunSeen], *, worker: str) -> int:
    """In the caller's transaction (the one that inserted the runs' jobs): for each run, delete
    the create-and-run intent of its key, not of `worker`, whose time is closest to the run's
    created_at within MATCH_WINDOW (and whose assistant, if it named one, is the run's); how
    many were deleted.

    Not when the run's thread has an intent of its own (a create on that thread made it), nor
    when the run has a usage row already (its job was done and deleted: seen again later, it
    is not a create-and-run in flight)."""
    deleted = 0
    for run in runs:
        params = {
            "fp": run.key_fingerprint,
            "thread": run.thread_id or "",
            "worker": worker,
            "lo": run.created_at - MATCH_WINDOW,
            "hi": run.created_at + MATCH_WINDOW,
        }
        rows = (await session.execute(_CANDIDATES, params)).all()
        if not rows or any(r.thread_id is not None for r in rows):
            continue
        fits = [r for r in rows if r.assistant_id in (None, run.assistant_id)]
        if not fits or await session.scalar(_RECORDED, {"run": run.object_id}) is not None:
            continue
        closest = min(fits, key=lambda r: (abs(r.created_at - run.created_at), r.id))
        await session.execute(_DELETE_ONE, {"id": closest.id})
        deleted += 1
    return deleted


async def pending(
    sm: async_sessionmaker[AsyncSession],
    *,
    older_than: dt.datetime,
    after: int = 0,
    limit: int = 100,
) -> list[Intent]:
    """Create-and-run intents written before `older_than`, not yet marked, by id from `after`
    on (a page: a live worker's, which stay unmarked, must not hide the rest)."""
    query = (
        select(_intents)
        .where(
            _intents.c.thread_id.is_(None),
            _intents.c.unseen_at.is_(None),
            _intents.c.created_at < older_than,
            _intents.c.id > after,
        )
        .order_by(_intents.c.id)
        .limit(limit)
    )
    async with reading(sm) as session:
        rows = (await session.execute(query)).mappings().all()
    return [Intent(**row) for row in rows]


async def mark_unseen(
    sm: async_sessionmaker[AsyncSession], ids: Collection[int], *, now: dt.datetime
) -> list[Intent]:
    """Mark the intents unseen, those not marked yet; the ones this call marked (another
    replica marking the same ones at once marks each once between them)."""
    if not ids:
        return []
    stmt = (
        update(_intents)
        .where(_intents.c.id.in_(list(ids)), _intents.c.unseen_at.is_(None))
        .values(unseen_at=now)
        .returning(*_intents.c)
    )
    async with sm.begin() as session:
        rows = (await session.execute(stmt)).mappings().all()
    return sorted((Intent(**row) for row in rows), key=lambda i: i.created_at)


@dataclass(frozen=True, slots=True)
class Unseen:
    count: int
    since: dt.datetime | None  # the earliest one's create


async def unseen(
    sm: async_sessionmaker[AsyncSession],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Unseen:
    """The create-and-runs marked unseen whose create was sent in [since, until)."""
    query = select(func.count(), func.min(_intents.c.created_at)).where(
        _intents.c.unseen_at.is_not(None)
    )
    if since is not None:
        query = query.where(_intents.c.created_at >= since)
    if until is not None:
        query = query.where(_intents.c.created_at < until)
    async with reading(sm) as session:
        count, first = (await session.execute(query)).one()
    return Unseen(int(count or 0), first)
