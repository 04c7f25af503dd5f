"""Assistants runs, end to end (issues #3, #5, #7): the official openai SDK drives the fake
upstream through an in-process proxy, and the usage table is read back from the database.

Every test runs on both backends (the `db_url` fixture). No fixed sleeps: a test waits for what
it expects with `wait_for`, and proves an absence with a sentinel: a later run recorded by the
same proxy, so that what was observed before it has been handled (observers are called in
order) and the collector has been round its loop since.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import openai
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.estimate.basis import Basis
from proxy.accounting.estimate.runs import RunEstimate, default_table, estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model, get_encoding
from proxy.accounting.pricing import Usage, cost_of, load_price_table
from proxy.db import mappings
from proxy.db.engine import reading
from proxy.db.models import Base, CollectionJob, UsageRecord
from proxy.keys import fingerprint, hint
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.fake_upstream import ANSWER, CODE_INPUT, FakeUpstream, without_result_content
from tests.fake_keys import fake_key

KEY = fake_key("default", "1234")
OTHER_KEY = fake_key("assistants", "5678")
SECRET = "e2e-key-secret"
QUESTION = "Write Python code that calculates 2+2 and give me the output."
AZURE_VERSION = "2024-05-01-preview"

# The SDK marks every Assistants method deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

StartProxy = Callable[..., Awaitable[RunningProxy]]
Outage = Callable[[], Awaitable[None]]
SM = async_sessionmaker[AsyncSession]


# --- helpers ---------------------------------------------------------------------------------


def settings_for(fake: FakeUpstream, db_url: str, **changes: Any) -> Settings:
    return Settings(
        upstream=fake.url,
        database_url=db_url,
        key_secret=SECRET,
        collector_poll_interval=0.05,
        collector_retry_base=0.05,
        collector_max_backoff=0.5,
        **changes,
    )


async def usage_rows(sm: SM, run_id: str | None = None) -> list[dict[str, Any]]:
    table = UsageRecord.__table__
    stmt = select(table).order_by(table.c.id)
    if run_id is not None:
        stmt = stmt.where(table.c.object_id == run_id)
    async with reading(sm) as session:
        return [dict(r) for r in (await session.execute(stmt)).mappings()]


async def jobs(sm: SM, run_id: str | None = None) -> list[dict[str, Any]]:
    table = CollectionJob.__table__
    stmt = select(table)
    if run_id is not None:
        stmt = stmt.where(table.c.object_id == run_id)
    async with reading(sm) as session:
        return [dict(r) for r in (await session.execute(stmt)).mappings()]


# Generous: under `nice` beside other work, a collection (and the first one's tokenizer load)
# can take many seconds; a condition that holds ends the wait at once anyway.
async def one_row(sm: SM, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    rows = await wait_for(lambda: usage_rows(sm, run_id), timeout)
    assert len(rows) == 1, rows
    return rows[0]


async def make_assistant(client: openai.AsyncOpenAI, **plan: str) -> Any:
    return await client.beta.assistants.create(
        model="gpt-4o", name="Test1", tools=[{"type": "code_interpreter"}], metadata=plan
    )


async def start_run(client: openai.AsyncOpenAI, thread_id: str | None = None, **plan: str) -> Any:
    """A run of a new assistant planned by `plan`, in a new seed thread unless given one."""
    assistant = await make_assistant(client, **plan)
    if thread_id is None:
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
        thread_id = thread.id
    return await client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id)


async def finished_run(client: openai.AsyncOpenAI, thread_id: str | None = None, **plan: str):
    run = await start_run(client, thread_id, **plan)
    return await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)


def fake_estimate(fake: FakeUpstream, run_id: str) -> RunEstimate:
    """The estimate from the fake's own objects: what the proxy should compute."""
    run = {k: v for k, v in fake.runs[run_id].items() if not k.startswith("_")}
    steps, messages = fake.steps[run_id], fake.messages[run["thread_id"]]
    return estimate_run(run, steps, messages, counter_for_model(run["model"]))


def fetch_requests(fake: FakeUpstream, run_id: str, kind: str = "steps") -> list[dict[str, Any]]:
    thread_id = fake.runs[run_id]["thread_id"]
    suffix = f"/runs/{run_id}/steps" if kind == "steps" else f"/threads/{thread_id}/messages"
    return [r for r in fake.requests if r["method"] == "GET" and r["path"].endswith(suffix)]


def ledger(fake: FakeUpstream, run_id: str) -> list[tuple[str, str, str]]:
    """Successful steps and messages fetches of the run (and its thread)."""
    thread_id = fake.runs[run_id]["thread_id"]
    return [f for f in fake.fetches if f[1] in (run_id, thread_id)]


def seed_expectation() -> tuple[int, int]:
    """The seed's method by hand, with the real tokenizer (gpt-4o: o200k_base) and the shipped
    gpt-4o constants."""
    c = default_table().for_model("gpt-4o")

    def n(text: str) -> int:
        return len(get_encoding("o200k_base").encode(text))

    first_prompt = c["base_prompt"] + c["code_interpreter_tool"] + 4 + n(QUESTION)
    # Two steps, two completions: the code interpreter call, then the answer.
    call = c["code_interpreter_prompt"] + n(CODE_INPUT) + c["per_code_interpreter_output"] + n("4")
    prompt = first_prompt + (first_prompt + call)
    completion = (6 + n(CODE_INPUT)) + (2 + n(ANSWER))
    return prompt, completion


async def sentinel(client: openai.AsyncOpenAI, sm: SM) -> dict[str, Any]:
    """Run and record one more run through the same proxy: everything observed before it has
    been handed to the database, and its collector has been round its loop."""
    run = await finished_run(client)
    return await one_row(sm, run.id)


@pytest.fixture(autouse=True)
def _setup(db_url: str, upstream: FakeUpstream) -> None:
    """The database is set up before `start_proxy`, so torn down after it: dropping a test
    schema while a proxy (paused with the event loop) holds a transaction in it would wait
    forever. The upstream insists on the Assistants beta header, as the API does."""
    upstream.require_beta = True


@pytest.fixture
async def proxy(upstream: FakeUpstream, start_proxy: StartProxy, db_url: str) -> RunningProxy:
    return await start_proxy(settings_for(upstream, db_url))


@pytest.fixture
async def client(proxy: RunningProxy) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client_for(proxy, KEY) as c:
        yield c


# --- estimates and reported usage ------------------------------------------------------------


async def test_seed_run_is_estimated_exactly(upstream, client, sm) -> None:
    run = await start_run(client, usage="no")
    polled = await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
    assert polled.status == "completed" and polled.usage is None

    row = await one_row(sm, run.id)
    prompt, completion = seed_expectation()
    assert fake_estimate(upstream, run.id).prompt_tokens == prompt
    assert fake_estimate(upstream, run.id).completion_tokens == completion
    completed_at = dt.datetime.fromtimestamp(upstream.runs[run.id]["completed_at"], dt.UTC)
    prices = load_price_table()
    tokens = cost_of(prices, "gpt-4o", completed_at, Usage(prompt, 0, completion))
    session_price = prices.tool_price("code_interpreter_session", completed_at)
    assert session_price is not None
    assert row | {"id": None, "recorded_at": None} == {
        "id": None,
        "kind": "assistants.run",
        "object_id": run.id,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "conversation_id": None,
        "prompt_id": None,
        "model": "gpt-4o",
        "status": "completed",
        "occurred_at": completed_at,
        "recorded_at": None,
        "key_fingerprint": fingerprint(KEY, SECRET.encode()),
        "key_hint": "sk-...1234",
        "team": "unassigned",
        "tag": None,
        "project": None,
        "organization": None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "usage_source": "estimated",
        "estimated_prompt_tokens": prompt,
        "estimated_completion_tokens": completion,
        "estimator": default_table().version,
        "estimate_basis": row["estimate_basis"],
        "code_interpreter_calls": 1,
        "code_interpreter_sessions": 1,
        "file_search_calls": 0,
        "web_search_calls": 0,
        "web_search_preview_calls": 0,
        "function_calls": 0,
        "deployment": None,
        "cost_usd": tokens.total + session_price,
    }
    # The row keeps the bases its estimate was made of: they give the same numbers again.
    bases = json.loads(row["estimate_basis"])
    constants = default_table().for_model("gpt-4o")
    assert Basis.from_json(bases["prompt"]).value(constants) == prompt
    assert Basis.from_json(bases["completion"]).value(constants) == completion
    assert completed_at <= row["recorded_at"] <= dt.datetime.now(dt.UTC)
    # One fetch of each list, with the client's key; messages oldest first, 100 a page.
    assert sorted(ledger(upstream, run.id)) == [
        ("messages", run.thread_id, KEY),
        ("steps", run.id, KEY),
    ]
    (messages,) = fetch_requests(upstream, run.id, "messages")
    assert messages["query"] == {"limit": "100", "order": "asc"}
    (steps,) = fetch_requests(upstream, run.id, "steps")
    assert steps["query"]["limit"] == "100"
    assert steps["headers"]["Authorization"] == f"Bearer {KEY}"
    assert steps["headers"]["OpenAI-Beta"] == "assistants=v2"
    await wait_for(lambda: _no_jobs(sm))  # completed just after the row was written


async def test_reported_usage_wins_and_the_estimate_is_kept(upstream, client, sm) -> None:
    run = await finished_run(client, usage="yes")
    assert run.usage is not None

    row = await one_row(sm, run.id)
    estimate = fake_estimate(upstream, run.id)
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == (
        "reported",
        300,
        47,
    )
    assert row["total_tokens"] == 347
    assert (row["estimated_prompt_tokens"], row["estimated_completion_tokens"]) == (
        estimate.prompt_tokens,
        estimate.completion_tokens,
    )
    assert row["code_interpreter_calls"] == 1


async def test_steps_and_messages_are_fetched_page_by_page(upstream, client, sm) -> None:
    upstream.steps_page_size = 1
    upstream.messages_page_size = 1
    run = await finished_run(client, usage="no", code_calls="3")

    row = await one_row(sm, run.id)
    estimate = fake_estimate(upstream, run.id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        estimate.prompt_tokens,
        estimate.completion_tokens,
    )
    assert row["code_interpreter_calls"] == 3
    steps = fetch_requests(upstream, run.id, "steps")
    assert len(steps) == 4  # three code interpreter steps and the message creation, one a page
    assert [s["query"].get("after") for s in steps] == [
        None,
        *(s["id"] for s in sorted(upstream.steps[run.id], key=lambda s: s["created_at"])[:3]),
    ]
    assert len(fetch_requests(upstream, run.id, "messages")) == 2  # question and answer


# --- where runs are seen ---------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled", "expired", "incomplete"])
async def test_every_terminal_status_is_recorded(upstream, client, sm, outcome) -> None:
    run = await finished_run(client, outcome=outcome, usage="no")
    assert run.status == outcome

    row = await one_row(sm, run.id)
    assert row["status"] == outcome
    assert row["usage_source"] == "estimated"
    finished = {"failed": "failed_at", "cancelled": "cancelled_at", "expired": "expired_at"}
    when = upstream.runs[run.id][finished.get(outcome, "completed_at")]
    assert row["occurred_at"] == dt.datetime.fromtimestamp(when, dt.UTC)


async def test_a_run_cancelled_through_the_sdk(upstream, client, sm) -> None:
    run = await start_run(client, usage="no")
    cancelling = await client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert cancelling.status == "cancelling"
    polled = await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
    assert polled.status == "cancelled"

    row = await one_row(sm, run.id)
    assert (row["status"], row["code_interpreter_calls"]) == ("cancelled", 0)


async def test_compressed_run_bodies(upstream, client, sm) -> None:
    upstream.gzip_json = True
    run = await start_run(client, usage="no")
    polled = await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
    assert polled.status == "completed"
    retrieves = [r for r in upstream.requests if r["path"].endswith(f"/runs/{run.id}")]
    assert "gzip" in retrieves[-1]["headers"]["Accept-Encoding"]

    row = await one_row(sm, run.id)
    assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens


async def test_create_and_poll_helpers(upstream, client, sm) -> None:
    assistant = await make_assistant(client, usage="no")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id
    )
    both = await client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": QUESTION}]}
    )
    assert (run.status, both.status) == ("completed", "completed")

    for seen in (run, both):
        row = await one_row(sm, seen.id)
        assert row["thread_id"] == seen.thread_id
        assert row["prompt_tokens"] == fake_estimate(upstream, seen.id).prompt_tokens


async def _stream_create(client, assistant, thread_id: str) -> None:
    async with client.beta.threads.runs.stream(
        thread_id=thread_id, assistant_id=assistant.id
    ) as stream:
        await stream.until_done()


async def _stream_create_thread_and_run(client, assistant, thread_id: str) -> None:
    async with client.beta.threads.create_and_run_stream(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": QUESTION}]}
    ) as stream:
        await stream.until_done()


async def _stream_raw(client, assistant, thread_id: str) -> None:
    events = await client.beta.threads.runs.create(
        thread_id=thread_id, assistant_id=assistant.id, stream=True
    )
    async for _ in events:
        pass


@pytest.mark.parametrize(
    "stream", [_stream_create, _stream_create_thread_and_run, _stream_raw], ids=lambda f: f.__name__
)
async def test_streamed_runs_are_seen_in_their_events(upstream, client, sm, stream) -> None:
    assistant = await make_assistant(client, usage="no")
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    await stream(client, assistant, thread.id)

    (run_id,) = [rid for rid, r in upstream.runs.items() if r["assistant_id"] == assistant.id]
    row = await one_row(sm, run_id)
    assert row["usage_source"] == "estimated"
    assert row["prompt_tokens"] == fake_estimate(upstream, run_id).prompt_tokens
    # Never retrieved as JSON: the terminal event alone opened the job.
    assert not [r for r in upstream.requests if r["path"].endswith(f"/runs/{run_id}")]


async def test_requires_action_is_not_terminal(upstream, client, sm) -> None:
    run = await start_run(client, usage="no", code_calls="0", requires_action="yes")
    waiting = await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
    assert waiting.status == "requires_action"
    await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)

    await sentinel(client, sm)
    # Followed from its creation, not recorded: it has not ended.
    assert await usage_rows(sm, run.id) == []
    assert [j["in_progress"] for j in await jobs(sm, run.id)] == [True]

    (call,) = waiting.required_action.submit_tool_outputs.tool_calls
    done = await client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": call.id, "output": "22C"}],
    )
    assert done.status == "completed"
    row = await one_row(sm, run.id)
    assert (row["function_calls"], row["code_interpreter_calls"]) == (1, 0)
    assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens


async def test_submit_tool_outputs_stream(upstream, client, sm) -> None:
    run = await start_run(client, usage="no", code_calls="0", requires_action="yes")
    waiting = await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
    (call,) = waiting.required_action.submit_tool_outputs.tool_calls
    async with client.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": call.id, "output": "x"}],
    ) as stream:
        await stream.until_done()

    row = await one_row(sm, run.id)
    assert (row["status"], row["function_calls"]) == ("completed", 1)


async def _seen_in_retrieve(client, run) -> None:
    await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)


async def _seen_in_list(client, run) -> None:
    page = await client.beta.threads.runs.list(thread_id=run.thread_id)
    assert run.id in [r.id for r in page.data]


async def _seen_in_modify(client, run) -> None:
    await client.beta.threads.runs.update(run.id, thread_id=run.thread_id, metadata={"a": "b"})


@pytest.mark.parametrize(
    "see", [_seen_in_retrieve, _seen_in_list, _seen_in_modify], ids=lambda f: f.__name__
)
async def test_runs_finished_elsewhere_are_seen_on_any_endpoint(upstream, client, sm, see) -> None:
    # The runs finish behind the proxy's back (straight at the upstream); the proxy first sees
    # them, terminal, in the body of `see`.
    async with openai.AsyncOpenAI(api_key=KEY, base_url=upstream.url + "/v1") as direct:
        thread = await direct.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
        finished = [
            await finished_run(direct, thread.id, usage="no", outcome=outcome)
            for outcome in ("completed", "failed")
        ]
        pending = await start_run(direct, thread.id, usage="no")
    for run in finished:
        await see(client, run)

    rows = [await one_row(sm, run.id) for run in finished]
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert {r["key_hint"] for r in rows} == {"sk-...1234"}
    await sentinel(client, sm)
    assert await usage_rows(sm, pending.id) == []


async def test_concurrent_pollers_through_two_proxies_record_once(
    upstream, start_proxy, db_url, sm
) -> None:
    upstream.polls_to_complete = 25
    first = await start_proxy(settings_for(upstream, db_url))
    second = await start_proxy(settings_for(upstream, db_url))
    async with client_for(first, KEY) as a, client_for(second, KEY) as b:
        run = await start_run(a, usage="no")
        pollers = [
            (a if i % 2 else b).beta.threads.runs.poll(run.id, thread_id=run.thread_id)
            for i in range(10)
        ]
        listers = [c.beta.threads.runs.list(thread_id=run.thread_id) for c in (a, b)]
        results = await asyncio.gather(*pollers, *listers)
        assert {r.status for r in results[:10]} == {"completed"}
        # Listed once more, finished, through both.
        await asyncio.gather(*(c.beta.threads.runs.list(run.thread_id) for c in (a, b)))

        await one_row(sm, run.id)
        await sentinel(a, sm)
        await sentinel(b, sm)
    assert len(await usage_rows(sm, run.id)) == 1
    assert sorted(ledger(upstream, run.id)) == [
        ("messages", run.thread_id, KEY),
        ("steps", run.id, KEY),
    ]
    await wait_for(lambda: _no_jobs(sm))


async def test_azure_paths_and_api_key(upstream, proxy, sm) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=proxy.url, api_version=AZURE_VERSION, api_key=KEY, max_retries=0
    ) as azure:
        run = await finished_run(azure, usage="no")
    assert run.status == "completed"

    row = await one_row(sm, run.id)
    assert row["key_hint"] == "sk-...1234"
    assert row["key_fingerprint"] == fingerprint(KEY, SECRET.encode())
    assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens
    fetched = fetch_requests(upstream, run.id, "steps") + fetch_requests(
        upstream, run.id, "messages"
    )
    assert len(fetched) == 2
    for request in fetched:
        assert request["path"].startswith("/openai/threads/")
        assert request["query"]["api-version"] == AZURE_VERSION
        assert request["headers"]["api-key"] == KEY
        assert "Authorization" not in request["headers"]


# --- failures --------------------------------------------------------------------------------


async def test_failing_fetches_are_retried_and_honour_retry_after(
    upstream, client, sm, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    # Each attempt fetches steps and messages together: the first two attempts fail.
    upstream.faults.fetch_statuses = [429, 429, 500, 500]
    upstream.faults.retry_after = "0.3"
    run = await finished_run(client, usage="no")

    row = await one_row(sm, run.id)
    assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens
    requests = fetch_requests(upstream, run.id, "steps") + fetch_requests(
        upstream, run.id, "messages"
    )
    assert len(requests) == 6  # 4 refused, then one of each
    times = sorted(r["at"] for r in requests)
    assert times[-1] - times[0] >= 0.55  # two waits of at least retry-after
    assert sorted(ledger(upstream, run.id)) == [
        ("messages", run.thread_id, KEY),
        ("steps", run.id, KEY),
    ]
    retries = [r for r in caplog.records if "will retry" in r.getMessage()]
    assert len(retries) == 2 and all(run.id in r.getMessage() for r in retries)
    await wait_for(lambda: _no_jobs(sm))


@pytest.mark.parametrize("fault", ["timeout", "dropped connection"])
async def test_fetch_timeouts_and_dropped_connections_are_retried(
    upstream, start_proxy, db_url, sm, caplog, fault
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    proxy = await start_proxy(settings_for(upstream, db_url, collector_fetch_timeout=0.2))
    if fault == "timeout":
        # Not a gate opened later: a fetch the collector gave up on would then still be
        # answered, and counted, whenever its cancellation had not reached the fake yet.
        upstream.faults.hang_fetches = 2  # the first attempt fetches steps and messages at once
    else:
        # aiohttp itself retries a request once on a dropped keep-alive connection.
        upstream.faults.drop_connections = 4
    async with client_for(proxy, KEY) as client:
        run = await finished_run(client, usage="no")
        expected = "timed out" if fault == "timeout" else "failed: "
        await wait_for(
            lambda: any(
                expected in r.getMessage() and "will retry" in r.getMessage()
                for r in caplog.records
            ),
            timeout=30,
        )
        row = await one_row(sm, run.id)
    assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens
    assert sorted(ledger(upstream, run.id)) == [
        ("messages", run.thread_id, KEY),
        ("steps", run.id, KEY),
    ]


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_refused_fetch_records_the_run_alone_without_retrying(
    upstream, client, sm, caplog, status
) -> None:
    # A revoked key, or a thread deleted since: asking again cannot help, and a run retried
    # forever would never be billed. Both lists of the first attempt are refused.
    caplog.set_level(logging.INFO, logger="proxy")
    upstream.faults.fetch_statuses = [status, status]
    run = await finished_run(client, usage="no")

    row = await one_row(sm, run.id)
    fake_run = {k: v for k, v in upstream.runs[run.id].items() if not k.startswith("_")}
    alone = estimate_run(fake_run, [], [], counter_for_model("gpt-4o"))
    assert alone != fake_estimate(upstream, run.id)  # a retry would show in the row
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == (
        "estimated",
        alone.prompt_tokens,
        alone.completion_tokens,
    )
    assert (row["code_interpreter_calls"], row["code_interpreter_sessions"]) == (0, 0)
    assert row["cost_usd"] == 0
    # One attempt: its two refused requests, and the job gone with the row's transaction, so
    # none can follow.
    requests = fetch_requests(upstream, run.id, "steps") + fetch_requests(
        upstream, run.id, "messages"
    )
    assert len(requests) == 2 and ledger(upstream, run.id) == []
    assert await jobs(sm, run.id) == []
    messages = [r.getMessage() for r in caplog.records if run.id in r.getMessage()]
    assert [m for m in messages if "will retry" in m] == []
    assert len([m for m in messages if f"answered {status}; recording the run alone" in m]) == 1


async def test_restart_with_a_pending_job_waits_for_its_key(
    upstream, start_proxy, db_url, sm
) -> None:
    upstream.faults.fetch_statuses = [500] * 100_000
    first = await start_proxy(settings_for(upstream, db_url))
    async with client_for(first, KEY) as a:
        run = await finished_run(a, usage="no")
    await wait_for(lambda: _attempted(sm, run.id))
    await first.runner.cleanup()
    (job,) = await jobs(sm, run.id)
    assert job["claimed_by"] is None  # given back at shutdown, not stranded until its lease
    upstream.faults.fetch_statuses = []

    second = await start_proxy(settings_for(upstream, db_url))
    async with client_for(second, OTHER_KEY) as other:
        await sentinel(other, sm)
    assert await usage_rows(sm, run.id) == []
    assert ledger(upstream, run.id) == []

    async with client_for(second, KEY) as b:
        await b.models.list()  # any request: the key is back in memory
        row = await one_row(sm, run.id)
        assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens
        assert sorted(ledger(upstream, run.id)) == [
            ("messages", run.thread_id, KEY),
            ("steps", run.id, KEY),
        ]
        # Seen again after the restart: still one row, and not collected a second time.
        await b.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
        await sentinel(b, sm)
        await wait_for(lambda: _no_jobs(sm))
    assert len(await usage_rows(sm, run.id)) == 1
    assert len(ledger(upstream, run.id)) == 2


async def test_shutdown_mid_collection_gives_every_run_back(
    upstream, start_proxy, db_url, sm
) -> None:
    gate = upstream.faults.fetch_gate = asyncio.Event()  # collections hang in their first fetch
    first = await start_proxy(settings_for(upstream, db_url))
    async with client_for(first, KEY) as a:
        runs = [await finished_run(a, usage="no") for _ in range(6)]
        await wait_for(lambda: any(r["path"].endswith("/steps") for r in upstream.requests))
    await first.runner.cleanup()
    # Every run is still a job (the outbox was written before shutdown ended), and none is
    # left claimed: the jobs held, fetched or queued, were given back.
    left = await jobs(sm)
    assert sorted(j["object_id"] for j in left) == sorted(run.id for run in runs)
    assert {(j["claimed_by"], j["attempts"]) for j in left} == {(None, 0)}
    assert await usage_rows(sm) == []
    upstream.faults.fetch_gate = None
    gate.set()

    second = await start_proxy(settings_for(upstream, db_url))
    async with client_for(second, KEY) as b:
        await b.models.list()  # any request: the key is back in memory
        for run in runs:
            row = await one_row(sm, run.id)
            assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens
    await wait_for(lambda: _no_jobs(sm))


async def _attempted(sm: SM, run_id: str) -> bool:
    return any(j["attempts"] >= 1 for j in await jobs(sm, run_id))


async def _no_jobs(sm: SM) -> bool:
    return await jobs(sm) == []


async def test_reported_usage_is_recorded_without_the_key_after_the_wait(
    upstream, start_proxy, db_url, sm
) -> None:
    upstream.faults.fetch_statuses = [500] * 100_000
    first = await start_proxy(settings_for(upstream, db_url))
    async with client_for(first, KEY) as a:
        run = await finished_run(a, usage="yes")
    await wait_for(lambda: _attempted(sm, run.id))
    await first.runner.cleanup()
    (job,) = await jobs(sm, run.id)
    before = len(upstream.requests)

    await start_proxy(settings_for(upstream, db_url, reported_usage_wait=1.0))
    row = await one_row(sm, run.id)
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == (
        "reported",
        300,
        47,
    )
    assert row["estimated_prompt_tokens"] is None
    assert row["key_hint"] == "sk-...1234"
    assert row["recorded_at"] - job["created_at"] >= dt.timedelta(seconds=1.0)
    assert upstream.requests[before:] == []  # recorded without a fetch: no key to fetch with
    await wait_for(lambda: _no_jobs(sm))


class _Relay:
    """A TCP relay to PostgreSQL that the test can cut (every connection dropped, new ones
    refused) and restore: a database outage for one proxy, with the shared server left alone."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._up = True
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.refused = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self._up = False
        for writer in list(self._open):
            writer.transport.abort()

    async def restore(self) -> None:
        self._up = True

    async def close(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._open -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@contextlib.asynccontextmanager
async def _outage(db_url: str) -> AsyncIterator[tuple[str, Outage, Outage]]:
    """(the URL the proxy should use, cut, restore). PostgreSQL: a relay the test controls.
    SQLite: another connection holding the write lock (writes fail after busy_timeout); taken
    on a thread, since the proxy on this loop may have to finish a transaction first."""
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":
        relay = _Relay(url.host or "127.0.0.1", url.port or 5432)
        port = await relay.start()
        try:
            yield url.set(port=port).render_as_string(False), relay.cut, relay.restore
        finally:
            await relay.close()
        return
    lock = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)

    async def run(sql: str) -> None:
        await asyncio.to_thread(lock.execute, sql)

    try:
        yield db_url, lambda: run("BEGIN EXCLUSIVE"), lambda: run("ROLLBACK")
    finally:
        if lock.in_transaction:
            await run("ROLLBACK")
        lock.close()


async def test_database_outage_keeps_proxying_and_loses_nothing(
    upstream, start_proxy, db_url, sm, caplog, db_backend
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    async with _outage(db_url) as (url, cut, restore):
        proxy = await start_proxy(settings_for(upstream, url))
        async with client_for(proxy, KEY) as client:
            run = await start_run(client, usage="no")
            await cut()
            polled = await client.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
            assert polled.status == "completed"
            assert (await client.models.list()).data[0].id == "gpt-4o"
            await wait_for(
                lambda: any("kept in memory" in r.getMessage() for r in caplog.records), 15
            )
            if db_backend == "postgres":
                async with proxy_http(proxy) as get:
                    health = await get("/_proxy/health")
                assert health["database"]["ok"] is False
            # Traffic still flows while the database is down.
            await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
            assert await usage_rows(sm, run.id) == []
            await restore()
            row = await one_row(sm, run.id, timeout=20)
    assert row["prompt_tokens"] == fake_estimate(upstream, run.id).prompt_tokens
    assert row["key_hint"] == "sk-...1234"


@contextlib.asynccontextmanager
async def proxy_http(proxy: RunningProxy) -> AsyncIterator[Callable[[str], Awaitable[Any]]]:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def get(path: str) -> Any:
            async with session.get(proxy.url + path) as resp:
                return await resp.json()

        yield get


# --- attribution -----------------------------------------------------------------------------


async def test_team_from_the_key_mapped_with_the_cli(upstream, client, sm, db_url) -> None:
    out = await _cli(["keys", "add", "--team", "research", "--label", "ci"], db_url, stdin=KEY)
    assert out.returncode == 0, out.stderr
    await mappings.add_project_team(sm, "proj_research", "not-this-one")
    run = await finished_run(
        client.with_options(default_headers={"OpenAI-Project": "proj_research"}), usage="no"
    )

    row = await one_row(sm, run.id)
    assert (row["team"], row["project"]) == ("research", "proj_research")
    assert row["key_fingerprint"] == fingerprint(KEY, SECRET.encode())


async def test_team_from_the_project(upstream, proxy, sm) -> None:
    await mappings.add_project_team(sm, "proj_x", "platform")
    async with client_for(proxy, OTHER_KEY, project="proj_x", organization="org_9") as client:
        run = await finished_run(client, usage="no")
        unmapped = await finished_run(client.with_options(project="proj_y"), usage="no")

    row = await one_row(sm, run.id)
    assert (row["team"], row["project"], row["organization"]) == ("platform", "proj_x", "org_9")
    (steps,) = fetch_requests(upstream, run.id)
    assert (steps["headers"]["OpenAI-Project"], steps["headers"]["OpenAI-Organization"]) == (
        "proj_x",
        "org_9",
    )
    assert (await one_row(sm, unmapped.id))["team"] == "unassigned"


@pytest.mark.parametrize("allow", [False, True], ids=["team-ignored", "team-honoured"])
async def test_client_tag_and_team_headers(upstream, start_proxy, db_url, sm, allow) -> None:
    await mappings.add_key_team(sm, fingerprint(KEY, SECRET.encode()), hint(KEY), "mapped")
    proxy = await start_proxy(settings_for(upstream, db_url, allow_client_team=allow))
    headers = {"X-Usage-Tag": "nightly-eval", "X-Usage-Team": "claimed"}
    async with client_for(proxy, KEY, default_headers=headers) as client:
        run = await finished_run(client, usage="no")

    row = await one_row(sm, run.id)
    assert row["tag"] == "nightly-eval"
    assert row["team"] == ("claimed" if allow else "mapped")
    assert not [r for r in upstream.requests if "X-Usage-Tag" in r["headers"]]


async def test_a_run_is_collected_with_the_key_that_saw_it(upstream, proxy, sm) -> None:
    async with client_for(proxy, KEY) as a, client_for(proxy, OTHER_KEY) as b:
        run_a = await finished_run(a, usage="no")
        run_b = await finished_run(b, usage="no")
        # B looks at A's finished run too: the job was opened with A's key, and stays A's.
        await b.beta.threads.runs.retrieve(run_a.id, thread_id=run_a.thread_id)
        row_a, row_b = await one_row(sm, run_a.id), await one_row(sm, run_b.id)
    assert {k for _, _, k in ledger(upstream, run_a.id)} == {KEY}
    assert {k for _, _, k in ledger(upstream, run_b.id)} == {OTHER_KEY}
    assert (row_a["key_hint"], row_b["key_hint"]) == ("sk-...1234", "sk-...5678")


async def test_a_run_is_fetched_in_its_own_project(upstream, proxy, sm) -> None:
    # The same key, used next in another project, before the run's collection retries.
    upstream.faults.fetch_statuses = [500, 500]
    upstream.faults.retry_after = "1"
    async with client_for(proxy, KEY, project="proj_1") as one:
        run = await finished_run(one, usage="no")
    await wait_for(lambda: len(fetch_requests(upstream, run.id)) >= 1)
    async with client_for(proxy, KEY, project="proj_2") as two:
        await two.models.list()

    row = await one_row(sm, run.id)
    assert row["project"] == "proj_1"
    assert {r["headers"]["OpenAI-Project"] for r in fetch_requests(upstream, run.id)} == {"proj_1"}


# --- code interpreter sessions and file search -----------------------------------------------


async def test_code_interpreter_sessions_per_thread_hour(upstream, client, sm) -> None:
    # Each run is recorded before the next starts, so sessions open in call order.
    first = await finished_run(client, usage="no")
    await one_row(sm, first.id)
    second = await finished_run(client, first.thread_id, usage="no", code_calls="2")
    await one_row(sm, second.id)
    upstream.advance_clock(3600)
    third = await finished_run(client, first.thread_id, usage="no")
    searched = await finished_run(client, usage="no", code_calls="0", file_search_calls="2")

    rows = [await one_row(sm, r.id) for r in (first, second, third, searched)]
    assert [r["code_interpreter_calls"] for r in rows] == [1, 2, 1, 0]
    assert [r["code_interpreter_sessions"] for r in rows] == [1, 0, 1, 0]
    assert [r["file_search_calls"] for r in rows] == [0, 0, 0, 2]
    prices = load_price_table()
    for row in rows:
        usage = Usage(
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            code_interpreter_sessions=row["code_interpreter_sessions"],
            file_search_calls=row["file_search_calls"],
        )
        assert row["cost_usd"] == cost_of(prices, "gpt-4o", row["occurred_at"], usage).total


async def test_sessions_of_runs_recorded_out_of_order(upstream, client, sm) -> None:
    # The first run's collection fails once; the second, an hour later, is recorded first.
    # The first waits 4 s to be retried: the second must be recorded before, even when a loaded
    # machine takes seconds over it (0.5 s was not always enough beside a CPU hog).
    upstream.faults.fetch_statuses = [500, 500]
    upstream.faults.retry_after = "4"
    first = await finished_run(client, usage="no")
    await wait_for(lambda: not upstream.faults.fetch_statuses)
    upstream.advance_clock(3600)
    later = await finished_run(client, first.thread_id, usage="no")
    await one_row(sm, later.id)
    assert await usage_rows(sm, first.id) == []

    rows = [await one_row(sm, r.id) for r in (first, later)]
    assert sum(r["code_interpreter_sessions"] for r in rows) == 2


# --- secrets ---------------------------------------------------------------------------------


async def test_no_key_in_tables_logs_or_report(upstream, start_proxy, db_url, sm, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    await mappings.add_key_team(sm, fingerprint(KEY, SECRET.encode()), hint(KEY), "mapped")
    upstream.faults.fetch_statuses = [429, 401]
    proxy = await start_proxy(settings_for(upstream, db_url))
    async with client_for(proxy, KEY, default_headers={"X-Usage-Tag": KEY[:12]}) as client:
        runs = [await finished_run(client, usage=u) for u in ("no", "yes")]
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=proxy.url, api_version=AZURE_VERSION, api_key=OTHER_KEY, max_retries=0
    ) as azure:
        runs.append(await finished_run(azure, usage="no"))
    for run in runs:
        await one_row(sm, run.id)

    secrets = [k[3:-4] for k in (KEY, OTHER_KEY)]  # what the hints leave out
    async with sm() as session:
        for table in Base.metadata.sorted_tables:
            dump = repr((await session.execute(select(table))).all())
            assert not [s for s in secrets if s in dump], table.name
    client_side = ("openai", "httpx", "httpcore", "httpx2")
    for record in caplog.records:
        if record.name.startswith(client_side):
            continue
        text = record.getMessage() + (record.exc_text or "") + repr(record.args)
        assert not [s for s in secrets if s in text], (record.name, text)

    out = await _cli(["report", "--format", "json"], db_url)
    assert out.returncode == 0, out.stderr
    assert not [s for s in secrets if s in out.stdout + out.stderr]
    report = json.loads(out.stdout, parse_float=Decimal)
    by_id = {r["object_id"]: r for r in report}
    for run in runs:
        assert {
            "kind",
            "object_id",
            "thread_id",
            "assistant_id",
            "model",
            "status",
            "team",
            "key_hint",
            "key_fingerprint",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "usage_source",
            "estimated_prompt_tokens",
            "estimated_completion_tokens",
            "code_interpreter_calls",
            "code_interpreter_sessions",
            "cost_usd",
            "occurred_at",
        } <= set(by_id[run.id])
    assert by_id[runs[0].id]["team"] == "mapped"
    assert by_id[runs[1].id]["usage_source"] == "reported"
    assert by_id[runs[2].id]["key_hint"] == "sk-...5678"


class _Completed:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


async def _cli(args: list[str], db_url: str, *, stdin: str | None = None) -> _Completed:
    """`usage-proxy ARGS --database-url URL`, in a process of its own."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        "--database-url",
        db_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"USAGE_PROXY_KEY_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(
        proc.communicate((stdin + "\n").encode() if stdin is not None else b""), 60
    )
    return _Completed(proc.returncode or 0, out.decode(), err.decode())


async def test_file_search_results_are_fetched_and_counted(upstream, client, sm) -> None:
    # The API returns a result's text only when the steps are asked to include it; the model
    # read it, so the estimate needs it.
    assistant = await client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search"}],
        metadata={"code_calls": "0", "file_search_calls": "1", "usage": "no"},
    )
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id
    )

    row = await one_row(sm, run.id)
    (steps,) = fetch_requests(upstream, run.id, "steps")
    assert steps["query"]["include[]"] == (
        "step_details.tool_calls[*].file_search.results[*].content"
    )
    expected = fake_estimate(upstream, run.id)
    assert (row["prompt_tokens"], row["file_search_calls"]) == (expected.prompt_tokens, 1)
    without = {k: v for k, v in upstream.runs[run.id].items() if not k.startswith("_")}
    blind = estimate_run(
        without,
        [without_result_content(s) for s in upstream.steps[run.id]],
        upstream.messages[run.thread_id],
        counter_for_model("gpt-4o"),
    )
    assert row["prompt_tokens"] > blind.prompt_tokens
    # A run without file search asks for nothing more.
    plain = await finished_run(client, usage="no")
    await one_row(sm, plain.id)
    (plain_steps,) = fetch_requests(upstream, plain.id, "steps")
    assert "include[]" not in plain_steps["query"]
