"""Key and project mappings apply at once (issue 15, point 3), end to end on both backends: two
replicas on one database, each having cached a team, use the mapping that `usage-proxy keys
add` (or `projects add`, `keys remove`) wrote for requests sent within 2 s of it returning."""

from __future__ import annotations

import asyncio
import io
import sys
import time

import pytest

from proxy import cli
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for
from tests.e2e.test_events import rows, settle
from tests.fake_keys import fake_key

KEY = fake_key("mapping", "7777")
MESSAGES = [{"role": "user", "content": "hi"}]
APPLIES_WITHIN = 2.0


@pytest.fixture
async def replicas(db_url: str, upstream, start_proxy) -> list[RunningProxy]:
    settings = Settings(upstream=upstream.url, database_url=db_url, key_secret="shared")
    return [await start_proxy(settings), await start_proxy(settings)]


async def cli_with_stdin(text: str, *argv: str) -> int:
    def run() -> int:
        saved, sys.stdin = sys.stdin, io.StringIO(text)
        try:
            return cli.main(list(argv))
        finally:
            sys.stdin = saved

    return await asyncio.to_thread(run)


async def teams_seen(sm, replicas: list[RunningProxy], headers: dict[str, str]) -> list[str]:
    """One request through each replica; the team each was recorded under."""
    ids = []
    for proxy in replicas:
        client = client_for(proxy, KEY, default_headers=headers)
        ids.append((await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)).id)
    for proxy in replicas:
        await settle(proxy)
    teams = {r["object_id"]: r["team"] for r in await rows(sm)}
    return [teams[i] for i in ids]


async def sent_until(sm, replicas, headers: dict[str, str], team: str) -> float:
    """Seconds from now until a request is sent that every replica records under `team`."""
    start = time.monotonic()
    while True:
        sent = time.monotonic() - start
        if await teams_seen(sm, replicas, headers) == [team, team]:
            return sent
        assert sent < 10, f"still not {team!r} after {sent:.1f} s"
        await asyncio.sleep(0.05)


async def test_mappings_apply_on_every_replica_within_2_seconds(
    replicas, db_url: str, sm, monkeypatch
):
    monkeypatch.setenv("USAGE_PROXY_KEY_SECRET", "shared")  # the CLI fingerprints as they do
    project = {"OpenAI-Project": "proj_watch"}
    assert await teams_seen(sm, replicas, project) == ["unassigned", "unassigned"]  # cached

    code = await cli_with_stdin("", "projects", "add", "proj_watch", "--team", "blue",
                                "--database-url", db_url)  # fmt: skip
    assert code == 0
    assert await sent_until(sm, replicas, project, "blue") < APPLIES_WITHIN

    code = await cli_with_stdin(KEY + "\n", "keys", "add", "--team", "red",
                                "--database-url", db_url)  # fmt: skip
    assert code == 0
    assert await sent_until(sm, replicas, project, "red") < APPLIES_WITHIN  # the key's wins

    code = await cli_with_stdin(KEY + "\n", "keys", "remove", "--database-url", db_url)
    assert code == 0
    assert await sent_until(sm, replicas, project, "blue") < APPLIES_WITHIN

    code = await cli_with_stdin("", "projects", "remove", "proj_watch", "--database-url", db_url)
    assert code == 0
    assert await sent_until(sm, replicas, project, "unassigned") < APPLIES_WITHIN
