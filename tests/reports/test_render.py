from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal

import pytest

from proxy.reports.render import iso_utc, render, to_csv, to_json, to_table

WHEN = dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)
ROWS = [
    {
        "team": "red",
        "model": "gpt-4o",
        "events": 1234,
        "total_tokens": 1_234_567,
        "cost_usd": Decimal("0.1000000000"),
        "occurred_at": WHEN,
    },
    {
        "team": "blue ünïcode",
        "model": None,
        "events": 1,
        "total_tokens": 5,
        "cost_usd": Decimal("0.0000012345"),
        "occurred_at": WHEN.astimezone(dt.timezone(dt.timedelta(hours=-5))),
    },
]
COLUMNS = ["team", "model", "events", "total_tokens", "cost_usd", "occurred_at"]


def test_table_aligns_columns_and_adds_a_totals_line():
    lines = to_table(ROWS, COLUMNS).splitlines()
    assert lines[0].split() == COLUMNS
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "1,234" in lines[2] and "1,234,567" in lines[2] and "0.1000" in lines[2]
    assert "0.0000012345" in lines[3] and "2026-11-27T09:30:00Z" in lines[3]
    assert lines[-1].split() == ["total", "1,235", "1,234,572", "0.1000012345"]
    # Numbers are right-aligned: each ends where its header ends.
    end = lines[0].index("total_tokens") + len("total_tokens")
    assert lines[2][:end].endswith("1,234,567")
    assert lines[3][:end].endswith(" 5")


def test_table_of_one_row_or_without_totals_has_no_totals_line():
    assert "total " not in to_table(ROWS[:1], COLUMNS)
    assert len(to_table(ROWS, COLUMNS, totals=False).splitlines()) == 4


def test_table_of_nothing_is_a_header():
    assert to_table([], ["team", "events"]).splitlines() == ["team  events", "----  ------"]


def test_csv_has_a_header_plain_numbers_and_utc_times():
    text = to_csv(ROWS, COLUMNS)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == COLUMNS
    assert parsed[1] == ["red", "gpt-4o", "1234", "1234567", "0.1", "2026-11-27T09:30:00Z"]
    assert parsed[2] == ["blue ünïcode", "", "1", "5", "0.0000012345", "2026-11-27T09:30:00Z"]
    assert text.endswith("\r\n")


@pytest.mark.parametrize("value", ['=HYPERLINK("x")', "+1", "-2", "@SUM(A1)"])
def test_csv_defuses_spreadsheet_formulas(value: str):
    [_, row] = list(csv.reader(io.StringIO(to_csv([{"tag": value}], ["tag"]))))
    assert row == ["'" + value]


def test_json_is_an_array_of_objects_with_exact_decimal_numbers():
    text = to_json(ROWS, COLUMNS)
    parsed = json.loads(text, parse_float=Decimal)
    assert [list(obj) for obj in parsed] == [COLUMNS, COLUMNS]
    assert parsed[0]["cost_usd"] == Decimal("0.1")
    assert parsed[1]["cost_usd"] == Decimal("0.0000012345")
    assert parsed[1]["model"] is None
    assert parsed[1]["occurred_at"] == "2026-11-27T09:30:00Z"
    assert parsed[1]["team"] == "blue ünïcode"
    assert '"cost_usd": 0.0000012345' in text


def test_json_of_nothing_and_of_all_keys():
    assert json.loads(to_json([])) == []
    assert list(json.loads(to_json([{"b": 1, "a": True}]))[0]) == ["b", "a"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0E-10"), "0"),
        (Decimal("100.0000000000"), "100"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-0.50"), "-0.5"),
    ],
)
def test_decimals_render_as_plain_numbers(value: Decimal, text: str):
    assert to_json([{"v": value}]).strip() == '[\n  {"v": ' + text + "}\n]"


def test_iso_utc_treats_naive_as_utc():
    assert iso_utc(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"


def test_render_dispatches_and_rejects_unknown_formats():
    assert render(ROWS, COLUMNS, "csv") == to_csv(ROWS, COLUMNS)
    assert render(ROWS, COLUMNS, "json") == to_json(ROWS, COLUMNS)
    table = render(ROWS, COLUMNS, "table", table_columns=["team"]).splitlines()
    assert [table[0], table[2]] == ["team", "red"]
    with pytest.raises(ValueError, match="unknown format"):
        render(ROWS, COLUMNS, "xml")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("gpt-4o\x1b[2J\x1b[31mred", "gpt-4o\\x1b[2J\\x1b[31mred"),  # ESC codes
        ("two\nlines\r", "two\\nlines\\r"),
        ("tab\there\x7f\x00", "tab\\there\\x7f\\x00"),
        ("\u202eevil\u2028", "\\u202eevil\\u2028"),  # bidi override, line separator
        ("\x9b31m", "\\x9b31m"),  # the 8-bit CSI
        ("blue ünïcode", "blue ünïcode"),  # printable text stays as it is
    ],
)
def test_table_escapes_control_characters(value: str, shown: str):
    """Issue 20: a model name (any string a client or upstream chose) cannot move the
    terminal's cursor, colour it, or forge a line of the report."""
    table = to_table([{"model": value, "team": "red"}], ["model", "team"])
    lines = table.splitlines()
    assert len(lines) == 3 and lines[2].startswith(shown), table
    assert all(ch == "\n" or ch.isprintable() for ch in table)
