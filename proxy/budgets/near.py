"""Which enforced budgets are "near" their limit, where a request is admitted only on a fresh
read of the spend (strict mode, proxy.budgets.enforce); pure.

A budget is near when its spend plus a headroom reaches the limit. The headroom is the larger
of NEAR_FRACTION of the limit and the spend rate seen over the last refreshes times a horizon
longer than the gap between two refreshes (HORIZON_BASE + 2 x the larger of
budget_refresh_interval and the last gap): the state is as of the last refresh, so between two
refreshes a subject spends about rate x gap, and a burst at the rate seen cannot carry it from
"far" to past the limit unseen. The fraction covers a burst that starts from idle (no rate
seen yet) at the cost of strict mode over the last tenth of every enforced budget; a burst from
idle that spends more than that tenth before the first refresh after it began (at most a
refresh interval and three refresh times) is judged strictly only from that refresh on."""

from __future__ import annotations

from collections import deque
from decimal import Decimal

__all__ = ["HORIZON_BASE", "NEAR_FRACTION", "SpendRates", "headroom"]

NEAR_FRACTION = Decimal("0.1")
HORIZON_BASE = 2.0  # seconds
# Rates are taken over windows of at least this long, ending at the last sample, starting
# within _WINDOW before it. Short, so that a burst shows from the second refresh into it: one
# row's cost over this span reads as a rate, which errs towards strict mode, never away.
_MIN_SPAN = 0.02
_WINDOW = 5.0
_SPACING = 0.01  # samples closer than this to the last kept one are not kept


def headroom(limit: Decimal, rate: Decimal, horizon: float) -> Decimal:
    """How far below `limit` a budget is near, at `rate` USD/s seen, for a `horizon` in s."""
    return max(limit * NEAR_FRACTION, rate * Decimal(str(round(horizon, 3))))


class SpendRates:
    """The recent spend samples of each budget (by id), and the highest rate over a trailing
    window of at least _MIN_SPAN within the last _WINDOW seconds: a burst shows at once."""

    def __init__(self) -> None:
        self._samples: dict[int, deque[tuple[float, Decimal]]] = {}

    def add(self, budget: int, at: float, spend: Decimal) -> Decimal:
        """Record the spend of `budget` at monotonic time `at`; its rate (USD/s) now."""
        samples = self._samples.setdefault(budget, deque())
        while samples and at - samples[0][0] > _WINDOW:
            samples.popleft()
        if samples and spend < samples[-1][1]:
            samples.clear()  # a new period, or spend moved away: older samples say nothing
        rate = Decimal(0)
        for t, s in samples:
            span = at - t
            if span < _MIN_SPAN:
                break
            rate = max(rate, (spend - s) / Decimal(str(round(span, 6))))
        if not samples or at - samples[-1][0] >= _SPACING:
            samples.append((at, spend))
        return rate

    def keep(self, budgets: set[int]) -> None:
        """Forget the budgets not in `budgets` (removed, or no longer enforced)."""
        for gone in self._samples.keys() - budgets:
            del self._samples[gone]
