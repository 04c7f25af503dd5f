"""GET /_proxy/budgets: every budget with its spend, ratio, forecast and state, as JSON (or
CSV with ?format=csv), read from the database at the moment of the request. Needs the admin
token."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from proxy.budgets.service import Budgets
from proxy.budgets.spend import current_statuses
from proxy.budgets.view import render_statuses
from proxy.http.auth import AdminToken, error, unavailable

__all__ = ["BudgetsEndpoint"]

_CONTENT_TYPES = {"json": "application/json", "csv": "text/csv"}


class BudgetsEndpoint:
    def __init__(self, token: AdminToken, budgets: Budgets) -> None:
        self._token = token
        self._budgets = budgets

    async def handle(self, request: web.Request) -> web.Response:
        if not self._token.allows(request):
            return self._token.refused()
        fmt = request.query.get("format", "json")
        if fmt not in _CONTENT_TYPES:
            return error(400, f"format: {fmt!r} is not json or csv", "invalid_parameter", "format")
        try:
            statuses = await current_statuses(self._budgets.sessionmaker(), self._budgets.now())
        except (SQLAlchemyError, OSError) as exc:
            return unavailable("budgets", exc)
        text = render_statuses(statuses, fmt)
        return web.Response(text=text, content_type=_CONTENT_TYPES[fmt], charset="utf-8")
