"""Issue #19, item 1, at CI size: SIGKILLs at random moments, and right after a client received
a finished run, across 200 runs per backend that clients never poll again once finished (a
fifth never at all): every run the upstream created is recorded exactly once, with no re-poll
(tests/fault/kills.py has the scenario). 1,000 runs: `python -m tests.fault --kills 1000`, or
FAULT_KILLS_RUNS=1000 (bench/README.md has the figures)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_ENV
from tests.fault.kills import KillOutcome, KillSize, run_kills

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

RUNS = int(os.environ.get("FAULT_KILLS_RUNS", "200"))
SIZE = KillSize(runs=RUNS, duration=RUNS / 10)
WINDOW = 3.0  # seconds
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"set {PG_ENV}"),
    ),
]


@pytest.fixture(scope="module", params=BACKENDS)
def outcome(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KillOutcome]:
    workdir: Path = tmp_path_factory.mktemp(f"kills-{request.param}")
    result = asyncio.run(run_kills(request.param, SIZE, workdir, os.environ.get(PG_ENV, "")))
    print("\n" + "\n".join(result.lines()))
    yield result


def test_every_run_is_recorded_exactly_once_without_a_re_poll(outcome: KillOutcome) -> None:
    ledger = outcome.ledger
    assert ledger.duplicated == [] and ledger.unexpected == [], ledger.line()
    assert ledger.expected >= SIZE.runs
    if outcome.backend == "postgres":
        assert outcome.lost == [], outcome.lines()
    else:
        # Two replicas and two collector processes on one SQLite file (a set-up the README
        # does not support: replicas need PostgreSQL): an outbox write can wait behind the
        # others longer than a run of this test lasts, so a run whose every sighting went
        # through one replica may die with it. Only then, and within the window.
        ages = outcome.lost_ages
        assert all(age is not None and age < WINDOW for age in ages), outcome.lines()


def test_a_run_only_created_is_lost_only_in_the_moment_before_a_kill(
    outcome: KillOutcome,
) -> None:
    # The one window left (tests/fault/kills.py): its create answered as its replica died,
    # before the job was written. Generous: a busy SQLite file delays the outbox's write.
    assert all(age is not None and age < WINDOW for age in outcome.unpolled_ages), outcome.lines()
    assert len(outcome.lost_unpolled) <= outcome.kills


def test_no_client_request_failed_but_on_a_killed_replica(outcome: KillOutcome) -> None:
    assert outcome.failures == []


def test_the_kills_really_happened(outcome: KillOutcome) -> None:
    assert outcome.kills >= 5, outcome.lines()
    assert outcome.kills_after_finish >= 2, outcome.lines()
    assert outcome.killed_failures > 0, "no client request was in flight at a kill"
    assert outcome.forgotten > 0 and outcome.collector_retrieves > 0
