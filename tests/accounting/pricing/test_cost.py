"""cost.py: the cost of an event, exact to 1e-10 USD, and what had no price."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import pytest

from proxy.accounting.pricing import (
    Cost,
    Usage,
    cost_of,
    load_price_table,
    token_cost,
)
from tests.accounting.pricing.prices import D, model_entry, utc, write_override


@pytest.mark.parametrize(
    ("model", "at", "usage", "tokens", "tools"),
    [
        # Half the prompt cached: 0.5 x 2.50 + 0.5 x 1.25 + 0.2 x 10.00.
        (
            "gpt-4o",
            utc(2025, 1, 1),
            Usage(prompt_tokens=1_000_000, cached_tokens=500_000, completion_tokens=200_000),
            "3.875",
            "0",
        ),
        # No cached rate before caching existed: cached tokens cost the input price.
        (
            "gpt-4o",
            utc(2024, 6, 1),
            Usage(prompt_tokens=1_000_000, cached_tokens=500_000),
            "5.00",
            "0",
        ),
        # Reasoning tokens are inside completion_tokens and are not added again.
        ("o3", utc(2025, 7, 1), Usage(prompt_tokens=10, completion_tokens=1000), "0.00802", "0"),
        ("text-embedding-3-small", utc(2025, 1, 1), Usage(prompt_tokens=1234), "0.00002468", "0"),
        (
            "gpt-5-nano",
            utc(2025, 9, 1),
            Usage(prompt_tokens=7, cached_tokens=3, completion_tokens=11),
            "0.000004615",
            "0",
        ),
        # More cached than prompt tokens is malformed; it never makes a negative charge.
        ("gpt-4o", utc(2025, 1, 1), Usage(prompt_tokens=100, cached_tokens=400), "0.000125", "0"),
        # 2 x 0.03 + 3 x 2.50 / 1000 + 5 x 10.00 / 1000.
        (
            "gpt-4.1",
            utc(2025, 6, 1),
            Usage(code_interpreter_sessions=2, file_search_calls=3, web_search_calls=5),
            "0",
            "0.1175",
        ),
    ],
)
def test_cost_is_exact_decimal_arithmetic(defaults, model, at, usage, tokens, tools):
    cost = cost_of(defaults, model, at, usage)

    assert (cost.tokens, cost.tools, cost.total) == (D(tokens), D(tools), D(tokens) + D(tools))
    assert cost.known
    for amount in (cost.total, cost.tokens, cost.tools):
        assert isinstance(amount, Decimal)
        assert amount.as_tuple().exponent == -10


def test_cost_is_rounded_to_ten_places(tmp_path):
    table = load_price_table(
        write_override(tmp_path, model_entry("m", "2025-01-01", input='"0.123456789"')),
        use_genai_prices=False,
    )

    cost = cost_of(table, "m", utc(2025, 1, 2), Usage(prompt_tokens=1))

    assert str(cost.total) == "1.235E-7"
    assert cost.total == D("0.0000001235")


@pytest.mark.parametrize("model", ["my-unknown-model", None])
def test_an_unknown_model_costs_its_tools_only_and_says_so(full, model):
    usage = Usage(prompt_tokens=1000, completion_tokens=1000, code_interpreter_sessions=1)

    cost = cost_of(full, model, utc(2025, 6, 1), usage)

    assert cost == Cost(D("0.03"), D(0), D("0.03"), None, ("tokens",))
    assert not cost.known
    assert cost.billed is None


def test_a_tool_before_its_price_existed_is_reported_missing(defaults):
    cost = cost_of(defaults, "gpt-4o", utc(2024, 6, 1), Usage(web_search_calls=3))

    assert (cost.total, cost.missing, cost.known) == (D(0), ("web_search_call",), False)


def test_a_tool_only_event_needs_no_model_price(defaults):
    cost = cost_of(defaults, None, utc(2024, 1, 1), Usage(code_interpreter_sessions=1))

    assert (cost.total, cost.known, cost.billed) == (D("0.03"), True, D("0.03"))


def _decimal_cost(price, usage: Usage) -> Decimal:
    """The Decimal formula the integer rates must reproduce, as cost_of computed it before."""
    if price is None:
        return D(0).quantize(D("1e-10"))
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    tokens = (usage.prompt_tokens - cached) * price.input + cached * cached_rate
    return ((tokens + usage.completion_tokens * price.output) / D(1_000_000)).quantize(D("1e-10"))


def _token_counts() -> list[tuple[int, int, int]]:
    rng = random.Random(6)
    edges = [0, 1, 2, 3, 5, 7, 9, 10, 99, 101, 999_999, 1_000_000, 1_000_001, 10**12, 10**16]
    counts = [(p, c, o) for p in edges[:9] for c in (0, 1, p) for o in edges[:9]]
    counts += [
        (rng.randrange(10**7), rng.randrange(10**5), rng.randrange(10**5)) for _ in range(300)
    ]
    counts += [(e, e // 3, e) for e in edges] + [(5, 9, 1), (-3, 0, 2), (4, -1, 0), (0, 0, -7)]
    return counts


def test_integer_rates_give_the_decimal_formula_for_every_default_price(defaults):
    for source in defaults._sources:
        for name, entries in source.models.items():
            for price in entries:
                at = datetime.combine(price.effective_from, datetime.min.time(), UTC)
                assert defaults.model_price(name, at) is not None
                for p, c, o in _token_counts():
                    usage = Usage(prompt_tokens=p, cached_tokens=c, completion_tokens=o)
                    expected = _decimal_cost(defaults.model_price(name, at), usage)
                    got = token_cost(defaults, name, at, p, c, o)
                    assert (got, str(got)) == (expected, str(expected)), (name, p, c, o)
                    assert cost_of(defaults, name, at, usage).tokens.as_tuple() == (
                        expected.as_tuple()
                    )


@pytest.mark.parametrize(
    "prices",
    [
        {"input": '"0.123456789"', "output": '"7"'},
        {"input": '"0.000000000001"', "output": '"0.5"', "cached_input": '"0.0000000000005"'},
        {"input": '"1.0000000000001"', "output": '"3"'},  # 13 places: the Decimal formula
        {"input": '"12345678901234567890.5"', "output": '"1E+3"'},
        {"input": '"0"', "output": '"0"', "cached_input": '"0"'},
        {"input": '"0.15"', "output": '"0.60"', "cached_input": '"0.075"'},
        {"input": '"2.5"', "output": '"10"', "cached_input": '"1.25000"'},
        {"input": '"0.0000055"', "output": '"0.00005"'},
    ],
)
def test_integer_rates_give_the_decimal_formula_for_any_price(tmp_path, prices):
    table = load_price_table(
        write_override(tmp_path, model_entry("m", "2025-01-01", **prices)),
        use_genai_prices=False,
    )
    at = utc(2025, 3, 1)
    price = table.model_price("m", at)
    for p, c, o in _token_counts():
        usage = Usage(prompt_tokens=p, cached_tokens=c, completion_tokens=o)
        try:
            expected = _decimal_cost(price, usage)
        except InvalidOperation:
            continue  # beyond Decimal's 28 digits: not a cost anyone is charged
        got = token_cost(table, "m", at, p, c, o)
        assert (got, str(got)) == (expected, str(expected)), (prices, p, c, o)
        assert cost_of(table, "m", at, usage).total == expected


def test_token_cost_of_genai_and_unknown_models_is_the_decimal_formula(full):
    at = utc(2025, 6, 1)
    for model in ("o1-mini", "o3", "gpt-4o-mini", "my-unknown-model", None):
        for p, c, o in _token_counts()[:100]:
            usage = Usage(prompt_tokens=p, cached_tokens=c, completion_tokens=o)
            price = full.model_price(model, at)
            got = token_cost(full, model, at, p, c, o)
            if price is None and (p or o):
                assert got is None, (model, p, c, o)  # unpriced: never a silent 0
                continue
            assert got.as_tuple() == _decimal_cost(price, usage).as_tuple()
