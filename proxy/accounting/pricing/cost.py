"""The cost of one event's usage at the prices in force (table.py), in exact Decimal: token
costs as integer arithmetic where the rates allow, tools per session or call."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from proxy.accounting.pricing.table import ModelPrice, PriceTable, Rates

__all__ = ["Cost", "Usage", "cost_of", "session_tool", "token_cost"]

_MTOK = Decimal(1_000_000)
_PLACES = Decimal("1e-10")  # the usage table stores money as Numeric(20, 10)
_ZERO = Decimal(0).quantize(_PLACES)
_EXACT_UNITS = 10**18


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
    # web_search_preview on a non-reasoning model: its own per-call rate.
    web_search_preview_calls: int = 0
    # The code interpreter container's memory_limit ("1g", "4g", "16g", "64g"): the session
    # price follows it.
    container_memory: str = "1g"


def session_tool(memory: str) -> str:
    """The price table's name for a code interpreter session of a `memory` container."""
    return "code_interpreter_session" if memory == "1g" else f"code_interpreter_session_{memory}"


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

    @property
    def billed(self) -> Decimal | None:
        """What a usage row records: the total, or None when a part had no price (a row
        must never claim a partial sum as the whole cost)."""
        return self.total if not self.missing else None


def token_cost(
    table: PriceTable,
    model: str | None,
    at: datetime,
    prompt: int = 0,
    cached: int = 0,
    completion: int = 0,
) -> Decimal | None:
    """`cost_of(table, model, at, Usage(prompt, cached, completion)).billed`, without building
    either tuple: the price of a chat completion or an embedding. None when tokens were used
    and `model` has no price in force. Never raises."""
    price, rates = table._priced(model, at)
    if rates is not None:
        units = _units(rates, prompt, cached, completion)
        if units is not None:
            return Decimal(units).scaleb(-10)
    if price is None and (prompt or completion):
        return None
    return _tokens(price, prompt, cached, completion)


def _units(rates: Rates, prompt: int, cached: int, completion: int) -> int | None:
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
    counts = (
        (session_tool(usage.container_memory), usage.code_interpreter_sessions),
        ("file_search_call", usage.file_search_calls),
        ("web_search_call", usage.web_search_calls),
        ("web_search_preview_call", usage.web_search_preview_calls),
    )
    if not any(count for _, count in counts):  # most events: no tool to look up
        return Cost(tokens, tokens, _ZERO, price, tuple(missing))
    tools = Decimal(0)
    for tool, count in counts:
        if not count:
            continue
        unit = table.tool_price(tool, at)
        if unit is None:
            missing.append(tool)
        else:
            tools += count * unit
    tools = tools.quantize(_PLACES)
    return Cost(tokens + tools, tokens, tools, price, tuple(missing))
