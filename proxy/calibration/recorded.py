"""Recorded runs: JSON lines of a run, its steps and messages, as the API returned them. Pure.

One line: ``{"id"?, "kind"?, "completeness"?, "run": {...}, "steps": [...], "messages": [...]}``
(the format of ``shared/real_runs/calibration.jsonl``). The reported usage is read from
``run.usage`` and each step's ``usage`` only for comparison and fitting, never by the estimate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RecordedRun", "RunsFileError", "parse_runs", "read_runs"]


class RunsFileError(ValueError):
    """A line that is not a recorded run; the message names the file and line."""


@dataclass(frozen=True)
class RecordedRun:
    line: int
    id: str
    kind: str
    complete: bool
    run: Mapping[str, Any]
    steps: list[Mapping[str, Any]]
    messages: list[Mapping[str, Any]]

    @property
    def model(self) -> str | None:
        model = self.run.get("model")
        return model if isinstance(model, str) else None

    @property
    def reported(self) -> tuple[int, int] | None:
        """(prompt, completion) the API reported for the run, or None."""
        return _usage(self.run.get("usage"))

    def reported_steps(self) -> dict[str, tuple[int, int]]:
        """Step id -> (prompt, completion) for every step that reported usage."""
        out = {}
        for step in self.steps:
            usage = _usage(step.get("usage"))
            if usage is not None and isinstance(step.get("id"), str):
                out[step["id"]] = usage
        return out


def read_runs(path: str) -> list[RecordedRun]:
    """Every run in the file; RunsFileError naming the line of the first bad one."""
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_runs(fh, path)
    except OSError as exc:
        raise RunsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RunsFileError(f"{path}: not UTF-8 text") from None


def parse_runs(lines: Iterable[str], name: str) -> list[RecordedRun]:
    runs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        runs.append(_parse(line, f"{name}:{number}", number))
    return runs


def _parse(line: str, where: str, number: int) -> RecordedRun:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RunsFileError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise RunsFileError(f"{where}: a line must be a JSON object")
    run = obj.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("id"), str):
        raise RunsFileError(f"{where}: 'run' must be a thread.run object with an id")
    for name in ("steps", "messages"):
        value = obj.get(name, [])
        if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
            raise RunsFileError(f"{where}: {name!r} must be a list of objects")
    line_id = obj.get("id")
    kind = obj.get("kind")
    return RecordedRun(
        line=number,
        id=line_id if isinstance(line_id, str) and line_id else run["id"],
        kind=kind if isinstance(kind, str) and kind else _kind_of(run),
        complete=obj.get("completeness", "complete") != "partial",
        run=run,
        steps=obj.get("steps", []),
        messages=obj.get("messages", []),
    )


def _kind_of(run: Mapping[str, Any]) -> str:
    tools = run.get("tools") if isinstance(run.get("tools"), list) else []
    kinds = sorted({t.get("type") for t in tools if isinstance(t, dict) and t.get("type")})
    return "+".join(kinds) if kinds else "no_tools"


def _usage(value: object) -> tuple[int, int] | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)
    ):
        return None
    return prompt, completion
