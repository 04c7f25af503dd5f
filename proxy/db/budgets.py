"""Budgets: set (one per subject and period, replaced), list, remove; the spend of subjects in
a time range, summed from usage_records; the fingerprints a key hint may stand for."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from decimal import Decimal

from sqlalchemy import delete, func, select, union
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import alerts as db_alerts
from proxy.db.dialects import insert_for
from proxy.db.engine import reading
from proxy.db.models import Budget, KeyTeam, UsageRecord, utcnow

__all__ = [
    "SUBJECT_COLUMNS",
    "fingerprints_of_hint",
    "list_budgets",
    "remove_budget",
    "set_budget",
    "spend_by_subject",
]

# A budget's subject kind -> the usage_records column that names the subject.
SUBJECT_COLUMNS = {
    "team": UsageRecord.team,
    "key": UsageRecord.key_fingerprint,
    "project": UsageRecord.project,
}


async def set_budget(
    sm: async_sessionmaker[AsyncSession],
    *,
    subject_kind: str,
    subject: str,
    key_hint: str | None,
    limit_usd: Decimal,
    period: str,
    warn: str,
    enforce: bool,
) -> int:
    """Create the budget of (subject, period), or replace its limit, thresholds and enforcement;
    its id. Alerts already sent for the current period stay sent."""
    async with sm.begin() as session:
        values = {
            "key_hint": key_hint,
            "limit_usd": limit_usd,
            "warn": warn,
            "enforce": enforce,
        }
        stmt = insert_for(session, Budget).values(
            subject_kind=subject_kind, subject=subject, period=period, created_at=utcnow(), **values
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["subject_kind", "subject", "period"], set_=values
        ).returning(Budget.id)
        return int((await session.execute(stmt)).scalar_one())


async def list_budgets(sm: async_sessionmaker[AsyncSession]) -> list[Budget]:
    async with reading(sm) as session:
        return list(await session.scalars(select(Budget).order_by(Budget.id)))


async def remove_budget(sm: async_sessionmaker[AsyncSession], budget_id: int) -> bool:
    """True if the budget existed. Its alerts not yet sent go with it."""
    async with sm.begin() as session:
        result = await session.execute(delete(Budget).where(Budget.id == budget_id))
        await db_alerts.drop_unsent(session, db_alerts.BUDGET, db_alerts.budget_prefix(budget_id))
        return result.rowcount == 1


async def spend_by_subject(
    sm: async_sessionmaker[AsyncSession],
    subject_kind: str,
    subjects: Collection[str],
    start: dt.datetime,
    end: dt.datetime,
) -> dict[str, Decimal]:
    """The summed cost of each subject's rows that occurred in [start, end): every kind of row
    (adjustments included); unpriced rows add nothing. Subjects without rows are absent."""
    if not subjects:
        return {}
    column = SUBJECT_COLUMNS[subject_kind]
    stmt = (
        select(column, func.sum(UsageRecord.cost_usd))
        .where(
            column.in_(list(subjects)),
            UsageRecord.occurred_at >= start,
            UsageRecord.occurred_at < end,
        )
        .group_by(column)
    )
    async with reading(sm) as session:
        rows = (await session.execute(stmt)).all()
    return {subject: total or Decimal(0) for subject, total in rows}


async def fingerprints_of_hint(sm: async_sessionmaker[AsyncSession], hint: str) -> list[str]:
    """The key fingerprints known under `hint` (`sk-...abcd`), in key mappings or recorded
    usage: one means the hint names a key; more, that it is ambiguous."""
    stmt = union(
        select(KeyTeam.key_fingerprint).where(KeyTeam.key_hint == hint),
        select(UsageRecord.key_fingerprint).where(
            UsageRecord.key_hint == hint, UsageRecord.key_fingerprint.is_not(None)
        ),
    )
    async with reading(sm) as session:
        return sorted(str(fp) for fp in (await session.scalars(stmt)))
