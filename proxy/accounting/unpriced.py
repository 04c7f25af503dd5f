"""Unpriced usage made visible: a UsageSink that counts rows recorded without a price
(`usage_proxy_unpriced_events`) and logs each such model once per process, so an operator
learns of it the first time and the log is not flooded. `usage-proxy prices missing` lists
them all from the database; `usage-proxy reprice` prices them once a price is added."""

from __future__ import annotations

import logging

from proxy.accounting.usage import UsageRecorded
from proxy.metrics import Metrics

__all__ = ["UnpricedUsage"]

_log = logging.getLogger("proxy.accounting.pricing")
# A process logs at most this many distinct models: client-chosen model names are unbounded.
_MAX_LOGGED = 1000


class UnpricedUsage:
    """A UsageSink: counts unpriced rows per model and warns once per model."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._logged: set[str | None] = set()

    def __call__(self, event: UsageRecorded) -> None:
        for total in event.totals:
            if not total.unpriced:
                continue
            self._metrics.unpriced_events(total.model, total.unpriced)
            if total.model in self._logged or len(self._logged) >= _MAX_LOGGED:
                continue
            self._logged.add(total.model)
            _log.warning(
                "no price for model %r or a tool it used: its usage rows are recorded with "
                "cost_usd null; add it to pricing_file, then `usage-proxy reprice` "
                "(`usage-proxy prices missing` lists every unpriced model)",
                total.model,
            )
