"""Billed costs, the admin API's keys, true-up adjustments and the pull lease.

Billed rows of a day are replaced as a whole by each pull (the provider is the source of
truth for what it billed), but only rows that changed are written: pulling closed days again
changes nothing. Adjustments are usage_records of kind `adjustment`, one per team, project
and day, linked to their Reconciliation by object_id (`reconciliation:ID:...`) and tag.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, delete, func, literal_column, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import rollup
from proxy.db.engine import reading
from proxy.db.models import BilledCost, BillingKey, BillingLease, Reconciliation, UsageRecord

__all__ = [
    "ADJUSTMENT",
    "billed_rows",
    "billing_keys",
    "delete_adjustments",
    "recorded_rows",
    "replace_billed",
    "seen_keys",
    "take_lease",
    "upsert_keys",
    "write_adjustments",
]

ADJUSTMENT = "adjustment"
Sessionmaker = async_sessionmaker[AsyncSession]


async def replace_billed(
    sm: Sessionmaker, source: str, days: Sequence[str], rows: Iterable[Any]
) -> int:
    """Make the billed rows of `source` on `days` exactly `rows` (objects with day, project,
    api_key_id, line_item, amount, currency); returns how many rows were inserted, changed or
    deleted."""
    wanted = {(r.day, r.project, r.api_key_id, _deployment(r), r.line_item): r for r in rows}
    changed = 0
    async with sm() as session, session.begin():
        existing = (
            await session.scalars(
                select(BilledCost).where(BilledCost.source == source, BilledCost.day.in_(days))
            )
        ).all()
        seen = set()
        for row in existing:
            key = (row.day, row.project, row.api_key_id, row.deployment, row.line_item)
            new = wanted.get(key)
            if new is None:
                await session.delete(row)
                changed += 1
                continue
            seen.add(key)
            if row.amount != new.amount or row.currency != new.currency:
                row.amount, row.currency = new.amount, new.currency
                row.pulled_at = dt.datetime.now(dt.UTC)
                changed += 1
        for key, new in wanted.items():
            if key not in seen:
                session.add(
                    BilledCost(
                        source=source,
                        day=new.day,
                        project=new.project,
                        api_key_id=new.api_key_id,
                        deployment=_deployment(new),
                        line_item=new.line_item,
                        amount=new.amount,
                        currency=new.currency,
                    )
                )
                changed += 1
    return changed


def _deployment(row: Any) -> str:
    return getattr(row, "deployment", "") or ""


async def upsert_keys(sm: Sessionmaker, keys: Iterable[Any]) -> None:
    """Insert or update the admin API's keys (objects with BillingKey's fields)."""
    async with sm() as session, session.begin():
        for key in keys:
            row = await session.get(BillingKey, key.api_key_id)
            if row is None:
                row = BillingKey(api_key_id=key.api_key_id)
                session.add(row)
            row.project = key.project
            row.project_name = key.project_name
            row.name = key.name
            row.redacted_value = key.redacted_value
            row.seen_at = dt.datetime.now(dt.UTC)


async def billing_keys(sm: Sessionmaker) -> list[BillingKey]:
    async with reading(sm) as session:
        return list((await session.scalars(select(BillingKey))).all())


async def billed_rows(sm: Sessionmaker, since: str, until: str) -> list[BilledCost]:
    """Billed rows of days in [since, until) (YYYY-MM-DD), every source."""
    async with reading(sm) as session:
        query = select(BilledCost).where(BilledCost.day >= since, BilledCost.day < until)
        return list((await session.scalars(query)).all())


async def recorded_rows(
    sm: Sessionmaker, since: dt.datetime, until: dt.datetime, *, adjustments: bool = False
) -> list[dict[str, Any]]:
    """Recorded cost in [since, until) summed per UTC day, project, key hint, team, kind,
    model and deployment (dicts with those keys and cost_usd, exact); adjustments only when
    asked."""
    u = UsageRecord
    async with reading(sm) as session:
        day = _utc_day(session.get_bind().dialect.name).label("day")
        keys = [day, u.project, u.key_hint, u.team, u.kind, u.model, u.deployment]
        query = (
            select(*keys, func.sum(u.cost_usd).label("cost_usd"))
            .where(u.occurred_at >= since, u.occurred_at < until)
            .group_by(*keys)
        )
        if not adjustments:
            query = query.where(u.kind != ADJUSTMENT)
        rows = (await session.execute(query)).mappings().all()
    return [{**row, "cost_usd": row["cost_usd"] or Decimal(0)} for row in rows]


def _utc_day(dialect: str) -> ColumnElement[str]:
    # As proxy.db.queries' day: literals, so GROUP BY repeats the SELECT expression exactly.
    if dialect == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), UsageRecord.occurred_at)
        return func.to_char(utc, literal_column("'YYYY-MM-DD'"))
    return func.strftime(literal_column("'%Y-%m-%d'"), UsageRecord.occurred_at)


async def write_adjustments(
    sm: Sessionmaker, month: str, rows: Sequence[dict[str, Any]]
) -> int | None:
    """One Reconciliation for `month` and its adjustment rows (dicts with day, project, team,
    amount); None when the month already has one (undo it first). Returns its id."""
    async with sm() as session, session.begin():
        if await session.scalar(select(Reconciliation.id).where(Reconciliation.month == month)):
            return None
        total = sum((r["amount"] for r in rows), Decimal(0))
        rec = Reconciliation(month=month, adjusted_usd=total)
        session.add(rec)
        await session.flush()
        now = dt.datetime.now(dt.UTC)
        for r in rows:
            day = dt.datetime.fromisoformat(r["day"]).replace(tzinfo=dt.UTC)
            session.add(
                UsageRecord(
                    kind=ADJUSTMENT,
                    object_id=f"reconciliation:{rec.id}:{r['day']}:{r['project']}:{r['team']}",
                    occurred_at=day,
                    recorded_at=now,
                    team=r["team"],
                    project=r["project"] or None,
                    tag=f"reconciliation:{rec.id}",
                    usage_source=ADJUSTMENT,
                    cost_usd=r["amount"],
                )
            )
        await session.flush()
        await rollup.add_where(session, _adjustments_of(rec.id))
        return rec.id


async def delete_adjustments(sm: Sessionmaker, month: str) -> int:
    """Remove the month's reconciliation and its adjustment rows; returns how many rows."""
    async with sm() as session, session.begin():
        rid = await session.scalar(select(Reconciliation.id).where(Reconciliation.month == month))
        if rid is None:
            return 0
        await rollup.remove_where(session, _adjustments_of(rid))
        result = await session.execute(delete(UsageRecord).where(*_adjustments_of(rid)))
        await session.execute(delete(Reconciliation).where(Reconciliation.id == rid))
        return result.rowcount or 0


def _adjustments_of(rid: int) -> list[ColumnElement[bool]]:
    return [UsageRecord.kind == ADJUSTMENT, UsageRecord.tag == f"reconciliation:{rid}"]


async def take_lease(sm: Sessionmaker, name: str, holder: str, seconds: float) -> bool:
    """Hold the lease `name` for `seconds` more if it is free, ours, or run out. Exactly one
    holder wins: the conditional UPDATE (or the primary key, for the first INSERT) decides."""
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(seconds=seconds)
    async with sm() as session, session.begin():
        result = await session.execute(
            update(BillingLease)
            .where(
                BillingLease.name == name,
                (BillingLease.holder == holder) | (BillingLease.expires_at < now),
            )
            .values(holder=holder, expires_at=until)
        )
        if result.rowcount:
            return True
        if await session.get(BillingLease, name) is not None:
            return False
    try:
        async with sm() as session, session.begin():
            session.add(BillingLease(name=name, holder=holder, expires_at=until))
        return True
    except IntegrityError:  # another replica inserted it first
        return False


async def seen_keys(sm: Sessionmaker) -> list[tuple[str | None, str]]:
    """Every (project, key hint) pair the proxy recorded usage with."""
    u = UsageRecord
    query = (
        select(u.project, u.key_hint)
        .where(u.key_hint.is_not(None), u.kind != ADJUSTMENT)
        .distinct()
    )
    async with reading(sm) as session:
        return [(p, h) for p, h in await session.execute(query)]
