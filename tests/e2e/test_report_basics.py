"""Small things a new user hit (issue 15, point 7), end to end on both backends: an empty
report still totals, `--kind` is checked and listed, `--month` wants two digits, `--group-by
assistant` names the assistant the proxy saw, and occurred_at has one precision on every kind."""

from __future__ import annotations

import json

import openai
import pytest

from proxy import cli
from proxy.reports.query import KINDS
from tests.e2e.conftest import RunningProxy, wait_for
from tests.e2e.test_assistants import QUESTION, SM, one_row, settings_for, usage_rows
from tests.e2e.test_events import settle
from tests.e2e.test_unpriced import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def proxy(db_url: str, upstream, start_proxy) -> RunningProxy:
    # db_url first: the proxy is stopped before the database goes away.
    return await start_proxy(settings_for(upstream, db_url))


@pytest.mark.parametrize("group_by", [[], ["--group-by", "team"]])
def test_an_empty_report_prints_a_totals_line(capsys, db_url: str, group_by: list[str]):
    code = cli.main(["report", "--database-url", db_url, "--month", "2026-11", *group_by])
    out, err = capsys.readouterr()
    assert code == 0, err
    last = out.splitlines()[-1].split()
    assert last[0] == "total" and set(last[1:]) == {"0"}, out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kind", "run"], "unknown kind 'run' (one of assistants.run, response,"),
        (["--month", "2026-1"], "'2026-1' is not a month (YYYY-MM)"),
        (["--month", "2026-13"], "'2026-13' is not a month (YYYY-MM)"),
    ],
)
def test_bad_report_options_are_one_line_and_exit_code_2(capsys, db_url, argv, message):
    code = cli.main(["report", "--database-url", db_url, *argv])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_kinds_are_listed_in_help(capsys):
    cli.main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"one of {', '.join(KINDS)}" in text


async def test_each_kind_filters_and_group_by_assistant_shows_its_name(
    proxy: RunningProxy, db_url: str, sm: SM, capsys
):
    async with openai.AsyncOpenAI(
        api_key="sk-test-" + "x" * 40, base_url=proxy.base_url, max_retries=0
    ) as client:
        assistant = await client.beta.assistants.create(
            model="gpt-4o", name="Tax helper", metadata={"usage": "yes"}
        )
        thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
        run = await client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id
        )
        await one_row(sm, run.id)
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        await client.embeddings.create(model="text-embedding-3-small", input="hi")
        # A code interpreter call: its container's session becomes a row of its own.
        await client.responses.create(
            model="gpt-4.1", input="hi", metadata={"fake_tools": "code_interpreter"}
        )
        await settle(proxy)

    async def all_kinds():
        found = await usage_rows(sm)
        return found if any(r["kind"] == "container" for r in found) else None

    await wait_for(all_kinds)
    # occurred_at: whole seconds on every kind, whether from the API's times or the clock.
    rows = await usage_rows(sm)
    traffic = [k for k in KINDS if k != "adjustment"]  # adjustments come from reconcile
    assert sorted(r["kind"] for r in rows) == sorted(traffic)
    assert [r["occurred_at"].microsecond for r in rows] == [0] * len(rows)

    for kind in traffic:
        code, out, err = await run_cli(
            capsys, "report", "--database-url", db_url, "--kind", kind, "--format", "json"
        )
        assert code == 0, err
        assert [e["kind"] for e in json.loads(out)] == [kind]

    code, out, err = await run_cli(
        capsys, "report", "--database-url", db_url, "--group-by", "assistant", "--format", "json"
    )
    groups = {g["assistant_id"]: g for g in json.loads(out)}
    assert groups[assistant.id]["assistant_name"] == "Tax helper"
    assert groups[None]["assistant_name"] is None
