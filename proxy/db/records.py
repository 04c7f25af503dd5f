"""Usage rows (exactly once), code interpreter sessions per thread, team mappings, and the
server secret shared by replicas.

Every function takes the async_sessionmaker and runs one short transaction of its own. The
hot ones (`record_rows`, `record_usage_many`) take many rows per transaction: a transaction
costs ~0.5 ms of event-loop CPU, a row in a batch a tenth of that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import operator
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import sessions
from proxy.db.bulk_insert import BulkInsert, Conflicted
from proxy.db.engine import reading
from proxy.db.models import (
    CodeInterpreterCall,
    KeyTeam,
    ProjectTeam,
    ProxySecret,
    ThreadSession,
    UsageRecord,
    UTCDateTime,
    utcnow,
)
from proxy.db.sessions import SESSION_LENGTH

__all__ = [
    "SESSION_LENGTH",
    "UNASSIGNED",
    "RunUsage",
    "UsageRow",
    "add_key_team",
    "add_project_team",
    "get_or_create_secret",
    "hmac_secret",
    "list_key_teams",
    "list_project_teams",
    "record_rows",
    "record_usage",
    "record_usage_many",
    "recorded",
    "remove_key_team",
    "remove_project_team",
    "row_from",
    "row_template",
    "team_for",
]

UNASSIGNED = "unassigned"


# Not frozen: a frozen dataclass of 29 fields costs ~8x as much to build (object.__setattr__
# per field), and a row is built for every recorded request (bench/README.md). Rows are values
# all the same: nothing changes one after it is built (dataclasses.replace makes a new one).
# Not slots either: `row_from` builds a row from a dict.
@dataclass(kw_only=True)
class UsageRow:
    """The content of one usage_records row (see proxy.db.models.UsageRecord)."""

    kind: str
    object_id: str
    occurred_at: dt.datetime
    usage_source: str
    thread_id: str | None = None
    assistant_id: str | None = None
    conversation_id: str | None = None
    prompt_id: str | None = None
    model: str | None = None
    status: str | None = None
    key_fingerprint: str | None = None
    key_hint: str | None = None
    team: str = UNASSIGNED
    tag: str | None = None
    project: str | None = None
    organization: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated_prompt_tokens: int | None = None
    estimated_completion_tokens: int | None = None
    estimator: str | None = None
    estimate_basis: str | None = None
    code_interpreter_calls: int = 0
    code_interpreter_sessions: int = 0
    file_search_calls: int = 0
    web_search_calls: int = 0
    function_calls: int = 0
    cost_usd: Decimal = Decimal(0)


_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(UsageRow) if f.default is not dataclasses.MISSING
}
_new = object.__new__


def row_template(**values: Any) -> dict[str, Any]:
    """Every field of a UsageRow: its defaults updated with `values`. For `row_from`."""
    return _DEFAULTS | values


def row_from(values: dict[str, Any]) -> UsageRow:
    """The UsageRow of `values`, a copy of a `row_template` with the row's own values set; the
    row takes the dict over. About a third of what `UsageRow(...)` with keywords costs, for the
    row built per request. The fields are not checked: the template holds them all."""
    row = _new(UsageRow)
    row.__dict__ = values
    return row


@dataclass(frozen=True, slots=True)
class RunUsage:
    """A row to record with the code interpreter calls it made (`call_times`, aware) and the
    price of a session (see `record_usage_many`)."""

    row: UsageRow
    call_times: Sequence[dt.datetime] = ()
    session_price: Decimal | None = None


_SQLITE_VERSION = sqlite3.sqlite_version_info
_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRow))
_usage: Table = UsageRecord.__table__  # type: ignore[assignment]
_threads: Table = ThreadSession.__table__  # type: ignore[assignment]
_calls: Table = CodeInterpreterCall.__table__  # type: ignore[assignment]
_LENGTHS = tuple(
    (c.name, c.type.length)
    for c in _usage.columns
    if c.name in _FIELDS and isinstance(getattr(c.type, "length", None), int)
)

Key = tuple[str, str]
_Insert = Callable[[Table], Any]


# Statements are built once, at import, and executed with a parameter dict per row: building
# one per call (coercion, cache key) cost more CPU than the database spent on the row.
def _thread_state(insert: _Insert) -> Any:
    stmt = insert(_threads)
    columns = ("session_started_at", "sessions", "updated_at")
    return stmt.on_conflict_do_update(
        index_elements=["thread_id"], set_={c: stmt.excluded[c] for c in columns}
    )


_DIALECTS: dict[str, _Insert] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_THREAD_STATE = {name: _thread_state(insert) for name, insert in _DIALECTS.items()}
# PostgreSQL only: a row to lock even for a new thread, committed only with the usage rows
# that set it. SQLite needs no lock: its transactions begin IMMEDIATE (one writer).
_THREAD_PLACEHOLDER = postgresql.insert(_threads).on_conflict_do_nothing(
    index_elements=["thread_id"]
)
_THREAD_IDS = bindparam("threads", expanding=True)
_LOCK_THREADS = (
    select(_threads.c.thread_id)
    .where(_threads.c.thread_id.in_(_THREAD_IDS))
    .order_by(_threads.c.thread_id)
    .with_for_update()
)
_THREAD_CALLS = (
    select(_calls.c.thread_id, _calls.c.called_at)
    .where(_calls.c.thread_id.in_(_THREAD_IDS))
    .order_by(_calls.c.thread_id, _calls.c.called_at)
)
_ADD_CALLS = insert(_calls)
_RESHARE = (
    update(_usage)
    .where(_usage.c.kind == bindparam("k"), _usage.c.object_id == bindparam("o"))
    .values(code_interpreter_sessions=bindparam("s"), cost_usd=bindparam("c"))
)
_RECORDED = select(_usage.c.object_id).where(
    _usage.c.kind == bindparam("kind"), _usage.c.object_id.in_(bindparam("ids", expanding=True))
)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _insert(session: AsyncSession, model: Any) -> Any:
    return _DIALECTS[_dialect(session)](model)


def _params(row: UsageRow) -> dict[str, Any]:
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


async def record_usage(
    sm: async_sessionmaker[AsyncSession],
    row: UsageRow,
    *,
    code_interpreter_call_times: Sequence[dt.datetime] = (),
    session_price: Decimal | None = None,
) -> bool:
    """Insert the row unless (kind, object_id) exists; True if this call inserted it.
    `record_usage_many` of one row (see there for sessions and their price)."""
    item = RunUsage(row, code_interpreter_call_times, session_price)
    [inserted] = await record_usage_many(sm, [item])
    return inserted


async def record_usage_many(
    sm: async_sessionmaker[AsyncSession],
    items: Sequence[RunUsage],
    *,
    also: Callable[[AsyncSession], Awaitable[object]] | None = None,
) -> list[bool]:
    """Insert, in one transaction, the rows whose (kind, object_id) does not exist yet; for
    each item, True if this call inserted its row (a key repeated in `items` is inserted once,
    from its first item). `also`, if given, runs last in the same transaction (the collector
    deletes the jobs it recorded there), so the rows and what it does commit together.

    With call times, the row's code_interpreter_sessions is computed here: a session lasts one
    hour from its first call, a thread's sessions are the fewest that cover all its recorded
    calls, and a run's share is the thread's total with its calls minus the total without
    them, which is exact in any order of collection. Without call times,
    row.code_interpreter_sessions is stored as given. With `session_price`, cost_usd is
    row.cost_usd + sessions * price, so the caller passes the cost without sessions.

    The threads' session rows are locked first (FOR UPDATE on PostgreSQL, in thread order so
    that concurrent batches cannot deadlock; SQLite has one writer), so a thread's runs are
    counted in turn. Only the rows actually inserted have their calls stored and advance their
    thread, so a run is counted once however many times it is recorded.
    """
    now = utcnow()
    given: dict[Key, _Item] = {}
    order: list[Key] = []
    for run in items:
        if any(t.tzinfo is None for t in run.call_times):
            raise ValueError("naive datetime in code_interpreter_call_times")
        values = _params(run.row)
        key = (values["kind"], values["object_id"])
        order.append(key)
        if key not in given:
            times = sorted(t.astimezone(dt.UTC) for t in run.call_times)
            given[key] = _Item(values, times, run.session_price)
    inserted = await _insert_once(
        lambda returning: _record_items(sm, given, now, also, returning=returning)
    )
    first: set[Key] = set()
    out = []
    for key in order:
        out.append(key in inserted and key not in first)
        first.add(key)
    return out


async def _record_items(
    sm: async_sessionmaker[AsyncSession],
    given: dict[Key, _Item],
    now: dt.datetime,
    also: Callable[[AsyncSession], Awaitable[object]] | None,
    *,
    returning: bool,
) -> set[Key]:
    """record_usage_many's transaction; the keys inserted. Without `returning`, raises
    Conflicted (and the transaction rolls back) unless every row is inserted."""
    async with sm.begin() as session:
        dialect = _dialect(session)
        _check_returning(dialect)
        threads = sorted({i.thread for i in given.values() if i.times and i.thread})
        earlier = await _lock_threads(session, dialect, threads, now) if threads else {}
        _share(list(given.values()), earlier)
        # In key order: concurrent batches on PostgreSQL then take the unique index's entries
        # in one order and cannot deadlock.
        rows = [given[k].values_at(now) for k in sorted(given)]
        inserted: set[Key] = set()
        if rows:
            values = [tuple(map(row.__getitem__, _ROWS.columns)) for row in rows]
            conn = await session.connection()
            inserted = {(k, o) for k, o in await _ROWS.run(conn, values, returning=returning)}
        kept = [i for k, i in given.items() if k in inserted]
        if len(kept) < len(given):
            await _reshare(session, kept, earlier)
        calls = [
            {"thread_id": i.thread, "run_id": i.values["object_id"], "called_at": t}
            for i in kept
            if i.thread
            for t in i.times
        ]
        if calls:
            await session.execute(_ADD_CALLS, calls)
            await session.execute(
                _THREAD_STATE[dialect],
                _thread_states(kept, earlier, now),
            )
        if also is not None:
            await also(session)
    return inserted


class _Item:
    """One row being recorded: its column values and the calls that decide its sessions."""

    __slots__ = ("price", "sessions", "thread", "times", "values")

    def __init__(self, values: dict[str, Any], times: list[dt.datetime], price: Decimal | None):
        self.values = values
        self.times = times
        self.price = price
        self.thread: str | None = values["thread_id"]
        self.sessions: int = values["code_interpreter_sessions"]

    def values_at(self, now: dt.datetime) -> dict[str, Any]:
        v = self.values
        cost = v["cost_usd"]
        if self.price is not None:
            cost = cost + self.sessions * self.price
        return v | {
            "code_interpreter_sessions": self.sessions,
            "cost_usd": cost,
            "recorded_at": now,
        }


def _check_returning(dialect: str) -> None:
    if dialect == "sqlite" and _SQLITE_VERSION < (3, 35):
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} has no RETURNING (3.35+)")


async def _lock_threads(
    session: AsyncSession, dialect: str, threads: list[str], now: dt.datetime
) -> dict[str, list[dt.datetime]]:
    """Lock the threads' session rows and return their recorded calls, in time order."""
    if dialect == "postgresql":
        placeholders = [
            {"thread_id": t, "session_started_at": now, "sessions": 0, "updated_at": now}
            for t in threads
        ]
        await session.execute(_THREAD_PLACEHOLDER, placeholders)
        await session.execute(_LOCK_THREADS, {"threads": threads})
    earlier: dict[str, list[dt.datetime]] = {t: [] for t in threads}
    for thread, called_at in await session.execute(_THREAD_CALLS, {"threads": threads}):
        earlier[thread].append(called_at)
    return earlier


def _share(items: Sequence[_Item], earlier: Mapping[str, list[dt.datetime]]) -> None:
    """Set each item's sessions from its calls (see proxy.db.sessions); an item without calls
    keeps the count it was given."""
    counted = sessions.shares([(i.thread, i.times) for i in items], earlier)
    for item, n in zip(items, counted, strict=True):
        if n is not None:
            item.sessions = n


async def _reshare(
    session: AsyncSession, kept: Sequence[_Item], earlier: Mapping[str, list[dt.datetime]]
) -> None:
    """Some rows existed already (recorded before): their calls are not this call's, so the
    shares of the inserted rows of their threads are counted again without them."""
    before = {id(i): i.sessions for i in kept}
    _share(kept, earlier)
    changed = [
        {"k": i.values["kind"], "o": i.values["object_id"], "s": i.sessions, "c": _cost(i)}
        for i in kept
        if i.sessions != before[id(i)]
    ]
    if changed:
        await session.execute(_RESHARE, changed)


def _cost(item: _Item) -> Decimal:
    cost: Decimal = item.values["cost_usd"]
    return cost + item.sessions * item.price if item.price is not None else cost


def _thread_states(
    kept: Sequence[_Item], earlier: Mapping[str, list[dt.datetime]], now: dt.datetime
) -> list[dict[str, Any]]:
    totals = sessions.thread_totals([(i.thread, i.times) for i in kept], earlier)
    return [
        {"thread_id": t, "session_started_at": started, "sessions": n, "updated_at": now}
        for t, (n, started) in totals.items()
    ]


async def recorded(
    sm: async_sessionmaker[AsyncSession], kind: str, object_ids: Collection[str]
) -> set[str]:
    """Those of the object ids that have a row of `kind` already."""
    if not object_ids:
        return set()
    async with reading(sm) as session:
        result = await session.execute(_RECORDED, {"kind": kind, "ids": list(object_ids)})
        return set(result.scalars())


async def record_rows(
    sm: async_sessionmaker[AsyncSession], rows: Sequence[UsageRow]
) -> list[UsageRow]:
    """Insert the rows whose (kind, object_id) does not exist yet, in one transaction; the
    rows this call inserted, in the order given. A (kind, object_id) repeated in `rows` is
    inserted once, from its first row.

    For rows without code interpreter call times (chat completions, embeddings, responses):
    code_interpreter_sessions is stored as given. One prebuilt statement, executed with a
    parameter set per row, which SQLAlchemy renders as multi-row INSERT ... VALUES ... ON
    CONFLICT DO NOTHING RETURNING (PostgreSQL, and SQLite from 3.35).
    """
    now = utcnow()
    given: dict[Key, UsageRow] = {}
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
            _check_returning(_dialect(session))
            conn = await session.connection()
            return {(k, o) for k, o in await _ROWS.run(conn, params, returning=returning)}

    inserted = await _insert_once(insert)
    return [row for key, row in given.items() if key in inserted]


async def _insert_once(insert: Callable[[bool], Awaitable[set[Key]]]) -> set[Key]:
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
_ROWS = BulkInsert(
    _usage,
    (*_FIELDS, "recorded_at"),
    conflict=_KEY,
    returning=_KEY,
    processors={
        "sqlite": {c.name: _sqlite_utc_text for c in _usage.c if isinstance(c.type, UTCDateTime)}
    },
)
_YIELD_EVERY = 128
_KIND_AT, _OBJECT_ID_AT = _FIELDS.index("kind"), _FIELDS.index("object_id")
_CLIP_AT = tuple((_FIELDS.index(name), length) for name, length in _LENGTHS)
_GET_FIELDS = operator.attrgetter(*_FIELDS)


def _row_values(row: UsageRow, now: dt.datetime) -> tuple[Any, ...]:
    """`_params` as a tuple in `_ROWS.columns` order."""
    values = [*_GET_FIELDS(row), now]
    for i, length in _CLIP_AT:
        value = values[i]
        if type(value) is str and len(value) > length:
            values[i] = value[:length]
    return tuple(values)


async def team_for(
    sm: async_sessionmaker[AsyncSession], *, fingerprint: str | None, project: str | None
) -> str:
    """The key's team, else the project's team, else "unassigned". One primary-key lookup
    per table, in one round trip."""
    candidates = []
    if fingerprint:
        candidates.append(
            select(KeyTeam.team).where(KeyTeam.key_fingerprint == fingerprint).scalar_subquery()
        )
    if project:
        candidates.append(
            select(ProjectTeam.team).where(ProjectTeam.project == project).scalar_subquery()
        )
    if not candidates:
        return UNASSIGNED
    async with reading(sm) as session:
        team = await session.scalar(select(func.coalesce(*candidates, literal(UNASSIGNED))))
    return team or UNASSIGNED


async def add_key_team(
    sm: async_sessionmaker[AsyncSession],
    fingerprint: str,
    hint: str | None,
    team: str,
    label: str | None = None,
) -> None:
    """Map a key (by fingerprint) to a team; replaces an existing mapping of that key."""
    async with sm.begin() as session:
        stmt = _insert(session, KeyTeam).values(
            key_fingerprint=fingerprint, key_hint=hint, team=team, label=label, created_at=utcnow()
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["key_fingerprint"],
            set_={"key_hint": hint, "team": team, "label": label},
        )
        await session.execute(stmt)


async def list_key_teams(sm: async_sessionmaker[AsyncSession]) -> list[KeyTeam]:
    async with reading(sm) as session:
        rows = await session.scalars(select(KeyTeam).order_by(KeyTeam.team, KeyTeam.created_at))
        return list(rows)


async def remove_key_team(sm: async_sessionmaker[AsyncSession], fingerprint: str) -> bool:
    """True if a mapping was removed."""
    async with sm.begin() as session:
        result = await session.execute(
            delete(KeyTeam).where(KeyTeam.key_fingerprint == fingerprint)
        )
        return result.rowcount == 1


async def add_project_team(sm: async_sessionmaker[AsyncSession], project: str, team: str) -> None:
    """Map an OpenAI project id to a team; replaces an existing mapping of that project."""
    async with sm.begin() as session:
        stmt = _insert(session, ProjectTeam).values(project=project, team=team, created_at=utcnow())
        stmt = stmt.on_conflict_do_update(index_elements=["project"], set_={"team": team})
        await session.execute(stmt)


async def list_project_teams(sm: async_sessionmaker[AsyncSession]) -> list[ProjectTeam]:
    async with reading(sm) as session:
        rows = await session.scalars(select(ProjectTeam).order_by(ProjectTeam.project))
        return list(rows)


async def remove_project_team(sm: async_sessionmaker[AsyncSession], project: str) -> bool:
    """True if a mapping was removed."""
    async with sm.begin() as session:
        result = await session.execute(delete(ProjectTeam).where(ProjectTeam.project == project))
        return result.rowcount == 1


async def get_or_create_secret(
    sm: async_sessionmaker[AsyncSession], name: str = "key_hmac"
) -> bytes:
    """The named secret, generated on first use. Concurrent replicas agree: each offers a new
    value with insert-or-do-nothing, and all read back the one that won. The value is 64 hex
    characters and this returns their bytes, so setting the same text as
    USAGE_PROXY_KEY_SECRET yields the same fingerprints."""
    async with sm.begin() as session:
        await session.execute(
            _insert(session, ProxySecret)
            .values(name=name, value=secrets.token_hex(32), created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        value = await session.scalar(select(ProxySecret.value).where(ProxySecret.name == name))
    assert value is not None
    return value.encode()


async def hmac_secret(sm: async_sessionmaker[AsyncSession], configured: str = "") -> bytes:
    """The key fingerprint secret: the `key_secret` setting if set, else the database's."""
    return configured.encode() if configured else await get_or_create_secret(sm)
