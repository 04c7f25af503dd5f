"""What differs between the two backends for writes: the INSERT with ON CONFLICT, and
RETURNING (SQLite 3.35+)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["INSERTS", "Insert", "check_returning", "dialect_of", "insert_for"]

Insert = Callable[[Table], Any]
INSERTS: dict[str, Insert] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_SQLITE_VERSION = sqlite3.sqlite_version_info


def dialect_of(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def insert_for(session: AsyncSession, model: Any) -> Any:
    """The session's dialect's INSERT of `model`, which has on_conflict_do_*."""
    return INSERTS[dialect_of(session)](model)


def check_returning(dialect: str) -> None:
    if dialect == "sqlite" and _SQLITE_VERSION < (3, 35):
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} has no RETURNING (3.35+)")
