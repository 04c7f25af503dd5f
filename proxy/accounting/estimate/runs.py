"""Estimate an Assistants run's prompt and completion tokens from its steps and messages.

The Assistants API reported no usage when this method was reverse engineered (see
``shared/seed``); when a run carries ``usage``, the caller should prefer it. Everything here is
pure: plain JSON dicts as the REST API returns them, a token counter, and constants.

The seed's method, which :func:`estimate_run` reproduces exactly for the seed's situation (one
user message, one code interpreter call, one answer, no instructions):

- messages and run steps are replayed in ``created_at`` order;
- the prompt starts at ``base_prompt`` (105);
- each run step is one completion, whose turn adds the current prompt size to the total;
- a user message adds ``per_user_message`` (4) + its tokens to the prompt;
- an assistant message of this run adds ``per_assistant_message`` (2) + its tokens to the
  completion;
- a code interpreter call adds ``code_interpreter_prompt`` (14) + its input + its log outputs to
  the prompt, and ``code_interpreter_completion`` (6) + its input to the completion.

Assumptions beyond the seed, each a guess until measured (the constants are configurable):

- The run's ``instructions`` are part of the system prompt: their tokens join ``base_prompt``.
  So do the run's function definitions, counted as their compact JSON plus
  ``per_function_definition`` each. Other tools' built-in descriptions are in ``base_prompt``
  (measured with code interpreter only; raise it for assistants with file search).
- A message is this run's when its ``run_id`` is the run's id. Other messages created at or
  before the run's ``created_at`` (earlier runs, added by hand, any role) are prompt context
  with the per-message overheads (4 user, 2 assistant), never completion. Other messages created
  after the run started belong to later runs or users and do not count. A message without a
  ``created_at``, or a run without one, counts as context.
- A user message carrying this run's id (``additional_messages``) is prompt context.
- An assistant message of this run is completion, and it also joins the prompt (2 + its tokens,
  like an earlier run's assistant message) for the run's later steps, because it is in the thread
  when the model is asked again. It joins right after the ``message_creation`` step that created
  it, so that step's own turn does not contain it; the seed's totals are unchanged, since its
  answer is the last object.
- Ties in ``created_at`` are common (a step and its message share a second). Order within one
  second: context messages, then steps (by ``completed_at``, then id), each followed by the
  message it created; this run's messages no step names come last. Ids break the remaining ties,
  so the result does not depend on the order of the input lists (the API lists newest first).
- Duplicated objects (overlapping pages) count once, by id.
- ``truncation_strategy`` ``last_messages: N`` keeps the last N context messages; ``auto``
  truncation is not modelled.
- Every step is a completion turn, whatever its type or status; steps that name another run are
  ignored.
- Several tool calls per step, and several outputs per code interpreter call, are summed. Each
  output adds ``per_code_interpreter_output`` (0: the seed's single output had no visible
  overhead) plus its content: a log's tokens, or ``per_image`` for an image.
- A function call mirrors a code interpreter call: its name and arguments are completion
  (+ ``function_call_completion``, 6) and, once made, prompt (+ ``function_call_prompt``, 14),
  together with its output.
- A file search call's query is generated but not returned by the API; it is guessed at 14
  tokens, so ``file_search_completion`` is 6 + 14 = 20 and ``file_search_prompt`` 14 + 14 = 28.
  The text of its results joins the prompt, but the API returns it only when the steps are
  fetched with ``include[]=step_details.tool_calls[*].file_search.results[*].content``.
- Images (``image_file`` and ``image_url`` parts, code interpreter image outputs) count
  ``per_image`` = 765: a 1024x1024 image at high detail (85 + 4 x 170) for GPT-4o class models.
- Message parts ``text`` (``text.value``) and ``refusal`` count their text; other part types
  count nothing. Missing fields, None values and objects of the wrong type count nothing rather
  than raise; a counter result below zero counts as zero.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DEFAULT_CONSTANTS", "EstimateConstants", "RunEstimate", "TokenCounter", "estimate_run"]

TokenCounter = Callable[[str], int]


def _check_constant(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"estimate constant {key!r} must be a non-negative int, got {value!r}")


@dataclass(frozen=True)
class EstimateConstants:
    """Token overheads of the estimate; see the module docstring for where each comes from.

    Every value is a non-negative int, checked on construction (ValueError names the field).
    """

    base_prompt: int = 105
    per_user_message: int = 4
    per_assistant_message: int = 2
    code_interpreter_prompt: int = 14
    code_interpreter_completion: int = 6
    per_code_interpreter_output: int = 0
    function_call_prompt: int = 14
    function_call_completion: int = 6
    per_function_definition: int = 0
    file_search_prompt: int = 28
    file_search_completion: int = 20
    per_image: int = 765

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_constant(f.name, getattr(self, f.name))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> EstimateConstants:
        """Build from a config table; missing keys keep their defaults.

        Raises ValueError naming an unknown key, or a key whose value is not a non-negative int.
        """
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"unknown estimate constant {key!r}; known: {sorted(known)}")
        for key, value in values.items():
            _check_constant(key, value)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunEstimate:
    """What one run is estimated to have used. Every count is an int >= 0.

    ``code_interpreter_call_times`` holds, in replay order, the unix time (the step's
    ``created_at``, else its ``completed_at``) of each code interpreter call whose step has one,
    for session billing.
    """

    prompt_tokens: int
    completion_tokens: int
    code_interpreter_calls: int
    file_search_calls: int
    function_calls: int
    code_interpreter_call_times: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


DEFAULT_CONSTANTS = EstimateConstants()


def estimate_run(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    count_tokens: TokenCounter,
    constants: EstimateConstants = DEFAULT_CONSTANTS,
) -> RunEstimate:
    """Estimate the tokens of ``run`` (a ``thread.run``) from its thread's ``thread.run.step``
    and ``thread.message`` objects, in any order. Never raises on odd objects; exceptions of
    ``count_tokens`` propagate."""
    count = _safe_counter(count_tokens)
    c = constants
    run = run if isinstance(run, Mapping) else {}
    prompt = c.base_prompt + count(run.get("instructions")) + _tools_tokens(run, count, c)
    total_prompt = completion = 0
    totals = _Effect()
    for _, effect in sorted(_events(run, steps, messages, count, c), key=lambda e: e[0]):
        if effect.turn:
            total_prompt += prompt
        prompt += effect.prompt
        completion += effect.completion
        totals = totals.plus(effect)
    return RunEstimate(
        prompt_tokens=total_prompt,
        completion_tokens=completion,
        code_interpreter_calls=totals.code_interpreter_calls,
        file_search_calls=totals.file_search_calls,
        function_calls=totals.function_calls,
        code_interpreter_call_times=totals.code_interpreter_times,
    )


@dataclass(frozen=True)
class _Effect:
    """One object's contribution; a turn adds the prompt as it was *before* this growth."""

    turn: bool = False
    prompt: int = 0
    completion: int = 0
    code_interpreter_calls: int = 0
    file_search_calls: int = 0
    function_calls: int = 0
    code_interpreter_times: tuple[int, ...] = ()

    def plus(self, other: _Effect) -> _Effect:
        return _Effect(
            turn=self.turn or other.turn,
            prompt=self.prompt + other.prompt,
            completion=self.completion + other.completion,
            code_interpreter_calls=self.code_interpreter_calls + other.code_interpreter_calls,
            file_search_calls=self.file_search_calls + other.file_search_calls,
            function_calls=self.function_calls + other.function_calls,
            code_interpreter_times=self.code_interpreter_times + other.code_interpreter_times,
        )


_Count = Callable[[object], int]
_SortKey = tuple[int, int, int, str, int]
# A step that never completed cannot have preceded one that did in the same second.
_LAST = sys.maxsize
_CONTEXT, _STEP, _UNLINKED = 0, 1, 2


def _events(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    count: _Count,
    c: EstimateConstants,
) -> Iterable[tuple[_SortKey, _Effect]]:
    run_id = _str(run.get("id"))
    run_time = _int(run.get("created_at"))
    own_steps = [s for s in _unique(steps, "thread.run.step") if _belongs(s, run_id)]
    step_keys: dict[str, _SortKey] = {}
    for step in own_steps:
        key = _step_key(step, run_time)
        created = _str(_get(step, "step_details", "message_creation", "message_id"))
        if created:
            step_keys[created] = key
        yield key, _step_effect(step, count, c)
    context: list[tuple[_SortKey, _Effect]] = []
    for message in _unique(messages, "thread.message"):
        if _is_own_answer(message, run_id):
            yield _answer_key(message, step_keys), _answer_effect(message, count, c)
        elif _is_context(message, run_id, run_time):
            key = (_int(message.get("created_at")) or 0, _CONTEXT, 0, _str(message.get("id")), 0)
            context.append((key, _context_effect(message, count, c)))
    context.sort(key=lambda e: e[0])
    yield from context[len(context) - _last_messages(run, len(context)) :]


def _unique(objects: Sequence[object], kind: str) -> Iterable[Mapping[str, Any]]:
    seen: set[str] = set()
    for obj in objects if isinstance(objects, Sequence) else ():
        if not isinstance(obj, Mapping) or obj.get("object", kind) != kind:
            continue
        obj_id = _str(obj.get("id"))
        if obj_id:
            if obj_id in seen:
                continue
            seen.add(obj_id)
        yield obj


def _belongs(step: Mapping[str, Any], run_id: str) -> bool:
    step_run = step.get("run_id")
    return step_run is None or not run_id or step_run == run_id


def _is_own_answer(message: Mapping[str, Any], run_id: str) -> bool:
    return bool(run_id) and message.get("run_id") == run_id and message.get("role") == "assistant"


def _is_context(message: Mapping[str, Any], run_id: str, run_time: int | None) -> bool:
    if run_id and message.get("run_id") == run_id:
        return True
    created = _int(message.get("created_at"))
    return run_time is None or created is None or created <= run_time


def _last_messages(run: Mapping[str, Any], available: int) -> int:
    strategy = run.get("truncation_strategy")
    if isinstance(strategy, Mapping) and strategy.get("type") == "last_messages":
        limit = _int(strategy.get("last_messages"))
        if limit is not None and limit >= 0:
            return min(limit, available)
    return available


def _step_key(step: Mapping[str, Any], run_time: int | None) -> _SortKey:
    created = _int(step.get("created_at"))
    completed = _int(step.get("completed_at"))
    when = next((t for t in (created, completed, run_time) if t is not None), 0)
    return (when, _STEP, _LAST if completed is None else completed, _str(step.get("id")), 0)


def _answer_key(message: Mapping[str, Any], step_keys: Mapping[str, _SortKey]) -> _SortKey:
    step_key = step_keys.get(_str(message.get("id")))
    if step_key is not None:
        # Right behind the step that wrote it, even if another step shares the step's second.
        when, rank, completed, step_id, _ = step_key
        return (when, rank, completed, step_id, 1)
    return (_int(message.get("created_at")) or 0, _UNLINKED, 0, _str(message.get("id")), 0)


def _step_effect(step: Mapping[str, Any], count: _Count, c: EstimateConstants) -> _Effect:
    when = _int(step.get("created_at"))
    when = _int(step.get("completed_at")) if when is None else when
    effect = _Effect(turn=True)
    for call in _list(_get(step, "step_details", "tool_calls")):
        if isinstance(call, Mapping):
            effect = effect.plus(_tool_call_effect(call, when, count, c))
    return effect


def _tool_call_effect(
    call: Mapping[str, Any], when: int | None, count: _Count, c: EstimateConstants
) -> _Effect:
    kind = call.get("type")
    if kind == "code_interpreter":
        code = _get(call, "code_interpreter", "input")
        outputs = _list(_get(call, "code_interpreter", "outputs"))
        return _Effect(
            prompt=c.code_interpreter_prompt + count(code) + _outputs_tokens(outputs, count, c),
            completion=c.code_interpreter_completion + count(code),
            code_interpreter_calls=1,
            code_interpreter_times=() if when is None else (when,),
        )
    if kind == "function":
        called = count(_get(call, "function", "name")) + count(_get(call, "function", "arguments"))
        return _Effect(
            prompt=c.function_call_prompt + called + count(_get(call, "function", "output")),
            completion=c.function_call_completion + called,
            function_calls=1,
        )
    if kind == "file_search":
        results = _list(_get(call, "file_search", "results"))
        found = sum(_parts_tokens(_get(r, "content"), count, c) for r in results)
        return _Effect(
            prompt=c.file_search_prompt + found,
            completion=c.file_search_completion,
            file_search_calls=1,
        )
    return _Effect()


def _outputs_tokens(outputs: list[object], count: _Count, c: EstimateConstants) -> int:
    total = 0
    for output in outputs:
        kind = _get(output, "type")
        if kind == "logs":
            total += c.per_code_interpreter_output + count(_get(output, "logs"))
        elif kind == "image":
            total += c.per_code_interpreter_output + c.per_image
    return total


def _context_effect(message: Mapping[str, Any], count: _Count, c: EstimateConstants) -> _Effect:
    role = message.get("role")
    if role not in ("user", "assistant"):
        return _Effect()
    overhead = c.per_user_message if role == "user" else c.per_assistant_message
    return _Effect(prompt=overhead + _parts_tokens(message.get("content"), count, c))


def _answer_effect(message: Mapping[str, Any], count: _Count, c: EstimateConstants) -> _Effect:
    tokens = c.per_assistant_message + _parts_tokens(message.get("content"), count, c)
    return _Effect(prompt=tokens, completion=tokens)


def _parts_tokens(content: object, count: _Count, c: EstimateConstants) -> int:
    if isinstance(content, str):
        return count(content)
    total = 0
    for part in _list(content):
        kind = _get(part, "type")
        if kind == "text":
            text = _get(part, "text")
            total += count(text if isinstance(text, str) else _get(text, "value"))
        elif kind == "refusal":
            total += count(_get(part, "refusal"))
        elif kind in ("image_file", "image_url"):
            total += c.per_image
    return total


def _tools_tokens(run: Mapping[str, Any], count: _Count, c: EstimateConstants) -> int:
    total = 0
    for tool in _list(run.get("tools")):
        function = _get(tool, "function")
        if _get(tool, "type") == "function" and isinstance(function, Mapping):
            text = json.dumps(
                function, ensure_ascii=False, separators=(",", ":"), skipkeys=True, default=str
            )
            total += c.per_function_definition + count(text)
    return total


def _safe_counter(count_tokens: TokenCounter) -> _Count:
    def count(text: object) -> int:
        if not isinstance(text, str) or not text:
            return 0
        return max(0, int(count_tokens(text)))

    return count


def _get(obj: object, *path: str) -> object:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _int(value: object) -> int | None:
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
