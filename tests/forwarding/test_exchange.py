"""exchange.py: the Exchange's lazy views and the Dispatcher's guard."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import proxy.forwarding.exchange as exchange_module
from proxy.forwarding.decode import SSEEvent
from proxy.forwarding.exchange import Dispatcher, Exchange


def make_exchange(
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    request_body: bytes = b"",
    **kw: Any,
) -> Exchange:
    response_headers = CIMultiDictProxy(
        CIMultiDict(headers if headers is not None else {"Content-Type": "application/json"})
    )
    return Exchange(
        request_id=kw.pop("request_id", "test-1"),
        method="POST",
        path="/v1/chat/completions",
        query_string="",
        request_headers=CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"})),
        request_body=request_body,
        status=200,
        response_headers=response_headers,
        raw_response_body=body,
        **kw,
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_response(self, exchange: Exchange) -> None:
        self.calls.append(("on_response", exchange.request_id))

    async def on_error(self, exchange: Exchange) -> None:
        self.calls.append(("on_error", exchange.request_id))

    def on_event(self, exchange: Exchange, event: SSEEvent) -> None:
        self.calls.append(("on_event", event.data))


class Raising:
    def on_response(self, exchange: Exchange) -> None:
        raise RuntimeError("observer bug")

    async def on_event(self, exchange: Exchange, event: SSEEvent) -> None:
        raise ValueError("async observer bug")


class _Holder:
    """An object whose hook is a plain function attribute, not a bound method."""


def _plain_hook(exchange: Exchange) -> None:
    raise KeyError("plain function")


class CancelsItself:
    async def on_response(self, exchange: Exchange) -> None:
        raise asyncio.CancelledError  # e.g. a timeout the observer let escape


class Slow:
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def on_response(self, exchange: Exchange) -> None:
        self.entered.set()
        await self.release.wait()


@pytest.fixture
async def dispatch():
    started: list[Dispatcher] = []

    def make(observers: list[object], **kw: Any) -> Dispatcher:
        d = Dispatcher(observers, **kw)
        d.start()
        started.append(d)
        return d

    yield make
    for d in started:
        await d.stop(timeout=1)


# --- Exchange --------------------------------------------------------------------------------

PAYLOAD = {"id": "chatcmpl-1", "usage": {"total_tokens": 3}}


def test_json_plain_and_cached() -> None:
    ex = make_exchange(body=json.dumps(PAYLOAD).encode())
    assert ex.json() == PAYLOAD
    ex.raw_response_body = b"changed"
    assert ex.json() == PAYLOAD  # parsed once, on first use


def test_json_decodes_content_encoding() -> None:
    ex = make_exchange(
        body=gzip.compress(json.dumps(PAYLOAD).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert ex.json() == PAYLOAD
    assert ex.response_body() == json.dumps(PAYLOAD).encode()


@pytest.mark.parametrize(
    ("body", "headers", "truncated"),
    [
        (b'{"id": ', {"Content-Type": "application/json"}, False),
        (b"", {"Content-Type": "application/json"}, False),
        (b'{"id": 1}', {"Content-Type": "application/json"}, True),
        (gzip.compress(b'{"id": 1}')[:-6], {"Content-Encoding": "gzip"}, False),
        (b'{"id": 1}', {"Content-Encoding": "unheard-of"}, False),
    ],
    ids=["malformed", "empty", "truncated", "truncated-gzip", "unknown-encoding"],
)
def test_json_none_when_unreadable(body: bytes, headers: dict[str, str], truncated: bool) -> None:
    ex = make_exchange(body=body, headers=headers, response_truncated=truncated)
    assert ex.json() is None


def test_decoded_body_over_the_limit_counts_as_truncated() -> None:
    big = json.dumps({"data": "x" * 100_000}).encode()
    ex = make_exchange(
        body=gzip.compress(big), headers={"Content-Encoding": "gzip"}, max_body=50_000
    )
    assert not ex.response_truncated
    assert ex.json() is None
    assert ex.response_truncated


def test_request_json() -> None:
    assert make_exchange(request_body=b'{"model": "gpt-4o"}').request_json() == {"model": "gpt-4o"}
    assert make_exchange(request_body=b"--boundary\r\n").request_json() is None
    assert (
        make_exchange(request_body=b'{"model": ', request_body_truncated=True).request_json()
        is None
    )
    assert make_exchange().request_json() is None


@pytest.mark.parametrize(
    ("ctype", "sse"),
    [
        ("text/event-stream; charset=utf-8", True),
        ("Text/Event-Stream", True),
        ("application/json", False),
        (None, False),
    ],
)
def test_content_type(ctype: str | None, sse: bool) -> None:
    ex = make_exchange(headers={"Content-Type": ctype} if ctype else {})
    assert ex.is_sse is sse


# --- Dispatcher ------------------------------------------------------------------------------


async def test_delivers_in_order_and_awaits_async_hooks(dispatch) -> None:
    rec = Recorder()
    d = dispatch([rec])
    ex = make_exchange()
    d.submit("on_event", ex, SSEEvent("message", "a"))
    d.submit("on_event", ex, SSEEvent("message", "b"))
    d.submit("on_response", ex)
    d.submit("on_error", make_exchange(request_id="test-2"))
    await d.drain()
    assert rec.calls == [
        ("on_event", "a"),
        ("on_event", "b"),
        ("on_response", "test-1"),
        ("on_error", "test-2"),
    ]


async def test_missing_hook_means_not_interested(dispatch) -> None:
    class OnlyResponses:
        def __init__(self) -> None:
            self.seen: list[Exchange] = []

        def on_response(self, exchange: Exchange) -> None:
            self.seen.append(exchange)

    obs = OnlyResponses()
    d = dispatch([obs])
    assert not d.wants("on_event")
    d.submit("on_event", make_exchange(), SSEEvent("message", "a"))
    d.submit("on_error", make_exchange())
    assert d.pending == 0  # nothing queued for hooks nobody has
    d.submit("on_response", make_exchange())
    await d.drain()
    assert len(obs.seen) == 1


@pytest.mark.parametrize(
    "bad",
    [Raising(), CancelsItself(), "plain"],
    ids=["raises", "cancels-itself", "plain-function"],
)
async def test_failing_observer_is_logged_and_others_still_run(
    dispatch, caplog: pytest.LogCaptureFixture, bad: object
) -> None:
    if bad == "plain":
        bad = _Holder()
        bad.on_response = _plain_hook  # type: ignore[attr-defined]
    rec = Recorder()
    d = dispatch([bad, rec])
    with caplog.at_level(logging.ERROR, logger="proxy.observers"):
        for i in range(3):
            d.submit("on_response", make_exchange(request_id=f"r{i}"))
        await d.drain()
    assert rec.calls == [("on_response", "r0"), ("on_response", "r1"), ("on_response", "r2")]
    assert d.failures == 3
    failures = [r for r in caplog.records if "failed on" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info is not None for r in failures)  # logged with the traceback
    assert d._task is not None and not d._task.done()


async def test_async_hook_failure_is_guarded(dispatch, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    d = dispatch([Raising(), rec])
    with caplog.at_level(logging.ERROR, logger="proxy.observers"):
        d.submit("on_event", make_exchange(), SSEEvent("message", "a"))
        await d.drain()
    assert rec.calls == [("on_event", "a")]
    assert "Raising.on_event failed" in caplog.text


async def test_slow_observer_does_not_block_submit(dispatch) -> None:
    slow, rec = Slow(), Recorder()
    d = dispatch([slow, rec])
    d.submit("on_response", make_exchange(request_id="first"))
    await asyncio.wait_for(slow.entered.wait(), 5)
    # The hook is stuck; submitting more still returns at once (it is synchronous) and queues.
    for i in range(100):
        d.submit("on_response", make_exchange(request_id=f"more{i}"))
    assert d.pending == 100
    assert rec.calls == []
    slow.release.set()
    await d.drain()
    assert len(rec.calls) == 101


async def test_full_queue_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    d = Dispatcher([Recorder()], maxsize=2)  # not started: nothing drains the queue
    with caplog.at_level(logging.ERROR, logger="proxy.observers"):
        for i in range(5):
            d.submit("on_response", make_exchange(request_id=f"r{i}"))
    assert d.dropped == 3
    assert caplog.text.count("observer queue full") == 3


async def test_stop_delivers_what_was_submitted() -> None:
    rec = Recorder()
    d = Dispatcher([rec])
    d.start()
    d.submit("on_response", make_exchange())
    await d.stop(timeout=5)
    assert rec.calls == [("on_response", "test-1")]
    assert d._task is None


async def test_stop_gives_up_on_a_stuck_observer() -> None:
    slow = Slow()
    d = Dispatcher([slow])
    d.start()
    d.submit("on_response", make_exchange())
    await asyncio.wait_for(slow.entered.wait(), 5)
    await asyncio.wait_for(d.stop(timeout=0.05), 5)
    assert d._task is None


async def test_a_burst_is_delivered_in_order_and_lets_the_loop_run(dispatch) -> None:
    # A burst of exchanges must not hold the event loop for its whole length: requests being
    # forwarded meanwhile run between slices of it.
    ticks = 0
    seen_at: list[int] = []

    class Counting:
        def on_response(self, exchange: Exchange) -> None:
            seen_at.append(ticks)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    d = dispatch([Counting(), rec := Recorder()])
    task = asyncio.create_task(ticker())
    try:
        for i in range(500):
            d.submit("on_response", make_exchange(request_id=f"r{i}"))
        await asyncio.wait_for(d.drain(), 10)
    finally:
        task.cancel()
    assert [c[1] for c in rec.calls] == [f"r{i}" for i in range(500)]
    assert len(set(seen_at)) >= 500 // 64  # the loop ran between slices of the burst
    assert exchange_module._CATCH_UP > 500  # (else the burst would be delivered in one go)


async def test_drain_waits_for_items_submitted_while_delivering(dispatch) -> None:
    rec = Recorder()

    class Resubmits:
        def on_response(self, exchange: Exchange) -> None:
            if exchange.request_id == "first":
                d.submit("on_response", make_exchange(request_id="second"))

    d = dispatch([Resubmits(), rec])
    d.submit("on_response", make_exchange(request_id="first"))
    await asyncio.wait_for(d.drain(), 10)
    assert rec.calls == [("on_response", "first"), ("on_response", "second")]
    assert d.pending == 0
