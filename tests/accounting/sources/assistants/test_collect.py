"""collect.py without a database: which headers a run's fetches carry, and what becomes of a
job whose key is not in memory."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from proxy.accounting.estimate.runs import default_table
from proxy.accounting.pricing import load_price_table
from proxy.accounting.sources.assistants.collect import WAIT, RunCollect, _scoped
from proxy.db.jobs import ClaimedJob
from proxy.keys import CredentialStore
from tests.fake_keys import fake_key

NOW = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
KEY = fake_key("collect", "2468")


def job(**values: object) -> ClaimedJob:
    run = {"id": "run_1", "thread_id": "thread_1", "model": "gpt-4o", "status": "completed"}
    fields = {
        "object_id": "run_1",
        "thread_id": "thread_1",
        "api_prefix": "/v1",
        "object_json": json.dumps(run),
        "key_fingerprint": "fp",
        "id": 1,
        "attempts": 0,
        "created_at": NOW,
        "next_attempt_at": NOW,
        "claimed_until": NOW,
    }
    return ClaimedJob(**(fields | values))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sent", "beta"),
    [
        ({"Authorization": f"Bearer {KEY}"}, "assistants=v2"),
        ({"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v1"}, "assistants=v1"),
        ({"Authorization": f"Bearer {KEY}", "openai-beta": "other=1"}, "assistants=v2"),
    ],
)
def test_fetches_carry_the_runs_project_and_the_assistants_beta(sent: dict, beta: str) -> None:
    latest = sent | {"OpenAI-Project": "proj_latest", "OpenAI-Organization": "org_latest"}
    scoped = _scoped(latest, job(project="proj_run", organization=None))
    assert scoped == {
        "Authorization": f"Bearer {KEY}",
        "OpenAI-Project": "proj_run",
        "OpenAI-Beta": beta,
    }


async def test_a_job_whose_key_is_not_here_waits_unless_the_run_reported_usage() -> None:
    failures: list[tuple[str, int]] = []

    def unused() -> object:
        raise AssertionError("no database, no fetch for a job that waits")

    collect = RunCollect(
        unused,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        CredentialStore(),
        load_price_table(None),
        default_table(),
        lambda reason, n: failures.append((reason, n)),
    )
    assert await collect(job(), unused) is WAIT  # type: ignore[arg-type]
    assert failures == []
