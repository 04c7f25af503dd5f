"""`reconcile`: recorded beside billed cost per day, project, key and line item; `--true-up`
writes adjustment rows so that a month's per-team totals equal the bill, `--undo` removes
them."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from proxy.cli.common import UsageError, settings_of, with_db

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    rec = sub.add_parser("reconcile", parents=[common], help="recorded cost beside billed cost")
    rec.add_argument("--month", help="one UTC month, YYYY-MM")
    rec.add_argument("--since", help="first UTC day, YYYY-MM-DD (default: this month's first)")
    rec.add_argument("--until", help="UTC day to stop before (default: tomorrow)")
    rec.add_argument(
        "--group-by",
        metavar="FIELDS",
        help="of day,project,key,line_item,deployment (default: the first four)",
    )
    rec.add_argument("--tolerance", help="flag residuals above this share of billed (0.05)")
    rec.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rec.add_argument("--true-up", action="store_true", help="write adjustment rows (--month)")
    rec.add_argument("--dry-run", action="store_true", help="with --true-up: show, write nothing")
    rec.add_argument("--undo", action="store_true", help="remove the month's adjustment rows")
    rec.set_defaults(run=_reconcile)


def _reconcile(args: argparse.Namespace) -> int:
    from proxy.reconcile.query import ReconcileError, ReconcileQuery

    try:
        query = ReconcileQuery.build(
            month=args.month,
            since=args.since,
            until=args.until,
            group_by=args.group_by,
            tolerance=args.tolerance,
            fmt=args.format,
            today=dt.datetime.now(dt.UTC).date(),
        )
    except ReconcileError as exc:
        raise UsageError(str(exc)) from None
    settings = settings_of(args)
    if args.true_up or args.undo:
        return _true_up(args, settings, query)
    if args.dry_run:
        raise UsageError("--dry-run goes with --true-up")
    from proxy.reconcile.report import run_reconcile

    print(with_db(settings, lambda sm: run_reconcile(sm, query)), end="")
    return 0


def _true_up(args: argparse.Namespace, settings: Any, query: Any) -> int:
    from proxy.reconcile.trueup import TrueUpError, true_up, undo

    if args.month is None:
        raise UsageError("--true-up and --undo need --month YYYY-MM")
    if args.true_up and args.undo:
        raise UsageError("--true-up and --undo cannot be combined")
    if args.undo:
        removed = with_db(settings, lambda sm: undo(sm, args.month))
        print(f"removed {removed} adjustment rows of {args.month}")
        return 0
    try:
        result = with_db(settings, lambda sm: true_up(sm, query, dry_run=args.dry_run))
    except TrueUpError as exc:
        raise UsageError(str(exc)) from None
    print(result, end="")
    return 0
