"""The daily rollup equals what the usage rows sum to, after every kind of write, on both
backends; and the reports read from it give exactly what the rows give."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from decimal import Decimal

import pytest
from sqlalchemy import delete, text

from proxy.db import queries, rollup
from proxy.db.billing import delete_adjustments, write_adjustments
from proxy.db.migrate import upgrade
from proxy.db.models import UsageRollup
from proxy.db.reassign import reassign
from proxy.db.rollup_query import covered, regroup, report_groups, rollup_groups
from proxy.db.run_usage import RunUsage, record_usage_many
from proxy.db.unpriced import set_costs
from proxy.db.usage import record_rows
from proxy.reports.render import render
from tests.db.rows import chat, make_row

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))


def _when(*args: int, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)


def _chats() -> list:
    """Rows across a month boundary, zones, NULL dimensions and unpriced events."""
    out = []
    teams = ("red", "blue", "green")
    models = ("gpt-4o", "gpt-4o-mini", None)
    tags = ("ci", None)
    for n in range(36):
        out.append(
            chat(
                f"c{n}",
                occurred_at=_when(2026, 10, 31, 22, 30, tz=PLUS2) + dt.timedelta(hours=7 * n),
                team=teams[n % 3],
                model=models[n % 3],
                tag=tags[n % 2],
                key_fingerprint=None if n % 5 == 0 else f"fp{n % 4}",
                key_hint=None if n % 5 == 0 else f"sk-...{n % 4}",
                assistant_id=f"asst_{n % 2}" if n % 3 else None,
                prompt_tokens=100 + n,
                completion_tokens=n,
                total_tokens=100 + 2 * n,
                cached_tokens=n // 2,
                cost_usd=None if n % 7 == 0 else Decimal("0.0000000001") * (n + 1) * 12345,
            )
        )
    return out


async def _check(sm) -> None:
    async with sm() as session:
        stored = await rollup.stored_cells(session)
        expected = await rollup.expected_cells(session)

    def keyed(cells):
        return {
            tuple(c[d] for d in rollup.DIMENSIONS): tuple(c[m] for m in rollup.MEASURES)
            for c in cells
        }

    assert keyed(stored) == keyed(expected)
    assert stored, "the rollup is empty"


@pytest.fixture
async def seeded(sm):
    rows = _chats()
    assert len(await record_rows(sm, rows[:20])) == 20
    # Half of these exist already: the second, RETURNING transaction adds only the new ones.
    assert len(await record_rows(sm, rows[10:])) == 16
    runs = [
        RunUsage(
            make_row(f"run{n}", occurred_at=_when(2026, 11, 2, n), cost_usd=Decimal("0.5")),
            call_times=[_when(2026, 11, 2, n, 5)],
            session_price=Decimal("0.03") if n else None,
        )
        for n in range(3)
    ]
    assert all(await record_usage_many(sm, runs))
    assert await record_usage_many(sm, runs[:1]) == [None]
    return sm


async def test_every_insert_path_keeps_the_rollup_equal_to_the_rows(seeded):
    await _check(seeded)


async def test_reassign_reprice_and_true_up_keep_it_equal(seeded):
    sm = seeded
    moved = await reassign(sm, "fingerprint", "fp1", "purple", since=_when(2026, 11, 3))
    assert moved.rows > 0
    await _check(sm)
    moved = await reassign(sm, "from_team", "purple", "red")
    await _check(sm)
    async with sm.begin() as session:
        ids = [r[0] for r in await session.execute(text("SELECT id FROM usage_records"))]
        await set_costs(session, [(i, Decimal("0.25") * (i % 3)) for i in ids[::2]])
    await _check(sm)
    rows = [
        {"day": "2026-11-02", "project": "p1", "team": "red", "amount": Decimal("1.5")},
        {"day": "2026-11-05", "project": None, "team": "brown", "amount": Decimal("-0.2")},
    ]
    assert await write_adjustments(sm, "2026-11", rows) is not None
    await _check(sm)
    assert await delete_adjustments(sm, "2026-11") == 2
    await _check(sm)
    async with sm() as session:
        teams = {c["team"] for c in await rollup.stored_cells(session)}
        months = {c["day"] for c in await rollup.stored_cells(session) if len(c["day"]) == 7}
    assert months == {"2026-10", "2026-11"}
    assert "brown" not in teams and "purple" not in teams, "emptied cells must go"


async def test_concurrent_batches_lose_no_increment(sm, db_backend):
    batches = [
        [chat(f"b{b}-{n}", occurred_at=_when(2026, 11, 1, 12), team="red") for n in range(5)]
        for b in range(8)
    ]
    await asyncio.gather(*(record_rows(sm, batch) for batch in batches))
    async with sm() as session:
        day, month = await rollup.stored_cells(session)  # one daily cell, one monthly
    for cell in (day, month):
        assert cell["events"] == 40 and cell["prompt_tokens"] == 40 * 100
    assert (day["day"], month["month"]) == ("2026-11-01", "2026-11")
    await _check(sm)


async def test_rebuild_repairs_all_days_or_those_since(seeded):
    sm = seeded
    async with sm.begin() as session:
        await session.execute(delete(UsageRollup).where(UsageRollup.day >= "2026-11-05"))
        await session.execute(text("UPDATE usage_rollup SET events = events + 1"))
    async with sm.begin() as session:
        await rollup.rebuild(session, dt.date(2026, 11, 5))
    with pytest.raises(AssertionError):
        await _check(sm)  # the days before were not touched
    async with sm.begin() as session:
        cells = await rollup.rebuild(session)
    assert cells > 10
    await _check(sm)


async def test_the_migration_backfills_rows_recorded_before_it(empty_db_url: str):
    from proxy.db.engine import make_engine, make_sessionmaker

    await upgrade(empty_db_url, "0012")  # the revision before 0011
    engine = make_engine(empty_db_url)
    try:
        sm = make_sessionmaker(engine)
        async with sm.begin() as session:
            # The models know usage_rollup, which 0012 has not: write the rows by hand.
            from proxy.db.usage import ROWS, _row_values

            conn = await session.connection()
            now = dt.datetime.now(UTC)
            await ROWS.run(conn, [_row_values(r, now) for r in _chats()], returning=False)
        await upgrade(empty_db_url)
        await _check(sm)
    finally:
        await engine.dispose()


GROUPINGS = [
    (),
    ("team",),
    ("day",),
    ("month", "team"),
    ("key",),
    ("assistant",),
    ("model", "kind"),
    ("tag", "team", "day"),
    ("team", "key", "assistant", "model", "kind", "tag", "day"),
]
BOUNDS = [
    (None, None),
    (_when(2026, 11, 1), _when(2026, 12, 1)),
    (_when(2026, 11, 3), None),
    (_when(2027, 1, 1), None),  # nothing
]
FILTERS = [{}, {"team": "red"}, {"model": "gpt-4o"}, {"kind": "chat.completion", "team": "blue"}]


async def test_reports_from_the_rollup_equal_reports_from_the_rows(seeded):
    sm = seeded
    await reassign(sm, "fingerprint", "fp2", "blue")
    from proxy.db.assistant_names import remember_names

    await remember_names(sm, {"asst_1": "Helper"})
    compared = 0
    for group_by, (since, until), filters in itertools.product(GROUPINGS, BOUNDS, FILTERS):
        assert covered(group_by, since, until, filters)
        want = await queries.usage_groups(sm, group_by, since, until, **filters)
        got = await rollup_groups(sm, group_by, since, until, **filters)
        columns = list(want[0]) if want else []
        # Compared as rendered text too: Decimal('0.5') and Decimal('0.5000000000') are equal
        # but print differently.
        assert got == want, (group_by, since, filters)
        assert render(got, columns, "csv") == render(want, columns, "csv")
        assert [list(r) for r in got] == [list(r) for r in want]
        compared += bool(want)
    assert compared > 50


@pytest.mark.parametrize(
    ("group_by", "since", "filters"),
    [
        (("project",), None, {}),
        (("conversation",), None, {}),
        (("team",), _when(2026, 11, 1, 6), {}),
        (("team",), None, {"project": "p"}),
        (("team",), None, {"model": ""}),
    ],
)
async def test_questions_the_rollup_cannot_answer_go_to_the_rows(sm, group_by, since, filters):
    assert not covered(group_by, since, None, filters)
    with pytest.raises(ValueError):
        await rollup_groups(sm, group_by, since, None, **filters)
    assert await report_groups(sm, group_by, since, None, **filters) == await queries.usage_groups(
        sm, group_by, since, None, **filters
    )


@pytest.mark.parametrize(
    ("fine", "coarse"),
    [
        (("day", "team"), ()),
        (("day", "team"), ("team",)),
        (("day", "team"), ("day",)),
        (("key", "assistant", "model", "tag"), ("key",)),
        (("key", "assistant", "model", "tag"), ("assistant",)),
        (("key", "assistant", "model", "kind", "tag"), ("tag",)),
    ],
)
async def test_regrouped_rows_equal_the_report_of_the_coarser_grouping(seeded, fine, coarse):
    sm = seeded
    from proxy.db.assistant_names import remember_names

    await remember_names(sm, {"asst_1": "Helper"})
    for since, until in BOUNDS[:2]:
        for filters in FILTERS[:2]:
            rows = await report_groups(sm, fine, since, until, **filters)
            got = regroup(rows, coarse)
            want = await queries.usage_groups(sm, coarse, since, until, **filters)

            def key(row):
                return [str(v) for v in row.values()]

            assert sorted(map(key, got)) == sorted(map(key, want)), (fine, coarse, since, filters)
            assert sorted(got, key=key) == sorted(want, key=key)
