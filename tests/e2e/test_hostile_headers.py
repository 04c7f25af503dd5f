"""Requests with hostile headers, sent byte for byte on a raw socket (issue 20): whatever bytes a
header carries, a completed request gets its one usage row, attributed to the credential the
upstream was sent, and the collector process stays up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import ACCOUNTING, DISPATCHER
from proxy.db import mappings
from proxy.keys import fingerprint, hint
from tests.e2e.conftest import RawResponse, RunningProxy, _parse_responses, client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import KEY, SECRET, finished_run, one_row, settings_for
from tests.e2e.test_collector_process import alive, started
from tests.e2e.test_events import rows, settle
from tests.fake_keys import fake_key

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

StartProxy = Callable[..., Awaitable[RunningProxy]]
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
# The headers accounting reads, and one it does not.
NAMES = (
    "Authorization",
    "api-key",
    "OpenAI-Project",
    "OpenAI-Organization",
    "OpenAI-Beta",
    "X-Usage-Tag",
    "X-Usage-Team",
    "X-Anything",
)


@pytest.fixture(autouse=True)
def _setup(db_url: str, upstream: FakeUpstream) -> None:
    """The database before the proxy, so torn down after it."""


async def chat(
    proxy: RunningProxy, *headers: bytes, connection: bytes = b"Connection: close"
) -> RawResponse:
    """A chat completion sent as raw bytes, with `headers` (whole lines, no CRLF) added."""
    port = int(proxy.url.rsplit(":", 1)[1])
    head = [
        b"POST /v1/chat/completions HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(CHAT),
        connection,
        *headers,
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + CHAT.encode())
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    [response] = _parse_responses(received)
    return response


async def drained(proxy: RunningProxy) -> None:
    """Everything observed so far has been handled and written."""
    await proxy.app[DISPATCHER].drain()
    await proxy.app[ACCOUNTING].rows.drain()


def bearer(key: str) -> bytes:
    return b"Authorization: Bearer " + key.encode()


@pytest.fixture
async def proxy(upstream: FakeUpstream, start_proxy: StartProxy, db_url: str) -> RunningProxy:
    # The collector in its own process: keys cross the pipe to it, as with `serve`.
    proxy = await start_proxy(settings_for(upstream, db_url), collector_process=True)
    await started(proxy)
    return proxy


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.sampled_from(NAMES),
    value=st.binary(min_size=1, max_size=48).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
async def test_any_header_bytes_give_one_row_per_completed_request(
    proxy: RunningProxy, upstream: FakeUpstream, sm, name: str, value: bytes
) -> None:
    seen, failed = len(upstream.requests), proxy.app[DISPATCHER].failures
    if name == "Authorization":  # the only key there is
        got = await chat(proxy, b"Authorization: Bearer " + value)
    else:  # beside the real key
        got = await chat(proxy, bearer(KEY), name.encode() + b": " + value)
    if got.status == 400 and len(upstream.requests) == seen:
        return  # refused by the proxy, never forwarded: nothing to bill
    if got.status == 401 and name == "Authorization":
        return  # no key the fake upstream takes (blank): nothing to bill
    assert got.status == 200, got
    completion = json.loads(got.body)["id"]
    await drained(proxy)
    # No observer failed: a failure there would have dropped the row.
    assert proxy.app[DISPATCHER].failures == failed
    recorded = [r for r in await rows(sm, "chat.completion") if r["object_id"] == completion]
    assert len(recorded) == 1, (name, value)
    if name != "Authorization":  # the real key is the one the upstream takes
        assert recorded[0]["key_fingerprint"] == fingerprint(KEY, SECRET.encode())
    assert recorded[0]["key_fingerprint"] is not None
    assert recorded[0]["key_hint"] is None or recorded[0]["key_hint"].isprintable()


async def test_a_bad_byte_key_does_not_poison_the_collector_process(
    proxy: RunningProxy, upstream: FakeUpstream, sm
) -> None:
    """The issue's case: `api-key: \\xff...` beside a real Authorization is two different keys,
    refused before anything is sent. A key of bad bytes alone is forwarded and recorded: six
    completions, six rows; then the collector child is killed, and its replacement (told every
    live key at start) stays up and collects a run."""
    upstream.require_beta = True
    seen = len(upstream.requests)
    got = await chat(proxy, bearer(KEY), b"api-key: \xff\xfe" + b"k" * 30)
    assert got.status == 400 and len(upstream.requests) == seen, got
    for _ in range(6):
        got = await chat(proxy, b"Authorization: Bearer sk-\xff\xfe" + b"k" * 30)
        assert got.status == 200, got
    await settle(proxy)
    assert len(await rows(sm, "chat.completion")) == 6
    collector = await started(proxy)
    old = collector.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await wait_for(lambda: collector.pid != old and collector.started.is_set(), timeout=30)
    new = collector.pid
    async with client_for(proxy, KEY) as client:
        run = await finished_run(client, usage="no")
        row = await one_row(sm, run.id, timeout=30)
    assert row["usage_source"] == "estimated"
    assert collector.pid == new and alive(new)


async def test_a_key_that_is_not_utf8_is_fingerprinted_by_its_bytes(
    proxy: RunningProxy, sm
) -> None:
    raw = fake_key("bytes", "wxyz").encode()[:-5] + b"\xff\xfewxyz"
    got = await chat(proxy, b"Authorization: Bearer " + raw)
    assert got.status == 200, got
    await settle(proxy)
    [row] = await rows(sm, "chat.completion")
    # The bytes as sent, under the secret: what the upstream was given is what is attributed.
    assert row["key_fingerprint"] == hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert row["key_hint"] == "sk-...wxyz"


# --- a decoy credential named in Connection --------------------------------------------------

DECOY = fake_key("decoy", "dddd")


@pytest.mark.parametrize(
    ("decoy", "connection"),
    [
        (b"Authorization: Bearer " + DECOY.encode(), b"Connection: close, Authorization"),
        (b"Authorization: Bearer " + DECOY.encode(), b"Connection: Authorization, close"),
        (b"OpenAI-Project: proj_decoy", b"Connection: close, openai-project"),
    ],
)
async def test_a_header_named_in_connection_is_neither_forwarded_nor_billed(
    proxy: RunningProxy, upstream: FakeUpstream, sm, decoy: bytes, connection: bytes
) -> None:
    """The issue's case: the real key in `api-key` (mapped to team red) and a decoy named in
    `Connection`, which the proxy removes as hop-by-hop. The upstream saw the real key only,
    and the row is red's, with the real key's fingerprint."""
    await mappings.add_key_team(sm, fingerprint(KEY, SECRET.encode()), hint(KEY), "red")
    await mappings.add_project_team(sm, "proj_decoy", "blue")
    got = await chat(proxy, b"api-key: " + KEY.encode(), decoy, connection=connection)
    assert got.status == 200, got
    sent = {k.lower(): v for k, v in upstream.requests[-1]["headers"].items()}
    assert "authorization" not in sent and "openai-project" not in sent
    assert sent["api-key"] == KEY
    await drained(proxy)
    [row] = await rows(sm, "chat.completion")
    assert row["key_fingerprint"] == fingerprint(KEY, SECRET.encode())
    assert (row["key_hint"], row["team"], row["project"]) == (hint(KEY), "red", None)
