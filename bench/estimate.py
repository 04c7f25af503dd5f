"""Issue #14's estimator benchmark: how close the Assistants run estimator comes to the usage
the real API reported, and what one estimate costs in CPU.

1. Accuracy: every run of ../shared/real_runs/calibration.jsonl (recorded from the real API,
   with the usage it reported) estimated by `estimate_run` with the shipped constants and the
   real tokenizer, exactly as the collector does; errors per tool set and model family. Partial
   recordings (something the estimate needs was never fetched) are listed apart and not judged:
   their estimate is a lower bound; their first turn, which the recording does hold in full,
   is shown beside the step's reported usage.
2. CPU: one synthetic run of 50 steps and ~20,000 tokens of text (code interpreter calls with
   logs and a figure, function calls, file search results, answers) through `estimate_run` with
   `counter_for_model`, timed with time.process_time over several repetitions.

Prints PASS/FAIL per target and writes bench/results/estimate.json.
Run: .venv/bin/python bench/estimate.py [--runs FILE.jsonl] [--reps N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from procs import command_output, cpu_name

from proxy.accounting.estimate.constants import family_for_model
from proxy.accounting.estimate.runs import default_table, estimate_run, run_basis
from proxy.accounting.estimate.tokenizer import counter_for_model, warm_up
from proxy.calibration.recorded import RecordedRun, RunsFileError, read_runs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_RUNS = HERE.parent.parent / "shared" / "real_runs" / "calibration.jsonl"

PROMPT_MEDIAN = 0.03
EVERY_RUN_SHARE, EVERY_RUN_TOKENS = 0.10, 20
COMPLETION_MEDIAN = 0.01
CPU_MS = 20.0


# --- accuracy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    id: str
    kind: str
    model: str
    family: str
    complete: bool
    prompt: int
    completion: int
    reported_prompt: int
    reported_completion: int
    first_turn: int | None
    reported_first_turn: int | None

    def err(self, what: str) -> float:
        got, want = (
            (self.prompt, self.reported_prompt)
            if what == "prompt"
            else (self.completion, self.reported_completion)
        )
        return 0.0 if want == got else (got - want) / want if want else float("inf")

    def off(self, what: str) -> int:
        if what == "prompt":
            return abs(self.prompt - self.reported_prompt)
        return abs(self.completion - self.reported_completion)

    def within(self, what: str) -> bool:
        want = self.reported_prompt if what == "prompt" else self.reported_completion
        return self.off(what) <= max(EVERY_RUN_SHARE * want, EVERY_RUN_TOKENS)


def score(rec: RecordedRun) -> Scored | None:
    """The collector's estimate of one recorded run beside what the API reported (None: the
    recording has no reported usage). The estimate never reads the run's usage."""
    if rec.reported is None:
        return None
    count = counter_for_model(rec.model)
    est = estimate_run(rec.run, rec.steps, rec.messages, count)
    # The first turn's prompt: the part of a partial recording that is complete.
    turns = run_basis(rec.run, rec.steps, rec.messages, count).turns
    first = turns[0] if turns else None
    reported_first = rec.reported_steps().get(first.step_id) if first else None
    constants = default_table().for_model(rec.model)
    return Scored(
        id=rec.id,
        kind=rec.kind,
        model=rec.model or "?",
        family=family_for_model(rec.model),
        complete=rec.complete,
        prompt=est.prompt_tokens,
        completion=est.completion_tokens,
        reported_prompt=rec.reported[0],
        reported_completion=rec.reported[1],
        first_turn=first.prompt.value(constants) if first and reported_first else None,
        reported_first_turn=reported_first[0] if reported_first else None,
    )


def pct(value: float) -> str:
    return f"{100 * value:+.1f}%"


def apct(value: float) -> str:
    return f"{100 * value:.1f}%"


def columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )


def group_rows(scored: Sequence[Scored]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[Scored]] = {}
    for s in scored:
        groups.setdefault((s.kind, s.family), []).append(s)
    out = [summary(f"{k} {f}", runs) for (k, f), runs in sorted(groups.items())]
    return [*out, summary("all complete runs", scored)] if scored else out


def summary(name: str, runs: Sequence[Scored]) -> dict[str, Any]:
    p = [abs(s.err("prompt")) for s in runs]
    c = [abs(s.err("completion")) for s in runs]
    return {
        "group": name,
        "models": sorted({s.model for s in runs}),
        "runs": len(runs),
        "prompt_median": statistics.median(p),
        "prompt_max": max(p),
        "prompt_max_tokens": max(s.off("prompt") for s in runs),
        "completion_median": statistics.median(c),
        "completion_max": max(c),
        "completion_max_tokens": max(s.off("completion") for s in runs),
    }


def accuracy(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        print(f"accuracy: {path} is absent, skipped (the real runs live in shared/real_runs/)")
        return None
    try:
        recorded = read_runs(str(path))
    except RunsFileError as exc:
        sys.exit(f"accuracy: {exc}")
    scored = [s for r in recorded if (s := score(r)) is not None]
    complete = [s for s in scored if s.complete]
    partial = [s for s in scored if not s.complete]
    groups = group_rows(complete)
    print(f"accuracy: {len(scored)} recorded runs ({path}), estimator {default_table().version}")
    print("\ncomplete runs, |error| of the estimate against the reported usage")
    rows = [("group", "models", "runs", "prompt med", "prompt max", "compl med", "compl max")]
    for g in groups:
        rows.append(
            (
                g["group"],
                ",".join(g["models"]),
                str(g["runs"]),
                apct(g["prompt_median"]),
                f"{apct(g['prompt_max'])} ({g['prompt_max_tokens']} tok)",
                apct(g["completion_median"]),
                f"{apct(g['completion_max'])} ({g['completion_max_tokens']} tok)",
            )
        )
    print(columns(rows))
    print("\npartial runs (not judged: the estimate is a lower bound), and their first turn")
    rows = [("run", "model", "prompt", "reported", "err", "compl", "reported", "err", "1st turn")]
    for s in partial:
        first = (
            "-"
            if s.first_turn is None or not s.reported_first_turn
            else f"{s.first_turn}/{s.reported_first_turn} "
            f"{pct(s.first_turn / s.reported_first_turn - 1)}"
        )
        rows.append(
            (
                s.id,
                s.model,
                str(s.prompt),
                str(s.reported_prompt),
                pct(s.err("prompt")),
                str(s.completion),
                str(s.reported_completion),
                pct(s.err("completion")),
                first,
            )
        )
    print(columns(rows))
    overall = groups[-1] if complete else None
    worst_p = max(complete, key=lambda s: s.off("prompt") / max(1, s.reported_prompt))
    worst_c = max(complete, key=lambda s: s.off("completion") / max(1, s.reported_completion))
    checks = [
        (
            "complete runs: median |prompt err|",
            apct(overall["prompt_median"]),
            f"<= {apct(PROMPT_MEDIAN)}",
            overall["prompt_median"] <= PROMPT_MEDIAN,
        ),
        (
            "every complete run: prompt within max(10%, 20 tok)",
            f"worst {worst_p.id} {pct(worst_p.err('prompt'))} ({worst_p.off('prompt')} tok)",
            "all",
            all(s.within("prompt") for s in complete),
        ),
        (
            "every complete run: completion within max(10%, 20 tok)",
            f"worst {worst_c.id} {pct(worst_c.err('completion'))} "
            f"({worst_c.off('completion')} tok)",
            "all",
            all(s.within("completion") for s in complete),
        ),
        (
            "complete runs: median |completion err|",
            apct(overall["completion_median"]),
            f"<= {apct(COMPLETION_MEDIAN)}",
            overall["completion_median"] <= COMPLETION_MEDIAN,
        ),
    ]
    return {
        "estimator": default_table().version,
        "file": str(path),
        "runs": [s.__dict__ for s in scored],
        "groups": groups,
        "checks": checks,
    }


# --- CPU ---------------------------------------------------------------------------------------

_TEXT = """the of and to in is for on with as by that this from at are be or an it not data
value result file report table column row total mean median count sum error chart model plot
quarter revenue growth customer region north south east west sales cost price margin forecast
trend sample tokens invoice team project usage budget"""
_WORDS = _TEXT.split()


def text(rng: random.Random, words: int) -> str:
    out = []
    for i in range(words):
        word = rng.choice(_WORDS)
        out.append(f"{word}{rng.randint(0, 999)}" if i % 9 == 0 else word)
        if i % 14 == 13:
            out.append(".\n" if i % 42 == 41 else ",")
    return " ".join(out)


def code(rng: random.Random, lines: int, figure: bool) -> str:
    body = ["import pandas as pd", "df = pd.read_csv('/mnt/data/file-abc.csv')"]
    for i in range(lines):
        a, b = rng.choice(_WORDS), rng.choice(_WORDS)
        body.append(f"{a}_{i} = df['{b}'].rolling({rng.randint(2, 30)}).mean().sum()  # {a} {b}")
    if figure:
        body += ["import matplotlib.pyplot as plt", "fig, ax = plt.subplots(figsize=(10, 6))"]
        body += ["ax.plot(df['value'])", "plt.savefig('/mnt/data/out.png')"]
    return "\n".join(body)


def synthetic_run(steps: int = 50, seed: int = 14) -> tuple[dict[str, Any], list, list]:
    """A finished gpt-4o run of ``steps`` steps: code interpreter (logs, every third a figure),
    function calls with outputs, file searches with 3 results, and answers, in turn."""
    rng = random.Random(seed)
    run_id, thread_id, t0 = "run_bench", "thread_bench", 1_764_000_000
    run = {
        "id": run_id,
        "object": "thread.run",
        "thread_id": thread_id,
        "created_at": t0,
        "status": "completed",
        "model": "gpt-4o",
        "instructions": text(rng, 270),
        "tools": [
            {"type": "code_interpreter"},
            {"type": "file_search"},
            {
                "type": "function",
                "function": {
                    "name": "lookup_invoice",
                    "description": "Look up an invoice by number and return its lines.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "number": {"type": "string", "description": "invoice number"},
                            "lines": {"type": "integer", "description": "lines to return"},
                        },
                        "required": ["number"],
                    },
                },
            },
        ],
        "truncation_strategy": {"type": "auto", "last_messages": None},
    }

    def message(mid: str, role: str, at: int, body: str, rid: str | None) -> dict[str, Any]:
        return {
            "id": mid,
            "object": "thread.message",
            "thread_id": thread_id,
            "created_at": at,
            "role": role,
            "run_id": rid,
            "content": [{"type": "text", "text": {"value": body, "annotations": []}}],
        }

    messages = [
        message(f"msg_user{i}", "user", t0 - 10 + i, text(rng, 180), None) for i in range(3)
    ]
    out_steps = []
    for i in range(steps):
        at = t0 + 2 * i
        step: dict[str, Any] = {
            "id": f"step_{i:03d}",
            "object": "thread.run.step",
            "run_id": run_id,
            "thread_id": thread_id,
            "created_at": at,
            "completed_at": at + 1,
            "status": "completed",
        }
        kind = i % 4
        if kind == 3:
            mid = f"msg_answer{i:03d}"
            step["type"] = "message_creation"
            step["step_details"] = {
                "type": "message_creation",
                "message_creation": {"message_id": mid},
            }
            messages.append(message(mid, "assistant", at, text(rng, 140), run_id))
        else:
            step["type"] = "tool_calls"
            if kind == 0:
                figure = i % 3 == 0
                outputs: list[dict[str, Any]] = [{"type": "logs", "logs": text(rng, 300)}]
                if figure:
                    outputs.append({"type": "image", "image": {"file_id": f"file-img{i}"}})
                call = {
                    "id": f"call_{i}",
                    "type": "code_interpreter",
                    "code_interpreter": {"input": code(rng, 9, figure), "outputs": outputs},
                }
            elif kind == 1:
                call = {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {
                        "name": "lookup_invoice",
                        "arguments": json.dumps({"number": f"INV-{i:05d}", "lines": 20}),
                        "output": text(rng, 170),
                    },
                }
            else:
                results = [
                    {
                        "file_id": f"file-doc{j}",
                        "file_name": f"doc{j}.pdf",
                        "score": 0.9 - j / 10,
                        "content": [{"type": "text", "text": text(rng, 150)}],
                    }
                    for j in range(3)
                ]
                call = {
                    "id": f"call_{i}",
                    "type": "file_search",
                    "file_search": {"ranking_options": {}, "results": results},
                }
            step["step_details"] = {"type": "tool_calls", "tool_calls": [call]}
        out_steps.append(step)
    return run, out_steps, messages


def cpu(reps: int) -> dict[str, Any]:
    warm_up()
    run, steps, messages = synthetic_run()
    count = counter_for_model(run["model"])
    seen = 0

    def counting(s: str) -> int:
        nonlocal seen
        k = count(s)
        seen += k
        return k

    est = estimate_run(run, steps, messages, counting)  # also warms every code path
    text_tokens = seen
    times = []
    for _ in range(reps):
        c0 = time.process_time()
        estimate_run(run, steps, messages, count)
        times.append((time.process_time() - c0) * 1000)
    best, median = min(times), statistics.median(times)
    print(
        f"\ncpu: synthetic gpt-4o run, {len(steps)} steps, {len(messages)} messages, "
        f"{text_tokens} tokens of text (estimate: prompt {est.prompt_tokens}, completion "
        f"{est.completion_tokens}); estimate_run with counter_for_model, {reps} repetitions"
    )
    print(f"cpu ms per estimate: best {best:.2f}, median {median:.2f}, worst {max(times):.2f}")
    return {
        "steps": len(steps),
        "messages": len(messages),
        "text_tokens": text_tokens,
        "prompt_tokens": est.prompt_tokens,
        "completion_tokens": est.completion_tokens,
        "reps": reps,
        "cpu_ms": times,
        "best_ms": best,
        "median_ms": median,
        "check": (
            "CPU per estimate, 50 steps ~20k tokens (median)",
            f"{median:.2f} ms (best {best:.2f})",
            f"< {CPU_MS:.0f} ms",
            median < CPU_MS,
        ),
    }


# --- the run -----------------------------------------------------------------------------------


def meta() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        return command_output(*argv, cwd=HERE.parent)

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "tiktoken": metadata.version("tiktoken"),
        "git_head": cmd("git", "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(cmd("git", "status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="usage-proxy estimator benchmark (issue #14)")
    ap.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="recorded runs (JSON lines)")
    ap.add_argument("--reps", type=int, default=30, help="timed estimates of the synthetic run")
    ap.add_argument("--out", type=Path, default=RESULTS / "estimate.json")
    args = ap.parse_args(argv)
    info = meta()
    dirty = " (dirty)" if info["git_dirty"] else ""
    print(
        f"{info['date']}  {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"tiktoken {info['tiktoken']}, git {info['git_head']}{dirty}, "
        f"load {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}"
    )
    acc = accuracy(args.runs)
    timing = cpu(max(1, args.reps))
    checks: list[tuple[str, str, str, bool]] = [*(acc["checks"] if acc else []), timing["check"]]
    print(
        "\n"
        + columns(
            [("target", "measured", "wanted", "pass")]
            + [(name, got, want, "PASS" if ok else "FAIL") for name, got, want, ok in checks]
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": info, "accuracy": acc, "cpu": timing}, indent=2, default=str)
    )
    print(f"\nwrote {args.out}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
