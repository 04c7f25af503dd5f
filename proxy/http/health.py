"""GET /_proxy/health: always, without a token (load balancers and compose probe it); it tells
nothing secret."""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

from proxy import __version__
from proxy.db.errors import DB_ERRORS
from proxy.forwarding.reachability import Reachability
from proxy.settings import Settings

__all__ = ["Health", "Watched"]

_UNSEEN_TIMEOUT = 1.0  # seconds: a count of a small table


class Watched(Protocol):
    """What health reports of the accounting (proxy.accounting.service.Accounting)."""

    async def database_ok(self) -> bool: ...

    def collector_status(self) -> dict[str, object]: ...

    async def unseen_creates(self) -> int | None: ...


class Health:
    def __init__(
        self,
        settings: Settings,
        accounting: Watched | None,
        reachability: Reachability | None = None,
    ) -> None:
        self._upstream = settings.upstream
        self._accounting = accounting
        self._reachability = reachability

    async def handle(self, request: web.Request) -> web.Response:
        accounting = self._accounting
        database = await accounting.database_ok() if accounting is not None else None
        body: dict[str, object] = {
            "status": "ok",
            "version": __version__,
            "upstream": self._upstream,
            "database": {"ok": database}
            if database is not None
            else {"ok": None, "enabled": False},
        }
        if self._reachability is not None:
            # Reported, never a failure: the proxy is up whether or not the upstream answers.
            body["upstream_reachability"] = self._reachability.report()
        if accounting is not None:
            # Collection stopping never stops forwarding, so it is reported, not a failure.
            body["collector"] = {
                **accounting.collector_status(),
                "unseen_creates": await _unseen(accounting) if database else None,
            }
        return web.json_response(body)


async def _unseen(accounting: Watched) -> int | None:
    """Create-and-runs that may be unrecorded (proxy.db.unseen_creates); None when the
    database cannot tell in time (health never fails for it)."""
    try:
        async with asyncio.timeout(_UNSEEN_TIMEOUT):
            return await accounting.unseen_creates()
    except (TimeoutError, *DB_ERRORS):
        return None
