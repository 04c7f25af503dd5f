"""CSRF tokens for the dashboard's forms (login, logout): any POST must carry, in its form, a
token that only a page the proxy served to this browser can know. Before login, a random value
in a SameSite=Strict cookie and in the form (double submit); after, an HMAC of the session.
Both compared in constant time."""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

__all__ = ["FIELD", "LOGIN_COOKIE", "login_token", "set_login_cookie", "valid"]

LOGIN_COOKIE = "usage_proxy_login"
FIELD = "csrf_token"


def login_token(request: web.Request) -> str:
    """The login form's token: the browser's login cookie if it has one, else a new one."""
    token = request.cookies.get(LOGIN_COOKIE, "")
    return token if len(token) == 43 else secrets.token_urlsafe(32)


def set_login_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        path="/_proxy/ui/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=3600,
    )


def valid(given: str, expected: str) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(given, expected)
