"""table.py: which price is in force for a model at a moment, and which source gives it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from proxy.accounting.pricing import (
    load_price_table,
)
from tests.accounting.pricing.prices import D, model_entry, utc, write_override


@pytest.mark.parametrize(
    ("model", "at", "expected"),
    [
        ("gpt-4o", utc(2024, 5, 12, 23, 59), None),
        ("gpt-4o", utc(2024, 5, 13), ("5.00", None, "15.00")),
        ("gpt-4o", utc(2024, 10, 1, 23, 59), ("5.00", None, "15.00")),
        ("gpt-4o", utc(2024, 10, 2), ("2.50", "1.25", "10.00")),
        ("gpt-4o", utc(2026, 1, 1), ("2.50", "1.25", "10.00")),
        # 01:00 in UTC+2 is still 2024-10-01 in UTC.
        (
            "gpt-4o",
            datetime(2024, 10, 2, 1, tzinfo=timezone(timedelta(hours=2))),
            ("5.00", None, "15.00"),
        ),
        # A naive datetime is UTC.
        ("gpt-4o", datetime(2024, 10, 2), ("2.50", "1.25", "10.00")),
        ("o3", utc(2025, 4, 15), None),
        ("o3", utc(2025, 6, 9), ("10.00", "2.50", "40.00")),
        ("o3", utc(2025, 6, 10), ("2.00", "0.50", "8.00")),
    ],
)
def test_the_price_in_force_on_the_events_date_applies(defaults, model, at, expected):
    price = defaults.model_price(model, at)

    if expected is None:
        assert price is None
    else:
        cached = None if expected[1] is None else D(expected[1])
        assert (price.input, price.cached_input, price.output) == (
            D(expected[0]),
            cached,
            D(expected[2]),
        )
        assert price.source == "default"


@pytest.mark.parametrize(
    ("requested", "entry", "input_price"),
    [
        ("gpt-4o", "gpt-4o", "2.50"),
        ("gpt-4o-2024-08-06", "gpt-4o", "2.50"),
        ("gpt-4o-2024-11-20", "gpt-4o", "2.50"),
        ("GPT-4o-2024-08-06", "gpt-4o", "2.50"),
        ("gpt-4o-mini", "gpt-4o-mini", "0.15"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "0.15"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini", "0.40"),
        ("gpt-4.1-nano", "gpt-4.1-nano", "0.10"),
        ("o3-mini", "o3-mini", "1.10"),
        ("o3-2025-04-16", "o3", "2.00"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano", "0.05"),
        # The launch snapshot's own entry beats the alias, which has become cheaper.
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13", "5.00"),
    ],
)
def test_a_name_matches_itself_and_its_dated_snapshots(defaults, requested, entry, input_price):
    price = defaults.model_price(requested, utc(2025, 9, 1))

    assert (price.model, price.input) == (entry, D(input_price))


@pytest.mark.parametrize(
    "requested",
    [
        "gpt-4o-realtime-preview",  # another model, not a snapshot
        "gpt-4o-mini-tts",
        "gpt-4o-",
        "gpt-4o-2024-08-06-ft",
        "gpt-4o2024-08-06",
        "gpt-3.5-turbo-1106",  # legacy snapshots were priced apart from their alias
        "o1-mini",
        "my-deployment",
        "",
        None,
    ],
)
def test_other_suffixes_are_other_models(defaults, requested):
    assert defaults.model_price(requested, utc(2025, 9, 1)) is None


@pytest.mark.parametrize(
    ("model", "at", "source", "input_price"),
    [
        ("gpt-4o", utc(2025, 2, 1), "config", "1.00"),
        ("gpt-4o-2024-08-06", utc(2025, 2, 1), "config", "1.00"),
        # Before the override starts, the list price still applies.
        ("gpt-4o", utc(2024, 12, 31, 23, 59), "default", "2.50"),
        ("gpt-4.1", utc(2025, 5, 1), "default", "2.00"),
        ("o1-mini", utc(2025, 2, 1), "genai-prices", "1.1"),
        ("o1-mini-2024-09-12", utc(2025, 2, 1), "genai-prices", "1.1"),
        ("gpt-4.5-preview", utc(2025, 3, 1), "config", "50"),
        ("my-azure-deployment", utc(2025, 2, 1), "config", "2.50"),
    ],
)
def test_the_override_beats_the_defaults_which_beat_genai_prices(
    tmp_path, model, at, source, input_price
):
    override = write_override(
        tmp_path,
        model_entry("gpt-4o", "2025-01-01")
        + model_entry("gpt-4.5-preview", "2025-02-27", input='"50"')
        + model_entry("my-azure-deployment", "2024-10-02", input='"2.50"'),
    )
    table = load_price_table(override)

    price = table.model_price(model, at)

    assert (price.source, price.input) == (source, D(input_price))
