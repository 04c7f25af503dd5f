"""The budgets' state in this process, refreshed from the database: every
`budget_refresh_interval` seconds, and soon after this process records usage while an enforced
budget exists. Each refresh reads the budgets (so a change applies on every replica within an
interval) and their spend, hands the refusing ones and those near their limit (proxy.budgets.near)
to the policy, sets the gauges, and puts
newly crossed thresholds and forecasts in the alert outbox (insert or nothing: one row however
many replicas see the crossing).

Failures: a refresh that fails (database down) is logged once and tried again at the next
interval; the last state stays in use meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.usage import UsageRecorded
from proxy.budgets.enforce import BudgetPolicy, Subject
from proxy.budgets.message import alert_body
from proxy.budgets.near import HORIZON_BASE, SpendRates, headroom
from proxy.budgets.spend import current_statuses
from proxy.budgets.status import BudgetStatus
from proxy.db import alerts as db_alerts
from proxy.db import budgets as db_budgets
from proxy.db.errors import DB_ERRORS
from proxy.metrics import Metrics

__all__ = ["BudgetTracker"]

_log = logging.getLogger("proxy.budgets")
# Between refreshes woken by recorded usage: a burst of writes must not become a burst of reads.
# At least this, and twice as long as the last refresh took (a project's spend sums the
# period's rows, which grow): a replica spends at most a third of its time refreshing...
_MIN_GAP = 0.01
# ... but no more than this: under load a refresh "takes" the event loop's delay too (0.27 s
# seen with two busy replicas on two cores), and a gap of a second let a burst from idle cross
# a small limit before any refresh saw it near (bench/README.md, "Budget enforcement"). Teams
# and keys are read from the rollup, a few cells each.
_MAX_GAP = 0.1

AlertKey = tuple[int, str, str, int]


class BudgetTracker:
    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        policy: BudgetPolicy,
        metrics: Metrics,
        *,
        interval: float,
        now: Callable[[], dt.datetime],
        on_alerts: Callable[[], None] = lambda: None,
    ) -> None:
        self._sm = sessionmaker
        self._policy = policy
        self._metrics = metrics
        self._interval = interval
        self._now = now
        self._on_alerts = on_alerts
        self.statuses: list[BudgetStatus] = []
        # When the last refresh that succeeded began (time.monotonic()): the state is as of then.
        self.refreshed_at: float | None = None
        self._known: set[AlertKey] = set()  # alerts known to be in the outbox
        self._wake = asyncio.Event()
        self._enforcing = False
        self._failing = False
        self._took = 0.0
        self._rates = SpendRates()
        self._gap = interval  # between the beginnings of the last two refreshes

    def usage_recorded(self, event: UsageRecorded) -> None:
        """A UsageSink: this process wrote usage, so an enforced budget may have been reached."""
        if self._enforcing:
            self._wake.set()

    async def refresh(self) -> bool:
        """Read the budgets and their spend once; False if the database could not be read."""
        began = time.monotonic()
        try:
            statuses = await current_statuses(self._sm(), self._now())
        except DB_ERRORS as exc:
            if not self._failing:
                _log.warning("cannot read the budgets: %s", type(exc).__name__)
            self._failing = True
            return False
        self._failing = False
        self.statuses = statuses
        if self.refreshed_at is not None:
            self._gap = began - self.refreshed_at
        self.refreshed_at = began
        self._took = time.monotonic() - began
        self._enforcing = any(s.rule.enforce for s in statuses)
        self._publish(statuses, began)
        self._metrics.budget_ratios({s.rule.id: s.ratio for s in statuses})
        await self._queue_alerts(statuses)
        return True

    def _publish(self, statuses: list[BudgetStatus], began: float) -> None:
        refusing: dict[Subject, BudgetStatus] = {}
        near: dict[Subject, tuple[BudgetStatus, ...]] = {}
        # Past the gap to the next refresh (the interval, or the last gap when refreshes run
        # late under load), twice, with room to spare.
        horizon = HORIZON_BASE + 2 * max(self._interval, self._gap)
        for s in statuses:
            if not s.rule.enforce:
                continue
            subject = (s.rule.subject_kind, s.rule.subject)
            rate = self._rates.add(s.rule.id, began, s.spend)
            if s.refusing:
                refusing[subject] = s
            elif s.spend + headroom(s.rule.limit_usd, rate, horizon) >= s.rule.limit_usd:
                near[subject] = (*near.get(subject, ()), s)
        self._rates.keep({s.rule.id for s in statuses if s.rule.enforce})
        self._policy.publish(refusing, near, began)

    async def _queue_alerts(self, statuses: list[BudgetStatus]) -> None:
        new: list[db_budgets.BudgetAlert] = []
        for s in statuses:
            due = [("threshold", t) for t in s.crossed]
            if s.forecast_alarm:
                due.append(("forecast", 0))
            for kind, threshold in due:
                key = (s.rule.id, s.period_start, kind, threshold)
                if key not in self._known:
                    body = alert_body(s, kind, threshold)
                    new.append(db_budgets.BudgetAlert(*key, body))
        if not new:
            return
        try:
            if await db_alerts.add_alerts(self._sm(), new):
                self._on_alerts()
        except DB_ERRORS as exc:
            _log.warning("cannot queue %d budget alert(s): %s", len(new), type(exc).__name__)
            return
        self._known.update((a.budget_id, a.period_start, a.kind, a.threshold) for a in new)

    async def run(self) -> None:
        """Refresh every interval, or sooner when woken, until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:
                # A bug, not the database: the last state stays, and the next refresh may do.
                _log.exception("refreshing the budgets failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
                await asyncio.sleep(min(max(_MIN_GAP, 2 * self._took), _MAX_GAP))
            except TimeoutError:
                pass
            self._wake.clear()
