"""Budgets, wired: the tracker (state from the database) and the enforcement policy the
Forwarder consults, with one lifecycle (`context`, an aiohttp cleanup_ctx). Budgets need the
accounting: its database, its attributor and its UsageRecorded signal. Their alerts go to the
outbox, and `on_alerts` wakes its sender (proxy.alerts, wired by the app) when there are new."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from proxy.accounting.service import Accounting
from proxy.budgets.enforce import BudgetPolicy
from proxy.budgets.fresh import FreshReads
from proxy.budgets.hold import BudgetHolder
from proxy.budgets.tracker import BudgetTracker
from proxy.db.models import utcnow
from proxy.forwarding.holds import Holder
from proxy.settings import Settings

__all__ = ["Budgets"]


class Budgets:
    def __init__(
        self,
        settings: Settings,
        accounting: Accounting,
        *,
        now: Callable[[], dt.datetime] = utcnow,
        on_alerts: Callable[[], None] = lambda: None,
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
        self.tracker = BudgetTracker(
            accounting.sessionmaker,
            self.policy,
            metrics,
            interval=settings.budget_refresh_interval,
            now=now,
            on_alerts=on_alerts,
        )
        accounting.recorded.subscribe(self.tracker.usage_recorded)
        self._tasks: list[asyncio.Task[None]] = []

    def holders(self) -> list[Holder]:
        """Strict mode's: near a limit, answers wait until their usage row is committed."""
        return [self._holder] if self.fresh is not None else []

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """After the accounting's: the database is open."""
        self._tasks.append(asyncio.create_task(self.tracker.run()))
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            if self.fresh is not None:
                await self.fresh.close()
