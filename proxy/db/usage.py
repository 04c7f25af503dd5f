"""Usage rows, exactly once: `record_rows` inserts many in one transaction, each unless its
(kind, object_id) exists. Rows are proxy.accounting.usage.UsageRow values, read by field name
(USAGE_FIELDS, the usage_records columns they fill): the database layer does not import the
domain.

Every function takes the async_sessionmaker and runs one short transaction of its own. A
transaction costs ~0.5 ms of event-loop CPU, a row in a batch a tenth of that.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import operator
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import rollup
from proxy.db.bulk_insert import BulkInsert, Conflicted
from proxy.db.dialects import check_returning, dialect_of
from proxy.db.engine import reading
from proxy.db.models import UsageRecord, UTCDateTime, utcnow

__all__ = [
    "ROWS",
    "USAGE_FIELDS",
    "Key",
    "insert_once",
    "record_rows",
    "recorded",
    "row_params",
]

_usage: Table = UsageRecord.__table__  # type: ignore[assignment]
# The columns a usage row fills: all but the id and the time of recording.
USAGE_FIELDS: tuple[str, ...] = tuple(
    c.name for c in _usage.columns if c.name not in ("id", "recorded_at")
)
_LENGTHS = tuple(
    (c.name, c.type.length)
    for c in _usage.columns
    if c.name in USAGE_FIELDS and isinstance(getattr(c.type, "length", None), int)
)

Key = tuple[str, str]
Row = TypeVar("Row")

_RECORDED = select(_usage.c.object_id).where(
    _usage.c.kind == bindparam("kind"), _usage.c.object_id.in_(bindparam("ids", expanding=True))
)


def row_params(row: Any) -> dict[str, Any]:
    """The row's column values, strings cut to their column's length: a client's
    200-character model name must cost the name's tail, not the row (PostgreSQL refuses an
    over-long value). A copy of the instance dict, not dataclasses.asdict, which deep-copies
    every value."""
    values = row.__dict__.copy()
    for name, length in _LENGTHS:
        value = values[name]
        if type(value) is str and len(value) > length:
            values[name] = value[:length]
    return values


async def recorded(
    sm: async_sessionmaker[AsyncSession], kind: str, object_ids: Collection[str]
) -> set[str]:
    """Those of the object ids that have a row of `kind` already."""
    if not object_ids:
        return set()
    async with reading(sm) as session:
        result = await session.execute(_RECORDED, {"kind": kind, "ids": list(object_ids)})
        return set(result.scalars())


async def record_rows(sm: async_sessionmaker[AsyncSession], rows: Sequence[Row]) -> list[Row]:
    """Insert the rows whose (kind, object_id) does not exist yet, in one transaction; the
    rows this call inserted, in the order given. A (kind, object_id) repeated in `rows` is
    inserted once, from its first row.

    For rows without code interpreter call times (chat completions, embeddings, responses):
    code_interpreter_sessions is stored as given. One prebuilt statement, executed with a
    parameter set per row, which SQLAlchemy renders as multi-row INSERT ... VALUES ... ON
    CONFLICT DO NOTHING RETURNING (PostgreSQL, and SQLite from 3.35).
    """
    now = utcnow()
    given: dict[Key, Row] = {}
    params: list[tuple[Any, ...]] = []
    for n, row in enumerate(rows, 1):
        if not n % _YIELD_EVERY:
            # ~1 us a row: a batch of hundreds would hold the event loop (see bulk_insert).
            await asyncio.sleep(0)
        values = _row_values(row, now)
        # The clipped key, as the database compares and returns it.
        key = (values[_KIND_AT], values[_OBJECT_ID_AT])
        if key in given:
            continue
        given[key] = row
        params.append(values)
    if not params:
        return []

    async def insert(returning: bool) -> set[Key]:
        async with sm.begin() as session:
            check_returning(dialect_of(session))
            conn = await session.connection()
            inserted = {(k, o) for k, o in await ROWS.run(conn, params, returning=returning)}
            tally = rollup.Tally()
            for values in params:
                if not returning or (values[_KIND_AT], values[_OBJECT_ID_AT]) in inserted:
                    tally.add(_GET_ROLLUP(values))
            await rollup.apply(session, tally)
            return inserted

    inserted = await insert_once(insert)
    return [row for key, row in given.items() if key in inserted]


async def insert_once(insert: Callable[[bool], Awaitable[set[Key]]]) -> set[Key]:
    """`insert(returning=False)`, a transaction that inserts every row or raises Conflicted
    and rolls back; on a conflict, `insert(returning=True)`, which learns which rows exist.
    The keys inserted either way (see BulkInsert.run: RETURNING is what costs)."""
    try:
        return await insert(False)
    except Conflicted:
        return await insert(True)


# Instants already written out: the rows of a batch share recorded_at, and chat completions
# created in the same second share occurred_at.
_UTC_TEXTS: dict[dt.datetime, str] = {}


def _sqlite_utc_text(value: dt.datetime) -> str:
    """What a UTCDateTime column binds on SQLite: the UTC time in SQLAlchemy's DATETIME storage
    format. SQLAlchemy %-formats a dict for it, ~13,000 instructions per value, two per usage
    row; a dict lookup, or else one isoformat call, gives the same text."""
    text = _UTC_TEXTS.get(value)
    if text is None:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        # Equal instants are equal datetimes whatever their zones, and have one UTC text.
        text = value.astimezone(dt.UTC).isoformat(" ", "microseconds")[:26]
        if len(_UTC_TEXTS) >= 1024:
            _UTC_TEXTS.clear()
        _UTC_TEXTS[value] = text
    return text


# record_rows goes through the driver: it is the write behind every recorded request.
_KEY = ("kind", "object_id")
ROWS = BulkInsert(
    _usage,
    (*USAGE_FIELDS, "recorded_at"),
    conflict=_KEY,
    returning=_KEY,
    processors={
        "sqlite": {c.name: _sqlite_utc_text for c in _usage.c if isinstance(c.type, UTCDateTime)}
    },
)
_YIELD_EVERY = 128
_KIND_AT, _OBJECT_ID_AT = USAGE_FIELDS.index("kind"), USAGE_FIELDS.index("object_id")
_CLIP_AT = tuple((USAGE_FIELDS.index(name), length) for name, length in _LENGTHS)
_GET_FIELDS = operator.attrgetter(*USAGE_FIELDS)
_GET_ROLLUP = operator.itemgetter(*(USAGE_FIELDS.index(name) for name in rollup.ROW_FIELDS))


def _row_values(row: Any, now: dt.datetime) -> tuple[Any, ...]:
    """`row_params` as a tuple in `ROWS.columns` order."""
    values = [*_GET_FIELDS(row), now]
    for i, length in _CLIP_AT:
        value = values[i]
        if type(value) is str and len(value) > length:
            values[i] = value[:length]
    return tuple(values)
