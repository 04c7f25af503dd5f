"""The hold seam (proxy/forwarding/holds.py): a held answer's end reaches the client only once
observers released it (whole bodies and streams), is delivered to observers exactly once,
goes out at the timeout when nobody releases it (fail open), and a holder that says no or
raises costs nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.forwarding.exchange import Dispatcher, Exchange
from proxy.forwarding.forward import Forwarder
from tests.e2e.fake_upstream import FakeUpstream
from tests.waiting import free_port, wait_until


class Holder:
    def __init__(self) -> None:
        self.answer: bool | Exception = True
        self.asked = 0

    async def hold(self, exchange: Exchange) -> bool:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Retainer:
    """An observer that retains every held exchange, and releases it when told."""

    def __init__(self) -> None:
        self.ended: list[Exchange] = []
        self.releases: list[Callable[[], None]] = []
        self.released_at: float | None = None

    def on_response(self, exchange: Exchange) -> None:
        self.ended.append(exchange)
        if exchange.hold is not None:
            self.releases.append(exchange.hold.retain())

    def release(self) -> None:
        self.released_at = time.monotonic()
        for release in self.releases:
            release()


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[str, Holder, Retainer, Forwarder]]:
    upstream = FakeUpstream()
    await upstream.start()
    holder, retainer = Holder(), Retainer()
    dispatcher = Dispatcher([retainer])
    dispatcher.start()
    forwarder = Forwarder(upstream.url, dispatcher, holders=[holder], hold_timeout=5.0)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forwarder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await forwarder.start()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", holder, retainer, forwarder
    await runner.cleanup()
    await forwarder.close()
    await dispatcher.stop()
    await upstream.close()


async def chat(url: str, *, stream: bool = False) -> tuple[bytes, float]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    sent = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/chat/completions", data=json.dumps(body), headers=sent) as r,
    ):
        assert r.status == 200
        return await r.read(), time.monotonic()


async def _release_once_seen(retainer: Retainer) -> None:
    await wait_until(lambda: retainer.releases, 10, what="the held exchange delivered")
    await asyncio.sleep(0.3)  # the answer waits this long for the release
    retainer.release()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_held_answer_ends_only_once_released(proxied: Any, stream: bool) -> None:
    url, _, retainer, forwarder = proxied
    releasing = asyncio.create_task(_release_once_seen(retainer))
    body, arrived = await chat(url, stream=stream)
    await releasing
    assert retainer.released_at is not None and arrived >= retainer.released_at
    assert (b"[DONE]" in body) == stream
    await asyncio.sleep(0)  # the handler's finally has run: still one delivery
    [exchange] = retainer.ended
    assert exchange.hold is not None and exchange.hold.released
    assert exchange.status == 200 and exchange.ended_at is not None
    assert (forwarder.holds.held, forwarder.holds.timed_out) == (1, 0)


async def test_an_unreleased_hold_answers_at_the_timeout(proxied: Any) -> None:
    url, _, retainer, forwarder = proxied
    forwarder.holds.timeout = 0.2
    started = time.monotonic()
    body, arrived = await chat(url)
    assert json.loads(body)["object"] == "chat.completion"
    assert arrived - started >= 0.2
    assert retainer.releases and retainer.released_at is None
    assert forwarder.holds.timed_out == 1


@pytest.mark.parametrize("answer", [False, RuntimeError("cannot decide")], ids=["no", "raises"])
async def test_an_answer_not_held_is_delivered_once_after_it_ended(
    proxied: Any, answer: bool | Exception
) -> None:
    url, holder, retainer, forwarder = proxied
    holder.answer = answer
    await chat(url)
    await wait_until(lambda: retainer.ended, 10, what="the exchange delivered")
    [exchange] = retainer.ended
    assert exchange.hold is None and retainer.releases == []
    assert holder.asked == 1 and forwarder.holds.held == 0


async def test_no_holder_no_holds() -> None:
    forwarder = Forwarder("http://127.0.0.1:9", Dispatcher([]))
    assert forwarder.holds is None
