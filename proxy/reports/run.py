"""Run a ReportQuery against the usage table and render it: the one code path behind
`usage-proxy report` and `GET /_proxy/usage`."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.queries import EVENT_COLUMNS, GROUP_FIELDS, SUMS, usage_events, usage_groups
from proxy.reports.query import ReportQuery
from proxy.reports.render import EVENT_TABLE_COLUMNS, render

__all__ = ["run_report"]


async def run_report(sm: async_sessionmaker[AsyncSession], query: ReportQuery) -> str:
    """The report's text: one line per event, or totals per group of `query.group_by`.
    Database errors are raised (SQLAlchemyError, OSError)."""
    filters = dict(query.filters)
    if query.group_by:
        rows = await usage_groups(sm, query.group_by, query.since, query.until, **filters)
        columns = [c for name in dict.fromkeys(query.group_by) for c in GROUP_FIELDS[name]]
        return render(rows, [*columns, *SUMS], query.fmt)
    rows = await usage_events(sm, query.since, query.until, **filters)
    return render(rows, EVENT_COLUMNS, query.fmt, table_columns=EVENT_TABLE_COLUMNS)
