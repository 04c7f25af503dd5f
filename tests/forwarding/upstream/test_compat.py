"""compat.py: aiohttp's internals are looked at once, at start-up, and when one is not as the
proxy expects, the forwarder does without it and still forwards, with one warning."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import make_app, start_site
from proxy.forwarding.upstream import compat
from proxy.settings import Settings
from tests.forwarding.upstream.test_lean import OK, ScriptedUpstream, forwarding
from tests.waiting import free_port


@pytest.fixture
def recheck() -> AsyncIterator[None]:
    compat.checked.cache_clear()
    yield
    compat.checked.cache_clear()


async def _upstream() -> tuple[web.AppRunner, str, list[dict[str, str]]]:
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=await request.read(), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", seen


def test_this_aiohttp_has_what_the_lean_client_and_the_session_use() -> None:
    found = compat.check()
    assert (found.lean_client, found.quiet_request, found.relayed) == (True, True, True)


async def test_changed_internals_send_everything_through_the_session(
    recheck: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = aiohttp.ClientRequest.update_auto_headers

    def update_auto_headers(self: aiohttp.ClientRequest, skip: object, more: object = ()) -> None:
        original(self, skip)  # type: ignore[arg-type]

    # As after an aiohttp that moved its response protocol (the import in compat.py fails).
    monkeypatch.setattr(compat, "ResponseHandler", None)
    monkeypatch.setattr(aiohttp.ClientRequest, "update_auto_headers", update_auto_headers)
    runner, upstream, seen = await _upstream()
    try:
        with caplog.at_level(logging.WARNING, logger="proxy.forward"):
            async with forwarding(upstream) as (forwarder, proxy):
                assert forwarder._lean is None
                async with aiohttp.ClientSession(
                    skip_auto_headers=compat.SKIPPED_AUTO_HEADERS
                ) as client:
                    for _ in range(2):
                        async with client.post(
                            proxy + "/v1/x", data=b"{}", headers={"X-Mine": "1"}
                        ) as resp:
                            assert (resp.status, await resp.read()) == (200, b"{}")
    finally:
        await runner.cleanup()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "proxy.forward"]
    assert "ResponseHandler" in warning and "update_auto_headers" in warning
    assert "every request goes through aiohttp's ClientSession" in warning
    # The session's public skip list keeps aiohttp's own headers out, as QuietRequest does.
    assert {"Accept", "Accept-Encoding", "User-Agent", "Content-Type"}.isdisjoint(seen[0])
    assert seen[0]["X-Mine"] == "1"


def test_this_aiohttp_has_what_the_checked_connection_and_the_guard_use() -> None:
    found = compat.check()
    assert (found.checked_pool, found.guard, found.missing) == (True, True, ())


async def _two_requests(limit: int) -> tuple[int, list[int]]:
    """Two requests in turn through a forwarder with `limit`: upstream connections opened,
    and the connection number of each request."""
    server = ScriptedUpstream(lambda *_: OK)
    port = await server.start()
    try:
        async with (
            forwarding(f"http://127.0.0.1:{port}", limit) as (_, proxy),
            aiohttp.ClientSession() as client,
        ):
            for _ in range(2):
                async with client.get(proxy + "/v1/models") as resp:
                    assert (resp.status, await resp.read()) == (200, b"ok")
    finally:
        await server.stop()
    return server.connections, [n for n, _ in server.requests]


@pytest.mark.parametrize("limit", [0, 4], ids=["lean-client", "aiohttp-pool"])
async def test_checked_connections_are_reused(recheck: None, limit: int) -> None:
    assert (await _two_requests(limit))[1] == [1, 1]


async def test_without_the_connector_s_factory_aiohttp_s_pool_reuses_nothing(
    recheck: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = aiohttp.connector.BaseConnector.__init__

    def init(self: aiohttp.BaseConnector, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)

    # As after an aiohttp whose connector no longer creates protocols through `_factory`.
    monkeypatch.setattr(aiohttp.connector.BaseConnector, "__init__", init)
    with caplog.at_level(logging.WARNING, logger="proxy.forward"):
        assert (await _two_requests(4))[1] == [1, 2]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "proxy.forward"]
    assert "BaseConnector._factory" in warning
    # The lean client has its own pool, which does not depend on the connector.
    compat.checked.cache_clear()
    assert (await _two_requests(0))[1] == [1, 1]


async def test_without_the_request_handler_the_site_serves_with_aiohttp_s_limits(
    recheck: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As after an aiohttp that moved its server protocol (the import in compat.py fails).
    monkeypatch.setattr(compat, "RequestHandler", None)
    upstream, url, _ = await _upstream()
    port = free_port()
    settings = Settings(upstream=url, port=port, client_max_header_bytes=1024)
    try:
        with caplog.at_level(logging.WARNING, logger="proxy.forward"):
            runner = await start_site(make_app(settings, accounting=False), "127.0.0.1", port)
        try:
            assert [type(site) for site in runner.sites] == [web.TCPSite]
            async with aiohttp.ClientSession() as client:
                async with client.post(f"http://127.0.0.1:{port}/v1/x", data=b"{}") as resp:
                    assert (resp.status, await resp.read()) == (200, b"{}")
                # aiohttp's own limit, per header line, is the setting.
                async with client.get(
                    f"http://127.0.0.1:{port}/v1/x", headers={"X-Big": "a" * 2000}
                ) as resp:
                    assert resp.status in (400, 431)
        finally:
            await runner.cleanup()
    finally:
        await upstream.cleanup()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "proxy.forward"]
    assert "RequestHandler" in warning
