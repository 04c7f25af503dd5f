"""Responses built-in tools at today's rates (issue 15, point 5), end to end on both backends:
counts from the response's output items, web_search against web_search_preview on a
non-reasoning model, and code interpreter containers billed per minute (5-minute minimum) from
their lifetime in the Containers API, once across responses and replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from decimal import Decimal

import pytest
from sqlalchemy import select

from proxy.accounting.pricing import Usage, cost_of, load_price_table
from proxy.db.models import CollectionJob
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.test_events import rows
from tests.fake_keys import fake_key

CODE = {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}}
TOKENS = Usage(prompt_tokens=20, cached_tokens=4, completion_tokens=7)


def _settings(upstream, db_url: str) -> Settings:
    return Settings(
        upstream=upstream.url, database_url=db_url, key_secret="s", collector_poll_interval=0.05
    )


@pytest.fixture
async def proxy(db_url: str, upstream, start_proxy) -> RunningProxy:
    return await start_proxy(_settings(upstream, db_url))


def _container(minutes: float, *, memory: str | None = None, status: str = "expired") -> dict:
    created = int(time.time()) - 3600
    found = {
        "id": "x",
        "object": "container",
        "created_at": created,
        "last_active_at": created + int(minutes * 60),
        "status": status,
        "expires_after": {"anchor": "last_active_at", "minutes": 20},
    }
    return found | ({"memory_limit": memory} if memory else {})


async def _kind(sm, kind: str, n: int):
    found = await rows(sm, kind)
    return found if len(found) >= n else None


@pytest.mark.parametrize(
    ("model", "tools", "search", "session"),
    [
        ("gpt-4.1", [], "0.01", "0.03"),
        ("gpt-4.1", [{"type": "web_search"}, {"type": "code_interpreter"}], "0.01", "0.03"),
        ("gpt-4.1", [{"type": "web_search_preview"}, CODE], "0.025", "0.12"),
        ("o3", [{"type": "web_search_preview"}, CODE], "0.01", "0.12"),
    ],
)
async def test_web_search_and_container_rates(
    proxy: RunningProxy, sm, model: str, tools: list, search: str, session: str
):
    client = client_for(proxy)
    await client.responses.create(
        model=model,
        input="hi",
        tools=tools,
        metadata={"fake_tools": "code_interpreter,file_search"},
    )
    [row] = await wait_for(lambda: rows(sm, "response"))
    # Counted from the output items: one web search (the fake's), one file search, a container.
    # A preview call on a non-reasoning model is counted apart, at its own rate.
    preview = int(search == "0.025")
    assert (row["web_search_calls"], row["web_search_preview_calls"]) == (1 - preview, preview)
    assert row["file_search_calls"] == 1
    tokens = cost_of(load_price_table(), model, row["occurred_at"], TOKENS).total
    # The response pays its tokens and calls; the container's session is a row of its own.
    assert row["code_interpreter_sessions"] == 0
    assert row["cost_usd"] == tokens + Decimal(search) + Decimal("0.0025")
    [container] = await wait_for(lambda: _kind(sm, "container", 1))
    assert container["object_id"] == "cntr_" + model
    # The fake's container lived a minute: the 5-minute minimum, a quarter of a session.
    assert container["cost_usd"] == Decimal(session) / 4
    assert (container["conversation_id"], container["key_hint"]) == (None, row["key_hint"])


async def test_a_container_is_charged_once_across_replicas(db_url: str, upstream, start_proxy, sm):
    replicas = [await start_proxy(_settings(upstream, db_url)) for _ in range(2)]
    upstream.containers["cntr_gpt-4.1"] = _container(12)
    plan = {"fake_tools": "code_interpreter"}  # the fake's container: "cntr_" + the model
    ids = []
    for proxy in [*replicas, *replicas]:  # four responses, one container, two replicas
        response = await client_for(proxy).responses.create(
            model="gpt-4.1", input="hi", metadata=plan
        )
        ids.append(response.id)
    recorded = await wait_for(lambda: _kind(sm, "response", 4))
    assert sorted(r["object_id"] for r in recorded) == sorted(ids)
    assert [r["code_interpreter_calls"] for r in recorded] == [1, 1, 1, 1]
    for row in recorded:
        tokens = cost_of(load_price_table(), "gpt-4.1", row["occurred_at"], TOKENS).total
        assert row["cost_usd"] == tokens + Decimal("0.01")
    [session] = await wait_for(lambda: _kind(sm, "container", 1))
    # 12 minutes of a 1 GB container: 12/20 of $0.03, once.
    assert session["cost_usd"] == Decimal("0.018")
    assert (session["code_interpreter_sessions"], session["usage_source"]) == (1, "reported")
    await wait_for(lambda: _no_jobs(sm))
    assert len(await rows(sm, "container")) == 1


async def test_a_container_read_that_outlasts_leases_stays_with_its_claimer(
    db_url: str, upstream, start_proxy, sm
):
    """Container claims are renewed while held (proxy.accounting.sources.leases): a read that
    takes many leases is not taken over, and read again, by another replica holding the key."""
    # A lease of 1.5 s (renewed every 0.5 s): a loaded machine can stall a renewal by far more
    # than 0.3 s, which let the other replica take a claim its holder was still renewing.
    settings = dataclasses.replace(_settings(upstream, db_url), collector_lease=1.5)
    replicas = [await start_proxy(settings) for _ in range(2)]
    upstream.containers["cntr_gpt-4.1"] = _container(12)
    upstream.faults.container_gate = asyncio.Event()
    plan = {"fake_tools": "code_interpreter"}
    await client_for(replicas[0]).responses.create(model="gpt-4.1", input="hi", metadata=plan)
    await client_for(replicas[1]).models.list()  # the key is held there too: it could claim
    await wait_for(lambda: upstream.container_fetches)
    claims: list[tuple[str, dt.datetime]] = []

    async def renewed_a_few_times() -> bool:
        async with sm() as session:
            job = (await session.execute(select(CollectionJob))).scalar_one()
            claim = (job.claimed_by, job.claimed_until)
        if not claims or claims[-1] != claim:
            claims.append(claim)
        return len(claims) >= 6  # five renewals: over a lease and a half of reading

    await wait_for(renewed_a_few_times, timeout=30)
    assert len({who for who, _ in claims}) == 1, claims
    assert len(upstream.container_fetches) == 1
    upstream.faults.container_gate.set()
    [session] = await wait_for(lambda: _kind(sm, "container", 1))
    assert session["cost_usd"] == Decimal("0.018")
    await wait_for(lambda: _no_jobs(sm))
    assert len(upstream.container_fetches) == 1


async def test_a_stopped_replica_gives_its_container_job_back(
    db_url: str, upstream, start_proxy, sm
):
    """A clean stop mid-read gives the claim back: another replica settles the container at
    once, although the lease (long here) would hold it for minutes."""
    settings = dataclasses.replace(_settings(upstream, db_url), collector_lease=120)
    first = await start_proxy(settings)
    upstream.containers["cntr_gpt-4.1"] = _container(12)
    upstream.faults.container_gate = asyncio.Event()
    plan = {"fake_tools": "code_interpreter"}
    await client_for(first).responses.create(model="gpt-4.1", input="hi", metadata=plan)
    await wait_for(lambda: upstream.container_fetches)
    second = await start_proxy(settings)
    await client_for(second).models.list()
    await first.runner.cleanup()
    upstream.faults.container_gate.set()
    [session] = await wait_for(lambda: _kind(sm, "container", 1))
    assert session["cost_usd"] == Decimal("0.018")
    assert len(upstream.container_fetches) == 2  # the stopped read, then the second's


async def _no_jobs(sm) -> bool:
    return not await _jobs_left(sm)


async def _jobs_left(sm) -> int:
    from sqlalchemy import func, select

    from proxy.db.models import CollectionJob

    async with sm() as session:
        return await session.scalar(select(func.count()).select_from(CollectionJob.__table__))


@pytest.mark.parametrize(
    ("minutes", "memory", "cost"),
    [(12, "4g", "0.072"), (2, "16g", "0.12"), (0, None, "0.03")],
)
async def test_sessions_billed_by_the_minute_with_a_five_minute_minimum(
    proxy: RunningProxy, upstream, sm, minutes: int, memory: str | None, cost: str
):
    upstream.containers["cntr_gpt-4.1"] = _container(minutes, memory=memory)
    client = client_for(proxy)
    conversation = "conv_abc"
    await client.responses.create(
        model="gpt-4.1",
        input="hi",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
        metadata={"fake_tools": "code_interpreter"},
        extra_body={"conversation": conversation},
    )
    [row] = await wait_for(lambda: _kind(sm, "container", 1))
    # 4g 12 min: 12/20 x 0.12; 16g 2 min: the 5-minute minimum, 5/20 x 0.48; no memory_limit
    # (the request's, 1g by default) and no activity: 5/20 x ... at 1g, here 0 min -> 5 min.
    expected = Decimal(cost) if minutes else Decimal("0.03") * 5 / 20
    assert row["cost_usd"] == expected
    assert row["conversation_id"] == conversation
    assert upstream.container_fetches[0] == (row["object_id"], fake_key("default", "1234"))


async def test_an_auto_container_no_call_used(proxy: RunningProxy, upstream, sm):
    client = client_for(proxy)
    response = await client.responses.create(model="gpt-4.1", input="hi", tools=[CODE])
    [echoed] = [t for t in response.to_dict()["tools"] if t["type"] == "code_interpreter"]
    [row] = await wait_for(lambda: _kind(sm, "container", 1))
    assert row["object_id"] == echoed["container"]
    # No call ran in it: it lived no minute and pays the minimum, at the request's 4 GB.
    assert row["cost_usd"] == Decimal("0.12") * 5 / 20
    # The container can be settled before the response's own row is written: wait for it too.
    [resp] = await wait_for(lambda: _kind(sm, "response", 1))
    assert resp["code_interpreter_calls"] == 0


async def test_an_active_container_waits_for_its_expiry(proxy: RunningProxy, upstream, sm):
    now = int(time.time())
    upstream.containers["cntr_gpt-4.1"] = {
        "id": "cntr_gpt-4.1",
        "created_at": now - 600,
        "last_active_at": now,
        "status": "active",
        "expires_after": {"anchor": "last_active_at", "minutes": 20},
    }
    await client_for(proxy).responses.create(
        model="gpt-4.1", input="hi", metadata={"fake_tools": "code_interpreter"}
    )
    await wait_for(lambda: len(upstream.container_fetches) >= 1)
    await wait_for(lambda: _jobs_left(sm))
    assert await rows(sm, "container") == []  # still active: nothing billed yet


async def test_a_deleted_container_is_one_full_session_estimated(proxy: RunningProxy, upstream, sm):
    upstream.containers["cntr_gpt-4.1"] = None
    await client_for(proxy).responses.create(
        model="gpt-4.1", input="hi", metadata={"fake_tools": "code_interpreter"}
    )
    [row] = await wait_for(lambda: _kind(sm, "container", 1))
    assert (row["cost_usd"], row["usage_source"]) == (Decimal("0.03"), "estimated")


async def test_reprice_keeps_preview_calls_and_container_minutes_at_their_own_rates(
    proxy: RunningProxy, upstream, sm, db_url: str, capsys, tmp_path
):
    from tests.e2e.test_unpriced import run_cli

    upstream.containers["cntr_gpt-4.1"] = _container(12, memory="4g")
    await client_for(proxy).responses.create(
        model="gpt-4.1",
        input="hi",
        tools=[{"type": "web_search_preview"}, CODE],
        metadata={"fake_tools": "code_interpreter"},
    )
    [response] = await wait_for(lambda: _kind(sm, "response", 1))
    [container] = await wait_for(lambda: _kind(sm, "container", 1))
    assert (response["web_search_calls"], response["web_search_preview_calls"]) == (0, 1)
    assert container["cost_usd"] == Decimal("0.072")
    args = ["reprice", "--database-url", db_url, "--since", "2020-01-01", "--all"]
    # Priced again at the same prices: nothing changes (preview calls are not web searches,
    # a container is its minutes at its memory's rate).
    _, out, err = await run_cli(capsys, *args)
    assert out.startswith("repriced 0 rows"), (out, err)
    # A corrected preview price applies to the preview call alone.
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[[tools]]\ntool = "web_search_preview_call"\neffective_from = 2020-01-01\n'
        'per = 1000\nprice = "30.00"\n'
    )
    _, out, err = await run_cli(capsys, *args, "--pricing-file", str(prices))
    assert out.startswith("repriced 1 rows, +0.0050000000 USD"), (out, err)
    [after] = await rows(sm, "response")
    assert after["cost_usd"] == response["cost_usd"] + Decimal("0.005")
    assert [r["cost_usd"] for r in await rows(sm, "container")] == [Decimal("0.072")]
