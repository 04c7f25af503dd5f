"""The fallback source of prices: OpenAI's list in the data bundled with the genai-prices
wheel (never downloaded)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from proxy.accounting.pricing.table import Lookup, ModelPrice

__all__ = ["genai_prices"]


def genai_prices() -> Lookup | None:
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
