"""Unpriced models are visible (issue 15, point 2), end to end on both backends: the openai SDK
through the proxy with a model no table prices; the row's cost is null, reports say priced =
false and total the unpriced events, the metric counts them, the log names the model once,
`prices missing` lists it, and `reprice` prices it once a price file has it, with an audit
row."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy import cli
from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_events import metric, rows, settle

SM = async_sessionmaker[AsyncSession]
Start = Callable[..., Awaitable[RunningProxy]]
UNPRICED = "acme-llm-1"
MESSAGES = [{"role": "user", "content": "Say hello."}]


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command line in a thread: it runs its own event loop."""
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
async def proxy(db_url: str, upstream: FakeUpstream, start_proxy: Start) -> RunningProxy:
    settings = Settings(upstream=upstream.url, database_url=db_url, key_secret="s")
    return await start_proxy(settings)


async def test_an_unpriced_model_is_visible_everywhere_and_can_be_repriced(
    proxy: RunningProxy,
    db_url: str,
    sm: SM,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
):
    client = client_for(proxy)
    with caplog.at_level(logging.WARNING, logger="proxy.accounting.pricing"):
        for _ in range(2):
            await client.chat.completions.create(model=UNPRICED, messages=MESSAGES)
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        await wait_for(lambda: _count(sm, 3))
        await settle(proxy)
    recorded = {r["object_id"]: r for r in await rows(sm)}
    unpriced = [r for r in recorded.values() if r["model"] == UNPRICED]
    priced = [r for r in recorded.values() if r["model"] == "gpt-4o-mini"]
    assert [r["cost_usd"] for r in unpriced] == [None, None]
    assert priced[0]["cost_usd"] > 0
    assert metric(proxy, "usage_proxy_unpriced_events_total", model=UNPRICED) == 2
    assert metric(proxy, "usage_proxy_unpriced_events_total", model="gpt-4o-mini") == 0
    warnings = [r for r in caplog.records if UNPRICED in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]

    # Reports: priced = false per event, unpriced totals per group, a line under the table.
    code, out, err = await run_cli(capsys, "report", "--database-url", db_url, "--format", "json")
    assert code == 0, err
    events = json.loads(out, parse_float=Decimal)
    assert sorted((e["model"], e["priced"], e["cost_usd"] is None) for e in events) == [
        (UNPRICED, False, True),
        (UNPRICED, False, True),
        ("gpt-4o-mini", True, False),
    ]
    code, out, err = await run_cli(
        capsys, "report", "--database-url", db_url, "--group-by", "model", "--format", "json"
    )
    groups = {g["model"]: g for g in json.loads(out, parse_float=Decimal)}
    tokens = sum(r["total_tokens"] for r in unpriced)
    assert groups[UNPRICED] | {"cost_usd": None} == groups[UNPRICED]
    assert (groups[UNPRICED]["unpriced_events"], groups[UNPRICED]["unpriced_tokens"]) == (2, tokens)
    assert groups[UNPRICED]["priced"] is False and groups["gpt-4o-mini"]["priced"] is True
    code, out, err = await run_cli(
        capsys, "report", "--database-url", db_url, "--group-by", "model", "--format", "csv"
    )
    assert out.splitlines()[0].endswith(",cost_usd,unpriced_events,unpriced_tokens,priced")
    code, out, err = await run_cli(capsys, "report", "--database-url", db_url)
    assert f"unpriced: 2 events, {tokens:,} tokens" in out.splitlines()[-1]

    # prices missing names the model, what it lacks, and its counts.
    code, out, err = await run_cli(
        capsys, "prices", "missing", "--database-url", db_url, "--format", "json"
    )
    assert code == 0, err
    [missing] = json.loads(out)
    assert (missing["model"], missing["missing"], missing["events"]) == (UNPRICED, "model", 2)

    # A price added later applies to the past rows, once, with an audit row.
    prices = tmp_path / "prices.toml"
    prices.write_text(
        f'[[models]]\nmodel = "{UNPRICED}"\neffective_from = 2020-01-01\n'
        'input = "1.00"\noutput = "2.00"\n'
    )
    args = ["--database-url", db_url, "--since", "2020-01-01", "--pricing-file", str(prices)]
    code, out, err = await run_cli(capsys, "reprice", *args, "--dry-run")
    assert (code, out.split(",")[0]) == (0, "would reprice 2 rows"), err
    assert [r["cost_usd"] for r in await rows(sm) if r["model"] == UNPRICED] == [None, None]
    code, out, err = await run_cli(capsys, "reprice", *args, "--model", UNPRICED)
    assert (code, out.split(",")[0]) == (0, "repriced 2 rows"), err
    after = [r for r in await rows(sm) if r["model"] == UNPRICED]
    expected = [
        (Decimal(r["prompt_tokens"]) * 1 + Decimal(r["completion_tokens"]) * 2) / 1_000_000
        for r in after
    ]
    assert [r["cost_usd"] for r in after] == expected
    code, out, err = await run_cli(capsys, "reprice", *args)
    assert out.startswith("repriced 0 rows"), out
    code, out, err = await run_cli(capsys, "audit", "--database-url", db_url, "--format", "json")
    [entry] = json.loads(out, parse_float=Decimal)
    assert (entry["action"], entry["rows"], entry["cost_usd"]) == ("reprice", 2, sum(expected))
    assert json.loads(entry["detail"])["model"] == UNPRICED
    code, out, err = await run_cli(capsys, "prices", "missing", "--database-url", db_url)
    assert UNPRICED not in out


async def _count(sm: SM, n: int) -> bool:
    return len(await rows(sm)) >= n


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reprice"], "--since"),
        (["reprice", "--since", "yesterday"], "not an ISO date"),
        (["reprice", "--since", "2026-12-02", "--until", "2026-12-01"], "before --until"),
        (["prices", "missing", "--until", "2026-13-01"], "not an ISO date"),
        (["prices", "nothing"], "invalid choice"),
        (["audit", "--since", "soon"], "not an ISO date"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, db_url: str, argv: list[str], message):
    code = cli.main([*argv, "--database-url", db_url])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_a_bad_pricing_file_is_one_line_and_exit_code_2(capsys, db_url: str, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]]\nmodel = 3\n")
    argv = ["reprice", "--since", "2026-01-01", "--pricing-file", str(bad)]
    code = cli.main([*argv, "--database-url", db_url])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bad.toml" in err, err
