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
