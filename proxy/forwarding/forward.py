"""The Forwarder: streams each request to the upstream (through a transport of
proxy.forwarding.upstream) and its response back.

The client gets exactly what the upstream sent (status, reason, headers, body bytes, pacing),
minus hop-by-hop headers (targets.py). Observers get copies (taps.py) through the Dispatcher,
after the fact.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.forwarding.deadlines import HeaderDeadlines
from proxy.forwarding.exchange import Dispatcher, Exchange
from proxy.forwarding.holds import Holder, Holds
from proxy.forwarding.policy import REFUSED_BY, Policy, RequestMeta
from proxy.forwarding.reachability import Reachability
from proxy.forwarding.relay import RESPONSE, Relay
from proxy.forwarding.rewrite import IncludeUsage
from proxy.forwarding.targets import filter_headers, reserved, unsafe_target
from proxy.forwarding.upstream import Body
from proxy.forwarding.upstream.compat import checked, request_key, response_class
from proxy.forwarding.upstream.egress import Egress
from proxy.forwarding.upstream.lean import UpstreamClient
from proxy.forwarding.upstream.session import SessionTransport
from proxy.keys import conflicting_keys

__all__ = ["REQUEST_ID", "ClientGone", "Forwarder", "error_response"]

_log = logging.getLogger("proxy.forward")

_NO_COPY_TYPES = ("multipart/", "application/octet-stream", "audio/", "image/", "video/")
# Bodies up to this size (and within the observers' cap) are read whole before forwarding:
# cheaper per request than streaming them through a generator, and a chat request is far
# smaller. Anything larger, chunked, or of a type observers don't copy still streams.
_READ_WHOLE = 64 * 1024
_ids = itertools.count(1)
REQUEST_ID = request_key("request_id", str)  # the exchange id, for the access log
# Told of a request whose client went away before its response ended, with the response begun
# for it (None: none was) and the seconds since the request came in. aiohttp writes no access
# line for a handler it cancels, which is what happens when an SDK closes a stream as soon as
# it reads `[DONE]`, before the body's last chunk: the app writes that line through this.
ClientGone = Callable[[web.Request, web.StreamResponse | None, float], None]
_ID_PREFIX = os.urandom(4).hex()


def error_response(
    status: int, message: str, code: str, type_: str = "proxy_error"
) -> web.Response:
    """An OpenAI-style error body, so SDKs surface it like any API error."""
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status=status,
    )


class Forwarder:
    """Forwards every request to one upstream over one shared connection pool."""

    def __init__(
        self,
        upstream: str,
        dispatcher: Dispatcher,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 30.0,
        limit: int = 0,
        max_observed_body: int = 8 * 1024 * 1024,
        max_observed_request: int = 4 * 1024 * 1024,
        rewriter: IncludeUsage | None = None,
        on_client_gone: ClientGone | None = None,
        policy: Policy | None = None,
        egress: Egress | None = None,
        lean: bool = True,
        holders: Sequence[Holder] = (),
        hold_timeout: float = 1.0,
    ) -> None:
        base = URL(upstream)
        self._origin = base.origin()
        self._base_path = base.raw_path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._dispatcher = dispatcher
        self._deadlines = HeaderDeadlines(timeout)
        self._limit = limit
        # False for a pool that only the collector fetches through (its session's).
        self._lean_wanted = lean
        self._max_body = max_observed_body
        self._max_request = max_observed_request
        self._read_whole = min(_READ_WHOLE, max_observed_request)
        # The one change the proxy may make to traffic, opt-in: see proxy.forwarding.rewrite.
        self._rewriter = rewriter
        self._on_client_gone = on_client_gone
        # What may refuse a request before it is forwarded (budgets): see policy.py.
        self._policy = policy
        # Kept from the traffic, for /_proxy/health.
        self.reachability = Reachability()
        # Resolved once: every request goes to this one origin. A bad proxy URL in the
        # environment raises ConfigError here, before the proxy listens.
        egress = egress or Egress()
        self._route = egress.route(self._origin)
        self._ssl = egress.ssl_context()
        self.reachability.via = self._route.shown if self._route is not None else None
        self._session = SessionTransport(
            str(self._origin) + self._base_path,
            connect_timeout=connect_timeout,
            limit=limit,
            proxy=self._route.proxy if self._route is not None else None,
            ssl_context=self._ssl,
        )
        self._lean: UpstreamClient | None = None
        # What may hold an answer's end until observers stored it (holds.py); none: no cost.
        self.holds = Holds(holders, hold_timeout) if holders else None
        self._relay = Relay(
            dispatcher, max_body=max_observed_body, rewriter=rewriter, holds=self.holds
        )

    async def start(self) -> None:
        internals = checked()
        route = self._route
        lean = self._lean_wanted and self._limit == 0 and internals.lean_client
        if route is not None and self._lean_wanted:
            # Said once, by the serving process (the collector's pool is not `lean_wanted`).
            _log.info(
                "the upstream %s is reached through the egress proxy %s (from %s)%s",
                self._origin,
                route.shown,
                route.source,
                # The lean client speaks to the upstream only directly; aiohttp's can tunnel.
                ": every request goes through aiohttp's ClientSession, which can use it"
                if lean
                else "",
            )
        if lean and route is None:
            # A limit is kept by aiohttp's pool, which the lean client does not share.
            self._lean = UpstreamClient(
                self._origin,
                connect_timeout=self._connect_timeout,
                base_path=self._base_path,
                ssl_context=self._ssl,
            )
        self._session.start(internals)
        self._relay.response_class = response_class(internals)
        self._deadlines.start()

    async def close(self) -> None:
        await self._deadlines.stop()
        if self._lean is not None:
            await self._lean.close()
            self._lean = None
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared upstream session (the collector reuses its pool)."""
        return self._session.session

    def upstream_url(self, path_qs: str) -> URL:
        return self._session.url(path_qs)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request; the aiohttp handler for every path outside /_proxy/."""
        raw_path = request.raw_path
        why = unsafe_target(raw_path)
        if why is not None or request.method == "CONNECT":
            return error_response(400, why or "CONNECT is not supported", "bad_request_target")
        if reserved(raw_path):
            # The admin routes are matched as written; any other spelling is not an API path.
            return error_response(404, f"no such proxy endpoint: {request.path}", "not_found")
        sent = filter_headers(request.headers, request=True)
        if conflicting_keys(sent):
            # Fail closed: forwarded, the request would be billed to one key and recorded
            # against the other, whichever the upstream reads.
            return error_response(
                400,
                "the request carries two different API keys (Authorization and api-key)",
                "ambiguous_credentials",
            )
        if self._policy is not None:
            refused = await self._refused(request, sent)
            if refused is not None:
                return refused
        exchange = Exchange(
            request_id=f"{_ID_PREFIX}-{next(_ids)}",
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            request_headers=request.headers,
            max_body=self._max_body,
        )
        # The access log line carries the same id as the observers' log lines.
        request[REQUEST_ID] = exchange.request_id
        done = False
        try:
            holds = self.holds
            if holds is not None and holds.befores:
                exchange.upstream_headers = sent
                if request.method == "POST" and self._reads_whole(request):
                    # Read now, not in _forward (which gets it again from aiohttp's cache):
                    # a holder's `before` may look at it.
                    exchange.request_body = await request.read()
                if (waiting := holds.before(exchange)) is not None:
                    await waiting
            response = await self._forward(request, raw_path, exchange, sent)
            done = True
            return response
        except asyncio.CancelledError:
            exchange.client_disconnected = True
            exchange.error = exchange.error or "client disconnected"
            if self._on_client_gone is not None:
                self._on_client_gone(
                    request, request.get(RESPONSE), time.time() - exchange.started_at
                )
            raise
        except UpstreamError as exc:
            exchange.error = str(exc)
            self.reachability.failed(time.time(), exc.code)
            done = True
            return error_response(exc.status, str(exc), exc.code)
        finally:
            if not done and exchange.error is None:
                # Whatever escaped (aiohttp answers it with a bare 500), observers hear of it.
                exchange.error = "the proxy failed to forward the request"
            if exchange.hold is None:  # a held exchange was delivered when it was held
                exchange.ended_at = time.time()
                self._dispatcher.submit("on_error" if exchange.error else "on_response", exchange)

    async def _refused(self, request: web.Request, sent: CIMultiDict[str]) -> web.Response | None:
        assert self._policy is not None
        meta = RequestMeta(
            request.method, request.path, request.query_string, sent, request.headers
        )
        try:
            refusal = await self._policy.refusal(meta)
        except Exception:
            # Fail open: a policy that cannot decide must not stop traffic.
            _log.exception("the request policy failed; forwarding the request")
            return None
        if refusal is None:
            return None
        request[REFUSED_BY] = refusal.by
        return web.Response(
            status=refusal.status,
            body=refusal.body,
            content_type="application/json",
            headers=refusal.headers,
        )

    async def _forward(
        self, request: web.Request, raw_path: str, exchange: Exchange, sent: CIMultiDict[str]
    ) -> web.StreamResponse:
        headers = exchange.upstream_headers = sent
        data: Body = None
        rewritten, rw = False, self._rewriter
        if (
            rw is not None
            and request.body_exists
            and rw.wants(request.method, request.path, request.headers)
        ):
            data = await request.read()
            exchange.request_body = data[: self._max_request]
            exchange.request_body_truncated = len(data) > self._max_request
            if (new := rw.rewrite(data)) is not None:
                # Observers keep what the client sent; the upstream gets the rewritten body.
                data, rewritten = new, True
                headers[hdrs.CONTENT_LENGTH] = str(len(new))
        elif request.body_exists:
            if self._reads_whole(request):
                data = exchange.request_body = await request.read()
            else:
                data = self._request_body(request, exchange)
        deadlines = self._deadlines
        task = asyncio.current_task()
        assert task is not None
        deadlines.add(task)
        lean = self._lean
        # The lean client takes a body in hand. (Expect is never forwarded: targets.py.)
        transport = (
            lean if lean is not None and (data is None or type(data) is bytes) else self._session
        )
        try:
            upstream = await transport.send(request.method, raw_path, headers, data)
        except aiohttp.ClientHttpProxyError as exc:
            # The egress proxy refused the tunnel (407: it wants other credentials). Before
            # ClientResponseError, which it is too; the status is the proxy's, not the URL.
            raise UpstreamUnreachable(
                f"the egress proxy refused the connection to the upstream ({exc.status})"
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamUnreachable(
                "the upstream's TLS certificate could not be verified "
                f"({type(exc).__name__}); a private CA goes in upstream_ca_file"
            ) from exc
        except aiohttp.ClientResponseError as exc:
            # The parser refused the response. Named by type only: its bytes are the
            # upstream's, and nothing of them goes into an error or a log line.
            raise UpstreamBadResponse(
                f"the upstream sent a malformed response: {type(exc).__name__}"
            ) from exc
        except aiohttp.ClientError as exc:
            # Before TimeoutError: a connect timeout is both, and it means "unreachable".
            raise UpstreamUnreachable(
                f"the upstream could not be reached: {type(exc).__name__}"
            ) from exc
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise  # the client went away
            task.uncancel()
            raise self._timed_out() from None
        finally:
            deadlines.discard(task)
        exchange.response_started_at = self.reachability.last_success = time.time()
        # The upstream answered before it had the whole body (a streamed one): it may never
        # read the rest, so the connection is not reused, nor is its writer waited for.
        streamed = data is not None and type(data) is not bytes
        early = streamed and data.ag_frame is not None  # type: ignore[union-attr]
        try:
            return await self._relay(request, upstream, exchange, rewritten)
        finally:
            # Closing (not releasing) an unfinished response drops its connection, so a client
            # that went away also stops the upstream's generation. A released one goes back to
            # its pool only if the exchange ended cleanly (upstream/checked.py).
            if early or not upstream.content.at_eof():
                upstream.close()
            else:
                upstream.release()

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"the upstream sent no response within {self._deadlines.timeout:g} s"
        )

    def _reads_whole(self, request: web.Request) -> bool:
        """Whether the request's body is read whole before it is forwarded."""
        length = request.content_length
        return (
            request.body_exists
            and length is not None
            and length <= self._read_whole
            and self._copies(request)
        )

    def _copies(self, request: web.Request) -> bool:
        """Whether observers get a copy of this request's body (none of file uploads)."""
        ctype = request.headers.get("Content-Type", "").lower()
        return self._max_request > 0 and not ctype.startswith(_NO_COPY_TYPES)

    async def _request_body(self, request: web.Request, exchange: Exchange) -> AsyncIterator[bytes]:
        # A generator, so the body streams through in the chunks it arrives in: an upload of
        # any size is never held whole. Observers get a capped copy, and none of file uploads.
        copy = self._copies(request)
        buf = bytearray()
        async for chunk in request.content.iter_any():
            if copy:
                room = self._max_request - len(buf)
                if len(chunk) <= room:
                    buf += chunk
                else:
                    buf += chunk[:room]
                    exchange.request_body_truncated = True
                    copy = False
            elif chunk:
                exchange.request_body_truncated = True
            yield chunk
        exchange.request_body = bytes(buf)
