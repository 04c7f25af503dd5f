"""A per-event CSV sent in pieces is, joined, exactly the report's text: on both backends, over
more rows than one batch, with filters."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from proxy.db.usage import record_rows
from proxy.reports.query import ReportQuery
from proxy.reports.run import run_report, stream_report
from tests.db.rows import chat

T = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)


@pytest.mark.parametrize("filters", [{}, {"team": "red"}])
async def test_streamed_csv_equals_the_report(sm, filters):
    rows = [
        chat(
            f"c{n}",
            occurred_at=T + dt.timedelta(seconds=n),
            team=("red", "blue")[n % 2],
            tag="=cmd" if n == 7 else None,  # a formula-looking tag: quoted alike
            cost_usd=None if n % 11 == 0 else Decimal(n) / 1000,
        )
        for n in range(4200)
    ]
    assert len(await record_rows(sm, rows)) == len(rows)
    query = ReportQuery(
        since=T, fmt="csv", filters={"team": None, "kind": None, "model": None} | filters
    )
    pieces = [p async for p in stream_report(sm, query)]
    assert len(pieces) > 2, "read in batches"
    assert "".join(pieces) == await run_report(sm, query)
    assert stream_report(sm, ReportQuery(since=T, fmt="json")) is None
    assert stream_report(sm, ReportQuery(since=T, fmt="csv", group_by=("team",))) is None
