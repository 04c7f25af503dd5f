"""Which Responses built-in tool rates apply, read from the response's `tools` (else the
request's) and its model: web search or its preview, and the code interpreter container's
memory. Pure. Counts of calls come from the response's `output` items (rows.py): `usage`
carries none.

- `web_search_preview` on a non-reasoning model is billed at its own per-call rate (its search
  content tokens are free: they are not in `usage`); on a reasoning model, and `web_search`
  itself, at the web search rate plus the content tokens at the model's rates (in `usage`).
- A container's session price follows its `memory_limit` (1g by default).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["container_memory", "is_reasoning", "uses_search_preview"]

_MEMORY = ("1g", "4g", "16g", "64g")
# Reasoning models by name, for a response that does not say (no `reasoning.effort`).
_REASONING = re.compile(r"^(o\d|gpt-5|codex)", re.I)


def _tools(response: Mapping[str, Any], request: Mapping[str, Any] | None) -> list[dict]:
    for source in (response, request or {}):
        tools = source.get("tools")
        if isinstance(tools, list) and tools:
            return [t for t in tools if isinstance(t, dict)]
    return []


def is_reasoning(response: Mapping[str, Any], model: str | None) -> bool:
    reasoning = response.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        return True
    return bool(model and _REASONING.match(model))


def uses_search_preview(
    response: Mapping[str, Any], request: Mapping[str, Any] | None, model: str | None
) -> bool:
    """True when the web search calls are billed at the preview rate."""
    types = {str(t.get("type")) for t in _tools(response, request)}
    preview = any(t.startswith("web_search_preview") for t in types)
    return preview and "web_search" not in types and not is_reasoning(response, model)


def container_memory(response: Mapping[str, Any], request: Mapping[str, Any] | None) -> str:
    """The memory_limit of the code interpreter tool's container ("1g" when not given)."""
    # The request's too: a response echoes a resolved container as its id, without the memory.
    for tool in [*_tools(response, None), *_tools({}, request)]:
        if tool.get("type") == "code_interpreter":
            container = tool.get("container")
            limit = container.get("memory_limit") if isinstance(container, dict) else None
            if isinstance(limit, str) and limit.lower() in _MEMORY:
                return limit.lower()
    return "1g"
