"""The security walk (issue #7): a small full run on each backend, with every endpoint kind
(chat, streamed chat, embeddings, responses, background responses, Assistants runs polled and
streamed, Azure deployments with `api-key`), upstream errors that echo the key, two replicas
logging in text and in JSON (DEBUG), then every place a key could land is read back:

- every table of the database, reflected, row by row; the raw SQLite files (main, -wal) or a
  pg_dump of the schema, so deleted rows and unknown tables count too;
- every log line of both processes (stdout and stderr);
- `usage-proxy report` in table, csv and json, with group-bys, `keys list`, `projects list`,
  `keys add`, and /_proxy/usage, /_proxy/metrics, /_proxy/health.

Beyond SDK traffic (issue 20), each proxy also gets, on raw sockets where a client library
would refuse: malformed requests with keys in the bad header lines and the request line (which
aiohttp's parser logs as reprs); keys in query strings (an Assistants run and a chat whose only
key is `?api-key=`); headers that are not valid UTF-8 (a key with such bytes, and such a decoy
beside a real key); and a decoy key named in `Connection`. Both proxies log at DEBUG.

No API key may appear there whole or in part (any 8-character run of its secret part: see
tests/fault/leaks.py), nor the admin token or the HMAC secret. The walk is not vacuous: it also
checks that the texts hold what they should (each kind of row, each key's hint, access lines).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from proxy.db.engine import BEGIN_OPTION
from tests.e2e.fake_upstream import FakeUpstream
from tests.fault.harness import ProxyProcess, read_engine, wait_until
from tests.fault.leaks import dump_tables, find_leaks
from tests.fault.outcome import make_keys

OPENAI_KEY, LEGACY_SUFFIX, AZURE_KEY = make_keys(3, seed=3)
QUERY_KEY, MALFORMED_KEY, BYTES_KEY, DECOY_KEY, BYTES_DECOY = make_keys(5, seed=20)
LEGACY_KEY = "sk-" + LEGACY_SUFFIX.removeprefix("sk-proj-")
AZURE_KEY = AZURE_KEY.removeprefix("sk-proj-")  # Azure keys have no prefix
ADMIN_TOKEN = "walk-admin-token-QRSTUVWXYZqrstuvwxyz"
HMAC_SECRET = "walk-hmac-secret-GHIJKLMNOPghijklmnop"
# A key with bytes that are not UTF-8 is searched for as the text on either side of them.
BYTES_AT = 24
SECRETS = [
    OPENAI_KEY,
    LEGACY_KEY,
    AZURE_KEY,
    ADMIN_TOKEN,
    HMAC_SECRET,
    QUERY_KEY,
    MALFORMED_KEY,
    BYTES_KEY[:BYTES_AT],
    BYTES_KEY[BYTES_AT:],
    DECOY_KEY,
    BYTES_DECOY,
]
AZURE_VERSION = "2024-05-01-preview"
_ENV = {
    "USAGE_PROXY_KEY_SECRET": HMAC_SECRET,
    "USAGE_PROXY_ADMIN_TOKEN": ADMIN_TOKEN,
    "USAGE_PROXY_COLLECTOR_POLL_INTERVAL": "0.05",
    "USAGE_PROXY_COLLECTOR_RETRY_BASE": "0.05",
    "USAGE_PROXY_COLLECTOR_MAX_BACKOFF": "0.5",
    "USAGE_PROXY_CHAT_INCLUDE_USAGE": "true",
}
_DEBUG = {"USAGE_PROXY_LOG_LEVEL": "DEBUG"}
KINDS = ("assistants.run", "chat.completion", "embedding", "response")

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


async def _cli(*args: str, stdin: bytes = b"") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_PROXY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, **_ENV},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode == 0, (args, err.decode())
    return out.decode() + err.decode()


async def _traffic(proxy: ProxyProcess, key: str) -> None:
    """One of each kind of request through `proxy` with `key`."""
    c = openai.AsyncOpenAI(api_key=key, base_url=proxy.url + "/v1", max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    await c.chat.completions.create(model="gpt-4o-mini", messages=hi)
    async for _ in await c.chat.completions.create(model="gpt-4o-mini", messages=hi, stream=True):
        pass
    await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    await c.responses.create(model="gpt-4.1", input="hi")
    async for _ in await c.responses.create(model="gpt-4.1", input="hi", stream=True):
        pass
    background = await c.responses.create(model="gpt-4.1", input="hi", background=True)
    statuses = [(await c.responses.retrieve(background.id)).status for _ in range(2)]
    assert statuses[-1] == "completed", statuses  # the fake completes it on the second poll
    assistant = await c.beta.assistants.create(model="gpt-4o", metadata={"usage": "no"})
    await c.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": hi}, poll_interval_ms=5
    )
    thread = await c.beta.threads.create(messages=hi)
    async for _ in await c.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=assistant.id, stream=True
    ):
        pass
    with pytest.raises(openai.RateLimitError):
        await c.get("/ratelimited", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        await c.get("/no-such-endpoint", cast_to=object)
    await c.close()


async def _azure_traffic(proxy: ProxyProcess) -> None:
    c = openai.AsyncAzureOpenAI(
        api_key=AZURE_KEY, azure_endpoint=proxy.url, api_version=AZURE_VERSION, max_retries=0
    )
    hi = [{"role": "user", "content": "hi"}]
    await c.chat.completions.create(model="gpt4o-deployment", messages=hi)
    await c.embeddings.create(model="embedding-deployment", input="a")
    assistant = await c.beta.assistants.create(model="gpt-4o", metadata={"usage": "no"})
    await c.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": hi}, poll_interval_ms=5
    )
    await c.close()


async def _raw(proxy: ProxyProcess, head: bytes, body: bytes = b"") -> int:
    """Send `head` (request line and header lines, CRLF-separated) and `body` as they are;
    the status answered (the proxy's, or the upstream's through it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        writer.write(head + b"\r\n" + length + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1])


CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
POST_CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"


async def _hostile_traffic(proxy: ProxyProcess) -> None:
    """Requests no SDK would send: see the module docstring."""
    bad = MALFORMED_KEY.encode()
    malformed = [
        b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer\x01" + bad,
        b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer\x0b" + bad,
        b"GET /v1/models HTTP/1.1\r\napi-key: \x01" + bad,
        b"GET /v1/models HTTP/1.1\r\nX-Whatever: " + bad + b"\x7f\x01",
        b"GET /v1/models HTTP/1.1\r\nAuthorization Bearer " + bad,  # no colon
        b"GET /v1/models?key=" + bad + b"\x7f HTTP/1.1\r\nHost: x",
        b"GET /v1/models?api-key=" + bad + b" HTTP/1.1 extra\r\nHost: x",
    ]
    for head in malformed:
        assert await _raw(proxy, head) == 400, head

    # The only key in the query string, on every call of an Assistants run and a chat.
    async def no_header(request: Any) -> None:
        del request.headers["Authorization"]

    c = openai.AsyncOpenAI(
        api_key="unused",
        base_url=proxy.url + "/v1",
        default_query={"api-key": QUERY_KEY},
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [no_header]}),
    )
    hi = [{"role": "user", "content": "hi"}]
    await c.chat.completions.create(model="gpt-4o-mini", messages=hi)
    assistant = await c.beta.assistants.create(model="gpt-4o", metadata={"usage": "no"})
    await c.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": hi}, poll_interval_ms=5
    )
    await c.close()
    # Not UTF-8: a key with such bytes, and such a decoy beside a real key.
    raw_key = BYTES_KEY[:BYTES_AT].encode() + b"\xff\xfe" + BYTES_KEY[BYTES_AT:].encode()
    assert await _raw(proxy, POST_CHAT + b"\r\nAuthorization: Bearer " + raw_key, CHAT) == 200
    decoy = b"\r\napi-key: \xff" + BYTES_DECOY.encode()
    real = b"\r\nAuthorization: Bearer " + OPENAI_KEY.encode()
    # Two different keys: refused before anything is sent, and never logged.
    assert await _raw(proxy, POST_CHAT + real + decoy, CHAT) == 400
    # A decoy named in Connection, beside the real key: neither forwarded nor billed.
    decoy = b"\r\nAuthorization: Bearer " + DECOY_KEY.encode() + b"\r\nConnection: Authorization"
    assert await _raw(proxy, POST_CHAT + b"\r\napi-key: " + AZURE_KEY.encode() + decoy, CHAT) == 200


async def _admin(proxy: ProxyProcess) -> dict[str, str]:
    out = {}
    paths = [
        "/_proxy/health",
        "/_proxy/metrics",
        "/_proxy/usage?format=json",
        "/_proxy/usage?format=csv",
        "/_proxy/usage?format=csv&group_by=key,team",
    ]
    async with aiohttp.ClientSession() as http:
        for path in paths:
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with http.get(proxy.url + path, headers=auth) as resp:
                assert resp.status == 200, (path, resp.status)
                out[f"{proxy.name} {path}"] = await resp.text()
        # A client that sends its API key as the admin token: refused, and not logged.
        wrong = {"Authorization": f"Bearer {OPENAI_KEY}"}
        async with http.get(proxy.url + "/_proxy/usage", headers=wrong) as resp:
            assert resp.status == 401
            out[f"{proxy.name} refused"] = await resp.text()
    return out


async def _reports(url: str) -> dict[str, str]:
    commands = [
        ["report", "--format", fmt, *extra]
        for fmt in ("table", "csv", "json")
        for extra in ([], ["--group-by", "team,key,model"], ["--group-by", "kind,assistant,tag"])
    ]
    commands += [["report", "--group-by", g] for g in ("project", "day", "month")]
    commands += [["keys", "list", "--format", f] for f in ("table", "csv", "json")]
    commands += [["projects", "list", "--format", "json"]]
    outputs = await asyncio.gather(*(_cli(*cmd, "--database-url", url) for cmd in commands))
    return {" ".join(cmd): out for cmd, out in zip(commands, outputs, strict=True)}


async def _raw_database(url: str) -> dict[str, str]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
        return {f"file {p.name}": p.read_bytes().decode("latin-1") for p in files}
    schema = parsed.query["schema"]
    proc = await asyncio.create_subprocess_exec(
        "pg_dump",
        "-h",
        parsed.host or "127.0.0.1",
        "-p",
        str(parsed.port or 5432),
        "-U",
        parsed.username or "postgres",
        "-n",
        str(schema),
        parsed.database or "test",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return {"pg_dump": out.decode()}


async def _recorded_kinds(url: str) -> set[str]:
    engine = read_engine(url)
    try:
        async with engine.connect() as conn:
            # A read: it must not queue for SQLite's write lock behind the proxies' writes.
            await conn.execution_options(**{BEGIN_OPTION: "DEFERRED"})
            pending = await conn.scalar(text("SELECT count(*) FROM collection_jobs"))
            kinds = (await conn.execute(text("SELECT DISTINCT kind FROM usage_records"))).all()
    finally:
        await engine.dispose()
    return {k for (k,) in kinds} if not pending else set()


async def test_no_secret_in_any_table_log_line_or_report(
    db_url: str, tmp_path: Path, fake: FakeUpstream
) -> None:
    fake.faults.echo_key = True
    fake.faults.fetch_statuses = [429, 500, 401]  # the collector meets each, key echoed
    fake.faults.retry_after = "0.1"
    texts = {
        "keys add": await _cli("keys", "add", "--team", "walk", "--database-url", db_url,
                               stdin=OPENAI_KEY.encode() + b"\n"),
        "projects add": await _cli("projects", "add", "proj_walk", "--team", "walk",
                                   "--database-url", db_url),
    }  # fmt: skip
    proxies = [
        ProxyProcess("text", fake.url, db_url, tmp_path, env={**_ENV, **_DEBUG}),
        ProxyProcess(
            "json", fake.url, db_url, tmp_path,
            env={**_ENV, **_DEBUG, "USAGE_PROXY_LOG_FORMAT": "json"},
        ),
    ]  # fmt: skip
    await asyncio.gather(*(p.start() for p in proxies))
    try:
        await _traffic(proxies[0], OPENAI_KEY)
        await _traffic(proxies[1], LEGACY_KEY)
        await _azure_traffic(proxies[1])
        for proxy in proxies:
            await _hostile_traffic(proxy)
        await wait_until(
            lambda: _kinds_all_there(db_url), 30, interval=0.1, what="every kind recorded"
        )
        for proxy in proxies:
            texts.update(await _admin(proxy))
    finally:
        for proxy in proxies:
            assert await proxy.stop() == 0, proxy.tail()
    texts.update({f"log {p.name}": p.logs() for p in proxies})
    engine = read_engine(db_url)
    try:
        texts.update(await dump_tables(engine))
    finally:
        await engine.dispose()
    texts.update(await _raw_database(db_url))
    texts.update(await _reports(db_url))

    leaks = find_leaks(texts, SECRETS)
    assert [str(leak) for leak in leaks] == []
    # Not vacuous: the walk read what it should have.
    everything = "\n".join(texts.values())
    for key in (OPENAI_KEY, LEGACY_KEY):
        assert f"sk-...{key[-4:]}" in texts["table usage_records"], key[-4:]
    assert f"...{AZURE_KEY[-4:]}" in texts["table usage_records"]
    for key in (QUERY_KEY, BYTES_KEY):  # the hostile traffic was recorded, each by its key
        assert f"sk-...{key[-4:]}" in texts["table usage_records"], key[-4:]
    assert f"sk-...{DECOY_KEY[-4:]}" not in everything  # never forwarded, never billed
    assert "Error handling request" in texts["log text"] + texts["log json"]
    assert all(kind in texts["table usage_records"] for kind in KINDS)
    assert "POST /v1/chat/completions 200" in texts["log text"]
    assert '"path": "/v1/chat/completions"' in texts["log json"]
    assert "429" in everything and "401" in everything  # the collector met the echoing errors
    assert len(texts) > 30


async def _kinds_all_there(url: str) -> bool:
    return set(KINDS) <= await _recorded_kinds(url)
