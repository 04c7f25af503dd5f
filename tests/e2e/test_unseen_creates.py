"""A create-and-run lost to a SIGKILL is never silent (proxy/accounting/sources/assistants/
unseen.py), end to end with the openai SDK, real `usage-proxy serve` processes and a real fake
upstream, on both backends:

- killed after the upstream created the run and before its answer was relayed: after a restart,
  the create is counted unseen (health, metric, one WARNING line, `usage-proxy report`);
- killed after the answer reached the client, before the run's job was stored: the client's
  poll through the restarted replica records the run once and matches the create, which is
  never counted unseen."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from sqlalchemy import select

from proxy.db import unseen_creates
from proxy.db.models import RunIntent
from tests.e2e.conftest import client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import (
    KEY,
    SECRET,
    make_assistant,
    one_row,
    settings_for,
    usage_rows,
)
from tests.e2e.test_held_creates import jobs_locked
from tests.fault.harness import ProxyProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ADMIN = "unseen-admin-token-0123456789abcdef"
ENV = {
    "USAGE_PROXY_KEY_SECRET": SECRET,
    "USAGE_PROXY_COLLECTOR_POLL_INTERVAL": "0.1",
    "USAGE_PROXY_UNSEEN_AFTER": "1",
    "USAGE_PROXY_ADMIN_TOKEN": ADMIN,
}
THREAD = {"messages": [{"role": "user", "content": "2+2?"}]}


async def intents(sm: Any) -> list[tuple[str | None, str | None]]:
    async with sm() as session:
        query = select(RunIntent.thread_id, RunIntent.assistant_id)
        return [tuple(r) for r in (await session.execute(query)).all()]


async def no_intents(sm: Any) -> bool:
    return await intents(sm) == []


async def get(proxy: ProxyProcess, path: str, **headers: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(proxy.url + path, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await (r.json() if r.content_type == "application/json" else r.text())


async def unseen_in_health(proxy: ProxyProcess) -> int | None:
    return (await get(proxy, "/_proxy/health"))["collector"]["unseen_creates"]


def sdk_for(proxy: ProxyProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=proxy.url + "/v1", max_retries=0)


async def created(upstream: FakeUpstream, before: set[str]) -> list[str]:
    return [r for r in upstream.runs if r not in before]


async def test_a_create_and_run_killed_before_its_answer_is_counted_unseen(
    upstream: FakeUpstream, db_url: str, sm: Any, tmp_path: Path
) -> None:
    upstream.wall_clock = True
    first = ProxyProcess("a", upstream.url, db_url, tmp_path / "logs", env=ENV)
    second = ProxyProcess("b", upstream.url, db_url, tmp_path / "logs", env=ENV)
    await first.start()
    try:
        async with sdk_for(first) as sdk:
            assistant = await make_assistant(sdk)
            upstream.create_and_run_gate = asyncio.Event()  # the run is created; its answer waits
            create = asyncio.create_task(
                sdk.beta.threads.create_and_run(assistant_id=assistant.id, thread=THREAD)
            )
            [run_id] = await wait_for(lambda: created(upstream, set()))
            assert await intents(sm) == [(None, assistant.id)]
            await first.kill()
            with pytest.raises(openai.APIConnectionError):
                await create
            upstream.create_and_run_gate.set()
        await second.start()
        assert await wait_for(lambda: unseen_in_health(second), 30) == 1
        log = second.stderr_path.read_text()
        [line] = [ln for ln in log.splitlines() if "may be unrecorded" in ln]
        assert "WARNING" in line and assistant.id in line and KEY not in line
        metrics = await get(second, "/_proxy/metrics", Authorization=f"Bearer {ADMIN}")
        assert 'usage_proxy_runs_unseen_total{team="unassigned"} 1.0' in metrics, metrics
        assert await usage_rows(sm, run_id) == []  # lost: what the count is for
    finally:
        await asyncio.gather(first.stop(), second.stop())
    report = subprocess.run(
        [sys.executable, "-m", "proxy", "report", "--database-url", db_url],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("USAGE_PROXY_")},
        check=False,
    )
    assert report.returncode == 0, report.stderr
    assert "1 create-and-run(s) may be unrecorded since" in report.stderr, report.stderr


async def test_a_create_and_run_answered_then_polled_elsewhere_is_recorded_and_not_unseen(
    upstream: FakeUpstream, db_url: str, sm: Any, tmp_path: Path
) -> None:
    upstream.wall_clock = True
    # A client polls long before `unseen_after`, as a real one does (900 s by default).
    env = {**ENV, "USAGE_PROXY_UNSEEN_AFTER": "60"}
    first = ProxyProcess("a", upstream.url, db_url, tmp_path / "logs", env=env)
    second = ProxyProcess("b", upstream.url, db_url, tmp_path / "logs", env=env)
    await first.start()
    try:
        async with sdk_for(first) as sdk:
            assistant = await make_assistant(sdk)
            upstream.create_and_run_gate = gate = asyncio.Event()
            create = asyncio.create_task(
                sdk.beta.threads.create_and_run(assistant_id=assistant.id, thread=THREAD)
            )
            await wait_for(lambda: created(upstream, set()))
            assert await intents(sm) == [(None, assistant.id)]
            # The answer reaches the client; its job cannot be written before the kill.
            async with jobs_locked(sm, db_url):
                gate.set()
                run = await create
                await first.kill()
        await second.start()
        async with sdk_for(second) as sdk:
            while run.status not in ("completed", "failed", "cancelled", "expired"):
                run = await sdk.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
        # The poll's job matched the create's intent, in its own transaction: gone, it can
        # never be counted unseen.
        await wait_for(lambda: no_intents(sm), 30)
        row = await one_row(sm, run.id, timeout=60)
        assert row["status"] == "completed"
        assert await unseen_in_health(second) == 0
        assert "may be unrecorded" not in second.stderr_path.read_text()
    finally:
        await asyncio.gather(first.stop(), second.stop())


async def create_and_run_plain(sdk: openai.AsyncOpenAI, assistant: str) -> str:
    return (await sdk.beta.threads.create_and_run(assistant_id=assistant, thread=THREAD)).id


async def create_and_run_streamed(sdk: openai.AsyncOpenAI, assistant: str) -> str:
    async with sdk.beta.threads.create_and_run_stream(
        assistant_id=assistant, thread=THREAD
    ) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
    return run.id


@pytest.mark.parametrize(
    "create", [create_and_run_plain, create_and_run_streamed], ids=lambda f: f.__name__
)
async def test_a_create_and_runs_intent_goes_with_its_job(
    upstream: FakeUpstream, start_proxy: Any, db_url: str, sm: Any, create: Any
) -> None:
    """The intent of a create-and-run that lives is deleted by its run's job (found by the
    exchange, streamed or not), and that of one that made no run when its exchange ends."""
    # unseen_after 0: a live worker's intent is never counted, however old.
    proxy = await start_proxy(settings_for(upstream, db_url, unseen_after=0.0))
    async with client_for(proxy, KEY) as sdk:
        assistant = await make_assistant(sdk)
        run_id = await create(sdk, assistant.id)
        await one_row(sm, run_id)
        await wait_for(lambda: no_intents(sm), 10)
        upstream.require_beta = True  # refused: no run
        with pytest.raises(openai.BadRequestError):
            await sdk.beta.threads.create_and_run(
                assistant_id=assistant.id, thread=THREAD, extra_headers={"OpenAI-Beta": ""}
            )
        await wait_for(lambda: no_intents(sm), 10)
    assert len([r for r in upstream.requests if r["path"].endswith("/threads/runs")]) == 2
    assert await unseen_creates.unseen(sm) == unseen_creates.Unseen(0, None)
