"""The pages' data: the forecast, and the budget section only when a provider is given."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from proxy.db.usage import record_rows
from proxy.http.ui import data
from proxy.http.ui.pages import _environment
from tests.db.rows import chat


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (dt.date(2026, 10, 31), None),  # not begun
        (dt.date(2026, 11, 10), Decimal("30.00")),  # 10 of 30 days: 10 -> 30
        (dt.date(2026, 12, 5), Decimal(10)),  # ended: the total
    ],
)
def test_forecast(today, expected):
    assert data.Period("2026-11", today).forecast(Decimal(10)) == expected


def test_a_bad_month_is_an_error():
    with pytest.raises(ValueError):
        data.Period("2026-13", dt.date(2026, 11, 1))


async def test_the_budget_section_is_drawn_only_with_a_provider(sm):
    await record_rows(sm, [chat("c1", occurred_at=dt.datetime(2026, 11, 3, tzinfo=dt.UTC))])
    period = data.Period("2026-11", dt.date(2026, 11, 10))
    env = _environment()
    page = await data.overview(sm, period, None)
    assert 'id="budgets"' not in env.get_template("overview.html").render(
        **page, csrf="x", role="viewer"
    )

    async def budgets():
        return [("red monthly", Decimal("12.5"), Decimal(100), "ok")]

    page = await data.overview(sm, period, budgets)
    html = env.get_template("overview.html").render(**page, csrf="x", role="viewer")
    assert 'id="budgets"' in html and "red monthly" in html and "$12.50" in html
