"""The budget alert outbox: an alert is inserted once per (budget, period, kind, threshold),
whichever replica saw it first; a sender claims due alerts under a lease, then marks each sent,
or due again later. Claimed with FOR UPDATE SKIP LOCKED on PostgreSQL; on SQLite the
transaction holds the single write lock and the UPDATE re-checks the lease.

Budget ids start at 1, so budget_id 0 (RESIDUAL) holds proxy.reconcile's alerts on flagged billing
residuals, one per closed day, delivered by the same sender."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, Table, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.dialects import check_returning, dialect_of, insert_for
from proxy.db.engine import reading
from proxy.db.models import BudgetAlert, utcnow

__all__ = [
    "RESIDUAL",
    "ClaimedAlert",
    "NewAlert",
    "add_alerts",
    "alerted",
    "claim",
    "failed",
    "sent",
]

_alerts: Table = BudgetAlert.__table__  # type: ignore[assignment]
RESIDUAL = 0


@dataclass(frozen=True, slots=True)
class NewAlert:
    budget_id: int
    period_start: str
    kind: str  # "threshold" | "forecast"
    threshold: int  # percent; 0 for a forecast
    payload: str  # the JSON body to post


@dataclass(frozen=True, slots=True)
class ClaimedAlert:
    id: int
    payload: str
    attempts: int


def _claim(*, skip_locked: bool) -> Any:
    now = bindparam("now", type_=_alerts.c.next_attempt_at.type)
    unclaimed = or_(_alerts.c.claimed_until.is_(None), _alerts.c.claimed_until < now)
    pick = (
        select(_alerts.c.id)
        .where(_alerts.c.sent_at.is_(None), _alerts.c.next_attempt_at <= now, unclaimed)
        .order_by(_alerts.c.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(_alerts)
        .where(_alerts.c.id.in_(pick), unclaimed)
        .values(claimed_by=bindparam("worker"), claimed_until=bindparam("until"))
        .returning(_alerts.c.id, _alerts.c.payload, _alerts.c.attempts)
    )


_CLAIM = {"postgresql": _claim(skip_locked=True), "sqlite": _claim(skip_locked=False)}


async def add_alerts(sm: async_sessionmaker[AsyncSession], new: Sequence[NewAlert]) -> int:
    """Insert the alerts that do not exist yet; how many this call inserted."""
    if not new:
        return 0
    now = utcnow()
    async with sm.begin() as session:
        stmt = (
            insert_for(session, BudgetAlert)
            .on_conflict_do_nothing(
                index_elements=["budget_id", "period_start", "kind", "threshold"]
            )
            .returning(BudgetAlert.id)
        )
        check_returning(dialect_of(session))
        inserted = 0
        for alert in new:
            values = {
                "budget_id": alert.budget_id,
                "period_start": alert.period_start,
                "kind": alert.kind,
                "threshold": alert.threshold,
                "payload": alert.payload,
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now,
            }
            if (await session.execute(stmt.values(**values))).first() is not None:
                inserted += 1
        return inserted


async def alerted(
    sm: async_sessionmaker[AsyncSession], budget_ids: Sequence[int], period_starts: Sequence[str]
) -> set[tuple[int, str, str, int]]:
    """The (budget_id, period_start, kind, threshold) of the alerts that exist for these
    budgets and periods, sent or not."""
    if not budget_ids:
        return set()
    stmt = select(
        _alerts.c.budget_id, _alerts.c.period_start, _alerts.c.kind, _alerts.c.threshold
    ).where(
        _alerts.c.budget_id.in_(list(budget_ids)),
        _alerts.c.period_start.in_(list(set(period_starts))),
    )
    async with reading(sm) as session:
        return {(b, p, k, t) for b, p, k, t in await session.execute(stmt)}


async def claim(
    sm: async_sessionmaker[AsyncSession],
    *,
    worker: str,
    lease: float,
    limit: int = 10,
    now: dt.datetime | None = None,
) -> list[ClaimedAlert]:
    """Claim up to `limit` due alerts (not sent, next attempt due, no live lease) for `worker`."""
    now = now or utcnow()
    params = {
        "now": now,
        "until": now + dt.timedelta(seconds=lease),
        "worker": worker,
        "limit": limit,
    }
    async with sm.begin() as session:
        result = await session.execute(_CLAIM[dialect_of(session)], params)
        return [ClaimedAlert(i, p, a) for i, p, a in result]


async def sent(sm: async_sessionmaker[AsyncSession], alert_id: int, worker: str) -> None:
    """The alert was delivered: never sent again."""
    async with sm.begin() as session:
        await session.execute(
            update(BudgetAlert)
            .where(BudgetAlert.id == alert_id, BudgetAlert.claimed_by == worker)
            .values(sent_at=utcnow(), claimed_until=None)
        )


async def failed(
    sm: async_sessionmaker[AsyncSession],
    alert_id: int,
    worker: str,
    *,
    error: str,
    delay: float,
) -> None:
    """Delivery failed: released, and due again after `delay` seconds."""
    now = utcnow()
    async with sm.begin() as session:
        await session.execute(
            update(BudgetAlert)
            .where(BudgetAlert.id == alert_id, BudgetAlert.claimed_by == worker)
            .values(
                attempts=BudgetAlert.attempts + 1,
                next_attempt_at=now + dt.timedelta(seconds=delay),
                last_error=error[:255],
                claimed_by=None,
                claimed_until=None,
            )
        )
