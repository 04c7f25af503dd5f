"""compat.py: aiohttp's internals are looked at once, at start-up, and when one is not as the
proxy expects, the forwarder does without it and still forwards, with one warning."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.forwarding.upstream import compat
from tests.forwarding.upstream.test_lean import forwarding


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
