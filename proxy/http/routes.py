"""The reserved /_proxy/ endpoints. Nothing under /_proxy/ is ever forwarded upstream.

- GET /_proxy/health: always, without a token (health.py).
- GET /_proxy/usage: the report of `usage-proxy report` over HTTP, as JSON or CSV. Needs the
  admin token and accounting (usage.py).
- GET /_proxy/metrics: Prometheus text. Needs the admin token (metrics.py).
- GET /_proxy/reconcile: recorded beside billed cost, as `usage-proxy reconcile` gives it.
  Needs the admin token and accounting (reconcile.py).
- GET /_proxy/budgets: each budget's spend, ratio, forecast and state, as `usage-proxy budgets
  list` gives it. Needs the admin token and accounting (budgets.py).

Without a configured admin_token, usage and metrics are not routed at all and answer 404 like
any unknown /_proxy/ path: a proxy nobody configured for it exposes no billing data. With one,
`Authorization: Bearer <token>` is compared in constant time; anything else gets 401 before
any parameter is looked at.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.budgets.service import Budgets
from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.reachability import Reachability
from proxy.http.auth import AdminToken, error
from proxy.http.budgets import BudgetsEndpoint
from proxy.http.health import Health
from proxy.http.metrics import MetricsEndpoint
from proxy.http.reconcile import Reconcile
from proxy.http.usage import Usage
from proxy.metrics import Metrics
from proxy.settings import Settings

__all__ = ["install"]


async def _not_found(request: web.Request) -> web.Response:
    return error(404, f"no such proxy endpoint: {request.path}", "not_found")


def install(
    app: web.Application,
    settings: Settings,
    *,
    metrics: Metrics,
    dispatcher: Dispatcher,
    accounting: Any | None = None,
    reachability: Reachability | None = None,
    budgets: Budgets | None = None,
) -> None:
    """Route /_proxy/*: health always; metrics with an admin token; usage with an admin token
    and accounting (`accounting` is the proxy.accounting.service.Accounting, or None)."""
    app.router.add_get("/_proxy/health", Health(settings, accounting, reachability).handle)
    if settings.admin_token:
        token = AdminToken(settings.admin_token)
        pending = accounting.pending_jobs if accounting is not None else None
        app.router.add_get(
            "/_proxy/metrics", MetricsEndpoint(token, metrics, dispatcher, pending).handle
        )
        if accounting is not None:
            app.router.add_get("/_proxy/usage", Usage(token, accounting.sessionmaker).handle)
            app.router.add_get(
                "/_proxy/reconcile", Reconcile(token, accounting.sessionmaker).handle
            )
        if budgets is not None:
            app.router.add_get("/_proxy/budgets", BudgetsEndpoint(token, budgets).handle)
    app.router.add_route("*", "/_proxy/{tail:.*}", _not_found)
