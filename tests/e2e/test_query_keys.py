"""A key in the query string (issue 20): `?api-key=sk-...` is the credential the request used,
so it is attributed and the collector fetches with it, from memory only; nothing stored (the
job's api_query above all) and nothing logged carries it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import event

from proxy.app import ACCOUNTING
from proxy.keys import fingerprint
from tests.e2e.conftest import RunningProxy
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import SECRET, finished_run, ledger, one_row, settings_for
from tests.fake_keys import fake_key

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

StartProxy = Callable[..., Awaitable[RunningProxy]]
KEY = fake_key("inquery", "qqqq")


@pytest.fixture(autouse=True)
def _setup(db_url: str, upstream: FakeUpstream) -> None:
    """The database before the proxy, so torn down after it."""
    upstream.require_beta = True


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every statement and its parameters the proxies' engines send, as text."""
    seen: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append(f"{statement} {params!r}")

    event.listen(_engine_class(), "before_cursor_execute", on_execute)
    yield seen
    event.remove(_engine_class(), "before_cursor_execute", on_execute)


def _engine_class() -> Any:
    from sqlalchemy.engine import Engine

    return Engine


@pytest.mark.parametrize("name", ["api-key", "api_key", "key"])
async def test_a_key_in_the_query_is_attributed_fetched_with_and_never_stored(
    upstream: FakeUpstream,
    start_proxy: StartProxy,
    db_url: str,
    sm,
    statements: list[str],
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    caplog.set_level("DEBUG")
    proxy = await start_proxy(settings_for(upstream, db_url))
    query = {name: KEY, "api-version": "2024-05-01-preview"}
    if name != "api-key":  # the fake upstream takes `api-key` only: the others ride along
        query["api-key"] = KEY

    async def no_header(request: Any) -> None:
        del request.headers["Authorization"]  # the query carries the only key

    client = openai.AsyncOpenAI(
        api_key="unused",
        base_url=proxy.base_url,
        default_query=query,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [no_header]}),
    )
    async with client:
        run = await finished_run(client, usage="no")
        row = await one_row(sm, run.id, timeout=30)
    assert row["key_fingerprint"] == fingerprint(KEY, SECRET.encode())
    assert row["usage_source"] == "estimated"
    # Fetched with the key from memory, and the query that was not a key kept.
    assert {(kind, key) for kind, _, key in ledger(upstream, run.id)} == {
        ("steps", KEY),
        ("messages", KEY),
    }
    fetched = [r for r in upstream.requests if r["path"].endswith("/steps")]
    assert fetched and all(r["query"]["api-version"] == "2024-05-01-preview" for r in fetched)
    # Nothing written to the database, and nothing logged, carries the key.
    assert any("collection_jobs" in s and "api-version" in s for s in statements)
    assert [s for s in statements if KEY in s] == []
    # The proxy's side (its own loggers, aiohttp's, the database drivers'), before any
    # redacting filter: the client's own loggers see the URL it sent, of course.
    client_side = ("openai", "httpx", "httpcore")
    served = [r.getMessage() for r in caplog.records if not r.name.startswith(client_side)]
    assert served and [m for m in served if KEY in m] == []
    assert proxy.app[ACCOUNTING].collector is not None
