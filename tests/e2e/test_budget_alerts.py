"""Budget alerts (issue 17, point 2), end to end on both backends: thresholds crossed by chat,
responses and Assistants traffic (openai SDK through the proxy to the fake upstream) post one
signed alert each to a real webhook receiver; two replicas and a restart still send exactly
one per threshold; a receiver that fails twice gets the alert on the third try; a forecast
alert goes out once per period."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from proxy.alerts.signing import verify
from proxy.app import BUDGETS, METRICS
from proxy.db import budgets as db_budgets
from proxy.db.engine import reading
from proxy.db.models import Alert, UsageRecord
from tests.e2e.budget_helpers import (
    HOOK_SECRET,
    Receiver,
    budget_settings,
    map_key,
    run_cli,
    spend,
)
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.test_assistants import finished_run
from tests.fake_keys import fake_key

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RED_KEY = fake_key("red", "1111")
# Early in a day, a week and a month (Tuesday Dec 1, 2026, 1 am): too early for a forecast.
EARLY = dt.datetime(2026, 12, 1, 1, tzinfo=dt.UTC)


def early() -> dt.datetime:
    return EARLY


PROBE_KEY = fake_key("probe", "4444")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.start()
    yield hook
    await hook.close()


async def team_rows(sm, team: str) -> tuple[int, Decimal]:
    stmt = select(func.count(), func.sum(UsageRecord.cost_usd)).where(UsageRecord.team == team)
    async with reading(sm) as session:
        n, total = (await session.execute(stmt)).one()
    return n, total or Decimal(0)


@dataclass(frozen=True)
class BudgetAlertRow:
    """A budget's row of the outbox, its key read back into budget, period, kind, threshold."""

    budget_id: int
    period_start: str
    kind: str
    threshold: int
    attempts: int
    last_error: str | None
    sent_at: dt.datetime | None


async def outbox(sm) -> list[BudgetAlertRow]:
    stmt = select(Alert).where(Alert.source == db_budgets.ALERT_SOURCE).order_by(Alert.id)
    async with reading(sm) as session:
        rows = list(await session.scalars(stmt))
    parsed = []
    for row in rows:
        budget, period, kind, threshold = row.dedup_key.split("/")
        assert row.dedup_key == db_budgets.alert_key(int(budget), period, kind, int(threshold))
        parsed.append(
            BudgetAlertRow(
                int(budget), period, kind, int(threshold), row.attempts, row.last_error, row.sent_at
            )
        )
    return parsed


async def traffic(kind: str, proxy: RunningProxy, key: str) -> None:
    client = client_for(proxy, key)
    if kind == "chat":
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    elif kind == "responses":
        await client.responses.create(model="gpt-4.1", input="hi")
    else:
        run = await finished_run(client)
        assert run.status == "completed"


async def one_more_row(sm, team: str, n: int) -> Decimal:
    """Wait until `team` has n rows; their total cost."""
    await wait_for(lambda: _has(sm, team, n), timeout=30)
    return (await team_rows(sm, team))[1]


async def _has(sm, team: str, n: int) -> bool:
    return (await team_rows(sm, team))[0] >= n


async def refreshed(proxy: RunningProxy) -> None:
    tracker = proxy.app[BUDGETS].tracker
    since = time.monotonic()
    await wait_for(lambda: (tracker.refreshed_at or 0) > since, timeout=10)


def thresholds(receiver: Receiver) -> list[dict]:
    return [d for d in receiver.delivered if d["kind"] == "threshold"]


def check_signature(delivery) -> None:
    t = delivery.headers["X-Usage-Proxy-Timestamp"]
    expected = hmac.new(HOOK_SECRET.encode(), f"{t}.".encode() + delivery.body, hashlib.sha256)
    assert delivery.headers["X-Usage-Proxy-Signature"] == f"t={t},v1={expected.hexdigest()}"
    assert verify(HOOK_SECRET, delivery.headers["X-Usage-Proxy-Signature"], delivery.body,
                  time.time())  # fmt: skip
    assert not verify("another secret", delivery.headers["X-Usage-Proxy-Signature"],
                      delivery.body, time.time())  # fmt: skip


@pytest.mark.parametrize("kind", ["chat", "responses", "assistants"])
async def test_thresholds_crossed_by_traffic_send_one_signed_alert_each(
    kind, db_url, sm, upstream, start_proxy, receiver
):
    upstream.advance_clock(3600)  # its objects are created now, not an hour ago: this month
    proxy = await start_proxy(budget_settings(upstream, db_url, alert_webhook_url=receiver.url))
    await map_key(sm, PROBE_KEY, "probe")
    await map_key(sm, RED_KEY, "red")
    await traffic(kind, proxy, PROBE_KEY)
    cost = await one_more_row(sm, "probe", 1)  # what one request of this kind costs
    assert cost > 0
    limit = cost * Decimal("1.5")  # one request: 67% of it; two: 133%
    code, _, err = await run_cli("budgets", "set", "--team", "red", "--limit", f"{limit:f}",
                                 "--period", "month", "--warn", "50,100",
                                 "--database-url", db_url)  # fmt: skip
    assert code == 0, err

    await traffic(kind, proxy, RED_KEY)
    spent = await one_more_row(sm, "red", 1)
    # Thresholds only: late in a month, a forecast may go out beside them.
    [first] = await wait_for(lambda: thresholds(receiver), timeout=10)
    assert (first["kind"], first["threshold"], first["budget"]) == ("threshold", 50, 1)
    assert Decimal(first["spend"]) == spent and Decimal(first["limit"]) == limit
    assert first["subject"] == {"kind": "team", "name": "red", "key_hint": None}
    assert first["period"]["kind"] == "month" and first["text"].startswith("Budget 1: team red")

    await traffic(kind, proxy, RED_KEY)
    spent = await one_more_row(sm, "red", 2)
    await wait_for(lambda: len(thresholds(receiver)) == 2, timeout=10)
    second = thresholds(receiver)[1]
    assert (second["threshold"], Decimal(second["spend"])) == (100, spent)
    await refreshed(proxy)
    await refreshed(proxy)
    assert [d["threshold"] for d in thresholds(receiver)] == [50, 100]  # once each
    for delivery in receiver.posts:
        check_signature(delivery)


async def test_two_replicas_and_a_restart_send_exactly_one_alert_per_threshold(
    db_url, sm, upstream, start_proxy, receiver
):
    settings = budget_settings(upstream, db_url, alert_webhook_url=receiver.url)
    replicas = [await start_proxy(settings, clock=early), await start_proxy(settings, clock=early)]
    code, _, err = await run_cli("budgets", "set", "--team", "red", "--limit", "10",
                                 "--period", "day", "--warn", "50,80,100",
                                 "--database-url", db_url)  # fmt: skip
    assert code == 0, err
    for usd in ("4", "1", "2", "4"):  # 40%, 50%, 70%, 110%
        await spend(sm, "red", usd, at=EARLY)
        for proxy in replicas:
            await refreshed(proxy)
    await wait_for(lambda: len(receiver.delivered) >= 3, timeout=10)
    # A third replica (a restart) sees the same crossings: the outbox has them already.
    replicas.append(await start_proxy(settings, clock=early))
    for _ in range(3):
        for proxy in replicas:
            await refreshed(proxy)
    await wait_for(lambda: _sent(sm), timeout=5)
    assert sorted(d["threshold"] for d in receiver.delivered) == [50, 80, 100]
    assert len(receiver.posts) == 3
    alerts = await outbox(sm)
    assert [(a.kind, a.threshold) for a in alerts] == [
        ("threshold", 50),
        ("threshold", 80),
        ("threshold", 100),
    ]
    assert all(a.sent_at is not None and a.attempts == 0 for a in alerts)


async def test_a_webhook_that_fails_twice_then_succeeds(
    db_url, sm, upstream, start_proxy, receiver
):
    receiver.fail = 2
    settings = budget_settings(upstream, db_url, alert_webhook_url=receiver.url)
    proxy = await start_proxy(settings, clock=early)
    code, _, err = await run_cli("budgets", "set", "--team", "red", "--limit", "10",
                                 "--period", "week", "--warn", "80",
                                 "--database-url", db_url)  # fmt: skip
    assert code == 0, err
    await spend(sm, "red", "9", at=EARLY)
    await wait_for(lambda: receiver.delivered, timeout=10)
    assert [p.status for p in receiver.posts] == [500, 500, 200]
    assert len({p.body for p in receiver.posts}) == 1  # the same alert, retried
    metrics = proxy.app[METRICS].registry
    assert metrics.get_sample_value("usage_proxy_alert_webhook_failures_total") == 2
    [alert] = await wait_for(lambda: _sent(sm), timeout=5)
    assert alert.attempts == 2 and alert.last_error == "HTTP 500"


async def _sent(sm) -> list[BudgetAlertRow]:
    alerts = await outbox(sm)
    return alerts if alerts and all(a.sent_at is not None for a in alerts) else []


async def test_a_forecast_alert_goes_out_once_per_period(
    db_url, sm, upstream, start_proxy, receiver
):
    # Two thirds into November, 70% spent: at this rate the limit falls on Nov 23.
    now = [dt.datetime(2026, 11, 20, tzinfo=dt.UTC)]
    settings = budget_settings(upstream, db_url, alert_webhook_url=receiver.url)
    proxy = await start_proxy(settings, clock=lambda: now[0])
    code, _, err = await run_cli("budgets", "set", "--team", "red", "--limit", "500",
                                 "--period", "month", "--warn", "",
                                 "--database-url", db_url)  # fmt: skip
    assert code == 0, err
    await spend(sm, "red", "100", at=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    await refreshed(proxy)  # 100 by the 20th: $158 forecast, no alarm
    await spend(sm, "red", "250", at=dt.datetime(2026, 11, 19, tzinfo=dt.UTC))
    [alert] = await wait_for(lambda: receiver.delivered, timeout=10)
    assert alert["kind"] == "forecast" and alert["threshold"] is None
    assert "at this rate team red reaches its $500.00 monthly budget on Nov 28" in alert["text"]
    assert abs(Decimal(alert["forecast"]) - Decimal(350) * 30 / 19) < Decimal("1e-9")
    for _ in range(3):
        await refreshed(proxy)
    assert len(receiver.posts) == 1
    # A new period may forecast again.
    now[0] = dt.datetime(2026, 12, 25, tzinfo=dt.UTC)
    await spend(sm, "red", "450", at=dt.datetime(2026, 12, 24, tzinfo=dt.UTC))
    await wait_for(lambda: len(receiver.delivered) == 2, timeout=10)
    assert receiver.delivered[1]["period"]["start"].startswith("2026-12-01")
