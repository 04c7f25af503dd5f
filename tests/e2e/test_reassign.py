"""Re-attribution with an audit trail (issue 15, point 4), end to end on both backends: usage
recorded through the proxy with the openai SDK, moved with `usage-proxy reassign`, listed by
`usage-proxy audit`; reports over HTTP keep answering while it moves, and never see half a
move."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal

import aiohttp
import pytest

from proxy import cli
from proxy.accounting.usage import UsageRow
from proxy.db.usage import record_rows
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for
from tests.e2e.test_events import rows, settle
from tests.e2e.test_unpriced import run_cli
from tests.fake_keys import fake_key

KEY_A = fake_key("reassign", "aaaa")
KEY_B = fake_key("reassign", "bbbb")
MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"Authorization": "Bearer admin-t"}


@pytest.fixture
async def proxy(db_url: str, upstream, start_proxy) -> RunningProxy:
    settings = Settings(
        upstream=upstream.url, database_url=db_url, key_secret="s", admin_token="admin-t"
    )
    return await start_proxy(settings)


async def test_reassign_moves_rows_prints_money_and_audits(
    proxy: RunningProxy, db_url: str, sm, capsys
):
    for key, n in ((KEY_A, 3), (KEY_B, 2)):
        client = client_for(proxy, key)
        for _ in range(n):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await client_for(proxy, KEY_A).chat.completions.create(model="acme-llm-1", messages=MESSAGES)
    await settle(proxy)
    before = await rows(sm)
    a_rows = [r for r in before if r["key_hint"] == "sk-...aaaa"]
    money = sum(r["cost_usd"] or Decimal(0) for r in a_rows)
    base = ["reassign", "--database-url", db_url, "--key-hint", "sk-...aaaa", "--to-team", "red"]

    code, out, err = await run_cli(capsys, *base, "--dry-run")
    assert code == 0, err
    assert out == f"would move 4 rows (1 of them without a price), {money:f} USD, to team red\n"
    assert {r["team"] for r in await rows(sm)} == {"unassigned"}

    code, out, err = await run_cli(capsys, *base, "--since", "2020-01-01")
    assert out.startswith("moved 4 rows"), (out, err)
    after = {r["object_id"]: r["team"] for r in await rows(sm)}
    assert [after[r["object_id"]] for r in a_rows] == ["red"] * 4
    assert sorted(after.values()).count("unassigned") == 2

    code, out, err = await run_cli(capsys, *base)
    assert out.startswith("moved 0 rows"), out  # nothing left to move, nothing audited
    code, out, err = await run_cli(capsys, "audit", "--database-url", db_url, "--format", "json")
    [entry] = json.loads(out, parse_float=Decimal)
    assert (entry["action"], entry["rows"], entry["cost_usd"]) == ("reassign", 4, money)
    detail = json.loads(entry["detail"])
    assert (detail["key_hint"], detail["to_team"], detail["since"]) == (
        "sk-...aaaa",
        "red",
        "2020-01-01 00:00:00+00:00",
    )
    code, out, err = await run_cli(
        capsys, "audit", "--database-url", db_url, "--since", "2999-01-01"
    )
    assert "reassign" not in out

    # Moving a team back by --from-team, within a window that holds none of them: nothing.
    code, out, err = await run_cli(
        capsys, "reassign", "--database-url", db_url, "--from-team", "red", "--to-team", "blue",
        "--until", "2020-01-01",
    )  # fmt: skip
    assert out.startswith("moved 0 rows"), out


async def test_reports_keep_answering_during_a_reassign(proxy: RunningProxy, db_url: str, sm):
    n = 3000
    at = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC)
    seeded = [
        UsageRow(
            kind="chat.completion",
            object_id=f"c{i}",
            occurred_at=at,
            usage_source="reported",
            key_fingerprint="fp-big",
            key_hint="sk-...big1",
            model="gpt-4o-mini",
            prompt_tokens=10,
            total_tokens=10,
            cost_usd=Decimal("0.001"),
        )
        for i in range(n)
    ]
    await record_rows(sm, seeded)
    seen: list[dict[str, int]] = []
    argv = ["reassign", "--database-url", db_url, "--fingerprint", "fp-big", "--to-team", "red"]
    move = asyncio.create_task(asyncio.to_thread(cli.main, argv))
    async with aiohttp.ClientSession() as http:
        url = proxy.url + "/_proxy/usage?group_by=team"
        while True:
            done = move.done()
            async with http.get(url, headers=AUTH) as response:
                assert response.status == 200, await response.text()
                seen.append({g["team"]: g["events"] for g in await response.json()})
            if done:
                break
    assert await move == 0
    # Every report saw the rows all before or all after the move.
    assert all(s in ({"unassigned": n}, {"red": n}) for s in seen), seen
    assert seen[-1] == {"red": n}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to-team", "red"], "one of the arguments --key-hint --fingerprint"),
        (["--project", "p", "--from-team", "x", "--to-team", "red"], "not allowed with"),
        (["--project", "p"], "--to-team"),
        (["--project", "p", "--to-team", "red", "--since", "soon"], "not an ISO date"),
        (["--project", "p", "--to-team", " "], "must not be empty"),
        (
            ["--project", "p", "--to-team", "r", "--since", "2026-02-01", "--until", "2026-01-01"],
            "before --until",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, db_url: str, argv, message):
    code = cli.main(["reassign", "--database-url", db_url, *argv])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_an_ambiguous_key_hint_is_refused(capsys, db_url: str):
    async def seed() -> None:
        from proxy.db.engine import make_engine, make_sessionmaker

        engine = make_engine(db_url)
        at = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
        rows_ = [
            UsageRow(
                kind="embedding",
                object_id=f"e{fp}",
                occurred_at=at,
                usage_source="reported",
                key_fingerprint=fp,
                key_hint="sk-...same",
            )
            for fp in ("fp1", "fp2")
        ]
        try:
            await record_rows(make_sessionmaker(engine), rows_)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    argv = ["reassign", "--database-url", db_url, "--key-hint", "sk-...same", "--to-team", "r"]
    code = cli.main(argv)
    _, err = capsys.readouterr()
    assert code == 2 and "matches the rows of 2 keys" in err and len(err.splitlines()) == 1, err


async def test_reassign_moves_the_team_of_usage_still_being_collected(
    db_url: str, upstream, start_proxy, sm, capsys
):
    """A container still active is a collection job, not a row yet: the move reaches its
    job, and the row written once the container expired is the new team's."""
    import time

    from sqlalchemy import select, update

    from proxy.app import ACCOUNTING
    from proxy.db.models import CollectionJob
    from tests.e2e.conftest import wait_for

    settings = Settings(
        upstream=upstream.url, database_url=db_url, key_secret="s", collector_poll_interval=0.05
    )
    proxy = await start_proxy(settings)
    now = int(time.time())
    container = {
        "id": "cntr_gpt-4.1",
        "created_at": now - 600,
        "last_active_at": now,
        "status": "active",
        "expires_after": {"anchor": "last_active_at", "minutes": 20},
    }
    upstream.containers["cntr_gpt-4.1"] = container
    await client_for(proxy, KEY_A).responses.create(
        model="gpt-4.1", input="hi", metadata={"fake_tools": "code_interpreter"}
    )
    await wait_for(lambda: len(upstream.container_fetches) >= 1)

    async def job_team():
        async with sm() as session:
            return await session.scalar(select(CollectionJob.team))

    assert await wait_for(job_team) == "unassigned"
    base = ["reassign", "--database-url", db_url, "--key-hint", "sk-...aaaa", "--to-team", "red"]
    code, out, err = await run_cli(capsys, *base)
    assert code == 0, err
    assert out.startswith("moved 1 rows, ") and "and 1 still being collected," in out, out
    assert await job_team() == "red"

    upstream.containers["cntr_gpt-4.1"] = container | {"status": "expired"}
    async with sm.begin() as session:  # due now rather than at the container's expiry
        await session.execute(update(CollectionJob).values(next_attempt_at=dt.datetime.now(dt.UTC)))
    proxy.app[ACCOUNTING].containers.wake()

    async def container_rows():
        return [r for r in await rows(sm, "container")]

    [row] = await wait_for(container_rows)
    assert row["team"] == "red"
