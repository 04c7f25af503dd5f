"""The usage row writer (proxy.accounting.writing.row_writer), on a real database of each
backend."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.service import Accounting
from proxy.accounting.usage import UsageRow
from proxy.accounting.usage_metrics import UsageMetrics
from proxy.accounting.writing.row_writer import RowWriter
from proxy.db import mappings, run_usage
from proxy.db.models import UsageRecord
from proxy.metrics import Metrics
from proxy.settings import Settings
from tests.waiting import wait_until

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
SM = async_sessionmaker[AsyncSession]


def chat(object_id: str, **overrides: Any) -> UsageRow:
    fields: dict[str, Any] = {
        "kind": "chat.completion",
        "object_id": object_id,
        "occurred_at": T0,
        "usage_source": "reported",
        "model": "gpt-4o-mini",
        "team": "red",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost_usd": Decimal("0.001"),
    }
    return UsageRow(**(fields | overrides))


class Flaky:
    """A sessionmaker whose database can be made unreachable: every call raises OSError, as
    a refused connection does, while `down` is set."""

    def __init__(self, sm: SM) -> None:
        self.sm = sm
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("connection refused (test)")

    def begin(self) -> Any:
        self._check()
        return self.sm.begin()

    def __call__(self, **kw: Any) -> AsyncSession:
        self._check()
        return self.sm(**kw)


@pytest.fixture
def accounting(sm: SM) -> Accounting:
    acc = Accounting(Settings(key_secret="test-secret"))
    acc._sm = sm
    return acc


def writer_for(
    accounting: Accounting, sm: Any, metrics: Metrics | None = None, **kw: Any
) -> RowWriter:
    return RowWriter(
        lambda: sm,
        metrics or accounting.metrics,
        resolve_teams=accounting.resolve_teams,
        recorded=UsageMetrics(metrics) if metrics else accounting.recorded,
        **({"retry_base": 0.01, "max_backoff": 0.05} | kw),
    )


async def stored(sm: SM) -> list[UsageRecord]:
    async with sm() as session:
        return list(await session.scalars(select(UsageRecord).order_by(UsageRecord.id)))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_rows_are_written_in_batches(accounting: Accounting, sm: SM, commits: list[int]):
    writer = writer_for(accounting, sm)
    writer.start()
    try:
        for i in range(2_000):
            writer.submit(chat(f"c{i}"))
        assert await wait_until(lambda: writer.pending == 0 and len(commits) >= 4)
    finally:
        await writer.stop()
    got = await stored(sm)
    assert sorted(r.object_id for r in got) == sorted(f"c{i}" for i in range(2_000))
    assert len(commits) < 20  # ~500 rows per transaction, not one each
    m = accounting.metrics
    assert sample(m, "usage_proxy_events_recorded_total", kind="chat.completion") == 2_000
    assert sample(
        m, "usage_proxy_tokens_total", team="red", model="gpt-4o-mini", type="prompt"
    ) == (20_000)


async def test_rows_submitted_while_a_flush_runs_go_into_the_next(
    accounting: Accounting, sm: SM, commits: list[int]
):
    writer = writer_for(accounting, sm)
    writer.start()
    try:
        writer.submit(chat("first"))
        await wait_until(lambda: writer.pending == 0)
        for i in range(50):
            writer.submit(chat(f"c{i}"))
            await asyncio.sleep(0)
        await wait_until(lambda: writer.pending == 0)
        await wait_until(lambda: len(commits) >= 2)
    finally:
        await writer.stop()
    assert len(await stored(sm)) == 51
    assert len(commits) < 51


async def test_stop_writes_everything_submitted(accounting: Accounting, sm: SM):
    writer = writer_for(accounting, sm)
    writer.start()
    for i in range(1_200):
        writer.submit(chat(f"c{i}"))
    await writer.stop()
    assert len(await stored(sm)) == 1_200
    await writer.stop()  # a second stop is harmless


async def test_only_inserted_rows_are_counted(accounting: Accounting, sm: SM):
    await run_usage.record_usage(sm, chat("old"))
    writer = writer_for(accounting, sm)
    writer.start()
    for oid in ("old", "new", "new"):
        writer.submit(chat(oid))
    await writer.stop()
    assert [r.object_id for r in await stored(sm)] == ["old", "new"]
    m = accounting.metrics
    assert sample(m, "usage_proxy_events_recorded_total", kind="chat.completion") == 1


async def test_teams_are_resolved_once_per_key_and_project(
    accounting: Accounting, sm: SM, monkeypatch: pytest.MonkeyPatch
):
    await mappings.add_key_team(sm, "fp1", None, "team-key")
    await mappings.add_project_team(sm, "proj_1", "team-project")
    lookups: list[tuple[str | None, str | None]] = []
    team_for = mappings.team_for

    async def counting(sm: SM, *, fingerprint: str | None, project: str | None) -> str:
        lookups.append((fingerprint, project))
        return await team_for(sm, fingerprint=fingerprint, project=project)

    monkeypatch.setattr(mappings, "team_for", counting)
    writer = writer_for(accounting, sm)
    writer.start()
    for i in range(30):
        who = [("fp1", None), (None, "proj_1"), ("fp2", None)][i % 3]
        writer.submit(chat(f"c{i}", team=None, key_fingerprint=who[0], project=who[1]))
    writer.submit(chat("given", team="blue", key_fingerprint="fp1"))
    await writer.stop()
    assert sorted(lookups, key=str) == sorted(
        [("fp1", None), (None, "proj_1"), ("fp2", None)], key=str
    )
    teams = {r.object_id: r.team for r in await stored(sm)}
    assert len(teams) == 31
    assert (teams["c0"], teams["c1"], teams["c2"]) == ("team-key", "team-project", "unassigned")
    assert teams["given"] == "blue"
    m = accounting.metrics
    assert sample(m, "usage_proxy_cost_usd_total", team="team-key", model="gpt-4o-mini") > 0


async def test_rows_are_kept_while_the_database_is_unreachable(accounting: Accounting, sm: SM):
    flaky = Flaky(sm)
    flaky.down = True
    accounting._sm = flaky  # type: ignore[assignment]  # team lookups fail alike
    held: list[int] = []
    writer = writer_for(accounting, flaky, on_pending=held.append)
    writer.start()
    try:
        for i in range(10):
            writer.submit(chat(f"c{i}", team=None, key_fingerprint="fp1"))
        await wait_until(lambda: len(held) >= 3)  # it has retried
        assert writer.pending == 10
        assert await stored(sm) == []
        writer.submit(chat("c10"))
        flaky.down = False
        await wait_until(lambda: writer.pending == 0)
    finally:
        await writer.stop()
    got = await stored(sm)
    assert [r.object_id for r in got] == [f"c{i}" for i in range(11)]
    assert {r.team for r in got if r.object_id != "c10"} == {"unassigned"}
    assert held[-1] == 0


async def test_a_full_backlog_drops_the_oldest_rows_and_counts_them(accounting: Accounting, sm: SM):
    flaky = Flaky(sm)
    flaky.down = True
    held: list[int] = []
    writer = writer_for(accounting, flaky, limit=5, on_pending=held.append)
    writer.start()
    try:
        for i in range(8):
            writer.submit(chat(f"c{i}"))
        await wait_until(lambda: held, what="a failed write")
        assert held[0] == 5  # the five newest, kept for the retry
        flaky.down = False
        await wait_until(lambda: writer.pending == 0)
    finally:
        await writer.stop()
    assert [r.object_id for r in await stored(sm)] == [f"c{i}" for i in range(3, 8)]
    m = accounting.metrics
    assert sample(m, "usage_proxy_collection_failures_total", reason="backlog_full") == 3


async def test_stop_while_unreachable_does_not_hang(accounting: Accounting, sm: SM):
    flaky = Flaky(sm)
    flaky.down = True
    held: list[int] = []
    writer = writer_for(
        accounting, flaky, retry_base=30.0, max_backoff=30.0, on_pending=held.append
    )
    writer.start()
    writer.submit(chat("c1"))
    await wait_until(lambda: held == [1], what="a failed write")  # now in its 30 s backoff
    await asyncio.wait_for(writer.stop(), 5)
    assert writer.pending == 0


async def test_a_refused_row_does_not_drop_its_neighbours(
    accounting: Accounting, sm: SM, caplog: pytest.LogCaptureFixture
):
    writer = writer_for(accounting, sm)
    writer.start()
    naive = dt.datetime(2026, 11, 27, 10)  # UTCDateTime refuses it: a StatementError
    for i in range(20):
        writer.submit(chat(f"c{i}", occurred_at=naive if i == 7 else T0))
    await writer.stop()
    assert [r.object_id for r in await stored(sm)] == [f"c{i}" for i in range(20) if i != 7]
    m = accounting.metrics
    assert sample(m, "usage_proxy_collection_failures_total", reason="database_refused") == 1
    assert sample(m, "usage_proxy_events_recorded_total", kind="chat.completion") == 19
    assert "chat.completion c7" in caplog.text


async def test_a_value_out_of_range_is_refused_alone(accounting: Accounting, sm: SM):
    # PostgreSQL refuses a bigint overflow; SQLite's driver raises OverflowError (no DB error).
    writer = writer_for(accounting, sm)
    writer.start()
    writer.submit(chat("a"))
    writer.submit(chat("b", prompt_tokens=2**70))
    writer.submit(chat("c"))
    await writer.stop()
    assert [r.object_id for r in await stored(sm)] == ["a", "c"]
    m = accounting.metrics
    assert sample(m, "usage_proxy_collection_failures_total", reason="database_refused") == 1


async def test_a_failure_that_is_no_database_error_costs_only_its_row(
    accounting: Accounting, sm: SM
):
    async def resolve(rows: Any) -> list[UsageRow]:
        if any(r.object_id == "bad" for r in rows):
            raise RuntimeError("a bug")
        return list(rows)

    writer = RowWriter(
        lambda: sm, accounting.metrics, resolve_teams=resolve, recorded=accounting.recorded
    )
    writer.start()
    for oid in ("a", "bad", "b"):
        writer.submit(chat(oid))
    await writer.stop()
    writer.start()  # and it can be started again
    writer.submit(chat("c"))
    await writer.stop()
    assert [r.object_id for r in await stored(sm)] == ["a", "b", "c"]


async def test_submit_never_raises_before_start(accounting: Accounting, sm: SM):
    writer = writer_for(accounting, sm, limit=2)
    for i in range(5):
        writer.submit(chat(f"c{i}"))
    assert writer.pending == 2
    await writer.stop()  # never started: nothing to do
    writer.start()
    await writer.stop()
    assert [r.object_id for r in await stored(sm)] == ["c3", "c4"]


async def test_rows_arriving_one_by_one_gather_into_one_transaction(
    accounting: Accounting, sm: SM, commits: list[int]
):
    # A few clients' rows trickle in: within the gather window they share a transaction. The
    # window is far longer than the test, so only drain() can end it.
    writer = writer_for(accounting, sm, gather=600.0)
    writer.start()
    before = len(commits)
    try:
        for i in range(20):
            writer.submit(chat(f"t{i}"))
            await asyncio.sleep(0.001)
        assert len(commits) == before  # still gathering
        await asyncio.wait_for(writer.drain(), 10)
        assert len(commits) == before + 1
        assert len(await stored(sm)) == 20
    finally:
        await writer.stop()


async def test_a_gathering_batch_is_written_when_its_window_ends(
    accounting: Accounting, sm: SM, commits: list[int]
):
    writer = writer_for(accounting, sm, gather=0.2)
    writer.start()
    try:
        writer.submit(chat("late"))
        assert await wait_until(lambda: len(commits) == 1, timeout=10)
    finally:
        await writer.stop()
    assert [r.object_id for r in await stored(sm)] == ["late"]
