"""The reserved /_proxy/ endpoints. Nothing under /_proxy/ is ever forwarded upstream.

- GET /_proxy/health: always, without a token (load balancers and compose probe it); it tells
  nothing secret.
- GET /_proxy/usage: the report of `usage-proxy report` over HTTP, as JSON or CSV. Needs the
  admin token and accounting.
- GET /_proxy/metrics: Prometheus text. Needs the admin token (scrapers send it as a bearer
  token), since tokens and cost per team are billing data.

Without a configured admin_token, usage and metrics are not routed at all and answer 404 like
any unknown /_proxy/ path: a proxy nobody configured for it exposes no billing data. With one,
`Authorization: Bearer <token>` is compared in constant time; anything else gets 401 before
any parameter is looked at.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy import __version__
from proxy.cli import parse_group_by, parse_month, parse_when
from proxy.exchange import Dispatcher, Exchange
from proxy.metrics import Metrics
from proxy.settings import Settings

__all__ = ["MetricsObserver", "install"]

_log = logging.getLogger("proxy.admin")

_PENDING_TIMEOUT = 2.0  # a scrape must answer even when the database hangs
_FORMATS = ("json", "csv")
_CONTENT_TYPES = {"json": "application/json", "csv": "text/csv"}
_FILTERS = ("team", "kind", "model")
_PARAMS = frozenset({"since", "until", "month", "group_by", "format", *_FILTERS})


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


class _BadParameter(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "proxy_error",
                "param": param,
                "code": code,
            }
        },
        status=status,
    )


class _Admin:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        dispatcher: Dispatcher,
        accounting: Any | None,
    ) -> None:
        self._settings = settings
        self._token = settings.admin_token.encode()
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._accounting = accounting

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self._token)

    def _unauthorized(self) -> web.Response:
        response = _error(401, "a valid admin token is required", "invalid_admin_token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="usage-proxy"'
        return response

    async def health(self, request: web.Request) -> web.Response:
        database = await self._accounting.database_ok() if self._accounting is not None else None
        body = {
            "status": "ok",
            "version": __version__,
            "upstream": self._settings.upstream,
            "database": {"ok": database}
            if database is not None
            else {"ok": None, "enabled": False},
        }
        if self._accounting is not None:
            # Collection stopping never stops forwarding, so it is reported, not a failure.
            body["collector"] = self._accounting.collector_status()
        return web.json_response(body)

    async def usage(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        try:
            query = _usage_query(request)
        except _BadParameter as exc:
            return _error(400, str(exc), "invalid_parameter", exc.param)
        from sqlalchemy.exc import SQLAlchemyError

        try:
            text = await _run_report(self._accounting.sessionmaker(), **query)
        except (SQLAlchemyError, OSError) as exc:
            _log.warning("usage report failed: %s", type(exc).__name__)
            return _error(503, "the usage database is not available", "database_unavailable")
        fmt = query["fmt"]
        response = web.Response(text=text, content_type=_CONTENT_TYPES[fmt], charset="utf-8")
        if fmt == "csv":
            response.headers["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        await self._refresh()
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _refresh(self) -> None:
        self._metrics.observer_failures.set(self._dispatcher.failures)
        if self._accounting is None or self._accounting.engine is None:
            return
        from sqlalchemy.exc import SQLAlchemyError

        from proxy.db.jobs import pending_count

        try:
            pending = await asyncio.wait_for(
                pending_count(self._accounting.sessionmaker()), _PENDING_TIMEOUT
            )
        except (SQLAlchemyError, OSError) as exc:
            # The gauge keeps its last value: a database outage must not fail the scrape, and
            # collection_failures and the health endpoint already tell of it.
            _log.debug("pending jobs not refreshed: %s", type(exc).__name__)
            return
        self._metrics.pending_jobs.set(pending)


def _usage_query(request: web.Request) -> dict[str, Any]:
    """The report parameters of a /_proxy/usage request, with the CLI's semantics. Raises
    _BadParameter naming the first offending parameter."""
    params = request.query
    for name in params:
        if name not in _PARAMS:
            raise _BadParameter(
                name, f"unknown parameter {name!r} (one of {', '.join(sorted(_PARAMS))})"
            )
        if len(params.getall(name)) > 1:
            raise _BadParameter(name, f"parameter {name!r} is given more than once")

    def parsed(name: str, parse: Any) -> Any:
        if name not in params:
            return None
        try:
            return parse(params[name])
        except ValueError as exc:
            raise _BadParameter(name, f"{name}: {exc}") from None

    fmt = params.get("format", "json")
    if fmt not in _FORMATS:
        raise _BadParameter("format", f"format: {fmt!r} is not one of {', '.join(_FORMATS)}")
    since, until = parsed("since", parse_when), parsed("until", parse_when)
    month = parsed("month", parse_month)
    if month is not None:
        if since is not None or until is not None:
            raise _BadParameter("month", "month cannot be combined with since or until")
        since, until = month
    if since is not None and until is not None and since >= until:
        raise _BadParameter("since", "since must be before until")
    return {
        "since": since,
        "until": until,
        "group_by": parsed("group_by", parse_group_by),
        "fmt": fmt,
        "filters": {name: params.get(name) for name in _FILTERS},
    }


async def _run_report(
    sm: Any,
    *,
    since: Any,
    until: Any,
    group_by: list[str] | None,
    fmt: str,
    filters: dict[str, str | None],
) -> str:
    from proxy.db.queries import EVENT_COLUMNS, GROUP_FIELDS, SUMS, usage_events, usage_groups
    from proxy.report import render

    if group_by:
        rows = await usage_groups(sm, group_by, since, until, **filters)
        columns = [c for name in dict.fromkeys(group_by) for c in GROUP_FIELDS[name]]
        return render(rows, [*columns, *SUMS], fmt)
    rows = await usage_events(sm, since, until, **filters)
    return render(rows, EVENT_COLUMNS, fmt)


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"no such proxy endpoint: {request.path}", "not_found")


def install(
    app: web.Application,
    settings: Settings,
    *,
    metrics: Metrics,
    dispatcher: Dispatcher,
    accounting: Any | None = None,
) -> None:
    """Route /_proxy/*: health always; metrics with an admin token; usage with an admin token
    and accounting (`accounting` is the proxy.accounting.service.Accounting, or None)."""
    admin = _Admin(settings, metrics, dispatcher, accounting)
    app.router.add_get("/_proxy/health", admin.health)
    if settings.admin_token:
        app.router.add_get("/_proxy/metrics", admin.metrics)
        if accounting is not None:
            app.router.add_get("/_proxy/usage", admin.usage)
    app.router.add_route("*", "/_proxy/{tail:.*}", _not_found)
