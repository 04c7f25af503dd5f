from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from proxy.budgets.spec import BudgetRule, SpecError, parse_limit, parse_warn
from proxy.budgets.status import evaluate

NOV = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def rule(limit: str = "500", warn=(50, 80, 100), enforce: bool = False) -> BudgetRule:
    return BudgetRule(1, "team", "red", None, Decimal(limit), "month", warn, enforce)


@pytest.mark.parametrize(
    ("spend", "enforce", "state", "crossed"),
    [
        ("0", False, "ok", ()),
        ("249.99", False, "ok", ()),
        ("250", False, "warned", (50,)),
        ("400", True, "warned", (50, 80)),
        ("500", False, "exceeded", (50, 80, 100)),
        ("500", True, "enforced", (50, 80, 100)),
        ("499.9999999999", True, "warned", (50, 80)),
    ],
)
def test_states_and_thresholds(spend, enforce, state, crossed):
    status = evaluate(rule(enforce=enforce), Decimal(spend), NOV + dt.timedelta(days=1))
    assert (status.state, status.crossed) == (state, crossed)
    assert status.refusing == (state == "enforced")


def test_the_forecast_waits_for_a_fifth_of_the_period():
    early = evaluate(rule(), Decimal(400), NOV + dt.timedelta(days=5))  # 5 of 30 days
    assert early.forecast is None and not early.forecast_alarm
    later = evaluate(rule(), Decimal(400), NOV + dt.timedelta(days=6))
    assert later.forecast == Decimal(2000)
    # $400 in 6 days: $500 after 7.5 days.
    assert later.reaches_limit_at == NOV + dt.timedelta(days=7.5)
    assert later.forecast_alarm


def test_no_forecast_alarm_below_the_limit_or_once_it_is_reached():
    slow = evaluate(rule(), Decimal(100), NOV + dt.timedelta(days=15))
    assert slow.forecast == Decimal(200) and not slow.forecast_alarm
    reached = evaluate(rule(), Decimal(600), NOV + dt.timedelta(days=15))
    assert not reached.forecast_alarm


@pytest.mark.parametrize("text", ["-1", "0", "abc", "NaN", "Infinity", "1e10"])
def test_limits_that_cannot_be(text):
    with pytest.raises(SpecError):
        parse_limit(text)


def test_limits_and_thresholds():
    assert parse_limit("$12.50") == Decimal("12.50")
    assert parse_warn("50, 80,100%") == (50, 80, 100)
    assert parse_warn("") == ()
    for bad in ("80,50", "50,50", "0", "1001", "5.5", "x"):
        with pytest.raises(SpecError):
            parse_warn(bad)
