"""Run intents (table run_intents): a run create written down before it is forwarded.

The create's job (proxy.db.jobs) deletes its intent in the same transaction (`resolved_by`);
a create that made no run deletes it at once (`resolve`). What is left belongs to a worker
that died between the two, or to a create whose resolution failed: `recoverable` lists them
for the collector, which lists the thread's runs and opens their jobs, deleting the intent in
that transaction. Jobs are unique per run, so recovering an intent twice records nothing twice.

A create-and-run's intent has no thread (thread_id NULL): it is never recoverable, only matched
with a sighting of its run at another replica, or marked unseen (proxy.db.unseen_creates).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import RunIntent, utcnow

__all__ = ["Intent", "NewIntent", "add", "recoverable", "resolve", "resolved_by"]

_intents: Table = RunIntent.__table__  # type: ignore[assignment]
_DELETE = delete(_intents).where(_intents.c.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True, kw_only=True)
class NewIntent:
    """Never a credential: only its fingerprint and hint."""

    thread_id: str | None  # None: a create-and-run
    api_prefix: str
    api_query: str = ""
    key_fingerprint: str | None = None
    key_hint: str | None = None
    team: str | None = None
    tag: str | None = None
    project: str | None = None
    organization: str | None = None
    worker: str
    assistant_id: str | None = None  # a create-and-run's, from its request body


@dataclass(frozen=True, kw_only=True)
class Intent(NewIntent):
    id: int
    created_at: dt.datetime
    unseen_at: dt.datetime | None = None


async def add(
    sm: async_sessionmaker[AsyncSession], intent: NewIntent, *, now: dt.datetime | None = None
) -> int:
    """Write the intent; its id."""
    values = {**intent.__dict__, "created_at": now or utcnow()}
    async with sm.begin() as session:
        result = await session.execute(insert(_intents).values(values).returning(_intents.c.id))
        return int(result.scalar_one())


def resolved_by(ids: Collection[int]) -> Callable[[AsyncSession], Awaitable[object]]:
    """Deletes the intents inside the caller's transaction (the job write's `also`)."""

    async def delete_them(session: AsyncSession) -> None:
        if ids:
            await session.execute(_DELETE, {"ids": list(ids)})

    return delete_them


async def resolve(sm: async_sessionmaker[AsyncSession], ids: Collection[int]) -> None:
    """Delete the intents (their creates made no run, or their runs have jobs)."""
    if ids:
        async with sm.begin() as session:
            await resolved_by(ids)(session)


async def recoverable(
    sm: async_sessionmaker[AsyncSession],
    *,
    fingerprints: Collection[str],
    older_than: dt.datetime,
    host_like: str,
    limit: int = 100,
) -> list[Intent]:
    """Intents on a thread, of these keys, that are older than `older_than`, or were written
    by a worker of this host (`host_like`: the caller tells the dead ones from the living),
    oldest first."""
    if not fingerprints:
        return []
    query = (
        select(_intents)
        .where(
            _intents.c.key_fingerprint.in_(list(fingerprints)),
            _intents.c.thread_id.is_not(None),
            or_(_intents.c.created_at < older_than, _intents.c.worker.like(host_like)),
        )
        .order_by(_intents.c.created_at)
        .limit(limit)
    )
    async with reading(sm) as session:
        rows = (await session.execute(query)).mappings().all()
    return [Intent(**row) for row in rows]
