"""load.py: reading override files, and one clear error for a bad one."""

from __future__ import annotations

import pytest

from proxy.accounting.pricing import (
    load_price_table,
)
from proxy.errors import ConfigError
from tests.accounting.pricing.prices import REPO, D, model_entry, utc, write_override


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        (model_entry(input='"-1"'), ["input", "'-1'", "negative"]),
        (model_entry(input='"abc"'), ["input", "'abc'"]),
        (model_entry(input="true"), ["input", "True"]),
        (model_entry(output='"NaN"'), ["output", "'NaN'"]),
        (model_entry(cached_input="-0.5"), ["cached_input", "-0.5"]),
        (model_entry(since='"2024-13-01"'), ["effective_from", "'2024-13-01'"]),
        (model_entry(since="2024-10-02T10:00:00"), ["effective_from", "2024"]),
        (model_entry(inptu='"1"'), ["unknown key", "'inptu'", "'1'"]),
        ('[[models]]\nmodel = "x"\neffective_from = 2024-01-01\ninput = 1\n', ["'output'"]),
        (model_entry(model=""), ["model", "''"]),
        (
            '[[tools]]\ntool = "file_search_calls"\neffective_from = 2024-01-01\nprice = 1\n',
            ["'file_search_calls'"],
        ),
        (
            '[[tools]]\ntool = "web_search_call"\neffective_from = 2024-01-01\n'
            "price = 1\nper = 0\n",
            ["per", "0"],
        ),
        ('[[model]]\nmodel = "x"\n', ["unknown section", "'model'"]),
        ("models = 3\n", ["models", "[[models]]"]),
        (model_entry() + model_entry(input='"3"'), ["two entries", "'gpt-4o'", "2025-01-01"]),
        ("[[models]\n", ["not valid TOML"]),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_file_key_and_value(tmp_path, toml, named):
    path = write_override(tmp_path, toml)

    with pytest.raises(ConfigError) as raised:
        load_price_table(path, use_genai_prices=False)

    message = str(raised.value)
    assert str(path) in message
    for part in named:
        assert part in message


def test_the_message_names_the_entry(tmp_path):
    path = write_override(tmp_path, model_entry("a") + model_entry("b", input='"x"'))

    with pytest.raises(ConfigError, match=r"\[\[models\]\] entry 2 \(model = 'b'\)"):
        load_price_table(path, use_genai_prices=False)


def test_a_missing_override_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_price_table(tmp_path / "nope.toml", use_genai_prices=False)


@pytest.mark.parametrize(
    ("written", "expected"),
    [('"2.50"', "2.50"), ("2.50", "2.50"), ("0.1", "0.1"), ("3", "3"), ('" 1.5 "', "1.5")],
)
def test_prices_are_read_as_exact_decimals(tmp_path, written, expected):
    table = load_price_table(
        write_override(tmp_path, model_entry("m", input=written)), use_genai_prices=False
    )

    price = table.model_price("m", utc(2025, 6, 1))

    assert price.input == D(expected)
    assert str(price.input) == expected


def test_the_example_override_in_config_loads_and_applies_from_its_dates():
    table = load_price_table(REPO / "config" / "pricing.toml", use_genai_prices=False)

    assert table.model_price("prod-gpt4o", utc(2025, 1, 1)).source == "config"
    assert table.model_price("gpt-4.1", utc(2025, 6, 30)).input == D("2.00")
    assert table.model_price("gpt-4.1", utc(2025, 7, 1)).input == D("1.60")
    assert table.tool_price("web_search_call", utc(2025, 7, 1)) == D("0.008")
    assert table.tool_price("web_search_call", utc(2025, 6, 30)) == D("0.01")
