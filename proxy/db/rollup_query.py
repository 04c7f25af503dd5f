"""Report groups from the daily rollup (usage_rollup) whenever the question allows: group
fields and filters the rollup keeps, and bounds on whole UTC days. The rows are those
proxy.db.queries.usage_groups gives for the same question, to the last digit and in the same
order (tests/db/test_rollup_query.py compares the two on both backends); any other question
goes to usage_groups, over the usage rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import AssistantName, UsageRollup, UsageRollupMonth
from proxy.db.queries import GROUP_FIELDS, SUMS, finish_groups, usage_groups

__all__ = [
    "ROLLUP_FIELDS",
    "ROLLUP_FILTERS",
    "covered",
    "regroup",
    "report_groups",
    "rollup_groups",
]

_DAYS: Table = UsageRollup.__table__  # type: ignore[assignment]
_MONTHS: Table = UsageRollupMonth.__table__  # type: ignore[assignment]
_NAMES: Table = AssistantName.__table__  # type: ignore[assignment]
ROLLUP_FIELDS = frozenset({"team", "assistant", "model", "key", "kind", "tag", "day", "month"})
ROLLUP_FILTERS = frozenset({"team", "assistant_id", "model", "key_fingerprint", "kind", "tag"})
_WORK_MEM = text("SET LOCAL work_mem = '64MB'")
# Columns whose NULL the rollup keeps as '' (see UsageRollup).
_BLANK_IS_NULL = frozenset({"key_fingerprint", "key_hint", "assistant_id", "model", "tag"})


def _midnight(when: dt.datetime | None) -> bool:
    if when is None:
        return True
    utc = when.astimezone(dt.UTC)
    return utc.time() == dt.time()


def covered(
    group_by: Sequence[str],
    since: dt.datetime | None,
    until: dt.datetime | None,
    filters: Mapping[str, str | None],
) -> bool:
    """Whether the rollup can answer this group question exactly."""
    return (
        all(name in ROLLUP_FIELDS for name in group_by)
        # A filter on '' would match the rollup's NULLs: the rows decide that one.
        and all(v is None or (k in ROLLUP_FILTERS and v != "") for k, v in filters.items())
        and _midnight(since)
        and _midnight(until)
    )


def _first_of_month(when: dt.datetime | None) -> bool:
    return when is None or (_midnight(when) and when.astimezone(dt.UTC).day == 1)


def _column(table: Table, name: str) -> ColumnElement[Any]:
    column = table.c[name]
    return func.nullif(column, literal("")) if name in _BLANK_IS_NULL else column


async def report_groups(
    sm: async_sessionmaker[AsyncSession],
    group_by: Sequence[str],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    **filters: str | None,
) -> list[dict[str, Any]]:
    """usage_groups' rows, read from the rollup when `covered`, else from the usage rows."""
    if covered(group_by, since, until, filters):
        return await rollup_groups(sm, group_by, since, until, **filters)
    return await usage_groups(sm, group_by, since, until, **filters)


async def rollup_groups(
    sm: async_sessionmaker[AsyncSession],
    group_by: Sequence[str],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    **filters: str | None,
) -> list[dict[str, Any]]:
    """usage_groups from the rollup; the caller checks `covered` (ValueError if not)."""
    if not covered(group_by, since, until, filters):
        raise ValueError("the rollup cannot answer this question; use usage_groups")
    # Without days to tell apart, whole months read the monthly cells (~14 times fewer).
    monthly = "day" not in group_by and _first_of_month(since) and _first_of_month(until)
    table = _MONTHS if monthly else _DAYS
    period = table.c.month if monthly else table.c.day
    keys: list[ColumnElement[Any]] = []
    selected: list[ColumnElement[Any]] = []
    joined = False
    for name in dict.fromkeys(group_by):
        if name == "day":
            keys.append(table.c.day.label("day"))
            selected.append(keys[-1])
        elif name == "month":
            keys.append((period if monthly else func.substr(period, 1, 7)).label("month"))
            selected.append(keys[-1])
        elif name == "assistant":
            keys.append(_column(table, "assistant_id").label("assistant_id"))
            selected += [keys[-1], func.max(_NAMES.c.name).label("assistant_name")]
            joined = True
        elif name == "key":
            keys.append(_column(table, "key_fingerprint").label("key_fingerprint"))
            selected += [keys[-1], func.max(_column(table, "key_hint")).label("key_hint")]
        else:
            column = GROUP_FIELDS[name][0]
            keys.append(_column(table, column).label(column))
            selected.append(keys[-1])
    sums = [
        func.coalesce(func.sum(table.c.events), 0).label("events"),
        *(
            func.coalesce(func.sum(table.c[c]), 0).label(c)
            for c in ("prompt_tokens", "completion_tokens", "total_tokens")
        ),
        func.coalesce(func.sum(table.c.code_interpreter_sessions), 0).label(
            "code_interpreter_sessions"
        ),
        func.sum(table.c.cost_usd).label("cost_usd"),
        func.coalesce(func.sum(table.c.unpriced_events), 0).label("unpriced_events"),
        func.coalesce(func.sum(table.c.unpriced_tokens), 0).label("unpriced_tokens"),
    ]
    stmt = select(*selected, *sums)
    if joined:
        # The rollup's '' (no assistant) matches no name, as NULL matches none in the rows.
        stmt = stmt.select_from(
            table.outerjoin(_NAMES, _NAMES.c.assistant_id == table.c.assistant_id)
        )
    for name, value in filters.items():
        if value is not None:
            stmt = stmt.where(table.c[name] == value)
    width = 7 if monthly else 10
    if since is not None:
        stmt = stmt.where(period >= since.astimezone(dt.UTC).date().isoformat()[:width])
    if until is not None:
        stmt = stmt.where(period < until.astimezone(dt.UTC).date().isoformat()[:width])
    if keys:
        stmt = stmt.group_by(*keys).order_by(*(key.asc().nulls_last() for key in keys))
    async with reading(sm) as session:
        if session.get_bind().dialect.name == "postgresql":
            # A month of a large organisation is ~100,000 cells: PostgreSQL's default 4 MB of
            # work_mem sorts them on disk (measured: 466 ms, against 107 ms in memory).
            await session.execute(_WORK_MEM)
        rows = [dict(row) for row in (await session.execute(stmt)).mappings()]
    for row in rows:
        # A group of unpriced events only has no cost, as its usage rows' SUM() is NULL.
        if row["events"] and int(row["unpriced_events"]) == int(row["events"]):
            row["cost_usd"] = None
    return finish_groups(rows)


_INT_SUMS = tuple(n for n in SUMS if n not in ("cost_usd", "priced"))


def regroup(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """report_groups' rows for some fields, summed to `group_by`, a subset of them: the rows
    report_groups(group_by) gives for the same question, in no particular order (a page
    that needs several breakdowns asks the database once). Sums are exact (int, Decimal)."""
    columns = [c for name in dict.fromkeys(group_by) for c in GROUP_FIELDS[name]]
    keys = [c for c in columns if c not in ("key_hint", "assistant_name")]
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        group = out.get(key := tuple(row[c] for c in keys))
        if group is None:
            group = out[key] = {c: row[c] for c in columns}
            group.update(dict.fromkeys(_INT_SUMS, 0), cost_usd=None)
        for name in ("key_hint", "assistant_name"):
            # As max() in SQL: the largest value that is not NULL.
            if name in group and row[name] is not None:
                group[name] = row[name] if group[name] is None else max(group[name], row[name])
        for name in _INT_SUMS:
            group[name] += row[name]
        cost = row["cost_usd"]
        if cost is not None:
            group["cost_usd"] = cost if group["cost_usd"] is None else group["cost_usd"] + cost
    if not out and not keys:
        # The totals row of an empty selection, as usage_groups gives it.
        out[()] = {**dict.fromkeys(_INT_SUMS, 0), "cost_usd": Decimal(0)}
    result = []
    for group in out.values():
        group["priced"] = not group["unpriced_events"]
        result.append({c: group[c] for c in (*columns, *SUMS)})
    return result
