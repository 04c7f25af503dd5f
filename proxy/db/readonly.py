"""Run one statement against the usage database without the right to change it.

For `usage-proxy sql`: on PostgreSQL in a READ ONLY transaction, on SQLite on a connection
opened with `mode=ro`, so a statement that writes fails in the database itself rather than
by our reading of its text. Safe beside a running proxy: SQLite readers in WAL mode neither
block the writer nor see half a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import create_async_engine

from proxy.db.engine import make_engine

__all__ = ["QueryError", "run_readonly"]


class QueryError(ValueError):
    """The statement was refused or failed: a syntax error, a write, an unknown view."""


async def run_readonly(database_url: str, statement: str) -> tuple[list[str], list[Sequence[Any]]]:
    """(column names, rows) of ``statement``; QueryError with the database's one-line reason."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:" or not Path(database).exists():
            raise QueryError(f"no SQLite database at {Path(database or '.').resolve()}")
        engine = create_async_engine(
            f"sqlite+aiosqlite:///file:{Path(database).resolve()}?mode=ro&uri=true"
        )
        options: dict[str, Any] = {}
    else:
        engine = make_engine(database_url)
        options = {"postgresql_readonly": True}
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**options)
            result = await conn.execute(text(statement))
            if not result.returns_rows:
                raise QueryError("the statement returns no rows; only queries are run")
            columns = list(result.keys())
            rows = [tuple(row) for row in result.fetchall()]
            await conn.rollback()
            return columns, rows
    except (DBAPIError, StatementError) as exc:
        raise QueryError(_reason(exc)) from None
    finally:
        await engine.dispose()


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    message = str(orig).strip().splitlines()
    first = message[0] if message else type(orig).__name__
    # asyncpg's errors arrive wrapped: "<class '...'>: relation "x" does not exist".
    return first.split(">: ", 1)[-1]
