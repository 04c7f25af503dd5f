import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import genai_prices
import pytest
from genai_prices import data_snapshot

from proxy.accounting.pricing import (
    Cost,
    PriceTable,
    Usage,
    cost_of,
    load_price_table,
    token_cost,
)
from proxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
D = Decimal


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def write_override(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pricing.toml"
    path.write_text(text, encoding="utf-8")
    return path


def model_entry(model: str = "gpt-4o", since: str = "2025-01-01", **toml_values: str) -> str:
    values = {"input": '"1.00"', "output": '"2.00"', **toml_values}
    lines = [f'model = "{model}"', f"effective_from = {since}"]
    lines += [f"{key} = {value}" for key, value in values.items()]
    return "[[models]]\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def defaults() -> PriceTable:
    return load_price_table(use_genai_prices=False)


@pytest.fixture(scope="module")
def full() -> PriceTable:
    return load_price_table()


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


def test_a_tool_before_its_price_existed_is_reported_missing(defaults):
    cost = cost_of(defaults, "gpt-4o", utc(2024, 6, 1), Usage(web_search_calls=3))

    assert (cost.total, cost.missing, cost.known) == (D(0), ("web_search_call",), False)


def test_a_tool_only_event_needs_no_model_price(defaults):
    cost = cost_of(defaults, None, utc(2024, 1, 1), Usage(code_interpreter_sessions=1))

    assert (cost.total, cost.known) == (D("0.03"), True)


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
            expected = _decimal_cost(full.model_price(model, at), usage)
            assert token_cost(full, model, at, p, c, o).as_tuple() == expected.as_tuple()
