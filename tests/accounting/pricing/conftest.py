"""The packaged tables, with and without genai-prices behind them."""

from __future__ import annotations

import pytest

from proxy.accounting.pricing import (
    PriceTable,
    load_price_table,
)


@pytest.fixture(scope="module")
def defaults() -> PriceTable:
    return load_price_table(use_genai_prices=False)


@pytest.fixture(scope="module")
def full() -> PriceTable:
    return load_price_table()
