"""Not an open relay (issue #2 point 5), request smuggling and header injection: raw HTTP/1.1
bytes over a socket, a fake upstream that records what reached it, and an "evil" listener that
must never see a single connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, raw_http
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key

KEY = fake_key("default", "1234")
AUTH = f"Authorization: Bearer {KEY}\r\n"


class Evil:
    """A listener that records every connection made to it and everything sent on it."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.received += await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def evil() -> AsyncIterator[Evil]:
    server = Evil()
    await server.start()
    yield server
    await server.close()
    # Checked once more at teardown, after everything the test sent has been handled.
    assert server.connections == 0, server.received


def _port(proxy: RunningProxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def _request(
    target: str, *, method: str = "GET", host: str = "api.example", extra: str = ""
) -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{AUTH}{extra}Connection: close\r\n\r\n"
    ).encode()


# --- targets that must not be forwarded ------------------------------------------------------

# (id, method, target, status). {evil} is the evil listener's host:port. 400 comes from the
# forwarder's own check (an OpenAI-style body); 404 from aiohttp's router, which never hands
# such targets to the forwarder at all.
REJECTED = [
    ("absolute-form", "GET", "http://{evil}/v1/echo", 400),
    ("absolute-form-https", "GET", "https://{evil}/v1/echo", 400),
    ("absolute-form-upstream", "GET", "http://{upstream}/v1/echo", 400),
    ("scheme-relative", "GET", "//{evil}/v1/echo", 400),
    ("connect-authority", "CONNECT", "{evil}", 404),
    ("connect-origin-form", "CONNECT", "/v1/echo", 404),
    ("asterisk", "OPTIONS", "*", 404),
    ("dot-dot", "GET", "/v1/../../x", 400),
    ("dot-dot-at-root", "GET", "/..", 400),
    ("dot-dot-trailing", "GET", "/v1/..", 400),
    ("dot", "GET", "/v1/./echo", 400),
    ("encoded-dot-dot", "GET", "/v1/%2e%2e/%2e%2e/x", 400),
    ("encoded-dot-dot-upper", "GET", "/v1/%2E%2E/x", 400),
    ("half-encoded", "GET", "/v1/.%2e/x", 400),
    ("double-encoded", "GET", "/v1/%252e%252e/x", 400),
    ("triple-encoded", "GET", "/v1/%25252e%25252e/x", 400),
    ("encoded-slash", "GET", "/v1/..%2f..%2fx", 400),
    ("backslash", "GET", "/v1\\..\\..\\x", 400),
    ("encoded-backslash", "GET", "/v1/..%5c..%5cx", 400),
    ("path-parameter", "GET", "/v1/..;/x", 400),
    ("dot-dot-in-query-too", "GET", "/v1/%2e%2e?x=1", 400),
    ("encoded-crlf-in-path", "GET", "/v1/echo%0d%0aX-Injected:%20yes", 404),
    ("encoded-nul-in-path", "GET", "/v1/echo%00x", 400),
]


@pytest.mark.parametrize(
    ("method", "target", "status"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
async def test_rejected_targets_reach_nobody(
    bare_proxy: RunningProxy,
    upstream: FakeUpstream,
    evil: Evil,
    method: str,
    target: str,
    status: int,
) -> None:
    target = target.format(evil=f"127.0.0.1:{evil.port}", upstream=f"127.0.0.1:{upstream.port}")
    [resp] = await raw_http(
        _port(bare_proxy), _request(target, method=method, host=f"127.0.0.1:{evil.port}")
    )
    assert resp.status == status
    if status == 400:
        assert json.loads(resp.body)["error"]["code"] == "bad_request_target"
    assert upstream.requests == []
    assert evil.connections == 0


# Odd but harmless targets: they go to the upstream, as paths, and nowhere else.
FORWARDED = [
    ("userinfo-lookalike", "/@{evil}/v1/echo", "/@{evil}/v1/echo"),
    ("url-in-query", "/v1/echo?next=http://{evil}/", "/v1/echo?next=http://{evil}/"),
    ("encoded-crlf-in-query", "/v1/echo?x=%0d%0aX-Injected:%20yes", None),
    ("dots-inside-names", "/v1/files/file..name.../content", None),
    ("fragment", "/v1/echo#http://{evil}/", "/v1/echo"),
]


@pytest.mark.parametrize(
    ("target", "seen"), [c[1:] for c in FORWARDED], ids=[c[0] for c in FORWARDED]
)
async def test_odd_targets_go_to_the_upstream_only(
    bare_proxy: RunningProxy, upstream: FakeUpstream, evil: Evil, target: str, seen: str | None
) -> None:
    target = target.format(evil=f"127.0.0.1:{evil.port}")
    await raw_http(_port(bare_proxy), _request(target))
    [request] = upstream.requests
    assert request["raw_path"] == (seen.format(evil=f"127.0.0.1:{evil.port}") if seen else target)
    assert "X-Injected" not in request["headers"]
    assert evil.connections == 0


# --- the Host header and its friends ---------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "X-Forwarded-Host: {evil}\r\n",
        "Forwarded: host={evil};proto=http\r\n",
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Original-URL: http://{evil}/\r\n",
    ],
    ids=["host", "x-forwarded-host", "forwarded", "x-original-url"],
)
async def test_spoofed_host_goes_to_the_upstream(
    bare_proxy: RunningProxy, upstream: FakeUpstream, evil: Evil, extra: str
) -> None:
    evil_host = f"127.0.0.1:{evil.port}"
    [resp] = await raw_http(
        _port(bare_proxy),
        _request("/v1/echo", host=evil_host, extra=extra.format(evil=evil_host)),
    )
    assert resp.status == 200
    echoed = json.loads(resp.body)
    assert echoed["host"] == f"127.0.0.1:{upstream.port}"  # Host is the upstream's
    assert len(upstream.requests) == 1
    assert evil.connections == 0


async def test_duplicate_host_is_rejected(
    bare_proxy: RunningProxy, upstream: FakeUpstream, evil: Evil
) -> None:
    extra = f"Host: 127.0.0.1:{evil.port}\r\n"
    [resp] = await raw_http(_port(bare_proxy), _request("/v1/echo", extra=extra))
    assert resp.status == 400
    assert upstream.requests == []


async def test_upstream_base_path_cannot_be_escaped(
    upstream: FakeUpstream, start_proxy, evil: Evil
) -> None:
    # Azure-style: the upstream carries a path prefix, which every target is appended to.
    proxy = await start_proxy(
        Settings(upstream=f"{upstream.url}/v1"), observers=[], accounting=False
    )
    [ok] = await raw_http(_port(proxy), _request("/echo?x=1"))
    assert ok.status == 200
    assert json.loads(ok.body)["path"] == "/v1/echo?x=1"
    for target in ("/../openai/echo", "/%2e%2e/openai/echo", "/echo/../../x"):
        [resp] = await raw_http(_port(proxy), _request(target))
        assert resp.status == 400, target
    assert [r["raw_path"] for r in upstream.requests] == ["/v1/echo?x=1"]
    assert evil.connections == 0


# --- request smuggling -----------------------------------------------------------------------

SMUGGLED = f"GET /v1/smuggled HTTP/1.1\r\nHost: x\r\n{AUTH}Connection: close\r\n\r\n"


def _post(headers: str, body: str) -> bytes:
    return f"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\n{AUTH}{headers}\r\n{body}".encode()


# Each is rejected by aiohttp's parser before any byte is forwarded.
SMUGGLING = {
    "cl-te": _post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n" + SMUGGLED),
    "te-cl": _post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", "0\r\n\r\n" + SMUGGLED),
    "duplicate-cl": _post("Content-Length: 4\r\nContent-Length: 90\r\n", "abcd" + SMUGGLED),
    "duplicate-cl-same": _post("Content-Length: 4\r\nContent-Length: 4\r\n", "abcd" + SMUGGLED),
    "cl-list": _post("Content-Length: 4, 4\r\n", "abcd" + SMUGGLED),
    "cl-plus-sign": _post("Content-Length: +4\r\n", "abcd" + SMUGGLED),
    "cl-hex": _post("Content-Length: 0x4\r\n", "abcd" + SMUGGLED),
    "te-not-chunked": _post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n" + SMUGGLED),
    "te-chunked-then-identity": _post(
        "Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n" + SMUGGLED
    ),
    "te-twice": _post(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n" + SMUGGLED
    ),
    "te-space-before-colon": _post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n" + SMUGGLED),
    "te-obs-fold": _post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n" + SMUGGLED),
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_ambiguous_framing_is_rejected(
    bare_proxy: RunningProxy, upstream: FakeUpstream, evil: Evil, data: bytes
) -> None:
    responses = await raw_http(_port(bare_proxy), data)
    assert [r.status for r in responses] == [400]
    assert upstream.requests == []


async def test_bad_chunk_size_smuggles_nothing(
    bare_proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    data = _post("Transfer-Encoding: chunked\r\n", "zz\r\nabcd\r\n0\r\n\r\n" + SMUGGLED)
    responses = await raw_http(_port(bare_proxy), data)
    assert responses[-1].status == 400
    assert "/v1/smuggled" not in [r["path"] for r in upstream.requests]


async def test_pipelined_requests_are_forwarded_one_by_one(
    bare_proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    first = _post("Content-Length: 4\r\n", "abcd")
    second = f"GET /v1/echo?second HTTP/1.1\r\nHost: x\r\n{AUTH}Connection: close\r\n\r\n"
    responses = await raw_http(_port(bare_proxy), first + second.encode())
    assert [r.status for r in responses] == [200, 200]
    assert json.loads(responses[0].body)["bytes"] == 4
    assert [r["raw_path"] for r in upstream.requests] == ["/v1/echo-body", "/v1/echo?second"]


async def test_bytes_after_an_upgrade_request_are_not_forwarded(
    bare_proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    data = (
        f"GET /v1/echo HTTP/1.1\r\nHost: x\r\n{AUTH}Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        + SMUGGLED
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(bare_proxy))
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        echoed = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    finally:
        writer.close()
    assert "Upgrade" not in dict(echoed["headers"])  # hop-by-hop: not forwarded
    # A later request on another connection is recorded after anything the first one caused.
    [marker] = await raw_http(_port(bare_proxy), _request("/v1/echo?marker"))
    assert marker.status == 200
    assert [r["raw_path"] for r in upstream.requests] == ["/v1/echo", "/v1/echo?marker"]


# --- header injection ------------------------------------------------------------------------

INJECTION = {
    "bare-cr": f"GET /v1/echo HTTP/1.1\r\nHost: x\r\n{AUTH}X-A: a\rX-Injected: yes\r\n\r\n",
    "bare-lf": f"GET /v1/echo HTTP/1.1\r\nHost: x\r\n{AUTH}X-A: a\nX-Injected: yes\r\n\r\n",
    "obs-fold": f"GET /v1/echo HTTP/1.1\r\nHost: x\r\n{AUTH}X-A: a\r\n X-Injected: yes\r\n\r\n",
    "nul-in-value": f"GET /v1/echo HTTP/1.1\r\nHost: x\r\n{AUTH}X-A: a\x00X-Injected: yes\r\n\r\n",
    "cr-in-name": f"GET /v1/echo HTTP/1.1\r\nHost: x\r\n{AUTH}X-\rInjected: yes\r\n\r\n",
    "cr-in-target": f"GET /v1/echo\rX-Injected: yes HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n",
    "space-in-target": f"GET /v1/echo X-Injected: HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n",
}


@pytest.mark.parametrize("data", INJECTION.values(), ids=INJECTION.keys())
async def test_header_injection_is_rejected(
    bare_proxy: RunningProxy, upstream: FakeUpstream, data: str
) -> None:
    responses = await raw_http(_port(bare_proxy), data.encode())
    assert [r.status for r in responses] == [400]
    assert upstream.requests == []


async def test_header_values_with_text_are_forwarded_verbatim(
    bare_proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    extra = "X-A: a%0d%0aX-Injected: yes\\r\\n; caf\u00e9\r\n"
    [resp] = await raw_http(_port(bare_proxy), _request("/v1/echo", extra=extra))
    assert resp.status == 200
    headers = upstream.requests[0]["headers"]
    assert headers["X-A"] == "a%0d%0aX-Injected: yes\\r\\n; caf\u00e9"
    assert "X-Injected" not in headers
