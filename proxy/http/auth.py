"""The admin token and the OpenAI-style error bodies of the /_proxy/ endpoints."""

from __future__ import annotations

import hmac

from aiohttp import web

__all__ = ["AdminToken", "error"]


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
