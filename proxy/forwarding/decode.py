"""Decoding of tapped copies: Content-Encoding and server-sent events. Pure; no I/O.

The client always receives the upstream's bytes untouched. These functions only ever work on
the proxy's own copy, so an error here means "cannot read it", never "cannot forward it".
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "BodyTooLarge",
    "DecodeError",
    "Decompressor",
    "SSEEvent",
    "SSEParser",
    "decode_body",
    "parse_json",
]

try:  # optional codecs: used when installed, and the body is left unread otherwise
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None


_BOM = b"\xef\xbb\xbf"


class DecodeError(ValueError):
    """A tapped copy cannot be decoded (unknown or broken encoding, not JSON)."""


class BodyTooLarge(DecodeError):
    """Decoding would produce more than the allowed number of bytes."""


class Decompressor:
    """Incremental decoder for one Content-Encoding value (possibly a list, applied in order).

    With `limit`, no stage produces more than `limit` bytes, and no call more than a few MiB,
    before a decompression bomb can take the memory: the call that reaches the limit returns
    the output up to it and sets `over`, and later calls raise BodyTooLarge.
    """

    def __init__(self, content_encoding: str | None, *, limit: int | None = None) -> None:
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        # Encodings are listed in the order they were applied, so they are undone in reverse.
        self._stages = [_stage(c, limit) for c in reversed(codings) if c != "identity"]

    @property
    def over(self) -> bool:
        """Whether a stage reached the limit: the output so far is cut there."""
        return any(stage.over for stage in self._stages)

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
    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._produced = 0
        self.over = False

    def feed(self, data: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def flush(self) -> bytes:
        return b""

    def _room(self) -> int:
        """Bytes this stage may still produce, plus one to detect going over; 0: no limit."""
        return 0 if self._limit is None else self._limit - self._produced + 1

    def _count(self, out: bytes) -> bytes:
        """`out`, cut where the limit is reached (and `over` set)."""
        self._produced += len(out)
        if self._limit is not None and self._produced > self._limit:
            self.over = True
            return out[: len(out) - (self._produced - self._limit)]
        return out

    def _check(self) -> None:
        if self.over:
            raise BodyTooLarge(f"decoded body exceeds the limit of {self._limit} bytes")


class _Zlib(_Stage):
    """gzip (all members, RFC 1952 section 2.2) or deflate (zlib, or raw as some servers send)."""

    def __init__(self, wbits: int, limit: int | None) -> None:
        super().__init__(limit)
        self._wbits = wbits
        self._d = zlib.decompressobj(wbits)
        # Input kept until the first output, so that a "deflate" body that turns out to be raw
        # can be decoded again from its start, however small the chunks it came in.
        self._head: bytearray | None = bytearray() if wbits == zlib.MAX_WBITS else None
        self._done = False

    def feed(self, data: bytes) -> bytes:
        self._check()
        if not data:
            return b""
        if self._head is not None:
            self._head += data
        out = self._decompress(data)
        if self._head is not None and out:
            self._head = None
        return out

    def _decompress(self, data: bytes) -> bytes:
        if self._done:
            return b""
        try:
            out = self._count(self._d.decompress(data, self._room()))
        except zlib.error as exc:
            if self._head is not None:
                head, self._head = bytes(self._head), None
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
                return self._decompress(head)
            raise DecodeError(f"bad compressed data: {exc}") from exc
        if self._d.eof and self._d.unused_data and not self.over:
            rest = self._d.unused_data
            if self._wbits > zlib.MAX_WBITS:
                self._d = zlib.decompressobj(self._wbits)
                return out + self._decompress(rest)
            self._done = True  # trailing bytes after a deflate stream carry nothing
        return out

    def flush(self) -> bytes:
        self._check()
        if not self._d.eof:
            raise DecodeError("compressed body is truncated")
        return b""


class _Brotli(_Stage):
    def __init__(self, limit: int | None) -> None:
        super().__init__(limit)
        self._d = _brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        self._check()
        if not data:
            return b""
        try:
            if self._limit is None:
                return self._count(self._d.process(data))
            out = self._count(self._d.process(data, output_buffer_limit=self._room()))
            while not self.over and not self._d.can_accept_more_data():
                out += self._count(self._d.process(b"", output_buffer_limit=self._room()))
            return out
        except DecodeError:
            raise
        except Exception as exc:  # brotli raises its own error type
            raise DecodeError(f"bad brotli data: {exc}") from exc

    def flush(self) -> bytes:
        self._check()
        if not self._d.is_finished():
            raise DecodeError("brotli body is truncated")
        return b""


class _Zstd(_Stage):
    # zstandard's decompressobj has no output bound, so a limited stage feeds it in slices
    # small enough to bound each call's output too: a zstd block decodes to 128 KiB at most,
    # and takes 4 bytes at least (RLE), so 256 bytes make 8 MiB at most.
    _SLICE = 256

    def __init__(self, limit: int | None) -> None:
        super().__init__(limit)
        self._d = _zstd.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        self._check()
        if not data:
            return b""  # a decompressobj at its end refuses even empty input
        if self._limit is None:
            return self._decompress(data)
        view = memoryview(data)
        out = []
        for i in range(0, len(view), self._SLICE):
            out.append(self._decompress(bytes(view[i : i + self._SLICE])))
            if self.over:
                break
        return b"".join(out)

    def _decompress(self, data: bytes) -> bytes:
        try:
            out = self._count(self._d.decompress(data))
        except _zstd.ZstdError as exc:
            raise DecodeError(f"bad zstd data: {exc}") from exc
        if self._d.eof and self._d.unused_data and not self.over:
            # Concatenated frames are one stream (RFC 8878 section 3.1).
            rest = self._d.unused_data
            self._d = _zstd.ZstdDecompressor().decompressobj()
            out += self._decompress(rest)
        return out

    def flush(self) -> bytes:
        self._check()
        if not self._d.eof:
            raise DecodeError("zstd body is truncated")
        return b""


def _stage(coding: str, limit: int | None) -> _Stage:
    if coding in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS, limit)
    if coding == "deflate":
        return _Zlib(zlib.MAX_WBITS, limit)
    if coding == "br" and _brotli is not None:
        return _Brotli(limit)
    if coding == "zstd" and _zstd is not None:
        return _Zstd(limit)
    raise DecodeError(f"unsupported Content-Encoding {coding!r}")


def decode_body(body: bytes, content_encoding: str | None, *, limit: int | None = None) -> bytes:
    """Undo Content-Encoding on a whole body. Raises DecodeError when it can't, or when the
    decoded body would be larger than `limit` bytes."""
    d = Decompressor(content_encoding, limit=limit)
    out = d.feed(body)
    if d.over:
        raise BodyTooLarge(f"decoded body exceeds the limit of {limit} bytes")
    return out + d.flush()


# orjson reads an integer beyond 64 bits as a float; 20 digits is the shortest such literal.
# Found by turning every digit into "0" and looking for 20 of them: a regex search for \d{20}
# cost ~50,000 instructions per chat completion (it tries the repeat at every offset), this
# ~3,000. Non-ASCII digits need no search: JSON numbers are ASCII, so they are string content,
# which both parsers read alike.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 20


def _long_digits(body: bytes | str) -> bool:
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")  # UTF-8 keeps ASCII digits as they are
    # find, not `in`: `in` first tries the needle as an int and pays for the TypeError.
    return body.translate(_ZEROS).find(_LONG_NUMBER) >= 0


def parse_json(body: bytes | str) -> Any:
    """Parse a JSON body, raising DecodeError rather than a json/unicode error.

    orjson first: every recorded request parses at least one body, and it is ~4x faster than
    the standard library (bench/README.md). What orjson refuses and `json` accepts (NaN,
    UTF-16 text) is parsed again by `json`, and so is a body with 20 digits in a row, which
    orjson would turn into a float where `json` gives an int: the result never depends on
    which parser ran."""
    if not _long_digits(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
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
        return parse_json(self.data)


class SSEParser:
    """Incremental parser for text/event-stream (WHATWG HTML, "event stream interpretation").

    Feed it bytes split anywhere (even inside a CRLF, a UTF-8 sequence or the byte order mark);
    it returns the same events as for the whole stream at once. An event with no data line
    dispatches nothing, and the id is sticky across events, as the spec says.
    """

    __slots__ = ("_at_start", "_buf", "_data", "_event", "_id", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._at_start = True
        self._pending_cr = False
        self._event = ""
        self._data: list[str] | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk` (a list, so that nothing fed is ever lost)."""
        if not chunk:
            return []
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        if self._at_start:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf  # maybe the start of a byte order mark: wait for more
                return []
            self._at_start = False
            if buf.startswith(_BOM):
                start = len(_BOM)
        if self._pending_cr:
            self._pending_cr = False
            if buf[start : start + 1] == b"\n":
                start += 1  # the LF of a CRLF split across two chunks
        events: list[SSEEvent] = []
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
                    nxt = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
                else:
                    nxt = cr + 1
                    self._pending_cr = True
            event = self._line(buf[i:end])
            if event is not None:
                events.append(event)
            i = nxt
        self._buf = buf[i:]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: an unterminated last event is discarded, as the spec says."""
        self._buf = b""
        self._pending_cr = False
        self._reset()
        return []

    def _reset(self) -> None:
        self._event = ""
        self._data = None

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            if self._data is None:
                self._reset()
                return None
            ev = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._reset()
            return ev
        if raw[0] == 0x3A:  # ":" starts a comment
            return None
        line = raw.decode("utf-8", errors="replace")
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None
