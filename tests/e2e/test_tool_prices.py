"""Responses built-in tools at today's rates (issue 15, point 5, the part built), end to end on
both backends: counts from the response's output items, web_search against
web_search_preview on a non-reasoning model, and the container's memory_limit."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.accounting.pricing import Usage, cost_of, load_price_table
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.test_events import rows

CODE = {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}}


@pytest.fixture
async def proxy(db_url: str, upstream, start_proxy) -> RunningProxy:
    return await start_proxy(Settings(upstream=upstream.url, database_url=db_url, key_secret="s"))


@pytest.mark.parametrize(
    ("model", "tools", "search", "session"),
    [
        ("gpt-4.1", [], "0.01", "0.03"),
        ("gpt-4.1", [{"type": "web_search"}, {"type": "code_interpreter"}], "0.01", "0.03"),
        ("gpt-4.1", [{"type": "web_search_preview"}, CODE], "0.025", "0.12"),
        ("o3", [{"type": "web_search_preview"}, CODE], "0.01", "0.12"),
    ],
)
async def test_web_search_and_container_rates(
    proxy: RunningProxy, sm, model: str, tools: list, search: str, session: str
):
    client = client_for(proxy)
    await client.responses.create(
        model=model,
        input="hi",
        tools=tools,
        metadata={"fake_tools": "code_interpreter,file_search"},
    )
    [row] = await wait_for(lambda: rows(sm, "response"))
    # Counted from the output items: one web search (the fake's), one file search, a container.
    assert (row["web_search_calls"], row["file_search_calls"]) == (1, 1)
    assert row["code_interpreter_sessions"] == 1
    usage = Usage(prompt_tokens=20, cached_tokens=4, completion_tokens=7)
    tokens = cost_of(load_price_table(), model, row["occurred_at"], usage).total
    assert row["cost_usd"] == tokens + Decimal(search) + Decimal("0.0025") + Decimal(session)


async def test_a_container_is_charged_once_across_replicas(db_url: str, upstream, start_proxy, sm):
    settings = Settings(upstream=upstream.url, database_url=db_url, key_secret="s")
    replicas = [await start_proxy(settings), await start_proxy(settings)]
    plan = {"fake_tools": "code_interpreter"}  # the fake's container: "cntr_" + the model
    ids = []
    for proxy in [*replicas, *replicas]:  # four responses, one container, two replicas
        response = await client_for(proxy).responses.create(
            model="gpt-4.1", input="hi", metadata=plan
        )
        ids.append(response.id)
    recorded = await wait_for(lambda: _responses(sm, 4))
    assert sorted(r["object_id"] for r in recorded) == sorted(ids)
    assert [r["code_interpreter_calls"] for r in recorded] == [1, 1, 1, 1]
    sessions = {r["object_id"]: r["code_interpreter_sessions"] for r in recorded}
    # Exactly one of them (the first written, whichever replica wrote it) has the session.
    assert sorted(sessions.values()) == [0, 0, 0, 1]
    usage = Usage(prompt_tokens=20, cached_tokens=4, completion_tokens=7)
    for row in recorded:
        tokens = cost_of(load_price_table(), "gpt-4.1", row["occurred_at"], usage).total
        session = Decimal("0.03") * row["code_interpreter_sessions"]
        assert row["cost_usd"] == tokens + Decimal("0.01") + session


async def _responses(sm, n: int):
    found = await rows(sm, "response")
    return found if len(found) >= n else None
