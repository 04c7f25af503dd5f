"""GET /_proxy/usage: the report of `usage-proxy report` over HTTP, as JSON, CSV or FOCUS, with the
same options as query parameters (proxy.reports). Needs the admin token and accounting."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.http.auth import AdminToken, admit, unavailable
from proxy.http.streaming import send_stream
from proxy.reports.query import ReportError, ReportQuery
from proxy.reports.run import run_report, stream_report

__all__ = ["Usage"]

_CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "focus": "text/csv"}
_FILENAMES = {"csv": "usage.csv", "focus": "usage-focus.csv"}


class Usage:
    def __init__(
        self, token: AdminToken, sessionmaker: Callable[[], async_sessionmaker[AsyncSession]]
    ) -> None:
        self._token = token
        self._sessionmaker = sessionmaker

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = admit(self._token, request, ReportQuery.from_params, ReportError)
        if isinstance(query, web.Response):
            return query
        pieces = stream_report(self._sessionmaker(), query)
        if pieces is not None:
            name = _FILENAMES[query.fmt]
            try:
                return await send_stream(
                    request, pieces, "text/csv", f'attachment; filename="{name}"'
                )
            except (SQLAlchemyError, OSError) as exc:
                return unavailable("usage report", exc)
        try:
            text = await run_report(self._sessionmaker(), query)
        except (SQLAlchemyError, OSError) as exc:
            return unavailable("usage report", exc)
        response = web.Response(text=text, content_type=_CONTENT_TYPES[query.fmt], charset="utf-8")
        if query.fmt in _FILENAMES:
            name = _FILENAMES[query.fmt]
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
