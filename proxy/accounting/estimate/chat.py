"""Estimate a chat completion's tokens when the upstream reported none (a stream sent without
``stream_options.include_usage``). Pure: plain request JSON, generated text and a token counter.
`ChatStream` gathers a stream's chunks: its id, model, usage if any, and the generated text.

The prompt follows OpenAI's cookbook ("How to count tokens with tiktoken",
``num_tokens_from_messages`` and ``num_tokens_for_tools``):

- each message costs ``per_message`` (3) plus the tokens of its string fields (role, content,
  name, tool_call_id, refusal); a ``name`` adds ``per_name`` (1); every reply is primed with
  ``reply_priming`` (3);
- content given as parts counts its ``text`` and ``refusal`` parts; an ``image_url`` part counts
  ``image_low`` (85) at ``detail: low`` and ``image_high`` (765, a 1024x1024 image) otherwise;
  audio and file parts count nothing;
- an assistant message's tool calls (and the legacy ``function_call``) count their name and
  arguments plus ``per_tool_call`` (3);
- function definitions (``tools`` of type function, or the legacy ``functions``) are counted as
  the cookbook does for gpt-4o: 7 per function, ``name:description``, 3 for a parameter list,
  3 plus ``key:type:description`` per top-level parameter, enum values at 3 each less 3, and 12
  to close. Nested schemas count nothing beyond their top level.

The completion is the tokens of each generated piece (a choice's content or refusal, a tool
call's name, its arguments), counted separately, plus ``per_tool_call`` per tool call. Reasoning
tokens are never streamed, so a reasoning model's completion is underestimated.

Missing fields and values of the wrong type count nothing rather than raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHAT_ESTIMATOR",
    "ChatEstimateConstants",
    "ChatStream",
    "TokenCounter",
    "estimate_chat_stream",
    "estimate_completion",
    "estimate_prompt",
]

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class ChatEstimateConstants:
    per_message: int = 3
    per_name: int = 1
    reply_priming: int = 3
    per_tool_call: int = 3
    image_low: int = 85
    image_high: int = 765
    function_init: int = 7
    properties_init: int = 3
    property_key: int = 3
    enum_init: int = -3
    enum_item: int = 3
    function_end: int = 12


_DEFAULT = ChatEstimateConstants()
# Names the method and its constants on every row it estimated (the `estimator` column), as
# the run estimator's version does; bumped when either changes.
CHAT_ESTIMATOR = "chat1"
# Generated text a stream may hold for its estimate; the rest is counted at 4 characters a token.
_MAX_STREAM_CHARS = 4_000_000
_STRING_FIELDS = ("role", "content", "name", "tool_call_id", "refusal")


def estimate_prompt(
    request: Mapping[str, Any], count: TokenCounter, c: ChatEstimateConstants = _DEFAULT
) -> int:
    """Prompt tokens of a chat completions request body (its messages and function tools)."""
    messages = request.get("messages")
    total = 0
    if isinstance(messages, list):
        total = sum(_message(m, count, c) for m in messages if isinstance(m, dict))
        total += c.reply_priming
    return max(total + _functions(_function_defs(request), count, c), 0)


def estimate_completion(
    pieces: Iterable[str], tool_calls: int, count: TokenCounter, c: ChatEstimateConstants = _DEFAULT
) -> int:
    """Completion tokens of the generated `pieces` and `tool_calls` tool calls."""
    return sum(_count(count, p) for p in pieces) + tool_calls * c.per_tool_call


def _count(count: TokenCounter, text: object) -> int:
    return max(count(text), 0) if isinstance(text, str) and text else 0


def _message(m: Mapping[str, Any], count: TokenCounter, c: ChatEstimateConstants) -> int:
    total = c.per_message
    for key in _STRING_FIELDS:
        value = m.get(key)
        if key == "content" and isinstance(value, list):
            total += sum(_part(p, count, c) for p in value if isinstance(p, dict))
        else:
            total += _count(count, value)
    if isinstance(m.get("name"), str):
        total += c.per_name
    calls = m.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if isinstance(call, dict):
            total += _call(call.get("function"), count, c)
    if m.get("function_call") is not None:
        total += _call(m.get("function_call"), count, c)
    return total


def _part(p: Mapping[str, Any], count: TokenCounter, c: ChatEstimateConstants) -> int:
    kind = p.get("type")
    if kind == "text":
        return _count(count, p.get("text"))
    if kind == "refusal":
        return _count(count, p.get("refusal"))
    if kind == "image_url":
        image = p.get("image_url")
        detail = image.get("detail") if isinstance(image, dict) else None
        return c.image_low if detail == "low" else c.image_high
    return 0


def _call(fn: object, count: TokenCounter, c: ChatEstimateConstants) -> int:
    if not isinstance(fn, dict):
        return 0
    return c.per_tool_call + _count(count, fn.get("name")) + _count(count, fn.get("arguments"))


def _function_defs(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    defs = []
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            defs.append(tool.get("function"))
    legacy = request.get("functions")
    defs.extend(legacy if isinstance(legacy, list) else ())
    return [d for d in defs if isinstance(d, dict)]


def _functions(defs: list[Mapping[str, Any]], count: TokenCounter, c: ChatEstimateConstants) -> int:
    total = 0
    for fn in defs:
        total += c.function_init + _count(count, f"{_str(fn, 'name')}:{_desc(fn)}")
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, dict) else None
        if isinstance(props, dict) and props:
            total += c.properties_init
            for key, prop in props.items():
                prop = prop if isinstance(prop, dict) else {}
                total += c.property_key
                enum = prop.get("enum")
                if isinstance(enum, list):
                    total += c.enum_init
                    total += sum(c.enum_item + _count(count, str(v)) for v in enum)
                total += _count(count, f"{key}:{_str(prop, 'type')}:{_desc(prop)}")
        total += c.function_end
    return total


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _desc(obj: Mapping[str, Any]) -> str:
    # One trailing period is dropped, as in the cookbook whose counts were measured so.
    return _str(obj, "description").removesuffix(".")


class ChatStream:
    """What a streamed chat completion carried, fed one parsed `chat.completion.chunk` at a
    time: the first non-empty id and model (Azure's first chunk has neither), the usage of
    the chunk that had one, and the generated text and tool calls, for an estimate."""

    __slots__ = ("_chars", "_pieces", "created", "finished", "id", "model", "overflow", "usage")

    def __init__(self, max_chars: int = _MAX_STREAM_CHARS) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None  # unix time
        self.usage: Mapping[str, Any] | None = None
        self.finished = False
        self.overflow = 0  # characters beyond max_chars, not kept
        self._chars = max_chars
        self._pieces: dict[tuple[Any, ...], list[str]] = {}

    def add(self, chunk: Mapping[str, Any]) -> None:
        self.id = self.id or _str(chunk, "id") or None
        self.model = self.model or _str(chunk, "model") or None
        created = chunk.get("created")
        if self.created is None and isinstance(created, int) and not isinstance(created, bool):
            self.created = created
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            choice = _dict(choice)
            n = choice.get("index", 0)
            self.finished = self.finished or choice.get("finish_reason") is not None
            delta = _dict(choice.get("delta"))
            self._text((n, "content"), delta.get("content"))
            self._text((n, "refusal"), delta.get("refusal"))
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                call = _dict(call)
                self._call((n, "tool", call.get("index", 0)), call.get("function"))
            self._call((n, "function_call"), delta.get("function_call"))

    def _call(self, key: tuple[Any, ...], fn: object) -> None:
        if isinstance(fn, dict):
            self._pieces.setdefault((*key, "name"), [])
            self._text((*key, "name"), fn.get("name"))
            self._text((*key, "arguments"), fn.get("arguments"))

    def _text(self, key: tuple[Any, ...], text: object) -> None:
        if not isinstance(text, str) or not text:
            return
        if len(text) > self._chars:
            self.overflow += len(text)
            return
        self._chars -= len(text)
        self._pieces.setdefault(key, []).append(text)

    @property
    def tool_calls(self) -> int:
        return sum(1 for key in self._pieces if key[-1] == "name")

    def pieces(self) -> list[str]:
        """Each generated piece whole: a choice's content, a tool call's arguments, ..."""
        return ["".join(parts) for parts in self._pieces.values()]


def estimate_chat_stream(
    request: Mapping[str, Any] | None, stream: ChatStream, count: TokenCounter
) -> tuple[int, int]:
    """(prompt, completion) tokens of a stream without usage: the `request` body's prompt (0
    when the body was unreadable) and what the stream generated."""
    prompt = estimate_prompt(request, count) if request is not None else 0
    completion = estimate_completion(stream.pieces(), stream.tool_calls, count)
    return prompt, completion + math.ceil(stream.overflow / 4)
