from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import String, func, select
from sqlalchemy.exc import StatementError

from proxy.accounting.usage import UsageRow
from proxy.db import run_usage
from proxy.db import usage as db_usage
from proxy.db.models import UsageRecord, UTCDateTime
from tests.db.rows import chat, make_row, rows


# --- record_rows (the row writer's batches) ------------------------------------------------
async def test_record_rows_inserts_every_column_and_returns_the_inserted_rows(sm):
    given = [
        chat("c1", tag="batch", project="proj_1", cached_tokens=3, code_interpreter_sessions=2),
        chat("c2", team="blue", reasoning_tokens=5, estimated_prompt_tokens=None),
        make_row("c1", kind="embedding"),  # same object_id, another kind: a row of its own
    ]
    assert await db_usage.record_rows(sm, given) == given
    stored = await rows(sm)
    assert len(stored) == 3
    for row, got in zip(given, stored, strict=True):
        for field in dataclasses.fields(UsageRow):
            assert getattr(got, field.name) == getattr(row, field.name), field.name
        assert got.recorded_at.tzinfo is not None
    assert await db_usage.record_rows(sm, []) == []


async def test_record_rows_skips_duplicates_in_the_batch_and_in_the_table(sm):
    assert await run_usage.record_usage(sm, chat("old", prompt_tokens=1))
    batch = [
        chat("new", prompt_tokens=2),
        chat("old", prompt_tokens=3),
        chat("new", prompt_tokens=4),
        chat("other", prompt_tokens=5),
    ]
    inserted = await db_usage.record_rows(sm, batch)
    assert [(r.object_id, r.prompt_tokens) for r in inserted] == [("new", 2), ("other", 5)]
    assert [(r.object_id, r.prompt_tokens) for r in await rows(sm)] == [
        ("old", 1),
        ("new", 2),
        ("other", 5),
    ]
    assert await db_usage.record_rows(sm, batch) == []
    assert len(await rows(sm)) == 3


async def test_record_rows_clips_strings_to_their_columns(sm):
    long = chat("x" * 300, model="m" * 200, tag="t" * 200, key_hint="h" * 40)
    assert await db_usage.record_rows(sm, [long]) == [long]
    [stored] = await rows(sm)
    assert (stored.object_id, stored.model) == ("x" * 255, "m" * 128)
    assert (stored.tag, stored.key_hint) == ("t" * 128, "h" * 32)
    # Clipped ids that become equal are one row, in the batch and against the table.
    assert await db_usage.record_rows(sm, [chat("x" * 256), chat("x" * 257)]) == []
    assert len(await rows(sm)) == 1


async def test_record_rows_writes_a_large_batch_in_one_call(sm):
    batch = [chat(f"c{i}") for i in range(1_500)]  # more parameters than one statement takes
    assert len(await db_usage.record_rows(sm, batch)) == 1_500
    assert len(await rows(sm)) == 1_500


async def test_record_rows_is_all_or_nothing(sm):
    naive = chat("bad", occurred_at=dt.datetime(2026, 11, 27, 10))
    with pytest.raises(StatementError):
        await db_usage.record_rows(sm, [chat("good"), naive])
    assert await rows(sm) == []


# Calls (minutes) of three runs of one thread: the fewest hour-long sessions covering all of
# them is 3 (0-60, 70-130, 200); every collection order must add up to exactly that.


async def test_recorded_names_the_objects_of_a_kind_that_have_a_row(sm):
    await db_usage.record_rows(sm, [make_row("run_1"), chat("run_2"), make_row("run_3")])
    assert await db_usage.recorded(sm, "assistant_run", ["run_1", "run_2", "run_4"]) == {"run_1"}
    assert await db_usage.recorded(sm, "chat.completion", ["run_2"]) == {"run_2"}
    assert await db_usage.recorded(sm, "assistant_run", []) == set()


def _sqlalchemy_utc_text():
    from sqlalchemy.dialects.sqlite.aiosqlite import dialect

    d = dialect()
    return UTCDateTime().dialect_impl(d).bind_processor(d)


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(2026, 11, 27, 10, 30, 15, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 27, 10, 30, 15, tzinfo=dt.UTC),  # no microseconds
        dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
        dt.datetime(1, 1, 1, 12, tzinfo=dt.UTC),
        dt.datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime.fromtimestamp(1_764_201_600, dt.UTC),
    ],
)
def test_sqlite_datetimes_bind_as_sqlalchemy_binds_them(when: dt.datetime) -> None:
    expected = _sqlalchemy_utc_text()(when)
    assert db_usage._sqlite_utc_text(when) == expected
    assert db_usage._sqlite_utc_text(when) == expected  # and from the cache
    # An equal instant in another zone is the same text.
    other = when.astimezone(dt.timezone(dt.timedelta(hours=-3))) if when.year > 1 else when
    assert db_usage._sqlite_utc_text(other) == expected


def test_sqlite_datetimes_refuse_naive_ones_as_sqlalchemy_does() -> None:
    naive = dt.datetime(2026, 11, 27, 10)
    db_usage._sqlite_utc_text(naive.replace(tzinfo=dt.UTC))  # the aware twin is cached
    for process in (_sqlalchemy_utc_text(), db_usage._sqlite_utc_text):
        with pytest.raises(ValueError, match="naive"):
            process(naive)


async def test_record_rows_stores_times_as_the_orm_does(sm) -> None:
    # Written by record_rows and by the ORM, read back as the same raw column text.
    when = dt.datetime(2026, 11, 27, 10, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    await db_usage.record_rows(sm, [chat("fast", occurred_at=when)])
    async with sm.begin() as session:
        session.add(
            UsageRecord(
                **{
                    f.name: getattr(chat("orm", occurred_at=when), f.name)
                    for f in dataclasses.fields(UsageRow)
                },
                recorded_at=when,
            )
        )
    async with sm() as session:
        result = await session.execute(
            select(UsageRecord.object_id, func.cast(UsageRecord.occurred_at, String)).order_by(
                UsageRecord.object_id
            )
        )
        stored = dict(result.all())
    assert stored["fast"] == stored["orm"]


async def test_record_rows_without_conflicts_returns_nothing_from_the_database(sm, inserts):
    # The common batch goes out once, without RETURNING (bench/README.md); a batch with a key
    # that exists is rolled back and written again with RETURNING, and its answer is the same.
    assert await db_usage.record_rows(sm, [chat("a"), chat("b")]) == [chat("a"), chat("b")]
    assert len(inserts) == 1 and "RETURNING" not in inserts[0]
    inserts.clear()
    assert await db_usage.record_rows(sm, [chat("c"), chat("a"), chat("d")]) == [
        chat("c"),
        chat("d"),
    ]
    # 3 rows go out as statements of 2 and 1: the first, without RETURNING, meets "a".
    assert ["RETURNING" in s for s in inserts] == [False, True, True]
    assert sorted(r.object_id for r in await rows(sm)) == ["a", "b", "c", "d"]
