"""Decoding of tapped copies: Content-Encoding and server-sent events. Pure; no I/O.

The client always receives the upstream's bytes untouched. These functions only ever work on
the proxy's own copy, so an error here means "cannot read it", never "cannot forward it".
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["DecodeError", "Decompressor", "SSEEvent", "SSEParser", "decode_body", "parse_json"]

try:  # optional codecs: used when installed, and the body is left unread otherwise
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None


class DecodeError(ValueError):
    """A tapped copy cannot be decoded (unknown or broken encoding, not JSON)."""


class Decompressor:
    """Incremental decoder for one Content-Encoding value (possibly a list, applied in order)."""

    def __init__(self, content_encoding: str | None) -> None:
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        # Encodings are listed in the order they were applied, so they are undone in reverse.
        self._stages = [_stage(c) for c in reversed(codings) if c != "identity"]

    def feed(self, data: bytes) -> bytes:
        for stage in self._stages:
            data = stage.feed(data)
        return data

    def flush(self) -> bytes:
        out = b""
        for stage in self._stages:
            out = stage.feed(out) + stage.flush()
        return out


class _Stage:
    def feed(self, data: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def flush(self) -> bytes:
        return b""


class _Zlib(_Stage):
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)
        self._wbits = wbits
        self._started = False

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._d.decompress(data)
        except zlib.error as exc:
            if self._wbits == zlib.MAX_WBITS and not self._started:
                # "deflate" is raw deflate on some servers despite RFC 9110 saying zlib.
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
                self._wbits = -zlib.MAX_WBITS
                return self.feed(data)
            raise DecodeError(f"bad compressed data: {exc}") from exc
        self._started = True
        return out

    def flush(self) -> bytes:
        try:
            out = self._d.flush()
        except zlib.error as exc:  # pragma: no cover - zlib rarely raises here
            raise DecodeError(str(exc)) from exc
        if not self._d.eof:
            raise DecodeError("compressed body is truncated")
        return out


class _Brotli(_Stage):
    def __init__(self) -> None:
        self._d = _brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        try:
            return self._d.process(data)
        except Exception as exc:  # brotli raises its own error type
            raise DecodeError(f"bad brotli data: {exc}") from exc

    def flush(self) -> bytes:
        if not self._d.is_finished():
            raise DecodeError("brotli body is truncated")
        return b""


class _Zstd(_Stage):
    def __init__(self) -> None:
        self._d = _zstd.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        try:
            return self._d.decompress(data)
        except _zstd.ZstdError as exc:
            raise DecodeError(f"bad zstd data: {exc}") from exc

    def flush(self) -> bytes:
        if not self._d.eof:
            raise DecodeError("zstd body is truncated")
        return b""


def _stage(coding: str) -> _Stage:
    if coding in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    if coding == "br" and _brotli is not None:
        return _Brotli()
    if coding == "zstd" and _zstd is not None:
        return _Zstd()
    raise DecodeError(f"unsupported Content-Encoding {coding!r}")


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo Content-Encoding on a whole body. Raises DecodeError when it can't."""
    d = Decompressor(content_encoding)
    return d.feed(body) + d.flush()


def parse_json(body: bytes) -> Any:
    """Parse a JSON body, raising DecodeError rather than a json/unicode error."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event. `event` is "message" when the stream named none."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The data field parsed as JSON; raises DecodeError (e.g. for "[DONE]")."""
        return parse_json(self.data.encode())


class SSEParser:
    """Incremental parser for text/event-stream (WHATWG HTML, "event stream interpretation").

    Feed it bytes split anywhere (even inside a CRLF or a UTF-8 sequence); it yields the same
    events as for the whole stream at once.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_data = False

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        if not chunk:
            return
        buf = self._buf + chunk
        start = 0
        if self._pending_cr and buf.startswith(b"\n"):
            start = 1  # the LF of a CRLF split across two chunks
        self._pending_cr = False
        n = len(buf)
        i = start
        while True:
            cr = buf.find(b"\r", i)
            lf = buf.find(b"\n", i)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            else:
                end = cr
                if cr + 1 < n:
                    nxt = cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
                else:
                    nxt = cr + 1
                    self._pending_cr = True
            event = self._line(buf[i:end])
            if event is not None:
                yield event
            i = nxt
        self._buf = buf[i:]

    def close(self) -> Iterator[SSEEvent]:
        """End of stream: an unterminated last event is discarded, as the spec says."""
        self._buf = b""
        self._reset()
        return iter(())

    def _reset(self) -> None:
        self._event = ""
        self._data = []
        self._has_data = False

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            if not self._has_data:
                self._reset()
                return None
            ev = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._reset()
            return ev
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None
