from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text

from proxy.db import alerts, migrate
from proxy.db import budgets as db_budgets
from proxy.db.engine import make_engine, make_sessionmaker, split_url
from proxy.db.models import Base
from proxy.errors import ConfigError
from proxy.reconcile.schedule import _residual_alert

ROOT = Path(__file__).resolve().parents[2]


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_to_head(empty_db_url: str):
    assert await migrate.current(empty_db_url) is None
    await migrate.upgrade(empty_db_url)
    assert await migrate.current(empty_db_url) == migrate.head()
    assert await _tables(empty_db_url) == set(Base.metadata.tables) | {"alembic_version"}
    await migrate.upgrade(empty_db_url)  # a second run has nothing to do
    await migrate.require_head(empty_db_url)


async def test_postgres_tables_and_version_live_in_the_url_schema(empty_db_url: str):
    parsed, schema = split_url(empty_db_url)
    if schema is None:
        pytest.skip("PostgreSQL only")
    await migrate.upgrade(empty_db_url)
    engine = make_engine(parsed.render_as_string(False))
    try:
        async with engine.connect() as conn:
            in_schema = await conn.run_sync(lambda c: inspect(c).get_table_names(schema=schema))
            in_public = await conn.run_sync(lambda c: inspect(c).get_table_names(schema="public"))
    finally:
        await engine.dispose()
    assert "alembic_version" in in_schema and "usage_records" in in_schema
    assert not {"alembic_version", "usage_records"} & set(in_public)


async def test_alembic_check_finds_nothing_to_do(db_url: str):
    await migrate.check(db_url)


async def test_alembic_check_fails_on_an_unmigrated_database(empty_db_url: str):
    with pytest.raises(CommandError):
        await migrate.check(empty_db_url)


async def test_concurrent_upgrades_both_succeed(empty_db_url: str):
    await asyncio.gather(migrate.upgrade(empty_db_url), migrate.upgrade(empty_db_url))
    assert await migrate.current(empty_db_url) == migrate.head()


async def test_require_head_explains_what_is_missing(empty_db_url: str, tmp_path: Path):
    assert await migrate.current(empty_db_url) is None  # connects: SQLite creates the file
    with pytest.raises(ConfigError, match="not migrated"):
        await migrate.require_head(empty_db_url)
    missing = tmp_path / "nowhere" / "usage.db"
    with pytest.raises(ConfigError, match="does not exist"):
        await migrate.require_head(f"sqlite+aiosqlite:///{missing}")
    assert not missing.parent.exists()


async def test_percent_in_the_url_survives_the_alembic_config(tmp_path: Path):
    (tmp_path / "100%").mkdir()
    url = f"sqlite+aiosqlite:///{tmp_path}/100%25/usage.db"
    await migrate.upgrade(url)
    assert await migrate.current(url) == migrate.head()


def test_developer_alembic_check_from_the_repository_root(db_url: str):
    env = {**os.environ, "USAGE_PROXY_DATABASE_URL": db_url}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No new upgrade operations detected" in done.stdout


async def test_a_missing_sqlite_file_is_named_by_its_absolute_path(tmp_path: Path, monkeypatch):
    """A relative path depends on the folder a command runs in: the message says which file
    was looked for, and that migrating would start an empty database."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        await migrate.require_head("sqlite+aiosqlite:///usage.db")
    assert str(info.value) == (
        f"database_url: 'sqlite+aiosqlite:///usage.db' (the file {tmp_path}/usage.db) does not "
        "exist (is this the proxy's database URL? `usage-proxy migrate` creates a new, empty one)"
    )


async def test_a_missing_postgresql_database_says_how_to_create_it():
    base = os.environ.get("USAGE_PROXY_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("USAGE_PROXY_TEST_POSTGRES_URL is not set")
    parsed, _ = split_url(base)
    name = f"usage_proxy_missing_{os.getpid()}"
    url = parsed.set(database=name).render_as_string(hide_password=False)
    host, port = parsed.host, parsed.port or 5432
    for attempt in (migrate.upgrade, migrate.require_head):
        with pytest.raises(ConfigError) as info:
            await attempt(url)
        assert f"the database '{name}' does not exist on {host}:{port}" in str(info.value)
        assert f"createdb -h {host} -p {port} -U {parsed.username} {name}" in str(info.value)
        assert f'CREATE DATABASE "{name}";' in str(info.value)


async def test_jobs_waiting_before_0005_become_assistants_jobs(empty_db_url: str):
    await migrate.upgrade(empty_db_url, "0004")
    engine = make_engine(empty_db_url)
    waiting = {
        "run_id": "run_1",
        "thread_id": "thread_1",
        "api_prefix": "/v1",
        "api_query": "",
        "run_json": '{"id": "run_1"}',
        "has_reported_usage": False,
        "attempts": 0,
    }
    columns = ", ".join(waiting)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO collection_jobs ({columns}, created_at, next_attempt_at) "
                    f"VALUES (:{', :'.join(waiting)}, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                waiting,
            )
        await migrate.upgrade(empty_db_url)
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT source, object_id, thread_id, object_json FROM collection_jobs")
                )
            ).one()
    finally:
        await engine.dispose()
    assert tuple(row) == ("assistants.run", "run_1", "thread_1", '{"id": "run_1"}')


def _at(minute: int) -> dt.datetime:
    return dt.datetime(2026, 12, 1, 10, minute, tzinfo=dt.UTC)


_ALERT_STATE = {
    "payload": '{"text": "x"}',
    "created_at": _at(0),
    "attempts": 2,
    "next_attempt_at": _at(5),
    "last_error": "HTTP 500",
    "claimed_by": "host:1:w",
    "claimed_until": _at(6),
    "sent_at": None,
}
_WHEN = {"created_at", "next_attempt_at", "claimed_until", "sent_at"}


async def _rows(engine, sql: str) -> list[tuple]:
    async with engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(text(sql))]


async def test_budget_alerts_move_to_the_alerts_outbox_and_back(empty_db_url: str):
    """0015 carries each budget_alerts row, with its state, into `alerts` under the identity
    the code now gives it (so nothing is queued, or sent, twice), and its downgrade back."""
    await migrate.upgrade(empty_db_url, "0015-1")
    engine = make_engine(empty_db_url)
    old = [
        (7, "2026-12-01", "threshold", 80, {**_ALERT_STATE}),
        (7, "2026-12-01", "forecast", 0, {**_ALERT_STATE, "sent_at": _at(1)}),
        (0, "2026-11-30", "residual", 0, {**_ALERT_STATE, "attempts": 0, "last_error": None}),
    ]
    identity = ("budget_id", "period_start", "kind", "threshold")
    names = ", ".join((*identity, *_ALERT_STATE))
    columns = [
        sa.column(n, sa.DateTime(timezone=True)) if n in _WHEN else sa.column(n)
        for n in (*identity, *_ALERT_STATE)
    ]
    select_old = f"SELECT {names} FROM budget_alerts ORDER BY id"
    try:
        insert = sa.insert(sa.table("budget_alerts", *columns))
        async with engine.begin() as conn:
            for *key, state in old:
                await conn.execute(insert, {**dict(zip(identity, key, strict=True)), **state})
        before = await _rows(engine, select_old)

        await migrate.upgrade(empty_db_url)
        state = ", ".join(_ALERT_STATE)
        moved = await _rows(engine, f"SELECT source, dedup_key, {state} FROM alerts ORDER BY id")
        assert [row[:2] for row in moved] == [
            ("budget", db_budgets.alert_key(7, "2026-12-01", "threshold", 80)),
            ("budget", db_budgets.alert_key(7, "2026-12-01", "forecast", 0)),
            ("reconcile", "residual/2026-11-30"),
        ]
        assert [row[2:] for row in moved] == [row[4:] for row in before]
        assert "budget_alerts" not in await _tables(empty_db_url)
        # The code's identities of the same alerts are there already: none is queued again.
        sm = make_sessionmaker(engine)
        again = [
            db_budgets.BudgetAlert(7, "2026-12-01", "threshold", 80, "{}"),
            db_budgets.BudgetAlert(7, "2026-12-01", "forecast", 0, "{}"),
            _residual_alert("2026-11-30", []),
        ]
        assert await alerts.add_alerts(sm, again) == 0

        await migrate.downgrade(empty_db_url, "0015-1")
        assert "alerts" not in await _tables(empty_db_url)
        assert await _rows(engine, select_old) == before
    finally:
        await engine.dispose()


async def test_create_and_run_intents_go_on_the_way_down(empty_db_url: str):
    """0016 lets an intent have no thread (a create-and-run's); its downgrade drops those, and
    the intents on a thread stay, as they were."""
    await migrate.upgrade(empty_db_url, "0016")
    engine = make_engine(empty_db_url)
    names = "thread_id, api_prefix, api_query, worker, created_at"
    insert = sa.insert(
        sa.table(
            "run_intents",
            *(sa.column(n) for n in names.split(", ")[:-1]),
            sa.column("assistant_id"),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
    )
    try:
        async with engine.begin() as conn:
            for thread in ("thread_1", None):
                values = {"thread_id": thread, "api_prefix": "/v1", "api_query": ""}
                values |= {"worker": "h:1:w", "assistant_id": "asst_1", "created_at": _at(0)}
                await conn.execute(insert, values)
        await migrate.downgrade(empty_db_url, "0014")
        assert await _rows(engine, "SELECT thread_id FROM run_intents") == [("thread_1",)]
        async with engine.connect() as conn:
            columns = await conn.run_sync(lambda c: inspect(c).get_columns("run_intents"))
        by_name = {c["name"]: c for c in columns}
        assert "assistant_id" not in by_name and "unseen_at" not in by_name
        assert by_name["thread_id"]["nullable"] is False
        await migrate.upgrade(empty_db_url)
        await migrate.check(empty_db_url)
    finally:
        await engine.dispose()
