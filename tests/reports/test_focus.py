"""FOCUS rows from usage events: pure."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from proxy.reports.focus import FOCUS_COLUMNS, focus_rows
from proxy.reports.render import to_csv
from tests.e2e.test_focus import parse_focus


def event(i: int, when: dt.datetime, cost: str | None, **fields) -> dict:
    return {
        "object_id": f"run_{i}",
        "kind": "assistants.run",
        "model": "gpt-4o",
        "team": "red",
        "key_hint": "sk-...abcd",
        "key_fingerprint": "fp",
        "assistant_id": "asst_1",
        "conversation_id": None,
        "prompt_id": None,
        "tag": None,
        "project": "proj_1",
        "organization": None,
        "usage_source": "estimated",
        "occurred_at": when,
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "total_tokens": 110,
        "cost_usd": None if cost is None else Decimal(cost),
    } | fields


NOV = dt.datetime(2026, 11, 30, 23, 59, 59, tzinfo=dt.UTC)
DEC = dt.datetime(2026, 12, 1, 0, 0, 1, tzinfo=dt.UTC)
EVENTS = [event(1, NOV, "0.5"), event(2, DEC, "0.25"), event(3, DEC, None, team="blue")]


def test_one_row_per_event_with_its_assistant_name_and_tags():
    rows = focus_rows(EVENTS, assistant_names={"asst_1": "Tax helper"})
    table = parse_focus(to_csv(rows, FOCUS_COLUMNS))

    assert [r["ResourceId"] for r in table] == ["run_1", "run_2", "run_3"]
    assert table[0]["ResourceName"] == "Tax helper"
    assert table[0]["ChargePeriodStart"] == "2026-11-30T23:59:59Z"
    assert table[0]["ChargePeriodEnd"] == "2026-12-01T00:00:00Z"
    assert (table[0]["BillingPeriodStart"], table[0]["BillingPeriodEnd"]) == (
        "2026-11-01T00:00:00Z",
        "2026-12-01T00:00:00Z",
    )
    assert json.loads(table[2]["Tags"]) == {
        "team": "blue",
        "key_hint": "sk-...abcd",
        "assistant": "asst_1",
        "assistant_name": "Tax helper",
    }
    assert (table[2]["x_Priced"], table[2]["BilledCost"]) == ("false", "0")


def test_a_group_never_spans_two_billing_periods():
    rows = focus_rows(EVENTS, ["assistant"])

    assert [(r["BillingPeriodStart"].month, r["x_Events"], r["BilledCost"]) for r in rows] == [
        (11, 1, Decimal("0.5")),
        (12, 2, Decimal("0.25")),
    ]
    december = rows[1]
    assert (december["x_Priced"], december["SkuId"], december["ResourceId"]) == (
        False,
        "gpt-4o",
        "asst_1",
    )
    assert "team" not in json.loads(december["Tags"])  # red and blue: not shared
