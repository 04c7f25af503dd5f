"""Forwarding end to end (issue #2, points 3, 4, 6, 7 and 8): the openai SDK where it fits, and
aiohttp or raw sockets where the exact bytes on the wire matter."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import random
import socket
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import brotli
import openai
import pytest
import zstandard
from yarl import URL

from proxy import __version__
from proxy.app import DISPATCHER, FORWARDER
from proxy.forwarding.decode import SSEEvent
from proxy.forwarding.exchange import Exchange
from proxy.settings import Settings
from tests.e2e.conftest import (
    RecordingObserver,
    RunningProxy,
    client_for,
    raw_http,
    wait_for,
)
from tests.e2e.fake_upstream import Canned, FakeUpstream
from tests.fake_keys import fake_key

KEY = fake_key("default", "1234")
AUTH = {"Authorization": f"Bearer {KEY}"}
AUTH_LINE = f"Authorization: Bearer {KEY}\r\n".encode()
MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "openai"}],
    }
).encode()


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    """client_for(), with every client closed at the end of the test."""
    clients: list[openai.AsyncOpenAI] = []

    def make(proxy: RunningProxy, **kw: object) -> openai.AsyncOpenAI:
        clients.append(client_for(proxy, **kw))  # type: ignore[arg-type]
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # auto_decompress=False: the test sees the bytes the proxy sent, not a decoded version.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def _port(proxy: RunningProxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def _one_response(recorder: RecordingObserver) -> Exchange:
    await wait_for(lambda: recorder.responses)
    assert len(recorder.responses) == 1
    assert recorder.errors == []
    return recorder.responses[0]


# --- the SDK through the proxy ---------------------------------------------------------------


async def test_json_call(
    sdk: Callable[..., openai.AsyncOpenAI],
    bare_proxy: RunningProxy,
    upstream: FakeUpstream,
    recorder,
) -> None:
    client = sdk(bare_proxy)
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello there, friend!"
    assert completion.usage is not None and completion.usage.total_tokens == 17

    seen = upstream.requests[-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == f"Bearer {KEY}"

    exchange = await _one_response(recorder)
    assert exchange.status == 200
    assert exchange.request_json()["messages"] == [{"role": "user", "content": "hi"}]
    assert exchange.json()["usage"]["total_tokens"] == 17
    assert exchange.json()["id"] == completion.id


async def test_streamed_chat_completion(
    sdk: Callable[..., openai.AsyncOpenAI], bare_proxy: RunningProxy, recorder
) -> None:
    client = sdk(bare_proxy)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello there, friend!"

    exchange = await _one_response(recorder)
    assert exchange.is_sse
    assert [e.data for e in exchange.events][-1] == "[DONE]"
    assert len(exchange.events) == 7
    assert [e for _, e in recorder.events] == exchange.events  # on_event for each, in order
    assert all(ex is exchange for ex, _ in recorder.events)
    deltas = [e.json()["choices"][0]["delta"].get("content", "") for e in exchange.events[:-1]]
    assert "".join(deltas) == text


async def test_multipart_upload_is_streamed(
    sdk: Callable[..., openai.AsyncOpenAI], bare_proxy: RunningProxy, recorder
) -> None:
    data = random.Random(2).randbytes(64 * 1024 * 1024 + 3)
    client = sdk(bare_proxy)
    uploaded = await client.files.create(
        file=("big.bin", data, "application/octet-stream"), purpose="assistants"
    )
    assert uploaded.bytes == len(data)
    assert uploaded.model_extra["sha256"] == hashlib.sha256(data).hexdigest()

    # Observers get no copy of a multipart body, only the word that they did not get it.
    exchange = await _one_response(recorder)
    assert exchange.request_body == b""
    assert exchange.request_body_truncated
    assert exchange.request_json() is None


async def test_binary_download(
    sdk: Callable[..., openai.AsyncOpenAI], bare_proxy: RunningProxy, http, recorder
) -> None:
    size = 5 * 1024 * 1024 + 7
    expected = (bytes(range(256)) * 4096 * 6)[:size]
    client = sdk(bare_proxy)
    content = await client.files.content("file_1", extra_query={"size": size})
    assert content.content == expected

    async with http.get(
        f"{bare_proxy.base_url}/files/file_1/content?size={size}", headers=AUTH
    ) as resp:
        assert resp.headers["Content-Length"] == str(size)
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert await resp.read() == expected
    await wait_for(lambda: len(recorder.responses) == 2)
    assert all(ex.raw_response_body == b"" for ex in recorder.responses)  # binary: no copy


async def test_upstream_429_passes_through(
    sdk: Callable[..., openai.AsyncOpenAI], bare_proxy: RunningProxy, http, recorder
) -> None:
    body = (
        b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}'
    )
    client = sdk(bare_proxy)
    with pytest.raises(openai.RateLimitError) as info:
        await client.get("/ratelimited", cast_to=object)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "rate_limit_exceeded"

    async with http.get(f"{bare_proxy.base_url}/ratelimited", headers=AUTH) as resp:
        assert resp.status == 429
        assert resp.headers["retry-after"] == "7"
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        assert await resp.read() == body

    # An upstream error is still a response, as far as observers go.
    await wait_for(lambda: len(recorder.responses) == 2)
    assert recorder.errors == []
    assert recorder.responses[0].status == 429
    assert recorder.responses[0].json()["error"]["code"] == "rate_limit_exceeded"


# --- encodings -------------------------------------------------------------------------------


async def test_gzip_passes_through_compressed(
    sdk: Callable[..., openai.AsyncOpenAI],
    bare_proxy: RunningProxy,
    http,
    recorder,
    upstream: FakeUpstream,
) -> None:
    headers = {**AUTH, "Accept-Encoding": "gzip"}
    async with http.get(f"{bare_proxy.base_url}/models", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        wire = await resp.read()
    assert wire == gzip.compress(MODELS, mtime=0)
    assert upstream.requests[-1]["headers"]["Accept-Encoding"] == "gzip"

    exchange = await _one_response(recorder)
    assert exchange.raw_response_body == wire
    assert exchange.json() == json.loads(MODELS)

    # And the SDK (httpx asks for gzip and decodes) reads it as usual.
    models = await sdk(bare_proxy).models.list()
    assert [m.id for m in models.data] == ["gpt-4o"]


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODINGS = {
    "deflate": ("deflate", zlib.compress(MODELS)),
    "raw-deflate": ("deflate", _raw_deflate(MODELS)),
    "br": ("br", brotli.compress(MODELS)),
    "zstd": ("zstd", zstandard.ZstdCompressor().compress(MODELS)),
    "gzip-then-br": ("gzip, br", brotli.compress(gzip.compress(MODELS, mtime=0))),
}


@pytest.mark.parametrize("name", ENCODINGS)
async def test_other_encodings_pass_through(
    bare_proxy: RunningProxy, http, recorder, upstream: FakeUpstream, name: str
) -> None:
    coding, wire = ENCODINGS[name]
    # Split in small chunks, so the body goes out chunked and the copy is built from pieces.
    upstream.canned[name] = Canned(
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
        chunks=[wire[i : i + 7] for i in range(0, len(wire), 7)],
    )
    async with http.get(f"{bare_proxy.base_url}/canned/{name}", headers=AUTH) as resp:
        assert resp.headers["Content-Encoding"] == coding
        assert await resp.read() == wire
    exchange = await _one_response(recorder)
    assert exchange.json() == json.loads(MODELS)


# Bodies the proxy cannot read: they reach the client untouched and nothing escapes.
GZIPPED = gzip.compress(MODELS, mtime=0)
UNREADABLE = {
    "malformed-json": ({"Content-Type": "application/json"}, [b'{"object": "list", "da']),
    "truncated-gzip": (
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        [GZIPPED[:-10]],
    ),
    "garbage-gzip": (
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        [b"not gzip at all"],
    ),
    "unknown-encoding": (
        {"Content-Type": "application/json", "Content-Encoding": "x-unheard-of"},
        [MODELS],
    ),
    "sse-unknown-encoding": (
        {"Content-Type": "text/event-stream", "Content-Encoding": "x-unheard-of"},
        [b"data: 1\n\n"],
    ),
    "sse-garbage-gzip": (
        {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"},
        [b"data: 1\n\n", b"data: 2\n\n"],
    ),
    "sse-invalid-utf8": ({"Content-Type": "text/event-stream"}, [b"data: \xff\xfe\n\n"]),
    "json-declared-binary-body": ({"Content-Type": "application/json"}, [bytes(range(256))]),
}


@pytest.mark.parametrize("name", UNREADABLE)
async def test_unreadable_bodies_pass_through(
    bare_proxy: RunningProxy,
    http,
    recorder,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    headers, chunks = UNREADABLE[name]
    upstream.canned[name] = Canned(headers=headers, chunks=chunks)
    with caplog.at_level(logging.WARNING):
        async with http.get(f"{bare_proxy.base_url}/canned/{name}", headers=AUTH) as resp:
            assert resp.status == 200
            assert resp.headers.get("Content-Encoding") == headers.get("Content-Encoding")
            assert await resp.read() == b"".join(chunks)
        exchange = await _one_response(recorder)
    assert exchange.error is None
    assert exchange.json() is None or name == "sse-invalid-utf8"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_compressed_sse_is_parsed_for_observers(
    bare_proxy: RunningProxy, http, recorder, upstream: FakeUpstream
) -> None:
    stream = b"".join(f"data: {i}\n\n".encode() for i in range(50))
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    chunks = [
        c.compress(stream[i : i + 10]) + c.flush(zlib.Z_SYNC_FLUSH) for i in range(0, 500, 10)
    ]
    chunks.append(c.flush())
    upstream.canned["gz-sse"] = Canned(
        headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}, chunks=chunks
    )
    async with http.get(f"{bare_proxy.base_url}/canned/gz-sse", headers=AUTH) as resp:
        assert await resp.read() == b"".join(chunks)
    exchange = await _one_response(recorder)
    assert [e.data for e in exchange.events] == [str(i) for i in range(50)]


# --- streaming -------------------------------------------------------------------------------


async def test_sse_is_flushed_event_by_event(
    bare_proxy: RunningProxy, http, upstream: FakeUpstream, recorder
) -> None:
    # The upstream sends event i+1 only after the client has read event i through the proxy:
    # any buffering in the proxy would stall this test.
    async with http.get(f"{bare_proxy.base_url}/gated-stream?n=5", headers=AUTH) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        for i in range(5):
            event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            assert event == f"data: {i}\n\n".encode()
            upstream.gate.put_nowait(None)
        assert await resp.read() == b""
    exchange = await _one_response(recorder)
    assert exchange.events == [SSEEvent("message", str(i)) for i in range(5)]


async def test_quiet_stream_is_not_cut_by_the_upstream_timeout(
    upstream: FakeUpstream, start_proxy, http
) -> None:
    timeout = 0.2
    proxy = await start_proxy(
        Settings(upstream=upstream.url, upstream_timeout=timeout), observers=[], accounting=False
    )
    async with http.get(f"{proxy.base_url}/gated-stream?n=2", headers=AUTH) as resp:
        assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5) == b"data: 0\n\n"
        # Hold the stream quiet for several times the timeout: nothing may arrive or break.
        pending = asyncio.ensure_future(resp.content.read(1))
        done, _ = await asyncio.wait({pending}, timeout=timeout * 4)
        assert not done
        upstream.gate.put_nowait(None)
        assert await asyncio.wait_for(pending, 5) == b"d"
        assert await asyncio.wait_for(resp.content.read(), 5) == b"ata: 1\n\n"


async def test_client_disconnect_closes_the_upstream_connection(
    bare_proxy: RunningProxy, upstream: FakeUpstream, recorder
) -> None:
    session = aiohttp.ClientSession()
    resp = await session.get(f"{bare_proxy.base_url}/quiet-stream", headers=AUTH)
    assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5) == b"data: first\n\n"
    assert not upstream.stream_closed.is_set()
    resp.close()
    await session.close()
    await asyncio.wait_for(upstream.stream_closed.wait(), 10)

    await wait_for(lambda: recorder.errors)
    assert recorder.responses == []
    [exchange] = recorder.errors
    assert exchange.client_disconnected
    assert exchange.events == [SSEEvent("message", "first")]


async def test_chunked_request_body_is_streamed(
    bare_proxy: RunningProxy, http, recorder, upstream: FakeUpstream
) -> None:
    pieces = [random.Random(i).randbytes(100_000) for i in range(20)]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    headers = {**AUTH, "Content-Type": "application/octet-stream"}
    async with http.post(f"{bare_proxy.base_url}/echo-body", data=body(), headers=headers) as r:
        echoed = await r.json()
    data = b"".join(pieces)
    assert echoed["sha256"] == hashlib.sha256(data).hexdigest()
    assert echoed["bytes"] == len(data)
    assert ("Transfer-Encoding", "chunked") in [tuple(h) for h in echoed["headers"]]


async def test_request_body_copy_for_observers(
    upstream: FakeUpstream, start_proxy, recorder, http
) -> None:
    proxy = await start_proxy(
        Settings(upstream=upstream.url, max_observed_request=64, max_observed_body=100),
        observers=[recorder],
        accounting=False,
    )
    small = b'{"model": "gpt-4o"}'
    large = json.dumps({"input": "x" * 1000}).encode()
    for payload in (small, large):
        headers = {**AUTH, "Content-Type": "application/json"}
        async with http.post(f"{proxy.base_url}/echo-body", data=payload, headers=headers) as r:
            assert (await r.json())["sha256"] == hashlib.sha256(payload).hexdigest()
    await wait_for(lambda: len(recorder.responses) == 2)
    first, second = recorder.responses
    assert first.request_body == small and not first.request_body_truncated
    assert first.request_json() == {"model": "gpt-4o"}
    assert second.request_body == large[:64] and second.request_body_truncated
    assert second.request_json() is None
    # The echo answers are larger than max_observed_body=100: observers are told so.
    assert first.response_truncated and first.json() is None


async def test_response_copy_truncated_at_the_limit(
    sdk: Callable[..., openai.AsyncOpenAI], upstream: FakeUpstream, start_proxy, recorder
) -> None:
    proxy = await start_proxy(
        Settings(upstream=upstream.url, max_observed_body=200),
        observers=[recorder],
        accounting=False,
    )
    completion = await sdk(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello there, friend!"  # client unaffected
    exchange = await _one_response(recorder)
    assert exchange.response_truncated
    assert exchange.json() is None


async def test_gzip_copy_decoding_past_the_limit_is_truncated(
    upstream: FakeUpstream, start_proxy, recorder, http
) -> None:
    big = json.dumps({"data": "x" * 100_000}).encode()
    wire = gzip.compress(big, mtime=0)
    upstream.canned["bomb"] = Canned(
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, chunks=[wire]
    )
    proxy = await start_proxy(
        Settings(upstream=upstream.url, max_observed_body=10_000),
        observers=[recorder],
        accounting=False,
    )
    assert len(wire) < 10_000
    async with http.get(f"{proxy.base_url}/canned/bomb", headers=AUTH) as resp:
        assert await resp.read() == wire
    exchange = await _one_response(recorder)
    assert not exchange.response_truncated  # the wire copy fitted ...
    assert exchange.json() is None  # ... the decoded body does not
    assert exchange.response_truncated


_BOMB_CAP = 64 * 1024
_BOMB_PEAK = 8 * 1024 * 1024


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, 9, mtime=0)
    if encoding == "deflate":
        return zlib.compress(data, 9)
    if encoding == "br":
        return brotli.compress(data, quality=5)
    return zstandard.ZstdCompressor(level=19).compress(data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_a_compressed_event_stream_bomb_is_decoded_only_up_to_the_cap(
    upstream: FakeUpstream, start_proxy, recorder, http, encoding: str
) -> None:
    # 24 MB of events in 0.1-30 KB on the wire; observers may see 64 KiB of it.
    wire = _compress(encoding, (b"data: " + b"x" * 1000 + b"\n\n") * 24_000)
    upstream.canned["sse-bomb"] = Canned(
        headers={"Content-Type": "text/event-stream", "Content-Encoding": encoding},
        chunks=[wire],
    )
    proxy = await start_proxy(
        Settings(upstream=upstream.url, max_observed_body=_BOMB_CAP),
        observers=[recorder],
        accounting=False,
    )
    tracemalloc.start()
    try:
        async with http.get(f"{proxy.base_url}/canned/sse-bomb", headers=AUTH) as resp:
            assert await resp.read() == wire  # the client gets the stream as sent
        exchange = await _one_response(recorder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exchange.response_truncated
    assert 0 < sum(len(e.data) for e in exchange.events) <= _BOMB_CAP
    assert peak < _BOMB_PEAK, f"decoding took {peak / 2**20:.0f} MiB at peak"


# --- headers ---------------------------------------------------------------------------------


async def test_x_usage_headers_are_stripped(
    sdk: Callable[..., openai.AsyncOpenAI],
    bare_proxy: RunningProxy,
    upstream: FakeUpstream,
    recorder,
) -> None:
    client = sdk(
        bare_proxy,
        organization="org-abc",
        project="proj_abc",
        default_headers={
            "OpenAI-Beta": "assistants=v2",
            "X-Usage-Team": "research",
            "x-usage-anything": "1",
            "X-Usage": "not a prefix match, forwarded",
            "X-Custom": "kept",
        },
    )
    await client.embeddings.create(model="text-embedding-3-small", input="hello")
    headers = {k.lower(): v for k, v in upstream.requests[-1]["headers"].items()}
    assert not [k for k in headers if k.startswith("x-usage-")]
    assert headers["x-usage"] == "not a prefix match, forwarded"
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["openai-organization"] == "org-abc"
    assert headers["openai-project"] == "proj_abc"
    assert headers["openai-beta"] == "assistants=v2"
    assert headers["x-custom"] == "kept"
    # The proxy itself still sees them: they were addressed to it.
    exchange = await _one_response(recorder)
    assert exchange.request_headers["X-Usage-Team"] == "research"


async def test_request_headers_go_through_exactly(
    bare_proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Raw bytes in, and the upstream must see the same headers minus the hop-by-hop ones and
    X-Usage-*, with Host replaced: nothing added, nothing reordered or re-cased."""
    sent = [
        ("Host", "client.example"),
        ("Authorization", f"Bearer {KEY}"),
        ("OpenAI-Organization", "org-1"),
        ("X-Mixed-Case", "Value With  Spaces"),
        ("Accept", "*/*"),
        ("Connection", "keep-alive, X-Named-Hop"),
        ("X-Named-Hop", "drop me"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Usage-Team", "t"),
        ("X-Repeated", "one"),
        ("X-Repeated", "two"),
        ("Cookie", "a=1"),
    ]
    head = "".join(f"{k}: {v}\r\n" for k, v in sent)
    request = f"GET /v1/echo?b=2&a=%20x HTTP/1.1\r\n{head}\r\n".encode()
    closing = b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH_LINE + b"\r\n"
    first, _ = await raw_http(_port(bare_proxy), request + closing)
    assert first.status == 200
    echoed = json.loads(first.body)
    assert echoed["path"] == "/v1/echo?b=2&a=%20x"
    assert echoed["host"] == f"127.0.0.1:{upstream.port}"
    expected = [
        ("Host", f"127.0.0.1:{upstream.port}"),
        ("Authorization", f"Bearer {KEY}"),
        ("OpenAI-Organization", "org-1"),
        ("X-Mixed-Case", "Value With  Spaces"),
        ("Accept", "*/*"),
        ("X-Repeated", "one"),
        ("X-Repeated", "two"),
        ("Cookie", "a=1"),
    ]
    assert [tuple(h) for h in echoed["headers"]] == expected


async def test_response_hop_by_hop_headers_are_dropped(
    bare_proxy: RunningProxy, http, upstream: FakeUpstream
) -> None:
    upstream.canned["hops"] = Canned(
        headers={
            "Content-Type": "application/json",
            "Connection": "X-Upstream-Hop",
            "X-Upstream-Hop": "drop",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "Trailer": "X-Checksum",
            "Set-Cookie": "s=1",
            "X-Request-Id": "req_123",
            "openai-processing-ms": "42",
        },
        chunks=[b"{}"],
    )
    async with http.get(f"{bare_proxy.base_url}/canned/hops", headers=AUTH) as resp:
        names = {k.lower() for k in resp.headers}
        assert await resp.read() == b"{}"
    assert not names & {"x-upstream-hop", "keep-alive", "proxy-authenticate", "trailer"}
    assert resp.headers["Set-Cookie"] == "s=1"
    assert resp.headers["X-Request-Id"] == "req_123"
    assert resp.headers["openai-processing-ms"] == "42"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
async def test_every_method_and_path_is_forwarded(
    bare_proxy: RunningProxy, http, upstream: FakeUpstream, method: str
) -> None:
    target = "/v1/some/deep/path;x=1?q=%2Fa%2F&q=b&empty=&%F0%9F%98%80=1"
    data = b"payload" if method in ("POST", "PUT", "PATCH") else None
    url = URL(bare_proxy.url + target, encoded=True)  # sent exactly as written
    async with http.request(method, url, headers=AUTH, data=data) as resp:
        await resp.read()
    seen = upstream.requests[-1]
    assert seen["method"] == method
    assert seen["raw_path"] == target


async def test_head_keeps_content_length(
    bare_proxy: RunningProxy, http, upstream: FakeUpstream
) -> None:
    upstream.canned["head"] = Canned(
        headers={"Content-Type": "application/json"}, chunks=[], length=1234
    )
    async with http.head(f"{bare_proxy.base_url}/canned/head", headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1234"
        assert await resp.read() == b""


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses(
    bare_proxy: RunningProxy, http, upstream: FakeUpstream, recorder, status: int
) -> None:
    upstream.canned["empty"] = Canned(status=status, headers={"ETag": '"v1"'})
    async with http.get(f"{bare_proxy.base_url}/canned/empty", headers=AUTH) as resp:
        assert resp.status == status
        assert resp.headers["ETag"] == '"v1"'
        assert await resp.read() == b""
    exchange = await _one_response(recorder)
    assert exchange.status == status


async def test_one_pooled_keep_alive_connection(
    bare_proxy: RunningProxy, http, upstream: FakeUpstream
) -> None:
    forwarder = bare_proxy.app[FORWARDER]
    session = forwarder.session
    for _ in range(5):
        async with http.get(f"{bare_proxy.base_url}/whoami", headers=AUTH) as resp:
            assert resp.status == 200
            await resp.read()
    assert len(set(upstream.peers)) == 1  # sequential requests reuse one upstream connection
    assert forwarder.session is session


# --- failures --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_upstream_down_is_502(
    sdk: Callable[..., openai.AsyncOpenAI], start_proxy, recorder, http
) -> None:
    proxy = await start_proxy(
        Settings(upstream=f"http://127.0.0.1:{_closed_port()}"),
        observers=[recorder],
        accounting=False,
    )
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(proxy).models.list()
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"
    assert info.value.type == "proxy_error"

    async with http.get(f"{proxy.base_url}/models", headers=AUTH) as resp:
        assert resp.status == 502
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"]["type"] == "proxy_error"
    assert body["error"]["code"] == "upstream_unreachable"
    assert "Traceback" not in body["error"]["message"]

    await wait_for(lambda: len(recorder.errors) == 2)
    assert recorder.responses == []
    assert recorder.errors[0].status is None


async def test_upstream_silent_is_504(
    sdk: Callable[..., openai.AsyncOpenAI], upstream: FakeUpstream, start_proxy, recorder, http
) -> None:
    proxy = await start_proxy(
        Settings(upstream=upstream.url, upstream_timeout=0.5),
        observers=[recorder],
        accounting=False,
    )
    started = time.monotonic()
    async with http.get(f"{proxy.base_url}/silent", headers=AUTH) as resp:
        assert resp.status == 504
        body = await resp.json()
    assert time.monotonic() - started < 5
    assert body["error"]["type"] == "proxy_error"
    assert body["error"]["code"] == "upstream_timeout"
    assert "0.5" in body["error"]["message"]
    await wait_for(lambda: recorder.errors)
    assert recorder.errors[0].error

    with pytest.raises(openai.APIStatusError) as info:
        await sdk(proxy).get("/silent", cast_to=object)
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


async def test_upstream_reset_before_headers_is_502(
    bare_proxy: RunningProxy, http, recorder
) -> None:
    async with http.get(f"{bare_proxy.base_url}/reset", headers=AUTH) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unreachable"
    await wait_for(lambda: recorder.errors)


async def test_upstream_cut_mid_body_cuts_the_client(
    bare_proxy: RunningProxy, http, recorder
) -> None:
    async with http.get(f"{bare_proxy.base_url}/cut", headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1000"
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 5)
    await wait_for(lambda: recorder.errors)
    assert "upstream" in recorder.errors[0].error
    # The proxy is fine afterwards.
    async with http.get(f"{bare_proxy.base_url}/echo", headers=AUTH) as resp:
        assert resp.status == 200


async def test_every_exchange_ends_exactly_once(
    bare_proxy: RunningProxy, http, recorder, upstream: FakeUpstream
) -> None:
    for path in ("/echo", "/ratelimited", "/cut", "/reset", "/nope"):
        async with http.get(bare_proxy.base_url + path, headers=AUTH) as resp:
            with contextlib.suppress(aiohttp.ClientPayloadError):
                await resp.read()
    await wait_for(lambda: len(recorder.responses) + len(recorder.errors) == 5)
    ids = [e.request_id for e in recorder.responses + recorder.errors]
    assert len(set(ids)) == 5
    assert len(recorder.errors) == 2  # /cut and /reset
    await bare_proxy.app[DISPATCHER].drain()
    assert len(recorder.responses) + len(recorder.errors) == 5


# --- observers -------------------------------------------------------------------------------


class RaisingObserver:
    def __init__(self) -> None:
        self.calls = 0

    def on_response(self, exchange: Exchange) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")

    async def on_event(self, exchange: Exchange, event: SSEEvent) -> None:
        self.calls += 1
        raise ValueError("async observer bug")


class SleepingObserver:
    """Blocks in its first hook until released: a slow accounting backend."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def on_response(self, exchange: Exchange) -> None:
        self.entered.set()
        await self.release.wait()

    async def on_event(self, exchange: Exchange, event: SSEEvent) -> None:
        self.entered.set()
        await self.release.wait()


async def test_raising_and_sleeping_observers_do_not_touch_the_response(
    sdk: Callable[..., openai.AsyncOpenAI],
    upstream: FakeUpstream,
    start_proxy,
    recorder,
    http,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raising, sleeping = RaisingObserver(), SleepingObserver()
    plain = await start_proxy(Settings(upstream=upstream.url), observers=[], accounting=False)
    observed = await start_proxy(
        Settings(upstream=upstream.url),
        observers=[raising, recorder, sleeping],
        accounting=False,
    )

    async def fetch(proxy: RunningProxy, path: str) -> tuple[int, bytes]:
        async with http.get(proxy.base_url + path, headers=AUTH) as resp:
            return resp.status, await resp.read()

    try:
        with caplog.at_level(logging.ERROR, logger="proxy.observers"):
            for path in ("/echo", "/ratelimited", "/big?size=100000"):
                assert await asyncio.wait_for(fetch(observed, path), 5) == await fetch(plain, path)
            # The sleeper is stuck in its first hook, yet responses keep coming, streams too.
            await asyncio.wait_for(sleeping.entered.wait(), 5)
            client = sdk(observed)
            stream = await asyncio.wait_for(
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
                ),
                5,
            )
            chunks = [c async for c in stream]
            assert len(chunks) == 6
            await wait_for(lambda: raising.calls >= 1 and recorder.responses)
        assert not sleeping.release.is_set()
        assert "RaisingObserver.on_response failed" in caplog.text
        assert "RuntimeError: observer bug" in caplog.text  # with the traceback
        # The recorder sits between the two and still got the first exchange.
        assert recorder.responses[0].path == "/v1/echo"
    finally:
        sleeping.release.set()
    await wait_for(lambda: len(recorder.responses) == 4)
    assert len(recorder.events) == 7


# --- admin -----------------------------------------------------------------------------------


async def test_health(bare_proxy: RunningProxy, http, upstream: FakeUpstream) -> None:
    async with http.get(f"{bare_proxy.url}/_proxy/health") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["version"] == __version__
    assert body["upstream"] == upstream.url
    assert "ok" in body["database"]
    async with http.get(f"{bare_proxy.url}/_proxy/anything-else") as resp:
        assert resp.status == 404
    assert upstream.requests == []  # nothing under /_proxy/ is forwarded


# --- exact response heads, from an upstream that writes raw bytes ------------------------------


class RawUpstream:
    """Answers every request with `response`, byte for byte, and keeps the request heads."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(self.response)
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    server = RawUpstream(b"")
    yield server
    await server.close()


async def test_response_head_passes_through_exactly(
    raw_upstream: RawUpstream, start_proxy, recorder
) -> None:
    raw_upstream.response = (
        b"HTTP/1.1 418 Teapot Of Some Kind\r\n"
        b"x-request-id: req_1\r\n"
        b"Set-Cookie: a=1\r\n"
        b"OpenAI-Processing-Ms: 12\r\n"
        b"Set-Cookie: b=2\r\n"
        b"Content-Length: 5\r\n"
        b"X-Unicode: caf\xc3\xa9\r\n"
        b"\r\n"
        b"hello"
    )
    proxy = await start_proxy(
        Settings(upstream=await raw_upstream.start()), observers=[recorder], accounting=False
    )
    request = b"GET /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH_LINE + b"\r\n"
    [resp] = await raw_http(_port(proxy), request)
    assert (resp.status, resp.reason, resp.body) == (418, "Teapot Of Some Kind", b"hello")
    # Upstream headers in their order with their values (names are case-insensitive, and
    # aiohttp spells well-known ones its way); no Content-Type or Server made up for the
    # upstream, and only the proxy's own hop (Connection) and the Date RFC 9110 asks for added.
    own = {"date", "connection"}
    assert [(k.lower(), v) for k, v in resp.headers if k.lower() not in own] == [
        ("x-request-id", "req_1"),
        ("set-cookie", "a=1"),
        ("openai-processing-ms", "12"),
        ("set-cookie", "b=2"),
        ("content-length", "5"),
        ("x-unicode", "caf\u00c3\u00a9"),  # the UTF-8 bytes, read back as latin-1 here
    ]
    assert resp.header("Date")
    await wait_for(lambda: recorder.responses)


async def test_request_head_reaches_the_upstream_exactly(
    raw_upstream: RawUpstream, start_proxy
) -> None:
    raw_upstream.response = b"HTTP/1.1 204 No Content\r\n\r\n"
    proxy = await start_proxy(
        Settings(upstream=await raw_upstream.start()), observers=[], accounting=False
    )
    request = (
        b"GET /v1/models?limit=2&x=%2F HTTP/1.1\r\n"
        b"Host: proxy.example\r\n"
        b"authorization: Bearer sk-abc\r\n"
        b"OpenAI-Beta: assistants=v2\r\n"
        b"X-Usage-Team: research\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )
    [resp] = await raw_http(_port(proxy), request)
    assert resp.status == 204
    port = raw_upstream._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    [head] = raw_upstream.heads
    assert (
        head.lower()
        == (
            b"GET /v1/models?limit=2&x=%2F HTTP/1.1\r\n"
            + f"Host: 127.0.0.1:{port}\r\n".encode()
            + b"Authorization: Bearer sk-abc\r\n"
            b"OpenAI-Beta: assistants=v2\r\n"
            b"\r\n"
        ).lower()
    )
    assert b"Bearer sk-abc\r\n" in head  # values keep their case


async def test_expect_100_continue(bare_proxy: RunningProxy, upstream: FakeUpstream) -> None:
    # curl sends this for uploads: the body follows only after an interim 100 response.
    body = random.Random(5).randbytes(100_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(bare_proxy))
    try:
        writer.write(
            b"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\n"
            + AUTH_LINE
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(body)
        final = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, payload = final.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(payload)["sha256"] == hashlib.sha256(body).hexdigest()


async def test_client_gone_mid_download_is_quiet(
    bare_proxy: RunningProxy, recorder, caplog: pytest.LogCaptureFixture
) -> None:
    request = b"GET /v1/big?size=200000000 HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"\r\n"
    with caplog.at_level(logging.WARNING):
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(bare_proxy))
        writer.write(request)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200"
        )
        await asyncio.wait_for(reader.readexactly(100_000), 5)
        # Reset rather than close, so the proxy's next write fails at once.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()
        await wait_for(lambda: recorder.errors)
    [exchange] = recorder.errors
    assert exchange.client_disconnected
    assert recorder.responses == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- two keys in one request ------------------------------------------------------------------


async def test_two_different_keys_are_refused_and_never_forwarded(
    sdk: Callable[..., openai.AsyncOpenAI],
    bare_proxy: RunningProxy,
    upstream: FakeUpstream,
    recorder,
) -> None:
    # OpenAI bills the Bearer key, Azure the api-key: forwarded, the request would be billed to
    # one and could be recorded against the other.
    other = fake_key("other", "9999")
    client = sdk(bare_proxy, default_headers={"api-key": other})
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "ambiguous_credentials"
    assert upstream.requests == []
    assert recorder.responses == recorder.errors == []
    # The same key in both headers is one credential, and a decoy that is not sent (named in
    # Connection) is no second key.
    same = sdk(bare_proxy, default_headers={"api-key": KEY})
    await same.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    decoy = sdk(bare_proxy, default_headers={"api-key": other, "Connection": "api-key"})
    await decoy.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert len(upstream.requests) == 2
    assert "api-key" not in {k.lower() for k in upstream.requests[-1]["headers"]}
