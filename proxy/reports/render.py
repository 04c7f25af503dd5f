"""Report output: an aligned text table, CSV and JSON. Pure functions of rows (mappings) and
the columns to show, in order.

Values: datetimes are ISO 8601 in UTC with "Z". Money (Decimal) is never turned into a float:
JSON carries it as a number written from the Decimal's digits (parse it with
`json.loads(text, parse_float=decimal.Decimal)` to keep it exact), CSV as plain digits, the
table with at least 4 decimals and all significant ones. None is null in JSON and empty in
CSV and in the table.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = [
    "EVENT_TABLE_COLUMNS",
    "FORMATS",
    "iso_utc",
    "render",
    "to_csv",
    "to_json",
    "to_table",
]

FORMATS = ("table", "csv", "json")
# The table of single events shows these; CSV and JSON carry every column.
EVENT_TABLE_COLUMNS = (
    "occurred_at",
    "kind",
    "object_id",
    "team",
    "key_hint",
    "model",
    "usage_source",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "code_interpreter_sessions",
    "cost_usd",
)
# Spreadsheets run a cell starting with one of these as a formula; tags come from clients.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

Row = Mapping[str, Any]


def iso_utc(value: dt.datetime) -> str:
    """ISO 8601 in UTC with "Z"; a naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Decimal) -> str:
    """All significant digits, no exponent, no trailing zeros: 0.0123000000 -> 0.0123."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _money(value: Decimal) -> str:
    exponent = value.normalize().as_tuple().exponent
    places = max(4, -exponent) if isinstance(exponent, int) else 4
    return f"{value:,.{places}f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal):
        return _money(value)
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    return _printable(str(value))


_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _printable(text: str) -> str:
    """`text` with every character that is not printable (ESC and the other controls, line
    and paragraph separators, bidi overrides, bytes that were not UTF-8) escaped as Python
    writes it: a value a client chose cannot move the cursor or forge a line of a report."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def to_table(rows: Sequence[Row], columns: Sequence[str], *, totals: bool = True) -> str:
    """Aligned columns under a header; numbers right-aligned with thousands separators. With
    `totals` and more than one row, a last line sums every numeric column."""
    body = [[_cell(row.get(col)) for col in columns] for row in rows]
    numeric = [any(_is_number(row.get(col)) for row in rows) for col in columns]
    footer: list[str] | None = None
    if totals and len(rows) > 1 and any(numeric):
        footer = []
        for col, is_num in zip(columns, numeric, strict=True):
            values = [row.get(col) for row in rows if _is_number(row.get(col))]
            footer.append(_cell(sum(values)) if is_num else "")
        footer[0] = footer[0] or "total"
    widths = [len(col) for col in columns]
    for line in [*body, *([footer] if footer else [])]:
        widths = [max(w, len(cell)) for w, cell in zip(widths, line, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [fmt(list(columns)), rule, *(fmt(line) for line in body)]
    if footer:
        lines += [rule, fmt(footer)]
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """RFC 4180 CSV with a header row (CRLF line ends). Text that a spreadsheet would run as a
    formula is prefixed with an apostrophe."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(col)) for col in columns])
    return out.getvalue()


def _json_value(value: Any) -> str:
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, dt.datetime):
        return json.dumps(iso_utc(value))
    return json.dumps(value, ensure_ascii=False)


def to_json(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """A JSON array of objects, one per line, keys as the columns (all keys of each row when
    `columns` is None)."""
    if not rows:
        return "[]\n"
    lines = []
    for row in rows:
        keys = columns if columns is not None else list(row)
        fields = ", ".join(f"{json.dumps(k)}: {_json_value(row.get(k))}" for k in keys)
        lines.append("  {" + fields + "}")
    return "[\n" + ",\n".join(lines) + "\n]\n"


def render(
    rows: Sequence[Row],
    columns: Sequence[str],
    fmt: str,
    *,
    table_columns: Sequence[str] | None = None,
    totals: bool = True,
) -> str:
    """`rows` in format `fmt` (one of FORMATS). The table shows `table_columns` when given."""
    if fmt == "table":
        return to_table(rows, table_columns or columns, totals=totals)
    if fmt == "csv":
        return to_csv(rows, columns)
    if fmt == "json":
        return to_json(rows, columns)
    raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
