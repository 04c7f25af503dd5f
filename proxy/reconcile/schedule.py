"""The scheduled billing pull of `serve`: every `billing_pull_interval` seconds, the replica
that holds the database lease pulls the last 3 days (today and the two before), then every
replica refreshes the month's metrics from the database and the puller alerts on flagged
closed days: logged, and queued in the alert outbox (source "reconcile", one per day) when a
sender is wired (`on_alerts`, which wakes it).

Exactly one replica pulls: the lease (proxy.db.billing.take_lease) is held for two intervals
and renewed every half interval while held, so when its holder stops, another takes over
within two intervals.
A failed pull (admin API down, key refused, database down) is logged and tried again next
round: it never touches traffic (fail open).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

from prometheus_client import Gauge
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db import alerts as db_alerts
from proxy.db.billing import take_lease
from proxy.forwarding.upstream.egress import Egress
from proxy.metrics import Metrics
from proxy.reconcile.admin_api import AdminApi, AdminApiError
from proxy.reconcile.pull import pull
from proxy.reconcile.query import ReconcileQuery
from proxy.reconcile.report import reconcile_rows

__all__ = ["LEASE", "SOURCE", "BillingSchedule"]

_log = logging.getLogger("proxy.billing")
LEASE = "billing_pull"
SOURCE = "reconcile"  # of its alerts in the outbox
_DAYS = 3


class BillingSchedule:
    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        metrics: Metrics,
        *,
        billing_url: str,
        admin_key: str,
        interval: float,
        tolerance: Decimal = Decimal("0.05"),
        holder: str | None = None,
        egress: Egress | None = None,
        on_alerts: Callable[[], None] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._api = lambda: AdminApi(billing_url, admin_key, egress=egress)
        self._interval = interval
        self._tolerance = tolerance
        self._on_alerts = on_alerts
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._alerted: set[tuple[Any, ...]] = set()
        self._task: asyncio.Task[None] | None = None
        r = metrics.registry
        self.last_pull = Gauge(
            "usage_proxy_billing_last_pull_timestamp_seconds",
            "When this replica last pulled billed costs (0: never)",
            registry=r,
        )
        self._gauges = {
            side: Gauge(
                f"usage_proxy_billing_{side}_usd",
                f"This month's {side} cost per project, USD",
                ["project"],
                registry=r,
            )
            for side in ("billed", "recorded", "residual")
        }
        self.pulls = 0
        self._lease = interval * 2
        self._holding = False

    async def context(self, app: Any) -> AsyncIterator[None]:
        """cleanup_ctx: the loop runs while the app does."""
        self._task = asyncio.create_task(self._loop(), name="billing-pull")
        yield
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                try:
                    await self.tick()
                except (AdminApiError, SQLAlchemyError, OSError) as exc:
                    # Fail open: the next round tries again; traffic never waits on this.
                    shown = exc if isinstance(exc, AdminApiError) else type(exc).__name__
                    _log.warning("billing pull failed: %s", shown)
                await asyncio.sleep(self._interval)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _heartbeat(self) -> None:
        """While this replica holds the lease, renew it twice an interval, so that neither a
        long pull nor the pause between rounds lets another replica start one beside it."""
        while True:
            await asyncio.sleep(self._interval / 2)
            if self._holding:
                try:
                    self._holding = await take_lease(
                        self._sessionmaker(), LEASE, self.holder, self._lease
                    )
                except (SQLAlchemyError, OSError):
                    self._holding = False

    async def tick(self, today: dt.date | None = None) -> bool:
        """One round; whether this replica pulled."""
        sm = self._sessionmaker()
        today = today or dt.datetime.now(dt.UTC).date()
        self._holding = await take_lease(sm, LEASE, self.holder, self._lease)
        if self._holding:
            async with self._api() as api:
                summary = await pull(
                    sm, api, today - dt.timedelta(days=_DAYS - 1), today + dt.timedelta(days=1)
                )
            self.pulls += 1
            self.last_pull.set(dt.datetime.now(dt.UTC).timestamp())
            _log.info("billing: %s", summary.line())
            await self._alert(sm, today)
        await self._refresh(sm, today)
        return self._holding

    async def _refresh(self, sm: async_sessionmaker[AsyncSession], today: dt.date) -> None:
        first = today.replace(day=1)
        query = ReconcileQuery(first, today + dt.timedelta(days=1), ("project",), self._tolerance)
        for row in (await reconcile_rows(sm, query))[:-1]:
            project = row["project"] or "none"
            self._gauges["billed"].labels(project).set(float(row["billed_usd"]))
            self._gauges["recorded"].labels(project).set(float(row["recorded_usd"]))
            self._gauges["residual"].labels(project).set(float(row["residual_usd"]))

    async def _alert(self, sm: async_sessionmaker[AsyncSession], today: dt.date) -> None:
        # Closed days only: today's bill is still growing and would always look short.
        since = today - dt.timedelta(days=_DAYS - 1)
        query = ReconcileQuery(since, today, ("day", "project"), self._tolerance)
        flagged: dict[str, list[dict[str, Any]]] = {}
        for row in (await reconcile_rows(sm, query))[:-1]:
            if not row["flagged"]:
                continue
            flagged.setdefault(str(row["day"]), []).append(row)
            key = (row["day"], row["project"], row["billed_usd"], row["recorded_usd"])
            if key not in self._alerted:
                self._alerted.add(key)
                _log.warning(
                    "billing residual flagged: day=%s project=%s billed=%s recorded=%s "
                    "residual=%s (%s%%)",
                    row["day"],
                    row["project"],
                    row["billed_usd"],
                    row["recorded_usd"],
                    row["residual_usd"],
                    row["residual_pct"],
                )
        if self._on_alerts is not None and flagged:
            # One outbox row per closed day, whichever replica pulled: the sender delivers it
            # once, signed, with retries.
            new = [_residual_alert(day, rows) for day, rows in sorted(flagged.items())]
            if await db_alerts.add_alerts(sm, new):
                self._on_alerts()


def _residual_alert(day: str, rows: list[dict[str, Any]]) -> db_alerts.OutboxAlert:
    residuals = [
        {
            "project": row["project"],
            "billed_usd": str(row["billed_usd"]),
            "recorded_usd": str(row["recorded_usd"]),
            "residual_usd": str(row["residual_usd"]),
            "residual_pct": None if row["residual_pct"] is None else str(row["residual_pct"]),
        }
        for row in rows
    ]
    parts = [
        f"{r['project'] or 'no project'} billed ${r['billed_usd']}, recorded ${r['recorded_usd']}"
        f" (residual ${r['residual_usd']})"
        for r in residuals
    ]
    payload = {
        "text": f"Billing residual on {day}: " + "; ".join(parts),
        "kind": "billing_residual",
        "day": day,
        "residuals": residuals,
    }
    # Migration 0015 spells the same key for the rows it carries over.
    return db_alerts.OutboxAlert(SOURCE, f"residual/{day}", json.dumps(payload))
