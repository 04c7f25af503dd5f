"""`usage-proxy billing pull` and `billing keys` against the fake admin API on a real socket,
on both backends: what is stored, idempotence, an open day replaced, and bad input as one
line with exit code 2."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from proxy.db.billing import billed_rows, billing_keys
from proxy.db.engine import make_engine, make_sessionmaker
from tests.cli.runner import run
from tests.reconcile.scenario import ADMIN_KEY, fake_admin
from tests.reconcile.seed import seed_usage


@pytest.fixture
def admin(monkeypatch):
    with fake_admin() as fake:
        monkeypatch.setenv("USAGE_PROXY_BILLING_URL", fake.url)
        monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
        yield fake


def stored(url: str):
    async def read():
        engine = make_engine(url)
        try:
            sm = make_sessionmaker(engine)
            return await billed_rows(sm, "2026-01-01", "2027-01-01"), await billing_keys(sm)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def pull(capsys, url: str, *extra: str):
    return run(capsys, "billing", "pull", "--database-url", url, "--since", "2026-11-01", *extra)


def test_pull_stores_days_keys_and_prints_one_line(capsys, db_url, admin):
    code, out, err = pull(capsys, db_url, "--until", "2026-11-03")
    assert code == 0, err
    assert out.splitlines() == [
        "pulled 2 days: 7 billed rows (7 changed), 1.9825000001 usd billed; 4 keys"
    ]
    rows, keys = stored(db_url)
    assert sum(r.amount for r in rows) == Decimal("1.9825000001")
    assert {(r.day, r.project, r.api_key_id) for r in rows} >= {
        ("2026-11-01", "proj_red", ""),
        ("2026-11-02", "proj_ghost", "key_ghost"),
    }
    assert {k.api_key_id: k.redacted_value for k in keys}["key_blue2"] == "sk-fak...b1u3"
    assert ADMIN_KEY not in out + err


def test_pulling_again_changes_nothing_and_an_open_day_is_replaced(capsys, db_url, admin):
    admin.costs["2026-11-02"] = [admin.costs["2026-11-02"][0]]  # the day is still open
    assert pull(capsys, db_url, "--until", "2026-11-03")[0] == 0
    first, _ = stored(db_url)
    code, out, _ = pull(capsys, db_url, "--until", "2026-11-03")
    assert code == 0 and "(0 changed)" in out
    assert [(r.id, r.amount, r.pulled_at) for r in stored(db_url)[0]] == [
        (r.id, r.amount, r.pulled_at) for r in first
    ]
    admin.costs["2026-11-02"] = fake_admin().costs["2026-11-02"]  # the day closed
    code, out, _ = pull(capsys, db_url, "--until", "2026-11-03")
    assert code == 0 and "(1 changed)" in out
    day2 = sorted(r.amount for r in stored(db_url)[0] if r.day == "2026-11-02")
    assert day2 == [Decimal("0.1000000001"), Decimal("1.25")]


def test_429_is_waited_out(capsys, db_url, admin):
    admin.failures = [(429, "0")]
    code, out, err = pull(capsys, db_url, "--until", "2026-11-03")
    assert code == 0, err
    assert out.startswith("pulled 2 days: 7 billed rows")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"OPENAI_ADMIN_KEY": ""}, "OPENAI_ADMIN_KEY is not set"),
        (("--until", "2026-11-01"), {}, "--since 2026-11-01 must be before --until 2026-11-01"),
        (("--until", "2026-13-01"), {}, "'2026-13-01' is not a date"),
        ((), {"OPENAI_ADMIN_KEY": ADMIN_KEY[:-4] + "nope"}, "the admin API refused the key (401)"),
    ],
    ids=["missing-key", "empty-range", "bad-date", "refused-key"],
)
def test_bad_input_is_one_line_and_exit_2(capsys, db_url, admin, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = pull(capsys, db_url, *args)
    assert code == 2, out + err
    assert len(err.splitlines()) == 1 and message in err, err
    assert out == ""
    assert stored(db_url)[0] == []


def test_the_admin_key_has_no_flag(capsys, db_url, admin):
    code, _, err = pull(capsys, db_url, "--admin-key", ADMIN_KEY)
    assert code == 2
    assert ADMIN_KEY not in err


def test_keys_lists_matches_ambiguous_and_unseen(capsys, db_url, admin):
    seed_usage(db_url)
    assert pull(capsys, db_url, "--until", "2026-11-03")[0] == 0
    code, out, err = run(capsys, "billing", "keys", "--database-url", db_url, "--format", "json")
    assert code == 0, err
    got = {(m["status"], m["project"], m["key_hint"]) for m in json.loads(out)}
    assert got == {
        ("matched", "proj_red", "sk-...r3d1"),
        ("ambiguous", "proj_blue", "sk-...b1u3"),
        ("unseen", "proj_ghost", "sk-...gh05"),
        ("unknown", "proj_red", "sk-...zzzz"),
    }
