"""The claims on collection jobs, beside proxy.db.jobs: leases are short and `renew`ed while
a worker holds its jobs, so a dead worker's jobs are free a lease after its last renewal; and
`claimants` and `free_claims` let a worker free at once the claims of a worker it knows is dead
(a predecessor on the same host)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import Table, and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import CollectionJob, utcnow

__all__ = ["claimants", "free_claims", "renew"]

_jobs: Table = CollectionJob.__table__  # type: ignore[assignment]
_RENEW = (
    update(_jobs)
    .where(
        and_(
            _jobs.c.id.in_(bindparam("ids", expanding=True)),
            _jobs.c.claimed_by == bindparam("worker"),
        )
    )
    .values(claimed_until=bindparam("u", type_=_jobs.c.claimed_until.type))
    .returning(_jobs.c.id)
)


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
            select(_jobs.c.claimed_by)
            .where(_jobs.c.claimed_by.like(like), _jobs.c.claimed_until >= now)
            .distinct()
        )
        return {worker for worker in rows.scalars() if worker}


async def free_claims(sm: async_sessionmaker[AsyncSession], workers: Collection[str]) -> int:
    """Release every claim of these workers (known dead), due at once; how many jobs."""
    if not workers:
        return 0
    async with sm.begin() as session:
        stmt = (
            update(_jobs)
            .where(_jobs.c.claimed_by.in_(list(workers)))
            .values(claimed_by=None, claimed_until=None)
        )
        return int((await session.execute(stmt)).rowcount or 0)
