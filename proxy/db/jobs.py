"""The outbox of objects still to collect, per usage source (table collection_jobs):
Assistants runs, so far, from the first time each is seen (`in_progress` until it is seen
finished: the collector follows such a job by retrieving the run itself, see `follow`).

Every function takes the async_sessionmaker and runs one short transaction of its own, so a
caller never holds a transaction open across an upstream fetch.

A job is claimed by one worker at a time, for a lease: `claim` sets claimed_by and
claimed_until, and a claim whose lease has run out is claimable again, so a replica that dies
mid-job strands nothing. `complete`, `retry` and `release` act only while the job is still
claimed by the same worker; they return False when it is not (the lease ran out and another
worker took the job), and the caller then drops its copy. Leases are short and renewed while
the worker holds the jobs (proxy.db.job_claims).

Claiming is one UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING. On PostgreSQL the
SELECT is FOR UPDATE SKIP LOCKED, so concurrent claimers skip each other's rows instead of
waiting (and a row another claimer took meanwhile fails the lease re-check). On SQLite the
transaction begins IMMEDIATE (proxy.db.engine): SQLite has one writer at a time, and the UPDATE
re-checks the lease, so two processes cannot both win a job.

The `_many` variants do the same for many jobs in one transaction: that, not the database,
is what makes a busy collector cheap (a transaction costs ~0.5 ms of event-loop CPU).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, Table, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import CollectionJob, utcnow
from proxy.redact import redact

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

_jobs: Table = CollectionJob.__table__  # type: ignore[assignment]
# The source of every job written before jobs named theirs (and the only one so far).
ASSISTANTS_SOURCE = "assistants.run"
_MAX_ERROR = 2000
# Seconds before the collector first retrieves a run seen in progress itself.
FOLLOW_FIRST = 2.0
# Defence in depth: callers pass safe text, but an upstream error body could echo a key.


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """The content of a collection job; never a credential (only its fingerprint and hint)."""

    # The usage source that collects the job: the kind of the row it becomes.
    source: str = ASSISTANTS_SOURCE
    object_id: str
    thread_id: str | None = None
    api_prefix: str
    api_query: str = ""
    object_json: str
    key_fingerprint: str | None = None
    key_hint: str | None = None
    team: str | None = None
    tag: str | None = None
    project: str | None = None
    organization: str | None = None
    has_reported_usage: bool = False
    # Not seen finished yet: the collector follows the object until it is.
    in_progress: bool = False


@dataclass(frozen=True, kw_only=True)
class ClaimedJob(NewJob):
    id: int
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    claimed_until: dt.datetime
    last_error: str | None = None


_NEW_FIELDS = tuple(f.name for f in dataclasses.fields(NewJob))
_CLAIMED_FIELDS = tuple(f.name for f in dataclasses.fields(ClaimedJob))


# Statements are built once, at import, and executed with parameters: building one per call
# costs more CPU than the database spends on it (bench/README.md, finding 2).
def _enqueue(insert: Callable[[Table], Any]) -> Any:
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
    ).returning(_jobs.c.object_id)


def _claim(*, skip_locked: bool) -> Any:
    now = bindparam("now", type_=_jobs.c.next_attempt_at.type)
    unclaimed = or_(_jobs.c.claimed_until.is_(None), _jobs.c.claimed_until < now)
    eligible = or_(
        _jobs.c.key_fingerprint.in_(bindparam("fingerprints", expanding=True)),
        and_(_jobs.c.has_reported_usage.is_(True), _jobs.c.created_at <= bindparam("cutoff")),
        # Out of attempts: recorded from the run alone, which needs no key.
        _jobs.c.attempts >= bindparam("max_attempts", type_=Integer),
    )
    pick = (
        select(_jobs.c.id)
        .where(
            _jobs.c.source == bindparam("of_source"),
            _jobs.c.next_attempt_at <= now,
            unclaimed,
            eligible,
        )
        .order_by(_jobs.c.next_attempt_at, _jobs.c.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(_jobs)
        .where(_jobs.c.id.in_(pick), unclaimed)
        .values(claimed_by=bindparam("worker"), claimed_until=bindparam("until"))
        .returning(*(_jobs.c[name] for name in _CLAIMED_FIELDS))
    )


_ENQUEUE = {"postgresql": _enqueue(postgresql.insert), "sqlite": _enqueue(sqlite.insert)}
# PostgreSQL: claimers skip each other's locked rows instead of waiting. SQLite: the
# transaction holds the single write lock, and the UPDATE re-checks the lease.
_CLAIM = {"postgresql": _claim(skip_locked=True), "sqlite": _claim(skip_locked=False)}
_HELD = and_(
    _jobs.c.id.in_(bindparam("ids", expanding=True)), _jobs.c.claimed_by == bindparam("worker")
)
_COMPLETE = delete(_jobs).where(_HELD).returning(_jobs.c.id)
_RELEASE = (
    update(_jobs).where(_HELD).values(claimed_by=None, claimed_until=None).returning(_jobs.c.id)
)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


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
) -> int:
    """Insert, in one transaction, the jobs whose (source, object_id) has no job yet, and turn
    an in-progress job into the finished one when a job of `new_jobs` is finished; how many
    this call inserted or finished. One repeated in `new_jobs` counts once: its first finished
    job, else its first. An in-progress job is first due `follow_after` seconds from now (the
    client's own polls usually show it finished before then). All or nothing: a job the
    database refuses fails the whole call."""
    now = now or utcnow()
    params: dict[tuple[str, str], dict[str, Any]] = {}
    for job in new_jobs:
        key = (job.source, job.object_id)
        seen = params.get(key)
        if seen is None or (seen["in_progress"] and not job.in_progress):
            values = {name: getattr(job, name) for name in _NEW_FIELDS}
            due = now + dt.timedelta(seconds=follow_after) if job.in_progress else now
            values.update(created_at=now, next_attempt_at=due, attempts=0)
            params[key] = values
    if not params:
        return 0
    async with sm.begin() as session:
        result = await session.execute(_ENQUEUE[_dialect(session)], list(params.values()))
        if also is not None:
            await also(session)
        return len(result.all())


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
        rows = (await session.execute(_CLAIM[_dialect(session)], params)).all()
    jobs = [ClaimedJob(**dict(zip(_CLAIMED_FIELDS, row, strict=True))) for row in rows]
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
    now = now or utcnow()
    values = {
        "attempts": _jobs.c.attempts + 1,
        "last_error": _safe_error(error),
        "next_attempt_at": now + dt.timedelta(seconds=max(delay, 0.0)),
        "claimed_by": None,
        "claimed_until": None,
    }
    return await _update_claimed(sm, job_id, worker, values)


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
    values = {
        "claimed_by": None,
        "claimed_until": None,
        "next_attempt_at": (now or utcnow()) + dt.timedelta(seconds=delay),
    }
    return await _update_claimed(sm, job_id, worker, values)


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


async def _update_claimed(
    sm: async_sessionmaker[AsyncSession], job_id: int, worker: str, values: dict[str, object]
) -> bool:
    # Rare (a failed fetch): built per call, for the values differ.
    async with sm.begin() as session:
        stmt = (
            update(_jobs).where(_jobs.c.id == job_id, _jobs.c.claimed_by == worker).values(**values)
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
    now = now or utcnow()
    values = {
        "object_json": object_json,
        "next_attempt_at": now + dt.timedelta(seconds=max(delay, 0.0)),
        "claimed_by": None,
        "claimed_until": None,
    }
    async with sm.begin() as session:
        stmt = (
            update(_jobs)
            .where(
                _jobs.c.id == job_id,
                _jobs.c.claimed_by == worker,
                _jobs.c.in_progress.is_(True),
            )
            .values(**values)
        )
        if (await session.execute(stmt)).rowcount == 1:
            return True
        result = await session.execute(_RELEASE, {"ids": [job_id], "worker": worker})
        return bool(result.scalars().all())


async def pending_count(sm: async_sessionmaker[AsyncSession]) -> int:
    """Jobs not yet completed, claimed or not."""
    async with reading(sm) as session:
        return int((await session.scalar(select(func.count()).select_from(_jobs))) or 0)


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
