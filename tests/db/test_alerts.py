"""The alert outbox on both backends: an alert exists once per source and key, one claimer
holds it at a time, and sent or failed decide what comes next."""

from __future__ import annotations

import asyncio
import datetime as dt

from proxy.db import alerts
from proxy.db import budgets as db_budgets
from proxy.db.engine import make_engine, make_sessionmaker


def soon() -> dt.datetime:
    # Alerts are due from when they were inserted (the database's now).
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)


def new(threshold: int, budget: int = 1, period: str = "2026-12-01") -> db_budgets.BudgetAlert:
    return db_budgets.BudgetAlert(budget, period, "threshold", threshold, f'{{"t": {threshold}}}')


async def test_an_alert_is_inserted_once_per_budget_period_kind_and_threshold(sm):
    assert await alerts.add_alerts(sm, [new(50), new(80)]) == 2
    assert await alerts.add_alerts(sm, [new(50), new(80), new(100)]) == 1
    assert await alerts.add_alerts(sm, [new(50, period="2027-01-01"), new(50, budget=2)]) == 2
    wanted = {db_budgets.alert_key(1, "2026-12-01", "threshold", t) for t in (50, 80, 100)}
    maybe = wanted | {db_budgets.alert_key(1, "2026-12-01", "threshold", 10)}
    assert await alerts.queued(sm, db_budgets.ALERT_SOURCE, maybe) == wanted


async def test_concurrent_claimers_never_hold_the_same_alert(sm, db_url):
    await alerts.add_alerts(sm, [new(t) for t in range(1, 41)])
    now = soon()
    engines = [make_engine(db_url) for _ in range(4)]
    try:
        claims = await asyncio.gather(
            *(
                alerts.claim(make_sessionmaker(e), worker=f"w{i}", lease=60, limit=40, now=now)
                for i, e in enumerate(engines)
            )
        )
    finally:
        for engine in engines:
            await engine.dispose()
    ids = [a.id for claimed in claims for a in claimed]
    assert len(ids) == len(set(ids)) == 40


async def test_sent_is_final_failed_comes_back_after_its_delay_and_a_lease_runs_out(sm):
    await alerts.add_alerts(sm, [new(50), new(80)])
    now = soon()
    first, second = await alerts.claim(sm, worker="a", lease=60, now=now)
    assert await alerts.claim(sm, worker="b", lease=60, now=now) == []  # both held
    await alerts.sent(sm, first.id, "a")
    await alerts.failed(sm, second.id, "a", error="HTTP 500", delay=30)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
    [again] = await alerts.claim(sm, worker="b", lease=60, now=later)
    assert (again.id, again.attempts) == (second.id, 1)
    # b dies holding it: once its lease has run out, another takes it.
    assert await alerts.claim(sm, worker="c", lease=60, now=later) == []
    [taken] = await alerts.claim(sm, worker="c", lease=60, now=later + dt.timedelta(seconds=61))
    assert taken.id == second.id
    await alerts.sent(sm, second.id, "b")  # b's late word no longer counts: c holds it
    [still] = await alerts.claim(sm, worker="d", lease=60, now=later + dt.timedelta(seconds=200))
    assert still.id == second.id


async def test_each_source_has_its_own_keys(sm):
    same = "2026-12-01"
    both = [alerts.OutboxAlert("reconcile", same, "{}"), alerts.OutboxAlert("other", same, "{}")]
    assert await alerts.add_alerts(sm, both) == 2
    assert await alerts.add_alerts(sm, [alerts.OutboxAlert("reconcile", same, '{"x": 1}')]) == 0
    assert await alerts.queued(sm, "reconcile", [same, "2026-12-02"]) == {same}
    assert len(await alerts.claim(sm, worker="a", lease=60, now=soon())) == 2


async def test_drop_unsent_takes_only_its_prefix_and_only_unsent(sm):
    await alerts.add_alerts(sm, [new(50, budget=1), new(80, budget=1), new(50, budget=10)])
    first, *_ = await alerts.claim(sm, worker="a", lease=60, limit=1, now=soon())
    await alerts.sent(sm, first.id, "a")  # budget 1's 50%: sent, so kept
    async with sm.begin() as session:
        dropped = await alerts.drop_unsent(session, db_budgets.ALERT_SOURCE, "1/")
    assert dropped == 1
    keys = [
        db_budgets.alert_key(b, "2026-12-01", "threshold", t) for b in (1, 10) for t in (50, 80)
    ]
    assert await alerts.queued(sm, db_budgets.ALERT_SOURCE, keys) == {keys[0], keys[2]}
