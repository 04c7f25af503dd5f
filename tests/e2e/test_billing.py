"""The billing pull on a schedule and /_proxy/reconcile, through real in-process proxies on
both backends: two replicas share the database and exactly one pulls; the other takes over
when it stops; metrics and an alert for a flagged closed day; the endpoint answers what the
command line answers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
from decimal import Decimal

import aiohttp
import pytest

from proxy import cli
from proxy.alerts.signing import verify
from proxy.app import BILLING
from proxy.settings import Settings
from tests.e2e.budget_helpers import HOOK_SECRET, Receiver
from tests.e2e.conftest import client_for, wait_for
from tests.reconcile.fake_admin import cost
from tests.reconcile.scenario import ADMIN_KEY, GPT, RED_KEY, fake_admin
from tests.reconcile.seed import seed_usage

TOKEN = "admin-t0ken-for-billing-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin():
    fake = fake_admin()
    today = dt.datetime.now(dt.UTC).date()
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    # Yesterday: billed with nothing recorded (flagged, closed); today: still open.
    fake.costs[yesterday] = [cost("2.50", f"{GPT}, input", "proj_red", "key_red")]
    fake.costs[today.isoformat()] = [cost("0.75", f"{GPT}, input", "proj_red", "key_red")]
    with fake:
        yield fake


def settings(db_url: str, upstream_url: str, admin_url: str) -> Settings:
    return Settings(
        upstream=upstream_url,
        database_url=db_url,
        admin_token=TOKEN,
        key_secret="k",
        billing_url=admin_url,
        billing_pull_interval=0.5,
    )


def cost_requests(admin) -> int:
    return sum(1 for path, _, _ in admin.requests if path == "/v1/organization/costs")


async def test_one_replica_pulls_and_another_takes_over(
    db_url, upstream, admin, start_proxy, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.billing")
    s = settings(db_url, upstream.url, admin.url)
    first = await start_proxy(s, admin_key=ADMIN_KEY)
    second = await start_proxy(s, admin_key=ADMIN_KEY)
    a, b = first.app[BILLING], second.app[BILLING]
    await wait_for(lambda: a.pulls + b.pulls >= 4, timeout=20)
    assert (a.pulls == 0) != (b.pulls == 0), (a.pulls, b.pulls)
    holder, other = (first, second) if a.pulls else (second, first)
    starts = {dict(q)["start_time"] for path, q, _ in admin.requests if "costs" in path}
    three_days_ago = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
    assert starts == {str(int(dt.datetime.combine(three_days_ago, dt.time(), dt.UTC).timestamp()))}
    flagged = [r for r in caplog.records if "billing residual flagged" in r.getMessage()]
    assert len(flagged) == 1, "yesterday once; the open day never"
    assert "billed=2.50" in flagged[0].getMessage()
    async with aiohttp.ClientSession() as http:
        async with http.get(holder.url + "/_proxy/metrics", headers=AUTH) as resp:
            text = await resp.text()
        assert 'usage_proxy_billing_billed_usd{project="proj_red"} 3.25' in text
        assert "usage_proxy_billing_last_pull_timestamp_seconds 0.0" not in text
        async with http.get(other.url + "/_proxy/metrics", headers=AUTH) as resp:
            text = await resp.text()
        # Every replica shows the month from the database; only the puller has pulled.
        assert 'usage_proxy_billing_billed_usd{project="proj_red"} 3.25' in text
    await holder.runner.cleanup()
    taken = other.app[BILLING]
    await wait_for(lambda: taken.pulls >= 1, timeout=20)
    assert ADMIN_KEY not in caplog.text


async def test_a_refused_key_is_logged_each_round_and_traffic_goes_on(
    db_url, upstream, admin, start_proxy, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.billing")
    wrong = ADMIN_KEY[:-4] + "nope"
    proxy = await start_proxy(settings(db_url, upstream.url, admin.url), admin_key=wrong)

    def refusals() -> int:
        return sum("refused the key (401)" in r.getMessage() for r in caplog.records)

    await wait_for(lambda: refusals() >= 2, timeout=20)
    assert proxy.app[BILLING].pulls == 0
    assert wrong not in caplog.text
    # Forwarding is untouched: a request through the proxy reaches the upstream.
    client = client_for(proxy, RED_KEY)
    assert [m.id async for m in client.models.list()] == ["gpt-4o"]


async def test_interval_without_admin_key_only_warns(db_url, upstream, admin, start_proxy, caplog):
    proxy = await start_proxy(settings(db_url, upstream.url, admin.url))
    assert BILLING not in proxy.app
    assert "but OPENAI_ADMIN_KEY is not: no billing pulls" in caplog.text


async def test_reconcile_endpoint_answers_what_the_cli_answers(
    db_url, upstream, admin, start_proxy, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("USAGE_PROXY_BILLING_URL", admin.url)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    args = ["--database-url", db_url]
    # The command line runs its own event loop: in a thread, beside this test's.
    await asyncio.to_thread(seed_usage, db_url)
    pull = ["billing", "pull", *args, "--since", "2026-11-01", "--until", "2026-12-01"]
    assert await asyncio.to_thread(cli.main, pull) == 0
    reconcile = ["reconcile", *args, "--month", "2026-11", "--format", "json"]
    assert await asyncio.to_thread(cli.main, reconcile) == 0
    expected = capsys.readouterr().out.split("\n", 1)[1]  # after the pull's summary line
    s = settings(db_url, upstream.url, admin.url).replace(billing_pull_interval=0.0)
    proxy = await start_proxy(s)
    async with aiohttp.ClientSession() as http:
        url = proxy.url + "/_proxy/reconcile"
        async with http.get(url, params={"month": "2026-11"}, headers=AUTH) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            body = await resp.text()
        assert json.loads(body, parse_float=Decimal) == json.loads(expected, parse_float=Decimal)
        async with http.get(url, params={"month": "2026-11"}) as resp:
            assert resp.status == 401
        async with http.get(url, params={"month": "11/2026"}, headers=AUTH) as resp:
            assert resp.status == 400
            assert "month: '11/2026' is not a month" in (await resp.json())["error"]["message"]
    assert all(not r["path"].startswith("/_proxy") for r in upstream.requests)


async def test_traffic_through_the_proxy_reconciles_with_the_bill(
    db_url, upstream, admin, start_proxy, sm, monkeypatch, capsys
) -> None:
    """Chat completions made with the openai SDK through the proxy, billed by the fake admin
    API: red's bill has 0.50 more (traffic that bypassed the proxy), blue's matches."""
    from sqlalchemy import select

    from proxy.db.models import UsageRecord
    from tests.reconcile.scenario import BLUE_KEY

    proxy = await start_proxy(settings(db_url, upstream.url, admin.url).replace(
        billing_pull_interval=0.0))  # fmt: skip
    for key, project in ((RED_KEY, "proj_red"), (RED_KEY, "proj_red"), (BLUE_KEY, "proj_blue")):
        client = client_for(proxy, key, default_headers={"OpenAI-Project": project})
        await client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": "hi"}]
        )

    async def recorded(project: str) -> tuple[int, Decimal]:
        """(rows, their cost) of one project."""
        async with sm() as session:
            query = select(UsageRecord.cost_usd).where(UsageRecord.project == project)
            costs = (await session.scalars(query)).all()
        return len(costs), sum(costs, Decimal(0))

    await wait_for(lambda: _count(recorded, ("proj_red", 2), ("proj_blue", 1)), timeout=15)
    red, blue = (await recorded("proj_red"))[1], (await recorded("proj_blue"))[1]
    assert red > 0 and blue > 0
    today = dt.datetime.now(dt.UTC).date()
    admin.costs = {
        today.isoformat(): [
            cost(str(red + Decimal("0.5")), f"{GPT}, input", "proj_red", "key_red"),
            cost(str(blue), f"{GPT}, output", "proj_blue", "key_blue1"),
        ]
    }
    monkeypatch.setenv("USAGE_PROXY_BILLING_URL", admin.url)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    pull = ["billing", "pull", "--database-url", db_url, "--since", today.isoformat()]
    assert await asyncio.to_thread(cli.main, pull) == 0
    async with aiohttp.ClientSession() as http:
        params = {"since": today.isoformat(), "group_by": "project"}
        async with http.get(proxy.url + "/_proxy/reconcile", params=params, headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            rows = json.loads(await resp.text(), parse_float=Decimal)
    got = {r["project"]: (r["recorded_usd"], r["residual_usd"], r["flagged"]) for r in rows[:-1]}
    assert got == {"proj_red": (red, Decimal("0.5"), True), "proj_blue": (blue, 0, False)}


async def _count(recorded, *wanted: tuple[str, int]) -> bool:
    for project, n in wanted:
        if (await recorded(project))[0] < n:
            return False
    return True


async def test_a_flagged_day_is_sent_once_through_the_alert_webhook(
    db_url, upstream, admin, start_proxy
) -> None:
    hook = Receiver()
    await hook.start()
    try:
        s = dataclasses.replace(
            settings(db_url, upstream.url, admin.url),
            alert_webhook_url=hook.url,
            alert_webhook_secret=HOOK_SECRET,
        )
        first = await start_proxy(s, admin_key=ADMIN_KEY)
        second = await start_proxy(s, admin_key=ADMIN_KEY)
        a, b = first.app[BILLING], second.app[BILLING]

        def residuals() -> list[dict]:
            return [d for d in hook.delivered if d.get("kind") == "billing_residual"]

        [alert] = await wait_for(residuals, timeout=20)
        # Several more rounds, with either replica able to send: still the one alert.
        pulls = a.pulls + b.pulls
        await wait_for(lambda: a.pulls + b.pulls >= pulls + 3, timeout=20)
        assert len(residuals()) == 1
        assert len(hook.posts) == 1
        yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
        assert alert["day"] == yesterday, "the open day never"
        [row] = alert["residuals"]
        assert row["project"] == "proj_red"
        assert (Decimal(row["billed_usd"]), Decimal(row["recorded_usd"])) == (Decimal("2.50"), 0)
        assert f"Billing residual on {yesterday}" in alert["text"]
        delivery = hook.posts[0]
        signature = delivery.headers["X-Usage-Proxy-Signature"]
        assert verify(HOOK_SECRET, signature, delivery.body, time.time())
    finally:
        await hook.close()
