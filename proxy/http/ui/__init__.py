"""The chargeback dashboard under /_proxy/ui/ (issue 18): server-rendered pages (Jinja2,
templates/), SVG charts drawn in Python (charts.py), a session cookie or a bearer token for
the admin or viewer token (session.py), CSRF on every form (csrf.py). No script, nothing
fetched from elsewhere: the pages work air-gapped after a plain `pip install`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.http.ui.data import BudgetProvider
from proxy.http.ui.pages import Pages
from proxy.http.ui.session import Access

__all__ = ["install_ui"]


def install_ui(
    app: web.Application,
    *,
    admin_token: str,
    viewer_token: str,
    sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
    load_secret: Callable[[], Awaitable[bytes]],
    budgets: BudgetProvider | None = None,
) -> None:
    """Route the dashboard. The caller routes it only when a token is configured (else
    /_proxy/ui/ answers 404 like any unknown /_proxy/ path). `budgets`, if given, returns
    (name, spend, limit, state) per budget for the overview."""
    access = Access(admin_token, viewer_token, load_secret)
    app.router.add_routes(Pages(access, sessionmaker, budgets).routes())
