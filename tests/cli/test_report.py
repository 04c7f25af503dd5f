from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.accounting.usage import UsageRow
from proxy.db import queries, run_intents, unseen_creates
from proxy.db.engine import make_engine, make_sessionmaker, sqlite_path
from proxy.db.migrate import current, head
from proxy.db.run_usage import record_usage
from tests.cli.runner import run
from tests.fake_keys import fake_key

BIN = Path(sys.executable).parent / "usage-proxy"
KEY = fake_key("cli", "9876")


async def _seed(url: str) -> None:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    try:
        for i, (team, day, cost) in enumerate(
            [("red", 1, "0.1"), ("red", 2, "0.2"), ("blue", 30, "0.0000000001"), ("red", 31, "5")]
        ):
            month = 12 if day == 31 else 11
            row = UsageRow(
                kind="assistant_run",
                object_id=f"run_{i}",
                occurred_at=dt.datetime(2026, month, 1 if day == 31 else day, tzinfo=dt.UTC),
                usage_source="estimated",
                team=team,
                model="gpt-4o",
                prompt_tokens=1000,
                completion_tokens=47,
                total_tokens=1047,
                cost_usd=Decimal(cost),
            )
            await record_usage(sm, row)
    finally:
        await engine.dispose()


@pytest.fixture
def seeded_url(db_url: str) -> str:
    asyncio.run(_seed(db_url))
    return db_url


def test_report_json_in_process(capsys, seeded_url: str):
    code, out, err = run(capsys, "report", "--database-url", seeded_url, "--format", "json")
    assert code == 0, err
    events = json.loads(out, parse_float=Decimal)
    assert [e["object_id"] for e in events] == ["run_0", "run_1", "run_2", "run_3"]
    assert set(events[0]) == set(queries.EVENT_COLUMNS)
    assert sum(e["cost_usd"] for e in events) == Decimal("5.3000000001")
    assert events[0]["occurred_at"] == "2026-11-01T00:00:00Z"


def test_report_month_groups_as_csv(capsys, seeded_url: str):
    argv = ["report", "--database-url", seeded_url, "--month", "2026-11"]
    code, out, err = run(capsys, *argv, "--group-by", "team,month", "--format", "csv")
    assert code == 0, err
    assert out.splitlines() == [
        "team,month,events,prompt_tokens,completion_tokens,total_tokens,"
        "code_interpreter_sessions,cost_usd,unpriced_events,unpriced_tokens,priced",
        "blue,2026-11,1,1000,47,1047,0,0.0000000001,0,0,true",
        "red,2026-11,2,2000,94,2094,0,0.3,0,0,true",
    ]


def test_report_table_with_since_and_until(capsys, seeded_url: str):
    argv = ["report", "--database-url", seeded_url, "--since", "2026-11-02", "--until", "2026-12"]
    code, out, err = run(capsys, *argv[:-2], "--until", "2026-12-01T00:00:00Z", "--group-by", "day")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["day", "events"]
    assert [line.split()[0] for line in lines[2:4]] == ["2026-11-02", "2026-11-30"]
    assert lines[-1].split()[:2] == ["total", "2"]


def test_report_subprocess_json(seeded_url: str, tmp_path: Path):
    done = subprocess.run(
        [str(BIN), "report", "--format", "json", "--database-url", seeded_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(json.loads(done.stdout)) == 4
    assert done.stderr == ""


def test_bad_arguments_subprocess_one_line(tmp_path: Path):
    done = subprocess.run(
        [str(BIN), "report", "--group-by", "colour"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("usage-proxy: error: ")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--group-by", "team,colour"],
        ["report", "--since", "yesterday"],
        ["report", "--until", "2026-02-30"],
        ["report", "--month", "2026-13"],
        ["report", "--month", "2026-11", "--since", "2026-11-01"],
        ["report", "--since", "2026-12-01", "--until", "2026-11-01"],
        ["report", "--format", "xml"],
        ["serve", "--port", "70000"],
        ["serve", "--port", "eighty"],
        ["serve", "--upstream", "ftp://example.com"],
        ["serve", "--upstream", "http://user:s3cret@example.com"],
        ["serve", "--key-secret", "s3cret"],
        ["frobnicate"],
        ["keys"],
        ["projects", "add", "proj_1"],
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(capsys, tmp_path: Path, argv: list[str]):
    url = f"sqlite+aiosqlite:///{tmp_path}/usage.db"
    code, out, err = run(capsys, *argv, "--database-url", url)
    assert code == 2, out + err
    assert err.startswith("usage-proxy: error: ") and err.count("\n") == 1, err
    assert "s3cret" not in err
    assert not (tmp_path / "usage.db").exists()


def test_unknown_config_key_exits_2(capsys, tmp_path: Path):
    config = tmp_path / "proxy.toml"
    config.write_text('colour = "red"\n')
    code, _, err = run(capsys, "report", "--config", str(config))
    assert code == 2
    assert "unknown key 'colour'" in err and err.count("\n") == 1


def test_report_on_a_missing_database_is_a_clear_error(capsys, tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path}/nothing/usage.db"
    code, _, err = run(capsys, "report", "--database-url", url)
    assert code == 2
    assert "does not exist" in err and "usage-proxy migrate" in err and err.count("\n") == 1
    assert not (tmp_path / "nothing").exists()


def test_report_on_an_unmigrated_database_is_a_clear_error(capsys, empty_db_url: str):
    if (path := sqlite_path(empty_db_url)) is not None:
        path.touch()
    code, _, err = run(capsys, "report", "--database-url", empty_db_url)
    assert code == 2
    assert "not migrated" in err and err.count("\n") == 1


def test_migrate_then_report(capsys, empty_db_url: str):
    code, out, err = run(capsys, "migrate", "--database-url", empty_db_url)
    assert code == 0, err
    assert head() in out
    assert asyncio.run(current(empty_db_url)) == head()
    code, out, err = run(capsys, "report", "--database-url", empty_db_url, "--format", "json")
    assert (code, out) == (0, "[]\n"), err


def test_an_unreachable_database_is_one_line_and_exit_1(capsys):
    url = "postgresql+asyncpg://postgres:pw-not-shown@127.0.0.1:1/test"
    code, _, err = run(capsys, "report", "--database-url", url)
    assert code == 1
    assert err.startswith("usage-proxy: error: ") and err.count("\n") == 1
    assert "pw-not-shown" not in err


async def _unseen_create(url: str, at: dt.datetime) -> None:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    try:
        intent = run_intents.NewIntent(thread_id=None, api_prefix="/v1", worker="h:1:b.s.x")
        intent_id = await run_intents.add(sm, intent, now=at)
        await unseen_creates.mark_unseen(sm, [intent_id], now=at)
    finally:
        await engine.dispose()


def test_report_says_on_stderr_when_create_and_runs_in_its_range_may_be_unrecorded(
    capsys, seeded_url: str
):
    asyncio.run(_unseen_create(seeded_url, dt.datetime(2026, 11, 15, 9, 30, tzinfo=dt.UTC)))
    code, out, err = run(capsys, "report", "--database-url", seeded_url, "--month", "2026-11")
    assert code == 0, err
    assert err == (
        "1 create-and-run(s) may be unrecorded since 2026-11-15T09:30:00+00:00 (replica killed"
        ' before its answer was seen); see docs/architecture.md, "Runs at any moment of a'
        ' crash"\n'
    )
    assert "may be unrecorded" not in out
    code, out, err = run(capsys, "report", "--database-url", seeded_url, "--month", "2026-12")
    assert code == 0 and err == ""
