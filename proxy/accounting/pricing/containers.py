"""What a code interpreter container's session costs, from its lifetime. Pure.

OpenAI prices a container per 20-minute session by its memory_limit (pricing.toml), and since
2026-06-02 bills "eligible container sessions" per minute with a 5-minute minimum instead of
the full 20-minute session (developers.openai.com/api/docs/changelog). The changelog does not
define "eligible"; this proxy's rule, stated once here:

- Eligible: a container created on or after PER_MINUTE_FROM whose lifetime the proxy read from
  the Containers API (created_at and last_active_at). It is billed for the minutes from
  created_at to last_active_at, rounded up, at least MINIMUM_MINUTES, at the session price
  divided by SESSION_MINUTES. The idle time before expiry is not billed (else every session
  would last 20 minutes and per-minute billing would change nothing). A container started by
  `container: {"type": "auto"}` that no call used is billed the same way: its lifetime is
  empty, so it pays the minimum.
- Not eligible: a container created before PER_MINUTE_FROM, or one whose lifetime is unknown
  (deleted before the proxy could read it, or no key to read it with): one full session, the
  former rule and an upper bound, recorded as an estimate.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from proxy.accounting.pricing.cost import session_tool
from proxy.accounting.pricing.table import PriceTable

__all__ = [
    "MINIMUM_MINUTES",
    "PER_MINUTE_FROM",
    "SESSION_MINUTES",
    "billed_minutes",
    "session_cost",
]

PER_MINUTE_FROM = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
MINIMUM_MINUTES = 5
SESSION_MINUTES = 20
_PLACES = Decimal("1e-10")


def billed_minutes(created: dt.datetime, last_active: dt.datetime | None) -> int | None:
    """Minutes billed for a container alive from `created` to `last_active`; None when the
    session is not eligible for per-minute billing (created before PER_MINUTE_FROM)."""
    if created < PER_MINUTE_FROM:
        return None
    span = max((last_active or created) - created, dt.timedelta(0)).total_seconds()
    return max(MINIMUM_MINUTES, math.ceil(span / 60))


def session_cost(
    prices: PriceTable, memory: str, created: dt.datetime, minutes: int | None
) -> Decimal | None:
    """The cost of one session of a `memory` container created at `created`: `minutes` at the
    per-minute rate, or one full session when `minutes` is None. None: no price in force."""
    price = prices.tool_price(session_tool(memory), created)
    if price is None:
        return None
    if minutes is None:
        return price.quantize(_PLACES)
    return (price * minutes / SESSION_MINUTES).quantize(_PLACES)
