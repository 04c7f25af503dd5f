from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text

from proxy.db.engine import make_engine, make_sessionmaker, ping, reading, split_url, sqlite_path
from proxy.db.models import KeyTeam, utcnow
from proxy.errors import ConfigError


async def test_sqlite_connections_are_wal_with_busy_timeout_and_foreign_keys(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path}/usage.db")
    try:
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            }
        assert pragmas == {"journal_mode": "wal", "busy_timeout": 5000, "foreign_keys": 1}
        assert engine.url.drivername == "sqlite+aiosqlite"
        assert (tmp_path / "usage.db").exists()
    finally:
        await engine.dispose()


async def test_sqlite_writes_begin_immediate_and_reading_begins_deferred(tmp_path: Path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/usage.db")
    sm = make_sessionmaker(engine)
    begins: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def seen(conn, cursor, statement, *args):
        if statement.startswith("BEGIN"):
            begins.append(statement)

    try:
        async with sm.begin() as session:
            await session.execute(text("SELECT 1"))
        async with reading(sm) as session:
            await session.execute(text("SELECT 1"))
        assert begins == ["BEGIN IMMEDIATE", "BEGIN DEFERRED"]
    finally:
        await engine.dispose()


async def test_read_then_write_transactions_never_fail_busy(db_url: str):
    # Each transaction reads, then writes: on SQLite a deferred transaction would fail with
    # SQLITE_BUSY as soon as another writer commits in between; IMMEDIATE makes it wait.
    engines = [make_engine(db_url) for _ in range(4)]

    async def writer(n: int, sm) -> None:
        for i in range(10):
            async with sm.begin() as session:
                count = await session.scalar(select(func.count()).select_from(KeyTeam))
                session.add(
                    KeyTeam(key_fingerprint=f"{n}-{i}-{count}", team="t", created_at=utcnow())
                )

    try:
        await asyncio.gather(*(writer(n, make_sessionmaker(e)) for n, e in enumerate(engines)))
        async with engines[0].connect() as conn:
            assert (await conn.scalar(select(func.count()).select_from(KeyTeam))) == 40
    finally:
        for e in engines:
            await e.dispose()


async def test_schema_parameter_sets_the_search_path(db_url: str, db_backend: str):
    if db_backend != "postgres":
        pytest.skip("schema= is a PostgreSQL parameter")
    _, schema = split_url(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.scalar(text("SELECT current_schema()"))) == schema
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver", "schema"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite", None),
        ("postgresql://u@h/db", "postgresql+asyncpg", None),
        ("postgres://u@h/db?schema=s1", "postgresql+asyncpg", "s1"),
        ("postgresql+asyncpg://u@h/db?schema=s2&ssl=require", "postgresql+asyncpg", "s2"),
    ],
)
def test_split_url(url: str, driver: str, schema: str | None):
    parsed, got = split_url(url)
    assert (parsed.drivername, got) == (driver, schema)
    assert "schema" not in parsed.query


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "sqlite:///x.db?schema=s",
        "nosuchdb+driver://u:topsecret@h/db",
    ],
)
def test_bad_urls_are_config_errors_without_the_password(url: str):
    with pytest.raises(ConfigError) as info:
        make_engine(url)
    assert "database_url" in str(info.value)
    assert "topsecret" not in str(info.value)


def test_a_missing_folder_is_refused_not_created(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        make_engine("sqlite:///new/folder/usage.db")
    assert str(info.value) == (
        f"database_url: 'sqlite:///new/folder/usage.db' (the file {tmp_path}/new/folder/usage.db):"
        f" the folder {tmp_path}/new/folder does not exist (create it, or choose another path)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scheme", ["mysql", "mysql+aiomysql", "mssql+pyodbc", "oracle"])
def test_an_unsupported_database_names_the_supported_ones(scheme: str):
    with pytest.raises(ConfigError) as info:
        make_engine(f"{scheme}://u:topsecret@h/db")
    assert str(info.value) == (
        f"database_url: '{scheme}://u:***@h/db': {scheme.split('+')[0]} is not supported; "
        "usage-proxy records into SQLite (sqlite:///PATH) or PostgreSQL "
        "(postgresql://USER:PASSWORD@HOST:5432/DB)"
    )


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite+aiosqlite:///rel/usage.db", Path("rel/usage.db")),
        ("sqlite:////abs/usage.db", Path("/abs/usage.db")),
        ("sqlite+aiosqlite:///:memory:", None),
        ("sqlite+aiosqlite://", None),
        ("postgresql+asyncpg://u@h/db", None),
    ],
)
def test_sqlite_path(url: str, path: Path | None):
    assert sqlite_path(url) == path


async def test_ping(engine):
    assert await ping(engine)


async def test_ping_is_false_when_the_database_is_unreachable():
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    try:
        assert not await ping(engine, timeout=5)
    finally:
        await engine.dispose()


async def test_sqlite_binds_none_as_null(tmp_path: Path):
    # make_engine gives None an adapter of its own (it costs a failed attribute lookup
    # otherwise); it must still be NULL, on this engine and on plain sqlite3 connections.
    import sqlite3

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/usage.db")
    try:
        async with engine.connect() as conn:
            got = (await conn.exec_driver_sql("SELECT ? IS NULL, typeof(?)", (None, None))).one()
        assert tuple(got) == (1, "null")
    finally:
        await engine.dispose()
    with sqlite3.connect(":memory:") as plain:
        assert plain.execute("SELECT ? IS NULL", (None,)).fetchone() == (1,)
