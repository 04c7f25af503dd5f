"""Single usage rows for the dashboard: a team's most expensive events of a period, one event
by id, and a thread's code interpreter calls and sessions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import CodeInterpreterCall, ThreadSession, UsageRecord

__all__ = ["event", "thread_calls", "top_events"]

_U = UsageRecord


async def top_events(
    sm: async_sessionmaker[AsyncSession],
    since: dt.datetime,
    until: dt.datetime,
    *,
    kinds: Sequence[str],
    team: str | None = None,
    limit: int = 10,
) -> list[dict[str, Any]]:
    """The `limit` priced events of `kinds` in [since, until) with the highest cost (of
    `team`, if given), most expensive first."""
    cols = [c for c in _U.__table__.columns if c.name != "estimate_basis"]
    stmt = (
        select(*cols)
        .where(_U.occurred_at >= since, _U.occurred_at < until, _U.kind.in_(list(kinds)))
        .where(_U.cost_usd.is_not(None))
        .order_by(_U.cost_usd.desc(), _U.id)
        .limit(limit)
    )
    if team is not None:
        stmt = stmt.where(_U.team == team)
    async with reading(sm) as session:
        return [dict(r) for r in (await session.execute(stmt)).mappings()]


async def event(
    sm: async_sessionmaker[AsyncSession], kind: str, object_id: str
) -> dict[str, Any] | None:
    """The usage row of (kind, object_id), or None."""
    stmt = select(_U.__table__).where(_U.kind == kind, _U.object_id == object_id)
    async with reading(sm) as session:
        row = (await session.execute(stmt)).mappings().first()
    return dict(row) if row is not None else None


async def thread_calls(
    sm: async_sessionmaker[AsyncSession], thread_id: str
) -> tuple[list[dict[str, Any]], int | None]:
    """A thread's recorded code interpreter calls (run, time), in time order, and its
    session count (None when it has no session row)."""
    c = CodeInterpreterCall
    stmt = select(c.run_id, c.called_at).where(c.thread_id == thread_id).order_by(c.called_at)
    async with reading(sm) as session:
        calls = [dict(r) for r in (await session.execute(stmt)).mappings()]
        state = await session.get(ThreadSession, thread_id)
    return calls, (state.sessions if state is not None else None)
