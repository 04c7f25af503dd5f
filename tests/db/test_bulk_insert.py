"""bulk_insert.py: rows through the driver, stored exactly as the ORM stores them."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

import proxy.db.bulk_insert as bulk_insert
from proxy.db.bulk_insert import BulkInsert
from proxy.db.models import UsageRecord

_COUNTS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "code_interpreter_calls",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
    "function_calls",
)
_COLUMNS = ("kind", "object_id", "occurred_at", "recorded_at", "usage_source", "cost_usd", "team")
_COLUMNS += _COUNTS
_INSERT = BulkInsert(
    UsageRecord.__table__,  # type: ignore[arg-type]
    _COLUMNS,
    conflict=("kind", "object_id"),
    returning=("kind", "object_id"),
)
WHEN = dt.datetime(2026, 11, 27, 10, 30, 15, 123456, tzinfo=dt.UTC)


def row(object_id: str, cost: str = "0.0000012345", when: dt.datetime = WHEN) -> tuple:
    counts = (0,) * len(_COUNTS)
    return ("chat.completion", object_id, when, when, "reported", Decimal(cost), "red", *counts)


async def test_values_read_back_as_the_orm_wrote_them(sm) -> None:
    # Another time zone and a cost beyond the column's scale: the same rounding and the same
    # UTC instant as an ORM insert of the same values.
    other_zone = WHEN.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    async with sm.begin() as session:
        got = await _INSERT.run(
            await session.connection(), [row("a", "0.00000000004999", other_zone)]
        )
        session.add(
            UsageRecord(
                kind="chat.completion",
                object_id="b",
                occurred_at=other_zone,
                recorded_at=other_zone,
                usage_source="reported",
                cost_usd=Decimal("0.00000000004999"),
                team="red",
                **dict.fromkeys(_COUNTS, 0),
            )
        )
    assert [tuple(r) for r in got] == [("chat.completion", "a")]
    async with sm() as session:
        stored = list(await session.scalars(select(UsageRecord).order_by(UsageRecord.object_id)))
    a, b = stored
    assert (a.occurred_at, a.recorded_at, a.cost_usd) == (b.occurred_at, b.recorded_at, b.cost_usd)
    assert a.occurred_at == WHEN and a.cost_usd == Decimal("0.0000000000")


async def test_only_new_keys_are_inserted_and_returned(sm) -> None:
    async with sm.begin() as session:
        await _INSERT.run(await session.connection(), [row("a"), row("b")])
    async with sm.begin() as session:
        got = await _INSERT.run(await session.connection(), [row("b"), row("c"), row("a")])
    assert sorted(tuple(r) for r in got) == [("chat.completion", "c")]


async def test_batches_beyond_the_parameter_limit_are_split(sm, monkeypatch) -> None:
    # 17 columns with a limit of 60 parameters: at most 3 rows, so 2 per statement, 5 in all.
    monkeypatch.setattr(bulk_insert, "_MAX_PARAMS", 60)
    async with sm.begin() as session:
        got = await _INSERT.run(await session.connection(), [row(f"r{i}") for i in range(10)])
    assert sorted(r[1] for r in got) == sorted(f"r{i}" for i in range(10))
    async with sm() as session:
        assert len(list(await session.scalars(select(UsageRecord.id)))) == 10


async def test_no_statement_holds_more_than_64_rows(sm, inserts) -> None:
    # The loop builds each statement's parameters and sqlite3 binds them holding the GIL:
    # 200 rows go out as 64 + 64 + 64 + 8, with the loop free between them.
    async with sm.begin() as session:
        got = await _INSERT.run(await session.connection(), [row(f"r{i}") for i in range(200)])
    assert len(got) == 200
    assert [s.count("), (") + 1 for s in inserts] == [64, 64, 64, 8]


async def test_a_value_the_type_refuses_raises_statement_error_and_writes_nothing(sm) -> None:
    naive = row("bad", when=dt.datetime(2026, 11, 27))
    with pytest.raises(StatementError, match="occurred_at"):
        async with sm.begin() as session:
            await _INSERT.run(await session.connection(), [row("good"), naive])
    async with sm() as session:
        assert list(await session.scalars(select(UsageRecord.id))) == []


@pytest.mark.parametrize("n", [1, 2, 3, 7, 255, 256, 257, 1000])
def test_batches_go_out_in_power_of_two_statements(n: int) -> None:
    chunks = bulk_insert._chunks(n, 300)
    assert [start for start, _ in chunks] == [
        sum(s for _, s in chunks[:i]) for i in range(len(chunks))
    ]
    assert sum(size for _, size in chunks) == n
    assert all(size & (size - 1) == 0 and size <= 256 for _, size in chunks)
    assert len(chunks) <= n.bit_length() + n // 256  # a few statement texts cover any batch


_WITH_NULLABLE = BulkInsert(
    UsageRecord.__table__,  # type: ignore[arg-type]
    (*_COLUMNS, "tag", "model"),
    conflict=("kind", "object_id"),
    returning=("kind", "object_id"),
)


async def test_columns_none_in_every_row_are_left_out_and_stored_null(sm) -> None:
    def tagged(object_id: str, tag: str | None, model: str | None = None) -> tuple:
        return (*row(object_id), tag, model)

    async with sm.begin() as session:
        conn = await session.connection()
        await _WITH_NULLABLE.run(conn, [tagged("a", None), tagged("b", None)])
        await _WITH_NULLABLE.run(conn, [tagged("c", "t1"), tagged("d", None, "m")])
    async with sm() as session:
        stored = await session.execute(
            select(UsageRecord.object_id, UsageRecord.tag, UsageRecord.model).order_by(
                UsageRecord.object_id
            )
        )
        assert [tuple(r) for r in stored] == [
            ("a", None, None),
            ("b", None, None),
            ("c", "t1", None),
            ("d", None, "m"),
        ]
    # One statement text per size and set of columns left out.
    assert {(size, absent) for _, size, absent, _ in _WITH_NULLABLE._sql} == {
        (2, (len(_COLUMNS), len(_COLUMNS) + 1)),
        (2, ()),
    }


# --- without RETURNING -----------------------------------------------------------------------


async def test_without_returning_every_row_is_inserted_and_its_key_given_back(sm, inserts) -> None:
    async with sm.begin() as session:
        got = await _INSERT.run(
            await session.connection(), [row("a"), row("b"), row("c")], returning=False
        )
    assert got == [("chat.completion", "a"), ("chat.completion", "b"), ("chat.completion", "c")]
    assert inserts and not any("RETURNING" in s for s in inserts)
    async with sm() as session:
        assert len(list(await session.scalars(select(UsageRecord.id)))) == 3


async def test_without_returning_an_existing_key_raises_conflicted(sm, monkeypatch) -> None:
    async with sm.begin() as session:
        await _INSERT.run(await session.connection(), [row("r7")])
    # 2 rows per statement: the conflict is in the last of several statements.
    monkeypatch.setattr(bulk_insert, "_MAX_PARAMS", 60)
    with pytest.raises(bulk_insert.Conflicted, match="1 of 2 rows exist"):
        async with sm.begin() as session:
            await _INSERT.run(
                await session.connection(), [row(f"r{i}") for i in range(8)], returning=False
            )
    async with sm() as session:  # rolled back by the caller: only the first row is there
        assert list(await session.scalars(select(UsageRecord.object_id))) == ["r7"]


def test_without_returning_needs_the_returning_columns_among_the_columns() -> None:
    insert = BulkInsert(
        UsageRecord.__table__,  # type: ignore[arg-type]
        _COLUMNS,
        conflict=("kind", "object_id"),
        returning=("id",),
    )
    with pytest.raises(ValueError, match="returning columns"):
        asyncio.run(insert.run(None, [row("a")], returning=False))  # type: ignore[arg-type]
