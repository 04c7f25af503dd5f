"""audit_log: the changes made to recorded usage after the fact (reassign, reprice), each
written in the transaction that made the change, so the log and the rows cannot disagree."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import AuditEntry, utcnow

__all__ = ["AUDIT_COLUMNS", "add_entry", "audit_entries"]

AUDIT_COLUMNS = ("at", "action", "rows", "cost_usd", "detail")


async def add_entry(
    session: AsyncSession, action: str, detail: dict[str, Any], rows: int, cost: Decimal
) -> None:
    """One audit row, in the caller's transaction. `detail` is stored as JSON."""
    await session.execute(
        insert(AuditEntry).values(
            at=utcnow(),
            action=action,
            detail=json.dumps(detail, sort_keys=True, default=str),
            rows=rows,
            cost_usd=cost,
        )
    )


async def audit_entries(
    sm: async_sessionmaker[AsyncSession], since: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The audit rows from `since` (inclusive), oldest first; `detail` as text (JSON)."""
    stmt = select(*(AuditEntry.__table__.c[c] for c in AUDIT_COLUMNS)).order_by(
        AuditEntry.at, AuditEntry.id
    )
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    async with reading(sm) as session:
        return [dict(row) for row in (await session.execute(stmt)).mappings()]
