"""Responses, chat completions and embeddings, end to end (issue #5): the official openai SDK
through an in-process proxy to the fake upstream, and the usage table read back.

Every test runs on both backends (`db_url`). No fixed sleeps: a test waits for a row with
`wait_for`, and proves an absence by draining the observer queue (everything observed so far
has then been handled, its writes included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.estimate.chat import estimate_completion, estimate_prompt
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.app import ACCOUNTING, DISPATCHER
from proxy.db import mappings
from proxy.db.models import UsageRecord
from proxy.keys import fingerprint
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key

KEY = fake_key("default", "1234")
SECRET = "test-secret"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to a friend."},
]
SM = async_sessionmaker[AsyncSession]
Start = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def proxy_for(db_url: str, upstream: FakeUpstream, start_proxy: Start) -> Start:
    # db_url first: the proxy is stopped before the database goes away.
    async def start(**changes: Any) -> RunningProxy:
        settings = Settings(
            upstream=upstream.url, database_url=db_url, key_secret=SECRET, **changes
        )
        return await start_proxy(settings)

    return start


async def rows(sm: SM, kind: str | None = None) -> list[dict[str, Any]]:
    table = UsageRecord.__table__
    stmt = select(table).order_by(table.c.id)
    if kind is not None:
        stmt = stmt.where(table.c.kind == kind)
    async with sm() as session:
        return [dict(r) for r in (await session.execute(stmt)).mappings()]


async def settle(proxy: RunningProxy) -> None:
    """Everything observed so far has been handled and written, and no observer failed."""
    await proxy.app[DISPATCHER].drain()
    assert proxy.app[DISPATCHER].failures == 0
    await proxy.app[ACCOUNTING].rows.drain()


def metric(proxy: RunningProxy, name: str, **labels: str) -> float:
    value = proxy.app[ACCOUNTING].metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# --- responses -----------------------------------------------------------------------------
async def test_response_json_with_tools_conversation_and_prompt(proxy_for: Start, sm: SM):
    proxy = await proxy_for()
    client = client_for(proxy, default_headers={"X-Usage-Tag": "nightly"})
    response = await client.responses.create(
        model="gpt-4.1",
        input="hi",
        conversation="conv_1",
        prompt={"id": "pmpt_1", "version": "2"},
        metadata={"fake_tools": "code_interpreter,file_search"},
    )
    [row] = await wait_for(lambda: rows(sm, "response"))
    assert row["object_id"] == response.id
    assert (row["status"], row["model"], row["usage_source"]) == (
        "completed",
        "gpt-4.1",
        "reported",
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (20, 7, 27)
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (4, 3)
    assert (row["conversation_id"], row["prompt_id"]) == ("conv_1", "pmpt_1")
    assert (row["tag"], row["team"], row["key_hint"]) == ("nightly", "unassigned", "sk-...1234")
    assert row["key_fingerprint"] == fingerprint(KEY, SECRET.encode())
    assert (row["web_search_calls"], row["file_search_calls"]) == (1, 1)
    # The container's session is a row of its own, priced once it expired (test_tool_prices).
    assert (row["code_interpreter_calls"], row["code_interpreter_sessions"]) == (1, 0)
    # gpt-4.1: 16 uncached at $2, 4 cached at $0.50, 7 output at $8 per 1M tokens; one web
    # search at $10/1k, one file search at $2.50/1k.
    tokens = (16 * 2 + 4 * Decimal("0.5") + 7 * 8) / Decimal(1_000_000)
    assert row["cost_usd"] == tokens + Decimal("0.01") + Decimal("0.0025")
    assert metric(proxy, "usage_proxy_events_recorded_total", kind="response") == 1


@pytest.mark.parametrize(
    ("outcome", "source", "tokens"),
    [("completed", "reported", 27), ("failed", "none", 0), ("incomplete", "reported", 27)],
)
async def test_streamed_response_is_recorded_from_its_last_event(
    proxy_for: Start, sm: SM, outcome: str, source: str, tokens: int
):
    proxy = await proxy_for()
    stream = await client_for(proxy).responses.create(
        model="gpt-4.1", input="hi", stream=True, metadata={"fake_outcome": outcome}
    )
    events = [event async for event in stream]
    assert events[-1].type == f"response.{outcome}"
    [row] = await wait_for(lambda: rows(sm, "response"))
    assert row["object_id"] == events[-1].response.id
    assert (row["status"], row["usage_source"], row["total_tokens"]) == (outcome, source, tokens)


async def test_background_response_is_recorded_once_when_a_poll_shows_it_done(
    proxy_for: Start, sm: SM
):
    proxy = await proxy_for()
    client = client_for(proxy)
    created = await client.responses.create(model="gpt-4.1", input="hi", background=True)
    polled = [created.status]
    while polled[-1] != "completed":
        polled.append((await client.responses.retrieve(created.id)).status)
        await settle(proxy)
        if polled[-1] != "completed":
            assert await rows(sm) == []
    assert polled == ["queued", "in_progress", "completed"]
    for _ in range(3):
        await client.responses.retrieve(created.id)
    await settle(proxy)
    [row] = await rows(sm)
    assert (row["object_id"], row["total_tokens"]) == (created.id, 27)
    assert metric(proxy, "usage_proxy_events_recorded_total", kind="response") == 1


# --- chat completions ----------------------------------------------------------------------
async def test_chat_json_with_key_team_and_tag(proxy_for: Start, sm: SM):
    await mappings.add_key_team(sm, fingerprint(KEY, SECRET.encode()), None, "team-key")
    proxy = await proxy_for()
    # A team sent by the client is ignored unless allow_client_team is set; a tag never is.
    headers = {"X-Usage-Team": "team-header", "X-Usage-Tag": "t1"}
    client = client_for(proxy, default_headers=headers)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [row] = await wait_for(lambda: rows(sm, "chat.completion"))
    assert (row["object_id"], row["status"], row["usage_source"]) == (
        completion.id,
        "completed",
        "reported",
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (12, 5, 2)
    assert (row["team"], row["tag"], row["reasoning_tokens"]) == ("team-key", "t1", 0)
    assert row["cost_usd"] == (10 * Decimal("0.15") + 2 * Decimal("0.075") + 5 * Decimal("0.6")) / (
        Decimal(1_000_000)
    )


def estimated(request: dict[str, Any], pieces: list[str], tool_calls: int) -> tuple[int, int]:
    count = counter_for_model(request["model"])
    return estimate_prompt(request, count), estimate_completion(pieces, tool_calls, count)


@pytest.mark.parametrize("reply", ["text", "tool_call"])
async def test_chat_stream_without_usage_is_estimated(proxy_for: Start, sm: SM, reply: str):
    proxy = await proxy_for()
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, "metadata": {"fake_reply": reply}}
    stream = await client_for(proxy).chat.completions.create(**request, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    [row] = await wait_for(lambda: rows(sm, "chat.completion"))
    if reply == "text":
        pieces, calls = ["".join(c.choices[0].delta.content or "" for c in chunks)], 0
        assert pieces == ["Hello there, friend!"]
    else:
        pieces, calls = ["get_weather", '{"city": "Paris"}'], 1
    expected = estimated(request, pieces, calls)
    assert (row["object_id"], row["status"], row["usage_source"]) == (
        chunks[0].id,
        "completed",
        "estimated",
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == expected
    assert (row["estimated_prompt_tokens"], row["estimated_completion_tokens"]) == expected
    assert row["estimator"] == "chat1"
    assert row["function_calls"] == calls
    # gpt-4o-mini: $0.15 per million prompt tokens, $0.60 per million completion tokens.
    prompt, completion = expected
    assert row["cost_usd"] == (prompt * Decimal("0.15") + completion * Decimal("0.6")) / (
        Decimal(1_000_000)
    )


@pytest.mark.parametrize("rewrite", [False, True])
async def test_chat_stream_that_asks_for_usage_gets_it(proxy_for: Start, sm: SM, rewrite: bool):
    proxy = await proxy_for(chat_include_usage=rewrite)
    stream = await client_for(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 17
    [row] = await wait_for(lambda: rows(sm, "chat.completion"))
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == (
        "reported",
        12,
        5,
    )
    assert (row["cached_tokens"], row["estimated_prompt_tokens"]) == (2, None)


def normalised(body: bytes) -> bytes:
    return re.sub(rb'("id": "chatcmpl_\d+"|"created": \d+)', b"_", body)


async def test_include_usage_setting_is_invisible_to_the_client(
    proxy_for: Start, sm: SM, upstream: FakeUpstream
):
    proxy = await proxy_for(chat_include_usage=True)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{upstream.url}/v1/chat/completions", data=body, headers=headers
        ) as r:
            direct = await r.read()
        async with http.post(f"{proxy.base_url}/chat/completions", data=body, headers=headers) as r:
            proxied = await r.read()
    assert b'"usage"' not in proxied and b"[DONE]" in proxied
    assert normalised(proxied) == normalised(direct)
    # The upstream was asked for usage (the fake sends it only then), and it was recorded.
    [row] = await wait_for(lambda: rows(sm, "chat.completion"))
    assert (row["usage_source"], row["total_tokens"]) == ("reported", 17)
    # The SDK sees a plain stream too.
    stream = await client_for(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices and c.usage is None for c in chunks)
    await wait_for(lambda: exactly(sm, 2))


async def exactly(sm: SM, n: int, kind: str | None = None) -> list[dict[str, Any]] | None:
    found = await rows(sm, kind)
    return found if len(found) == n else None


async def test_azure_paths_are_recognised_by_content(proxy_for: Start, sm: SM):
    proxy = await proxy_for(chat_include_usage=True)
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint=proxy.url, api_version="2024-10-21", api_key=KEY, max_retries=0
    )
    await azure.chat.completions.create(model="dep", messages=MESSAGES)
    stream = await azure.chat.completions.create(model="dep", messages=MESSAGES, stream=True)
    assert all(c.choices for c in [chunk async for chunk in stream])
    await azure.embeddings.create(model="dep", input="hi")
    found = await wait_for(lambda: exactly(sm, 3))
    assert sorted((r["kind"], r["usage_source"], r["total_tokens"]) for r in found) == [
        ("chat.completion", "reported", 17),
        ("chat.completion", "reported", 17),
        ("embedding", "reported", 8),
    ]


# --- embeddings ----------------------------------------------------------------------------
async def test_embeddings_take_the_request_id_or_a_generated_one(
    proxy_for: Start, sm: SM, upstream: FakeUpstream
):
    proxy = await proxy_for()
    client = client_for(proxy)
    for _ in range(2):
        await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    upstream.embedding_request_ids = True
    await client.embeddings.create(model="text-embedding-3-small", input="c")
    found = await wait_for(lambda: exactly(sm, 3, "embedding"))
    assert [(r["prompt_tokens"], r["total_tokens"]) for r in found] == [(16, 16), (16, 16), (8, 8)]
    generated = [r["object_id"] for r in found[:2]]
    assert all(g.startswith("proxy-") for g in generated) and generated[0] != generated[1]
    assert re.fullmatch(r"req_\d+", found[2]["object_id"])
    assert found[2]["cost_usd"] == 8 * Decimal("0.02") / Decimal(1_000_000)


# --- errors and abandoned streams ----------------------------------------------------------
async def test_errors_record_nothing_and_count_per_team(proxy_for: Start, sm: SM):
    proxy = await proxy_for(allow_client_team=True)
    client = client_for(proxy, default_headers={"X-Usage-Team": "team-x"})
    for status, error in [(429, openai.RateLimitError), (500, openai.InternalServerError)]:
        with pytest.raises(error):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, metadata={"fake_status": str(status)}
            )
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_missing")
    await settle(proxy)
    assert await rows(sm) == []
    errors = "usage_proxy_upstream_errors_total"
    assert metric(proxy, errors, team="team-x", status="429") == 1
    assert metric(proxy, errors, team="team-x", status="500") == 1
    assert metric(proxy, errors, team="team-x", status="404") == 1
    # The header team is honoured for recorded usage too.
    await client.embeddings.create(model="text-embedding-3-small", input="x")
    [row] = await wait_for(lambda: rows(sm))
    assert row["team"] == "team-x"


async def test_abandoned_chat_stream_is_recorded_incomplete(
    proxy_for: Start, sm: SM, upstream: FakeUpstream
):
    proxy = await proxy_for()
    client = client_for(proxy)
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, "metadata": {"fake_hang_after": "3"}}
    stream = await client.chat.completions.create(**request, stream=True)
    seen = []
    async for chunk in stream:
        seen.append(chunk)
        if len(seen) == 2:
            break
    await stream.close()
    await wait_for(upstream.stream_closed.is_set)
    [row] = await wait_for(lambda: rows(sm, "chat.completion"))
    # The proxy relayed the three chunks the upstream sent before the client left.
    expected = estimated(request, ["Once upon a time 0 upon a time 1"], 0)
    assert (row["object_id"], row["status"], row["usage_source"]) == (
        seen[0].id,
        "incomplete",
        "estimated",
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == expected
    await settle(proxy)
    # The proxy goes on serving.
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await wait_for(lambda: exactly(sm, 2))
