"""Many rows in one `INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING RETURNING ...`,
handed to the driver as SQL text and one flat parameter tuple.

SQLAlchemy's executemany of a prebuilt insert costs ~45 µs of event-loop CPU per usage row
(parameter dicts, per-row type processing, re-rendering each batch), more than the proxy's
whole forwarding of the request the row is about (bench/README.md). Here a batch goes out as a
few statements whose sizes are powers of two, each rendered once and prepared once by the
database, and each row costs one tuple. Values go through the same bind
processors SQLAlchemy would apply (the column types' own, taken from the dialect), so what is
stored is exactly what the ORM stores and reads back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["BulkInsert"]

# Bound parameters per statement: SQLite's default limit (since 3.32) and asyncpg's are 32,766
# and 32,767.
_MAX_PARAMS = 32_766

_Processor = Callable[[Any], Any] | None


def _chunks(n: int, most: int) -> list[tuple[int, int]]:
    """(start, size) of statements for n rows: sizes are powers of two up to `most`, so a few
    statement texts cover every batch size. The database parses each text once and reuses it
    (SQLite's and asyncpg's statement caches); parsing a text of a new size every time cost
    more than the insert itself."""
    largest = 1 << max(0, most.bit_length() - 1)
    out, start = [], 0
    while start < n:
        size = min(largest, 1 << ((n - start).bit_length() - 1))
        out.append((start, size))
        start += size
    return out


class BulkInsert:
    """Insert-or-nothing of rows given as tuples in `columns` order; the `returning` columns of
    the rows actually inserted."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        *,
        conflict: Sequence[str],
        returning: Sequence[str],
    ) -> None:
        self._table = table
        self.columns = tuple(columns)
        self._conflict = tuple(conflict)
        self._returning = tuple(returning)
        self._sql: dict[tuple[str, int], str] = {}
        self._processors: dict[str, list[tuple[int, Callable[[Any], Any]]]] = {}

    async def run(self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        dialect = conn.dialect
        processors = self._processors.get(dialect.name)
        if processors is None:
            processors = self._processors[dialect.name] = self._bind_processors(dialect)
        out: list[Any] = []
        for start, size in _chunks(len(rows), _MAX_PARAMS // len(self.columns)):
            chunk = rows[start : start + size]
            params: list[Any] = []
            for row in chunk:
                if processors:
                    row = list(row)
                    for i, process in processors:
                        if row[i] is not None:
                            try:
                                row[i] = process(row[i])
                            except Exception as exc:
                                # What SQLAlchemy raises for a value its type refuses.
                                raise StatementError(
                                    f"{self.columns[i]}: {exc}", None, None, exc
                                ) from exc
                params.extend(row)
            result = await conn.exec_driver_sql(self._statement(dialect, len(chunk)), tuple(params))
            out.extend(result.all())
        return out

    def _bind_processors(self, dialect: Dialect) -> list[tuple[int, Callable[[Any], Any]]]:
        found = []
        for i, name in enumerate(self.columns):
            column_type = self._table.c[name].type
            process: _Processor = column_type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                found.append((i, process))
        return found

    def _statement(self, dialect: Dialect, n: int) -> str:
        key = (dialect.name, n)
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = self._render(dialect, n)
        return sql

    def _render(self, dialect: Dialect, n: int) -> str:
        quote = dialect.identifier_preparer.quote
        width = len(self.columns)
        style = dialect.paramstyle
        groups = []
        for r in range(n):
            if style == "qmark":
                marks = ["?"] * width
            elif style == "numeric_dollar":
                marks = [f"${r * width + i + 1}" for i in range(width)]
            elif style in ("format", "pyformat"):
                marks = ["%s"] * width
            else:
                raise NotImplementedError(f"paramstyle {style!r}")
            groups.append("(" + ", ".join(marks) + ")")
        return (
            f"INSERT INTO {quote(self._table.name)} "
            f"({', '.join(quote(c) for c in self.columns)}) VALUES {', '.join(groups)} "
            f"ON CONFLICT ({', '.join(quote(c) for c in self._conflict)}) DO NOTHING "
            f"RETURNING {', '.join(quote(c) for c in self._returning)}"
        )
