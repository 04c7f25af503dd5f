"""The dashboard's handlers under /_proxy/ui/: login and logout, the four pages, the static
stylesheet, and downloads (exactly the text of `usage-proxy report` / /_proxy/usage for the
same parameters). Every answer carries the headers of `secure_headers`."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.http.streaming import send_stream
from proxy.http.ui import csrf, data
from proxy.http.ui.charts import bars, colour, stacked_days
from proxy.http.ui.session import COOKIE, Access
from proxy.reconcile.query import ReconcileError, ReconcileQuery
from proxy.reconcile.report import run_reconcile
from proxy.reports.query import ReportError, ReportQuery
from proxy.reports.run import run_report, stream_report

__all__ = ["Pages", "secure_headers"]

_log = logging.getLogger("proxy.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# No script at all; styles from our own stylesheet only; no framing; forms post here only.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "focus": "text/csv"}
_FILENAMES = {"csv": "usage.csv", "focus": "usage-focus.csv", "json": "usage.json"}


def secure_headers(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    # Pages hold money: never kept by the browser or a shared cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def _money(value: Any) -> str:
    if value is None:
        return "unpriced"
    return f"${Decimal(value):,.2f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("proxy.http.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = _money
    env.filters["exact"] = lambda v: "" if v is None else str(v)
    env.globals.update(bars=bars, stacked_days=stacked_days, colour=colour, BADGES=data.BADGES)
    return env


class Pages:
    def __init__(
        self,
        access: Access,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        budgets: data.BudgetProvider | None = None,
        today: Callable[[], dt.date] = lambda: dt.datetime.now(dt.UTC).date(),
    ) -> None:
        self._access = access
        self._sm = sessionmaker
        self._budgets = budgets
        self._today = today
        self._env = _environment()
        self._css = (resources.files("proxy.http.ui") / "static" / "app.css").read_bytes()

    def routes(self) -> list[web.RouteDef]:
        g = self._guarded
        return [
            web.get("/_proxy/ui/login", self.login_form),
            web.post("/_proxy/ui/login", self.login),
            web.post("/_proxy/ui/logout", g(self.logout)),
            web.get("/_proxy/ui/static/app.css", self.css),
            web.get("/_proxy/ui/", g(self.overview)),
            web.get("/_proxy/ui", g(self.overview)),
            web.get("/_proxy/ui/team/{team}", g(self.team)),
            web.get("/_proxy/ui/run/{run_id}", g(self.run)),
            web.get("/_proxy/ui/reconciliation", g(self.reconciliation)),
            web.get("/_proxy/ui/download", g(self.download)),
            web.get("/_proxy/ui/reconcile.csv", g(self.reconcile_csv)),
        ]

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            role = await self._access.role(request)
            if role is None:
                if "Authorization" in request.headers or request.method != "GET":
                    return secure_headers(
                        web.Response(status=401, text="a valid admin or viewer token is required")
                    )
                return secure_headers(web.HTTPSeeOther("/_proxy/ui/login"))
            try:
                return secure_headers(await handler(request))
            except web.HTTPException as exc:
                secure_headers(exc)  # a 400 or 404 page is a page too
                raise
            except (SQLAlchemyError, OSError) as exc:
                _log.warning("dashboard page failed: %s", type(exc).__name__)
                return secure_headers(
                    web.Response(status=503, text="the usage database is not available")
                )

        return guarded

    async def _page(self, request: web.Request, template: str, **context: Any) -> web.Response:
        context.setdefault("csrf", await self._access.session_mac(request))
        if "role" not in context:
            context["role"] = await self._access.role(request)
        text = self._env.get_template(template).render(**context)
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    def _period(self, request: web.Request) -> data.Period:
        try:
            return data.Period(request.query.get("month"), self._today())
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def login_form(self, request: web.Request, message: str = "") -> web.Response:
        token = csrf.login_token(request)
        response = await self._page(
            request, "login.html", csrf=token, message=message, role=None, field=csrf.FIELD
        )
        if message:
            response.set_status(401)
        csrf.set_login_cookie(request, response, token)
        return secure_headers(response)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not csrf.valid(
            str(form.get(csrf.FIELD, "")), request.cookies.get(csrf.LOGIN_COOKIE, "")
        ):
            return secure_headers(web.Response(status=403, text="the form has expired: reload it"))
        role = self._access.role_of_token(str(form.get("token", "")))
        if role is None:
            _log.info("dashboard login refused")
            return await self.login_form(request, "That token is not valid.")
        response = web.HTTPSeeOther("/_proxy/ui/")
        await self._access.set_cookie(request, response, role)
        response.del_cookie(csrf.LOGIN_COOKIE, path="/_proxy/ui/")
        return secure_headers(response)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not csrf.valid(str(form.get(csrf.FIELD, "")), await self._access.session_mac(request)):
            return web.Response(status=403, text="the form has expired: reload it")
        response = web.HTTPSeeOther("/_proxy/ui/login")
        response.del_cookie(COOKIE, path="/_proxy/")
        return response

    async def css(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._css, content_type="text/css")
        return secure_headers(response)

    async def overview(self, request: web.Request) -> web.Response:
        period = self._period(request)
        page = await data.overview(self._sm(), period, self._budgets)
        return await self._page(request, "overview.html", **page)

    async def team(self, request: web.Request) -> web.Response:
        period = self._period(request)
        page = await data.team_page(self._sm(), period, request.match_info["team"])
        return await self._page(request, "team.html", **page)

    async def run(self, request: web.Request) -> web.Response:
        page = await data.run_page(self._sm(), request.match_info["run_id"])
        if page is None:
            raise web.HTTPNotFound(text="no such run was recorded")
        return await self._page(request, "run.html", **page)

    async def reconciliation(self, request: web.Request) -> web.Response:
        period = self._period(request)
        page = await data.reconciliation(self._sm(), period)
        return await self._page(request, "reconcile.html", **page)

    async def download(self, request: web.Request) -> web.StreamResponse:
        try:
            query = ReportQuery.from_params(request.query, default_format="csv")
        except ReportError as exc:
            return web.Response(status=400, text=str(exc))
        disposition = f'attachment; filename="{_FILENAMES[query.fmt]}"'
        pieces = stream_report(self._sm(), query)
        if pieces is not None:
            return await send_stream(request, pieces, "text/csv", disposition)
        text = await run_report(self._sm(), query)
        response = web.Response(text=text, content_type=_CONTENT_TYPES[query.fmt], charset="utf-8")
        response.headers["Content-Disposition"] = disposition
        return response

    async def reconcile_csv(self, request: web.Request) -> web.Response:
        params = {**request.query, "format": "csv"}
        try:
            query = ReconcileQuery.from_params(params, self._today())
        except ReconcileError as exc:
            return web.Response(status=400, text=str(exc))
        text = await run_reconcile(self._sm(), query)
        response = web.Response(text=text, content_type="text/csv", charset="utf-8")
        response.headers["Content-Disposition"] = 'attachment; filename="reconcile.csv"'
        return response
