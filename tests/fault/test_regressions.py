"""Regression tests for what the fault suite found broken, each on a real `usage-proxy serve`
process. Both need PostgreSQL: SQLite neither enforces column lengths nor stops readers while a
writer holds its lock. docs/fault-suite.md tells the cause and the suggested fix of each."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import text

from proxy.db import mappings
from proxy.db.engine import make_sessionmaker
from proxy.keys import fingerprint
from tests.conftest import PG_ENV
from tests.e2e.fake_upstream import FakeUpstream
from tests.fault.harness import ProxyProcess, TcpRelay, read_engine, wait_until
from tests.fault.outcome import make_keys
from tests.fault.scenario import KEY_SECRET, pg_schema

pytestmark = [
    pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"set {PG_ENV}"),
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]

KEY = make_keys(1, seed=11)[0]
TEAM = "team-regression"
_ENV = {
    "USAGE_PROXY_KEY_SECRET": KEY_SECRET,
    "USAGE_PROXY_COLLECTOR_POLL_INTERVAL": "0.05",
    "USAGE_PROXY_COLLECTOR_RETRY_BASE": "0.05",
    "USAGE_PROXY_COLLECTOR_MAX_BACKOFF": "0.5",
}


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_schema(os.environ[PG_ENV]) as url:
        engine = read_engine(url)
        await mappings.add_key_team(
            make_sessionmaker(engine), fingerprint(KEY, KEY_SECRET.encode()), None, TEAM
        )
        await engine.dispose()
        yield url


async def _rows(url: str) -> list[Any]:
    engine = read_engine(url)
    try:
        async with engine.connect() as conn:
            sql = "SELECT kind, object_id, team, model FROM usage_records ORDER BY id"
            return list((await conn.execute(text(sql))).all())
    finally:
        await engine.dispose()


async def _finished_run(client: openai.AsyncOpenAI) -> str:
    assistant = await client.beta.assistants.create(model="gpt-4o", metadata={"usage": "no"})
    run = await client.beta.threads.create_and_run(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "2+2?"}]}
    )
    for _ in range(100):
        run = await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
        if run.status == "completed":
            return run.id
    raise AssertionError("the run did not finish")


async def _chat(client: openai.AsyncOpenAI, model: str = "gpt-4o-mini") -> None:
    await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


async def test_usage_seen_while_the_database_is_down_is_billed_to_the_keys_team(
    fake: FakeUpstream, pg_url: str, tmp_path: Path
) -> None:
    relay = TcpRelay("127.0.0.1", 5432)
    await relay.start()
    proxy = ProxyProcess("p", fake.url, relay.url_for(pg_url), tmp_path, env=_ENV)
    await proxy.start()
    try:
        await relay.pause()  # a replica that had not seen the key before the outage
        client = openai.AsyncOpenAI(api_key=KEY, base_url=proxy.url + "/v1", max_retries=0)
        run_id = await _finished_run(client)
        await _chat(client)
        await client.embeddings.create(model="text-embedding-3-small", input="hi")
        await relay.resume()
        rows = await wait_until(
            lambda: _rows_when(pg_url, 3), 30, interval=0.1, what="the three usage rows"
        )
    finally:
        await proxy.stop()
        await relay.close()
    assert {r.object_id for r in rows if r.kind == "assistants.run"} == {run_id}
    assert [(r.kind, r.team) for r in rows if r.team != TEAM] == []


async def _rows_when(url: str, n: int) -> list[Any] | None:
    rows = await _rows(url)
    return rows if len(rows) >= n else None


async def test_a_row_the_database_refuses_does_not_stop_accounting(
    fake: FakeUpstream, pg_url: str, tmp_path: Path
) -> None:
    proxy = ProxyProcess("p", fake.url, pg_url, tmp_path, env=_ENV)
    await proxy.start()
    try:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=proxy.url + "/v1", max_retries=0)
        await _chat(client, model="m" * 200)  # the fake answers with the model it was asked
        await _chat(client)
        run_id = await _finished_run(client)
        # The over-long model name is clipped to its column, so all three are recorded.
        rows = await wait_until(
            # 30 s: the collector's first estimate loads the tokenizer, slow on a loaded host.
            lambda: _rows_when(pg_url, 3),
            30,
            interval=0.1,
            what="the later rows",
        )
    finally:
        await proxy.stop()
    assert {r.object_id for r in rows if r.kind == "assistants.run"} == {run_id}
    assert any(r.kind != "assistants.run" and r.model == "gpt-4o-mini" for r in rows)
    assert any(r.model == "m" * 128 for r in rows)


def test_refused_and_unreachable_database_errors_are_told_apart() -> None:
    from sqlalchemy import exc as sa_exc

    from proxy.db.errors import is_unavailable

    class _Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    def dbapi(cls: type[sa_exc.DBAPIError], state: str | None) -> sa_exc.DBAPIError:
        return cls("INSERT", {}, _Orig(state) if state else Exception("x"))

    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(TimeoutError())
    assert is_unavailable(dbapi(sa_exc.DBAPIError, "08006"))  # connection failure
    assert is_unavailable(dbapi(sa_exc.DBAPIError, "57P01"))  # admin shutdown
    assert is_unavailable(dbapi(sa_exc.DBAPIError, "40P01"))  # deadlock
    assert is_unavailable(dbapi(sa_exc.OperationalError, None))  # SQLite: database is locked
    assert not is_unavailable(dbapi(sa_exc.DBAPIError, "22001"))  # string too long
    assert not is_unavailable(dbapi(sa_exc.IntegrityError, "23505"))
    assert not is_unavailable(dbapi(sa_exc.ProgrammingError, None))
