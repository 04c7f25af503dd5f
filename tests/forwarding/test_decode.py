"""decode.py: the SSE parser under every split of its input, and the Content-Encoding decoders
of tapped copies (whole and incremental, complete and broken)."""

from __future__ import annotations

import gzip
import itertools
import json
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy.forwarding.decode
from proxy.forwarding.decode import (
    DecodeError,
    Decompressor,
    SSEEvent,
    SSEParser,
    decode_body,
    parse_json,
)

# One stream with every feature the parser must handle: comments, CRLF, LF and bare CR line
# endings, multi-line data, an event with no data line (dispatches nothing and resets the
# event type), a data field with no colon, "data:" without the space, two spaces kept as one,
# multi-byte UTF-8, a sticky id, and an unterminated last event (discarded at close).
MIXED = (
    b": keep-alive comment\r\n"
    b"event: thread.run.created\r\n"
    b'data: {"a": 1}\r\n'
    b"\r\n"
    b"data: line1\n"
    b"data: line2\n"
    b"id: 42\n"
    b"\n"
    b"event: ping\n"
    b"\n"
    b"data:after-ping\r"
    b"\r"
    b"data\n"
    b"\n"
    b"data:  caf\xc3\xa9 \xe2\x98\x95\n"
    b"retry: 1000\n"
    b"unknown-field: ignored\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
    b"data: unterminated"
)
MIXED_EVENTS = [
    SSEEvent("thread.run.created", '{"a": 1}', None),
    SSEEvent("message", "line1\nline2", "42"),
    SSEEvent("message", "after-ping", "42"),
    SSEEvent("message", "", "42"),
    SSEEvent("message", " caf\u00e9 \u2615", "42"),
    SSEEvent("message", "[DONE]", "42"),
]

# An OpenAI chat stream shape, to be rendered with each line ending on its own.
_CHAT_LINES = [
    ": OPENROUTER PROCESSING",
    "",
    'data: {"choices":[{"delta":{"content":"Hel"}}]}',
    "",
    "event: thread.message.delta",
    'data: {"delta":',
    'data: {"content":"lo"}}',
    "",
    "event: done",
    "data: [DONE]",
    "",
]
CHAT_EVENTS = [
    SSEEvent("message", '{"choices":[{"delta":{"content":"Hel"}}]}'),
    SSEEvent("thread.message.delta", '{"delta":\n{"content":"lo"}}'),
    SSEEvent("done", "[DONE]"),
]
ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def _chat(eol: bytes) -> bytes:
    return b"".join(line.encode() + eol for line in _CHAT_LINES)


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def splits(data: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- SSE -------------------------------------------------------------------------------------


def test_whole_stream() -> None:
    assert parse([MIXED]) == MIXED_EVENTS


@pytest.mark.parametrize("eol", ENDINGS.values(), ids=ENDINGS.keys())
def test_line_endings(eol: bytes) -> None:
    assert parse([_chat(eol)]) == CHAT_EVENTS


def test_every_single_split() -> None:
    for cut in range(len(MIXED) + 1):
        assert parse(splits(MIXED, (cut,))) == MIXED_EVENTS, cut


@pytest.mark.parametrize("eol", ENDINGS.values(), ids=ENDINGS.keys())
def test_every_pair_of_splits(eol: bytes) -> None:
    data = _chat(eol)
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            assert parse(splits(data, (a, b))) == CHAT_EVENTS, (a, b)


def test_byte_by_byte() -> None:
    assert parse([MIXED[i : i + 1] for i in range(len(MIXED))]) == MIXED_EVENTS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(MIXED)), max_size=40))
def test_random_splits(cuts: list[int]) -> None:
    assert parse(splits(MIXED, tuple(sorted(cuts)))) == MIXED_EVENTS


def test_empty_chunks_change_nothing() -> None:
    # An empty chunk between the CR and LF of one CRLF must not turn it into two line ends.
    assert parse([b"data: a\r", b"", b"\n", b"", b"\r\n"]) == [SSEEvent("message", "a")]


def test_feed_works_without_iterating() -> None:
    # Callers that ignore feed()'s result must not lose the bytes they fed.
    parser = SSEParser()
    parser.feed(b"data: a\n")
    assert list(parser.feed(b"\n")) == [SSEEvent("message", "a")]


def test_byte_order_mark_is_ignored_even_when_split() -> None:
    data = b"\xef\xbb\xbfdata: x\n\n"
    for cut in range(len(data) + 1):
        assert parse(splits(data, (cut,))) == [SSEEvent("message", "x")], cut


def test_invalid_utf8_does_not_raise() -> None:
    assert parse([b"data: \xff\xfe\n\n"]) == [SSEEvent("message", "\ufffd\ufffd")]


def test_id_with_nul_is_ignored() -> None:
    assert parse([b"id: 1\n", b"data: a\n\nid: x\x00y\ndata: b\n\n"]) == [
        SSEEvent("message", "a", "1"),
        SSEEvent("message", "b", "1"),
    ]


def test_event_json() -> None:
    assert SSEEvent("message", '{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(DecodeError):
        SSEEvent("message", "[DONE]").json()


# --- Content-Encoding ------------------------------------------------------------------------

BODY = json.dumps(
    {"object": "list", "data": [{"id": f"m{i}", "n": i} for i in range(200)]}
).encode()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODED = {
    "gzip": gzip.compress(BODY, mtime=0),
    "x-gzip": gzip.compress(BODY, mtime=0),
    "deflate": zlib.compress(BODY),
    "raw-deflate": _raw_deflate(BODY),
    "br": brotli.compress(BODY),
    "zstd": zstandard.ZstdCompressor().compress(BODY),
    "gzip, br": brotli.compress(gzip.compress(BODY, mtime=0)),
    "identity": BODY,
    "GZip": gzip.compress(BODY, mtime=0),
}


def _header(name: str) -> str:
    # Raw deflate is what some servers send as "deflate" despite RFC 9110.
    return "deflate" if name == "raw-deflate" else name


@pytest.mark.parametrize("name", ENCODED)
def test_decode_body(name: str) -> None:
    assert decode_body(ENCODED[name], _header(name)) == BODY


@pytest.mark.parametrize("name", ENCODED)
def test_incremental_every_split(name: str) -> None:
    data = ENCODED[name]
    step = max(1, len(data) // 150)
    for cut in [*range(0, 8), *range(0, len(data) + 1, step)]:
        d = Decompressor(_header(name))
        out = b"".join(d.feed(chunk) for chunk in splits(data, (cut,))) + d.flush()
        assert out == BODY, cut


@pytest.mark.parametrize("name", ["deflate", "raw-deflate", "gzip", "br", "zstd"])
def test_incremental_byte_by_byte(name: str) -> None:
    data = ENCODED[name]
    d = Decompressor(_header(name))
    out = b"".join(d.feed(data[i : i + 1]) for i in range(len(data))) + d.flush()
    assert out == BODY


@pytest.mark.parametrize("name", ["gzip", "deflate", "raw-deflate", "br", "zstd", "gzip, br"])
def test_truncated_raises_decode_error(name: str) -> None:
    with pytest.raises(DecodeError):
        decode_body(ENCODED[name][: len(ENCODED[name]) // 2], _header(name))


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_garbage_raises_decode_error(name: str) -> None:
    with pytest.raises(DecodeError):
        decode_body(b"this is not compressed at all, not even a little", name)


def test_empty_compressed_body_is_truncated() -> None:
    with pytest.raises(DecodeError):
        decode_body(b"", "gzip")


def test_unknown_encoding() -> None:
    with pytest.raises(DecodeError, match="compress"):
        decode_body(b"x", "compress")


def test_gzip_with_several_members() -> None:
    # RFC 1952 allows concatenated members; gzip.decompress reads them all, and so must we.
    data = gzip.compress(b'{"a": ', mtime=0) + gzip.compress(b"1}", mtime=0)
    assert decode_body(data, "gzip") == b'{"a": 1}'


@pytest.mark.parametrize(("name", "attr"), [("br", "_brotli"), ("zstd", "_zstd")])
def test_missing_optional_codec(monkeypatch: pytest.MonkeyPatch, name: str, attr: str) -> None:
    monkeypatch.setattr(proxy.forwarding.decode, attr, None)
    with pytest.raises(DecodeError, match=name):
        decode_body(ENCODED[name], name)


def test_decompression_bomb_is_capped() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), mtime=0)
    with pytest.raises(DecodeError, match="limit"):
        decode_body(bomb, "gzip", limit=1024 * 1024)
    assert decode_body(ENCODED["gzip"], "gzip", limit=len(BODY)) == BODY


@pytest.mark.parametrize("name", ["deflate", "br", "zstd"])
def test_limit_applies_to_every_codec(name: str) -> None:
    with pytest.raises(DecodeError, match="limit"):
        decode_body(ENCODED[name], name, limit=len(BODY) - 1)


def test_parse_json() -> None:
    assert parse_json(b'{"a": 1}') == {"a": 1}
    for bad in (b"{", b"\xff", b""):
        with pytest.raises(DecodeError):
            parse_json(bad)


@pytest.mark.parametrize(
    "text",
    [
        '{"usage": {"prompt_tokens": 123456789012345678901234567890}}',  # beyond 64 bits
        '{"x": NaN, "y": -Infinity}',
        '{"a": 1, "a": 2}',
        '{"s": "caf\\u00e9 \\ud83d\\ude00"}',
        "[1.5e300, -0.0, 1e-320]",
    ],
)
def test_parse_json_gives_what_the_standard_library_gives(text: str) -> None:
    # orjson parses first and json where orjson refuses: the result must not depend on which.
    assert repr(parse_json(text.encode())) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "[18446744073709551615, 18446744073709551616, -9223372036854775809]",  # 20 digits
        "[9999999999999999999, -999999999999999999]",  # 19 digits: orjson's own
        '{"n": 123456789012345678901, "s": "12345678901234567890123"}',
        "[1234567890123456789.5, 12345678901234567890e2, 0.12345678901234567890123]",
        '{"s": "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660"}',
    ],
)
@pytest.mark.parametrize("as_text", [False, True])
def test_parse_json_reads_long_numbers_as_the_standard_library_does(
    text: str, as_text: bool
) -> None:
    parsed = parse_json(text if as_text else text.encode())
    assert repr(parsed) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        '{"s": "\ud800", "n": 123456789012345678901}',  # a lone surrogate: not UTF-8
        '{"s": "\ud800", "n": 1}',
        '{"s": "' + "\uff11" * 21 + '", "n": 7}',  # fullwidth digits: string content
    ],
)
def test_parse_json_reads_any_text_as_the_standard_library_does(text: str) -> None:
    try:
        expected = repr(json.loads(text))
    except ValueError:
        with pytest.raises(DecodeError):
            parse_json(text)
    else:
        assert repr(parse_json(text)) == expected


@pytest.mark.parametrize("text", [b"", b"{", b'{"a": 1} x', b"\xff\xfe{}", b"[DONE]"])
def test_parse_json_refuses_what_is_not_json(text: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_json(text)


def test_parse_json_reads_utf16_as_the_standard_library_does() -> None:
    assert parse_json('{"a": "b"}'.encode("utf-16")) == {"a": "b"}


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_an_incremental_decoder_stops_at_its_limit(name: str) -> None:
    # 64 MiB of zeros, a few KiB on the wire: the decoder hands back the first MiB, no more.
    zeros = b"\0" * (64 * 1024 * 1024)
    wire = {
        "gzip": lambda: gzip.compress(zeros, mtime=0),
        "deflate": lambda: zlib.compress(zeros),
        "br": lambda: brotli.compress(zeros, quality=5),
        "zstd": lambda: zstandard.ZstdCompressor().compress(zeros),
    }[name]()
    d = Decompressor(name, limit=1024 * 1024)
    out = d.feed(wire[: len(wire) // 2])
    assert d.over
    assert out == b"\0" * (1024 * 1024)
    with pytest.raises(DecodeError, match="limit"):
        d.feed(wire[len(wire) // 2 :])
