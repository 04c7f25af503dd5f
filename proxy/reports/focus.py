"""`report --format focus`: usage as FOCUS 1.2 (the FinOps Open Cost and Usage Specification,
https://focus.finops.org/focus-specification/v1-2/), one row per usage row or per group. Pure:
events in (proxy.db.queries.usage_events rows), FOCUS rows out; rendered as CSV.

Every Mandatory column of 1.2 is written, and the conditional ones this data has (ResourceId,
SkuId, ConsumedQuantity, Tags, ...). Costs are the proxy's: BilledCost = EffectiveCost =
ListCost = ContractedCost = cost_usd, in USD. An unpriced event has no cost, but FOCUS costs
may not be null: it is written as 0, with `x_Priced` false and its ChargeDescription saying so.
A group's dimension column holds the value its events share, else null; its charge period runs
from its first event to one second after its last (occurred_at has whole seconds).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = ["FOCUS_COLUMNS", "FOCUS_VERSION", "focus_rows"]

FOCUS_VERSION = "1.2"
FOCUS_COLUMNS = (
    # Mandatory in FOCUS 1.2
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
    # Conditional or recommended, where this data has them
    "ChargeFrequency",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingCategory",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceSubcategory",
    "SkuId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    # Extensions (FOCUS reserves the x_ prefix for them)
    "x_Priced",
    "x_UsageSource",
    "x_Events",
    "x_PromptTokens",
    "x_CompletionTokens",
)
_PROVIDER = "OpenAI"
_DEFAULT_ACCOUNT = "openai"
# report group-by field -> the event columns that make the group
_GROUP_KEYS: dict[str, tuple[str, ...]] = {
    "team": ("team",),
    "assistant": ("assistant_id",),
    "conversation": ("conversation_id",),
    "prompt": ("prompt_id",),
    "model": ("model",),
    "key": ("key_fingerprint",),
    "project": ("project",),
    "kind": ("kind",),
    "tag": ("tag",),
    "day": ("day",),
    "month": ("month",),
}
_SHARED = (
    "object_id",
    "kind",
    "model",
    "team",
    "key_hint",
    "assistant_id",
    "tag",
    "project",
    "organization",
    "usage_source",
    "deployment",
)


def _month(at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start = at.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + dt.timedelta(days=32)).replace(day=1)


def _key(event: Mapping[str, Any], group_by: Sequence[str]) -> tuple[Any, ...]:
    at = event["occurred_at"].astimezone(dt.UTC)
    values: list[Any] = []
    for name in group_by:
        if name == "day":
            values.append(at.date())
        elif name == "month":
            values.append((at.year, at.month))
        else:
            values.extend(event.get(c) for c in _GROUP_KEYS[name])
    return tuple(values)


def focus_rows(
    events: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = (),
    *,
    assistant_names: Mapping[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """FOCUS rows (FOCUS_COLUMNS) of `events`: one per event, or one per group of `group_by`
    (report group-by fields), in the order the groups first appear. A group never spans two
    billing periods (UTC months): those are separate rows."""
    names = assistant_names or {}
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for i, event in enumerate(events):
        key = (*_key(event, group_by), _month(event["occurred_at"])[0]) if group_by else (i,)
        groups.setdefault(key, []).append(event)
    return [_row(members, names) for members in groups.values()]


def _shared(members: Sequence[Mapping[str, Any]], column: str) -> Any:
    first = members[0].get(column)
    return first if all(m.get(column) == first for m in members) else None


def _row(members: Sequence[Mapping[str, Any]], names: Mapping[str, str | None]) -> dict[str, Any]:
    shared = {c: _shared(members, c) for c in _SHARED}
    start = min(m["occurred_at"] for m in members)
    end = max(m["occurred_at"] for m in members) + dt.timedelta(seconds=1)
    period_start, period_end = _month(start)
    priced = all(m.get("cost_usd") is not None for m in members)
    cost = sum((m.get("cost_usd") or Decimal(0) for m in members), Decimal(0))
    prompt = sum(m.get("prompt_tokens") or 0 for m in members)
    completion = sum(m.get("completion_tokens") or 0 for m in members)
    tokens = sum(m.get("total_tokens") or 0 for m in members)
    account = shared["organization"] or _DEFAULT_ACCOUNT
    assistant = shared["assistant_id"]
    tags = {
        "team": shared["team"],
        "key_hint": shared["key_hint"],
        "assistant": assistant,
        "assistant_name": names.get(assistant) if assistant else None,
        "tag": shared["tag"],
    }
    what = " ".join(str(v) for v in (shared["kind"] or "usage", shared["model"]) if v)
    description = f"{what}: {prompt} prompt and {completion} completion tokens"
    if len(members) > 1:
        description = f"{len(members)} x {description}"
    if not priced:
        description += " (no price in force for some of it: its cost is not included)"
    resource = shared["object_id"] or assistant
    return {
        "BilledCost": cost,
        "BillingAccountId": account,
        "BillingAccountName": account,
        "BillingCurrency": "USD",
        "BillingPeriodEnd": period_end,
        "BillingPeriodStart": period_start,
        # A reconciliation's true-up (reconcile/trueup.py) corrects usage: FOCUS's Adjustment.
        "ChargeCategory": "Adjustment" if shared["kind"] == "adjustment" else "Usage",
        "ChargeClass": None,
        "ChargeDescription": description,
        "ChargePeriodEnd": end,
        "ChargePeriodStart": start,
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": _PROVIDER,
        "ListCost": cost,
        "PricingQuantity": tokens,
        "PricingUnit": "Tokens",
        "ProviderName": _PROVIDER,
        "PublisherName": _PROVIDER,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": "OpenAI API",
        "ChargeFrequency": "Usage-Based",
        "ConsumedQuantity": tokens,
        "ConsumedUnit": "Tokens",
        "PricingCategory": "Standard",
        "ResourceId": resource,
        # An Azure deployment is the resource a request was billed to by name.
        "ResourceName": (names.get(assistant) if assistant else None)
        or shared["deployment"]
        or resource,
        "ResourceType": shared["kind"],
        "ServiceSubcategory": "Generative AI",
        "SkuId": shared["model"],
        "SubAccountId": shared["project"],
        "SubAccountName": shared["project"],
        "Tags": json.dumps({k: v for k, v in tags.items() if v is not None}, sort_keys=True),
        "x_Priced": priced,
        "x_UsageSource": shared["usage_source"],
        "x_Events": len(members),
        "x_PromptTokens": prompt,
        "x_CompletionTokens": completion,
    }
