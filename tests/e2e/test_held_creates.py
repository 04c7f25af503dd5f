"""Run creates guarded at both ends (proxy/accounting/sources/assistants/creates.py), end to
end with the openai SDK, on both backends:

- a non-streamed create's answer reaches the client only once its job is in the database;
- with the database unreachable, the answer still comes, at `hold_timeout` (fail open);
- a replica SIGKILLed while a create on a thread was upstream (the run created, its answer lost
  with the replica) leaves an intent, which the next replica recovers: the run is recorded
  once, though no client ever saw it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from proxy.app import FORWARDER
from proxy.db.models import RunIntent
from tests.e2e.conftest import client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import KEY, SECRET, jobs, make_assistant, one_row, settings_for
from tests.fault.harness import ProxyProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MESSAGES = [{"role": "user", "content": "2+2?"}]


@contextlib.asynccontextmanager
async def jobs_locked(sm: Any, db_url: str) -> AsyncIterator[None]:
    """No job can be written meanwhile: SQLite's one write lock, or PostgreSQL's table lock
    (reads go on)."""
    async with sm.begin() as session:
        if make_url(db_url).get_backend_name() == "postgresql":
            await session.execute(text("LOCK TABLE collection_jobs IN EXCLUSIVE MODE"))
        else:
            await session.execute(text("DELETE FROM collection_jobs WHERE id < 0"))
        yield


def creates(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["method"] == "POST" and r["path"].endswith("/runs")]


async def test_a_create_is_answered_only_once_its_job_is_stored(
    upstream: FakeUpstream, start_proxy: Any, db_url: str, sm: Any
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url, hold_timeout=10.0))
    async with client_for(proxy, KEY) as client:
        assistant = await make_assistant(client)
        thread = await client.beta.threads.create(messages=MESSAGES)
        upstream.create_pause = 0.5  # time to lock the jobs once its intent is written
        create = asyncio.create_task(
            client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        )
        await wait_for(lambda: creates(upstream), 10)
        async with jobs_locked(sm, db_url):
            await wait_for(lambda: upstream.creates_answered, 10)
            await asyncio.sleep(0.3)  # the upstream has answered; its job cannot be written
            assert not create.done()
            unlocked = time.monotonic()
        run = await create
        answered = time.monotonic()
        # Read as the client gets the answer: the job is there already.
        assert [j["object_id"] for j in await jobs(sm, run.id)] == [run.id]
    assert answered >= unlocked


async def test_with_the_database_unreachable_the_answer_comes_at_hold_timeout(
    upstream: FakeUpstream, start_proxy: Any, db_url: str, sm: Any
) -> None:
    # PostgreSQL: nothing listens where the proxy looks for it. SQLite has no server: its one
    # write lock, held throughout, is what a database that cannot take a write looks like.
    postgres = make_url(db_url).get_backend_name() == "postgresql"
    url = "postgresql+asyncpg://postgres@127.0.0.1:9/none" if postgres else db_url
    proxy = await start_proxy(settings_for(upstream, url, hold_timeout=0.5))
    async with client_for(proxy, KEY) as client:
        assistant = await make_assistant(client)
        thread = await client.beta.threads.create(messages=MESSAGES)
        async with contextlib.AsyncExitStack() as stack:
            if not postgres:
                await stack.enter_async_context(jobs_locked(sm, db_url))
            started = time.monotonic()
            run = await client.beta.threads.runs.create(
                thread_id=thread.id, assistant_id=assistant.id
            )
            took = time.monotonic() - started
    assert run.status == "queued"
    # Its intent's write waited at most hold_timeout too, before the create was forwarded.
    assert 0.5 <= took < 0.5 * 2 + 2.0, took
    assert proxy.app[FORWARDER].holds.timed_out == 1


async def intents(sm: Any) -> list[Any]:
    async with sm() as session:
        return list((await session.execute(select(RunIntent.thread_id))).scalars())


async def test_a_create_whose_answer_died_with_its_replica_is_recovered_by_the_next(
    upstream: FakeUpstream, db_url: str, sm: Any, tmp_path: Path
) -> None:
    upstream.wall_clock = True  # as the API's: a recovery compares created_at with the intent
    env = {"USAGE_PROXY_KEY_SECRET": SECRET, "USAGE_PROXY_COLLECTOR_POLL_INTERVAL": "0.1"}
    first = ProxyProcess("a", upstream.url, db_url, tmp_path / "logs", env=env)
    second = ProxyProcess("b", upstream.url, db_url, tmp_path / "logs", env=env)
    await first.start()
    try:
        sdk = openai.AsyncOpenAI(api_key=KEY, base_url=first.url + "/v1", max_retries=0)
        async with sdk:
            assistant = await make_assistant(sdk)
            thread = await sdk.beta.threads.create(messages=MESSAGES)
            upstream.create_pause = 30.0  # the run is created; its answer waits
            create = asyncio.create_task(
                sdk.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
            )
            await wait_for(
                lambda: [r for r in upstream.runs.values() if r["thread_id"] == thread.id]
            )
            assert await intents(sm) == [thread.id]
            await first.kill()
            with pytest.raises(openai.APIConnectionError):
                await create
        [run_id] = [r["id"] for r in upstream.runs.values() if r["thread_id"] == thread.id]
        upstream.create_pause = 0.0
        await second.start()
        sdk = openai.AsyncOpenAI(api_key=KEY, base_url=second.url + "/v1", max_retries=0)
        async with sdk:
            await sdk.models.list()  # the key, in the second replica's memory
        row = await one_row(sm, run_id, timeout=60)
        assert row["status"] == "completed"
        assert await intents(sm) == []
    finally:
        await asyncio.gather(first.stop(), second.stop())


async def test_a_create_that_made_no_run_leaves_no_intent(
    upstream: FakeUpstream, start_proxy: Any, db_url: str, sm: Any
) -> None:
    upstream.require_beta = True  # the create is refused: no run
    # A long lease: the collector would recover a live worker's intent after one.
    proxy = await start_proxy(settings_for(upstream, db_url, collector_lease=120.0))
    sent = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.base_url + "/threads/thread_x/runs", json={"assistant_id": "a"}, headers=sent
        ) as answer,
    ):
        assert answer.status == 400
    assert creates(upstream)  # forwarded, so it had its intent
    await wait_for(lambda: _no_intents(sm), 10)


async def _no_intents(sm: Any) -> bool:
    return await intents(sm) == []
