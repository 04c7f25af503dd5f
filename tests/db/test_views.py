"""The views that are the public interface (README, "Querying the database"): their sums are
report's to the cent, their examples in the README run on both backends and agree with
`usage-proxy report`, and the read-only snippet and `usage-proxy sql` hold."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from proxy import cli
from proxy.accounting.usage import UsageRow
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.readonly import QueryError, run_readonly
from proxy.db.usage import record_rows

README = Path(__file__).resolve().parents[2] / "README.md"
CENT = Decimal("0.01")


def at(day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2026, 11 if day > 0 else 10, abs(day), hour, 0, 7, 123456, tzinfo=dt.UTC)


def row(i: int, team: str, when: dt.datetime, cost: str, **fields: Any) -> UsageRow:
    values: dict[str, Any] = {
        "kind": "chat.completion",
        "object_id": f"obj_{i}",
        "occurred_at": when,
        "usage_source": "reported",
        "team": team,
        "model": "gpt-4o",
        "key_hint": f"sk-...{team[:2]}{i % 2}1",
        "key_fingerprint": f"fp-{team}-{i % 2}",
        "prompt_tokens": 100 + i,
        "completion_tokens": 10 + i,
        "total_tokens": 110 + 2 * i,
        "cost_usd": Decimal(cost),
    }
    return UsageRow(**(values | fields))


ROWS = [
    row(1, "red", at(3), "0.0123456789"),
    row(2, "red", at(3, 23), "1.5000000001"),
    row(3, "blue", at(3), "0.0000000001"),
    row(
        4,
        "red",
        at(4),
        "2.3333333333",
        kind="assistants.run",
        assistant_id="asst_a",
        usage_source="estimated",
        estimator="runs2-00000000",
        code_interpreter_sessions=2,
    ),
    row(
        5,
        "blue",
        at(4),
        "0.75",
        kind="assistants.run",
        assistant_id="asst_b",
        code_interpreter_sessions=1,
    ),
    row(6, "blue", at(-31), "12.0000000005", kind="response", model="gpt-4.1"),
    row(7, "green", at(-31, 1), "0", kind="embedding", model="text-embedding-3-small"),
    row(
        8,
        "red",
        at(-30),
        "0.4",
        kind="assistants.run",
        assistant_id="asst_a",
        usage_source="estimated",
    ),
    # Recorded from the run alone after its collection gave up: not reported either.
    row(9, "blue", at(-30), "0.05", kind="assistants.run", usage_source="gave_up"),
]


@pytest.fixture
def seeded(db_url: str) -> str:
    async def seed() -> None:
        engine = make_engine(db_url)
        try:
            await record_rows(make_sessionmaker(engine), ROWS)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    return db_url


def query(url: str, statement: str) -> list[dict[str, Any]]:
    columns, rows = asyncio.run(run_readonly(url, statement))
    return [dict(zip(columns, r, strict=True)) for r in rows]


def report(capsys, url: str, *args: str) -> list[dict[str, Any]]:
    code = cli.main(["report", "--database-url", url, "--format", "json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def dollars(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(CENT)


def test_every_view_sums_to_the_reports_total_to_the_cent(capsys, seeded):
    events = report(capsys, seeded)  # one line per usage row
    expected = dollars(sum(Decimal(e["cost_usd"]) for e in events))
    assert expected == dollars(sum(r.cost_usd for r in ROWS))

    for view in ("usage", "usage_daily", "usage_monthly_team"):
        (got,) = query(seeded, f"SELECT sum(cost_usd) AS cost FROM {view}")
        assert dollars(got["cost"]) == expected, view
    (daily,) = query(seeded, "SELECT sum(events) AS n FROM usage_daily")
    assert daily["n"] == len(ROWS) == len(events)


def test_the_usage_view_carries_exact_money_days_and_utc_times(seeded):
    rows = {r["object_id"]: r for r in query(seeded, "SELECT * FROM usage")}
    sqlite = make_url(seeded).get_backend_name() == "sqlite"

    for source in ROWS:
        got = rows[source.object_id]
        assert Decimal(got["cost_usd_exact"]) == source.cost_usd
        assert dollars(got["cost_usd"]) == dollars(source.cost_usd)
        assert str(got["day"]) == source.occurred_at.date().isoformat()
        assert got["month"] == source.occurred_at.strftime("%Y-%m")
        assert (got["team"], got["key_hint"], got["kind"], got["assistant_id"]) == (
            source.team,
            source.key_hint,
            source.kind,
            source.assistant_id,
        )
        when = got["occurred_at"]
        if sqlite:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", when), when
            when = dt.datetime.fromisoformat(when)
        assert when == source.occurred_at
    assert rows["obj_4"]["estimator"] == "runs2-00000000"
    assert rows["obj_3"]["cost_usd_exact"] == "0.0000000001"


def readme_blocks(marker: str) -> dict[str, str]:
    found = re.findall(
        rf"<!-- {marker}: ([\w-]+) -->\n```sql\n(.*?)```", README.read_text(), flags=re.S
    )
    return dict(found)


EXAMPLES = readme_blocks("example")


def test_the_readme_has_the_five_examples():
    assert set(EXAMPLES) == {
        "monthly-chargeback",
        "top-assistants",
        "estimated-share",
        "code-interpreter-sessions",
        "day-per-key",
    }


def by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple, dict[str, Any]]:
    return {tuple(str(r[k]) for k in keys): r for r in rows}


def test_example_monthly_chargeback(capsys, seeded):
    got = by(query(seeded, EXAMPLES["monthly-chargeback"]), "month", "team")
    want = by(report(capsys, seeded, "--group-by", "month,team"), "month", "team")
    assert got.keys() == want.keys()
    for key, r in want.items():
        assert (got[key]["events"], dollars(got[key]["cost_usd"])) == (
            r["events"],
            dollars(r["cost_usd"]),
        )


def test_example_top_assistants(capsys, seeded):
    got = query(seeded, EXAMPLES["top-assistants"])
    want = [
        r
        for r in report(capsys, seeded, "--group-by", "assistant")
        if r["assistant_id"] is not None
    ]
    want.sort(key=lambda r: Decimal(r["cost_usd"]), reverse=True)
    assert [(r["assistant_id"], dollars(r["cost_usd"])) for r in got] == [
        (r["assistant_id"], dollars(r["cost_usd"])) for r in want
    ]
    assert [r["runs"] for r in got] == [r["events"] for r in want]


def test_example_estimated_share(seeded):
    got = by(query(seeded, EXAMPLES["estimated-share"]), "month", "team")
    for key in got:
        month, team = key
        rows = [r for r in ROWS if r.team == team and r.occurred_at.strftime("%Y-%m") == month]
        total = sum(r.cost_usd for r in rows)
        estimated = sum(r.cost_usd for r in rows if r.usage_source != "reported")
        share = Decimal(0) if total == 0 else estimated / total
        assert abs(Decimal(str(got[key]["estimated_share"])) - share) < Decimal("1e-9"), key
    assert Decimal(str(got[("2026-10", "red")]["estimated_share"])) == 1
    blue = Decimal(str(got[("2026-10", "blue")]["estimated_share"]))
    assert abs(blue - Decimal("0.05") / Decimal("12.0500000005")) < Decimal("1e-9")


def test_example_code_interpreter_sessions(capsys, seeded):
    got = by(query(seeded, EXAMPLES["code-interpreter-sessions"]), "team")
    want = by(report(capsys, seeded, "--group-by", "team"), "team")
    assert {k: r["sessions"] for k, r in got.items()} == {
        k: r["code_interpreter_sessions"] for k, r in want.items()
    }
    assert got[("red",)]["sessions"] == 2


def test_example_day_per_key(capsys, seeded):
    got = by(query(seeded, EXAMPLES["day-per-key"]), "key_hint")
    want = by(
        report(
            capsys, seeded, "--group-by", "key", "--since", "2026-11-03", "--until", "2026-11-04"
        ),
        "key_hint",
    )
    assert {k: dollars(r["cost_usd"]) for k, r in got.items()} == {
        k: dollars(r["cost_usd"]) for k, r in want.items()
    }
    assert len(got) == 3


def test_the_readonly_role_snippet_reads_the_views_and_nothing_else(seeded):
    if make_url(seeded).get_backend_name() != "postgresql":
        pytest.skip("roles are PostgreSQL's")
    (snippet,) = readme_blocks("snippet").values()
    schema = make_url(seeded).query["schema"]
    role = f"analyst_{uuid.uuid4().hex[:8]}"
    statements = [
        s.strip()
        for s in snippet.replace("usage_analyst", role)
        .replace("SCHEMA public", f'SCHEMA "{schema}"')
        .split(";")
        if s.strip()
    ]

    async def check() -> tuple[Any, str, str]:
        engine = make_engine(seeded)
        try:
            async with engine.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
                await conn.commit()
                try:
                    await conn.execute(text(f"SET ROLE {role}"))
                    total = (await conn.execute(text("SELECT sum(cost_usd) FROM usage"))).scalar()
                    denied = []
                    for table in ("usage_records", "collection_jobs", "key_teams"):
                        try:
                            async with conn.begin_nested():
                                await conn.execute(text(f"SELECT 1 FROM {table}"))
                        except Exception as exc:
                            denied.append(str(exc))
                    await conn.rollback()
                    return total, " ".join(denied), ""
                finally:
                    await conn.execute(text("RESET ROLE"))
                    await conn.execute(
                        text(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}')
                    )
                    await conn.execute(text(f'REVOKE ALL ON SCHEMA "{schema}" FROM {role}'))
                    await conn.execute(text(f"DROP ROLE {role}"))
                    await conn.commit()
        finally:
            await engine.dispose()

    total, denied, _ = asyncio.run(check())
    assert dollars(total) == dollars(sum(r.cost_usd for r in ROWS))
    assert denied.count("permission denied") == 3


def test_sql_runs_a_query_in_every_format(capsys, seeded):
    statement = "SELECT team, count(*) AS events FROM usage GROUP BY team ORDER BY team"
    code = cli.main(["sql", "--database-url", seeded, statement, "--format", "json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {"team": "blue", "events": 4},
        {"team": "green", "events": 1},
        {"team": "red", "events": 4},
    ]
    assert cli.main(["sql", "--database-url", seeded, statement, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["team,events", "blue,4", "green,1", "red,4"]
    assert cli.main(["sql", "--database-url", seeded, statement]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["blue", "4"]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM usage_records",
        "UPDATE usage_records SET team = 'x'",
        "CREATE TABLE sneaky (a int)",
        "SELEC 1",
        "SELECT * FROM no_such_view",
    ],
)
def test_sql_refuses_writes_and_bad_statements_with_one_line(capsys, seeded, statement):
    code = cli.main(["sql", "--database-url", seeded, statement])
    out, err = capsys.readouterr()

    assert (code, out) == (2, "")
    assert err.startswith("usage-proxy: error: sql: ") and err.count("\n") == 1
    (left,) = query(seeded, "SELECT count(*) AS n FROM usage")
    assert left["n"] == len(ROWS)


def test_a_missing_sqlite_file_is_not_created(tmp_path):
    path = tmp_path / "nothing.db"
    with pytest.raises(QueryError, match="no SQLite database at"):
        asyncio.run(run_readonly(f"sqlite+aiosqlite:///{path}", "SELECT 1"))
    assert not path.exists()


def test_sqlite_readers_query_the_views_while_the_proxy_writes(db_url):
    if make_url(db_url).get_backend_name() != "sqlite":
        pytest.skip("SQLite's readers")
    path = make_url(db_url).database
    rows = [row(100 + i, "red", at(5), "0.01") for i in range(200)]

    async def write_and_read() -> list[int]:
        engine = make_engine(db_url)
        sm = make_sessionmaker(engine)
        seen: list[int] = []

        def read() -> None:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as reader:
                seen.append(reader.execute("SELECT count(*) FROM usage").fetchone()[0])
                reader.execute("SELECT * FROM usage_monthly_team").fetchall()

        try:
            for start in range(0, len(rows), 20):
                await record_rows(sm, rows[start : start + 20])
                await asyncio.to_thread(read)
        finally:
            await engine.dispose()
        return seen

    seen = asyncio.run(write_and_read())
    # Each read saw whole batches only, and every batch once it was committed.
    assert seen == list(range(20, 201, 20))
