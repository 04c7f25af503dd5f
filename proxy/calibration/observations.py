"""What a recorded run tells the fit: reported token counts, each beside the basis that the
estimator would evaluate for them. Pure.

A complete run whose every turn reported its usage gives one prompt and one completion
observation per turn, which separates the fixed prompt of a turn from what the thread adds. A
complete run with only a run total gives one of each for the run. A partial run (something the
estimate needs is missing from the recording) gives only what it has in full: the prompt of its
first turn (the system prompt and the thread so far), the completion of its tool call turns,
and how much the prompt grew across a tool call turn whose calls all show their output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.accounting.estimate.basis import Basis
from proxy.accounting.estimate.constants import family_for_model
from proxy.accounting.estimate.runs import RunBasis, run_basis
from proxy.calibration.recorded import RecordedRun

__all__ = ["Observation", "basis_of", "observations"]


@dataclass(frozen=True)
class Observation:
    run_id: str
    family: str
    what: str  # "prompt" or "completion"
    target: int
    basis: Basis


def basis_of(
    recorded: RecordedRun, counter_for: Callable[[str | None], Callable[[str], int]]
) -> RunBasis:
    """The run's basis, through exactly the code the collector uses."""
    return run_basis(recorded.run, recorded.steps, recorded.messages, counter_for(recorded.model))


def observations(recorded: RecordedRun, basis: RunBasis) -> list[Observation]:
    family = family_for_model(recorded.model)
    reported = recorded.reported_steps()
    tool_steps = {s.get("id") for s in recorded.steps if s.get("type") == "tool_calls"}
    shown = {s.get("id") for s in recorded.steps if _outputs_shown(s)}
    turns = basis.turns

    def obs(what: str, target: int, b: Basis) -> Observation:
        return Observation(recorded.id, family, what, target, b)

    if not recorded.complete:
        out = []
        if turns and turns[0].step_id in reported:
            out.append(obs("prompt", reported[turns[0].step_id][0], turns[0].prompt))
        for turn, after in zip(turns, [*turns[1:], None], strict=True):
            if turn.step_id not in reported or turn.step_id not in tool_steps:
                continue
            out.append(obs("completion", reported[turn.step_id][1], turn.completion))
            if after is not None and after.step_id in reported and turn.step_id in shown:
                grew = reported[after.step_id][0] - reported[turn.step_id][0]
                out.append(obs("prompt growth", grew, after.prompt - turn.prompt))
        return out
    if turns and all(t.step_id in reported for t in turns) and len(reported) == len(turns):
        out = []
        for turn in turns:
            prompt, completion = reported[turn.step_id]
            out += [
                obs("prompt", prompt, turn.prompt),
                obs("completion", completion, turn.completion),
            ]
        return out
    total = recorded.reported
    if total is None:
        return []
    return [obs("prompt", total[0], basis.prompt), obs("completion", total[1], basis.completion)]


def stored_observations(
    run_id: str, model: str | None, reported: tuple[int, int], bases: Mapping[str, Basis]
) -> list[Observation]:
    """Observations from a usage row that kept its estimate's bases beside reported usage."""
    family = family_for_model(model)
    return [
        Observation(run_id, family, what, target, bases[what])
        for what, target in zip(("prompt", "completion"), reported, strict=True)
        if what in bases
    ]


def _outputs_shown(step: Mapping[str, object]) -> bool:
    """Whether every call of a tool call step shows what it returned (the API leaves out some
    code interpreter outputs, such as errors, and file search results unless asked)."""
    details = step.get("step_details")
    calls = details.get("tool_calls") if isinstance(details, Mapping) else None
    if not isinstance(calls, list) or not calls:
        return False
    for call in calls:
        kind = call.get("type") if isinstance(call, Mapping) else None
        body = call.get(kind) if kind else None
        if not isinstance(body, Mapping):
            return False
        if kind == "code_interpreter" and not body.get("outputs"):
            return False
        if kind == "function" and body.get("output") is None:
            return False
        if kind == "file_search" and not body.get("results"):
            return False
    return True
