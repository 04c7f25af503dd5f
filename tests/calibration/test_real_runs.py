"""The estimator against real Assistants runs (../shared/real_runs/calibration.jsonl): the
estimate is the number billed, so CI holds the line here."""

import statistics
from pathlib import Path

import pytest

from proxy.accounting.estimate.runs import default_table
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.calibration.compare import compare
from proxy.calibration.observations import basis_of
from proxy.calibration.recorded import read_runs

RUNS = Path(__file__).resolve().parents[3] / "shared" / "real_runs" / "calibration.jsonl"

pytestmark = pytest.mark.skipif(
    not RUNS.exists(), reason=f"no recorded real runs at {RUNS} (../shared is absent)"
)


@pytest.fixture(scope="module")
def complete():
    runs = [r for r in read_runs(str(RUNS)) if r.complete]
    assert len(runs) >= 10
    table = default_table()
    return [compare(r, basis_of(r, counter_for_model), table) for r in runs]


def test_median_prompt_error_of_complete_runs_is_at_most_3_percent(complete):
    errors = [abs(c.error("prompt")) for c in complete]
    assert statistics.median(errors) <= 0.03, sorted(errors)


def test_every_complete_run_is_within_10_percent_or_20_tokens(complete):
    off = [
        (c.id, c.prompt, c.reported[0])
        for c in complete
        if abs(c.prompt - c.reported[0]) > max(0.10 * c.reported[0], 20)
    ]
    assert off == []


def test_median_completion_error_of_complete_runs_is_at_most_1_percent(complete):
    errors = [abs(c.error("completion")) for c in complete]
    assert statistics.median(errors) <= 0.01, sorted(errors)
