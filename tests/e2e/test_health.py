"""/_proxy/health reports whether the upstream answers, from the traffic it forwards, and
stays 200 "ok" when it does not: the proxy is up either way."""

from __future__ import annotations

import datetime as dt

import aiohttp

from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key
from tests.waiting import free_port

KEY = fake_key("health", "5555")


async def _health(http: aiohttp.ClientSession, proxy: RunningProxy) -> dict[str, object]:
    async with http.get(proxy.url + "/_proxy/health") as resp:
        assert resp.status == 200
        return await resp.json()


def _recent(text: object) -> bool:
    assert isinstance(text, str) and text.endswith("+00:00"), text
    age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(text)
    return dt.timedelta(0) <= age < dt.timedelta(minutes=1)


async def test_health_reports_the_upstream_answering(upstream: FakeUpstream, start_proxy) -> None:
    proxy = await start_proxy(Settings(upstream=upstream.url), accounting=False)
    async with aiohttp.ClientSession() as http:
        before = await _health(http, proxy)
        assert before["upstream_reachability"] == {
            "ok": None,
            "last_success": None,
            "last_failure": None,
            "last_failure_reason": None,
            "via_proxy": None,
        }
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.get(proxy.url + "/v1/nowhere", headers=headers) as resp:
            assert resp.status == 404  # an answer all the same: the upstream is there
        after = await _health(http, proxy)
    seen = after["upstream_reachability"]
    assert isinstance(seen, dict)
    assert seen["ok"] is True and _recent(seen["last_success"]) and seen["last_failure"] is None
    assert after["status"] == "ok"


async def test_an_unreachable_upstream_is_reported_and_health_stays_ok(start_proxy) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy = await start_proxy(Settings(upstream=nobody), accounting=False)
    async with aiohttp.ClientSession() as http:
        async with http.get(proxy.url + "/v1/models") as resp:
            assert resp.status == 502
        health = await _health(http, proxy)
    seen = health["upstream_reachability"]
    assert isinstance(seen, dict)
    assert (seen["ok"], seen["last_success"], seen["last_failure_reason"]) == (
        False,
        None,
        "upstream_unreachable",
    )
    assert _recent(seen["last_failure"])
    assert health["status"] == "ok" and health["upstream"] == nobody
