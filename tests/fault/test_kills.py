"""Issue #19, item 1, at CI size: SIGKILLs at random moments, and right after a client received
a finished run, across 200 runs per backend that clients never poll again once finished (a
fifth never at all): every run the upstream created is recorded exactly once, with no re-poll
(tests/fault/kills.py has the scenario). 1,000 runs: `python -m tests.fault --kills 1000`, or
FAULT_KILLS_RUNS=1000 (bench/README.md has the figures).

On both backends: a create on a thread leaves an intent the next replica recovers, and its
answer waits until its job is stored (held), so nothing of it is lost at any moment of a kill.
The exception, counted apart: a create-and-run whose answer died with its replica (no thread
in its path, so nothing to list); and a create-and-run whose every sighting died with one
replica before its outbox write (see the first test). Those are never silent: each is within
the replicas' count of unseen create-and-runs (proxy/db/unseen_creates.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fault.conftest import BACKENDS, run_once_per_backend
from tests.fault.kills import KillOutcome, KillSize, run_kills

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

RUNS = int(os.environ.get("FAULT_KILLS_RUNS", "200"))
SIZE = KillSize(runs=RUNS, duration=RUNS / 10)
WINDOW = 3.0  # seconds


@pytest.fixture(scope="module", params=BACKENDS)
def outcome(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KillOutcome]:
    yield from run_once_per_backend(
        request, tmp_path_factory, "kills", lambda b, w, pg: run_kills(b, SIZE, w, pg)
    )


def test_every_run_is_recorded_exactly_once_without_a_re_poll(outcome: KillOutcome) -> None:
    ledger = outcome.ledger
    assert ledger.duplicated == [] and ledger.unexpected == [], ledger.line()
    assert ledger.expected >= SIZE.runs
    # A create on a thread is held until its job is written, and has its intent: none of
    # those is ever lost. A create-and-run is neither (creates.py says why), so one created,
    # polled and seen finished through one replica before that replica's outbox wrote its job,
    # and killed with it at once, may be lost: on SQLite (two replicas and two collector
    # processes on one file, not a supported set-up) that write can wait a second or more
    # behind the others; on PostgreSQL it was seen once, in a CI-size run on a machine at a
    # load average of 10. Only those, and only within the window.
    assert outcome.lost_on_a_thread == [], outcome.lines()
    assert all(age is not None and age < WINDOW for age in outcome.lost_ages), outcome.lines()


def test_a_run_only_created_is_never_lost(outcome: KillOutcome) -> None:
    # Its answer was held until its job was stored; one that died with its replica has an intent.
    assert outcome.lost_unpolled == [], outcome.lines()


def test_a_create_on_a_thread_whose_answer_died_is_recovered(outcome: KillOutcome) -> None:
    if outcome.backend == "postgres":
        assert outcome.orphans == [], outcome.lines()
    else:
        # The intent is written before the create is forwarded, waiting at most hold_timeout
        # (fail open: a create is never kept back longer). Two replicas and two collector
        # processes writing one SQLite file (not a supported set-up) on a loaded machine can
        # make that write wait longer; the create then goes without its intent. Seen once, in
        # a run beside a CPU hog and another suite: at most one per kill.
        assert len(outcome.orphans) <= outcome.kills, outcome.lines()
    # Create-and-run cannot be found again (tests/fault/kills.py): at most one per kill.
    assert len(outcome.orphans_create_and_run) <= outcome.kills, outcome.lines()


def test_every_lost_run_is_counted_unseen(outcome: KillOutcome) -> None:
    # Never silent: what a kill lost (a create-and-run, as the tests above allow) is within
    # the count of unseen create-and-runs the replicas told (an upper bound: a create whose
    # replica died before it failed upstream, or before it was sent, is counted too).
    lost = len(outcome.orphans_create_and_run) + len(outcome.lost)
    assert outcome.unseen is not None, outcome.lines()
    assert lost <= outcome.unseen, outcome.lines()


def test_no_client_request_failed_but_on_a_killed_replica(outcome: KillOutcome) -> None:
    assert outcome.failures == []


def test_the_kills_really_happened(outcome: KillOutcome) -> None:
    assert outcome.kills >= 5, outcome.lines()
    assert outcome.kills_after_finish >= 2, outcome.lines()
    assert outcome.killed_failures > 0, "no client request was in flight at a kill"
    assert outcome.forgotten > 0 and outcome.collector_retrieves > 0
