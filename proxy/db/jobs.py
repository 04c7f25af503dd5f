"""The outbox of finished Assistants runs (table collection_jobs).

Every function takes the async_sessionmaker and runs one short transaction of its own, so a
caller never holds a transaction open across an upstream fetch.

A job is claimed by one worker at a time, for a lease: `claim` sets claimed_by and
claimed_until, and a claim whose lease has run out is claimable again, so a replica that dies
mid-job strands nothing. `complete`, `retry` and `release` act only while the job is still
claimed by the same worker; they return False when it is not (the lease ran out and another
worker took the job), and the caller then drops its copy.

Claiming: on PostgreSQL, SELECT ... FOR UPDATE SKIP LOCKED then UPDATE, in one transaction, so
concurrent claimers skip each other's rows instead of waiting. On SQLite, one
UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING in a transaction that begins IMMEDIATE
(proxy.db.engine): SQLite has one writer at a time, and the UPDATE re-checks the lease, so two
processes cannot both win a job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import CollectionJob, utcnow

__all__ = [
    "ClaimedJob",
    "NewJob",
    "backoff",
    "claim",
    "complete",
    "enqueue",
    "pending_count",
    "release",
    "retry",
]

_jobs: Table = CollectionJob.__table__  # type: ignore[assignment]
_MAX_ERROR = 2000
# Defence in depth: callers pass safe text, but an upstream error body could echo a key.
_SECRETS = re.compile(r"(sk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]+|(Bearer\s+)\S+", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """The content of a collection job; never a credential (only its fingerprint and hint)."""

    run_id: str
    thread_id: str
    api_prefix: str
    api_query: str = ""
    run_json: str
    key_fingerprint: str | None = None
    key_hint: str | None = None
    team: str | None = None
    tag: str | None = None
    project: str | None = None
    organization: str | None = None
    has_reported_usage: bool = False


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


def _insert(session: AsyncSession):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_jobs)


async def enqueue(
    sm: async_sessionmaker[AsyncSession], job: NewJob, *, now: dt.datetime | None = None
) -> bool:
    """Insert the job unless one exists for its run_id. True if this call inserted it."""
    now = now or utcnow()
    values = {name: getattr(job, name) for name in _NEW_FIELDS}
    async with sm.begin() as session:
        stmt = (
            _insert(session)
            .values(**values, created_at=now, next_attempt_at=now, attempts=0)
            .on_conflict_do_nothing(index_elements=["run_id"])
            .returning(_jobs.c.id)
        )
        return (await session.execute(stmt)).first() is not None


async def claim(
    sm: async_sessionmaker[AsyncSession],
    *,
    worker: str,
    fingerprints: Collection[str],
    reported_wait: float,
    lease: float,
    limit: int,
    now: dt.datetime | None = None,
) -> list[ClaimedJob]:
    """Claim up to `limit` due jobs for `worker`, oldest due first.

    Due: next_attempt_at <= now and not claimed (or the claim's lease has run out). Eligible:
    the job's key fingerprint is in `fingerprints` (this process holds the credential), or the
    run reported its usage and the job is at least `reported_wait` seconds old (recorded
    without fetching). The claim lasts `lease` seconds; attempts is not changed.
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    until = now + dt.timedelta(seconds=lease)
    eligible = and_(
        _jobs.c.has_reported_usage.is_(True),
        _jobs.c.created_at <= now - dt.timedelta(seconds=reported_wait),
    )
    if fingerprints:
        eligible = or_(_jobs.c.key_fingerprint.in_(list(fingerprints)), eligible)
    unclaimed = or_(_jobs.c.claimed_until.is_(None), _jobs.c.claimed_until < now)
    due = and_(_jobs.c.next_attempt_at <= now, unclaimed, eligible)
    pick = select(_jobs.c.id).where(due).order_by(_jobs.c.next_attempt_at, _jobs.c.id).limit(limit)
    take = update(_jobs).values(claimed_by=worker, claimed_until=until).returning(*_jobs.c)

    async with sm.begin() as session:
        if session.get_bind().dialect.name == "postgresql":
            ids = (await session.scalars(pick.with_for_update(skip_locked=True))).all()
            if not ids:
                return []
            rows = (await session.execute(take.where(_jobs.c.id.in_(ids)))).mappings().all()
        else:
            stmt = take.where(_jobs.c.id.in_(pick), unclaimed)
            rows = (await session.execute(stmt)).mappings().all()
    jobs = [ClaimedJob(**{name: row[name] for name in _CLAIMED_FIELDS}) for row in rows]
    # RETURNING promises no order.
    jobs.sort(key=lambda j: (j.next_attempt_at, j.id))
    return jobs


async def complete(sm: async_sessionmaker[AsyncSession], job_id: int, worker: str) -> bool:
    """Delete the job, if `worker` still holds it. True if deleted."""
    async with sm.begin() as session:
        stmt = delete(_jobs).where(_jobs.c.id == job_id, _jobs.c.claimed_by == worker)
        return (await session.execute(stmt)).rowcount == 1


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
    values: dict[str, object] = {"claimed_by": None, "claimed_until": None}
    if delay > 0:
        values["next_attempt_at"] = (now or utcnow()) + dt.timedelta(seconds=delay)
    return await _update_claimed(sm, job_id, worker, values)


async def _update_claimed(
    sm: async_sessionmaker[AsyncSession], job_id: int, worker: str, values: dict[str, object]
) -> bool:
    async with sm.begin() as session:
        stmt = (
            update(_jobs).where(_jobs.c.id == job_id, _jobs.c.claimed_by == worker).values(**values)
        )
        return (await session.execute(stmt)).rowcount == 1


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
    text = _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "***", error)
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."
