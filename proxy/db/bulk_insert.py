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

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["BulkInsert", "Conflicted"]

# Bound parameters per statement: SQLite's default limit (since 3.32) and asyncpg's are 32,766
# and 32,767.
_MAX_PARAMS = 32_766

_Processor = Callable[[Any], Any] | None
_MAX_TEXTS = 256
# Rows per statement at most. A statement's parameters are built on the event loop (0.32 ms
# for 256 rows) and sqlite3 binds them in the driver's thread holding the GIL, and every
# request arriving meanwhile waits: with 256-row statements the proxy's p99 latency at one
# connection was 1.1-1.4 ms against bare aiohttp's 0.4-0.7 (bench/README.md). 64 rows hold
# the loop ~0.15 ms at a time, and it serves requests while each statement runs.
_MOST_ROWS = 64


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


def _getter(indices: Sequence[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """The values at `indices` of a row, always as a tuple (itemgetter of one index is not)."""
    if len(indices) == 1:
        at = indices[0]
        return lambda row: (row[at],)
    return itemgetter(*indices)


class Conflicted(Exception):
    """A row of an insert without RETURNING was not inserted: its key exists. Which rows were
    is not known; the caller rolls back and inserts again with RETURNING."""


class _Shape(NamedTuple):
    """How a chunk with a given set of all-NULL columns goes out: the columns sent, a getter
    of their values from a row, and the bind processors by position among them."""

    columns: tuple[str, ...]
    values: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]


class BulkInsert:
    """Insert-or-nothing of rows given as tuples in `columns` order; the `returning` columns of
    the rows actually inserted.

    A nullable column without a server default that is None in every row of a statement is
    left out of it: the database stores NULL all the same, and binding a NULL per row cost
    more than any other value (sqlite3 looks None up as a value to adapt). A chat
    completion's row has a dozen such columns. The statement texts stay few: one per size and
    set of columns left out, and a kind of row leaves out the same ones."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        *,
        conflict: Sequence[str],
        returning: Sequence[str],
        processors: Mapping[str, Mapping[str, Callable[[Any], Any]]] | None = None,
    ) -> None:
        """`processors`: dialect name -> column -> a bind processor to use instead of the
        column type's own, for a type whose own is slow. It must return exactly what the
        type's own returns, and raise where it raises (the caller's tests compare them)."""
        self._table = table
        self.columns = tuple(columns)
        self._conflict = tuple(conflict)
        self._returning = tuple(returning)
        self._overrides = processors or {}
        self._omissible = tuple(
            (i, itemgetter(i))
            for i, name in enumerate(self.columns)
            if table.c[name].nullable and table.c[name].server_default is None
        )
        self._sql: dict[tuple[str, int, tuple[int, ...], bool], str] = {}
        at = [self.columns.index(c) for c in self._returning if c in self.columns]
        self._keys = _getter(at) if at and len(at) == len(self._returning) else None
        self._shapes: dict[tuple[str, tuple[int, ...]], _Shape] = {}

    async def run(
        self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]], *, returning: bool = True
    ) -> list[Any]:
        """The `returning` columns of the rows inserted. With returning=False the statements
        go out without RETURNING and every row must be inserted: `Conflicted` is raised as soon
        as one is not, and the caller rolls back and runs again with returning=True. The rows'
        own values are given back then: the `returning` columns must be among `columns`, with
        values the database stores unchanged (the caller clips strings first).

        RETURNING on SQLite costs a step of the statement per row returned, and sqlite3 lets
        go of the GIL around every step: the driver's thread and the event loop passed the GIL
        back and forth hundreds of times per batch, which cost the serving process half of
        what writing its rows costs (bench/README.md). A conflict is rare (a batch written
        again after a lost commit, a response fetched twice), so it pays for both tries."""
        if not returning and self._keys is None:
            raise ValueError("returning=False needs the returning columns among the columns")
        dialect = conn.dialect
        out: list[Any] = []
        most = min(_MOST_ROWS, _MAX_PARAMS // len(self.columns))
        for start, size in _chunks(len(rows), most):
            chunk = rows[start : start + size]
            absent = tuple(
                i for i, get in self._omissible if list(map(get, chunk)).count(None) == size
            )
            shape = self._shapes.get((dialect.name, absent))
            if shape is None:
                shape = self._shapes[(dialect.name, absent)] = self._shape(dialect, absent)
            params = self._params(chunk, shape)
            text_key = (dialect.name, size, absent, returning)
            sql = self._sql.get(text_key)
            if sql is None:
                if len(self._sql) >= _MAX_TEXTS:
                    self._sql.clear()  # odd mixes of columns must not grow it without bound
                sql = self._sql[text_key] = self._render(dialect, size, shape.columns, returning)
            result = await conn.exec_driver_sql(sql, params)
            if returning:
                out.extend(result.all())
            elif result.rowcount != size:
                raise Conflicted(f"{size - result.rowcount} of {size} rows exist")
        if not returning:
            assert self._keys is not None
            out = list(map(self._keys, rows))
        return out

    def _params(self, rows: Sequence[tuple[Any, ...]], shape: _Shape) -> tuple[Any, ...]:
        params: list[Any] = []
        get = shape.values
        processors = shape.processors
        if not processors:
            for row in rows:
                params += get(row)
            return tuple(params)
        # A value repeated from the row before (the batch's recorded_at, a shared timestamp)
        # is processed once: the same object gives the same result.
        last: list[Any] = [None] * len(processors)
        done: list[Any] = [None] * len(processors)
        i = 0
        try:
            for row in rows:
                values = list(get(row))
                for n, (i, process) in enumerate(processors):
                    value = values[i]
                    if value is None:
                        continue
                    if value is last[n]:
                        values[i] = done[n]
                    else:
                        last[n] = value
                        values[i] = done[n] = process(value)
                params += values
        except Exception as exc:
            # What SQLAlchemy raises for a value its type refuses.
            raise StatementError(f"{shape.columns[i]}: {exc}", None, None, exc) from exc
        return tuple(params)

    def _shape(self, dialect: Dialect, absent: tuple[int, ...]) -> _Shape:
        kept = [i for i in range(len(self.columns)) if i not in absent]
        columns = tuple(self.columns[i] for i in kept)
        overrides = self._overrides.get(dialect.name, {})
        processors = []
        for at, name in enumerate(columns):
            process: _Processor = overrides.get(name)
            if process is None:
                column_type = self._table.c[name].type
                process = column_type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.append((at, process))
        return _Shape(columns, _getter(kept), tuple(processors))

    def _render(self, dialect: Dialect, n: int, columns: Sequence[str], returning: bool) -> str:
        quote = dialect.identifier_preparer.quote
        width = len(columns)
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
        sql = (
            f"INSERT INTO {quote(self._table.name)} "
            f"({', '.join(quote(c) for c in columns)}) VALUES {', '.join(groups)} "
            f"ON CONFLICT ({', '.join(quote(c) for c in self._conflict)}) DO NOTHING"
        )
        if returning:
            sql += f" RETURNING {', '.join(quote(c) for c in self._returning)}"
        return sql
