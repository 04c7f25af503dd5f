"""Issue #7, scale and faults, at CI size: two real `usage-proxy serve` replicas on one database
(PostgreSQL through a pausable relay; SQLite, one file), 60 Assistants runs by 8 concurrent SDK
clients, a database outage, a SIGKILL of a replica mid-collection, and upstream 429/500/drops on
the steps and messages fetches (tests/fault/scenario.py has the timeline).

The scenario runs once per backend (a module fixture); each test asserts one promise of it.
Full size (1,000 runs, a 30 s outage): `.venv/bin/python -m tests.fault --full`, or these tests
with FAULT_SUITE_SIZE=full. Billing to the right team during an outage is asserted by
test_regressions.py (the scenario prints how many rows went to the wrong team).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fault.conftest import BACKENDS, run_once_per_backend
from tests.fault.outcome import CI, FULL, Outcome
from tests.fault.scenario import run_scenario

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

SIZE = FULL if os.environ.get("FAULT_SUITE_SIZE") == "full" else CI


@pytest.fixture(scope="module", params=BACKENDS)
def outcome(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    yield from run_once_per_backend(
        request, tmp_path_factory, "fault", lambda b, w, pg: run_scenario(b, SIZE, w, pg)
    )


def test_every_completed_run_is_recorded_exactly_once(outcome: Outcome) -> None:
    ledger = outcome.ledger
    assert ledger.ok, (ledger.line(), ledger.missing, ledger.duplicated, ledger.unexpected)
    assert ledger.expected >= SIZE.runs


def test_no_client_request_failed_because_of_accounting(outcome: Outcome) -> None:
    assert outcome.tally.failures == []
    assert outcome.tally.aborted == []
    assert outcome.tally.runs_done == SIZE.runs


def test_the_faults_really_happened(outcome: Outcome) -> None:
    assert outcome.outage_proof
    assert outcome.db_failure_logs > 0, "no replica saw a database write fail"
    assert outcome.killed_holding > 0, "the replica was not killed mid-collection"
    assert outcome.tally.killed_failures > 0, "no client request was in flight at the kill"
    assert all(outcome.injected[kind] > 0 for kind in ("429", "500", "drop")), outcome.injected


def test_rows_have_the_reported_or_estimated_tokens(outcome: Outcome) -> None:
    assert outcome.wrong_tokens == []


def test_no_key_in_any_table_or_log_line(outcome: Outcome) -> None:
    assert [str(leak) for leak in outcome.leaks] == []
