"""aiohttp's ClientSession as a Transport: for requests whose body streams, or that go through
a pool with a connection limit; for every request when the lean client cannot be used
(compat.py) or an egress proxy applies (egress.py). The collector fetches through its session
too. Its connections are CheckedConnections (checked.py), or, when compat.py finds that
impossible, never reused."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.forwarding.upstream import Body, Response
from proxy.forwarding.upstream.checked import CheckedConnection
from proxy.forwarding.upstream.compat import (
    SKIPPED_AUTO_HEADERS,
    Internals,
    QuietRequest,
    install_protocol,
)

__all__ = ["SessionTransport"]


class SessionTransport:
    def __init__(
        self,
        prefix: str,
        *,
        connect_timeout: float,
        limit: int,
        proxy: URL | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._prefix = prefix
        # Every request of the session, the collector's included, goes through `proxy`
        # (egress.py resolved it for the upstream; aiohttp sends its user:password@ as
        # Proxy-Authorization), and verifies TLS with `ssl_context` (None: aiohttp's default).
        self._proxy = proxy
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=None
        )
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def start(self, internals: Internals) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=0,
            ttl_dns_cache=300,
            # Without the checked protocol, no connection is reused: one that an upstream out
            # of step left dirty could hand a client another's response (checked.py).
            force_close=not internals.checked_pool,
            ssl=self._ssl if self._ssl is not None else True,
        )
        if internals.checked_pool:
            # The pool reuses a connection only when the exchange on it ended cleanly, as the
            # lean client's does.
            install_protocol(
                connector, functools.partial(CheckedConnection, asyncio.get_running_loop())
            )
        # The client's own headers go through as they are: nothing may be added.
        quiet: dict[str, object] = (
            {"request_class": QuietRequest}
            if internals.quiet_request
            else {"skip_auto_headers": SKIPPED_AUTO_HEADERS}
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            requote_redirect_url=False,
            proxy=self._proxy,
            **quiet,  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "SessionTransport.start() was not called"
        return self._session

    def url(self, path_qs: str) -> URL:
        return URL(self._prefix + path_qs, encoded=True)

    def send(
        self, method: str, raw_path: str, headers: CIMultiDict[str], data: Body
    ) -> Awaitable[Response]:
        # Not a coroutine of its own: the request's is awaited by the caller directly.
        return self.session.request(  # type: ignore[return-value]
            method,
            self.url(raw_path),
            headers=headers,
            data=data,
            allow_redirects=False,
            compress=False,
        )
