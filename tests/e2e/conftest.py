"""End-to-end fixtures: the fake upstream and the proxy, each on a real port in this loop, and
the official openai SDK pointed at the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import web

from proxy.app import make_app, start_site
from proxy.forwarding.exchange import Exchange
from proxy.settings import Settings
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key
from tests.waiting import free_port, wait_until


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


@dataclass
class RecordingObserver:
    """Observes the seam: every hook call is appended, in order."""

    responses: list[Exchange] = field(default_factory=list)
    errors: list[Exchange] = field(default_factory=list)
    events: list[tuple[Exchange, Any]] = field(default_factory=list)

    def on_response(self, exchange: Exchange) -> None:
        self.responses.append(exchange)

    def on_error(self, exchange: Exchange) -> None:
        self.errors.append(exchange)

    def on_event(self, exchange: Exchange, event: Any) -> None:
        self.events.append((exchange, event))


@dataclass
class RunningProxy:
    app: web.Application
    runner: web.AppRunner
    url: str

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[..., Awaitable[RunningProxy]]]:
    started: list[web.AppRunner] = []

    async def start(
        settings: Settings, *, collector_process: bool = False, **kwargs: Any
    ) -> RunningProxy:
        """The proxy on a free port. Its collector runs on this test's loop unless
        `collector_process` (the default of `serve`) asks for the child process: starting
        one per test would cost a second each, and tests/e2e/test_collector_process.py and
        the tests that run `serve` cover it."""
        port = free_port()
        app = make_app(settings.replace(port=port, collector_process=collector_process), **kwargs)
        runner = await start_site(app, "127.0.0.1", port)
        started.append(runner)
        return RunningProxy(app, runner, f"http://127.0.0.1:{port}")

    yield start
    for runner in reversed(started):
        await runner.cleanup()


def client_for(proxy: RunningProxy, key: str = fake_key("default", "1234"), **kw: Any):
    return openai.AsyncOpenAI(api_key=key, base_url=proxy.base_url, max_retries=0, **kw)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01):
    """Wait until predicate() is truthy (it may be async); fail after `timeout` seconds."""
    return await wait_until(predicate, timeout, interval=interval)


# --- forwarding and relay tests ------------------------------------------------------------


@pytest.fixture
def recorder() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
async def bare_proxy(
    upstream: FakeUpstream,
    start_proxy: Callable[..., Awaitable[RunningProxy]],
    recorder: RecordingObserver,
) -> RunningProxy:
    """A proxy without accounting in front of the fake upstream, observed by `recorder`."""
    return await start_proxy(
        Settings(upstream=upstream.url), observers=[recorder], accounting=False
    )


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def _parse_responses(data: bytes) -> list[RawResponse]:
    out: list[RawResponse] = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response head: {head!r}")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        _, status, reason = [*status_line.split(" ", 2), ""][:3]
        headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines]
        values = {k.lower(): v for k, v in headers}
        if values.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body, data = body + data[:size], data[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(values.get("content-length", "0"))
            body, data = data[:length], data[length:]
        out.append(RawResponse(int(status), reason, headers, body))  # type: ignore[arg-type]
    return out


async def raw_http(port: int, data: bytes, *, timeout: float = 10.0) -> list[RawResponse]:
    """Write `data` as is to 127.0.0.1:port, read until the server closes the connection, and
    parse what came back (every response, for pipelined requests). Send `Connection: close`
    in the last request, or rely on the server closing after an error."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return _parse_responses(received)
