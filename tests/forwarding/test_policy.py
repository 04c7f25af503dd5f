"""The Policy seam (proxy/forwarding/policy.py): a refusal is the response, and the upstream
never sees the request; None forwards it; a policy that raises fails open."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.forward import Forwarder
from proxy.forwarding.policy import REFUSED_BY, Refusal, RequestMeta
from tests.e2e.fake_upstream import FakeUpstream
from tests.waiting import free_port

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


class Policy:
    def __init__(self) -> None:
        self.seen: list[RequestMeta] = []
        self.answer: Refusal | None = None
        self.fails = False

    async def refusal(self, meta: RequestMeta) -> Refusal | None:
        self.seen.append(meta)
        if self.fails:
            raise RuntimeError("cannot decide")
        return self.answer


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[str, FakeUpstream, Policy, list[Any]]]:
    upstream = FakeUpstream()
    await upstream.start()
    policy = Policy()
    refused_by: list[Any] = []
    forwarder = Forwarder(upstream.url, Dispatcher([]), policy=policy)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await forwarder.handle(request)
        refused_by.append(request.get(REFUSED_BY))
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await forwarder.start()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", upstream, policy, refused_by
    await runner.cleanup()
    await forwarder.close()
    await upstream.close()


async def post(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    sent = {"Authorization": "Bearer sk-test", "Content-Type": "application/json", **headers}
    target = url + "/v1/chat/completions?x=1"
    async with aiohttp.ClientSession() as http, http.post(target, data=BODY, headers=sent) as r:
        return r.status, dict(r.headers), await r.read()


async def test_a_refusal_is_the_response_and_the_upstream_never_sees_it(proxied):
    url, upstream, policy, refused_by = proxied
    policy.answer = Refusal(429, b'{"error": {}}', {"x-should-retry": "false"}, by="budget 7")
    status, headers, body = await post(url, **{"X-Usage-Team": "red"})
    assert (status, body, headers["x-should-retry"]) == (429, b'{"error": {}}', "false")
    assert headers["Content-Type"].startswith("application/json")
    assert upstream.requests == []
    assert refused_by == ["budget 7"]
    [meta] = policy.seen
    assert (meta.method, meta.path, meta.query_string) == ("POST", "/v1/chat/completions", "x=1")
    assert meta.sent["Authorization"] == "Bearer sk-test"
    assert "X-Usage-Team" not in meta.sent and meta.received["X-Usage-Team"] == "red"


async def test_none_forwards_and_a_failing_policy_fails_open(proxied, caplog):
    url, upstream, policy, _ = proxied
    assert (await post(url))[0] == 200
    policy.fails = True
    assert (await post(url))[0] == 200
    assert len(upstream.requests) == 2
    assert "the request policy failed" in caplog.text
