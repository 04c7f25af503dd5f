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
    """`Authorization: Bearer <token>`, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def allows(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self._token)

    @staticmethod
    def refused() -> web.Response:
        response = error(401, "a valid admin token is required", "invalid_admin_token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="usage-proxy"'
        return response
