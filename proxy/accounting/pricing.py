"""Prices of OpenAI usage, with effective dates, in Decimal.

A `PriceTable` answers "what did this model, or this tool, cost at that moment?". It asks its
sources in order: the user's override file, the default table in proxy/data/pricing.toml, then
the price data bundled in the genai-prices wheel. The first source with a price in force on the
event's UTC date wins, so an override dated 2025-01-01 leaves older events at list price.
A price is in force from its `effective_from` until the next entry for the same name.

Within a file, "gpt-4o" prices itself and its dated snapshots ("gpt-4o-2024-08-06"), and an
entry for the snapshot itself beats the alias's. Any other suffix is a different model:
"gpt-4o-mini" is never priced as "gpt-4o". config/pricing.toml documents the file format.

`load_price_table` is the only function that reads anything; `cost_of` never raises.

Token costs are exact: a price in force is also kept as integer rates, and the cost of tokens
is integer arithmetic rounded half to even at 1e-10 USD, which is what the Decimal formula gives
(tests/accounting/test_pricing.py compares the two). Decimal arithmetic per event cost more CPU
than the rest of building its row (bench/README.md).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from proxy.errors import ConfigError

__all__ = [
    "Cost",
    "ModelPrice",
    "PriceTable",
    "Usage",
    "cost_of",
    "load_price_table",
    "token_cost",
]

_MTOK = Decimal(1_000_000)
_PLACES = Decimal("1e-10")  # the usage table stores money as Numeric(20, 10)
_ZERO = Decimal(0).quantize(_PLACES)
_UNPRICED: tuple[None, None] = (None, None)
_SNAPSHOT = re.compile(r"(?P<alias>.+)-\d{4}-\d{2}-\d{2}")
_TOOLS = ("code_interpreter_session", "file_search_call", "web_search_call")
# The key naming an entry, then its other required keys and its optional ones.
_MODEL_KEYS = ("model", {"effective_from", "input", "output"}, {"cached_input"})
_TOOL_KEYS = ("tool", {"effective_from", "price"}, {"per"})

_Lookup = Callable[[str, datetime], "ModelPrice | None"]
_CACHE_SIZE = 4096
# Integer rates only for prices with at most this many decimal places, and costs below
# _EXACT_UNITS units of 1e-10 USD: within both, every step of the Decimal formula is exact in
# Decimal's 28 digits, so the two agree to the last digit. Anything else takes the formula.
_EXACT_PLACES = 12
_EXACT_UNITS = 10**18
_Entry = TypeVar("_Entry", "ModelPrice", "_ToolPrice")


@dataclass(frozen=True)
class ModelPrice:
    """Token prices in USD per 1M tokens. `effective_from` is None when the source gives no date."""

    model: str
    effective_from: date | None
    input: Decimal
    cached_input: Decimal | None  # None: cached tokens cost the input price
    output: Decimal
    source: str  # "config", "default" or "genai-prices"


class Usage(NamedTuple):
    """What one billable event consumed, counted as OpenAI's usage objects count it.

    `cached_tokens` is the part of `prompt_tokens` read from the prompt cache, and
    `completion_tokens` already includes any reasoning tokens.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    code_interpreter_sessions: int = 0
    file_search_calls: int = 0
    web_search_calls: int = 0


class Cost(NamedTuple):
    """USD cost of one event: `total == tokens + tools`, each rounded to 10 decimal places.

    `missing` names what was used but had no price in force ("tokens", or a tool name such as
    "web_search_call"); those parts count as zero and `known` is False.
    """

    total: Decimal
    tokens: Decimal
    tools: Decimal
    price: ModelPrice | None
    missing: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return not self.missing


class _Rates(NamedTuple):
    """A model price as integers: the cost of tokens in units of 1e-10 USD is
    (uncached * input + cached * cached + completion * output) * mul, divided by div and
    rounded half to even."""

    price: ModelPrice
    input: int
    cached: int
    output: int
    mul: int
    div: int


class _ToolPrice(NamedTuple):
    effective_from: date
    unit: Decimal  # USD per session or per call


class _Source(NamedTuple):
    models: Mapping[str, tuple[ModelPrice, ...]]  # lower-cased name -> newest first
    tools: Mapping[str, tuple[_ToolPrice, ...]]  # newest first


@dataclass(frozen=True)
class PriceTable:
    """Immutable prices from one or more files and optionally genai-prices; see the module doc."""

    _sources: tuple[_Source, ...]
    _fallback: _Lookup | None = field(default=None, repr=False)
    # (model, day) -> the tables' answer, as integer rates where they are exact. Pricing runs
    # for every recorded request; the tables change only by date, so the answer is the same
    # all day. genai-prices is not cached: its conditions may depend on the time, not only the
    # day.
    _cache: dict[tuple[str, date], tuple[ModelPrice | None, _Rates | None]] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    def model_price(self, model: str | None, at: datetime) -> ModelPrice | None:
        """Token prices in force for `model` at `at` (naive means UTC), or None if unknown."""
        return self._priced(model, at)[0]

    def _priced(self, model: str | None, at: datetime) -> tuple[ModelPrice | None, _Rates | None]:
        if not model:
            return _UNPRICED
        key = (model, _utc_date(at))
        try:
            priced = self._cache[key]
        except KeyError:
            price = self._from_tables(model, key[1])
            priced = (price, None if price is None else _rates(price))
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # made-up model names must not grow it without bound
            self._cache[key] = priced
        if priced[0] is None and self._fallback:
            return self._fallback(model, at), None
        return priced

    def _from_tables(self, model: str, day: date) -> ModelPrice | None:
        names = [model.lower()]
        if snapshot := _SNAPSHOT.fullmatch(names[0]):
            names.append(snapshot["alias"])
        for source in self._sources:
            for name in names:
                if price := _in_force(source.models.get(name, ()), day):
                    return price
        return None

    def tool_price(self, tool: str, at: datetime) -> Decimal | None:
        """USD per session or call of `tool` in force at `at`, or None if the tables have none."""
        day = _utc_date(at)
        for source in self._sources:
            if price := _in_force(source.tools.get(tool, ()), day):
                return price.unit
        return None


def token_cost(
    table: PriceTable,
    model: str | None,
    at: datetime,
    prompt: int = 0,
    cached: int = 0,
    completion: int = 0,
) -> Decimal:
    """`cost_of(table, model, at, Usage(prompt, cached, completion)).total`, without building
    either tuple: the price of a chat completion or an embedding. Never raises."""
    price, rates = table._priced(model, at)
    if rates is not None:
        units = _units(rates, prompt, cached, completion)
        if units is not None:
            return Decimal(units).scaleb(-10)
    return _tokens(price, prompt, cached, completion)


def _units(rates: _Rates, prompt: int, cached: int, completion: int) -> int | None:
    """The cost in units of 1e-10 USD, or None where the integer rates do not apply."""
    if prompt < 0 or cached < 0 or completion < 0:
        return None
    cached = min(cached, prompt)  # see _tokens
    total = (prompt - cached) * rates.input + cached * rates.cached + completion * rates.output
    if rates.div == 1:
        units = total * rates.mul
    else:
        units, rest = divmod(total, rates.div)
        if rest * 2 > rates.div or (rest * 2 == rates.div and units & 1):
            units += 1
    return units if units < _EXACT_UNITS else None


def _tokens(price: ModelPrice | None, prompt: int, cached: int, completion: int) -> Decimal:
    """The cost of tokens in Decimal arithmetic: the definition the integer rates follow."""
    if price is None:
        return _ZERO
    # Cached tokens are a subset of the prompt; a malformed usage claiming more must not turn
    # into a negative charge for the rest.
    cached = min(cached, prompt)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    tokens = (prompt - cached) * price.input + cached * cached_rate
    return ((tokens + completion * price.output) / _MTOK).quantize(_PLACES)


def _rates(price: ModelPrice) -> _Rates | None:
    cached = price.input if price.cached_input is None else price.cached_input
    prices = (price.input, cached, price.output)
    if not all(p.is_finite() and p >= 0 for p in prices):
        return None
    places = max(max(0, -int(p.as_tuple().exponent)) for p in prices)
    if places > _EXACT_PLACES:
        return None
    ints = []
    for p in prices:
        _, digits, exponent = p.as_tuple()
        ints.append(int("".join(map(str, digits))) * 10 ** (int(exponent) + places))
    # Price per 1M tokens times 10**places, so cost in 1e-10 USD = total * 10**(4 - places).
    mul, div = (10 ** (4 - places), 1) if places <= 4 else (1, 10 ** (places - 4))
    return _Rates(price, ints[0], ints[1], ints[2], mul, div)


def cost_of(table: PriceTable, model: str | None, at: datetime, usage: Usage) -> Cost:
    """Price `usage` of `model` at the prices in force at `at`. Never raises."""
    missing: list[str] = []
    price, rates = table._priced(model, at)
    prompt, cached, completion = usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
    units = None if rates is None else _units(rates, prompt, cached, completion)
    if units is not None:
        tokens = Decimal(units).scaleb(-10)
    else:
        if price is None and (prompt or completion):
            missing.append("tokens")
        tokens = _tokens(price, prompt, cached, completion)
    counts = (usage.code_interpreter_sessions, usage.file_search_calls, usage.web_search_calls)
    if not any(counts):  # most events: no tool to look up
        return Cost(tokens, tokens, _ZERO, price, tuple(missing))
    tools = Decimal(0)
    for tool, count in zip(_TOOLS, counts, strict=True):
        if not count:
            continue
        unit = table.tool_price(tool, at)
        if unit is None:
            missing.append(tool)
        else:
            tools += count * unit
    tools = tools.quantize(_PLACES)
    return Cost(tokens + tools, tokens, tools, price, tuple(missing))


def load_price_table(
    override_path: str | Path | None = None, *, use_genai_prices: bool = True
) -> PriceTable:
    """Read the override file (if given) and the packaged defaults into a `PriceTable`.

    Raises ConfigError naming the file, the entry, the key and its value when an entry is
    invalid, and naming the file when it cannot be read or parsed. genai-prices is read from the
    data in its wheel only; nothing here touches the network.
    """
    sources = []
    if override_path is not None:
        path = Path(override_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"pricing file {str(path)!r} cannot be read: {exc.strerror}") from exc
        sources.append(_parse(text, str(path), "config"))
    default = files("proxy").joinpath("data/pricing.toml")
    sources.append(_parse(default.read_text(encoding="utf-8"), str(default), "default"))
    return PriceTable(tuple(sources), _genai_prices() if use_genai_prices else None)


def _utc_date(at: datetime) -> date:
    # Naive datetimes are UTC: that is how this project stores every timestamp.
    if at.tzinfo is None or at.tzinfo is UTC:
        return at.date()
    return at.astimezone(UTC).date()


def _in_force(entries: tuple[_Entry, ...], day: date) -> _Entry | None:
    return next((e for e in entries if e.effective_from <= day), None)


def _parse(text: str, where: str, source: str) -> _Source:
    try:
        # Decimal straight from the TOML text: a float would already have lost the cents.
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    if unknown := sorted(set(doc) - {"models", "tools"}):
        raise ConfigError(
            f"{where}: unknown section {unknown[0]!r}; expected [[models]], [[tools]]"
        )
    models: dict[str, list[ModelPrice]] = {}
    for at, name, entry in _entries(doc, "models", where, _MODEL_KEYS):
        cached = entry.get("cached_input")
        models.setdefault(name.lower(), []).append(
            ModelPrice(
                model=name,
                effective_from=_date(entry, at),
                input=_price(entry, "input", at),
                cached_input=None if cached is None else _price(entry, "cached_input", at),
                output=_price(entry, "output", at),
                source=source,
            )
        )
    tools: dict[str, list[_ToolPrice]] = {}
    for at, name, entry in _entries(doc, "tools", where, _TOOL_KEYS):
        if name not in _TOOLS:
            raise ConfigError(f"{at}: tool = {name!r} is not one of {', '.join(_TOOLS)}")
        per = entry.get("per", 1)
        if isinstance(per, bool) or not isinstance(per, int) or per <= 0:
            raise ConfigError(f"{at}: per = {per!r} must be a positive whole number")
        price = _ToolPrice(_date(entry, at), _price(entry, "price", at) / per)
        tools.setdefault(name, []).append(price)
    return _Source(_newest_first(models, where), _newest_first(tools, where))


def _entries(
    doc: dict[str, Any], section: str, where: str, keys: tuple[str, set[str], set[str]]
) -> list[tuple[str, str, dict[str, Any]]]:
    """Each entry of `section` with where it is, for messages, and its name, all keys checked."""
    name_key, required, optional = keys
    required = {name_key, *required}
    entries = doc.get(section, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: {section} must be an array of tables, written [[{section}]]")
    checked = []
    for number, entry in enumerate(entries, start=1):
        at = f"{where}: [[{section}]] entry {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: {entry!r} is not a table")
        if unknown := [key for key in entry if key not in required | optional]:
            raise ConfigError(f"{at}: unknown key {unknown[0]!r} = {entry[unknown[0]]!r}")
        if absent := sorted(required - entry.keys()):
            raise ConfigError(f"{at}: the key {absent[0]!r} is missing")
        name = entry[name_key]
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{at}: {name_key} = {name!r} must be a non-empty string")
        checked.append((f"{at} ({name_key} = {name.strip()!r})", name.strip(), entry))
    return checked


def _date(entry: dict[str, Any], at: str) -> date:
    value = entry["effective_from"]
    # datetime is a date subclass; a time of day would suggest a precision prices do not have.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{at}: effective_from = {value!r} is not a date like 2024-10-02"
        ) from exc


def _price(entry: dict[str, Any], key: str, at: str) -> Decimal:
    value = entry[key]
    try:
        price = Decimal(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise ConfigError(f"{at}: {key} = {value!r} is not a number") from exc
    # bool is an int to Python, but true is never a price; nor is NaN or Infinity.
    if isinstance(value, bool) or not price.is_finite():
        raise ConfigError(f"{at}: {key} = {value!r} is not a number")
    if price < 0:
        raise ConfigError(f"{at}: {key} = {value!r} must not be negative")
    return price


def _newest_first(by_name: dict[str, list[_Entry]], where: str) -> Mapping[str, tuple[_Entry, ...]]:
    for name, entries in by_name.items():
        entries.sort(key=lambda e: e.effective_from, reverse=True)
        for newer, older in pairwise(entries):
            if newer.effective_from == older.effective_from:
                day = newer.effective_from
                raise ConfigError(f"{where}: two entries for {name!r} with effective_from = {day}")
    return MappingProxyType({name: tuple(entries) for name, entries in by_name.items()})


def _genai_prices() -> _Lookup | None:
    try:
        from genai_prices.data import providers
        from genai_prices.data_snapshot import DataSnapshot

        # A private snapshot of the bundled data: the package-wide one is swapped for a
        # downloaded copy whenever anyone in the process runs genai_prices.UpdatePrices.
        snapshot = DataSnapshot(providers=providers, from_auto_update=False)
    except (ImportError, TypeError):
        return None

    def lookup(model: str, at: datetime) -> ModelPrice | None:
        # Fail open to "unknown price": a fault in third-party data may cost an event its
        # price, which is logged by the caller, but must never cost it its usage row.
        try:
            return _from_genai(snapshot, model, at)
        except Exception:
            return None

    return lookup


def _from_genai(snapshot: Any, model: str, at: datetime) -> ModelPrice | None:
    # Only OpenAI's own list: the upstream is OpenAI or Azure OpenAI, which charge the same.
    # An unknown model raises LookupError, which the caller's guard turns into None.
    _, info = snapshot.find_provider_model(model, None, "openai", None)
    prices, since = info.prices, None
    if isinstance(prices, list):
        # Conditional prices, the last one in force wins, as in genai-prices itself; unlike it,
        # an event older than all of them gets no price rather than the first one.
        active = [p for p in prices if p.constraint is None or p.constraint.active(at)]
        if not active:
            return None
        prices, since = active[-1].prices, getattr(active[-1].constraint, "start_date", None)
    rates = (prices.input_mtok, prices.cache_read_mtok, prices.output_mtok)
    # Tiered (long-context) prices depend on the prompt's size, which a flat price cannot say.
    if rates[0] is None or not all(r is None or isinstance(r, Decimal) for r in rates):
        return None
    output = Decimal(0) if rates[2] is None else rates[2]
    return ModelPrice(info.id, since, rates[0], rates[1], output, "genai-prices")
