"""Usage rows (exactly once), code interpreter sessions per thread, team mappings, and the
server secret shared by replicas.

Every function takes the async_sessionmaker and runs one short transaction of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.engine import reading
from proxy.db.models import (
    CodeInterpreterCall,
    KeyTeam,
    ProjectTeam,
    ProxySecret,
    ThreadSession,
    UsageRecord,
    utcnow,
)

__all__ = [
    "SESSION_LENGTH",
    "UNASSIGNED",
    "UsageRow",
    "add_key_team",
    "add_project_team",
    "get_or_create_secret",
    "hmac_secret",
    "list_key_teams",
    "list_project_teams",
    "record_rows",
    "record_usage",
    "remove_key_team",
    "remove_project_team",
    "team_for",
]

UNASSIGNED = "unassigned"
SESSION_LENGTH = dt.timedelta(hours=1)


@dataclass(frozen=True, kw_only=True)
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
    code_interpreter_calls: int = 0
    code_interpreter_sessions: int = 0
    file_search_calls: int = 0
    web_search_calls: int = 0
    function_calls: int = 0
    cost_usd: Decimal = Decimal(0)


_SQLITE_VERSION = sqlite3.sqlite_version_info
_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRow))

_LENGTHS = {
    c.name: c.type.length
    for c in UsageRecord.__table__.columns
    if isinstance(getattr(c.type, "length", None), int)
}


class _Duplicate(Exception):
    """Raised inside the transaction to roll it back: the row was recorded before."""


def _insert(session: AsyncSession, model):
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


async def record_usage(
    sm: async_sessionmaker[AsyncSession],
    row: UsageRow,
    *,
    code_interpreter_call_times: Sequence[dt.datetime] = (),
    session_price: Decimal | None = None,
) -> bool:
    """Insert the row unless (kind, object_id) exists; True if this call inserted it.

    With `code_interpreter_call_times` (the calls of this run), the row's
    code_interpreter_sessions is computed here: a session lasts one hour from its first call,
    the thread's sessions are the fewest that cover all its recorded calls, and this run's
    share is the thread's total with its calls minus the total without them, which is exact
    in any order of collection. Without call times, row.code_interpreter_sessions is
    stored as given. With `session_price`, cost_usd is row.cost_usd + sessions * price, so the
    caller passes the cost without sessions.

    One transaction: the thread's session row is locked first (FOR UPDATE on PostgreSQL;
    SQLite has one writer), then the usage row is inserted, and only if that insert happened
    are its calls stored and the thread's session state advanced. A duplicate rolls everything
    back, so sessions are counted exactly once however many times a run is recorded.
    """
    if any(t.tzinfo is None for t in code_interpreter_call_times):
        raise ValueError("naive datetime in code_interpreter_call_times")
    times = sorted(t.astimezone(dt.UTC) for t in code_interpreter_call_times)
    now = utcnow()
    try:
        async with sm.begin() as session:
            sessions = row.code_interpreter_sessions
            earlier: list[dt.datetime] = []
            if times:
                if row.thread_id:
                    earlier = await _lock_thread(session, row.thread_id, times[0], now)
                before, _ = _open_sessions(earlier)
                total, started = _open_sessions(sorted([*earlier, *times]))
                # Adding calls never lowers the minimum number of hour-long sessions covering
                # them, so this run's share is never negative, and the shares of a thread's runs
                # add up to the exact total in any order of collection.
                sessions = total - before
            cost = row.cost_usd
            if session_price is not None:
                cost += sessions * session_price
            values = _clipped(dataclasses.asdict(row)) | {
                "code_interpreter_sessions": sessions,
                "cost_usd": cost,
                "recorded_at": now,
            }
            stmt = (
                _insert(session, UsageRecord)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["kind", "object_id"])
                .returning(UsageRecord.id)
            )
            if (await session.execute(stmt)).first() is None:
                raise _Duplicate
            if times and row.thread_id:
                await session.execute(
                    insert(CodeInterpreterCall),
                    [
                        {"thread_id": row.thread_id, "run_id": row.object_id, "called_at": t}
                        for t in times
                    ],
                )
                await session.execute(
                    update(ThreadSession)
                    .where(ThreadSession.thread_id == row.thread_id)
                    .values(session_started_at=started, sessions=total, updated_at=now)
                )
    except _Duplicate:
        return False
    return True


async def record_rows(
    sm: async_sessionmaker[AsyncSession], rows: Sequence[UsageRow]
) -> list[UsageRow]:
    """Insert the rows whose (kind, object_id) does not exist yet, in one transaction; the
    rows this call inserted, in the order given. A (kind, object_id) repeated in `rows` is
    inserted once, from its first row.

    For rows without code interpreter call times (chat completions, embeddings, responses):
    code_interpreter_sessions is stored as given. One statement, executed with a parameter
    set per row, which SQLAlchemy renders as multi-row INSERT ... VALUES ... ON CONFLICT DO
    NOTHING RETURNING (PostgreSQL, and SQLite from 3.35, the RETURNING that record_usage
    needs too).
    """
    now = utcnow()
    given: dict[tuple[str, str], UsageRow] = {}
    params: list[dict[str, Any]] = []
    for row in rows:
        # getattr per field, not dataclasses.asdict: asdict deep-copies every value.
        values = _clipped({name: getattr(row, name) for name in _FIELDS})
        # The clipped key, as the database compares and returns it.
        key = (values["kind"], values["object_id"])
        if key in given:
            continue
        given[key] = row
        values["recorded_at"] = now
        params.append(values)
    if not params:
        return []
    async with sm.begin() as session:
        if session.get_bind().dialect.name == "sqlite" and _SQLITE_VERSION < (3, 35):
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} has no RETURNING (3.35+)")
        table = UsageRecord.__table__
        stmt = (
            _insert(session, table)
            .on_conflict_do_nothing(index_elements=["kind", "object_id"])
            .returning(table.c.kind, table.c.object_id)
        )
        inserted = {(kind, oid) for kind, oid in (await session.execute(stmt, params)).all()}
    return [row for key, row in given.items() if key in inserted]


def _clipped(values: dict[str, Any]) -> dict[str, Any]:
    """Strings cut to their column's length: a client's 200-character model name must cost
    the name's tail, not the row (PostgreSQL refuses an over-long value)."""
    for name, length in _LENGTHS.items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > length:
            values[name] = value[:length]
    return values


async def _lock_thread(
    session: AsyncSession, thread_id: str, first_call: dt.datetime, now: dt.datetime
) -> list[dt.datetime]:
    """Lock the thread's session row (so concurrent runs of one thread count in turn) and
    return the thread's recorded code interpreter calls, in time order."""
    # A placeholder with sessions=0 makes a row to lock even for a new thread; it is committed
    # only together with a usage row, which then sets it.
    await session.execute(
        _insert(session, ThreadSession)
        .values(thread_id=thread_id, session_started_at=first_call, sessions=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["thread_id"])
    )
    await session.execute(
        select(ThreadSession.thread_id)
        .where(ThreadSession.thread_id == thread_id)
        .with_for_update()
    )
    calls = await session.scalars(
        select(CodeInterpreterCall.called_at)
        .where(CodeInterpreterCall.thread_id == thread_id)
        .order_by(CodeInterpreterCall.called_at)
    )
    return list(calls)


def _open_sessions(times: Sequence[dt.datetime]) -> tuple[int, dt.datetime | None]:
    """The fewest hour-long sessions that cover the sorted call times (each opened by the first
    call it covers), and the start of the last one."""
    opened = 0
    started: dt.datetime | None = None
    for t in times:
        if started is None or t >= started + SESSION_LENGTH:
            started = t
            opened += 1
    return opened, started


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
