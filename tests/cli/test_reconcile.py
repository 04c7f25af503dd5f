"""`usage-proxy reconcile` end to end on both backends: usage recorded by the proxy, billed
costs pulled from the fake admin API, compared per day, project, key and line item; and the
true-up, after which a month's per-team totals equal the bill to the cent."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.cli.runner import run
from tests.reconcile.scenario import ADMIN_KEY, GPT, fake_admin
from tests.reconcile.seed import seed_usage


@pytest.fixture
def pulled(capsys, db_url, monkeypatch):
    """The scenario's usage recorded and November's costs pulled; yields the fake admin."""
    with fake_admin() as fake:
        monkeypatch.setenv("USAGE_PROXY_BILLING_URL", fake.url)
        monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
        seed_usage(db_url)
        yield fake


def pull(capsys, url):
    code, _, err = run(
        capsys, "billing", "pull", "--database-url", url, "--since", "2026-11-01",
        "--until", "2026-12-01",
    )  # fmt: skip
    assert code == 0, err


def reconcile(capsys, url, *args):
    code, out, err = run(capsys, "reconcile", "--database-url", url, *args)
    assert code == 0, err
    return out


def as_json(text: str):
    return json.loads(text, parse_float=Decimal)


D = Decimal


def test_json_compares_every_group_and_puts_totals_last(capsys, db_url, pulled):
    pull(capsys, db_url)
    rows = as_json(reconcile(capsys, db_url, "--month", "2026-11", "--format", "json"))
    keys = ("day", "project", "key_hint", "line_item", "ambiguous")
    money = ("recorded_usd", "billed_usd", "residual_usd", "residual_pct", "flagged")
    got = [tuple(r[k] for k in keys + money) for r in rows[:-1]]
    assert got == [
        ("2026-11-01", "proj_blue", "sk-...b1u3", GPT, True, D("0.5"), D("0.5"), 0, D("0"), False),
        ("2026-11-01", "proj_red", None, "other", False, 0, D("0.07"), D("0.07"), D("100"), True),
        ("2026-11-01", "proj_red", "sk-...r3d1", GPT, False, D("0.0625"), D("0.0625"), 0, 0, False),
        (
            "2026-11-02", "proj_ghost", "sk-...gh05", GPT, False,
            0, D("1.25"), D("1.25"), D("100"), True,
        ),
        (
            "2026-11-02", "proj_red", "sk-...r3d1", GPT, False,
            D("0.08"), D("0.1000000001"), D("0.0200000001"), D("20"), True,
        ),
        (
            "2026-11-02", "proj_red", "sk-...zzzz", "gpt-4o-mini", False,
            D("0.01"), 0, D("-0.01"), None, False,
        ),
    ]  # fmt: skip
    assert list(rows[0])[:6] == [*keys[:4], "ambiguous", "recorded_usd"]
    total = rows[-1]
    assert total["total"] is True and total["day"] is None
    assert (total["recorded_usd"], total["billed_usd"]) == (D("0.6525"), D("1.9825000001"))
    assert total["residual_usd"] == D("1.3300000001")


def test_group_by_and_tolerance(capsys, db_url, pulled):
    pull(capsys, db_url)
    out = reconcile(
        capsys, db_url, "--month", "2026-11", "--group-by", "project", "--tolerance", "0.5",
        "--format", "json",
    )  # fmt: skip
    rows = as_json(out)
    assert [list(r)[:2] for r in rows[:1]] == [["project", "recorded_usd"]]
    by_project = {r["project"]: (r["residual_usd"], r["flagged"]) for r in rows[:-1]}
    assert by_project == {
        "proj_blue": (0, False),
        "proj_ghost": (D("1.25"), True),
        # 0.0800000001 of 0.2325000001 billed is within a 50% tolerance.
        "proj_red": (D("0.0800000001"), False),
    }


def test_table_shows_largest_residuals_first_and_totals_last(capsys, db_url, pulled):
    pull(capsys, db_url)
    lines = reconcile(capsys, db_url, "--month", "2026-11").splitlines()
    body = [line for line in lines[2:] if not line.startswith("--")]
    assert "proj_ghost" in body[0] and "1.2500" in body[0]
    assert "proj_red" in body[1] and "other" in body[1]
    assert body[-1].startswith("total")
    csv = reconcile(capsys, db_url, "--month", "2026-11", "--format", "csv")
    assert csv.splitlines()[0] == (
        "day,project,key_hint,line_item,ambiguous,recorded_usd,billed_usd,residual_usd,"
        "residual_pct,flagged"
    )


def test_true_up_makes_team_totals_equal_the_bill(capsys, db_url, pulled):
    # Blue's second key billed 0.10 more than recorded: blue and green share it, 4 to 1.
    pulled.costs["2026-11-01"][3]["amount"]["value"] = pulled.costs["2026-11-01"][3]["amount"][
        "value"
    ].replace("0.2", "0.3")
    pull(capsys, db_url)
    dry = reconcile(capsys, db_url, "--month", "2026-11", "--true-up", "--dry-run")
    assert "dry run: 5 adjustment rows" in dry

    def teams():
        out = reconcile_report(capsys, db_url, "--group-by", "team")
        return {r["team"]: r["cost_usd"] for r in out}

    before = teams()
    assert "adjustment" not in {
        r["kind"] for r in reconcile_report(capsys, db_url, "--group-by", "kind")
    }
    out = reconcile(capsys, db_url, "--month", "2026-11", "--true-up")
    assert "5 adjustment rows for 2026-11" in out
    after = teams()
    assert after == {
        "red": D("0.2325000001"),
        "blue": D("0.48"),
        "green": D("0.12"),
        "unassigned": D("1.25"),
    }
    assert sum(after.values()) == D("2.0825000001"), "the month's billed total"
    kinds = {
        r["kind"]: r["cost_usd"] for r in reconcile_report(capsys, db_url, "--group-by", "kind")
    }
    assert kinds["adjustment"] == D("1.4300000001")
    # Original rows are unchanged; a second true-up is refused; undo restores the totals.
    code, _, err = run(
        capsys, "reconcile", "--database-url", db_url, "--month", "2026-11", "--true-up"
    )
    assert code == 2 and "already trued up" in err
    out = reconcile(capsys, db_url, "--month", "2026-11", "--undo")
    assert out == "removed 5 adjustment rows of 2026-11\n"
    assert teams() == before


def reconcile_report(capsys, url, *args):
    code, out, err = run(
        capsys, "report", "--database-url", url, "--month", "2026-11", "--format", "json", *args
    )
    assert code == 0, err
    return as_json(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "2026-11-05", "--until", "2026-11-01"), "--since 2026-11-05 must be before"),
        (("--month", "2026-13"), "--month: '2026-13' is not a month"),
        (("--month", "2026-11", "--since", "2026-11-01"), "cannot be combined"),
        (("--group-by", "team"), "unknown field 'team'"),
        (("--tolerance", "lots"), "--tolerance: 'lots' is not a number"),
        (("--true-up",), "need --month"),
        (("--dry-run",), "--dry-run goes with --true-up"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, db_url, args, message):
    code, out, err = run(capsys, "reconcile", "--database-url", db_url, *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and message in err, err


def test_true_up_without_billed_costs_says_so(capsys, db_url):
    code, _, err = run(
        capsys, "reconcile", "--database-url", db_url, "--month", "2026-11", "--true-up"
    )
    assert code == 2 and "no billed costs for 2026-11" in err


AZURE = """Date,MeterSubCategory,MeterName,CostInBillingCurrency,BillingCurrencyCode
11/01/2026,Azure OpenAI,gpt-4o-0806-Inp-glbl Tokens,0.04,USD
11/01/2026,Azure OpenAI,gpt-4o-0806-Outp-glbl Tokens,0.03,USD
11/01/2026,Azure OpenAI,Standard Hosting Hours,1.00,USD
"""


def test_azure_export_reconciles_at_the_model(capsys, db_url, tmp_path):
    import asyncio
    import datetime as dt

    from proxy.db.engine import make_engine, make_sessionmaker
    from proxy.db.usage import record_rows
    from tests.db.rows import chat

    async def seed():
        engine = make_engine(db_url)
        try:
            when = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
            await record_rows(
                make_sessionmaker(engine),
                [chat("az1", occurred_at=when, project=None, key_hint="...a2ur",
                      model=GPT, cost_usd=D("0.06"))],
            )  # fmt: skip
        finally:
            await engine.dispose()

    asyncio.run(seed())
    path = tmp_path / "costs.csv"
    path.write_text(AZURE)
    code, out, err = run(
        capsys, "billing", "import", "--database-url", db_url, "--azure-csv", str(path)
    )
    assert code == 0, err
    assert out.startswith("imported 1 days: 3 billed rows (3 changed), 1.07 usd billed; 0 rows")
    rows = as_json(reconcile(capsys, db_url, "--month", "2026-11", "--group-by", "day,line_item",
                             "--format", "json"))  # fmt: skip
    got = {r["line_item"]: (r["recorded_usd"], r["billed_usd"]) for r in rows[:-1]}
    assert got == {GPT: (D("0.06"), D("0.07")), "other": (0, D("1.00"))}
    code, _, err = run(
        capsys,
        "billing",
        "import",
        "--database-url",
        db_url,
        "--azure-csv",
        str(tmp_path / "nope.csv"),
    )
    assert code == 2 and len(err.splitlines()) == 1 and "No such file" in err
