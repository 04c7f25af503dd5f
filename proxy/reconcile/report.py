"""A reconciliation of recorded against billed cost, from the database, rendered: the one
implementation behind `usage-proxy reconcile` and GET /_proxy/reconcile."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.billing import billed_rows, billing_keys, recorded_rows
from proxy.reconcile.compare import COLUMNS, compare, group_columns
from proxy.reconcile.matching import KeyIndex
from proxy.reconcile.query import ReconcileQuery
from proxy.reports.render import render

__all__ = ["reconcile_rows", "run_reconcile"]


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


async def reconcile_rows(
    sm: async_sessionmaker[AsyncSession], query: ReconcileQuery
) -> list[dict[str, Any]]:
    """The compared rows, totals last (proxy.reconcile.compare)."""
    recorded = await recorded_rows(sm, _midnight(query.since), _midnight(query.until))
    billed = await billed_rows(sm, query.since.isoformat(), query.until.isoformat())
    keys = KeyIndex(await billing_keys(sm))
    return compare(recorded, billed, keys, query.group_by, query.tolerance)


async def run_reconcile(sm: async_sessionmaker[AsyncSession], query: ReconcileQuery) -> str:
    rows = await reconcile_rows(sm, query)
    columns = [*group_columns(query.group_by), *COLUMNS]
    if query.fmt == "table":
        # Largest residuals first; the totals row stays last.
        body = sorted(rows[:-1], key=lambda r: -abs(r["residual_usd"]))
        total = {**rows[-1], columns[0]: "total"} if query.group_by else rows[-1]
        return render([*body, total], columns, "table", totals=False)
    if query.fmt == "json":
        columns = [*columns, "total"]
        return render([{"total": False, **r} for r in rows], columns, "json")
    return render(rows, columns, query.fmt)
