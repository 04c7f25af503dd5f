"""Assistants runs, exactly once, with their code interpreter sessions counted per thread:
`record_usage_many` (see there). The rows are those of proxy.db.usage."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import rollup, sessions
from proxy.db.dialects import INSERTS, Insert, check_returning, dialect_of
from proxy.db.models import CodeInterpreterCall, ThreadSession, UsageRecord, utcnow
from proxy.db.sessions import SESSION_LENGTH
from proxy.db.usage import ROWS, Key, insert_once, row_params

__all__ = ["SESSION_LENGTH", "RunUsage", "Stored", "record_usage", "record_usage_many"]


@dataclass(frozen=True, slots=True)
class RunUsage:
    """A row (a proxy.accounting.usage.UsageRow) to record with the code interpreter calls it
    made (`call_times`, aware) and the price of a session (see `record_usage_many`)."""

    row: Any
    call_times: Sequence[dt.datetime] = ()
    session_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What an inserted row was stored with, where it may differ from the row given: its
    code interpreter sessions (counted here from the thread's calls) and its cost with them."""

    code_interpreter_sessions: int
    cost_usd: Decimal | None


_usage: Table = UsageRecord.__table__  # type: ignore[assignment]
_threads: Table = ThreadSession.__table__  # type: ignore[assignment]
_calls: Table = CodeInterpreterCall.__table__  # type: ignore[assignment]


# Statements are built once, at import, and executed with a parameter dict per row: building
# one per call (coercion, cache key) cost more CPU than the database spent on the row.
def _thread_state(insert: Insert) -> Any:
    stmt = insert(_threads)
    columns = ("session_started_at", "sessions", "updated_at")
    return stmt.on_conflict_do_update(
        index_elements=["thread_id"], set_={c: stmt.excluded[c] for c in columns}
    )


_THREAD_STATE = {name: _thread_state(insert) for name, insert in INSERTS.items()}
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


async def record_usage(
    sm: async_sessionmaker[AsyncSession],
    row: Any,
    *,
    code_interpreter_call_times: Sequence[dt.datetime] = (),
    session_price: Decimal | None = None,
) -> bool:
    """Insert the row unless (kind, object_id) exists; True if this call inserted it.
    `record_usage_many` of one row (see there for sessions and their price)."""
    item = RunUsage(row, code_interpreter_call_times, session_price)
    [stored] = await record_usage_many(sm, [item])
    return stored is not None


async def record_usage_many(
    sm: async_sessionmaker[AsyncSession],
    items: Sequence[RunUsage],
    *,
    also: Callable[[AsyncSession], Awaitable[object]] | None = None,
) -> list[Stored | None]:
    """Insert, in one transaction, the rows whose (kind, object_id) does not exist yet; for
    each item, what its row was stored with if this call inserted it, else None (a key
    repeated in `items` is inserted once, from its first item). The stored cost is the one to
    tell others of (UsageRecorded): the row's own cost omits its sessions. `also`, if given,
    runs last in the same transaction (the collector deletes the jobs it recorded there), so
    the rows and what it does commit together.

    With call times, the row's code_interpreter_sessions is computed here: a session lasts one
    hour from its first call, a thread's sessions are the fewest that cover all its recorded
    calls, and a run's share is the thread's total with its calls minus the total without
    them, which is exact in any order of collection. Without call times,
    row.code_interpreter_sessions is stored as given. With `session_price`, cost_usd is
    row.cost_usd + sessions * price, so the caller passes the cost without sessions; without
    one, a row with sessions is unpriced (cost_usd None).

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
        values = row_params(run.row)
        key = (values["kind"], values["object_id"])
        order.append(key)
        if key not in given:
            times = sorted(t.astimezone(dt.UTC) for t in run.call_times)
            given[key] = _Item(values, times, run.session_price)
    inserted = await insert_once(
        lambda returning: _record_items(sm, given, now, also, returning=returning)
    )
    first: set[Key] = set()
    out: list[Stored | None] = []
    for key in order:
        if key in inserted and key not in first:
            item = given[key]
            out.append(Stored(item.sessions, _cost(item)))
        else:
            out.append(None)
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
        dialect = dialect_of(session)
        check_returning(dialect)
        threads = sorted({i.thread for i in given.values() if i.times and i.thread})
        earlier = await _lock_threads(session, dialect, threads, now) if threads else {}
        _share(list(given.values()), earlier)
        # In key order: concurrent batches on PostgreSQL then take the unique index's entries
        # in one order and cannot deadlock.
        rows = [given[k].values_at(now) for k in sorted(given)]
        inserted: set[Key] = set()
        if rows:
            values = [tuple(map(row.__getitem__, ROWS.columns)) for row in rows]
            conn = await session.connection()
            inserted = {(k, o) for k, o in await ROWS.run(conn, values, returning=returning)}
        kept = [i for k, i in given.items() if k in inserted]
        if len(kept) < len(given):
            await _reshare(session, kept, earlier)
        tally = rollup.Tally()
        for item in kept:
            tally.add_mapping(item.values_at(now))
        await rollup.apply(session, tally)
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
        return v | {
            "code_interpreter_sessions": self.sessions,
            "cost_usd": _cost(self),
            "recorded_at": now,
        }


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


def _cost(item: _Item) -> Decimal | None:
    """The row's cost with its sessions. None (unpriced) when the row's cost is, or when it
    has sessions and no session price is in force: a partial sum must not pass as the cost."""
    cost: Decimal | None = item.values["cost_usd"]
    if cost is None or not item.sessions:
        return cost
    return None if item.price is None else cost + item.sessions * item.price


def _thread_states(
    kept: Sequence[_Item], earlier: Mapping[str, list[dt.datetime]], now: dt.datetime
) -> list[dict[str, Any]]:
    totals = sessions.thread_totals([(i.thread, i.times) for i in kept], earlier)
    return [
        {"thread_id": t, "session_started_at": started, "sessions": n, "updated_at": now}
        for t, (n, started) in totals.items()
    ]
