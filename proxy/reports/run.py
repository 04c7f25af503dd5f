"""Run a ReportQuery against the usage table and render it: the one code path behind
`usage-proxy report` and `GET /_proxy/usage`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.assistant_names import names_of
from proxy.db.queries import EVENT_COLUMNS, GROUP_FIELDS, SUMS, stream_events, usage_events
from proxy.db.rollup_query import report_groups
from proxy.db.unseen_creates import Unseen
from proxy.reports.focus import FOCUS_COLUMNS, focus_rows
from proxy.reports.query import ReportQuery
from proxy.reports.render import EVENT_TABLE_COLUMNS, render, to_csv

__all__ = ["run_report", "stream_report", "unpriced_note", "unseen_note"]

# The table shows unpriced_events and unpriced_tokens; `priced` is for programs (CSV, JSON).
_GROUP_TABLE_SUMS = tuple(name for name in SUMS if name != "priced")
# Summed in the table's totals line, also when no event matched.
_NUMERIC = frozenset(
    {*_GROUP_TABLE_SUMS, "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"}
)


async def run_report(sm: async_sessionmaker[AsyncSession], query: ReportQuery) -> str:
    """The report's text: one line per event, or totals per group of `query.group_by`.
    Database errors are raised (SQLAlchemyError, OSError)."""
    filters = dict(query.filters)
    if query.fmt == "focus":
        return await _focus(sm, query)
    if query.group_by:
        rows = await report_groups(sm, query.group_by, query.since, query.until, **filters)
        columns = [c for name in dict.fromkeys(query.group_by) for c in GROUP_FIELDS[name]]
        return render(
            rows,
            [*columns, *SUMS],
            query.fmt,
            table_columns=[*columns, *_GROUP_TABLE_SUMS],
            numeric=_NUMERIC,
        )
    rows = await usage_events(sm, query.since, query.until, **filters)
    text = render(
        rows, EVENT_COLUMNS, query.fmt, table_columns=EVENT_TABLE_COLUMNS, numeric=_NUMERIC
    )
    return text + unpriced_note(rows) if query.fmt == "table" else text


def stream_report(
    sm: async_sessionmaker[AsyncSession], query: ReportQuery
) -> AsyncIterator[str] | None:
    """The report's text in pieces, for a per-event CSV (the one report whose size grows with
    the rows); None for any other report, which run_report gives whole. The pieces join to
    exactly run_report's text."""
    if query.fmt != "csv" or query.group_by:
        return None

    async def pieces() -> AsyncIterator[str]:
        yield to_csv([], EVENT_COLUMNS)
        async for rows in stream_events(sm, query.since, query.until, **dict(query.filters)):
            # One CSV of the batch without its header line: the same rows to_csv writes.
            yield to_csv(rows, EVENT_COLUMNS).split("\r\n", 1)[1]

    return pieces()


async def _focus(sm: async_sessionmaker[AsyncSession], query: ReportQuery) -> str:
    events = await usage_events(sm, query.since, query.until, **dict(query.filters))
    assistants = {e["assistant_id"] for e in events if e["assistant_id"]}
    names = await names_of(sm, assistants)
    rows = focus_rows(events, query.group_by, assistant_names=names)
    return to_csv(rows, FOCUS_COLUMNS)


def unpriced_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """A line under an event table when some events had no price, with their tokens: the
    table's cost total leaves them out, and must not pass for the whole bill."""
    unpriced = [row for row in rows if row.get("cost_usd") is None]
    if not unpriced:
        return ""
    tokens = sum(row.get("total_tokens") or 0 for row in unpriced)
    models = sorted({str(row.get("model")) for row in unpriced})
    return (
        f"unpriced: {len(unpriced):,} events, {tokens:,} tokens, not in the cost total "
        f"(models: {', '.join(models)}; see `usage-proxy prices missing`)\n"
    )


def unseen_note(unseen: Unseen) -> str:
    """The line that says a report may lack runs: create-and-runs a crash may have lost
    (proxy.db.unseen_creates), counted and never silent."""
    since = unseen.since.isoformat(timespec="seconds") if unseen.since else "?"
    return (
        f"{unseen.count:,} create-and-run(s) may be unrecorded since {since} (replica killed"
        ' before its answer was seen); see docs/architecture.md, "Runs at any moment of a crash"'
    )
