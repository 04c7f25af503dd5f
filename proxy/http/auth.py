"""The admin token and the OpenAI-style error bodies of the /_proxy/ endpoints, and what the
admin endpoints share: `admit` (the token, then the query) and `unavailable` (a 503)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from aiohttp import web

__all__ = ["AdminToken", "admit", "error", "unavailable"]

Q = TypeVar("Q")
_log = logging.getLogger("proxy.admin")


def error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    """An OpenAI-style JSON error."""
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "proxy_error",
                "param": param,
                "code": code,
            }
        },
        status=status,
    )


class AdminToken:
    """`Authorization: Bearer <token>` for one of the tokens, compared in constant time."""

    def __init__(self, token: str, *more: str) -> None:
        self._tokens = [t.encode() for t in (token, *more)]
        if not all(self._tokens):
            raise ValueError("an empty token would let everyone in")

    def allows(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Every token is compared, so the time taken does not tell which one nearly matched.
        return sum(hmac.compare_digest(given, t) for t in self._tokens) > 0

    @staticmethod
    def refused() -> web.Response:
        response = error(401, "a valid admin token is required", "invalid_admin_token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="usage-proxy"'
        return response


def admit(
    token: AdminToken,
    request: web.Request,
    parse: Callable[[Mapping[str, str]], Q],
    invalid: type[ValueError],
) -> Q | web.Response:
    """The request's query as `parse` reads it, or the response to send instead: the token's
    refusal, or a 400 for an `invalid` error (naming its `param`, when it has one)."""
    if not token.allows(request):
        return token.refused()
    try:
        return parse(request.query)
    except invalid as exc:
        return error(400, str(exc), "invalid_parameter", getattr(exc, "param", None))


def unavailable(what: str, exc: BaseException) -> web.Response:
    """The 503 of an endpoint whose database read failed with `exc`: only the exception's type
    is logged (its text may hold the database URL)."""
    _log.warning("%s failed: %s", what, type(exc).__name__)
    return error(503, "the usage database is not available", "database_unavailable")
