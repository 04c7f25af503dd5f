"""Reading price tables: the user's override file and the packaged defaults (TOML, format in
config/pricing.toml), with genai-prices' bundled data behind them (genai.py)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any

from proxy.accounting.pricing.genai import genai_prices
from proxy.accounting.pricing.table import TOOLS, Entry, ModelPrice, PriceTable, Source, ToolPrice
from proxy.errors import ConfigError

__all__ = ["load_price_table"]

# The key naming an entry, then its other required keys and its optional ones.
_MODEL_KEYS = ("model", {"effective_from", "input", "output"}, {"cached_input"})
_TOOL_KEYS = ("tool", {"effective_from", "price"}, {"per"})


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
    return PriceTable(tuple(sources), genai_prices() if use_genai_prices else None)


def _parse(text: str, where: str, source: str) -> Source:
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
    tools: dict[str, list[ToolPrice]] = {}
    for at, name, entry in _entries(doc, "tools", where, _TOOL_KEYS):
        if name not in TOOLS:
            raise ConfigError(f"{at}: tool = {name!r} is not one of {', '.join(TOOLS)}")
        per = entry.get("per", 1)
        if isinstance(per, bool) or not isinstance(per, int) or per <= 0:
            raise ConfigError(f"{at}: per = {per!r} must be a positive whole number")
        price = ToolPrice(_date(entry, at), _price(entry, "price", at) / per)
        tools.setdefault(name, []).append(price)
    return Source(_newest_first(models, where), _newest_first(tools, where))


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


def _newest_first(by_name: dict[str, list[Entry]], where: str) -> Mapping[str, tuple[Entry, ...]]:
    for name, entries in by_name.items():
        entries.sort(key=lambda e: e.effective_from, reverse=True)
        for newer, older in pairwise(entries):
            if newer.effective_from == older.effective_from:
                day = newer.effective_from
                raise ConfigError(f"{where}: two entries for {name!r} with effective_from = {day}")
    return MappingProxyType({name: tuple(entries) for name, entries in by_name.items()})
