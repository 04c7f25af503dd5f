"""Budgets as rows for people and programs (`budgets list`, GET /_proxy/budgets): each
budget's subject, period, limit, spend, ratio, forecast and state, rendered by reports/."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from proxy.budgets.spec import warn_text
from proxy.budgets.status import BudgetStatus
from proxy.reports.render import render

__all__ = ["COLUMNS", "TABLE_COLUMNS", "render_statuses", "status_rows"]

COLUMNS = (
    "id",
    "subject_kind",
    "subject",
    "key_hint",
    "period",
    "period_start",
    "period_end",
    "limit_usd",
    "spend_usd",
    "ratio",
    "forecast_usd",
    "forecast_reaches_limit_at",
    "warn",
    "enforce",
    "state",
)
TABLE_COLUMNS = (
    "id",
    "subject_kind",
    "subject",
    "period",
    "limit_usd",
    "spend_usd",
    "ratio",
    "forecast_usd",
    "warn",
    "enforce",
    "state",
)
_RATIO = Decimal("0.0001")


def status_rows(statuses: Sequence[BudgetStatus]) -> list[dict[str, Any]]:
    rows = []
    for s in statuses:
        rule = s.rule
        rows.append(
            {
                "id": rule.id,
                # A key's fingerprint is long: the table shows its hint and the fingerprint's head.
                "subject_kind": rule.subject_kind,
                "subject": rule.subject,
                "key_hint": rule.key_hint,
                "period": rule.period,
                "period_start": s.start,
                "period_end": s.end,
                "limit_usd": rule.limit_usd,
                "spend_usd": s.spend,
                "ratio": (s.spend / rule.limit_usd).quantize(_RATIO),
                "forecast_usd": s.forecast.quantize(_RATIO) if s.forecast is not None else None,
                "forecast_reaches_limit_at": s.reaches_limit_at,
                "warn": warn_text(rule.warn),
                "enforce": rule.enforce,
                "state": s.state,
            }
        )
    return rows


def render_statuses(statuses: Sequence[BudgetStatus], fmt: str) -> str:
    rows = status_rows(statuses)
    if fmt == "table":
        for row in rows:
            if row["subject_kind"] == "key":
                row["subject"] = f"{row['key_hint'] or ''} ({row['subject'][:12]})".strip()
    return render(rows, COLUMNS, fmt, table_columns=TABLE_COLUMNS, totals=False)
