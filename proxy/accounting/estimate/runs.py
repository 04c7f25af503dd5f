"""Estimate an Assistants run's prompt and completion tokens from its steps and messages. Pure.

Each run step is one model call (a turn). The prompt of a turn is modelled from parts:

- the system prompt: ``base_prompt``, the run's instructions, a preamble per tool type
  (``code_interpreter_tool``, ``file_search_tool``, ``function_tool``), each function
  definition as the model reads it (TypeScript, see ``functions.py``) plus
  ``per_function_definition``, and each file listed to code interpreter: its ``/mnt/data`` path
  plus ``code_interpreter_file``;
- the thread's messages up to the run (``per_user_message`` / ``per_assistant_message`` each,
  plus their text and images);
- everything earlier turns of this run added: a code interpreter call's input and outputs
  (``code_interpreter_prompt``, ``per_code_interpreter_output`` each), a function call's name,
  arguments and output (``function_call_prompt``), a file search call and its results
  (``file_search_prompt``, ``per_file_search_result`` each, plus their text), and the answers
  the run wrote (``per_assistant_message`` each);
- images by the model's vision rules (``vision.py``), ``image_tiles`` tiles when their size is
  unknown.

A turn's completion is what it generated: a code interpreter input
(+ ``code_interpreter_completion``), a function call's name and arguments
(+ ``function_call_completion``), a file search query, which the API never returns
(``file_search_completion``), or an answer (+ ``answer_completion``). The run's usage is the sum
of its turns.

Every count is a :class:`~proxy.accounting.estimate.basis.Basis`, linear in the constants, so
the same code estimates (with a table) and calibrates (by fitting the table). The constants and
where each value comes from are in ``proxy/data/estimate_constants.toml``.

Which messages count, and in what order:

- A message is this run's when its ``run_id`` is the run's id. Other messages created at or
  before the run's ``created_at`` are prompt context. Messages created after the run started
  belong to later runs and do not count. A message without a ``created_at``, or a run without
  one, counts as context. A user message carrying this run's id (``additional_messages``) is
  context.
- An answer of this run joins the prompt right after the ``message_creation`` step that created
  it, so that step's own turn does not contain it. An answer that no step names still had a
  turn of its own, which is counted (the steps were not fetched, or a page of them is missing).
- Ties in ``created_at`` are common. Order within one second: context messages, then steps (by
  ``completed_at``, then id), each followed by the message it created; answers no step names
  come last. Ids break the remaining ties, so the result does not depend on the input order.
- Duplicated objects (overlapping pages) count once, by id.
- ``truncation_strategy`` ``last_messages: N`` keeps the last N context messages; ``auto``
  truncation is not modelled.
- Steps that name another run are ignored. Missing fields, None values and objects of the wrong
  type count nothing rather than raise; a counter result below zero counts as zero.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.accounting.estimate.basis import Basis
from proxy.accounting.estimate.constants import ConstantsTable, load_shipped_table
from proxy.accounting.estimate.functions import render_function
from proxy.accounting.estimate.vision import figure_tiles, vision_rule

__all__ = [
    "RunBasis",
    "RunEstimate",
    "TokenCounter",
    "Turn",
    "default_table",
    "estimate_run",
    "run_basis",
]

TokenCounter = Callable[[str], int]

_SHIPPED: list[ConstantsTable] = []


def default_table() -> ConstantsTable:
    """The shipped table, read once."""
    if not _SHIPPED:
        _SHIPPED.append(load_shipped_table())
    return _SHIPPED[0]


@dataclass(frozen=True)
class Turn:
    """One model call: the prompt it was sent and what it generated, as bases."""

    step_id: str
    prompt: Basis
    completion: Basis


@dataclass(frozen=True)
class RunBasis:
    """A run's turns, and its tool calls, before any constant is applied."""

    model: str | None
    turns: tuple[Turn, ...]
    code_interpreter_calls: int
    file_search_calls: int
    function_calls: int
    code_interpreter_call_times: tuple[int, ...]

    @property
    def prompt(self) -> Basis:
        return sum((t.prompt for t in self.turns), Basis())

    @property
    def completion(self) -> Basis:
        return sum((t.completion for t in self.turns), Basis())


@dataclass(frozen=True)
class RunEstimate:
    """What one run is estimated to have used. Every count is an int >= 0.

    ``code_interpreter_call_times`` holds, in replay order, the unix time (the step's
    ``created_at``, else its ``completed_at``) of each code interpreter call whose step has one,
    for session billing. ``estimator`` names the estimator and constants that made it.
    """

    prompt_tokens: int
    completion_tokens: int
    code_interpreter_calls: int
    file_search_calls: int
    function_calls: int
    code_interpreter_call_times: tuple[int, ...]
    estimator: str = ""
    prompt_basis: Basis | None = None
    completion_basis: Basis | None = None

    def basis_json(self) -> dict[str, Any] | None:
        """The bases of the estimate, for a usage row: calibration refits from them later."""
        if self.prompt_basis is None or self.completion_basis is None:
            return None
        return {
            "prompt": self.prompt_basis.to_json(),
            "completion": self.completion_basis.to_json(),
        }

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def estimate_run(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    count_tokens: TokenCounter,
    table: ConstantsTable | None = None,
) -> RunEstimate:
    """Estimate the tokens of ``run`` (a ``thread.run``) from its thread's ``thread.run.step``
    and ``thread.message`` objects, in any order, with ``table`` (default: the shipped one).
    Never raises on odd objects; exceptions of ``count_tokens`` propagate."""
    table = default_table() if table is None else table
    basis = run_basis(run, steps, messages, count_tokens)
    constants = table.for_model(basis.model)
    prompt, completion = basis.prompt, basis.completion
    return RunEstimate(
        prompt_tokens=prompt.value(constants),
        completion_tokens=completion.value(constants),
        code_interpreter_calls=basis.code_interpreter_calls,
        file_search_calls=basis.file_search_calls,
        function_calls=basis.function_calls,
        code_interpreter_call_times=basis.code_interpreter_call_times,
        estimator=table.version,
        prompt_basis=prompt,
        completion_basis=completion,
    )


def run_basis(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    count_tokens: TokenCounter,
) -> RunBasis:
    """The turns of ``run`` as bases: what :func:`estimate_run` evaluates and calibration fits."""
    count = _safe_counter(count_tokens)
    run = run if isinstance(run, Mapping) else {}
    model = run.get("model") if isinstance(run.get("model"), str) else None
    parts = _Parts(count, vision_rule(model))
    prompt = _system_basis(run, parts) + _files_basis(run, steps, messages, parts)
    turns: list[Turn] = []
    totals = _Effect()
    for _, effect in sorted(_events(run, steps, messages, parts), key=lambda e: e[0]):
        if effect.turn:
            turns.append(Turn(effect.step_id, prompt, Basis()))
        if turns and effect.completion is not _NOTHING:
            last = turns[-1]
            turns[-1] = Turn(last.step_id, last.prompt, last.completion + effect.completion)
        prompt = prompt + effect.prompt
        totals = totals.plus(effect)
    return RunBasis(
        model=model,
        turns=tuple(turns),
        code_interpreter_calls=totals.code_interpreter_calls,
        file_search_calls=totals.file_search_calls,
        function_calls=totals.function_calls,
        code_interpreter_call_times=totals.code_interpreter_times,
    )


_NOTHING = Basis()


@dataclass(frozen=True)
class _Effect:
    """One object's contribution; a turn is sent the prompt as it was *before* this growth."""

    turn: bool = False
    step_id: str = ""
    prompt: Basis = _NOTHING
    completion: Basis = _NOTHING
    code_interpreter_calls: int = 0
    file_search_calls: int = 0
    function_calls: int = 0
    code_interpreter_times: tuple[int, ...] = ()

    def plus(self, other: _Effect) -> _Effect:
        return _Effect(
            turn=self.turn or other.turn,
            step_id=self.step_id or other.step_id,
            prompt=self.prompt + other.prompt,
            completion=self.completion + other.completion,
            code_interpreter_calls=self.code_interpreter_calls + other.code_interpreter_calls,
            file_search_calls=self.file_search_calls + other.file_search_calls,
            function_calls=self.function_calls + other.function_calls,
            code_interpreter_times=self.code_interpreter_times + other.code_interpreter_times,
        )


_Count = Callable[[object], int]


@dataclass(frozen=True)
class _Parts:
    count: _Count
    vision: tuple[int, int]

    def image(self, tiles: int | None, low_detail: bool = False) -> Basis:
        base, per_tile = self.vision
        if low_detail:
            return Basis(base)
        if tiles is None:
            return Basis.of(base, image_tiles=per_tile)
        return Basis(base + tiles * per_tile)


_SortKey = tuple[int, int, int, str, int]
# A step that never completed cannot have preceded one that did in the same second.
_LAST = sys.maxsize
_CONTEXT, _STEP, _UNLINKED = 0, 1, 2


def _events(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    parts: _Parts,
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
        yield key, _step_effect(step, parts)
    context: list[tuple[_SortKey, _Effect]] = []
    for message in _unique(messages, "thread.message"):
        if _is_own_answer(message, run_id):
            linked = _str(message.get("id")) in step_keys
            yield _answer_key(message, step_keys), _answer_effect(message, parts, linked)
        elif _is_context(message, run_id, run_time):
            key = (_int(message.get("created_at")) or 0, _CONTEXT, 0, _str(message.get("id")), 0)
            context.append((key, _context_effect(message, parts)))
    context.sort(key=lambda e: e[0])
    yield from context[len(context) - _last_messages(run, len(context)) :]


def _system_basis(run: Mapping[str, Any], parts: _Parts) -> Basis:
    basis = Basis.of(parts.count(run.get("instructions")), base_prompt=1)
    kinds = {_get(tool, "type") for tool in _list(run.get("tools"))}
    if "code_interpreter" in kinds:
        basis = basis + Basis.of(code_interpreter_tool=1)
    if "file_search" in kinds or "retrieval" in kinds:
        basis = basis + Basis.of(file_search_tool=1)
    if "function" in kinds:
        basis = basis + Basis.of(function_tool=1)
    for tool in _list(run.get("tools")):
        function = _get(tool, "function")
        if _get(tool, "type") == "function" and isinstance(function, Mapping):
            basis = basis + Basis.of(
                parts.count(render_function(function)), per_function_definition=1
            )
    return basis


_MOUNTED_FILE = re.compile(r"/mnt/data/(file-[A-Za-z0-9]+)")


def _files_basis(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    parts: _Parts,
) -> Basis:
    """Files listed to code interpreter in the system prompt, each by its path under /mnt/data.

    The list is not returned, so it is gathered from what is: the run's tool resources, message
    attachments for code interpreter, and files the model opens by their ``/mnt/data/file-...``
    path (an id it can only have read in that list).
    """
    if "code_interpreter" not in {_get(tool, "type") for tool in _list(run.get("tools"))}:
        return Basis()
    files = {f for f in _list(_get(run, "tool_resources", "code_interpreter", "file_ids"))}
    for message in messages if isinstance(messages, Sequence) else ():
        for attachment in _list(_get(message, "attachments")):
            tools = {_get(t, "type") for t in _list(_get(attachment, "tools"))}
            if "code_interpreter" in tools:
                files.add(_get(attachment, "file_id"))
    for step in steps if isinstance(steps, Sequence) else ():
        for call in _list(_get(step, "step_details", "tool_calls")):
            code = _get(call, "code_interpreter", "input")
            if isinstance(code, str):
                files.update(_MOUNTED_FILE.findall(code))
    paths = sorted(f"/mnt/data/{f}" for f in files if isinstance(f, str) and f)
    return Basis.of(sum(parts.count(p) for p in paths), code_interpreter_file=len(paths))


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


def _step_effect(step: Mapping[str, Any], parts: _Parts) -> _Effect:
    when = _int(step.get("created_at"))
    when = _int(step.get("completed_at")) if when is None else when
    effect = _Effect(turn=True, step_id=_str(step.get("id")))
    for call in _list(_get(step, "step_details", "tool_calls")):
        if isinstance(call, Mapping):
            effect = effect.plus(_tool_call_effect(call, when, parts))
    return effect


def _tool_call_effect(call: Mapping[str, Any], when: int | None, parts: _Parts) -> _Effect:
    count = parts.count
    kind = call.get("type")
    if kind == "code_interpreter":
        code = _get(call, "code_interpreter", "input")
        outputs = _list(_get(call, "code_interpreter", "outputs"))
        written = count(code)
        return _Effect(
            prompt=Basis.of(written, code_interpreter_prompt=1) + _outputs(outputs, code, parts),
            completion=Basis.of(written, code_interpreter_completion=1),
            code_interpreter_calls=1,
            code_interpreter_times=() if when is None else (when,),
        )
    if kind == "function":
        called = count(_get(call, "function", "name")) + count(_get(call, "function", "arguments"))
        output = count(_get(call, "function", "output"))
        return _Effect(
            prompt=Basis.of(called + output, function_call_prompt=1),
            completion=Basis.of(called, function_call_completion=1),
            function_calls=1,
        )
    if kind == "file_search":
        results = _list(_get(call, "file_search", "results"))
        found = sum(_parts_basis(_get(r, "content"), parts).offset for r in results)
        return _Effect(
            prompt=Basis.of(found, file_search_prompt=1, per_file_search_result=len(results)),
            completion=Basis.of(file_search_completion=1),
            file_search_calls=1,
        )
    return _Effect()


def _outputs(outputs: list[object], code: object, parts: _Parts) -> Basis:
    total = Basis()
    for output in outputs:
        kind = _get(output, "type")
        if kind == "logs":
            total = total + Basis.of(
                parts.count(_get(output, "logs")), per_code_interpreter_output=1
            )
        elif kind == "image":
            tiles = figure_tiles(code) if isinstance(code, str) else None
            total = total + parts.image(tiles) + Basis.of(per_code_interpreter_output=1)
    return total


def _context_effect(message: Mapping[str, Any], parts: _Parts) -> _Effect:
    role = message.get("role")
    if role not in ("user", "assistant"):
        return _Effect()
    overhead = "per_user_message" if role == "user" else "per_assistant_message"
    return _Effect(prompt=_parts_basis(message.get("content"), parts) + Basis.of(**{overhead: 1}))


def _answer_effect(message: Mapping[str, Any], parts: _Parts, linked: bool) -> _Effect:
    text = _parts_basis(message.get("content"), parts)
    return _Effect(
        turn=not linked,
        prompt=text + Basis.of(per_assistant_message=1),
        completion=text + Basis.of(answer_completion=1),
    )


def _parts_basis(content: object, parts: _Parts) -> Basis:
    count = parts.count
    if isinstance(content, str):
        return Basis(count(content))
    total = Basis()
    for part in _list(content):
        kind = _get(part, "type")
        if kind == "text":
            text = _get(part, "text")
            total = total + Basis(count(text if isinstance(text, str) else _get(text, "value")))
        elif kind == "refusal":
            total = total + Basis(count(_get(part, "refusal")))
        elif kind in ("image_file", "image_url"):
            detail = _get(part, kind, "detail")
            total = total + parts.image(None, low_detail=detail == "low")
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
