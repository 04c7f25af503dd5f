"""GET /_proxy/reconcile: the JSON (or CSV) of `usage-proxy reconcile`, with its options as
query parameters (month, since, until, group_by, tolerance, format). Needs the admin token."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.http.auth import AdminToken, admit, unavailable
from proxy.reconcile.query import ReconcileError, ReconcileQuery
from proxy.reconcile.report import run_reconcile

__all__ = ["Reconcile"]

_CONTENT_TYPES = {"json": "application/json", "csv": "text/csv"}


class Reconcile:
    def __init__(
        self, token: AdminToken, sessionmaker: Callable[[], async_sessionmaker[AsyncSession]]
    ) -> None:
        self._token = token
        self._sessionmaker = sessionmaker

    async def handle(self, request: web.Request) -> web.Response:
        today = dt.datetime.now(dt.UTC).date()
        query = admit(
            self._token, request, lambda q: ReconcileQuery.from_params(q, today), ReconcileError
        )
        if isinstance(query, web.Response):
            return query
        try:
            text = await run_reconcile(self._sessionmaker(), query)
        except (SQLAlchemyError, OSError) as exc:
            return unavailable("reconcile", exc)
        return web.Response(text=text, content_type=_CONTENT_TYPES[query.fmt], charset="utf-8")
