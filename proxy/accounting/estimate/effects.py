"""What each object of a run adds to the prompt and the completion, as bases. Pure.

See ``runs.py`` for the model; ``replay.py`` decides which objects count and in what order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.accounting.estimate.basis import Basis
from proxy.accounting.estimate.fields import as_int, as_list, as_str, get, strings, types_of
from proxy.accounting.estimate.functions import render_function
from proxy.accounting.estimate.vision import figure_tiles

__all__ = [
    "NOTHING",
    "Count",
    "Effect",
    "Parts",
    "answer_effect",
    "context_effect",
    "files_basis",
    "safe_counter",
    "step_effect",
    "system_basis",
]

NOTHING = Basis()


@dataclass(frozen=True)
class Effect:
    """One object's contribution; a turn is sent the prompt as it was *before* this growth."""

    turn: bool = False
    step_id: str = ""
    prompt: Basis = NOTHING
    completion: Basis = NOTHING
    code_interpreter_calls: int = 0
    file_search_calls: int = 0
    function_calls: int = 0
    code_interpreter_times: tuple[int, ...] = ()

    def plus(self, other: Effect) -> Effect:
        return Effect(
            turn=self.turn or other.turn,
            step_id=self.step_id or other.step_id,
            prompt=self.prompt + other.prompt,
            completion=self.completion + other.completion,
            code_interpreter_calls=self.code_interpreter_calls + other.code_interpreter_calls,
            file_search_calls=self.file_search_calls + other.file_search_calls,
            function_calls=self.function_calls + other.function_calls,
            code_interpreter_times=self.code_interpreter_times + other.code_interpreter_times,
        )


Count = Callable[[object], int]


@dataclass(frozen=True)
class Parts:
    count: Count
    vision: tuple[int, int]

    def image(self, tiles: int | None, low_detail: bool = False) -> Basis:
        base, per_tile = self.vision
        if low_detail:
            return Basis(base)
        if tiles is None:
            return Basis.of(base, image_tiles=per_tile)
        return Basis(base + tiles * per_tile)


def system_basis(run: Mapping[str, Any], parts: Parts) -> Basis:
    basis = Basis.of(parts.count(run.get("instructions")), base_prompt=1)
    kinds = types_of(run.get("tools"))
    if "code_interpreter" in kinds:
        basis = basis + Basis.of(code_interpreter_tool=1)
    if "file_search" in kinds or "retrieval" in kinds:
        basis = basis + Basis.of(file_search_tool=1)
    if "function" in kinds:
        basis = basis + Basis.of(function_tool=1)
    for tool in as_list(run.get("tools")):
        function = get(tool, "function")
        if get(tool, "type") == "function" and isinstance(function, Mapping):
            basis = basis + Basis.of(
                parts.count(render_function(function)), per_function_definition=1
            )
    return basis


_MOUNTED_FILE = re.compile(r"/mnt/data/(file-[A-Za-z0-9]+)")


def files_basis(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    parts: Parts,
) -> Basis:
    """Files listed to code interpreter in the system prompt, each by its path under /mnt/data.

    The list is not returned, so it is gathered from what is: the run's tool resources, message
    attachments for code interpreter, and files the model opens by their ``/mnt/data/file-...``
    path (an id it can only have read in that list).
    """
    if "code_interpreter" not in types_of(run.get("tools")):
        return Basis()
    files = set(strings(get(run, "tool_resources", "code_interpreter", "file_ids")))
    for message in messages if isinstance(messages, Sequence) else ():
        for attachment in as_list(get(message, "attachments")):
            if "code_interpreter" in types_of(get(attachment, "tools")):
                files.update(strings([get(attachment, "file_id")]))
    for step in steps if isinstance(steps, Sequence) else ():
        for call in as_list(get(step, "step_details", "tool_calls")):
            code = get(call, "code_interpreter", "input")
            if isinstance(code, str):
                files.update(_MOUNTED_FILE.findall(code))
    paths = sorted(f"/mnt/data/{f}" for f in files if f)
    return Basis.of(sum(parts.count(p) for p in paths), code_interpreter_file=len(paths))


def step_effect(step: Mapping[str, Any], parts: Parts) -> Effect:
    when = as_int(step.get("created_at"))
    when = as_int(step.get("completed_at")) if when is None else when
    effect = Effect(turn=True, step_id=as_str(step.get("id")))
    for call in as_list(get(step, "step_details", "tool_calls")):
        if isinstance(call, Mapping):
            effect = effect.plus(_tool_call_effect(call, when, parts))
    return effect


def _tool_call_effect(call: Mapping[str, Any], when: int | None, parts: Parts) -> Effect:
    count = parts.count
    kind = call.get("type")
    if kind == "code_interpreter":
        code = get(call, "code_interpreter", "input")
        outputs = as_list(get(call, "code_interpreter", "outputs"))
        written = count(code)
        return Effect(
            prompt=Basis.of(written, code_interpreter_prompt=1) + _outputs(outputs, code, parts),
            completion=Basis.of(written, code_interpreter_completion=1),
            code_interpreter_calls=1,
            code_interpreter_times=() if when is None else (when,),
        )
    if kind == "function":
        called = count(get(call, "function", "name")) + count(get(call, "function", "arguments"))
        output = count(get(call, "function", "output"))
        return Effect(
            prompt=Basis.of(called + output, function_call_prompt=1),
            completion=Basis.of(called, function_call_completion=1),
            function_calls=1,
        )
    if kind == "file_search":
        results = as_list(get(call, "file_search", "results"))
        found = sum(_parts_basis(get(r, "content"), parts).offset for r in results)
        return Effect(
            prompt=Basis.of(found, file_search_prompt=1, per_file_search_result=len(results)),
            completion=Basis.of(file_search_completion=1),
            file_search_calls=1,
        )
    return Effect()


def _outputs(outputs: list[object], code: object, parts: Parts) -> Basis:
    total = Basis()
    for output in outputs:
        kind = get(output, "type")
        if kind == "logs":
            total = total + Basis.of(
                parts.count(get(output, "logs")), per_code_interpreter_output=1
            )
        elif kind == "image":
            tiles = figure_tiles(code) if isinstance(code, str) else None
            total = total + parts.image(tiles) + Basis.of(per_code_interpreter_output=1)
    return total


def context_effect(message: Mapping[str, Any], parts: Parts) -> Effect:
    role = message.get("role")
    if role not in ("user", "assistant"):
        return Effect()
    overhead = "per_user_message" if role == "user" else "per_assistant_message"
    return Effect(prompt=_parts_basis(message.get("content"), parts) + Basis.of(**{overhead: 1}))


def answer_effect(message: Mapping[str, Any], parts: Parts, linked: bool) -> Effect:
    text = _parts_basis(message.get("content"), parts)
    return Effect(
        turn=not linked,
        prompt=text + Basis.of(per_assistant_message=1),
        completion=text + Basis.of(answer_completion=1),
    )


def _parts_basis(content: object, parts: Parts) -> Basis:
    count = parts.count
    if isinstance(content, str):
        return Basis(count(content))
    total = Basis()
    for part in as_list(content):
        kind = get(part, "type")
        if kind == "text":
            text = get(part, "text")
            total = total + Basis(count(text if isinstance(text, str) else get(text, "value")))
        elif kind == "refusal":
            total = total + Basis(count(get(part, "refusal")))
        elif kind in ("image_file", "image_url"):
            detail = get(part, kind, "detail")
            total = total + parts.image(None, low_detail=detail == "low")
    return total


def safe_counter(count_tokens: Callable[[str], int]) -> Count:
    def count(text: object) -> int:
        if not isinstance(text, str) or not text:
            return 0
        return max(0, int(count_tokens(text)))

    return count
