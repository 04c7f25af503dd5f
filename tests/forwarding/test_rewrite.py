import gzip
import json

import pytest
from multidict import CIMultiDict

from proxy.forwarding.rewrite import IncludeUsage, UsageChunkFilter, add_include_usage

# --- the request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"model":"gpt-4o","stream":true}',
            b'{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true}',
        ),
        (
            b' \n{ "stream": true }',
            b' \n{"stream_options":{"include_usage":true}, "stream": true }',
        ),
        (
            b'{"stream":true,"stream_options":{"include_usage":false,"include_obfuscation":false}}',
            b'{"stream":true,"stream_options":{"include_usage":true,"include_obfuscation":false}}',
        ),
        (
            b'{"stream":true,"stream_options":null,"x":"\xc3\xa9"}',
            b'{"stream":true,"stream_options":{"include_usage":true},"x":"\xc3\xa9"}',
        ),
        (b'{"stream":true,"stream_options":{"include_usage":true}}', None),
        (b'{"model":"gpt-4o"}', None),
        (b'{"stream":"yes"}', None),
        (b"[1]", None),
        (b"not json", None),
        (b"\xff", None),
    ],
)
def test_add_include_usage(body: bytes, expected: bytes | None) -> None:
    out = add_include_usage(body)
    assert out == expected
    if out is not None:
        parsed = json.loads(out)
        assert parsed["stream_options"]["include_usage"] is True
        # Nothing else changed.
        assert {k: v for k, v in parsed.items() if k != "stream_options"} == {
            k: v for k, v in json.loads(body).items() if k != "stream_options"
        }


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


@pytest.mark.parametrize(
    ("method", "path", "hdrs", "wanted"),
    [
        ("POST", "/v1/chat/completions", headers(Content_Length="10"), True),
        ("POST", "/openai/deployments/d/chat/completions", headers(Content_Length="10"), True),
        ("POST", "/v1/chat/completions/", headers(Content_Length="10"), True),
        ("GET", "/v1/chat/completions", headers(Content_Length="10"), False),
        ("POST", "/v1/responses", headers(Content_Length="10"), False),
        ("POST", "/v1/chat/completions", headers(), False),
        ("POST", "/v1/chat/completions", headers(Content_Length="101"), False),
        (
            "POST",
            "/v1/chat/completions",
            headers(Content_Length="10", Content_Encoding="gzip"),
            False,
        ),
    ],
)
def test_which_requests_are_read_whole(method, path, hdrs, wanted) -> None:
    assert IncludeUsage(max_body=100).wants(method, path, hdrs) is wanted


@pytest.mark.parametrize(
    ("status", "hdrs", "filtered"),
    [
        (200, headers(Content_Type="text/event-stream; charset=utf-8"), True),
        (200, headers(Content_Type="application/json"), False),
        (400, headers(Content_Type="text/event-stream"), False),
        (200, headers(Content_Type="text/event-stream", Content_Encoding="compress"), False),
    ],
)
def test_which_replies_are_filtered(status, hdrs, filtered) -> None:
    assert (IncludeUsage().response_filter(status, hdrs) is not None) is filtered


# --- the reply -----------------------------------------------------------------------------
# As OpenAI writes them: compact JSON, "usage":null last but for the obfuscation padding.
WITH_USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"role":"assistant","content":""},"finish_reason":null}],"usage":null,"obfuscation":"a"}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"content":"say \\"usage\\":null, \\\\"},"finish_reason":null}],"usage":null}\n\n'
    b": keep-alive\n\n"
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":'
    b'{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)
WITHOUT_USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"role":"assistant","content":""},"finish_reason":null}],"obfuscation":"a"}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"content":"say \\"usage\\":null, \\\\"},"finish_reason":null}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def run(f: UsageChunkFilter, chunks: list[bytes]) -> bytes:
    return b"".join(f.feed(c) for c in chunks) + f.close()


def test_the_client_gets_the_stream_it_asked_for() -> None:
    assert run(UsageChunkFilter(), [WITH_USAGE]) == WITHOUT_USAGE


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_split_anywhere(size: int) -> None:
    chunks = [WITH_USAGE[i : i + size] for i in range(0, len(WITH_USAGE), size)]
    assert run(UsageChunkFilter(), chunks) == WITHOUT_USAGE


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_other_line_endings(newline: bytes) -> None:
    source = WITH_USAGE.replace(b"\n", newline)
    chunks = [source[i : i + 5] for i in range(0, len(source), 5)]
    assert run(UsageChunkFilter(), chunks) == WITHOUT_USAGE.replace(b"\n", newline)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # json.dumps's default separators, as some compatible servers write.
        (b'{"id": "c", "choices": [], "usage": null}', b'{"id": "c", "choices": []}'),
        (b'{"usage": null, "id": "c"}', b'{"id": "c"}'),
        (b'{ "usage":null,"id":"c"}', b'{ "id":"c"}'),
        # Not at the top level: left alone.
        (b'{"id":"c","x":{"a":1,"usage":null}}', b'{"id":"c","x":{"a":1,"usage":null}}'),
        (b'{"id":"c","x":[{"usage":null,"a":1}]}', b'{"id":"c","x":[{"usage":null,"a":1}]}'),
        # Usage that is not null stays, and a usage-looking string is text.
        (b'{"id":"c","usage":{"a":1}}', b'{"id":"c","usage":{"a":1}}'),
        (b'{"id":"c,\\"usage\\":null"}', b'{"id":"c,\\"usage\\":null"}'),
    ],
)
def test_null_usage_is_cut_at_the_top_level_only(line: bytes, expected: bytes) -> None:
    assert run(UsageChunkFilter(), [b"data: " + line + b"\n\n"]) == b"data: " + expected + b"\n\n"


def test_events_that_are_not_single_data_lines_pass_unchanged() -> None:
    source = (
        b'event: x\ndata: {"choices":[],\ndata: "usage":{"a":1}}\n\n'
        b"id: 5\n\n"
        b'data: {"choices":[],"usage":{"a":1}'  # not JSON: kept
        b"\n\n"
    )
    assert run(UsageChunkFilter(), [source]) == source


def test_an_unterminated_last_event_is_passed_on() -> None:
    f = UsageChunkFilter()
    assert f.feed(b'data: {"a":1,"usage":null}\n\ndata: {"b"') == b'data: {"a":1}\n\n'
    assert f.close() == b'data: {"b"'


def test_a_held_carriage_return_is_released_at_close() -> None:
    f = UsageChunkFilter()
    assert f.feed(b"data: x\r") == b""
    assert f.close() == b"data: x\r"


def test_a_compressed_stream_is_sent_decoded() -> None:
    f = UsageChunkFilter("gzip")
    assert f.drop_headers == ("Content-Length", "Content-Encoding")
    packed = gzip.compress(WITH_USAGE)
    assert run(f, [packed[i : i + 10] for i in range(0, len(packed), 10)]) == WITHOUT_USAGE
    assert UsageChunkFilter().drop_headers == ("Content-Length",)


def test_a_broken_compressed_stream_ends_where_it_broke() -> None:
    f = UsageChunkFilter("gzip")
    packed = gzip.compress(WITH_USAGE)
    first = f.feed(packed[: len(packed) // 2])
    assert WITHOUT_USAGE.startswith(first)
    assert f.feed(b"garbage" * 10) == b""
    assert f.feed(packed[len(packed) // 2 :]) == b""
    assert f.close() == b""


def test_a_stream_that_decodes_past_the_cap_ends_there() -> None:
    """A small compressed reply may decode to gigabytes: no call decodes more than the cap,
    and the client gets the whole events before it, then the stream ends."""
    f = UsageChunkFilter("gzip", limit=1000)
    packed = gzip.compress(WITH_USAGE * 100)
    first = f.feed(packed)
    assert 0 < len(first) <= 1000 and first.endswith(b"\n\n")
    assert (WITHOUT_USAGE * 100).startswith(first)
    assert f.feed(gzip.compress(WITH_USAGE)) == b""
    assert f.close() == b""


def test_the_reply_filter_is_capped() -> None:
    cap = 5000
    hdrs = CIMultiDict({"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
    f = IncludeUsage(max_decoded=cap).response_filter(200, hdrs)
    assert f is not None
    event = b'data: {"choices":[],"pad":"' + b"x" * 1000 + b'"}\n\n'
    out = f.feed(gzip.compress(event * (cap // len(event) + 10), compresslevel=1))
    assert len(out) <= cap and out == event * (len(out) // len(event))
