"""Where a budget stands in its period: spend, ratio, the linear forecast and the state; pure.

The forecast projects the spend so far at the same rate to the end of the period. It speaks
only once FORECAST_MIN_ELAPSED of the period has passed (a month: 6 days; a week: 34 hours; a
day: 4.8 hours) and something has been spent: a projection from the first hours of a month
would alarm on any early burst."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from proxy.budgets.periods import bounds
from proxy.budgets.spec import BudgetRule

__all__ = ["FORECAST_MIN_ELAPSED", "STATES", "BudgetStatus", "evaluate"]

FORECAST_MIN_ELAPSED = 0.2
STATES = ("ok", "warned", "exceeded", "enforced")
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    rule: BudgetRule
    start: dt.datetime
    end: dt.datetime
    spend: Decimal
    # None: too early in the period for a forecast (FORECAST_MIN_ELAPSED), or nothing spent.
    forecast: Decimal | None
    # When the projection reaches the limit, if it does within the period.
    reaches_limit_at: dt.datetime | None

    @property
    def ratio(self) -> float:
        return float(self.spend / self.rule.limit_usd)

    @property
    def crossed(self) -> tuple[int, ...]:
        """The warning thresholds (percent) the spend has reached."""
        return tuple(t for t in self.rule.warn if self.spend * 100 >= self.rule.limit_usd * t)

    @property
    def exceeded(self) -> bool:
        return self.spend >= self.rule.limit_usd

    @property
    def refusing(self) -> bool:
        """Requests of the subject are refused: an enforced budget whose limit is reached."""
        return self.rule.enforce and self.exceeded

    @property
    def forecast_alarm(self) -> bool:
        """The projection crosses the limit before the period ends, which is not reached yet."""
        return self.reaches_limit_at is not None and not self.exceeded

    @property
    def state(self) -> str:
        if self.exceeded:
            return "enforced" if self.rule.enforce else "exceeded"
        return "warned" if self.crossed else "ok"

    @property
    def period_start(self) -> str:
        return self.start.date().isoformat()


def evaluate(rule: BudgetRule, spend: Decimal, now: dt.datetime) -> BudgetStatus:
    """The status of `rule` at `now`, given the subject's spend in the period `now` is in."""
    start, end = bounds(rule.period, now)
    elapsed = (now - start).total_seconds()
    length = (end - start).total_seconds()
    forecast = reaches = None
    if spend > _ZERO and elapsed >= FORECAST_MIN_ELAPSED * length:
        rate = spend / Decimal(elapsed)  # USD per second
        forecast = rate * Decimal(length)
        if forecast >= rule.limit_usd:
            at = start + dt.timedelta(seconds=float(rule.limit_usd / rate))
            reaches = min(at, end)
    return BudgetStatus(rule, start, end, spend, forecast, reaches)
