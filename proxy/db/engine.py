"""Engines and sessions for SQLite (aiosqlite) and PostgreSQL (asyncpg).

URLs are SQLAlchemy async URLs. `sqlite://` and `postgresql://` are accepted and given their
async driver. One query parameter is ours and is removed before SQLAlchemy sees the URL:
`schema=NAME` makes PostgreSQL connections use that schema (search_path), so that tests and
the proxy processes they start can share one database and still be isolated.

Transactions on SQLite: SQLAlchemy emits BEGIN itself (the sqlite3 driver's legacy mode skips
BEGIN before SELECT, which breaks read-then-write transactions). Every transaction begins
IMMEDIATE, i.e. it takes the single write lock up front and waits for it (busy_timeout), so a
read-then-write transaction can never fail half-way with SQLITE_BUSY. Read-only code that may
run long (reports) uses `reading(sm)`, which begins DEFERRED and never blocks writers.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from proxy.errors import ConfigError
from proxy.settings import mask_url

__all__ = [
    "BEGIN_OPTION",
    "describe_url",
    "make_engine",
    "make_sessionmaker",
    "ping",
    "reading",
    "split_url",
    "sqlite_path",
]

# Execution option read by the "begin" hook on SQLite: "IMMEDIATE" (default) or "DEFERRED".
BEGIN_OPTION = "sqlite_begin"
_BUSY_TIMEOUT_MS = 5000
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
_SUPPORTED = (
    "usage-proxy records into SQLite (sqlite:///PATH) or PostgreSQL "
    "(postgresql://USER:PASSWORD@HOST:5432/DB)"
)


def split_url(url: str) -> tuple[URL, str | None]:
    """(the SQLAlchemy URL with an async driver, the `schema` parameter or None)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database_url: {mask_url(url)!r} is not a database URL") from None
    parsed = parsed.set(drivername=_ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername))
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"database_url: {mask_url(url)!r}: {parsed.get_backend_name()} is not supported; "
            + _SUPPORTED
        )
    schema = parsed.query.get("schema")
    if isinstance(schema, tuple):
        raise ConfigError(f"database_url: {mask_url(url)!r} gives schema more than once")
    if schema is not None:
        if parsed.get_backend_name() != "postgresql":
            raise ConfigError(f"database_url: {mask_url(url)!r}: schema= is for PostgreSQL only")
        parsed = parsed.difference_update_query(["schema"])
    return parsed, schema


def sqlite_path(url: str) -> Path | None:
    """The file of a file-backed SQLite URL, else None (PostgreSQL, :memory:, URI mode)."""
    parsed, _ = split_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    if db.startswith("file:") or parsed.query.get("uri"):
        return None
    return Path(db)


def describe_url(url: str) -> str:
    """`url` for messages: its password masked and, for a SQLite file, the absolute path it
    resolves to, since a relative one depends on the folder the command runs in."""
    path = sqlite_path(url)
    shown = repr(mask_url(url))
    return shown if path is None else f"{shown} (the file {path.absolute()})"


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for `url`. A SQLite file is created on first connection, but never its folder:
    a missing folder is a ConfigError (a wrong path would otherwise start a new, empty
    database). Extra kwargs go to `create_async_engine` (tests use them; the proxy does not)."""
    parsed, schema = split_url(url)
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            path = sqlite_path(url)
            folder = path.absolute().parent if path is not None else None
            if folder is not None and not folder.is_dir():
                what = "is not a folder" if folder.exists() else "does not exist"
                raise ConfigError(
                    f"database_url: {describe_url(url)}: the folder {folder} {what} "
                    "(create it, or choose another path)"
                )
            _bind_none_directly()
            engine = create_async_engine(parsed, **kwargs)
            event.listen(engine.sync_engine, "connect", _sqlite_connect)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
            return engine
        if backend == "postgresql":
            connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}))
            if schema:
                # A startup parameter, so it also survives the pool's reset of a connection.
                connect_args["server_settings"] = {"search_path": _quote_ident(schema)}
            options: dict[str, Any] = {"pool_pre_ping": True}
            if "poolclass" not in kwargs:
                options.update(pool_size=5, max_overflow=10, pool_recycle=1800, pool_timeout=30)
            options.update(kwargs)
            return create_async_engine(parsed, connect_args=connect_args, **options)
        return create_async_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"database_url: {mask_url(url)!r}: {exc}") from None


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def reading(sm: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reads only: on SQLite its transaction takes no write lock."""
    async with sm() as session:
        await session.connection(execution_options={BEGIN_OPTION: "DEFERRED"})
        yield session


async def ping(engine: AsyncEngine, timeout: float = 5.0) -> bool:
    """True if a `SELECT 1` round trip succeeds within `timeout` seconds."""

    async def _select_one() -> None:
        async with engine.connect() as conn:
            await conn.execution_options(**{BEGIN_OPTION: "DEFERRED"})
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(_select_one(), timeout)
    except (SQLAlchemyError, OSError, TimeoutError):
        return False
    return True


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Returns None for any argument, as a C call (a lambda would cost a Python frame per value).
_UNCHANGED: Any = {}.get


def _bind_none_directly() -> None:
    # sqlite3 treats None as a value to adapt: it finds no adapter for it, then fails to find
    # two attributes (~3,000 instructions per None, a usage row binds nine). An adapter that
    # returns None makes that one dict lookup. Process-wide, and still NULL for every user.
    sqlite3.register_adapter(type(None), _UNCHANGED)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand BEGIN over to SQLAlchemy (see the module docstring).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # NORMAL is durable in WAL mode except for the last commits on power loss, not on a crash.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
    if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
        raise ValueError(f"{BEGIN_OPTION}: {mode!r}")
    conn.exec_driver_sql(f"BEGIN {mode}")
