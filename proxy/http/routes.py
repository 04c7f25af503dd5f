"""The reserved /_proxy/ endpoints. Nothing under /_proxy/ is ever forwarded upstream.

- GET /_proxy/health: always, without a token (health.py).
- GET /_proxy/usage: the report of `usage-proxy report` over HTTP, as JSON or CSV. Needs the
  admin or the viewer token, and accounting (usage.py).
- GET /_proxy/metrics: Prometheus text. Needs the admin token (metrics.py).
- GET /_proxy/ui/: the chargeback dashboard (ui/). Needs the admin or the viewer token (a
  bearer token or the login form's session cookie) and accounting.
- GET /_proxy/reconcile: recorded beside billed cost, as `usage-proxy reconcile` gives it.
  Needs the admin token and accounting (reconcile.py).
- GET /_proxy/budgets: each budget's spend, ratio, forecast and state, as `usage-proxy budgets
  list` gives it. Needs the admin token and accounting (budgets.py).

Without a configured admin_token (or viewer_token, for usage and the dashboard), these are not
routed at all and answer 404 like any unknown /_proxy/ path: a proxy nobody configured for it
exposes no billing data. With one,
`Authorization: Bearer <token>` is compared in constant time; anything else gets 401 before
any parameter is looked at.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.budgets.service import Budgets
from proxy.db.secrets import get_or_create_secret
from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.reachability import Reachability
from proxy.http.auth import AdminToken, error
from proxy.http.budgets import BudgetsEndpoint
from proxy.http.health import Health
from proxy.http.metrics import MetricsEndpoint
from proxy.http.reconcile import Reconcile
from proxy.http.ui import install_ui
from proxy.http.usage import Usage
from proxy.metrics import Metrics
from proxy.settings import Settings

__all__ = ["install"]


def _ui_budgets(budgets: Budgets | None) -> Any:
    """The dashboard's view of the budgets: (name, spend, limit, state), as last refreshed."""
    if budgets is None:
        return None
    tracker = budgets.tracker
    return lambda: [
        (s.rule.subject_label, s.spend, s.rule.limit_usd, s.state) for s in tracker.statuses
    ]


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
            app.router.add_get(
                "/_proxy/reconcile", Reconcile(token, accounting.sessionmaker).handle
            )
        if budgets is not None:
            app.router.add_get("/_proxy/budgets", BudgetsEndpoint(token, budgets).handle)
    readers = [t for t in (settings.admin_token, settings.viewer_token) if t]
    if readers and accounting is not None:
        sm = accounting.sessionmaker
        app.router.add_get("/_proxy/usage", Usage(AdminToken(*readers), sm).handle)
        install_ui(
            app,
            admin_token=settings.admin_token,
            viewer_token=settings.viewer_token,
            sessionmaker=sm,
            load_secret=lambda: get_or_create_secret(sm(), "ui_session"),
            budgets=_ui_budgets(budgets),
        )
    app.router.add_route("*", "/_proxy/{tail:.*}", _not_found)
