"""The reserved /_proxy/ endpoints: health (always), usage and metrics (with accounting).

Nothing under /_proxy/ is ever forwarded upstream."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy import __version__

__all__ = ["install", "install_accounting"]

_ACCOUNTING: web.AppKey[Any] = web.AppKey("accounting", object)


def install(app: web.Application) -> None:
    app.router.add_get("/_proxy/health", _health)
    app.router.add_route("*", "/_proxy/{tail:.*}", _not_found)


def install_accounting(app: web.Application, service: Any) -> None:
    app[_ACCOUNTING] = service


async def _health(request: web.Request) -> web.Response:
    from proxy.app import SETTINGS

    settings = request.app[SETTINGS]
    service = request.app.get(_ACCOUNTING)
    database = await service.database_ok() if service is not None else None
    body = {
        "status": "ok",
        "version": __version__,
        "upstream": settings.upstream,
        "database": {"ok": database} if database is not None else {"ok": None, "enabled": False},
    }
    return web.json_response(body)


async def _not_found(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": f"no such proxy endpoint: {request.path}",
                "type": "proxy_error",
                "param": None,
                "code": "not_found",
            }
        },
        status=404,
    )
