"""GET /_proxy/metrics (Prometheus text; needs the admin token, since tokens and cost per team
are billing data), and the observer that counts forwarded exchanges."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from proxy.forwarding.exchange import Dispatcher, Exchange
from proxy.http.auth import AdminToken
from proxy.metrics import Metrics

__all__ = ["MetricsEndpoint", "MetricsObserver"]

_log = logging.getLogger("proxy.admin")

_PENDING_TIMEOUT = 2.0  # a scrape must answer even when the database hangs


class MetricsObserver:
    """Counts every forwarded exchange by method class and status, and observes the upstream
    latency (request sent to response headers received). It runs on the dispatcher's task, so
    the client's path pays only for the dispatcher's queue. Status "0" means the client got no
    upstream response: unreachable, timed out, or the client left before the headers came."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_response(self, exchange: Exchange) -> None:
        started = exchange.response_started_at
        self._metrics.request(
            exchange.method,
            exchange.status or 0,
            None if started is None else max(started - exchange.started_at, 0.0),
        )

    on_error = on_response


class MetricsEndpoint:
    """`pending_jobs` counts the collection jobs still to do (None before the database is
    open); None when there is no accounting."""

    def __init__(
        self,
        token: AdminToken,
        metrics: Metrics,
        dispatcher: Dispatcher,
        pending_jobs: Callable[[], Awaitable[int | None]] | None,
    ) -> None:
        self._token = token
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._pending_jobs = pending_jobs

    async def handle(self, request: web.Request) -> web.Response:
        if not self._token.allows(request):
            return self._token.refused()
        await self._refresh()
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _refresh(self) -> None:
        self._metrics.observer_failures.set(self._dispatcher.failures)
        if self._pending_jobs is None:
            return
        try:
            pending = await asyncio.wait_for(self._pending_jobs(), _PENDING_TIMEOUT)
        except (SQLAlchemyError, OSError) as exc:
            # The gauge keeps its last value: a database outage must not fail the scrape, and
            # collection_failures and the health endpoint already tell of it.
            _log.debug("pending jobs not refreshed: %s", type(exc).__name__)
            return
        if pending is not None:
            self._metrics.pending_jobs.set(pending)
