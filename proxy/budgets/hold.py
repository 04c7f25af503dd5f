"""The budgets' Holder (proxy.forwarding.holds): the answer to a request whose subject has an
enforced budget near its limit (or past it) keeps its last bytes until the usage row it made is
committed. A client that sends again the instant its answer arrives then finds its spend in the
database, on every replica, and strict mode's fresh read (proxy.budgets.enforce) counts it:
the overspend is bounded by the requests in flight at the crossing, not those plus one more
per client.

Far from any limit it costs one dictionary test (no budget near or refusing) or, when some
subject is near, the cached attribution of the request and a lookup per subject kind."""

from __future__ import annotations

from proxy.budgets.enforce import Attribute, BudgetPolicy, subjects_of
from proxy.forwarding.exchange import Exchange
from proxy.metrics import Metrics

__all__ = ["BudgetHolder"]


class BudgetHolder:
    def __init__(self, policy: BudgetPolicy, attribute: Attribute, metrics: Metrics) -> None:
        self._policy = policy
        self._attribute = attribute
        self._metrics = metrics

    async def hold(self, exchange: Exchange) -> bool:
        policy = self._policy
        if not policy.near and not policy.refusing:
            return False
        sent = exchange.upstream_headers
        if sent is None:
            return False
        who = await self._attribute(
            sent, exchange.request_headers, keep=False, query=exchange.query_string
        )
        near, refusing = policy.near, policy.refusing
        if any(s in near or s in refusing for s in subjects_of(who)):
            self._metrics.budget_held()
            return True
        return False
