"""`budgets set|list|remove`: budgets stored and shown with their spend and state; bad input is
one error line and exit code 2, and stores nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.db import mappings
from proxy.db.budgets import list_budgets
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.keys import fingerprint, hint
from tests.cli.runner import run
from tests.e2e.budget_helpers import spend
from tests.fake_keys import fake_key

KEY = fake_key("cli", "9876")
TWIN = fake_key("twin", "9876")  # another key with the same hint


def on_db(url: str, fn):
    async def go():
        engine = make_engine(url)
        try:
            return await fn(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_set_list_and_remove(capsys, db_url: str):
    code, out, err = run(capsys, "budgets", "set", "--team", "red", "--limit", "500",
                         "--period", "month", "--enforce", "--database-url", db_url)  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "budget 1: team red, $500 per month, warn at 50,80,100%, enforced\n"
    on_db(db_url, lambda sm: spend(sm, "red", "412.5"))
    code, out, err = run(capsys, "budgets", "list", "--format", "json", "--database-url", db_url)
    assert code == 0, err
    [shown] = json.loads(out)
    assert (shown["id"], shown["subject"], shown["state"]) == (1, "red", "warned")
    assert (shown["spend_usd"], shown["limit_usd"], shown["ratio"]) == (412.5, 500, 0.825)
    assert (shown["warn"], shown["enforce"], shown["period"]) == ("50,80,100", True, "month")
    code, out, _ = run(capsys, "budgets", "list", "--database-url", db_url)
    assert "warned" in out and "red" in out

    # Set again: the same budget, changed.
    code, out, _ = run(capsys, "budgets", "set", "--team", "red", "--limit", "400",
                       "--period", "month", "--warn", "90", "--database-url", db_url)  # fmt: skip
    assert code == 0 and out.startswith("budget 1: ")
    [budget] = on_db(db_url, list_budgets)
    assert (budget.limit_usd, budget.warn, budget.enforce) == (400, "90", False)

    assert run(capsys, "budgets", "remove", "1", "--database-url", db_url)[0] == 0
    assert on_db(db_url, list_budgets) == []
    code, out, _ = run(capsys, "budgets", "remove", "1", "--database-url", db_url)
    assert code == 1 and "no budget 1" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "-5"], "--limit: '-5' must be an amount above 0 USD"),
        (["--limit", "ten"], "--limit: 'ten' is not an amount in USD"),
        (["--period", "year"], "--period: 'year' is not one of month, week, day"),
        (["--warn", "80,50"], "--warn: '80,50' must be in ascending order"),
        (["--warn", "50,50"], "--warn: '50,50' must be in ascending order"),
        (["--warn", "0.5,80"], "--warn: '0.5,80' must be whole percentages"),
        (["--warn", "50,-80"], "--warn: '50,-80' must be whole percentages"),
        (["--warn", "abc"], "--warn: 'abc' must be whole percentages"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, db_url: str, args, message):
    given = {"--limit": "5", "--period": "day"} | dict(zip(args[::2], args[1::2], strict=True))
    flat = [part for pair in given.items() for part in pair]
    code, out, err = run(capsys, "budgets", "set", "--team", "red", *flat,
                         "--database-url", db_url)  # fmt: skip
    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1
    assert message in err
    assert on_db(db_url, list_budgets) == []


def test_a_key_hint_resolves_to_its_fingerprint_and_an_ambiguous_one_is_refused(
    capsys, db_url: str, monkeypatch
):
    secret = b"cli-secret"
    monkeypatch.setenv("USAGE_PROXY_KEY_SECRET", secret.decode())
    fp = fingerprint(KEY, secret)
    on_db(db_url, lambda sm: mappings.add_key_team(sm, fp, hint(KEY), "red"))
    code, _, err = run(capsys, "budgets", "set", "--key-hint", "sk-...9876", "--limit", "5",
                       "--period", "day", "--database-url", db_url)  # fmt: skip
    assert code == 0, err
    [budget] = on_db(db_url, list_budgets)
    assert (budget.subject_kind, budget.subject, budget.key_hint) == ("key", fp, "sk-...9876")

    twin = fingerprint(TWIN, secret)
    on_db(db_url, lambda sm: mappings.add_key_team(sm, twin, hint(TWIN), "blue"))
    code, _, err = run(capsys, "budgets", "set", "--key-hint", "sk-...9876", "--limit", "9",
                       "--period", "day", "--database-url", db_url)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "2 keys share the hint sk-...9876" in err
    code, _, err = run(capsys, "budgets", "set", "--key-hint", KEY, "--limit", "9",
                       "--period", "day", "--database-url", db_url)  # fmt: skip
    assert code == 2 and KEY not in err  # a key given as a hint is refused, never echoed
    code, _, err = run(capsys, "budgets", "set", "--key-hint", "sk-...0000", "--limit", "9",
                       "--period", "day", "--database-url", db_url)  # fmt: skip
    assert code == 2 and "no key sk-...0000" in err
    [budget] = on_db(db_url, list_budgets)
    assert budget.limit_usd == 5  # nothing changed by the refused ones
