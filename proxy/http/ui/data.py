"""What each dashboard page shows, read through the report engine (proxy.reports and
proxy.db.rollup_query: the rollup when the question allows), so that a page's numbers are
`usage-proxy report`'s for the same month and filters. No HTML here."""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.sources.events.rows import RESPONSE_KIND
from proxy.accounting.usage import ASSISTANTS_RUN
from proxy.db import top_events
from proxy.db.assistant_names import names_of
from proxy.db.rollup_query import regroup, report_groups
from proxy.reconcile.compare import COLUMNS as RECONCILE_COLUMNS
from proxy.reconcile.query import ReconcileQuery
from proxy.reconcile.report import reconcile_rows
from proxy.reports.query import parse_month

__all__ = [
    "BudgetProvider",
    "Period",
    "downloads",
    "overview",
    "reconciliation",
    "run_page",
    "team_page",
]

SM = async_sessionmaker[AsyncSession]
# (name, spend, limit, state) per budget; wired by the app when budgets exist.
BudgetProvider = Callable[[], Any]
_TOP = 10
_SERIES = 7  # stacks in a daily chart
_BARS = 12  # bars in the team chart
_TEAM_BREAKDOWNS = ("key", "assistant", "model", "kind", "tag")
# How a row's usage was learned, as the pages badge it.
BADGES = {"reported": "reported", "estimated": "estimated", "estimated_partial": "partial"}


class Period:
    """A UTC month (YYYY-MM) and its bounds; `today` decides the forecast."""

    def __init__(self, month: str | None, today: dt.date) -> None:
        self.month = month or today.strftime("%Y-%m")
        self.since, self.until = parse_month(self.month)  # ValueError for a bad month
        self.today = today
        first = self.since.date()
        self.days = [
            (first + dt.timedelta(days=n)).isoformat()
            for n in range(calendar.monthrange(first.year, first.month)[1])
        ]

    def forecast(self, total: Decimal) -> Decimal | None:
        """The month's total if spending goes on at this month's daily rate so far; None
        for a month not begun, the total itself for one that has ended."""
        first, n = self.since.date(), len(self.days)
        if self.today < first:
            return None
        elapsed = (self.today - first).days + 1
        if elapsed >= n:
            return total
        return (total / elapsed * n).quantize(Decimal("0.01"))

    def neighbours(self) -> tuple[str, str]:
        prev = (self.since - dt.timedelta(days=1)).strftime("%Y-%m")
        return prev, self.until.strftime("%Y-%m")


def downloads(month: str, group_by: str = "", **filters: str) -> dict[str, str]:
    """The CSV and FOCUS links of a table: the same parameters as /_proxy/usage and
    `usage-proxy report`, served by /_proxy/ui/download."""
    base = {"month": month, **({"group_by": group_by} if group_by else {}), **filters}
    return {
        fmt: "/_proxy/ui/download?" + urlencode({**base, "format": fmt}) for fmt in ("csv", "focus")
    }


def _cost(row: dict[str, Any]) -> Decimal:
    return row["cost_usd"] or Decimal(0)


def _top(rows: list[dict[str, Any]], n: int = _TOP) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-_cost(r), str(r)))[:n]


def _bars(items: list[tuple[str, Decimal]]) -> dict[str, Any]:
    """The chart's bars (the largest), and what the rest add up to, said in words."""
    rest = items[_BARS:]
    return {
        "bars": items[:_BARS],
        "others": len(rest),
        "others_cost": sum((v for _, v in rest), Decimal(0)),
    }


def _breakdowns(
    rows: list[dict[str, Any]], period: Period, fields: Sequence[str], **filters: str
) -> dict[str, dict[str, Any]]:
    """The top rows of each field, from report rows grouped by all of them."""
    out = {}
    for name in fields:
        grouped = regroup(rows, [name])
        out[name] = {
            "rows": _top(grouped),
            "count": len(grouped),
            "links": downloads(period.month, name, **filters),
        }
    return out


def _daily(
    rows: list[dict[str, Any]], period: Period, column: str, **filters: str
) -> dict[str, Any]:
    """The daily chart's stacks (the largest series, the rest as one) from report rows
    grouped by day and `column`, and the same numbers as a table: a row per day."""
    series: dict[str, dict[str, Decimal]] = {}
    for row in rows:
        name = str(row[column]) if row[column] is not None else "(none)"
        series.setdefault(name, {})[row["day"]] = _cost(row)
    ranked = sorted(series, key=lambda s: (-sum(series[s].values()), s))
    shown = {name: series[name] for name in ranked[:_SERIES]}
    if len(ranked) > _SERIES:
        # More colours than this cannot be told apart: the rest is one stack ("others").
        rest: dict[str, Decimal] = {}
        for name in ranked[_SERIES:]:
            for day, value in series[name].items():
                rest[day] = rest.get(day, Decimal(0)) + value
        shown[f"{len(ranked) - _SERIES} others"] = rest
    table = [
        (day, [values.get(day) for values in shown.values()])
        for day in period.days
        if any(day in values for values in shown.values())
    ]
    return {
        "series": shown,
        "table": table,
        "links": downloads(period.month, f"day,{column}", **filters),
    }


async def _budgets(budgets: BudgetProvider | None) -> list[Any] | None:
    if budgets is None:
        return None
    result = budgets()
    if hasattr(result, "__await__"):
        result = await result
    return list(result)


async def overview(sm: SM, period: Period, budgets: BudgetProvider | None) -> dict[str, Any]:
    """Two questions, asked at once: (day, team) gives the total, the teams and the daily
    chart; (key, assistant, model, tag) gives the four top lists (see `regroup`)."""
    since, until = period.since, period.until
    by_day, by_cell, budget_rows = await asyncio.gather(
        report_groups(sm, ["day", "team"], since, until),
        report_groups(sm, ["key", "assistant", "model", "tag"], since, until),
        _budgets(budgets),
    )
    [total] = regroup(by_day, [])
    ranked = sorted(regroup(by_day, ["team"]), key=lambda r: (-_cost(r), r["team"]))
    return {
        "period": period,
        "total": total,
        "forecast": period.forecast(_cost(total)),
        "teams": ranked,
        "team_bars": _bars([(r["team"], _cost(r)) for r in ranked]),
        "team_links": downloads(period.month, "team"),
        "total_links": downloads(period.month),
        "by_day": _daily(by_day, period, "team"),
        "top": _breakdowns(by_cell, period, ["key", "assistant", "model", "tag"]),
        "budgets": budget_rows,
    }


async def team_page(sm: SM, period: Period, team: str) -> dict[str, Any]:
    since, until = period.since, period.until
    by_day, by_cell, runs, responses = await asyncio.gather(
        report_groups(sm, ["day", "model"], since, until, team=team),
        report_groups(sm, list(_TEAM_BREAKDOWNS), since, until, team=team),
        top_events.top_events(sm, since, until, kinds=[ASSISTANTS_RUN], team=team),
        top_events.top_events(sm, since, until, kinds=[RESPONSE_KIND], team=team),
    )
    [total] = regroup(by_day, [])
    names = await names_of(sm, {r["assistant_id"] for r in runs if r["assistant_id"]})
    for r in runs:
        r["assistant_name"] = names.get(r["assistant_id"])
    return {
        "period": period,
        "team": team,
        "total": total,
        "forecast": period.forecast(_cost(total)),
        "total_links": downloads(period.month, team=team),
        "by_day": _daily(by_day, period, "model", team=team),
        "top": _breakdowns(by_cell, period, _TEAM_BREAKDOWNS, team=team),
        "runs": runs,
        "runs_links": downloads(period.month, team=team, kind=ASSISTANTS_RUN),
        "responses": responses,
        "responses_links": downloads(period.month, team=team, kind=RESPONSE_KIND),
    }


async def run_page(sm: SM, run_id: str) -> dict[str, Any] | None:
    row = await top_events.event(sm, ASSISTANTS_RUN, run_id)
    if row is None:
        return None
    basis: dict[str, Any] = {}
    if row.get("estimate_basis"):
        try:
            basis = orjson.loads(row["estimate_basis"])
        except orjson.JSONDecodeError:
            basis = {}
    calls, sessions = ([], None)
    if row.get("thread_id"):
        calls, sessions = await top_events.thread_calls(sm, row["thread_id"])
    names = await names_of(sm, {row["assistant_id"]} if row.get("assistant_id") else set())
    month = row["occurred_at"].strftime("%Y-%m")
    return {
        "row": row,
        "assistant_name": names.get(row.get("assistant_id") or ""),
        "basis": _flat(basis),
        "calls": calls,
        "sessions": sessions,
        "month": month,
        "run_links": downloads(month, team=row["team"], kind=ASSISTANTS_RUN),
    }


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A JSON value as (dotted name, scalar) pairs, for a two-column table."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _flat(v, f"{prefix}{k}.")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _flat(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), value)]


async def reconciliation(sm: SM, period: Period) -> dict[str, Any]:
    query = ReconcileQuery.build(
        month=period.month,
        since=None,
        until=None,
        group_by="day,project",
        tolerance=None,
        fmt="csv",
        today=period.today,
        spell="",
    )
    rows = await reconcile_rows(sm, query)
    return {
        "period": period,
        "rows": rows[:-1],
        "total": rows[-1] if rows else None,
        "columns": ["day", "project", *RECONCILE_COLUMNS],
        "csv": "/_proxy/ui/reconcile.csv?"
        + urlencode({"month": period.month, "group_by": "day,project"}),
    }
