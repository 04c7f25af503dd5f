"""Collection jobs give up (issue 20): after `collector_max_attempts` failed attempts a run is
recorded from itself alone, flagged `usage_source = "gave_up"`, counted in
usage_proxy_runs_recorded_total{source="gave_up"}, and its job is gone; also when its key is no
longer in memory. With the defaults, the attempts span about a day.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from proxy.accounting.estimate.runs import estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.db.jobs import backoff
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import KEY, finished_run, jobs, one_row, settings_for
from tests.e2e.test_credentials import accounting_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

StartProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture(autouse=True)
def _setup(db_url: str, upstream: FakeUpstream) -> None:
    """The database before the proxy, so torn down after it."""
    upstream.require_beta = True


def steps_fetches(upstream: FakeUpstream, run_id: str) -> int:
    return sum(1 for r in upstream.requests if r["path"].endswith(f"/runs/{run_id}/steps"))


def run_alone(run: dict) -> tuple[int, int]:
    estimate = estimate_run(run, [], [], counter_for_model(run["model"]))
    return estimate.prompt_tokens, estimate.completion_tokens


async def test_a_run_whose_fetches_keep_failing_is_recorded_alone_after_the_last_attempt(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str, sm
) -> None:
    upstream.faults.fetch_statuses = [500] * 100_000
    proxy = await start_proxy(settings_for(upstream, db_url, collector_max_attempts=3))
    async with client_for(proxy, KEY) as client:
        run = await finished_run(client, usage="no")
        row = await one_row(sm, run.id, timeout=30)
    assert row["usage_source"] == "gave_up"
    assert (row["prompt_tokens"], row["completion_tokens"]) == run_alone(run.model_dump())
    assert steps_fetches(upstream, run.id) == 3
    assert await jobs(sm, run.id) == []
    metrics = accounting_of(proxy).metrics.registry
    assert metrics.get_sample_value("usage_proxy_runs_recorded_total", {"source": "gave_up"}) == 1


async def test_a_job_that_gives_up_is_recorded_without_its_key(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str, sm
) -> None:
    upstream.faults.fetch_statuses = [500] * 100_000
    first = await start_proxy(settings_for(upstream, db_url, collector_max_attempts=2))
    async with client_for(first, KEY) as client:
        run = await finished_run(client, usage="no")
    await wait_for(lambda: _attempts(sm, run.id, 2), timeout=30)
    await first.runner.cleanup()
    # Restarted: the key is not in memory, and the job has no attempt left.
    await start_proxy(settings_for(upstream, db_url, collector_max_attempts=2))
    row = await one_row(sm, run.id, timeout=30)
    assert row["usage_source"] == "gave_up"
    assert steps_fetches(upstream, run.id) == 2


async def _attempts(sm, run_id: str, n: int) -> bool:
    return any(j["attempts"] >= n for j in await jobs(sm, run_id))


def test_the_default_attempts_span_about_a_day() -> None:
    s = Settings()
    waits = [
        backoff(n, base=s.collector_retry_base, cap=s.collector_max_backoff)
        for n in range(1, s.collector_max_attempts)
    ]
    assert s.collector_max_attempts == 20
    assert 20 * 3600 <= sum(waits) <= 28 * 3600
