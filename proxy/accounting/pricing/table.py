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
(tests/accounting/pricing/test_cost.py compares the two). Decimal arithmetic per event cost more CPU
than the rest of building its row (bench/README.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import NamedTuple, TypeVar

__all__ = [
    "Entry",
    "Lookup",
    "ModelPrice",
    "PriceTable",
    "Rates",
    "Source",
    "ToolPrice",
    "in_force",
]

_UNPRICED: tuple[None, None] = (None, None)
TOOLS = (
    "code_interpreter_session",
    "file_search_call",
    "web_search_call",
    "web_search_preview_call",
    # Containers of more memory than the default 1 GB, per 20-minute session.
    "code_interpreter_session_4g",
    "code_interpreter_session_16g",
    "code_interpreter_session_64g",
)
_SNAPSHOT = re.compile(r"(?P<alias>.+)-\d{4}-\d{2}-\d{2}")
Lookup = Callable[[str, datetime], "ModelPrice | None"]
_CACHE_SIZE = 4096
# Integer rates only for prices with at most this many decimal places, and costs below
# _EXACT_UNITS units of 1e-10 USD: within both, every step of the Decimal formula is exact in
# Decimal's 28 digits, so the two agree to the last digit. Anything else takes the formula.
_EXACT_PLACES = 12
Entry = TypeVar("Entry", "ModelPrice", "ToolPrice")


@dataclass(frozen=True)
class ModelPrice:
    """Token prices in USD per 1M tokens. `effective_from` is None when the source gives no date."""

    model: str
    effective_from: date | None
    input: Decimal
    cached_input: Decimal | None  # None: cached tokens cost the input price
    output: Decimal
    source: str  # "config", "default" or "genai-prices"


class Rates(NamedTuple):
    """A model price as integers: the cost of tokens in units of 1e-10 USD is
    (uncached * input + cached * cached + completion * output) * mul, divided by div and
    rounded half to even."""

    price: ModelPrice
    input: int
    cached: int
    output: int
    mul: int
    div: int


class ToolPrice(NamedTuple):
    effective_from: date
    unit: Decimal  # USD per session or per call


class Source(NamedTuple):
    models: Mapping[str, tuple[ModelPrice, ...]]  # lower-cased name -> newest first
    tools: Mapping[str, tuple[ToolPrice, ...]]  # newest first


@dataclass(frozen=True)
class PriceTable:
    """Immutable prices from one or more files and optionally genai-prices; see the module doc."""

    _sources: tuple[Source, ...]
    _fallback: Lookup | None = field(default=None, repr=False)
    # (model, day) -> the tables' answer, as integer rates where they are exact. Pricing runs
    # for every recorded request; the tables change only by date, so the answer is the same
    # all day. genai-prices is not cached: its conditions may depend on the time, not only the
    # day.
    _cache: dict[tuple[str, date], tuple[ModelPrice | None, Rates | None]] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    def model_price(self, model: str | None, at: datetime) -> ModelPrice | None:
        """Token prices in force for `model` at `at` (naive means UTC), or None if unknown."""
        return self._priced(model, at)[0]

    def _priced(self, model: str | None, at: datetime) -> tuple[ModelPrice | None, Rates | None]:
        if not model:
            return _UNPRICED
        key = (model, utc_date(at))
        try:
            priced = self._cache[key]
        except KeyError:
            price = self._from_tables(model, key[1])
            priced = (price, None if price is None else rates(price))
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
                if price := in_force(source.models.get(name, ()), day):
                    return price
        return None

    def tool_price(self, tool: str, at: datetime) -> Decimal | None:
        """USD per session or call of `tool` in force at `at`, or None if the tables have none."""
        day = utc_date(at)
        for source in self._sources:
            if price := in_force(source.tools.get(tool, ()), day):
                return price.unit
        return None


def rates(price: ModelPrice) -> Rates | None:
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
    return Rates(price, ints[0], ints[1], ints[2], mul, div)


def utc_date(at: datetime) -> date:
    # Naive datetimes are UTC: that is how this project stores every timestamp.
    if at.tzinfo is None or at.tzinfo is UTC:
        return at.date()
    return at.astimezone(UTC).date()


def in_force(entries: tuple[Entry, ...], day: date) -> Entry | None:
    return next((e for e in entries if e.effective_from <= day), None)
