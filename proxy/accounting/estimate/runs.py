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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.accounting.estimate.basis import Basis
from proxy.accounting.estimate.constants import ConstantsTable, load_shipped_table
from proxy.accounting.estimate.effects import (
    NOTHING,
    Effect,
    Parts,
    files_basis,
    safe_counter,
    system_basis,
)
from proxy.accounting.estimate.replay import events
from proxy.accounting.estimate.vision import vision_rule

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
    count = safe_counter(count_tokens)
    run = run if isinstance(run, Mapping) else {}
    model = run.get("model") if isinstance(run.get("model"), str) else None
    parts = Parts(count, vision_rule(model))
    prompt = system_basis(run, parts) + files_basis(run, steps, messages, parts)
    turns: list[Turn] = []
    totals = Effect()
    for _, effect in sorted(events(run, steps, messages, parts), key=lambda e: e[0]):
        if effect.turn:
            turns.append(Turn(effect.step_id, prompt, Basis()))
        if turns and effect.completion is not NOTHING:
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
