"""Prices of OpenAI usage, with effective dates, in Decimal: table.py (PriceTable, what was in
force when), cost.py (the cost of an event's usage), load.py (the override file and the
packaged defaults), genai.py (genai-prices' data as the last source)."""

from proxy.accounting.pricing.cost import Cost, Usage, cost_of, token_cost
from proxy.accounting.pricing.load import load_price_table
from proxy.accounting.pricing.table import ModelPrice, PriceTable

__all__ = [
    "Cost",
    "ModelPrice",
    "PriceTable",
    "Usage",
    "cost_of",
    "load_price_table",
    "token_cost",
]
