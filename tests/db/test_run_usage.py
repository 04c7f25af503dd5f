from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import event, select, text

from proxy.accounting.usage import UsageRow
from proxy.db import run_usage
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.models import ThreadSession, UsageRecord
from tests.db.rows import PRICE, at, chat, make_row, rows, thread
from tests.waiting import wait_until


async def test_record_usage_inserts_once_with_every_column(sm):
    row = make_row(tag="batch", project="proj_1", cached_tokens=3, function_calls=2)
    assert await run_usage.record_usage(sm, row)
    assert not await run_usage.record_usage(sm, dataclasses.replace(row, prompt_tokens=1))
    [stored] = await rows(sm)
    for field in dataclasses.fields(UsageRow):
        assert getattr(stored, field.name) == getattr(row, field.name), field.name
    assert stored.cost_usd == Decimal("0.0012345678")
    assert stored.recorded_at.tzinfo is not None


async def test_concurrent_records_of_one_run_count_it_and_its_sessions_once(db_url: str, sm):
    engines = [make_engine(db_url) for _ in range(4)]
    row = make_row(code_interpreter_calls=2)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_usage.record_usage(
                        make_sessionmaker(engines[i % 4]),
                        row,
                        code_interpreter_call_times=[at(0), at(61)],
                        session_price=PRICE,
                    )
                    for i in range(20)
                )
            ),
            timeout=60,
        )
    finally:
        for engine in engines:
            await engine.dispose()
    assert results.count(True) == 1
    [stored] = await rows(sm)
    assert stored.code_interpreter_sessions == 2
    assert stored.cost_usd == Decimal("0.0012345678") + 2 * PRICE
    state = await thread(sm)
    assert (state.sessions, state.session_started_at) == (2, at(61))


async def test_concurrent_runs_in_one_thread_share_its_session(sm):
    # Ten runs whose calls all fall in one hour, recorded at once in any order: one session.
    results = await asyncio.gather(
        *(
            run_usage.record_usage(
                sm,
                make_row(f"run_{i}"),
                code_interpreter_call_times=[at(5 * i)],
                session_price=PRICE,
            )
            for i in range(10)
        )
    )
    assert all(results)
    stored = await rows(sm)
    assert sum(r.code_interpreter_sessions for r in stored) == 1
    assert sum(r.cost_usd for r in stored) == 10 * Decimal("0.0012345678") + PRICE
    assert (await thread(sm)).sessions == 1


async def test_a_session_lasts_one_hour_from_its_first_call_across_runs(sm):
    runs = [
        ("run_1", [at(0), at(30)], 1),  # opens the session at 10:00
        ("run_2", [at(59.99)], 0),  # still inside it
        ("run_3", [at(60)], 1),  # at start + 1h: a new session, from 11:00
        ("run_4", [at(90), at(130), at(119)], 1),  # 11:30 and 11:59 inside; 12:10 opens one
        ("run_5", [at(20)], 0),  # collected out of order: before the current session
    ]
    for run_id, times, expected in runs:
        assert await run_usage.record_usage(
            sm, make_row(run_id), code_interpreter_call_times=times, session_price=PRICE
        )
        [stored] = [r for r in await rows(sm) if r.object_id == run_id]
        assert stored.code_interpreter_sessions == expected, run_id
        assert stored.cost_usd == Decimal("0.0012345678") + expected * PRICE, run_id
    state = await thread(sm)
    assert (state.sessions, state.session_started_at) == (3, at(130))


async def test_threads_have_separate_sessions(sm):
    for thread_id in ("thread_a", "thread_b"):
        await run_usage.record_usage(
            sm,
            make_row(f"run_{thread_id}", thread_id=thread_id),
            code_interpreter_call_times=[at(0)],
        )
    assert [r.code_interpreter_sessions for r in await rows(sm)] == [1, 1]


async def test_without_call_times_sessions_are_stored_as_given(sm):
    row = make_row(kind="response", object_id="resp_1", thread_id=None, code_interpreter_sessions=2)
    assert await run_usage.record_usage(sm, row, session_price=PRICE)
    [stored] = await rows(sm)
    assert stored.code_interpreter_sessions == 2
    assert stored.cost_usd == Decimal("0.0012345678") + 2 * PRICE
    assert await thread(sm) is None


async def test_a_duplicate_leaves_the_thread_sessions_untouched(sm):
    await run_usage.record_usage(sm, make_row("run_1"), code_interpreter_call_times=[at(0)])
    again = await run_usage.record_usage(
        sm, make_row("run_1"), code_interpreter_call_times=[at(90)]
    )
    assert not again
    state = await thread(sm)
    assert (state.sessions, state.session_started_at) == (1, at(0))


async def test_naive_call_times_are_refused(sm):
    with pytest.raises(ValueError, match="naive"):
        await run_usage.record_usage(
            sm, make_row(), code_interpreter_call_times=[dt.datetime(2026, 11, 27, 10)]
        )
    assert await rows(sm) == []


_RUN_CALLS = {"run_a": [0, 30], "run_b": [70, 125], "run_c": [200]}


@pytest.mark.parametrize(
    "order",
    [
        ("run_a", "run_b", "run_c"),
        ("run_c", "run_b", "run_a"),
        ("run_b", "run_a", "run_c"),
        ("run_c", "run_a", "run_b"),
    ],
)
async def test_sessions_are_exact_in_any_order_of_collection(sm, order) -> None:
    shares = {}
    for run_id in order:
        times = [at(m) for m in _RUN_CALLS[run_id]]
        assert await run_usage.record_usage(sm, make_row(run_id), code_interpreter_call_times=times)
        async with sm() as session:
            shares[run_id] = await session.scalar(
                select(UsageRecord.code_interpreter_sessions).where(UsageRecord.object_id == run_id)
            )
    assert all(share >= 0 for share in shares.values()), shares
    assert sum(shares.values()) == 3, shares
    async with sm() as session:
        state = await session.get(ThreadSession, "thread_1")
    assert state is not None and state.sessions == 3


# --- record_usage_many (the collector's batches) ---------------------------------------------
def run_item(run_id: str, minutes: list[float], thread_id: str = "thread_1") -> run_usage.RunUsage:
    row = make_row(run_id, thread_id=thread_id, code_interpreter_calls=len(minutes))
    return run_usage.RunUsage(row, [at(m) for m in minutes], PRICE)


async def shares(sm) -> dict[str, int]:
    return {r.object_id: r.code_interpreter_sessions for r in await rows(sm)}


async def test_record_usage_many_counts_a_threads_sessions_exactly_in_one_batch(sm):
    batch = [run_item(run_id, _RUN_CALLS[run_id]) for run_id in ("run_c", "run_a", "run_b")]
    batch.append(run_item("run_x", [0, 90], thread_id="thread_2"))
    batch.append(run_usage.RunUsage(chat("chat_1", code_interpreter_sessions=1), (), PRICE))
    returned = await run_usage.record_usage_many(sm, batch)
    assert all(returned)
    got = await shares(sm)
    assert sum(got[r] for r in _RUN_CALLS) == 3
    assert all(got[r] >= 0 for r in _RUN_CALLS)
    assert (got["run_x"], got["chat_1"]) == (2, 1)  # as given, without call times
    for stored in await rows(sm):
        sessions = stored.code_interpreter_sessions
        assert stored.cost_usd == Decimal("0.0012345678") + sessions * PRICE, stored.object_id
    # What the call returns is what was stored: the cost with the sessions, for UsageRecorded.
    by_id = {item.row.object_id: s for item, s in zip(batch, returned, strict=True)}
    for row in await rows(sm):
        assert by_id[row.object_id] == run_usage.Stored(
            row.code_interpreter_sessions, row.cost_usd
        ), row.object_id
    assert ((await thread(sm)).sessions, (await thread(sm, "thread_2")).sessions) == (3, 2)
    assert (await thread(sm)).session_started_at == at(200)
    # Recorded once: a second batch of the same runs changes nothing.
    assert await run_usage.record_usage_many(sm, batch) == [None] * 5
    assert await shares(sm) == got
    assert (await thread(sm)).sessions == 3


async def test_record_usage_many_continues_the_sessions_of_earlier_batches(sm):
    assert all(await run_usage.record_usage_many(sm, [run_item("run_a", [0, 30])]))
    later = [run_item("run_b", [45]), run_item("run_c", [70]), run_item("run_d", [100])]
    assert all(await run_usage.record_usage_many(sm, later))
    assert await shares(sm) == {"run_a": 1, "run_b": 0, "run_c": 1, "run_d": 0}
    state = await thread(sm)
    assert (state.sessions, state.session_started_at) == (2, at(70))


async def test_a_duplicate_in_a_batch_does_not_count_toward_the_others(sm):
    # run_a was recorded before with a call at 0. Seen again with another call (a late
    # replica's fetch), it is refused, and its 200-minute call must not cover run_b's.
    assert await run_usage.record_usage(sm, make_row("run_a"), code_interpreter_call_times=[at(0)])
    batch = [run_item("run_a", [200]), run_item("run_b", [230]), run_item("run_b", [5])]
    stored = await run_usage.record_usage_many(sm, batch)
    assert [s is not None for s in stored] == [False, True, False]
    got = {r.object_id: r for r in await rows(sm)}
    assert got["run_b"].code_interpreter_sessions == 1
    assert got["run_b"].cost_usd == Decimal("0.0012345678") + PRICE
    state = await thread(sm)
    assert (state.sessions, state.session_started_at) == (2, at(230))


async def test_record_usage_many_runs_also_in_its_transaction(sm):
    async def fails(session) -> None:
        raise RuntimeError("the jobs could not be deleted")

    batch = [run_item("run_a", [0]), run_item("run_b", [90])]
    with pytest.raises(RuntimeError):
        await run_usage.record_usage_many(sm, batch, also=fails)
    assert await rows(sm) == []
    assert await thread(sm) is None
    seen = []

    async def sees_the_rows(session) -> None:
        seen.extend(await session.scalars(select(UsageRecord.object_id)))

    assert all(await run_usage.record_usage_many(sm, batch, also=sees_the_rows))
    assert sorted(seen) == ["run_a", "run_b"]
    assert await run_usage.record_usage_many(sm, [], also=sees_the_rows) == []


async def test_record_usage_many_refuses_naive_call_times(sm):
    naive = run_usage.RunUsage(make_row("run_n"), [dt.datetime(2026, 11, 27, 10)])
    with pytest.raises(ValueError, match="naive"):
        await run_usage.record_usage_many(sm, [run_item("run_a", [0]), naive])
    assert await rows(sm) == []


async def test_concurrent_batches_count_each_run_and_session_once(db_url: str, sm):
    # Four recorders (say, replicas whose leases overlapped) record overlapping batches of the
    # same runs of two threads, in different orders, at once.
    calls = {f"run_{i}": [25.0 * i] for i in range(12)}  # two threads, alternating
    engines = [make_engine(db_url) for _ in range(4)]

    def batch(k: int) -> list[run_usage.RunUsage]:
        ids = sorted(calls)[k * 3 :] + sorted(calls)[: k * 3]
        return [run_item(r, calls[r], thread_id=f"thread_{int(r[4:]) % 2}") for r in ids]

    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_usage.record_usage_many(make_sessionmaker(engines[k]), batch(k))
                    for k in range(4)
                )
            ),
            timeout=60,
        )
    finally:
        for engine in engines:
            await engine.dispose()
    assert sum(s is not None for stored in results for s in stored) == 12
    got = await shares(sm)
    assert len(got) == 12
    # thread_0: calls at 0, 50, ..., 250 -> sessions from 0, 100, 200; thread_1: 25, 75, ...
    # 275 -> from 25, 125, 225.
    even = sum(v for k, v in got.items() if int(k[4:]) % 2 == 0)
    odd = sum(v for k, v in got.items() if int(k[4:]) % 2 == 1)
    assert (even, odd) == (3, 3)
    assert ((await thread(sm, "thread_0")).sessions, (await thread(sm, "thread_1")).sessions) == (
        3,
        3,
    )


class Turns:
    """`also` for the writers of one test: holds each writer's transaction open, after it has
    read its thread's calls and written its row, until every other writer has either committed
    or is waiting on a lock inside its transaction (PostgreSQL). A writer that read the calls
    without the thread's lock has then read them before any other writer committed, whatever
    the scheduling. On SQLite the writers' transactions cannot overlap at all (each begins
    IMMEDIATE), so nothing is held."""

    def __init__(self, sm, writers: int, postgres: bool) -> None:
        self.sm = sm
        self.writers = writers
        self.postgres = postgres
        self.pids: set[int] = set()  # the writers' backends
        self.holding = 0
        self.done = 0

    def watch(self, engine) -> None:
        if not self.postgres:
            return

        def connected(dbapi_connection, record) -> None:
            self.pids.add(dbapi_connection.driver_connection.get_server_pid())

        event.listen(engine.sync_engine, "connect", connected)

    async def _waiting_on_locks(self) -> int:
        async with self.sm() as session:
            return await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE pid = ANY(:pids) AND wait_event_type = 'Lock'"
                ),
                {"pids": sorted(self.pids)},
            )

    async def _all_accounted_for(self) -> bool:
        waiting = await self._waiting_on_locks()
        return self.holding + self.done + waiting >= self.writers

    async def __call__(self, session) -> None:
        self.holding += 1
        try:
            if self.postgres:
                await wait_until(self._all_accounted_for, timeout=30, what="the other writers")
        finally:
            self.holding -= 1
            self.done += 1


async def test_concurrent_writers_to_a_thread_with_a_session_count_sessions_once(
    db_url: str, db_backend: str, sm
):
    # The thread has a session (from 10:00) before the writers start, so none of them inserts
    # its session row: only the lock on that row makes them take turns. Eight writers on four
    # engines (replicas) record a run each, calls at 11:30 to 11:37: one more session in all.
    assert await run_usage.record_usage(
        sm, make_row("run_0"), code_interpreter_call_times=[at(0)], session_price=PRICE
    )
    writers = 8
    engines = [make_engine(db_url) for _ in range(4)]
    turns = Turns(sm, writers, postgres=db_backend == "postgres")
    for engine in engines:
        turns.watch(engine)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_usage.record_usage_many(
                        make_sessionmaker(engines[i % 4]),
                        [run_item(f"run_{i + 1}", [90 + i])],
                        also=turns,
                    )
                    for i in range(writers)
                )
            ),
            timeout=60,
        )
    finally:
        for engine in engines:
            await engine.dispose()
    assert [[s is not None for s in stored] for stored in results] == [[True]] * writers
    got = await shares(sm)
    assert got.pop("run_0") == 1
    assert sorted(got.values()) == [0] * (writers - 1) + [1], got
    total = sum(r.cost_usd for r in await rows(sm))
    assert total == (writers + 1) * Decimal("0.0012345678") + 2 * PRICE
    state = await thread(sm)
    assert (state.sessions, state.session_started_at) == (2, at(90))


async def test_record_usage_many_writes_again_with_returning_only_on_a_conflict(sm, inserts):
    also_ran: list[list[str]] = []

    async def also(session) -> None:
        also_ran.append(sorted(await session.scalars(select(UsageRecord.object_id))))

    batch = [run_item("run_a", [0]), run_item("run_b", [90])]
    assert all(await run_usage.record_usage_many(sm, batch[:1], also=also))
    [again, new] = await run_usage.record_usage_many(sm, batch, also=also)
    assert again is None and new is not None
    assert ["RETURNING" in s for s in inserts] == [False, False, True]
    # `also` ran once per committed transaction, never in the one rolled back.
    assert also_ran == [["run_a"], ["run_a", "run_b"]]
    assert await shares(sm) == {"run_a": 1, "run_b": 1}
