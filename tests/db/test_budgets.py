"""Budgets in the database on both backends: set replaces, remove takes unsent alerts along,
spend sums every kind of row of the subject in the range, exactly."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from proxy.accounting.usage import UsageRow
from proxy.db import alerts
from proxy.db import budgets as db
from proxy.db.usage import record_rows

DEC = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def row(n: int, cost: str, at: dt.datetime, kind: str = "chat.completion", **kw) -> UsageRow:
    return UsageRow(
        kind=kind,
        object_id=f"obj_{n}",
        occurred_at=at,
        usage_source="reported",
        cost_usd=Decimal(cost),
        **kw,
    )


async def test_set_replaces_the_budget_of_a_subject_and_period(sm):
    common = {"subject_kind": "team", "subject": "red", "key_hint": None}
    first = await db.set_budget(
        sm, **common, limit_usd=Decimal(5), period="month", warn="50", enforce=True
    )
    again = await db.set_budget(
        sm, **common, limit_usd=Decimal(7), period="month", warn="", enforce=False
    )
    other = await db.set_budget(
        sm, **common, limit_usd=Decimal(1), period="day", warn="", enforce=False
    )
    assert first == again != other
    [monthly, daily] = await db.list_budgets(sm)
    assert (monthly.limit_usd, monthly.warn, monthly.enforce) == (7, "", False)
    assert daily.period == "day"


async def test_remove_takes_the_unsent_alerts_along(sm):
    budget = await db.set_budget(
        sm, subject_kind="team", subject="red", key_hint=None, limit_usd=Decimal(5),
        period="month", warn="50", enforce=False,
    )  # fmt: skip
    await alerts.add_alerts(sm, [db.BudgetAlert(budget, "2026-12-01", "threshold", 50, "{}")])
    assert await db.remove_budget(sm, budget)
    assert not await db.remove_budget(sm, budget)
    key = db.alert_key(budget, "2026-12-01", "threshold", 50)
    assert await alerts.queued(sm, db.ALERT_SOURCE, [key]) == set()


async def test_spend_sums_every_kind_in_the_range_exactly(sm):
    await record_rows(
        sm,
        [
            row(1, "0.0000000001", DEC, team="red"),
            row(2, "1.25", DEC + dt.timedelta(days=3), kind="assistants.run", team="red"),
            row(3, "-0.5", DEC + dt.timedelta(days=4), kind="adjustment", team="red"),
            row(4, "9", DEC - dt.timedelta(microseconds=1), team="red"),  # November
            row(5, "9", DEC + dt.timedelta(days=31), team="red"),  # January
            row(6, "2", DEC, team="blue", project="proj_1", key_fingerprint="fp1"),
            row(7, "4", DEC, kind="response", team="blue", project="proj_1"),
        ],
    )
    unpriced = row(8, "0", DEC, team="red")
    unpriced.cost_usd = None
    await record_rows(sm, [unpriced])
    end = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert await db.spend_by_subject(sm, "team", ["red", "blue", "green"], DEC, end) == {
        "red": Decimal("0.7500000001"),
        "blue": Decimal(6),
    }
    assert await db.spend_by_subject(sm, "project", ["proj_1"], DEC, end) == {"proj_1": 6}
    assert await db.spend_by_subject(sm, "key", ["fp1"], DEC, end) == {"fp1": 2}
    assert await db.spend_by_subject(sm, "team", [], DEC, end) == {}


async def test_remove_leaves_other_budgets_alerts(sm):
    ids = [await _team_budget(sm, f"t{i}") for i in range(11)]
    one, ten = ids[0], ids[10]
    assert str(ten).startswith(str(one))  # 1 and 10: one's key prefix must not take ten's
    new = [db.BudgetAlert(b, "2026-12-01", "threshold", 50, "{}") for b in (one, ten)]
    await alerts.add_alerts(sm, new)
    assert await db.remove_budget(sm, one)
    keys = [db.alert_key(b, "2026-12-01", "threshold", 50) for b in (one, ten)]
    assert await alerts.queued(sm, db.ALERT_SOURCE, keys) == {keys[1]}


async def _team_budget(sm, team: str) -> int:
    return await db.set_budget(
        sm, subject_kind="team", subject=team, key_hint=None, limit_usd=Decimal(5),
        period="month", warn="50", enforce=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("start", "days"),
    [
        (DEC + dt.timedelta(days=3), 1),  # a day: usage_rollup
        (DEC + dt.timedelta(days=6), 7),  # a week from Monday (Dec 7): seven days of it
        (DEC, 31),  # a month: usage_rollup_month
        (DEC + dt.timedelta(days=3, hours=6), 1),  # not whole days: the rows
    ],
)
async def test_spend_from_the_rollups_is_what_the_rows_sum_to(sm, start, days):
    end = start + dt.timedelta(days=days)
    rows = [
        row(i, f"{i}.5", DEC + dt.timedelta(hours=7 * i), team="red", key_fingerprint="fp1")
        for i in range(1, 120)
    ]
    await record_rows(sm, rows)
    expected = sum((r.cost_usd for r in rows if start <= r.occurred_at < end), Decimal(0))
    for kind, subject in (("team", "red"), ("key", "fp1")):
        spend = await db.spend_by_subject(sm, kind, [subject], start, end)
        assert spend.get(subject, Decimal(0)) == expected
