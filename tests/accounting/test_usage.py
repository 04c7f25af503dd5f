"""The domain's usage row and the database's usage table describe the same thing."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from proxy.accounting.usage import (
    UNASSIGNED,
    UsageRecorded,
    UsageRow,
    UsageSignal,
    UsageTotal,
    row_from,
    row_template,
)
from proxy.db.usage import USAGE_FIELDS

NOW = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)


def test_a_row_fills_every_column_of_the_usage_table():
    assert sorted(f.name for f in dataclasses.fields(UsageRow)) == sorted(USAGE_FIELDS)


def test_a_row_from_a_template_equals_the_row_built_with_keywords():
    values = {"kind": "embedding", "object_id": "e1", "occurred_at": NOW, "usage_source": "api"}
    row = row_from(row_template(**values, prompt_tokens=7))
    assert row == UsageRow(**values, prompt_tokens=7)
    assert row.team == UNASSIGNED


def row(kind: str, object_id: str, **values: object) -> UsageRow:
    return UsageRow(kind=kind, object_id=object_id, occurred_at=NOW, usage_source="api", **values)


def test_usage_recorded_sums_per_kind_source_team_and_model():
    event = UsageRecorded.of(
        [
            row("embedding", "a", team="red", prompt_tokens=3, cost_usd=Decimal("0.1")),
            row("embedding", "b", team="red", prompt_tokens=4, cost_usd=Decimal("0.2")),
            row("embedding", "c", team="blue", prompt_tokens=5),
        ]
    )
    assert event.totals == (
        UsageTotal("embedding", "api", "red", None, 2, 7, 0, Decimal("0.3")),
        UsageTotal("embedding", "api", "blue", None, 1, 5, 0, Decimal(0)),
    )


def test_a_subscriber_that_raises_does_not_keep_the_others_from_the_signal(caplog):
    got: list[UsageRecorded] = []

    def broken(event: UsageRecorded) -> None:
        raise RuntimeError("a bug")

    signal = UsageSignal()
    signal.subscribe(broken)
    signal.subscribe(got.append)
    event = UsageRecorded.of([row("embedding", "a")])
    signal(event)
    assert got == [event]
    assert "a usage subscriber failed" in caplog.text
