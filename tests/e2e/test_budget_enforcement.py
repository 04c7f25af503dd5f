"""Budget enforcement (issue 17, point 3), end to end with the openai SDK on both backends: an
enforced budget that is reached gets 429 insufficient_quota / budget_exceeded from the proxy
(the upstream never sees the request), which the SDK raises as RateLimitError without
retrying; other subjects and /_proxy/* pass; without --enforce nothing is refused; a new
month clears it; removing the budget lifts it on every replica within 2 s."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import aiohttp
import openai
import pytest

from proxy.app import BUDGETS, METRICS
from tests.e2e.budget_helpers import budget_settings, map_key, run_cli, spend
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.fake_keys import fake_key

RED_KEY = fake_key("red", "1111")
BLUE_KEY = fake_key("blue", "2222")
MESSAGES = [{"role": "user", "content": "hi"}]
ADMIN = "budget-admin-token"
LIFTED_WITHIN = 2.0


async def chat(proxy: RunningProxy, key: str, *, max_retries: int = 0, **kw: Any) -> Any:
    client = client_for(proxy, key, **kw).with_options(max_retries=max_retries)
    return await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def upstream_chats(upstream) -> int:
    return sum(1 for r in upstream.requests if r["path"].endswith("/chat/completions"))


async def refreshed(proxy: RunningProxy) -> None:
    """One whole refresh of the proxy's budgets has begun and ended since this was called."""
    tracker = proxy.app[BUDGETS].tracker
    since = time.monotonic()
    await wait_for(lambda: (tracker.refreshed_at or 0) > since, timeout=10)


async def budget_id(db_url: str, *args: str) -> int:
    code, out, err = await run_cli("budgets", "set", *args, "--database-url", db_url)
    assert code == 0, err
    return int(out.split()[1].rstrip(":"))


def refusals(proxy: RunningProxy, budget: int) -> float:
    value = proxy.app[METRICS].registry.get_sample_value(
        "usage_proxy_budget_refusals_total", {"budget": str(budget)}
    )
    return value or 0.0


async def admin_get(proxy: RunningProxy, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http, http.get(proxy.url + path, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_enforcement_on_refuses_with_429_and_off_lets_through(
    db_url, sm, upstream, start_proxy, caplog
):
    caplog.set_level(logging.INFO, logger="proxy.access")
    proxy = await start_proxy(budget_settings(upstream, db_url, admin_token=ADMIN))
    await map_key(sm, RED_KEY, "red")
    await map_key(sm, BLUE_KEY, "blue")
    enforced = await budget_id(
        db_url, "--team", "red", "--limit", "5", "--period", "month", "--enforce"
    )
    await chat(proxy, RED_KEY)  # under the limit: forwarded
    await spend(sm, "red", "5.12")
    await refreshed(proxy)

    before = upstream_chats(upstream)
    with pytest.raises(openai.RateLimitError) as raised:
        # The SDK's default retries: x-should-retry: false must stop them.
        await chat(proxy, RED_KEY, max_retries=2)
    error = raised.value
    assert error.status_code == 429 and error.code == "budget_exceeded"
    assert error.body["type"] == "insufficient_quota" and error.body["param"] is None
    assert "team red has used $5.12 of its $5.00 monthly budget" in error.body["message"]
    assert error.response.headers["x-should-retry"] == "false"
    assert upstream_chats(upstream) == before  # the upstream never saw it
    assert refusals(proxy, enforced) == 1  # refused once: not retried
    line = next(r for r in caplog.records if "refused_by" in r.getMessage())
    assert f"refused_by=budget_{enforced}" in line.getMessage()
    assert " 429 " in line.getMessage()

    # Another team's requests and the proxy's own endpoints are never refused.
    assert (await chat(proxy, BLUE_KEY)).id
    status, budgets = await admin_get(proxy, "/_proxy/budgets")
    assert status == 200
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/_proxy/budgets") as r:
        assert r.status == 401  # the admin token is needed
    ratio = proxy.app[METRICS].registry.get_sample_value(
        "usage_proxy_budget_used_ratio", {"budget": str(enforced)}
    )
    assert ratio is not None and ratio >= 1
    [shown] = budgets
    assert (shown["id"], shown["state"], shown["subject"]) == (enforced, "enforced", "red")
    assert shown["ratio"] >= 1
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/_proxy/health") as r:
        assert r.status == 200

    # Without --enforce (set again: the same budget), the team is warned, not stopped.
    assert await budget_id(db_url, "--team", "red", "--limit", "5", "--period", "month") == (
        enforced
    )
    await refreshed(proxy)
    assert (await chat(proxy, RED_KEY)).id
    status, [shown] = await admin_get(proxy, "/_proxy/budgets")
    assert shown["state"] == "exceeded"


async def test_a_new_month_clears_enforcement(db_url, sm, upstream, start_proxy):
    now = [dt.datetime(2026, 11, 30, 23, 59, 59, tzinfo=dt.UTC)]
    proxy = await start_proxy(budget_settings(upstream, db_url), clock=lambda: now[0])
    await map_key(sm, RED_KEY, "red")
    await budget_id(db_url, "--team", "red", "--limit", "1", "--period", "month", "--enforce")
    await spend(sm, "red", "1.5", at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC))
    await refreshed(proxy)
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, RED_KEY)

    now[0] = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    await refreshed(proxy)
    assert (await chat(proxy, RED_KEY)).id
    [status] = proxy.app[BUDGETS].tracker.statuses
    assert (status.state, status.spend, status.period_start) == ("ok", 0, "2026-12-01")


@pytest.mark.parametrize("subject", ["key-hint", "fingerprint", "project"])
async def test_keys_and_projects_are_enforced_too(db_url, sm, upstream, start_proxy, subject):
    proxy = await start_proxy(budget_settings(upstream, db_url))
    fp = await map_key(sm, RED_KEY, "red")
    other = fake_key("other", "3333")
    await map_key(sm, other, "red")  # the same team, another key
    project = {"OpenAI-Project": "proj_b"}
    args = {
        "key-hint": ["--key-hint", "sk-...1111"],
        "fingerprint": ["--fingerprint", fp],
        "project": ["--project", "proj_b"],
    }[subject]
    await budget_id(db_url, *args, "--limit", "1", "--period", "day", "--enforce")
    await spend(sm, "red", "2", project="proj_b", fingerprint=fp)
    await refreshed(proxy)
    with pytest.raises(openai.RateLimitError):
        await chat(proxy, RED_KEY, default_headers=project)
    assert (await chat(proxy, other)).id  # the team has no budget
    if subject == "project":
        assert (await chat(proxy, RED_KEY)).id  # the key outside the project
    else:
        with pytest.raises(openai.RateLimitError):
            await chat(proxy, RED_KEY)


async def test_removing_a_budget_lifts_enforcement_on_every_replica_within_2_s(
    db_url, sm, upstream, start_proxy
):
    settings = budget_settings(upstream, db_url)
    replicas = [await start_proxy(settings), await start_proxy(settings)]
    await map_key(sm, RED_KEY, "red")
    budget = await budget_id(db_url, "--team", "red", "--limit", "1", "--period", "week",
                             "--enforce")  # fmt: skip
    await spend(sm, "red", "1")  # exactly the limit: reached
    for proxy in replicas:
        await refreshed(proxy)
        with pytest.raises(openai.RateLimitError):
            await chat(proxy, RED_KEY)

    code, _, err = await run_cli("budgets", "remove", str(budget), "--database-url", db_url)
    assert code == 0, err
    start = time.monotonic()
    for proxy in replicas:
        while True:
            try:
                await chat(proxy, RED_KEY)
                break
            except openai.RateLimitError:
                assert time.monotonic() - start < 10
    assert time.monotonic() - start < LIFTED_WITHIN
