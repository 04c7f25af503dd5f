"""Function definitions as the model reads them. Pure.

The API does not show a model a function's JSON: it renders each definition into its system
prompt as TypeScript, inside a ``namespace functions { ... }`` block (the format that public
token counters such as openai-chat-tokens reproduce). The tokens of that rendering, not of the
JSON, are what a function costs on every turn; the namespace wrapper and the tool's preamble
are the table constant ``function_tool``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["render_function"]


def render_function(function: Mapping[str, Any]) -> str:
    """One function definition's TypeScript, as it stands inside the namespace block."""
    lines: list[str] = []
    description = function.get("description")
    if isinstance(description, str) and description:
        lines.append(f"// {description}")
    name = function.get("name") if isinstance(function.get("name"), str) else ""
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    if isinstance(properties, Mapping) and properties:
        lines.append(f"type {name} = (_: {{")
        lines.append(_properties(parameters, 0))  # type: ignore[arg-type]
        lines.append("}) => any;")
    else:
        lines.append(f"type {name} = () => any;")
    return "\n".join(lines)


def _properties(schema: Mapping[str, Any], indent: int) -> str:
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    lines: list[str] = []
    properties = schema.get("properties")
    for name, param in properties.items() if isinstance(properties, Mapping) else ():
        param = param if isinstance(param, Mapping) else {}
        description = param.get("description")
        if isinstance(description, str) and description and indent < 2:
            lines.append(f"// {description}")
        optional = "" if name in required else "?"
        lines.append(f"{name}{optional}: {_type(param, indent)},")
    return "\n".join(" " * indent + line for line in lines)


def _type(param: Mapping[str, Any], indent: int) -> str:
    kind = param.get("type")
    enum = param.get("enum")
    if isinstance(enum, list) and enum:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in enum)
    if kind in ("number", "integer"):
        return "number"
    if kind in ("string", "boolean", "null"):
        return str(kind)
    if kind == "object":
        return "\n".join(["{", _properties(param, indent + 2), "}"])
    if kind == "array":
        items = param.get("items")
        return f"{_type(items, indent)}[]" if isinstance(items, Mapping) else "any[]"
    return "any"
