"""The response's way back: the upstream's status, headers and body to the client, byte for
byte and at the upstream's pace, with the copies observers see (taps.py), and the hold seam
(holds.py) before the answer's last bytes."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import hdrs, web

from proxy.forwarding.exchange import Dispatcher, Exchange
from proxy.forwarding.holds import Holds
from proxy.forwarding.rewrite import IncludeUsage
from proxy.forwarding.taps import CopyTap, SSETap
from proxy.forwarding.targets import filter_headers
from proxy.forwarding.upstream import Response
from proxy.forwarding.upstream.compat import Internals, request_key, response_class

__all__ = ["RESPONSE", "Relay"]

# Headers aiohttp's server fills in when a response lacks them.
_DEFAULTED = (hdrs.CONTENT_TYPE, hdrs.SERVER)
_JSON_TYPES = ("application/json",)
# The response begun for a request, for the access line of a client that went away.
RESPONSE = request_key("response", web.StreamResponse)


class Relay:
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        max_body: int,
        rewriter: IncludeUsage | None,
        holds: Holds | None,
    ) -> None:
        self._dispatcher = dispatcher
        self._max_body = max_body
        self._rewriter = rewriter
        # None: nothing holds, and the relay never asks.
        self.holds = holds
        self.response_class = response_class(Internals(False, False, False))

    async def __call__(
        self,
        request: web.Request,
        upstream: Response,
        exchange: Exchange,
        rewritten: bool = False,
    ) -> web.StreamResponse:
        exchange.status = upstream.status
        exchange.response_headers = upstream.headers
        response = self.response_class(
            status=upstream.status,
            reason=upstream.reason,
            headers=filter_headers(upstream.headers, request=False),
        )
        response.unsent = tuple(h for h in _DEFAULTED if h not in upstream.headers)
        request[RESPONSE] = response
        body_filter = None
        if rewritten and self._rewriter is not None:
            body_filter = self._rewriter.response_filter(upstream.status, upstream.headers)
            for name in body_filter.drop_headers if body_filter is not None else ():
                response.headers.popall(name, None)
        ctype = exchange.content_type
        tap: CopyTap | SSETap | None = None
        if self._max_body > 0:  # 0: observers asked for no copy of response bodies
            if ctype == "text/event-stream":
                tap = SSETap(exchange, self._dispatcher, self._max_body)
            elif ctype in _JSON_TYPES or ctype.endswith("+json"):
                tap = CopyTap(exchange, self._max_body)
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
            if self.holds is not None:
                await self._hold(exchange)
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
        if self.holds is not None:
            await self._hold(exchange)
        try:
            if body_filter is not None and (rest := body_filter.close()):
                await response.write(rest)
            await response.write_eof()
        except ConnectionError:
            return _client_gone(exchange, response)
        return response

    async def _hold(self, exchange: Exchange) -> None:
        """Ask the holders; when one holds the answer, deliver the exchange's end now (the
        Forwarder then does not: `exchange.hold` is set) and wait for its release, bounded."""
        holds = self.holds
        assert holds is not None
        if not await holds.wanted(exchange):
            return
        hold = holds.start(exchange)
        exchange.ended_at = time.time()
        self._dispatcher.submit("on_response", exchange)
        await holds.wait(exchange, hold)


def _arrived_whole(request: web.Request, upstream: Response) -> bool:
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
