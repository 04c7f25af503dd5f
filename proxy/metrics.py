"""Prometheus metrics, one registry per app (so tests and several apps in one process don't
collide). Labels are bounded: method class, status, team, model, kind; never ids or keys."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_MAX_LABEL_VALUES = 200  # beyond this many distinct teams or models, the rest become "other"


class _Bounded:
    """Caps the distinct values one label may take, so a misbehaving client cannot blow up the
    series count with made-up team or model names."""

    def __init__(self, limit: int = _MAX_LABEL_VALUES) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str | None) -> str:
        value = value or "unknown"
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._forwarded = _Forwarded()
        r.register(self._forwarded)
        self.runs_recorded = Counter(
            "usage_proxy_runs_recorded", "Assistants runs recorded", ["source"], registry=r
        )
        self.events_recorded = Counter(
            "usage_proxy_events_recorded", "Usage rows recorded", ["kind"], registry=r
        )
        self.pending_jobs = Gauge(
            "usage_proxy_pending_jobs", "Collection jobs waiting in the database", registry=r
        )
        self.backlog = Gauge(
            "usage_proxy_unwritten_jobs",
            "Jobs held in memory because the database could not be written",
            registry=r,
        )
        self.collection_failures = Counter(
            "usage_proxy_collection_failures", "Failed collection attempts", ["reason"], registry=r
        )
        self.upstream_errors = Counter(
            "usage_proxy_upstream_errors", "4xx/5xx API responses", ["team", "status"], registry=r
        )
        self.tokens = Counter(
            "usage_proxy_tokens", "Tokens recorded", ["team", "model", "type"], registry=r
        )
        self.cost = Counter("usage_proxy_cost_usd", "Cost recorded", ["team", "model"], registry=r)
        self.estimated_partial = Counter(
            "usage_proxy_estimated_partial",
            "Rows whose prompt was estimated from part of a request larger than "
            "max_observed_request (a lower bound)",
            ["kind"],
            registry=r,
        )
        self.unpriced = Counter(
            "usage_proxy_unpriced_events",
            "Usage rows recorded without a price (cost_usd null)",
            ["model"],
            registry=r,
        )
        self.runs_unseen = Counter(
            "usage_proxy_runs_unseen",
            "Create-and-runs whose replica died before their answer was seen, and whose run no"
            " replica saw since: maybe unrecorded (an upper bound)",
            ["team"],
            registry=r,
        )
        self.observer_failures = Gauge(
            "usage_proxy_observer_failures", "Observer calls that raised", registry=r
        )
        self.holds_timed_out = Gauge(
            "usage_proxy_holds_timed_out",
            "Held answers sent, and requests forwarded, at hold_timeout, before accounting"
            " had stored what it waited for",
            registry=r,
        )
        self.credentials_held = Gauge(
            "usage_proxy_credentials_held", "API keys held in memory for collection", registry=r
        )
        # Budgets (proxy/budgets): labelled by budget id, at most _MAX_LABEL_VALUES of them.
        self.budget_used_ratio = Gauge(
            "usage_proxy_budget_used_ratio",
            "Spend in the current period over the limit, per budget",
            ["budget"],
            registry=r,
        )
        # Refused requests are counted here only, not in usage_proxy_requests_total (which
        # counts forwarded exchanges): the budget label is bounded as the gauge's is.
        self.budget_refusals = Counter(
            "usage_proxy_budget_refusals",
            "Requests refused (429) by an enforced budget",
            ["budget"],
            registry=r,
        )
        self.budget_holds = Counter(
            "usage_proxy_budget_holds",
            "Strict mode: answers held until their usage row was committed (subject near an "
            "enforced budget's limit)",
            registry=r,
        )
        self.budget_fresh_reads = Counter(
            "usage_proxy_budget_fresh_reads",
            "Strict mode: fresh reads of a near budget's spend (read: a query run; timeout, "
            "failed: an admission judged on the last refresh instead)",
            ["outcome"],
            registry=r,
        )
        self.alerts_sent = Counter(
            "usage_proxy_alerts_sent",
            "Alerts (budgets, billing residuals) delivered to the webhook",
            registry=r,
        )
        self.alert_webhook_failures = Counter(
            "usage_proxy_alert_webhook_failures",
            "Alert deliveries that failed (each is retried)",
            registry=r,
        )
        self._budgets: set[str] = set()
        self._refusing_budget = _Bounded()
        self._team = _Bounded()
        self._model = _Bounded()
        # Children by label values: `labels()` costs microseconds per call. The label values
        # are bounded, so are these dicts.
        self._usage: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._kinds: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}

    def request(self, method: str, status: int, latency: float | None = None) -> None:
        """One forwarded exchange, and the upstream latency to its response headers (None:
        no headers came)."""
        f = self._forwarded
        key = (method, status)
        count = f.requests.get(key)
        if count is None and method not in _KNOWN_METHODS:
            key = ("OTHER", status)  # made-up methods must not grow the dict
            count = f.requests.get(key)
        f.requests[key] = (count or 0) + 1
        if latency is not None:
            f.buckets[bisect.bisect_left(_LATENCY_BUCKETS, latency)] += 1
            f.latency_sum += latency

    def recorded(self, kind: str, n: int = 1) -> None:
        """`n` usage rows of `kind` written."""
        child = self._kinds.get(kind)
        if child is None:
            child = self._kinds[kind] = self.events_recorded.labels(kind=kind)
        child.inc(n)

    def run_recorded(self, source: str, n: int = 1) -> None:
        """`n` Assistants runs recorded, their usage from `source` (reported or estimated)."""
        child = self._sources.get(source)
        if child is None:
            child = self._sources[source] = self.runs_recorded.labels(source=source)
        child.inc(n)

    def collection_failed(self, reason: str, n: int = 1) -> None:
        self.collection_failures.labels(reason=reason).inc(n)

    def run_unseen(self, team: str | None) -> None:
        """A create-and-run marked unseen (proxy.db.unseen_creates)."""
        self.runs_unseen.labels(team=self._team(team)).inc()

    def api_error(self, team: str | None, status: int) -> None:
        self.upstream_errors.labels(team=self._team(team), status=str(status)).inc()

    def usage(
        self, team: str | None, model: str | None, prompt: int, completion: int, cost: Decimal
    ) -> None:
        t, m = self._team(team), self._model(model)
        children = self._usage.get((t, m))
        if children is None:
            children = self._usage[(t, m)] = (
                self.tokens.labels(team=t, model=m, type="prompt"),
                self.tokens.labels(team=t, model=m, type="completion"),
                self.cost.labels(team=t, model=m),
            )
        children[0].inc(prompt)
        children[1].inc(completion)
        children[2].inc(float(cost))

    def partial_estimate(self, kind: str) -> None:
        """One row estimated from part of its request (usage_source "estimated_partial")."""
        self.estimated_partial.labels(kind=kind).inc()

    def unpriced_events(self, model: str | None, n: int) -> None:
        """`n` usage rows of `model` recorded without a price."""
        self.unpriced.labels(model=self._model(model)).inc(n)

    def budget_ratios(self, ratios: dict[int, float]) -> None:
        """The used ratio of every budget now; the gauges of budgets gone are removed."""
        shown = {str(i): r for i, r in sorted(ratios.items())[:_MAX_LABEL_VALUES]}
        for gone in self._budgets - shown.keys():
            self.budget_used_ratio.remove(gone)
        for budget, ratio in shown.items():
            self.budget_used_ratio.labels(budget=budget).set(ratio)
        self._budgets = set(shown)

    def budget_refused(self, budget: int) -> None:
        self.budget_refusals.labels(budget=self._refusing_budget(str(budget))).inc()

    def budget_held(self) -> None:
        self.budget_holds.inc()

    def budget_fresh_read(self, outcome: str) -> None:
        """`outcome`: read, timeout or failed."""
        self.budget_fresh_reads.labels(outcome=outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


_KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class _Forwarded:
    """Forwarded requests by method and status, and the upstream latency histogram, as plain
    numbers turned into metrics when scraped. They change on every request, and
    prometheus_client's own counters take a lock per increment and per histogram bucket (~15,000
    instructions a request, bench/README.md). Only the event loop's thread writes or reads them."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.latency_sum = 0.0

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "usage_proxy_requests", "Forwarded requests", labels=["method", "status"]
        )
        for (method, status), n in sorted(self.requests.items()):
            requests.add_metric([method, str(status)], n)
        yield requests
        cumulative, buckets = 0, []
        bounds = (*map(floatToGoString, _LATENCY_BUCKETS), "+Inf")
        for bound, n in zip(bounds, self.buckets, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        latency = HistogramMetricFamily(
            "usage_proxy_upstream_latency_seconds",
            "Time from forwarding a request to the upstream's response headers",
        )
        latency.add_metric([], buckets, self.latency_sum)
        yield latency
