"""GET /_proxy/usage: the report of `usage-proxy report` over HTTP, as JSON, CSV or FOCUS, with the
same options as query parameters (proxy.reports). Needs the admin token and accounting."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.http.auth import AdminToken, error
from proxy.http.streaming import send_stream
from proxy.reports.query import ReportError, ReportQuery
from proxy.reports.run import run_report, stream_report

__all__ = ["Usage"]

_log = logging.getLogger("proxy.admin")
_CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "focus": "text/csv"}
_FILENAMES = {"csv": "usage.csv", "focus": "usage-focus.csv"}


class Usage:
    def __init__(
        self, token: AdminToken, sessionmaker: Callable[[], async_sessionmaker[AsyncSession]]
    ) -> None:
        self._token = token
        self._sessionmaker = sessionmaker

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._token.allows(request):
            return self._token.refused()
        try:
            query = ReportQuery.from_params(request.query)
        except ReportError as exc:
            return error(400, str(exc), "invalid_parameter", exc.param)
        pieces = stream_report(self._sessionmaker(), query)
        if pieces is not None:
            name = _FILENAMES[query.fmt]
            try:
                return await send_stream(
                    request, pieces, "text/csv", f'attachment; filename="{name}"'
                )
            except (SQLAlchemyError, OSError) as exc:
                _log.warning("usage report failed: %s", type(exc).__name__)
                return error(503, "the usage database is not available", "database_unavailable")
        try:
            text = await run_report(self._sessionmaker(), query)
        except (SQLAlchemyError, OSError) as exc:
            _log.warning("usage report failed: %s", type(exc).__name__)
            return error(503, "the usage database is not available", "database_unavailable")
        response = web.Response(text=text, content_type=_CONTENT_TYPES[query.fmt], charset="utf-8")
        if query.fmt in _FILENAMES:
            name = _FILENAMES[query.fmt]
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
