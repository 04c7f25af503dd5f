"""Access logging through a real in-process proxy: one line per request, text or JSON, and
never a credential, whatever the client sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from proxy.logs import configure_logging
from proxy.settings import Settings
from tests.e2e.conftest import wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key

KEY = fake_key("logs", "4321")
AZURE_KEY = "0123456789abcdef0123456789abcdef"
TOKEN = "admin-token-for-log-tests"


class _Stderr:
    """What the proxy wrote to stderr so far, accumulated across readouterr() calls."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.text = ""

    def lines(self) -> list[str]:
        self.text += self._capsys.readouterr().err
        return self.text.splitlines()


@pytest.fixture(params=["text", "json"])
def log_format(request: pytest.FixtureRequest) -> Iterator[str]:
    undo = configure_logging(Settings(log_format=request.param))
    yield request.param
    undo()


async def test_one_access_line_per_request_and_no_secret(
    upstream: FakeUpstream, start_proxy, capsys, log_format: str
) -> None:
    settings = Settings(upstream=upstream.url, admin_token=TOKEN, log_format=log_format)
    proxy = await start_proxy(settings, accounting=False)
    bearer, azure = {"Authorization": f"Bearer {KEY}"}, {"api-key": AZURE_KEY}
    secrets = {**bearer, **azure}  # two different keys: refused, and logged without either
    requests = [
        ("GET", f"/v1/models?api_key={KEY}&x=1", bearer, 200),
        ("POST", "/v1/chat/completions", azure, 200),
        ("POST", "/v1/chat/completions", secrets, 400),
        ("GET", "/v1/nowhere", bearer, 404),
        ("GET", "/_proxy/health", secrets, 200),
        ("GET", "/_proxy/metrics", {"Authorization": f"Bearer {TOKEN}"}, 200),
        ("GET", "/_proxy/metrics", {"Authorization": "Bearer wrong-admin-token"}, 401),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, headers, status in requests:
            body = {"model": "gpt-4o", "messages": []} if method == "POST" else None
            async with http.request(method, proxy.url + path, headers=headers, json=body) as resp:
                await resp.read()
                assert resp.status == status, path

    err = _Stderr(capsys)

    await wait_for(lambda: len(_access(err.lines(), log_format)) >= len(requests))
    entries = _access(err.lines(), log_format)
    assert len(entries) == len(requests)
    seen_ids = set()
    for entry, (method, path, _, status) in zip(entries, requests, strict=True):
        assert (entry["method"], entry["path"], entry["status"]) == (
            method,
            path.partition("?")[0],
            status,
        )
        assert entry["duration_ms"] >= 0
        seen_ids.add(entry["request_id"])
    assert len(seen_ids) == len(requests)
    for secret in (KEY, KEY[3:], AZURE_KEY, TOKEN, "wrong-admin-token", "api_key="):
        assert secret not in err.text, secret


_TEXT = re.compile(
    r"INFO proxy\.access: (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d+) "
    r"(?P<duration_ms>[\d.]+)ms id=(?P<request_id>\S+)"
)


def _access(lines: list[str], log_format: str) -> list[dict[str, object]]:
    """The access entries among stderr's lines, in order, as dicts of their fields."""
    out: list[dict[str, object]] = []
    for line in lines:
        if log_format == "json":
            entry = json.loads(line)  # every line, not only access lines, must be JSON
            if entry["logger"] == "proxy.access":
                assert entry["level"] == "INFO"
                out.append(entry)
        elif (match := _TEXT.search(line)) is not None:
            entry = match.groupdict()
            out.append(
                {
                    **entry,
                    "status": int(entry["status"]),
                    "duration_ms": float(entry["duration_ms"]),
                }
            )
    return out


async def test_access_line_carries_the_id_observers_see(
    upstream: FakeUpstream, start_proxy, capsys
) -> None:
    from tests.e2e.conftest import RecordingObserver

    undo = configure_logging(Settings(log_format="json"))
    try:
        recorder = RecordingObserver()
        proxy = await start_proxy(Settings(upstream=upstream.url), observers=[recorder])
        async with (
            aiohttp.ClientSession() as http,
            http.get(proxy.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}) as resp,
        ):
            await resp.read()
        await wait_for(lambda: recorder.responses)
        stderr = _Stderr(capsys)
        lines = await wait_for(
            lambda: [json.loads(x) for x in stderr.lines() if '"path": "/v1/models"' in x]
        )
    finally:
        undo()
    assert lines[0]["request_id"] == recorder.responses[0].request_id


async def test_a_stream_the_sdk_closes_after_done_gets_its_access_line(
    upstream: FakeUpstream, start_proxy, capsys
) -> None:
    """The synchronous SDK closes a chat stream as soon as it reads `[DONE]`, before the
    body's last chunk: aiohttp cancels the handler then and writes no access line of its own
    (2 of 14 streamed SDK requests had none)."""
    undo = configure_logging(Settings(log_format="json"))
    upstream.faults.hold_stream_end = asyncio.Event()  # the last chunk comes after the close
    try:
        proxy = await start_proxy(Settings(upstream=upstream.url), accounting=False)

        def stream() -> list[str]:
            with openai.OpenAI(api_key=KEY, base_url=proxy.base_url, max_retries=0) as client:
                chunks = client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True
                )
                return [c.choices[0].delta.content or "" for c in chunks if c.choices]

        assert "".join(await asyncio.to_thread(stream)) == "Hello there, friend!"
        stderr = _Stderr(capsys)
        entries = await wait_for(
            lambda: [
                e for e in _access(stderr.lines(), "json") if e["path"] == "/v1/chat/completions"
            ]
        )
    finally:
        upstream.faults.hold_stream_end.set()
        undo()
    assert [(e["method"], e["status"]) for e in entries] == [("POST", 200)]
    assert KEY not in stderr.text


async def test_a_client_gone_before_the_response_began_is_logged_as_499(
    upstream: FakeUpstream, start_proxy, capsys
) -> None:
    undo = configure_logging(Settings(log_format="json"))
    upstream.faults.fetch_gate = asyncio.Event()  # the upstream holds the steps fetch
    try:
        proxy = await start_proxy(Settings(upstream=upstream.url), accounting=False)
        path = "/v1/threads/thread_x/runs/run_x/steps"
        async with aiohttp.ClientSession() as http:
            request = asyncio.ensure_future(
                http.get(proxy.url + path, headers={"Authorization": f"Bearer {KEY}"})
            )
            await wait_for(lambda: any(r["path"] == path for r in upstream.requests))
            request.cancel()  # the client goes away while the proxy waits for the upstream
            with contextlib.suppress(asyncio.CancelledError):
                await request
        stderr = _Stderr(capsys)
        entries = await wait_for(
            lambda: [e for e in _access(stderr.lines(), "json") if e["path"] == path]
        )
    finally:
        upstream.faults.fetch_gate.set()
        undo()
    assert [(e["method"], e["status"]) for e in entries] == [("GET", 499)]


# Header lines aiohttp's parser refuses, and so logs with the offending bytes in its error
# trace (issue 20): the key may follow a tab, a control character or a DEL, where neither a
# literal space nor a word boundary precedes it.
GET = b"GET /v1/models HTTP/1.1\r\n"
MALFORMED = [
    GET + b"Authorization: Bearer\x01" + KEY.encode(),
    GET + b"Authorization: Bearer\x0b" + AZURE_KEY.encode(),
    GET + b"api-key: \x01" + AZURE_KEY.encode(),
    GET + b"Authorization: Token\x7f" + AZURE_KEY.encode() + b"\x01",
    GET + b"X-Anything: " + KEY.encode() + b"\x01",
    b"GET /v1/models?key=" + AZURE_KEY.encode() + b"\x7f HTTP/1.1\r\nHost: x",
]


@pytest.mark.parametrize("head", MALFORMED)
async def test_aiohttps_error_traces_carry_no_key(
    upstream: FakeUpstream, start_proxy, capsys, log_format: str, head: bytes
) -> None:
    proxy = await start_proxy(Settings(upstream=upstream.url, log_level="DEBUG"), accounting=False)
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer
    stderr = _Stderr(capsys)
    await wait_for(lambda: any("Error handling request" in x or "Bad" in x for x in stderr.lines()))
    assert KEY not in stderr.text and AZURE_KEY not in stderr.text
    assert AZURE_KEY[:8] not in stderr.text and KEY[-12:] not in stderr.text
