"""proxy.forwarding.upstream.lean against real sockets: a scripted HTTP/1.1 server that records the
exact bytes it gets and answers as each test says (including ways real servers misbehave),
and a TLS upstream with a certificate made for the test."""

from __future__ import annotations

import asyncio
import contextlib
import json as json_module
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.forward import Forwarder
from proxy.forwarding.upstream.lean import UpstreamClient
from tests.waiting import wait_until

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# An answer per request: the bytes to send, or None to close the connection without one; an
# answer that ends in CLOSE is sent and the connection closed after it.
Script = Callable[[int, int, bytes], bytes | None]
CLOSE = b"<close>"


class ScriptedUpstream:
    """Each request is read whole (head and Content-Length body) and answered by `script`
    (connection number, request number on it, raw request)."""

    def __init__(self, script: Script, interim: bytes = b"") -> None:
        self.script = script
        self.interim = interim  # written once a head is read, before its body is
        self.requests: list[tuple[int, bytes]] = []  # (connection number, raw request)
        self.connections = 0
        self.closed = 0  # connections the client closed
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # Server.close_clients() is Python 3.13's
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        number, count = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.interim:
                    writer.write(self.interim)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                raw = head + await reader.readexactly(length)
                self.requests.append((number, raw))
                count += 1
                answer = self.script(number, count, raw)
                if answer is None:
                    break
                writer.write(answer.removesuffix(CLOSE))
                await writer.drain()
                if answer.endswith(CLOSE):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed += 1
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[
    Callable[..., Awaitable[tuple[ScriptedUpstream, UpstreamClient]]]
]:
    made: list[tuple[ScriptedUpstream, UpstreamClient]] = []

    async def make(script: Script, **kw: object) -> tuple[ScriptedUpstream, UpstreamClient]:
        server = ScriptedUpstream(script)
        port = await server.start()
        client = UpstreamClient(URL(f"http://127.0.0.1:{port}"), connect_timeout=5, **kw)
        made.append((server, client))
        return server, client

    yield make
    for server, client in made:
        await client.close()
        await server.stop()


async def _get(client: UpstreamClient, method: str = "GET", body: bytes | None = None) -> bytes:
    resp = await client.request(
        method, "/v1/x", [("Authorization", "Bearer k")], body, has_length=False
    )
    data = await resp.content.read()
    resp.release()
    return data


async def test_requests_go_out_as_given_over_one_connection(scripted) -> None:
    server, client = await scripted(lambda *_: OK)
    resp = await client.request(
        "GET",
        "/base/v1/models?limit=2",
        [("Authorization", "Bearer k"), ("X-A", "1")],
        None,
        has_length=False,
    )
    assert (resp.status, resp.reason, await resp.content.read()) == (200, "OK", b"ok")
    assert resp.headers["Content-Length"] == "2"
    resp.release()
    assert await _get(client) == b"ok"
    port = server._server.sockets[0].getsockname()[1]
    assert server.requests[0] == (
        1,
        f"GET /base/v1/models?limit=2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Authorization: Bearer k\r\nX-A: 1\r\n\r\n".encode(),
    )
    assert [n for n, _ in server.requests] == [1, 1]


@pytest.mark.parametrize(
    ("method", "body", "has_length", "after_host"),
    [
        ("POST", b"hello", False, [b"Content-Length: 5"]),
        ("POST", None, False, [b"Content-Length: 0"]),
        ("DELETE", None, False, [b"Content-Length: 0"]),
        ("GET", None, False, []),
        ("HEAD", None, False, []),
        ("POST", b"hello", True, [b"Content-Length: 5"]),  # the client's own, not a second
    ],
)
async def test_content_length_as_aiohttp_sets_it(
    scripted, method: str, body: bytes | None, has_length: bool, after_host: list[bytes]
) -> None:
    server, client = await scripted(lambda *_: OK.removesuffix(b"ok") if method == "HEAD" else OK)
    headers = [("Content-Length", "5")] if has_length else []
    resp = await client.request(method, "/v1/x", headers, body, has_length=has_length)
    await resp.content.read()
    resp.release()
    [(_, raw)] = server.requests
    head, _, sent = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[2:] == after_host
    assert sent == (body or b"")


async def test_chunked_and_close_delimited_bodies(scripted) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end" + CLOSE,
        OK,
    ]
    server, client = await scripted(lambda n, i, _: answers[len(server.requests) - 1])
    assert await _get(client) == b"abcde"
    assert await _get(client) == b"until the end"
    assert await _get(client) == b"ok"
    # The connection that ended its body by closing was not used again.
    assert [n for n, _ in server.requests] == [1, 1, 2]


async def test_interim_responses_are_skipped(scripted) -> None:
    _, client = await scripted(lambda *_: b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    resp = await client.request("POST", "/v1/x", [], b"{}", has_length=False)
    assert resp.status == 200
    assert await resp.content.read() == b"ok"
    resp.release()


async def test_head_and_204_have_no_body_and_keep_the_connection(scripted) -> None:
    answers = {
        b"HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"DELETE": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"GET": OK,
    }
    server, client = await scripted(lambda n, i, raw: answers[raw.split(b" ")[0]])
    for method, body in (("HEAD", b""), ("DELETE", b""), ("GET", b"ok")):
        assert await _get(client, method) == body
    assert [n for n, _ in server.requests] == [1, 1, 1]


async def test_a_connection_the_upstream_closed_is_not_used(scripted) -> None:
    # No Connection: close; the upstream closes the idle connection later, as at the end of
    # its keep-alive timeout.
    server, client = await scripted(lambda n, i, _: OK + CLOSE)
    assert await _get(client) == b"ok"
    await wait_until(lambda: not client._idle[-1][0].is_connected(), what="the client saw it")
    assert await _get(client) == b"ok"
    assert [n for n, _ in server.requests] == [1, 2]


async def test_an_idempotent_request_is_sent_again_once_when_a_kept_connection_drops(
    scripted,
) -> None:
    # Connection 1 answers its first request and drops the second without an answer, as a
    # server does whose keep-alive timeout ended just as the request came.
    server, client = await scripted(lambda n, i, _: OK if n > 1 or i == 1 else None)
    assert await _get(client) == b"ok"
    assert await _get(client, "GET") == b"ok"
    assert [n for n, _ in server.requests] == [1, 1, 2]


async def test_a_post_is_never_sent_twice(scripted) -> None:
    server, client = await scripted(lambda n, i, _: OK if n > 1 or i == 1 else None)
    assert await _get(client, "POST", b"{}") == b"ok"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _get(client, "POST", b"{}")
    assert [n for n, _ in server.requests] == [1, 1]


async def test_an_unfinished_body_closes_its_connection(scripted) -> None:
    server, client = await scripted(
        lambda n, i, _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf" if n == 1 else OK
    )
    resp = await client.request("GET", "/v1/x", [], None, has_length=False)
    assert await resp.content.readany() == b"half"
    resp.close()
    await wait_until(lambda: server.closed == 1, what="the upstream saw the connection close")
    assert await _get(client) == b"ok"
    assert server.connections == 2


async def test_release_before_the_end_of_the_body_closes_too(scripted) -> None:
    server, client = await scripted(
        lambda n, i, _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf" if n == 1 else OK
    )
    resp = await client.request("GET", "/v1/x", [], None, has_length=False)
    await resp.content.readany()
    resp.release()
    assert await _get(client) == b"ok"
    assert server.connections == 2


async def test_a_response_that_is_not_http_reads_as_aiohttp_s_error(scripted) -> None:
    server, client = await scripted(lambda n, i, _: b"SSH-2.0-OpenSSH\r\n\r\n" if n == 1 else OK)
    with pytest.raises(aiohttp.ClientResponseError) as caught:
        await _get(client, "POST", b"{}")
    # The parser's own words vary with aiohttp's version ("Bad status line", "Expected HTTP/").
    assert (caught.value.status, caught.value.request_info.method) == (400, "POST")
    assert await _get(client) == b"ok"  # on a new connection
    assert [n for n, _ in server.requests] == [1, 2]


async def test_idle_connections_expire(scripted) -> None:
    server, client = await scripted(lambda *_: OK, keepalive=0.0)
    assert await _get(client) == b"ok"
    assert await _get(client) == b"ok"
    assert server.connections == 2
    await wait_until(lambda: server.closed == 1, what="the expired connection was closed")


async def test_idle_connections_are_closed_without_a_request_to_find_them(scripted) -> None:
    server, client = await scripted(lambda *_: OK, keepalive=0.05)
    assert await _get(client) == b"ok"
    await wait_until(lambda: server.closed == 1, what="the idle connection was closed")
    assert not client._idle
    assert await _get(client) == b"ok"
    await wait_until(lambda: server.closed == 2, what="and the next one too")


async def test_a_cancelled_request_drops_its_connection(scripted) -> None:
    server, client = await scripted(lambda n, i, _: b"" if n == 1 else OK)  # never answers
    task = asyncio.create_task(_get(client))
    await wait_until(lambda: server.requests, what="the request arrived")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: server.closed == 1, what="the upstream saw the connection close")
    assert await _get(client) == b"ok"


async def test_close_closes_every_connection(scripted) -> None:
    server, client = await scripted(lambda *_: OK)
    assert await _get(client) == b"ok"
    await client.close()
    await wait_until(lambda: server.closed == 1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(client)


async def test_connect_failures_read_as_aiohttp_s() -> None:
    with socket_closed() as port:
        client = UpstreamClient(URL(f"http://127.0.0.1:{port}"), connect_timeout=5)
        with pytest.raises(aiohttp.ClientConnectorError, match=f"127.0.0.1:{port}"):
            await _get(client)
    client = UpstreamClient(URL("http://127.0.0.1:9"), connect_timeout=0)
    with pytest.raises(aiohttp.ConnectionTimeoutError):
        await _get(client)


class socket_closed:
    """A port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_upstream(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/v1/x", lambda r: web.Response(text=r.headers["Host"]))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=served)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    upstream = URL(f"https://localhost:{port}")
    trusting = ssl.create_default_context(cafile=str(cert))
    client = UpstreamClient(upstream, connect_timeout=5, ssl_context=trusting)
    untrusting = UpstreamClient(upstream, connect_timeout=5)
    try:
        assert await _get(client) == f"localhost:{port}".encode()
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(untrusting)
    finally:
        await client.close()
        await untrusting.close()
        await runner.cleanup()


# --- in the forwarder ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def forwarding(upstream: str, limit: int = 0) -> AsyncIterator[tuple[Forwarder, str]]:
    """A Forwarder to `upstream` behind an aiohttp server; it and the server's base URL. With a
    `limit`, the forwarder uses aiohttp's pool."""
    forwarder = Forwarder(upstream, Dispatcher([]), limit=limit)
    await forwarder.start()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forwarder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield forwarder, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()
        await forwarder.close()


async def test_the_forwarder_sends_small_requests_with_it(scripted) -> None:
    server, _ = await scripted(lambda *_: OK)
    port = server._server.sockets[0].getsockname()[1]
    json = {"Content-Type": "application/json"}  # a file type's body streams, through aiohttp
    async with forwarding(f"http://127.0.0.1:{port}/base/") as (forwarder, proxy):
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(proxy + "/v1/x", data=b"{}", headers=json) as resp:
                    assert (resp.status, await resp.read()) == (200, b"ok")
        assert forwarder._lean is not None and len(forwarder._lean._idle) == 1
    assert all(raw.startswith(b"POST /base/v1/x HTTP/1.1\r\n") for _, raw in server.requests)
    assert [n for n, _ in server.requests] == [1, 1]


@pytest.mark.parametrize("limit", [0, 4], ids=["lean-client", "aiohttp-pool"])
@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
    ids=["not-http", "bad-length", "bad-status", "bad-header"],
)
async def test_the_forwarder_answers_a_malformed_response_with_502_bad_response(
    scripted, limit: int, answer: bytes
) -> None:
    server, _ = await scripted(lambda *_: answer)
    port = server._server.sockets[0].getsockname()[1]
    async with (
        forwarding(f"http://127.0.0.1:{port}", limit) as (_, proxy),
        aiohttp.ClientSession() as session,
        session.get(proxy + "/v1/models") as resp,
    ):
        assert resp.status == 502
        body = await resp.json()
    assert body["error"]["code"] == "upstream_bad_response"
    assert "malformed" in body["error"]["message"]


async def test_a_connection_limit_keeps_aiohttp_s_pool() -> None:
    forwarder = Forwarder("http://127.0.0.1:9", Dispatcher([]), limit=4)
    await forwarder.start()
    try:
        assert forwarder._lean is None
    finally:
        await forwarder.close()


@pytest.mark.parametrize("limit", [0, 4], ids=["lean-client", "aiohttp-pool"])
@pytest.mark.parametrize(
    "interim", [b"HTTP/1.1 100 Continue\r\n\r\n", b""], ids=["sends-100", "sends-no-100"]
)
async def test_the_proxy_alone_answers_expect_100_continue(limit: int, interim: bytes) -> None:
    server = ScriptedUpstream(lambda *_: OK, interim=interim)
    port = await server.start()
    body = json_module.dumps({"a": "b" * 1000}).encode()
    try:
        async with (
            forwarding(f"http://127.0.0.1:{port}", limit) as (_, proxy),
            aiohttp.ClientSession() as session,
            asyncio.timeout(5),  # not the upstream_timeout of 600 s
        ):
            for _ in range(2):
                async with session.post(
                    proxy + "/v1/x",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    expect100=True,  # the client waits for the proxy's 100 before the body
                ) as resp:
                    assert (resp.status, await resp.read()) == (200, b"ok")
    finally:
        await server.stop()
    assert len(server.requests) == 2
    for _, raw in server.requests:
        head, _, sent = raw.partition(b"\r\n\r\n")
        assert sent == body
        assert b"\r\nexpect:" not in head.lower()  # the expectation was met here
