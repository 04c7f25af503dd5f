"""Forwarding: the only code that touches bytes on the wire (with proxy.upstream_client, the
lean client it sends requests whose body is in hand with, and aiohttp's ClientSession for
the rest).

The client gets exactly what the upstream sent (status, reason, headers, body bytes, pacing),
minus hop-by-hop headers. Observers get copies through the Dispatcher, after the fact.
This module imports nothing from accounting/ or db/.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.chat_usage import IncludeUsage
from proxy.decode import DecodeError, Decompressor, SSEEvent, SSEParser
from proxy.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.exchange import Dispatcher, Exchange
from proxy.upstream_client import UpstreamClient, UpstreamResponse
from proxy.upstream_conn import CheckedConnection

__all__ = ["REQUEST_ID", "Forwarder", "error_response"]

_log = logging.getLogger("proxy.forward")

# RFC 9110 section 7.6.1, plus Proxy-* (matched by prefix below).
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
# Headers aiohttp's server fills in when a response lacks them.
_DEFAULTED = (hdrs.CONTENT_TYPE, hdrs.SERVER)
_EVENT_OVERHEAD = 160  # bytes an SSEEvent and its strings cost beyond the data itself
_NO_COPY_TYPES = ("multipart/", "application/octet-stream", "audio/", "image/", "video/")
_JSON_TYPES = ("application/json",)
# Bodies up to this size (and within the observers' cap) are read whole before forwarding:
# cheaper per request than streaming them through a generator, and a chat request is far
# smaller. Anything larger, chunked, or of a type observers don't copy still streams.
_READ_WHOLE = 64 * 1024
_ids = itertools.count(1)
REQUEST_ID = web.RequestKey("request_id", str)  # the exchange id, for the access log
_ID_PREFIX = os.urandom(4).hex()


def error_response(
    status: int, message: str, code: str, type_: str = "proxy_error"
) -> web.Response:
    """An OpenAI-style error body, so SDKs surface it like any API error."""
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status=status,
    )


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _dropped(name: str, request: bool) -> bool:
    low = name.lower()
    if low in _HOP_BY_HOP or low.startswith("proxy-"):
        return True
    # X-Usage-* is addressed to this proxy only. Expect is met here, once: aiohttp's server
    # answers 100 Continue before the handler reads the body, so the upstream gets a plain
    # request (waiting for its 100 as well hung until upstream_timeout when it sent none).
    return request and (low.startswith("x-usage-") or low == "expect")


# Verdicts per header name as spelled on the wire: the same few dozen names arrive on every
# request, and a dict hit is cheaper than lowering and prefix-testing each one (bench/README.md).
_VERDICTS: tuple[dict[str, bool], dict[str, bool]] = ({}, {})
_MAX_VERDICTS = 4096  # made-up header names must not grow the cache without bound


def _filter_headers(headers: CIMultiDictProxy[str], *, request: bool) -> CIMultiDict[str]:
    verdicts = _VERDICTS[request]
    named = _connection_tokens(headers) if hdrs.CONNECTION in headers else None
    kept: list[tuple[str, str]] = []
    for name, value in headers.items():
        drop = verdicts.get(name)
        if drop is None:
            drop = _dropped(name, request)
            if len(verdicts) < _MAX_VERDICTS:
                verdicts[name] = drop
        if drop or (named and name.lower() in named):
            continue
        kept.append((name, value))
    return CIMultiDict(kept)


def _unsafe_target(raw_path: str) -> str | None:
    """Why a request target must not be forwarded, or None. Only origin-form is accepted, and
    no dot-segment may climb out of the upstream's base path (also when percent-encoded, any
    number of times, or hidden behind a path parameter as in `..;`)."""
    if raw_path[:1] != "/" or raw_path[:2] == "//":
        return "only origin-form request targets are accepted"
    path = raw_path.partition("?")[0]
    decoded = path
    for _ in range(8):  # %252e%252e and deeper: decode until nothing changes
        if "%" not in decoded:
            break
        decoded = unquote(decoded)
    if "." in decoded:
        for segment in decoded.replace("\\", "/").split("/"):
            if segment.partition(";")[0] in (".", ".."):
                return "dot-segments are not allowed in the path"
    if decoded is not path and any(c in decoded for c in "\r\n\0"):
        return "control characters are not allowed in the path"
    return None


def _reserved(raw_path: str) -> bool:
    """Whether a request target is under the proxy's own /_proxy/ prefix, in any case or
    encoding: such a request is never forwarded (it may carry the admin token)."""
    path = raw_path.partition("?")[0]
    for _ in range(8):  # as in _unsafe_target: %255F and deeper
        if "%" not in path:
            break
        path = unquote(path)
    first = path.replace("\\", "/").lstrip("/").partition("/")[0]
    return first.partition(";")[0].lower() == "_proxy"


class _UpstreamRequest(aiohttp.ClientRequest):
    """A ClientRequest that adds none of aiohttp's default headers (Accept, Accept-Encoding,
    User-Agent) and no default Content-Type: the client's own headers go through as they are.
    Session-level `skip_auto_headers` does the same but sorts and copies the skip list on
    every request (bench/README.md, finding 4); aiohttp has no cheaper public switch."""

    _SKIP: CIMultiDict[None] = CIMultiDict(
        (h, None) for h in (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE, hdrs.USER_AGENT)
    )

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = self._SKIP


class _HeaderDeadlines:
    """Bounds each request's wait for the upstream's response headers, with one timer task for
    all requests instead of a timer per request (bench/README.md, finding 4). Deadlines are
    checked every `tick` seconds, so a timeout fires up to a tick late."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tick = min(1.0, max(timeout / 8, 0.01))
        # Insertion order is deadline order (one timeout for all), so the scan stops early.
        self._waiting: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="upstream-header-deadlines")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add(self, task: asyncio.Task[object]) -> None:
        self._waiting[task] = asyncio.get_running_loop().time() + self.timeout

    def discard(self, task: asyncio.Task[object]) -> None:
        self._waiting.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether the cancellation `task` got came from its deadline."""
        return task in self._expired

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            due = []
            for task, deadline in self._waiting.items():
                if deadline > now:
                    break
                due.append(task)
            for task in due:
                del self._waiting[task]
                self._expired.add(task)
                task.cancel()


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
    ) -> None:
        base = URL(upstream)
        self._origin = base.origin()
        self._base_path = base.raw_path.rstrip("/")
        self._prefix = str(self._origin) + self._base_path
        self._connect_timeout = connect_timeout
        self._dispatcher = dispatcher
        self._deadlines = _HeaderDeadlines(timeout)
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=None
        )
        self._limit = limit
        self._max_body = max_observed_body
        self._max_request = max_observed_request
        self._read_whole = min(_READ_WHOLE, max_observed_request)
        # The one change the proxy may make to traffic, opt-in: see proxy.chat_usage.
        self._rewriter = rewriter
        self._session: aiohttp.ClientSession | None = None
        self._client: UpstreamClient | None = None

    async def start(self) -> None:
        if self._limit == 0:
            # A limit is kept by aiohttp's pool, which the lean client does not share.
            self._client = UpstreamClient(self._origin, connect_timeout=self._connect_timeout)
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, ttl_dns_cache=300)
        # aiohttp's pool reuses a connection only when the exchange on it ended cleanly, as the
        # lean client's does (proxy.upstream_conn). aiohttp has no public switch for the
        # protocol class: `_factory` is what its connector creates each connection with.
        connector._factory = functools.partial(CheckedConnection, asyncio.get_running_loop())
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=self._client_timeout,
            # The client's own headers go through as they are: nothing may be added.
            request_class=_UpstreamRequest,
            cookie_jar=aiohttp.DummyCookieJar(),
            requote_redirect_url=False,
        )
        self._deadlines.start()

    async def close(self) -> None:
        await self._deadlines.stop()
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared upstream session (the collector reuses its pool)."""
        assert self._session is not None, "Forwarder.start() was not awaited"
        return self._session

    def upstream_url(self, path_qs: str) -> URL:
        return URL(self._prefix + path_qs, encoded=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request; the aiohttp handler for every path outside /_proxy/."""
        raw_path = request.raw_path
        why = _unsafe_target(raw_path)
        if why is not None or request.method == "CONNECT":
            return error_response(400, why or "CONNECT is not supported", "bad_request_target")
        if _reserved(raw_path):
            # The admin routes are matched as written; any other spelling is not an API path.
            return error_response(404, f"no such proxy endpoint: {request.path}", "not_found")
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
            response = await self._forward(request, raw_path, exchange)
            done = True
            return response
        except asyncio.CancelledError:
            exchange.client_disconnected = True
            exchange.error = exchange.error or "client disconnected"
            raise
        except UpstreamError as exc:
            exchange.error = str(exc)
            done = True
            return error_response(exc.status, str(exc), exc.code)
        finally:
            if not done and exchange.error is None:
                # Whatever escaped (aiohttp answers it with a bare 500), observers hear of it.
                exchange.error = "the proxy failed to forward the request"
            exchange.ended_at = time.time()
            self._dispatcher.submit("on_error" if exchange.error else "on_response", exchange)

    async def _forward(
        self, request: web.Request, raw_path: str, exchange: Exchange
    ) -> web.StreamResponse:
        headers = _filter_headers(request.headers, request=True)
        data: AsyncIterator[bytes] | bytes | None = None
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
            length = request.content_length
            if length is not None and length <= self._read_whole and self._copies(request):
                data = exchange.request_body = await request.read()
            else:
                data = self._request_body(request, exchange)
        session = self.session
        deadlines = self._deadlines
        task = asyncio.current_task()
        assert task is not None
        deadlines.add(task)
        client = self._client
        upstream: aiohttp.ClientResponse | UpstreamResponse
        try:
            if client is not None and (data is None or type(data) is bytes):
                upstream = await client.request(
                    request.method,
                    # A fragment is the client's own: it never goes on the wire (RFC 9110 4.2.4).
                    self._base_path + raw_path.partition("#")[0],
                    headers.items(),
                    data,
                    has_length=hdrs.CONTENT_LENGTH in headers,
                )
            else:
                upstream = await session.request(
                    request.method,
                    self.upstream_url(raw_path),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    compress=False,
                )
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
        exchange.response_started_at = time.time()
        # The upstream answered before it had the whole body (a streamed one): it may never
        # read the rest, so the connection is not reused, nor is its writer waited for.
        early = data is not None and type(data) is not bytes and data.ag_frame is not None
        try:
            return await self._relay(request, upstream, exchange, rewritten)
        finally:
            # Closing (not releasing) an unfinished response drops its connection, so a client
            # that went away also stops the upstream's generation. A released one goes back to
            # its pool only if the exchange ended cleanly (proxy.upstream_conn).
            if early or not upstream.content.at_eof():
                upstream.close()
            else:
                upstream.release()

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"the upstream sent no response within {self._deadlines.timeout:g} s"
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

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse | UpstreamResponse,
        exchange: Exchange,
        rewritten: bool = False,
    ) -> web.StreamResponse:
        exchange.status = upstream.status
        exchange.response_headers = upstream.headers
        response = _Relayed(
            status=upstream.status,
            reason=upstream.reason,
            headers=_filter_headers(upstream.headers, request=False),
        )
        response.unsent = tuple(h for h in _DEFAULTED if h not in upstream.headers)
        body_filter = None
        if rewritten and self._rewriter is not None:
            body_filter = self._rewriter.response_filter(upstream.status, upstream.headers)
            for name in body_filter.drop_headers if body_filter is not None else ():
                response.headers.popall(name, None)
        ctype = exchange.content_type
        tap: _CopyTap | _SSETap | None = None
        if self._max_body > 0:  # 0: observers asked for no copy of response bodies
            if ctype == "text/event-stream":
                tap = _SSETap(exchange, self._dispatcher, self._max_body)
            elif ctype in _JSON_TYPES or ctype.endswith("+json"):
                tap = _CopyTap(exchange, self._max_body)
        content = upstream.content
        whole = body_filter is None and _arrived_whole(request, upstream)
        if whole:
            # The body came in with the headers: both go out in one write instead of two,
            # which is when the client would have had them anyway (bench/README.md).
            response.send_headers_with_body()
        try:
            await response.prepare(request)
        except ConnectionError:
            return _client_gone(exchange, response)
        if whole:
            body = content.read_nowait()
            if tap is not None:
                tap.feed(body)
                tap.close()
            try:
                await response.write_eof(body)
            except ConnectionError:
                return _client_gone(exchange, response)
            return response
        while True:
            try:
                chunk = await content.readany()
            except aiohttp.ClientError as exc:
                # Headers are already out: the honest signal is a cut connection, as the
                # upstream gave.
                exchange.error = f"the upstream broke off the body: {type(exc).__name__}"
                if request.transport is not None:
                    request.transport.close()
                return response
            if not chunk:
                break
            out = body_filter.feed(chunk) if body_filter is not None else chunk
            try:
                # Written as it comes: an SSE event reaches the client when the upstream sent it.
                if out:
                    await response.write(out)
            except ConnectionError:
                return _client_gone(exchange, response)
            if tap is not None:
                tap.feed(chunk)
        if tap is not None:
            tap.close()
        try:
            if body_filter is not None and (rest := body_filter.close()):
                await response.write(rest)
            await response.write_eof()
        except ConnectionError:
            return _client_gone(exchange, response)
        return response


def _arrived_whole(
    request: web.Request, upstream: aiohttp.ClientResponse | UpstreamResponse
) -> bool:
    """Whether the upstream's whole body, as its Content-Length announced, is already in hand."""
    length = upstream.headers.get(hdrs.CONTENT_LENGTH)
    content = upstream.content
    return (
        length is not None
        and content.is_eof()
        and content.total_bytes > 0
        and length == str(content.total_bytes)
        and request.method != "HEAD"
    )


def _client_gone(exchange: Exchange, response: web.StreamResponse) -> web.StreamResponse:
    # A write to a client that went away: nothing to answer, and nothing to log as a failure.
    exchange.client_disconnected = True
    exchange.error = "client disconnected"
    return response


class _Relayed(web.StreamResponse):
    """A StreamResponse that keeps aiohttp from adding what the upstream left out:
    Content-Type (RFC 9110 section 8.3 lets the recipient sniff instead) and Server. Date is
    still added when missing, as RFC 9110 section 6.6.1 asks of a forwarding recipient.
    aiohttp has no public switch for these defaults, hence the override."""

    unsent: tuple[str, ...] = ()

    def send_headers_with_body(self) -> None:
        """Hold the headers back until the first body write (or write_eof), and send them in
        the same write; aiohttp's own switch for this is a class attribute."""
        self._send_headers_immediately = False

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in self.unsent:
            self._headers.popall(name, None)


class _CopyTap:
    __slots__ = ("_buf", "_exchange", "_limit")

    def __init__(self, exchange: Exchange, limit: int) -> None:
        self._exchange = exchange
        self._limit = limit
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._exchange.response_truncated:
            return
        if len(self._buf) + len(chunk) > self._limit:
            self._exchange.response_truncated = True
            self._buf.clear()
            return
        self._buf += chunk

    def close(self) -> None:
        self._exchange.raw_response_body = bytes(self._buf)


class _SSETap:
    """Parses the proxy's copy of an event stream for observers. Fails closed for the copy
    only: an unreadable stream stops the parsing, never the bytes to the client."""

    __slots__ = ("_decoder", "_dispatcher", "_exchange", "_kept", "_limit", "_parser", "_since")

    def __init__(self, exchange: Exchange, dispatcher: Dispatcher, limit: int) -> None:
        self._exchange = exchange
        self._dispatcher = dispatcher
        self._limit = limit
        self._kept = 0  # bytes of event data kept in exchange.events
        self._since = 0  # bytes fed since the last event: bounds the parser's line buffer
        self._parser: SSEParser | None = SSEParser()
        self._decoder: Decompressor | None = None
        encoding = (
            exchange.response_headers.get("Content-Encoding") if exchange.response_headers else None
        )
        if encoding:
            try:
                # Capped like the JSON copy: a small compressed stream may decode to gigabytes.
                self._decoder = Decompressor(encoding, limit=limit)
            except DecodeError:
                self._parser = None

    def feed(self, chunk: bytes) -> None:
        if self._parser is None:
            return
        decoder = self._decoder
        try:
            if decoder is not None:
                chunk = decoder.feed(chunk)
        except DecodeError:
            self._parser = None  # unreadable copy: the client's bytes are unaffected
            return
        self._events(self._parser.feed(chunk), len(chunk))
        if decoder is not None and decoder.over and self._parser is not None:
            # The cap: observers see the events before it, and no more is decoded.
            self._parser = None
            self._exchange.response_truncated = True

    def close(self) -> None:
        if self._parser is None or self._decoder is None:
            return
        # A truncated compressed stream raises here: the events parsed so far stand.
        with contextlib.suppress(DecodeError):
            self._events(self._parser.feed(self._decoder.flush()), 0)

    def _events(self, events: list[SSEEvent], fed: int) -> None:
        exchange = self._exchange
        if not events:
            self._since += fed
            if self._since > self._limit:
                # An event larger than the limit: stop reading the copy, not the stream.
                self._parser = None
                exchange.response_truncated = True
            return
        self._since = 0
        for event in events:
            # Charged for its Python objects too, so a stream of tiny events stays in the cap.
            self._kept += len(event.data) + len(event.event) + _EVENT_OVERHEAD
            if self._kept <= self._limit:
                exchange.events.append(event)
            else:
                exchange.response_truncated = True
            self._dispatcher.submit("on_event", exchange, event)
