"""Budgets, wired: the tracker (state from the database), the enforcement policy the Forwarder
consults, and the webhook sender, with one lifecycle (`context`, an aiohttp cleanup_ctx).
Budgets need the accounting: its database, its attributor and its UsageRecorded signal."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from proxy.accounting.service import Accounting
from proxy.budgets.enforce import BudgetPolicy
from proxy.budgets.fresh import FreshReads
from proxy.budgets.hold import BudgetHolder
from proxy.budgets.tracker import BudgetTracker
from proxy.budgets.webhook import AlertSender
from proxy.db.models import utcnow
from proxy.forwarding.holds import Holder
from proxy.forwarding.upstream.egress import Egress
from proxy.settings import Settings

__all__ = ["Budgets"]

_log = logging.getLogger("proxy.budgets")


class Budgets:
    def __init__(
        self,
        settings: Settings,
        accounting: Accounting,
        *,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.now = now
        self.sessionmaker = accounting.sessionmaker
        metrics = accounting.metrics
        # Strict mode: near an enforced limit, admit on a fresh read (proxy.budgets.enforce).
        self.fresh = None
        if settings.budget_strict_timeout > 0:
            self.fresh = FreshReads(
                accounting.sessionmaker,
                metrics,
                timeout=settings.budget_strict_timeout,
                now=now,
            )
        self.policy = BudgetPolicy(accounting.attribute, metrics, self.fresh)
        self._holder = BudgetHolder(self.policy, accounting.attribute, metrics)
        self.sender: AlertSender | None = None
        if settings.alert_webhook_url:
            self.sender = AlertSender(
                accounting.sessionmaker,
                metrics,
                url=settings.alert_webhook_url,
                secret=settings.alert_webhook_secret,
                retry_base=settings.alert_retry_base,
                poll_interval=min(1.0, settings.budget_refresh_interval * 2),
                egress=Egress(settings.upstream_proxy, settings.upstream_ca_file),
            )
            if not settings.alert_webhook_secret:
                _log.warning("alert_webhook_url is set without alert_webhook_secret: unsigned")
        self.tracker = BudgetTracker(
            accounting.sessionmaker,
            self.policy,
            metrics,
            interval=settings.budget_refresh_interval,
            now=now,
            on_alerts=self.sender.wake if self.sender is not None else lambda: None,
        )
        accounting.recorded.subscribe(self.tracker.usage_recorded)
        self._tasks: list[asyncio.Task[None]] = []

    def holders(self) -> list[Holder]:
        """Strict mode's: near a limit, answers wait until their usage row is committed."""
        return [self._holder] if self.fresh is not None else []

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """After the accounting's: the database is open."""
        self._tasks.append(asyncio.create_task(self.tracker.run()))
        if self.sender is not None:
            self._tasks.append(asyncio.create_task(self.sender.run()))
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
