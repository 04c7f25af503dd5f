"""The aiohttp application: `make_app(settings, observers)` builds everything; nothing runs at
import. Each resource has its own cleanup_ctx, so start-up and shutdown are symmetric."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from proxy.accounting.process.supervisor import Forked, fork_collector
from proxy.accounting.service import Accounting
from proxy.alerts.webhook import AlertSender
from proxy.budgets.service import Budgets
from proxy.db.engine import describe_url
from proxy.db.models import utcnow
from proxy.errors import ConfigError
from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.forward import Forwarder
from proxy.forwarding.guard import ClientLimits, GuardedSite
from proxy.forwarding.rewrite import IncludeUsage
from proxy.forwarding.upstream.compat import checked
from proxy.forwarding.upstream.egress import Egress
from proxy.gc_settings import collect_less
from proxy.http.metrics import MetricsObserver
from proxy.http.routes import install as install_admin
from proxy.logs import ACCESS_LOGGER, AccessLogger, log_client_gone
from proxy.metrics import Metrics
from proxy.reconcile.admin_api import ENV as ADMIN_KEY_ENV
from proxy.reconcile.schedule import BillingSchedule
from proxy.settings import Settings

__all__ = [
    "ACCOUNTING",
    "BILLING",
    "BUDGETS",
    "DISPATCHER",
    "FORWARDER",
    "METRICS",
    "SETTINGS",
    "listen_error",
    "make_app",
    "serve",
    "start_site",
]

_log = logging.getLogger("proxy")

SETTINGS = web.AppKey("settings", Settings)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
FORWARDER = web.AppKey("forwarder", Forwarder)
METRICS = web.AppKey("metrics", Metrics)
# The accounting, when the app has one (make_app(accounting=True)).
ACCOUNTING = web.AppKey("accounting", Accounting)
# The scheduled billing pull, when billing_pull_interval and an admin key are given.
BILLING = web.AppKey("billing", BillingSchedule)
# Budgets, alerts and enforcement, whenever there is accounting.
BUDGETS = web.AppKey("budgets", Budgets)


def make_app(
    settings: Settings,
    observers: Sequence[object] | None = None,
    *,
    accounting: bool = True,
    collector: Forked | None = None,
    admin_key: str | None = None,
    clock: Callable[[], dt.datetime] | None = None,
) -> web.Application:
    """Build the proxy. `observers=None` means the built-in accounting observers; a list
    replaces them (tests pass recording observers). `accounting=False` runs a bare proxy with no
    database and no collector. `collector`: a collector process `serve` forked already.
    `admin_key`: the OpenAI admin key for the scheduled billing pull (`serve` passes
    $OPENAI_ADMIN_KEY); it pulls when `billing_pull_interval` is set too. `clock`: the time
    budgets read their periods by (tests move it across a month's end)."""
    app = web.Application(client_max_size=0)
    app[SETTINGS] = settings
    service = None
    if accounting:
        service = Accounting(settings, forked=collector)
    metrics = service.metrics if service is not None else Metrics()
    chosen = (
        list(observers)
        if observers is not None
        else (service.observers() if service is not None else [])
    )
    budgets = None
    sender = None
    if service is not None:
        # One sender for the outbox, whichever source queued: budgets and billing wake it.
        sender = AlertSender.from_settings(settings, service.sessionmaker, service.metrics)
        wake = sender.wake if sender is not None else (lambda: None)
        budgets = Budgets(settings, service, now=clock or utcnow, on_alerts=wake)
    # Request metrics are operations, not accounting: counted whichever observers were chosen.
    dispatcher = Dispatcher([MetricsObserver(metrics), *chosen])
    egress = Egress(settings.upstream_proxy, settings.upstream_ca_file)
    forwarder = Forwarder(
        settings.upstream,
        dispatcher,
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        limit=settings.upstream_limit,
        max_observed_body=settings.max_observed_body,
        max_observed_request=settings.max_observed_request,
        rewriter=IncludeUsage() if settings.chat_include_usage else None,
        on_client_gone=log_client_gone,
        policy=budgets.policy if budgets is not None else None,
        egress=egress,
        # Held answers are released by the accounting's observers: only when they are chosen.
        holders=(
            [*service.holders(), *(budgets.holders() if budgets is not None else [])]
            if service is not None and observers is None
            else ()
        ),
        hold_timeout=settings.hold_timeout,
    )
    if forwarder.holds is not None:
        holds = forwarder.holds
        metrics.holds_timed_out.set_function(lambda: holds.timed_out + holds.before_timed_out)
    if service is not None:
        service.attach_forwarder(forwarder)
        app[ACCOUNTING] = service
    app[DISPATCHER] = dispatcher
    app[FORWARDER] = forwarder
    app[METRICS] = metrics
    # Shutdown runs in reverse: the dispatcher drains (finished runs become jobs), then the
    # collector and row writer stop while the upstream pool is still open, then the pool closes.
    app.cleanup_ctx.append(_forwarder_ctx)
    if service is not None:
        app.cleanup_ctx.append(service.context)
    if budgets is not None:
        app[BUDGETS] = budgets
        app.cleanup_ctx.append(budgets.context)
    if sender is not None:
        app.cleanup_ctx.append(sender.context)
    app.cleanup_ctx.append(_dispatcher_ctx)
    if service is not None and settings.billing_pull_interval > 0:
        if admin_key:
            billing = BillingSchedule(
                service.sessionmaker,
                metrics,
                billing_url=settings.billing_url,
                admin_key=admin_key,
                interval=settings.billing_pull_interval,
                egress=egress,
                on_alerts=sender.wake if sender is not None else None,
            )
            app[BILLING] = billing
            app.cleanup_ctx.append(billing.context)
        else:
            _log.warning(
                "billing_pull_interval is set but %s is not: no billing pulls", ADMIN_KEY_ENV
            )
    install_admin(
        app,
        settings,
        metrics=metrics,
        dispatcher=dispatcher,
        accounting=service,
        reachability=forwarder.reachability,
        budgets=budgets,
    )
    app.router.add_route("*", "/{tail:.*}", forwarder.handle)
    return app


async def _forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[FORWARDER].start()
    yield
    await app[FORWARDER].close()


async def _dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
    app[DISPATCHER].start()
    yield
    # Deliver what was observed before shutdown, so finished runs become jobs.
    await app[DISPATCHER].stop(timeout=10.0)


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving `app`; the caller owns the runner. Disconnects cancel the handler, which
    is how a client that goes away mid-stream closes the upstream connection. Each request
    gets one line on the `proxy.access` logger (see proxy.logs.AccessLogger). Client
    connections are held to the settings' limits (proxy.forwarding.guard), or, when this
    aiohttp lacks what the guard needs (compat.py logs it), to aiohttp's own: each header line
    within client_max_header_bytes and the keep-alive timeout."""
    access = {"access_log_class": AccessLogger, "access_log": logging.getLogger(ACCESS_LOGGER)}
    limits = client_limits(app[SETTINGS])
    if not checked().guard:
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_header_bytes,
            max_field_size=limits.max_header_bytes,
            **access,
        )
        await runner.setup()
        await _listen(runner, web.TCPSite(runner, host, port, reuse_address=True), host, port)
        return runner
    runner = web.AppRunner(app, handler_cancellation=True, **access)
    await runner.setup()
    await _listen(runner, GuardedSite(runner, host, port, limits, **access), host, port)
    return runner


async def _listen(runner: web.AppRunner, site: web.BaseSite, host: str, port: int) -> None:
    try:
        await site.start()
    except OSError as exc:
        # The port was taken after `serve` checked it: close what setup opened (the upstream
        # pool, the database, the collector), so the error is one line and not a trail of
        # "Unclosed client session" warnings.
        await runner.cleanup()
        raise listen_error(host, port, exc) from None


def listen_error(host: str, port: int, exc: OSError) -> ConfigError:
    """The one line for an address the proxy cannot listen on."""
    hint = " (another process listens there: stop it, or choose another --port)"
    in_use = exc.errno == errno.EADDRINUSE
    return ConfigError(
        f"port: cannot listen on {host}:{port}: {exc.strerror or exc}" + (hint if in_use else "")
    )


def client_limits(settings: Settings) -> ClientLimits:
    return ClientLimits(
        header_timeout=settings.client_header_timeout,
        body_timeout=settings.client_body_timeout,
        keepalive_timeout=settings.client_keepalive_timeout,
        max_header_bytes=settings.client_max_header_bytes,
        max_connections=settings.client_max_connections,
    )


def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    try:
        import uvloop
    except ImportError:  # optional speed-up
        uvloop = None
    runner_fn = uvloop.run if uvloop is not None else asyncio.run
    collect_less()  # before the fork: the collector process inherits it
    # Before the event loop and its threads: see proxy.accounting.process.supervisor.
    forked = fork_collector() if settings.collector_process else None
    runner_fn(_serve(settings, forked))


async def _serve(settings: Settings, forked: Forked | None = None) -> None:
    # The admin key is read here, from the environment only: never a setting or a flag.
    app = make_app(settings, collector=forked, admin_key=os.environ.get(ADMIN_KEY_ENV))
    runner = await start_site(app, settings.host, settings.port)
    print(
        f"usage-proxy listening on http://{settings.host}:{settings.port}, "
        f"forwarding to {settings.upstream}, database {describe_url(settings.database_url)}",
        flush=True,
    )
    if not settings.admin_token:
        # They answer 404 like any unknown path, which alone does not say why.
        _log.info(
            "the admin endpoints /_proxy/usage, /_proxy/metrics and /_proxy/reconcile are off "
            "until USAGE_PROXY_ADMIN_TOKEN (or admin_token in the config file) is set"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
