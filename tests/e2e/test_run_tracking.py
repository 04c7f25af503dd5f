"""Runs tracked from their creation (issue #19, item 1), end to end: the official openai SDK
through an in-process proxy to the fake upstream, on both backends. A run's collection job is
opened when the run is first seen; the collector then follows it by itself, with the client's
key, until it ends, and stops as soon as a client's own poll shows it ended."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import (
    KEY,
    fake_estimate,
    jobs,
    one_row,
    sentinel,
    settings_for,
    start_run,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def retrieves(fake: FakeUpstream, run_id: str, *, by_sdk: bool) -> list[dict[str, Any]]:
    """GETs of the run itself: the SDK's (its User-Agent names it) or the collector's."""
    return [
        r
        for r in fake.requests
        if r["method"] == "GET"
        and r["path"].endswith(f"/runs/{run_id}")
        and ("OpenAI/Python" in r["headers"].get("User-Agent", "")) == by_sdk
    ]


@pytest.mark.parametrize("collector_process", [False, True], ids=["in_loop", "child"])
async def test_a_run_created_and_never_polled_again_is_recorded(
    upstream, start_proxy, db_url, sm, collector_process
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url), collector_process=collector_process)
    async with client_for(proxy, KEY) as client:
        run = await start_run(client, usage="no")
        assert run.status == "queued"
        # The client never asks again: the collector retrieves the run until it ends.
        row = await one_row(sm, run.id, timeout=60)
    assert (row["status"], row["usage_source"]) == ("completed", "estimated")
    assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens
    assert retrieves(upstream, run.id, by_sdk=True) == []
    assert len(retrieves(upstream, run.id, by_sdk=False)) >= 2  # in progress, then completed
    assert await jobs(sm, run.id) == []


async def test_the_collector_stops_following_once_a_client_poll_shows_the_end(
    upstream, start_proxy, db_url, sm
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url))
    async with client_for(proxy, KEY) as client:
        await _polled_to_the_end(upstream, client, sm)


async def _polled_to_the_end(upstream: FakeUpstream, client: Any, sm: Any) -> None:
    upstream.polls_to_complete = 4
    run = await start_run(client, usage="yes")
    [job] = await wait_for(lambda: jobs(sm, run.id))
    assert job["in_progress"] and not job["has_reported_usage"]
    done = await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
    assert done.status == "completed"
    row = await one_row(sm, run.id)
    assert (row["status"], row["usage_source"]) == ("completed", "reported")
    followed = len(retrieves(upstream, run.id, by_sdk=False))
    await sentinel(client, sm)  # the collector has been round its loop since
    assert len(retrieves(upstream, run.id, by_sdk=False)) == followed
    # The client's polls ended it within the collector's first wait: it never retrieved it.
    assert followed == 0


async def test_a_streams_created_event_opens_the_job_before_the_run_ends(
    upstream, start_proxy, db_url, sm
) -> None:
    upstream.stream_pause = 30.0  # the run stays in progress until the test has looked
    proxy = await start_proxy(settings_for(upstream, db_url))
    async with client_for(proxy, KEY) as client:
        assistant = await client.beta.assistants.create(model="gpt-4o", metadata={"usage": "no"})
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": "2+2?"}])
        stream = await client.beta.threads.runs.create(
            thread_id=thread.id, assistant_id=assistant.id, stream=True
        )
        events = aiter(stream)
        created = await anext(events)
        assert created.event == "thread.run.created"
        [job] = await wait_for(lambda: jobs(sm, created.data.id))
        assert job["in_progress"]
        await stream.close()  # the client goes away mid-run, and never polls it
    # The collector follows it to its end (the fake ends it on a retrieve, as time would).
    upstream.stream_pause = 0.0
    row = await one_row(sm, created.data.id, timeout=60)
    assert row["status"] == "completed"
