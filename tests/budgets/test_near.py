from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.budgets.near import SpendRates, headroom


@pytest.mark.parametrize(
    ("limit", "rate", "horizon", "expected"),
    [
        ("100", "0", 3.0, "10"),  # no rate seen: a tenth of the limit
        ("100", "1", 3.0, "10"),  # a slow rate: still the tenth
        ("100", "5", 3.0, "15"),  # a fast one: what it spends over the horizon
        ("3", "7.5", 3.0, "22.5"),  # faster than the limit: near from the start
    ],
)
def test_headroom(limit, rate, horizon, expected):
    assert headroom(Decimal(limit), Decimal(rate), horizon) == Decimal(expected)


def test_rates_need_a_span_and_show_a_burst_at_once():
    rates = SpendRates()
    assert rates.add(1, 0.0, Decimal(0)) == 0
    assert rates.add(1, 0.01, Decimal(5)) == 0  # 10 ms: too short to call a rate
    # 1 s of nothing, then a burst over the last 0.2 s: the trailing window shows it whole.
    assert rates.add(1, 1.0, Decimal(5)) == 5
    assert rates.add(1, 1.2, Decimal(7)) == 10


def test_a_spend_that_falls_starts_over_and_gone_budgets_are_forgotten():
    rates = SpendRates()
    rates.add(1, 0.0, Decimal(0))
    assert rates.add(1, 1.0, Decimal(10)) == 10
    assert rates.add(1, 2.0, Decimal(0)) == 0  # a new period
    rates.keep(set())
    assert rates.add(1, 3.0, Decimal(50)) == 0
