"""The domain's usage row and the database's usage table describe the same thing."""

from __future__ import annotations

import dataclasses
import datetime as dt

from proxy.accounting.usage import UNASSIGNED, UsageRow, row_from, row_template
from proxy.db.usage import USAGE_FIELDS

NOW = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)


def test_a_row_fills_every_column_of_the_usage_table():
    assert sorted(f.name for f in dataclasses.fields(UsageRow)) == sorted(USAGE_FIELDS)


def test_a_row_from_a_template_equals_the_row_built_with_keywords():
    values = {"kind": "embedding", "object_id": "e1", "occurred_at": NOW, "usage_source": "api"}
    row = row_from(row_template(**values, prompt_tokens=7))
    assert row == UsageRow(**values, prompt_tokens=7)
    assert row.team == UNASSIGNED
