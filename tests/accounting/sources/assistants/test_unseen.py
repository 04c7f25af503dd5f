"""Unseen create-and-runs (proxy.accounting.sources.assistants.unseen), on both backends: an
intent of a dead worker left unmatched `unseen_after` seconds is marked by one replica of two
sweeping at once, which logs one WARNING line (never a key) and counts it; a live worker's,
a young one's, and another host's within a lease are not."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import subprocess

import pytest

from proxy.accounting.process.owners import this_host, worker_id
from proxy.accounting.sources.assistants.unseen import UnseenCreates
from proxy.db import run_intents, unseen_creates
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.models import utcnow
from proxy.metrics import Metrics

KEY = "sk-proj-" + "k" * 40


def dead_worker() -> str:
    """A worker id of this host whose process has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return f"{this_host()}:{child.pid}:-.-.x"


def intent(worker: str, team: str = "red") -> run_intents.NewIntent:
    return run_intents.NewIntent(
        thread_id=None,
        api_prefix="/v1",
        key_fingerprint="fp-a",
        key_hint="sk-...kkkk",
        team=team,
        worker=worker,
        assistant_id="asst_7",
    )


def unseen(metrics: Metrics, team: str = "red") -> float:
    sample = metrics.registry.get_sample_value("usage_proxy_runs_unseen_total", {"team": team})
    return sample or 0.0


async def test_a_dead_workers_create_and_run_is_told_once_by_one_of_two_replicas(
    db_url, sm, caplog: pytest.LogCaptureFixture
):
    now = utcnow()
    minute = dt.timedelta(seconds=60)
    dead = dead_worker()
    live = await run_intents.add(sm, intent(worker_id("live")), now=now - 2 * minute)
    ids = [await run_intents.add(sm, intent(dead), now=now - 2 * minute) for _ in range(5)]
    young = await run_intents.add(sm, intent(dead), now=now)
    far = "elsewhere:7:b.s.x"
    far_old = await run_intents.add(sm, intent(far, team="blue"), now=now - 2 * minute)
    far_young = await run_intents.add(sm, intent(far), now=now - minute / 2)
    engines = [make_engine(db_url) for _ in range(2)]
    metrics = [Metrics(), Metrics()]
    sweepers = [
        UnseenCreates(
            lambda e=e: make_sessionmaker(e),
            unseen_after=30.0,
            lease=40.0,
            on_unseen=m.run_unseen,
        )
        for e, m in zip(engines, metrics, strict=True)
    ]
    caplog.set_level(logging.WARNING, logger="proxy.accounting.runs")
    try:
        # Pages of 2: the live worker's first must not hide the rest.
        marked = await asyncio.gather(*(s.sweep(page=2) for s in sweepers))
    finally:
        for e in engines:
            await e.dispose()
    got = [i.id for m in marked for i in m]
    assert sorted(got) == sorted([*ids, far_old])
    assert sum(unseen(m) for m in metrics) == 5 and sum(unseen(m, "blue") for m in metrics) == 1
    lines = [r.getMessage() for r in caplog.records if "create-and-run" in r.getMessage()]
    assert len(lines) == 6
    assert all("sk-...kkkk" in line and "asst_7" in line and KEY not in line for line in lines)
    assert any("team red" in line for line in lines)
    count = await unseen_creates.unseen(sm)
    assert count.count == 6 and count.since == now - 2 * minute
    left = {i.id for i in await unseen_creates.pending(sm, older_than=now + minute)}
    assert left == {live, young, far_young}
    # Swept again: nothing new is told.
    again = UnseenCreates(
        lambda: sm, unseen_after=30.0, lease=40.0, on_unseen=metrics[0].run_unseen
    )
    assert await again.sweep() == []
