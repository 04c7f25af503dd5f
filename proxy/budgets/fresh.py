"""Fresh reads of one budget's spend, for strict mode (proxy.budgets.enforce): the status of a
budget from a query that began after the caller asked, shared by every caller that asked
while it had not begun (single flight), with at most one query per budget running at a time
in this process. So under any number of concurrent admissions a budget costs this replica at
most one query per database round trip, and each admission waits at most two.

Failures: a caller waits at most `timeout` seconds, then gets the status it passed in (the
tracker's last state): fail open, a request is never held up by the database. A query that
fails (database down) answers the same; it is logged once until one succeeds."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.budgets.status import BudgetStatus, evaluate
from proxy.db import budgets as db_budgets
from proxy.db.errors import DB_ERRORS
from proxy.metrics import Metrics

__all__ = ["FreshReads"]

_log = logging.getLogger("proxy.budgets")
Read = Callable[[], Awaitable[BudgetStatus]]


class _Flight:
    """The query of one budget that is running (`current`), and the one that will begin when
    it ends (`next`), which every caller arriving meanwhile shares."""

    __slots__ = ("current", "next")

    def __init__(self) -> None:
        self.current: asyncio.Task[BudgetStatus] | None = None
        self.next: asyncio.Task[BudgetStatus] | None = None

    def join(self, read: Read) -> asyncio.Task[BudgetStatus]:
        if self.next is not None:
            return self.next  # it has not begun: it began after this caller arrived
        if self.current is None or self.current.done():
            self.current = _task(read())
            return self.current
        self.next = _task(self._after(self.current, read))
        return self.next

    async def _after(self, running: asyncio.Task[BudgetStatus], read: Read) -> BudgetStatus:
        await asyncio.wait({running})
        self.current, self.next = self.next, None
        return await read()


def _task(coro: Awaitable[BudgetStatus]) -> asyncio.Task[BudgetStatus]:
    task = asyncio.ensure_future(coro)
    # Every caller may have stopped waiting (timeout): its exception is nobody's to raise.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


class FreshReads:
    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        metrics: Metrics,
        *,
        timeout: float,
        now: Callable[[], dt.datetime],
    ) -> None:
        self._sm = sessionmaker
        self._metrics = metrics
        self._timeout = timeout
        self._now = now
        self._flights: dict[int, _Flight] = {}
        self._failing = False

    async def status(self, cached: BudgetStatus) -> BudgetStatus:
        """`cached`'s budget with the spend of a read that began after this call; `cached`
        itself if that read fails or does not answer within the timeout."""
        flight = self._flights.get(cached.rule.id)
        if flight is None:
            flight = self._flights[cached.rule.id] = _Flight()
        task = flight.join(lambda: self._read(cached))
        done, _ = await asyncio.wait({task}, timeout=self._timeout)
        if not done:
            self._metrics.budget_fresh_read("timeout")
            return cached
        if task.cancelled() or task.exception() is not None:
            self._metrics.budget_fresh_read("failed")
            return cached
        return task.result()

    def keep(self, budgets: set[int]) -> None:
        """Forget the flights of budgets not in `budgets` (none of them is near any more)."""
        for gone in self._flights.keys() - budgets:
            flight = self._flights[gone]
            if (flight.current is None or flight.current.done()) and flight.next is None:
                del self._flights[gone]

    async def close(self) -> None:
        """Cancel the reads running or due (the database is about to close)."""
        tasks = [t for f in self._flights.values() for t in (f.current, f.next) if t is not None]
        self._flights.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, cached: BudgetStatus) -> BudgetStatus:
        rule, now = cached.rule, self._now()
        self._metrics.budget_fresh_read("read")
        try:
            spend = await db_budgets.spend_by_subject(
                self._sm(), rule.subject_kind, [rule.subject], cached.start, cached.end
            )
        except DB_ERRORS as exc:
            if not self._failing:
                _log.warning("cannot read budget %d's spend: %s", rule.id, type(exc).__name__)
            self._failing = True
            raise
        self._failing = False
        if not cached.start <= now < cached.end:
            return cached  # the period ended since the last refresh: the next one tells
        return evaluate(rule, spend.get(rule.subject, Decimal(0)), now)
