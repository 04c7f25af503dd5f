"""Strict mode (issue 17, point 3: the overspend past an enforced limit), end to end with the
openai SDK on both backends: near its limit a subject is admitted only on a fresh read of its
spend from the database, so a replica refuses the request after the crossing commit without
waiting for its next refresh; far from any limit nothing is read per request."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from proxy.app import BUDGETS, METRICS
from tests.e2e.budget_helpers import budget_settings, map_key, spend
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.test_budget_enforcement import budget_id
from tests.fake_keys import fake_key

RED_KEY = fake_key("red", "1111")
BLUE_KEY = fake_key("blue", "2222")
MESSAGES = [{"role": "user", "content": "hi"}]
# No periodic refresh while a test runs: only a fresh read can see what changed.
NO_REFRESH = 600.0


async def chat(proxy: RunningProxy, key: str) -> Any:
    return await client_for(proxy, key).chat.completions.create(model="gpt-4o", messages=MESSAGES)


def fresh_reads(proxy: RunningProxy) -> float:
    value = proxy.app[METRICS].registry.get_sample_value(
        "usage_proxy_budget_fresh_reads_total", {"outcome": "read"}
    )
    return value or 0.0


def spend_seen(proxy: RunningProxy) -> Decimal:
    """Red's spend as of the replica's last refresh."""
    [status] = proxy.app[BUDGETS].tracker.statuses
    return status.spend


async def test_near_the_limit_a_replica_refuses_on_a_fresh_read_not_its_next_refresh(
    db_url, sm, upstream, start_proxy
):
    settings = budget_settings(upstream, db_url).replace(budget_refresh_interval=NO_REFRESH)
    await map_key(sm, RED_KEY, "red")
    budget = await budget_id(
        db_url, "--team", "red", "--limit", "1", "--period", "month", "--enforce"
    )
    await spend(sm, "red", "0.95")  # within a tenth of the limit: near
    replicas = [await start_proxy(settings), await start_proxy(settings)]
    for proxy in replicas:
        await wait_for(lambda p=proxy: p.app[BUDGETS].tracker.refreshed_at is not None)
        assert ("team", "red") in proxy.app[BUDGETS].policy.near

    # Near but under: admitted, on a read of the spend made for it.
    assert (await chat(replicas[0], RED_KEY)).id
    admitted_on_a_read = fresh_reads(replicas[0]) >= 1
    # Its row woke that replica's refresh; wait for it, so that none comes after.
    await wait_for(lambda: spend_seen(replicas[0]) > Decimal("0.95"))

    # Another replica (here: a true-up) crosses the limit; no refresh will see it.
    await spend(sm, "red", "0.1")
    for proxy in replicas:
        with pytest.raises(openai.RateLimitError) as raised:
            await chat(proxy, RED_KEY)
        assert raised.value.code == "budget_exceeded"
        assert "has used $1.05 of its $1.00" in raised.value.body["message"]
        # From then on the replica refuses without reading.
        reads = fresh_reads(proxy)
        with pytest.raises(openai.RateLimitError):
            await chat(proxy, RED_KEY)
        assert fresh_reads(proxy) == reads
        assert proxy.app[BUDGETS].policy.refusing[("team", "red")].rule.id == budget
    assert (await chat(replicas[1], BLUE_KEY)).id  # another team: untouched
    assert admitted_on_a_read


async def test_far_from_any_limit_nothing_is_read_per_request(db_url, sm, upstream, start_proxy):
    proxy = await start_proxy(budget_settings(upstream, db_url))
    await map_key(sm, RED_KEY, "red")
    await map_key(sm, BLUE_KEY, "blue")
    await budget_id(db_url, "--team", "red", "--limit", "100", "--period", "day", "--enforce")
    tracker = proxy.app[BUDGETS].tracker
    await wait_for(lambda: tracker.statuses)
    for _ in range(10):
        assert (await chat(proxy, RED_KEY)).id
        assert (await chat(proxy, BLUE_KEY)).id
    # The rows were recorded and refreshed (the rate of red's spend was seen): still far.
    await wait_for(lambda: spend_seen(proxy) > 0)
    for _ in range(10):
        assert (await chat(proxy, RED_KEY)).id
    assert not proxy.app[BUDGETS].policy.near
    assert fresh_reads(proxy) == 0
