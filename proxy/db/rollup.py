"""The daily rollup (usage_rollup, see proxy.db.models.UsageRollup), kept equal to what
usage_records sums to: every function here runs in its caller's transaction, the one that
writes the usage rows, so a report sees both or neither.

Cells are changed by adding deltas with INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n
(PostgreSQL and SQLite alike): concurrent replicas adding to one cell each add, and no
increment is lost. A batch's cells are written in key order, so that two batches on PostgreSQL
lock shared cells in one order and cannot deadlock. A cell whose events fall to 0 (a reassign
moved them away, an adjustment was undone) is deleted, so the table is always what
`rebuild` would make of usage_records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    bindparam,
    case,
    delete,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from proxy.db.dialects import INSERTS, dialect_of
from proxy.db.models import UsageRecord, UsageRollup, UsageRollupMonth

__all__ = [
    "DIMENSIONS",
    "MEASURES",
    "MONTH_DIMENSIONS",
    "ROW_FIELDS",
    "Tally",
    "add_where",
    "apply",
    "cells_where",
    "expected_cells",
    "rebuild",
    "remove_where",
    "stored_cells",
    "utc_day",
    "utc_day_sql",
]

_rollup: Table = UsageRollup.__table__  # type: ignore[assignment]
_usage: Table = UsageRecord.__table__  # type: ignore[assignment]
_month: Table = UsageRollupMonth.__table__  # type: ignore[assignment]
DIMENSIONS = ("day", "team", "key_fingerprint", "key_hint", "assistant_id", "model", "kind", "tag")
# Usage columns summed as they are.
_SUMMED = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "code_interpreter_sessions",
)
MEASURES = ("events", *_SUMMED, "cost_usd", "unpriced_events", "unpriced_tokens")
_COST_AT = MEASURES.index("cost_usd")
_UNPRICED_AT = MEASURES.index("unpriced_events")
# The usage columns a row's cell and deltas are read from.
ROW_FIELDS = ("occurred_at", *DIMENSIONS[1:], *_SUMMED, "cost_usd")


def utc_day(when: dt.datetime) -> str:
    """The UTC day of an aware datetime, as the rollup keys it (YYYY-MM-DD)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d")


def utc_day_sql(dialect: str, column: Any) -> ColumnElement[str]:
    """SQL for the UTC day (YYYY-MM-DD) of a UTCDateTime column; literals, not parameters, so
    that GROUP BY can repeat the expression (as proxy.db.queries does)."""
    if dialect == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        return func.to_char(utc, literal_column("'YYYY-MM-DD'"))
    # SQLite keeps UTC datetimes as "YYYY-MM-DD HH:MM:SS.ffffff" text.
    return func.strftime(literal_column("'%Y-%m-%d'"), column)


class Tally:
    """Deltas per cell, summed in memory before one write: (dimensions) -> measures."""

    __slots__ = ("cells",)

    def __init__(self) -> None:
        self.cells: dict[tuple[str, ...], list[Any]] = {}

    def add(self, row: Sequence[Any], sign: int = 1) -> None:
        """Add (or, sign -1, take away) one usage row, its values in ROW_FIELDS order."""
        when, *dims = row[:8]
        key = (utc_day(when), *(v or "" for v in dims))
        counts = row[8:14]
        cost = row[14]
        total = counts[2] or 0
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0] * (len(MEASURES) - 3) + [Decimal(0), 0, 0]
        cell[0] += sign
        for i, n in enumerate(counts, 1):
            cell[i] += sign * (n or 0)
        if cost is None:
            cell[_UNPRICED_AT] += sign
            cell[_UNPRICED_AT + 1] += sign * total
        else:
            cell[_COST_AT] += sign * cost

    def add_mapping(self, row: Mapping[str, Any], sign: int = 1) -> None:
        self.add([row[name] for name in ROW_FIELDS], sign)

    def add_cells(self, cells: Iterable[Mapping[str, Any]], sign: int = 1, **replace: str) -> None:
        """Add whole cells (mappings of DIMENSIONS and MEASURES), with dimensions replaced."""
        for c in cells:
            key = tuple(replace.get(d, c[d]) for d in DIMENSIONS)
            cell = self.cells.setdefault(key, [0] * (len(MEASURES) - 3) + [Decimal(0), 0, 0])
            for i, name in enumerate(MEASURES):
                cell[i] += sign * c[name]


MONTH_DIMENSIONS = ("month", *DIMENSIONS[1:])


def _upsert(insert: Any, table: Table, dims: Sequence[str]) -> Any:
    stmt = insert(table)
    return stmt.on_conflict_do_update(
        index_elements=list(dims),
        set_={m: table.c[m] + stmt.excluded[m] for m in MEASURES},
    )


_UPSERT = {name: _upsert(insert, _rollup, DIMENSIONS) for name, insert in INSERTS.items()}
_UPSERT_MONTH = {
    name: _upsert(insert, _month, MONTH_DIMENSIONS) for name, insert in INSERTS.items()
}
_EMPTIED = delete(_rollup).where(
    _rollup.c.events == 0, _rollup.c.day.in_(bindparam("days", expanding=True))
)
_EMPTIED_MONTH = delete(_month).where(
    _month.c.events == 0, _month.c.month.in_(bindparam("months", expanding=True))
)


def _by_month(cells: Mapping[tuple[str, ...], list[Any]]) -> dict[tuple[str, ...], list[Any]]:
    out: dict[tuple[str, ...], list[Any]] = {}
    for (day, *dims), measures in cells.items():
        cell = out.get(key := (day[:7], *dims))
        if cell is None:
            out[key] = list(measures)
        else:
            for i, value in enumerate(measures):
                cell[i] += value
    return out


async def apply(session: AsyncSession, tally: Tally) -> None:
    """Add the tally's deltas to the rollup, in the session's transaction."""
    dialect = dialect_of(session)
    for cells, dims, upsert, emptied, name in (
        (tally.cells, DIMENSIONS, _UPSERT, _EMPTIED, "days"),
        (_by_month(tally.cells), MONTH_DIMENSIONS, _UPSERT_MONTH, _EMPTIED_MONTH, "months"),
    ):
        params = [
            dict(zip(dims, key, strict=True)) | dict(zip(MEASURES, cells[key], strict=True))
            for key in sorted(cells)
            if any(cells[key])
        ]
        if not params:
            continue
        await session.execute(upsert[dialect], params)
        lowered = sorted({p[dims[0]] for p in params if p["events"] < 0})
        if lowered:
            await session.execute(emptied, {name: lowered})


def _cells_select(dialect: str, where: Sequence[ColumnElement[bool]]) -> Any:
    """usage_records summed per cell: DIMENSIONS then MEASURES, NULLs as ''."""
    u = _usage.c
    dims = [utc_day_sql(dialect, u.occurred_at).label("day")] + [
        func.coalesce(u[d], literal("")).label(d) for d in DIMENSIONS[1:]
    ]
    measures = [
        func.count().label("events"),
        *(func.coalesce(func.sum(u[c]), 0).label(c) for c in _SUMMED),
        func.coalesce(func.sum(u.cost_usd), 0).label("cost_usd"),
        func.count().filter(u.cost_usd.is_(None)).label("unpriced_events"),
        func.coalesce(func.sum(case((u.cost_usd.is_(None), u.total_tokens), else_=0)), 0).label(
            "unpriced_tokens"
        ),
    ]
    return select(*dims, *measures).where(*where).group_by(*dims)


async def _cells(session: AsyncSession, where: Sequence[ColumnElement[bool]]) -> list[Any]:
    result = await session.execute(_cells_select(dialect_of(session), where))
    return [
        {**row, **{m: row[m] if m == "cost_usd" else int(row[m]) for m in MEASURES}}
        for row in result.mappings()
    ]


async def cells_where(
    session: AsyncSession, where: Sequence[ColumnElement[bool]]
) -> list[dict[str, Any]]:
    """The cells of the usage rows matching `where` (DIMENSIONS and MEASURES)."""
    return await _cells(session, where)


async def remove_where(
    session: AsyncSession, where: Sequence[ColumnElement[bool]], **replace: str
) -> list[Any]:
    """Take the usage rows matching `where` out of the rollup (call before they change or
    go); their cells, for `add_cells` with replaced dimensions after an UPDATE."""
    cells = await _cells(session, where)
    tally = Tally()
    tally.add_cells(cells, -1)
    await apply(session, tally)
    return cells


async def add_where(session: AsyncSession, where: Sequence[ColumnElement[bool]]) -> None:
    """Add the usage rows matching `where` to the rollup (call after they are written)."""
    tally = Tally()
    tally.add_cells(await _cells(session, where))
    await apply(session, tally)


async def rebuild(session: AsyncSession, since: dt.date | None = None) -> int:
    """Make the rollup's days from `since` (all days without) what usage_records sums to;
    returns the number of cells written."""
    where: list[ColumnElement[bool]] = []
    gone = delete(_rollup)
    if since is not None:
        gone = gone.where(_rollup.c.day >= since.isoformat())
        where.append(_usage.c.occurred_at >= dt.datetime.combine(since, dt.time(), dt.UTC))
    await session.execute(gone)
    query = _cells_select(dialect_of(session), where)
    await session.execute(_rollup.insert().from_select([*DIMENSIONS, *MEASURES], query))
    counted = select(func.count()).select_from(_rollup)
    if since is not None:
        counted = counted.where(_rollup.c.day >= since.isoformat())
    cells = int(await session.scalar(counted) or 0)
    # The months from since's, summed again from the days just made.
    first = since.isoformat()[:7] if since is not None else ""
    await session.execute(delete(_month).where(_month.c.month >= first))
    month = func.substr(_rollup.c.day, 1, 7)
    dims = [month.label("month"), *(_rollup.c[d] for d in DIMENSIONS[1:])]
    summed = (
        select(*dims, *(func.sum(_rollup.c[m]).label(m) for m in MEASURES))
        .where(_rollup.c.day >= first)
        .group_by(*dims)
    )
    await session.execute(_month.insert().from_select([*MONTH_DIMENSIONS, *MEASURES], summed))
    return cells


async def expected_cells(session: AsyncSession) -> list[dict[str, Any]]:
    """What the rollup must hold (as stored_cells gives it): usage_records summed per daily
    cell, then per monthly cell (for checks and tests)."""
    days = await _cells(session, [])
    keyed = {tuple(c[d] for d in DIMENSIONS): [c[m] for m in MEASURES] for c in days}
    months = [
        {"day": key[0], "month": key[0], **dict(zip(DIMENSIONS[1:], key[1:], strict=True))}
        | dict(zip(MEASURES, measures, strict=True))
        for key, measures in _by_month(keyed).items()
        if measures[0]
    ]
    return days + months


async def stored_cells(session: AsyncSession) -> list[dict[str, Any]]:
    """What the rollup holds: its daily cells, then its monthly ones keyed by the month in
    `day` (YYYY-MM), so that a check compares both grains with `expected_cells`."""
    days = [dict(row) for row in (await session.execute(select(_rollup))).mappings()]
    months = (await session.execute(select(_month))).mappings()
    return days + [{"day": row["month"], **dict(row)} for row in months]
