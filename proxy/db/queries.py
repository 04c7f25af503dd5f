"""Report queries: plain functions over usage_records returning plain rows (dicts).

Time bounds apply to occurred_at: `since` inclusive, `until` exclusive, both timezone-aware.
Days and months are UTC. Money comes back as Decimal, summed exactly in SQL on both backends
(numeric on PostgreSQL; integer units on SQLite, see proxy.db.models.Money).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import AssistantName, UsageRecord

__all__ = [
    "EVENT_COLUMNS",
    "FILTERS",
    "GROUP_FIELDS",
    "SUMS",
    "between",
    "finish_groups",
    "stream_events",
    "usage_events",
    "usage_groups",
]

_U = UsageRecord
_NAMES = AssistantName.__table__
# Every column but the id, and `priced`: false when cost_usd is NULL (no price was in force).
EVENT_COLUMNS: tuple[str, ...] = (
    *(c.name for c in _U.__table__.columns if c.name != "id"),
    "priced",
)
# group-by field -> the output columns it adds
GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    "team": ("team",),
    # The name is the latest seen in an assistant object through the proxy (assistant_names).
    "assistant": ("assistant_id", "assistant_name"),
    # The Responses API's counterparts of a thread's assistant: a conversation, a stored prompt.
    "conversation": ("conversation_id",),
    "prompt": ("prompt_id",),
    "model": ("model",),
    "key": ("key_fingerprint", "key_hint"),
    "project": ("project",),
    # The Azure OpenAI deployment a request named (/openai/deployments/{name}/...).
    "deployment": ("deployment",),
    "kind": ("kind",),
    "tag": ("tag",),
    "day": ("day",),
    "month": ("month",),
}
SUMS: tuple[str, ...] = (
    "events",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "code_interpreter_sessions",
    "cost_usd",
    "unpriced_events",
    "unpriced_tokens",
    "priced",
)
# cost_usd of a group sums its priced events; unpriced_events and unpriced_tokens count those
# with no price (cost_usd NULL), and `priced` is false when there are any. A group whose events
# are all unpriced has cost_usd None, not 0.
# filter keyword -> column; None values are ignored
FILTERS = {
    "team": _U.team,
    "assistant_id": _U.assistant_id,
    "model": _U.model,
    "key_fingerprint": _U.key_fingerprint,
    "project": _U.project,
    "kind": _U.kind,
    "tag": _U.tag,
}


def _where(
    stmt: Select[Any], since: dt.datetime | None, until: dt.datetime | None, filters: dict
) -> Select[Any]:
    for name, value in filters.items():
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r} (one of {', '.join(FILTERS)})")
        if value is not None:
            stmt = stmt.where(FILTERS[name] == value)
    return between(stmt, since, until)


def between(stmt: Select[Any], since: dt.datetime | None, until: dt.datetime | None) -> Any:
    """`stmt` limited to the usage rows that occurred in [since, until) (None: open)."""
    if since is not None:
        stmt = stmt.where(_U.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(_U.occurred_at < until)
    return stmt


async def usage_events(
    sm: async_sessionmaker[AsyncSession],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    limit: int | None = None,
    **filters: str | None,
) -> list[dict[str, Any]]:
    """One dict per usage row (keys: EVENT_COLUMNS), in occurred_at order.
    Filters: the keywords of FILTERS, each an exact match."""
    cols = [_U.__table__.c[name] for name in EVENT_COLUMNS if name != "priced"]
    stmt = _where(select(*cols), since, until, filters).order_by(_U.occurred_at, _U.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    async with reading(sm) as session:
        rows = [dict(row) for row in (await session.execute(stmt)).mappings()]
    for row in rows:
        row["priced"] = row["cost_usd"] is not None
    return rows


async def stream_events(
    sm: async_sessionmaker[AsyncSession],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    batch: int = 2000,
    **filters: str | None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """usage_events' rows in batches, read through a server-side cursor (PostgreSQL) or a
    stepped statement (SQLite): memory holds one batch, whatever the row count."""
    cols = [_U.__table__.c[name] for name in EVENT_COLUMNS if name != "priced"]
    stmt = _where(select(*cols), since, until, filters).order_by(_U.occurred_at, _U.id)
    async with reading(sm) as session:
        result = await session.stream(stmt.execution_options(yield_per=batch))
        async for part in result.mappings().partitions(batch):
            rows = [dict(row) for row in part]
            for row in rows:
                row["priced"] = row["cost_usd"] is not None
            yield rows


def _period(dialect: str, field: str) -> ColumnElement[str]:
    # Literals, not bound parameters: GROUP BY must repeat the SELECT expression exactly, and
    # PostgreSQL sees two different parameters as two different expressions.
    if dialect == "postgresql":
        fmt = "'YYYY-MM-DD'" if field == "day" else "'YYYY-MM'"
        utc = func.timezone(literal_column("'UTC'"), _U.occurred_at)
        return func.to_char(utc, literal_column(fmt))
    # SQLite keeps UTC datetimes as "YYYY-MM-DD HH:MM:SS.ffffff" text.
    fmt = "'%Y-%m-%d'" if field == "day" else "'%Y-%m'"
    return func.strftime(literal_column(fmt), _U.occurred_at)


async def usage_groups(
    sm: async_sessionmaker[AsyncSession],
    group_by: Sequence[str],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    **filters: str | None,
) -> list[dict[str, Any]]:
    """Totals per group, ordered by the group columns. Each dict has the columns of the
    GROUP_FIELDS of `group_by`, in order, then SUMS. With no group_by, one row of totals.
    Raises ValueError for an unknown field."""
    unknown = [name for name in group_by if name not in GROUP_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown group-by field {unknown[0]!r} (one of {', '.join(GROUP_FIELDS)})"
        )
    async with reading(sm) as session:
        dialect = session.get_bind().dialect.name
        keys: list[ColumnElement[Any]] = []
        joined = False
        selected: list[ColumnElement[Any]] = []
        for name in dict.fromkeys(group_by):
            if name in ("day", "month"):
                keys.append(_period(dialect, name).label(name))
                selected.append(keys[-1])
            elif name == "assistant":
                keys.append(_U.assistant_id.label("assistant_id"))
                # One id has one name row; max() picks it without grouping on it.
                selected += [keys[-1], func.max(_NAMES.c.name).label("assistant_name")]
                joined = True
            elif name == "key":
                keys.append(_U.key_fingerprint.label("key_fingerprint"))
                # One key has one hint; max() picks it without grouping on it.
                selected += [keys[-1], func.max(_U.key_hint).label("key_hint")]
            else:
                column = GROUP_FIELDS[name][0]
                keys.append(_U.__table__.c[column].label(column))
                selected.append(keys[-1])
        sums = [
            func.count().label("events"),
            func.coalesce(func.sum(_U.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(_U.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(_U.total_tokens), 0).label("total_tokens"),
            func.coalesce(func.sum(_U.code_interpreter_sessions), 0).label(
                "code_interpreter_sessions"
            ),
            func.sum(_U.cost_usd).label("cost_usd"),
            func.count().filter(_U.cost_usd.is_(None)).label("unpriced_events"),
            func.coalesce(
                func.sum(case((_U.cost_usd.is_(None), _U.total_tokens), else_=0)), 0
            ).label("unpriced_tokens"),
        ]
        stmt = select(*selected, *sums)
        if joined:
            stmt = stmt.select_from(
                _U.__table__.outerjoin(_NAMES, _NAMES.c.assistant_id == _U.assistant_id)
            )
        stmt = _where(stmt, since, until, filters)
        if keys:
            stmt = stmt.group_by(*keys).order_by(*(key.asc().nulls_last() for key in keys))
        rows = (await session.execute(stmt)).mappings().all()
    return finish_groups(rows)


def finish_groups(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Group rows as usage_groups returns them, from the rows of its SQL (or the rollup's)."""
    out = []
    for row in rows:
        item = dict(row)
        for name in SUMS:
            if name not in ("cost_usd", "priced"):
                # PostgreSQL's sum(bigint) is numeric: normalise to int.
                item[name] = int(item[name])
        unpriced = item["unpriced_events"]
        if item["cost_usd"] is None and not (unpriced and unpriced == item["events"]):
            item["cost_usd"] = Decimal(0)  # the totals row of an empty selection
        item["priced"] = not unpriced
        out.append(item)
    return out
