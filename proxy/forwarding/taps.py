"""The copies observers see of a response body: a capped copy of a JSON body (CopyTap), and
the parsed events of an event stream (SSETap), each delivered through the Dispatcher. A tap
never changes or delays a byte to the client."""

from __future__ import annotations

import contextlib

from proxy.forwarding.decode import DecodeError, Decompressor, SSEEvent, SSEParser
from proxy.forwarding.exchange import Dispatcher, Exchange

__all__ = ["CopyTap", "SSETap"]

_EVENT_OVERHEAD = 160  # bytes an SSEEvent and its strings cost beyond the data itself


class CopyTap:
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


class SSETap:
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
