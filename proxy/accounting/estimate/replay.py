"""Which of a thread's objects count for a run, and in what order they happened. Pure.

The rules are in ``runs.py``'s docstring: own steps and answers, context messages up to the
run, ties in a second broken so that the input order never matters, duplicates counted once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from proxy.accounting.estimate.effects import (
    Effect,
    Parts,
    answer_effect,
    context_effect,
    step_effect,
)
from proxy.accounting.estimate.fields import as_int, as_str, get

__all__ = ["events"]

_SortKey = tuple[int, int, int, str, int]
# A step that never completed cannot have preceded one that did in the same second.
_LAST = sys.maxsize
_CONTEXT, _STEP, _UNLINKED = 0, 1, 2


def events(
    run: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    parts: Parts,
) -> Iterable[tuple[_SortKey, Effect]]:
    run_id = as_str(run.get("id"))
    run_time = as_int(run.get("created_at"))
    own_steps = [s for s in _unique(steps, "thread.run.step") if _belongs(s, run_id)]
    step_keys: dict[str, _SortKey] = {}
    for step in own_steps:
        key = _step_key(step, run_time)
        created = as_str(get(step, "step_details", "message_creation", "message_id"))
        if created:
            step_keys[created] = key
        yield key, step_effect(step, parts)
    context: list[tuple[_SortKey, Effect]] = []
    for message in _unique(messages, "thread.message"):
        if _is_own_answer(message, run_id):
            linked = as_str(message.get("id")) in step_keys
            yield _answer_key(message, step_keys), answer_effect(message, parts, linked)
        elif _is_context(message, run_id, run_time):
            key = (
                as_int(message.get("created_at")) or 0,
                _CONTEXT,
                0,
                as_str(message.get("id")),
                0,
            )
            context.append((key, context_effect(message, parts)))
    context.sort(key=lambda e: e[0])
    yield from context[len(context) - _last_messages(run, len(context)) :]


def _unique(objects: Sequence[object], kind: str) -> Iterable[Mapping[str, Any]]:
    seen: set[str] = set()
    for obj in objects if isinstance(objects, Sequence) else ():
        if not isinstance(obj, Mapping) or obj.get("object", kind) != kind:
            continue
        obj_id = as_str(obj.get("id"))
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
    created = as_int(message.get("created_at"))
    return run_time is None or created is None or created <= run_time


def _last_messages(run: Mapping[str, Any], available: int) -> int:
    strategy = run.get("truncation_strategy")
    if isinstance(strategy, Mapping) and strategy.get("type") == "last_messages":
        limit = as_int(strategy.get("last_messages"))
        if limit is not None and limit >= 0:
            return min(limit, available)
    return available


def _step_key(step: Mapping[str, Any], run_time: int | None) -> _SortKey:
    created = as_int(step.get("created_at"))
    completed = as_int(step.get("completed_at"))
    when = next((t for t in (created, completed, run_time) if t is not None), 0)
    return (when, _STEP, _LAST if completed is None else completed, as_str(step.get("id")), 0)


def _answer_key(message: Mapping[str, Any], step_keys: Mapping[str, _SortKey]) -> _SortKey:
    step_key = step_keys.get(as_str(message.get("id")))
    if step_key is not None:
        # Right behind the step that wrote it, even if another step shares the step's second.
        when, rank, completed, step_id, _ = step_key
        return (when, rank, completed, step_id, 1)
    return (as_int(message.get("created_at")) or 0, _UNLINKED, 0, as_str(message.get("id")), 0)
