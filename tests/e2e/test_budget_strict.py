"""Strict mode (issue 17, point 3: the overspend past an enforced limit), end to end with the
openai SDK on both backends: near its limit a subject is admitted only on a fresh read of its
spend from the database, so a replica refuses the request after the crossing commit without
waiting for its next refresh, and its answers are held until their rows are committed, so
clients that send again at once overspend by at most the requests in flight at the crossing;
far from any limit nothing is read or held per request."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from proxy.app import BUDGETS, FORWARDER, METRICS
from proxy.db.models import UsageRecord
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


def held(proxy: RunningProxy) -> float:
    value = proxy.app[METRICS].registry.get_sample_value("usage_proxy_budget_holds_total")
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
    assert held(proxy) == 0


def diagnosis(proxy: RunningProxy) -> dict[str, Any]:
    registry, holds = proxy.app[METRICS].registry, proxy.app[FORWARDER].holds
    fresh = {
        o: registry.get_sample_value("usage_proxy_budget_fresh_reads_total", {"outcome": o})
        for o in ("read", "timeout", "failed")
    }
    return {
        "fresh": fresh,
        "budget_holds": registry.get_sample_value("usage_proxy_budget_holds_total"),
        "held": holds and holds.held,
        "timed_out": holds and holds.timed_out,
    }


async def red_spend(sm) -> Decimal:
    async with sm() as session:
        total = await session.scalar(
            select(func.sum(UsageRecord.cost_usd)).where(UsageRecord.team == "red")
        )
    return total or Decimal(0)


async def test_clients_that_resend_at_once_overspend_at_most_the_requests_in_flight(
    db_url, sm, upstream, start_proxy
):
    """4 clients on 2 replicas, each sending again the instant its answer arrives; the fake
    upstream answers in waves of 4. Half a request's worth is left after the first wave, so
    whichever row of the second wave commits first crosses the limit: the 4 requests of that
    wave are the ones in flight at the crossing, and the third wave must be refused whole,
    although without the hold its requests would be sent before the second wave's rows are
    written."""
    await map_key(sm, RED_KEY, "red")
    # Reads that fail open (timeout) would let a request through: this test is of the bound
    # when the database answers, on a machine that may be loaded.
    settings = budget_settings(upstream, db_url).replace(
        budget_refresh_interval=NO_REFRESH, budget_strict_timeout=10.0, hold_timeout=10.0
    )
    setup = await start_proxy(settings)
    assert (await chat(setup, RED_KEY)).id
    per_request = await wait_for(lambda: red_spend(sm))
    limit = 100 * per_request
    await spend(sm, "red", str(limit - Decimal("5.5") * per_request))  # 4.5 requests left
    await budget_id(db_url, "--team", "red", "--limit", str(limit), "--period", "day",
                    "--enforce")  # fmt: skip
    replicas = [await start_proxy(settings), await start_proxy(settings)]
    for proxy in replicas:
        await wait_for(lambda p=proxy: ("team", "red") in p.app[BUDGETS].policy.near)

    refused: list[openai.RateLimitError] = []

    async def client(proxy: RunningProxy) -> None:
        while True:
            try:
                await chat(proxy, RED_KEY)
            except openai.RateLimitError as exc:
                refused.append(exc)
                return

    gate = upstream.chat_gate = asyncio.Queue()
    tasks = [asyncio.create_task(client(replicas[i % 2])) for i in range(4)]
    waves = 0
    try:
        while True:
            active = lambda: sum(not t.done() for t in tasks)  # noqa: E731
            # Every client still going has a request at the upstream (or none is left).
            await wait_for(lambda: upstream.chats_waiting == active())  # noqa: B023
            if not active():
                break
            passed, n = upstream.chats_passed, upstream.chats_waiting
            for _ in range(n):
                gate.put_nowait(None)
            await wait_for(lambda: upstream.chats_passed == passed + n)  # noqa: B023
            waves += 1
            assert waves <= 5, "never refused"
    finally:
        upstream.chat_gate = None
        for _ in range(upstream.chats_waiting):
            gate.put_nowait(None)
        await asyncio.gather(*tasks, return_exceptions=True)

    # The third wave was refused whole.
    assert waves == 2, [diagnosis(p) for p in replicas]
    assert len(refused) == 4 and all(e.code == "budget_exceeded" for e in refused)
    spent = await wait_for(lambda: _at_least(sm, limit))
    # 3.5 requests past the limit: less than the 4 in flight when it was crossed.
    assert spent - limit == Decimal("3.5") * per_request
    assert all(held(p) > 0 for p in replicas)


async def _at_least(sm, limit: Decimal) -> Decimal | None:
    total = await red_spend(sm)
    return total if total >= limit else None
