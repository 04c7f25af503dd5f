"""genai.py: genai-prices' bundled data as the last source, read offline and failing open."""

from __future__ import annotations

import subprocess
import sys

import genai_prices
import pytest
from genai_prices import data_snapshot

from proxy.accounting.pricing import (
    Usage,
    cost_of,
    load_price_table,
)
from tests.accounting.pricing.prices import REPO, D, utc


def test_genai_prices_gives_a_model_the_tables_lack_its_cached_rate(full):
    price = full.model_price("o1-mini", utc(2025, 2, 1))

    assert (price.model, price.input, price.cached_input, price.output) == (
        "o1-mini",
        D("1.1"),
        D("0.55"),
        D("4.4"),
    )


def test_an_event_older_than_the_tables_falls_through_to_genai_prices(full):
    # The defaults start o3 on its launch day; genai-prices has an undated launch price.
    price = full.model_price("o3", utc(2025, 4, 1))

    assert (price.source, price.effective_from, price.input) == ("genai-prices", None, D(10))


def test_a_tiered_genai_price_is_unknown_rather_than_guessed(full):
    # Above 272k prompt tokens gpt-5.4 costs double; a flat price would be wrong there.
    assert full.model_price("gpt-5.4", utc(2026, 1, 1)) is None


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4-turbo",
        "gpt-4",
        "gpt-3.5-turbo",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
    ],
)
def test_the_defaults_agree_with_genai_prices_today(defaults, model):
    at = utc(2025, 9, 1)
    ours = defaults.model_price(model, at)
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1), model, provider_id="openai", genai_request_timestamp=at
    ).model_price

    assert (ours.input, ours.cached_input, ours.output) == (
        theirs.input_mtok,
        theirs.cache_read_mtok,
        theirs.output_mtok or 0,
    )


def test_genai_prices_is_read_offline():
    # A fresh interpreter, so that importing genai-prices is watched too.
    script = """
import socket
def refuse(*args, **kwargs):
    raise SystemExit("pricing tried to open a network connection")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
from datetime import datetime, UTC
from proxy.accounting.pricing import Usage, cost_of, load_price_table
at = datetime(2025, 6, 1, tzinfo=UTC)
cost = cost_of(load_price_table(), "o1-mini", at, Usage(prompt_tokens=10**6))
print(cost.total, cost.price.source)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.1000000000", "genai-prices"]


def test_a_downloaded_genai_prices_snapshot_is_ignored(monkeypatch):
    # What genai_prices.UpdatePrices would install process-wide after fetching.
    empty = data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", empty)

    price = load_price_table().model_price("o1-mini", utc(2025, 6, 1))

    assert price is not None and price.source == "genai-prices"


def test_a_failure_inside_genai_prices_is_an_unknown_price(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("corrupt data")

    monkeypatch.setattr(data_snapshot.DataSnapshot, "find_provider_model", broken)
    table = load_price_table()

    cost = cost_of(table, "o1-mini", utc(2025, 6, 1), Usage(prompt_tokens=10))

    assert (cost.total, cost.price, cost.known) == (D(0), None, False)
