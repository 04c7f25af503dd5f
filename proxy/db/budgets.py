"""Budgets: set (one per subject and period, replaced), list, remove; the spend of subjects in
a period; the fingerprints a key hint may stand for.

A period's spend of teams and keys is read from the daily rollup (usage_rollup, or
usage_rollup_month for a whole calendar month), which the writes of usage rows keep in their
own transaction, so it is exactly what the rows sum to and is read in cells, not events: a
team's day or month is an index range (ix_usage_rollup_team_day, or the month table's primary
key), a key's is the period's cells of every subject (the rollup's primary key starts with the
day), filtered. Projects are not a rollup dimension: their spend sums the period's usage rows
(a range of ix_usage_records_occurred_at, filtered), which grows with the period's traffic."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Select, delete, func, select, union
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import alerts as db_alerts
from proxy.db.dialects import insert_for
from proxy.db.engine import reading
from proxy.db.models import (
    Budget,
    KeyTeam,
    UsageRecord,
    UsageRollup,
    UsageRollupMonth,
    utcnow,
)
from proxy.db.rollup import utc_day

__all__ = [
    "ALERT_SOURCE",
    "SUBJECT_COLUMNS",
    "BudgetAlert",
    "alert_key",
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
# The rollups' columns of the kinds they hold.
_DAY_COLUMNS = {"team": UsageRollup.team, "key": UsageRollup.key_fingerprint}
_MONTH_COLUMNS = {"team": UsageRollupMonth.team, "key": UsageRollupMonth.key_fingerprint}


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
        await db_alerts.drop_unsent(session, ALERT_SOURCE, _alert_prefix(budget_id))
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
    stmt = _spend_statement(subject_kind, list(subjects), start, end)
    async with reading(sm) as session:
        rows = (await session.execute(stmt)).all()
    return {subject: total or Decimal(0) for subject, total in rows}


def _midnight(when: dt.datetime) -> bool:
    return when.astimezone(dt.UTC).time() == dt.time(0)


def _spend_statement(
    kind: str, subjects: list[str], start: dt.datetime, end: dt.datetime
) -> Select[tuple[str, Decimal | None]]:
    if kind in _DAY_COLUMNS and _midnight(start) and _midnight(end):
        s, e = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        if s.day == 1 and e.day == 1 and (e.year * 12 + e.month) - (s.year * 12 + s.month) == 1:
            month = _MONTH_COLUMNS[kind]
            return (
                select(month, func.sum(UsageRollupMonth.cost_usd))
                .where(month.in_(subjects), UsageRollupMonth.month == s.strftime("%Y-%m"))
                .group_by(month)
            )
        day = _DAY_COLUMNS[kind]
        return (
            select(day, func.sum(UsageRollup.cost_usd))
            .where(day.in_(subjects), UsageRollup.day >= utc_day(s), UsageRollup.day < utc_day(e))
            .group_by(day)
        )
    # Projects, or a range that is not whole days: the rows.
    column = SUBJECT_COLUMNS[kind]
    return (
        select(column, func.sum(UsageRecord.cost_usd))
        .where(
            column.in_(subjects),
            UsageRecord.occurred_at >= start,
            UsageRecord.occurred_at < end,
        )
        .group_by(column)
    )


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


# --- the budgets' alerts in the outbox (proxy.db.alerts) ----------------------------------
ALERT_SOURCE = "budget"


def _alert_prefix(budget_id: int) -> str:
    """What the keys of one budget's alerts, and only its, start with."""
    return f"{budget_id}/"


def alert_key(budget_id: int, period_start: str, kind: str, threshold: int) -> str:
    """`<budget id>/<period start>/<kind>/<threshold>`; migration 0015 spells the same key."""
    return f"{_alert_prefix(budget_id)}{period_start}/{kind}/{threshold}"


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget's alert, one per budget, period, kind ("threshold" or "forecast") and
    threshold (percent; 0 for a forecast): what db_alerts.add_alerts takes."""

    budget_id: int
    period_start: str
    kind: str
    threshold: int
    payload: str
    source: str = ALERT_SOURCE

    @property
    def dedup_key(self) -> str:
        return alert_key(self.budget_id, self.period_start, self.kind, self.threshold)
