"""Who may see the dashboard: the admin token or the viewer token, given as
`Authorization: Bearer TOKEN` (scripts) or through the login form, which sets a session cookie.

The cookie holds the role and its expiry, signed (HMAC-SHA256) with a key derived from the
proxy's `ui_session` secret (generated once in the database, shared by replicas) and from the
token it was given for, so that changing a token ends the sessions it opened. It is HttpOnly,
SameSite=Strict, and Secure when the request came over TLS. Tokens are compared in constant
time and never stored, logged or put in the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

__all__ = ["COOKIE", "SESSION_SECONDS", "Access"]

COOKIE = "usage_proxy_session"
SESSION_SECONDS = 12 * 3600
ADMIN, VIEWER = "admin", "viewer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Access:
    """The tokens (an empty one is not configured) and the signing secret, loaded on first
    need by `load_secret` (the database's, so every replica signs alike)."""

    def __init__(
        self, admin_token: str, viewer_token: str, load_secret: Callable[[], Awaitable[bytes]]
    ) -> None:
        self._tokens = {r: t.encode() for r, t in ((ADMIN, admin_token), (VIEWER, viewer_token))}
        self._tokens = {r: t for r, t in self._tokens.items() if t}
        self._load_secret = load_secret
        self._key: bytes | None = None

    async def _signing_key(self) -> bytes:
        if self._key is None:
            secret = await self._load_secret()
            self._key = hmac.new(secret, b"usage-proxy ui session", hashlib.sha256).digest()
        return self._key

    def role_of_token(self, given: str) -> str | None:
        """The role a token unlocks, or None."""
        found = None
        for role, token in self._tokens.items():
            if hmac.compare_digest(given.encode(), token):
                found = role
        return found

    def bearer_role(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.role_of_token(token.strip()) if scheme.lower() == "bearer" else None

    async def _mac(self, payload: str, role: str) -> str:
        key = await self._signing_key()
        token_digest = hashlib.sha256(self._tokens[role]).digest()
        return _b64(hmac.new(key, payload.encode() + token_digest, hashlib.sha256).digest())

    async def cookie_value(self, role: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        payload = _b64(orjson.dumps({"r": role, "e": expires}))
        return f"{payload}.{await self._mac(payload, role)}"

    async def cookie_role(self, value: str, now: float | None = None) -> str | None:
        """The role of a session cookie that is well signed and unexpired, else None."""
        payload, _, mac = value.partition(".")
        try:
            data = orjson.loads(_unb64(payload))
            role, expires = data["r"], int(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if role not in self._tokens or expires < (now or time.time()):
            return None
        return role if hmac.compare_digest(mac, await self._mac(payload, role)) else None

    async def role(self, request: web.Request) -> str | None:
        """The request's role: its bearer token's, else its session cookie's, else None."""
        role = self.bearer_role(request)
        if role is None and COOKIE in request.cookies:
            role = await self.cookie_role(request.cookies[COOKIE])
        return role

    async def session_mac(self, request: web.Request) -> str:
        """A value tied to this request's session, from which CSRF tokens are made."""
        key = await self._signing_key()
        basis = request.cookies.get(COOKIE, "") or request.headers.get("Authorization", "")
        return _b64(hmac.new(key, b"csrf:" + basis.encode(), hashlib.sha256).digest())

    async def set_cookie(self, request: web.Request, response: web.StreamResponse, role: str):
        response.set_cookie(
            COOKIE,
            await self.cookie_value(role),
            max_age=SESSION_SECONDS,
            path="/_proxy/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
