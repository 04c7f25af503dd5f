"""GET /_proxy/reconcile: the JSON (or CSV) of `usage-proxy reconcile`, with its options as
query parameters (month, since, until, group_by, tolerance, format). Needs the admin token."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.http.auth import AdminToken, error
from proxy.reconcile.query import ReconcileError, ReconcileQuery
from proxy.reconcile.report import run_reconcile

__all__ = ["Reconcile"]

_log = logging.getLogger("proxy.admin")
_CONTENT_TYPES = {"json": "application/json", "csv": "text/csv"}


class Reconcile:
    def __init__(
        self, token: AdminToken, sessionmaker: Callable[[], async_sessionmaker[AsyncSession]]
    ) -> None:
        self._token = token
        self._sessionmaker = sessionmaker

    async def handle(self, request: web.Request) -> web.Response:
        if not self._token.allows(request):
            return self._token.refused()
        try:
            query = ReconcileQuery.from_params(request.query, dt.datetime.now(dt.UTC).date())
        except ReconcileError as exc:
            return error(400, str(exc), "invalid_parameter")
        try:
            text = await run_reconcile(self._sessionmaker(), query)
        except (SQLAlchemyError, OSError) as exc:
            _log.warning("reconcile failed: %s", type(exc).__name__)
            return error(503, "the usage database is not available", "database_unavailable")
        return web.Response(text=text, content_type=_CONTENT_TYPES[query.fmt], charset="utf-8")
