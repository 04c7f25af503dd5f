"""Usage for streamed chat completions whose client did not ask for it (setting
`chat_include_usage`, off by default): a transformation of the bytes, so not an observer.

With the setting on, a POST to `.../chat/completions` whose JSON body has `"stream": true` and
no `stream_options.include_usage: true` goes upstream with `include_usage` set, so that the
upstream reports the figures. The reply's event stream is then filtered so that the client gets
what it would have got without the proxy:

- the usage chunk (`"choices": []` with a usage object) is dropped, its whole event block;
- the `"usage": null` member the upstream adds to every other chunk is cut out of the data line
  exactly as written (with its comma and surrounding blanks); every other byte is left alone.

Observers are fed the upstream's bytes before the filter, so accounting sees the usage.

Where bytes cannot be handled exactly, nothing is changed, or the change is on the side of the
client's view: a request body with a Content-Encoding, without a Content-Length or larger than
`max_body` is forwarded as it is (rewriting holds the whole body in memory); a request body that
had no `stream_options` gets the member spliced in after its opening brace, and one that had
them is re-serialised compactly. A compressed reply is decoded to be filtered and sent decoded,
without Content-Encoding, since the filter cannot re-encode it byte for byte; Content-Length is
dropped from a filtered reply. Its decoding is capped (64 MiB, far above a real chat
stream): a small compressed reply may decode to gigabytes, so no call decodes more than the
cap, and a reply that decodes longer ends there for the client, with a log line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from proxy.forwarding.decode import DecodeError, Decompressor

__all__ = ["IncludeUsage", "UsageChunkFilter", "add_include_usage"]

_log = logging.getLogger("proxy.chat_usage")
# What a filtered reply may decode to. A compressed reply can decode to gigabytes in one call,
# so there is a cap; it is the client's answer that is cut there, so it sits far above any
# real chat stream (128k tokens at ~200 bytes of event each: ~25 MiB), not at the observers'.
_MAX_DECODED = 64 * 1024 * 1024

_MEMBER = b'"stream_options":{"include_usage":true},'
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
# A null usage member: after another member (eats the comma before it), or first (eats the one
# after it). Inside a JSON string a quote is escaped, so a match is always structure; its depth
# is checked before it is cut.
_NULL_AFTER = re.compile(rb',[ \t]*"usage"[ \t]*:[ \t]*null(?=[ \t]*[,}])')
_NULL_FIRST = re.compile(rb'(?<=\{)([ \t]*)"usage"[ \t]*:[ \t]*null[ \t]*,[ \t]*')
_EOL = re.compile(rb"[\r\n]")
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)


def add_include_usage(body: bytes) -> bytes | None:
    """`body` with `stream_options.include_usage` set to true, or None when it needs no change:
    not a JSON object, not streaming, or the client asked for usage itself."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("stream") is not True:
        return None
    options = obj.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if "stream_options" not in obj:
        start = len(body) - len(body.lstrip())
        return body[: start + 1] + _MEMBER + body[start + 1 :]
    obj["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class UsageChunkFilter:
    """Incremental filter of an event stream; see the module docstring. `feed` returns the bytes
    to send now (possibly none: an event is held until its blank line), `close` the rest."""

    __slots__ = ("_block", "_buf", "_dead", "_decoder", "_limit", "drop_headers")

    def __init__(self, content_encoding: str | None = None, *, limit: int = _MAX_DECODED) -> None:
        self._decoder = Decompressor(content_encoding, limit=limit) if content_encoding else None
        self._limit = limit
        self.drop_headers: tuple[str, ...] = ("Content-Length",)
        if self._decoder is not None:
            self.drop_headers += ("Content-Encoding",)
        self._buf = b""
        self._block: list[bytes] = []
        self._dead = False

    def feed(self, chunk: bytes) -> bytes:
        if self._decoder is not None and not self._dead:
            try:
                chunk = self._decoder.feed(chunk)
            except DecodeError:
                self._die()
        if self._dead:
            return b""
        out = self._lines(chunk)
        if self._decoder is not None and self._decoder.over:
            # The events before the cap are sent; the one it cut, and the rest, are not.
            _log.warning(
                "a chat completion stream decodes to more than %d bytes; its rest is not sent",
                self._limit,
            )
            self._dead, self._block, self._buf = True, [], b""
        return out

    def _lines(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk
        out: list[bytes] = []
        start = 0
        while (end := _line_end(buf, start)) is not None:
            line = buf[start:end]
            start = end
            self._block.append(line)
            if line in (b"\n", b"\r\n", b"\r"):
                out.append(_filtered(self._block))
                self._block = []
        self._buf = buf[start:]
        return b"".join(out)

    def close(self) -> bytes:
        """The bytes still held: an unterminated last event, passed on as it came."""
        out = b""
        if self._decoder is not None and not self._dead:
            try:
                out = self.feed(self._decoder.flush())
            except DecodeError:
                self._die()
        if self._dead:
            return b""
        out += b"".join(self._block) + self._buf
        self._block, self._buf = [], b""
        return out

    def _die(self) -> None:
        # The client's own decoder would fail at this point too: the stream ends here.
        _log.warning("cannot decode a chat completion stream; its rest is not sent")
        self._dead, self._block, self._buf = True, [], b""


def _line_end(buf: bytes, start: int) -> int | None:
    """Index just past the line starting at `start`, or None while it is incomplete. A CR at
    the end of the buffer waits: it may be the first half of a CRLF."""
    # One search for either end, not a find of each: a find of the CR a stream never sends
    # scans to the end of the buffer for every line, quadratic in a large decoded chunk.
    m = _EOL.search(buf, start)
    if m is None:
        return None
    end = m.start()
    if buf[end] == 0x0A:
        return end + 1
    if end + 1 >= len(buf):
        return None
    return end + 2 if buf[end + 1] == 0x0A else end + 1


def _filtered(block: list[bytes]) -> bytes:
    data = [i for i, line in enumerate(block) if line.startswith(b"data:")]
    if len(data) != 1:
        return b"".join(block)  # not a chunk as OpenAI writes them: left alone
    i = data[0]
    line = block[i]
    if _EMPTY_CHOICES.search(line) and _is_usage_chunk(line):
        return b""
    block[i] = _cut_null_usage(line)
    return b"".join(block)


def _is_usage_chunk(line: bytes) -> bool:
    try:
        obj: Any = json.loads(line[5:])
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


def _cut_null_usage(line: bytes) -> bytes:
    for pattern in (_NULL_AFTER, _NULL_FIRST):
        for m in pattern.finditer(line):
            if _depth(line, m.start()) == 1:
                keep = m.group(1) if pattern is _NULL_FIRST else b""
                return line[: m.start()] + keep + line[m.end() :]
    return line


def _depth(line: bytes, end: int) -> int:
    """Nesting depth at `end`, counting brackets outside strings."""
    depth = 0
    for m in _TOKENS.finditer(line, 0, end):
        tok = m.group()
        if tok in (b"{", b"["):
            depth += 1
        elif tok in (b"}", b"]"):
            depth -= 1
    return depth


class IncludeUsage:
    """The Forwarder's request rewriter for `chat_include_usage`."""

    def __init__(self, max_body: int = 16 * 1024 * 1024, max_decoded: int = _MAX_DECODED) -> None:
        self._max_body = max_body
        self._max_decoded = max_decoded

    def wants(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        """Whether to read this request's body whole and offer it to `rewrite`."""
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return False
        length = headers.get("Content-Length", "")
        return (
            not headers.get("Content-Encoding")
            and length.isdigit()
            and int(length) <= self._max_body
        )

    def rewrite(self, body: bytes) -> bytes | None:
        """The body to forward instead, or None to forward it unchanged."""
        return add_include_usage(body)

    def response_filter(self, status: int, headers: Mapping[str, str]) -> UsageChunkFilter | None:
        """The filter for the reply to a rewritten request, or None to relay it untouched."""
        ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if status != 200 or ctype != "text/event-stream":
            return None
        try:
            return UsageChunkFilter(headers.get("Content-Encoding"), limit=self._max_decoded)
        except DecodeError:
            return None  # an encoding this proxy cannot decode: relayed as it came
