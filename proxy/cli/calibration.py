"""`usage-proxy estimate` and `usage-proxy calibrate`: parse, call, format.

Both read recorded runs through exactly the code the collector estimates with, and neither
reads a run's own usage to estimate it. A bad line is one error line naming it (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from proxy.accounting.estimate.constants import ConstantsTable, table_from_settings
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.calibration.compare import Compared, Summary, compare, summarise
from proxy.calibration.observations import basis_of, observations
from proxy.calibration.recorded import RecordedRun, RunsFileError, read_runs
from proxy.calibration.stored import read_stored_observations
from proxy.calibration.tables import fit_table, leave_one_out
from proxy.cli.common import settings_of
from proxy.errors import ConfigError
from proxy.settings import Settings

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    est = sub.add_parser(
        "estimate", parents=[common], help="estimate recorded runs (a run, its steps, messages)"
    )
    est.add_argument("--runs", required=True, metavar="FILE.jsonl", help="one run a line")
    est.add_argument("--format", choices=("table", "json"), default="table")
    est.set_defaults(run=lambda args: _estimate(args, settings_of(args), sys.stdout))
    cal = sub.add_parser(
        "calibrate", parents=[common], help="fit the estimator's constants to reported usage"
    )
    cal.add_argument("--runs", metavar="FILE.jsonl", help="recorded runs with reported usage")
    cal.add_argument("--write", metavar="FILE.toml", help="write the fitted [estimate] tables")
    cal.set_defaults(run=lambda args: _calibrate(args, settings_of(args), sys.stdout))


def _load(path: str) -> list[RecordedRun]:
    try:
        return read_runs(path)
    except RunsFileError as exc:
        raise ConfigError(str(exc)) from None


def _estimate(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    runs = _load(args.runs)
    table = table_from_settings(settings)
    results = [compare(r, basis_of(r, counter_for_model), table) for r in runs]
    if args.format == "json":
        json.dump([c.to_json() for c in results], out, indent=2)
        out.write("\n")
        return 0
    out.write(f"estimator {table.version}\n")
    out.write(_runs_table(results))
    out.write(_summary_table(summarise(results)))
    return 0


def _calibrate(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if not args.runs and not args.database_url:
        raise ConfigError("calibrate needs --runs FILE.jsonl, --database-url URL, or both")
    table = table_from_settings(settings)
    runs = _load(args.runs) if args.runs else []
    bases = {r.id: basis_of(r, counter_for_model) for r in runs}
    obs = [o for r in runs for o in observations(r, bases[r.id])]
    if args.database_url:
        obs += read_stored_observations(settings.database_url)
    if not obs:
        raise ConfigError("no run carries reported usage to fit to")
    fitted = fit_table(obs, table)
    before = [compare(r, bases[r.id], table) for r in runs]
    after = [compare(r, bases[r.id], fitted) for r in runs]
    held_out = leave_one_out(runs, bases, obs, table)
    out.write(f"fitted on {len(obs)} observations from {len({o.run_id for o in obs})} runs\n")
    out.write(f"before: {table.version}\n{_summary_table(summarise(before))}")
    out.write(f"after: {fitted.version}\n{_summary_table(summarise(after))}")
    out.write("leave-one-out (each run estimated by a fit without it)\n")
    out.write(_summary_table(summarise(held_out)))
    changed = {
        f: {k: v for k, v in fitted.for_family(f).items() if table.for_family(f)[k] != v}
        for f in sorted({o.family for o in obs})
    }
    for family, values in changed.items():
        shown = ", ".join(f"{k} {table.for_family(family)[k]} -> {v}" for k, v in values.items())
        out.write(f"{family}: {shown or 'no change'}\n")
    if args.write:
        _write_toml(args.write, fitted, changed)
        out.write(f"wrote {args.write}\n")
    return 0


def _write_toml(path: str, fitted: ConstantsTable, changed: dict[str, dict[str, int]]) -> None:
    lines = [
        "# Written by `usage-proxy calibrate`: read it with --config (or merge it into yours).",
        "# Each table holds the constants the fit changed for that model family.",
    ]
    for family, values in changed.items():
        if values:
            lines.append(f'\n[estimate."{family}"]')
            lines += [f"{k} = {v}" for k, v in fitted.for_family(family).items() if k in values]
    if not any(changed.values()):
        lines.append("# The fit changed nothing: the current constants already fit these runs.")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    except OSError as exc:
        raise ConfigError(f"--write {path}: {exc.strerror or exc}") from None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _runs_table(results: Sequence[Compared]) -> str:
    header = ("run", "kind", "family", "prompt", "reported", "err", "completion", "reported", "err")
    rows = [header]
    for c in results:
        rp, rc = c.reported if c.reported else (None, None)
        rows.append(
            (
                c.id + ("" if c.complete else " (partial)"),
                c.kind,
                c.family,
                str(c.prompt),
                "-" if rp is None else str(rp),
                _pct(c.error("prompt")),
                str(c.completion),
                "-" if rc is None else str(rc),
                _pct(c.error("completion")),
            )
        )
    return _columns(rows)


def _summary_table(summaries: Sequence[Summary]) -> str:
    rows = [("group", "runs", "prompt median", "prompt max", "completion median", "completion max")]
    for s in summaries:
        rows.append(
            (
                s.group,
                str(s.runs),
                f"{100 * s.prompt_median:.1f}%",
                f"{100 * s.prompt_max:.1f}%",
                f"{100 * s.completion_median:.1f}%",
                f"{100 * s.completion_max:.1f}%",
            )
        )
    return _columns(rows)


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        + "\n"
        for row in rows
    )
