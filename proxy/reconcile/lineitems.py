"""Billed line items beside the proxy's kinds and models. Pure.

OpenAI bills tokens per model and direction: "gpt-4o-2024-08-06, input", "..., output",
"..., cached input". The proxy records one row per event with its model and the cost of all
its tokens, so both sides meet at the model: a token line item maps to its model, and a row
to its model. Anything else (tool calls, storage, fine-tuning, a form we do not know) is kept
as `other`, never dropped.
"""

from __future__ import annotations

import re

__all__ = ["OTHER", "billed_label", "recorded_label"]

OTHER = "other"
_TOKENS = re.compile(r"^(?P<model>[a-z0-9][a-z0-9._:\-]*), *(?P<direction>[a-z ()_-]*)$")
_DIRECTIONS = ("input", "output")


def billed_label(line_item: str | None) -> str:
    """The model of a token line item, else OTHER."""
    match = _TOKENS.match((line_item or "").strip().lower())
    if match is None or not any(d in match["direction"] for d in _DIRECTIONS):
        return OTHER
    return match["model"]


def recorded_label(kind: str | None, model: str | None) -> str:
    """The model of a recorded row (every kind the proxy records is priced by tokens of its
    model), else OTHER."""
    return model.strip().lower() if model and model.strip() else OTHER
