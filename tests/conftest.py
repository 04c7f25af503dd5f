"""Database fixtures, for every test folder.

- `db_url`: a fresh database migrated to head, parametrized over backends (ids "sqlite" and
  "postgres"). SQLite: a file in tmp_path, copied from a template migrated once per session.
  PostgreSQL: a schema of its own (`?schema=` on USAGE_PROXY_TEST_POSTGRES_URL), created and
  migrated before the test and dropped with CASCADE after; skipped when the variable is unset.
  Proxy processes started by a test can be given the same URL.
- `empty_db_url`: the same, not migrated (for migration tests).
- `db_backend`: "sqlite" or "postgres", for the test's db_url.
- `engine` / `sm`: an AsyncEngine and an async_sessionmaker on db_url, disposed after the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import NullPool

from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.migrate import upgrade

PG_ENV = "USAGE_PROXY_TEST_POSTGRES_URL"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=pytest.mark.skipif(
            not os.environ.get(PG_ENV), reason=f"set {PG_ENV} to test against PostgreSQL"
        ),
    ),
]


def with_schema(url: str, schema: str) -> str:
    return make_url(url).update_query_dict({"schema": schema}).render_as_string(False)


def _pg_execute(*statements: str) -> None:
    async def run() -> None:
        engine = make_engine(os.environ[PG_ENV], poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                for sql in statements:
                    await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "usage.db"
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


def _fresh(backend: str, tmp_path: Path, *, migrate: bool, template: Path | None) -> Iterator[str]:
    if backend == "sqlite":
        path = tmp_path / "usage.db"
        if template is not None:
            shutil.copyfile(template, path)
        url = f"sqlite+aiosqlite:///{path}"
        if migrate and template is None:
            asyncio.run(upgrade(url))
        yield url
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _pg_execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = with_schema(os.environ[PG_ENV], schema)
        if migrate:
            asyncio.run(upgrade(url))
        yield url
    finally:
        # A proxy still holding a lock in the schema (a fixture torn down in the wrong order)
        # must fail this teardown, not hang the suite: leaking a schema is the lesser harm.
        try:
            _pg_execute("SET lock_timeout = '20s'", f'DROP SCHEMA "{schema}" CASCADE')
        except Exception as exc:
            warnings.warn(f"test schema {schema} left behind: {exc}", stacklevel=1)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    template = request.getfixturevalue("_sqlite_template") if request.param == "sqlite" else None
    yield from _fresh(request.param, tmp_path, migrate=True, template=template)


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from _fresh(request.param, tmp_path, migrate=False, template=None)


@pytest.fixture
def db_backend(db_url: str) -> str:
    return "postgres" if make_url(db_url).get_backend_name() == "postgresql" else "sqlite"


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sm(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
def commits(engine: AsyncEngine) -> Iterator[list[int]]:
    """One entry per transaction committed on `engine` while the test runs."""
    seen: list[int] = []

    def on_commit(conn: Any) -> None:
        seen.append(1)

    event.listen(engine.sync_engine, "commit", on_commit)
    yield seen
    event.remove(engine.sync_engine, "commit", on_commit)


@pytest.fixture
def inserts(engine: AsyncEngine) -> Iterator[list[str]]:
    """The text of every INSERT into usage_records sent on `engine` while the test runs."""
    seen: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO usage_records"):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", on_execute)
