"""`reassign`: move recorded usage to another team ("this key belonged to team red since
November 1"), with an audit_log row (`usage-proxy audit` lists them)."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.cli.common import UsageError, argument, settings_of, with_db
from proxy.reports.query import parse_when

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser(
        "reassign",
        parents=[common],
        help="move recorded usage to another team (written to the audit log)",
    )
    which = cmd.add_mutually_exclusive_group(required=True)
    which.add_argument("--key-hint", metavar="HINT", help="rows of the key with this hint")
    which.add_argument("--fingerprint", help="rows of the key with this fingerprint")
    which.add_argument("--project", help="rows of this OpenAI project")
    which.add_argument("--from-team", metavar="TEAM", help="rows of this team")
    cmd.add_argument("--to-team", metavar="TEAM", required=True, help="the team that pays")
    cmd.add_argument(
        "--since", type=argument(parse_when), help="rows from this ISO date/datetime (inclusive)"
    )
    cmd.add_argument(
        "--until", type=argument(parse_when), help="to this ISO date/datetime (exclusive)"
    )
    cmd.add_argument("--dry-run", action="store_true", help="show what would move")
    cmd.set_defaults(run=_reassign)


def _reassign(args: argparse.Namespace) -> int:
    from proxy.db.reassign import SELECTORS, AmbiguousHint, reassign

    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError("--since must be before --until")
    selector, value = next(
        (name, getattr(args, name)) for name in SELECTORS if getattr(args, name) is not None
    )
    if not value.strip() or not args.to_team.strip():
        raise UsageError(f"--{selector.replace('_', '-')} and --to-team must not be empty")
    try:
        moved = with_db(
            settings_of(args),
            lambda sm: reassign(
                sm, selector, value, args.to_team, args.since, args.until, dry_run=args.dry_run
            ),
        )
    except AmbiguousHint as exc:
        raise UsageError(str(exc)) from None
    verb = "would move" if args.dry_run else "moved"
    unpriced = f" ({moved.unpriced} of them without a price)" if moved.unpriced else ""
    waiting = f" and {moved.jobs} still being collected," if moved.jobs else ""
    print(
        f"{verb} {moved.rows} rows{unpriced}, {moved.cost_usd:f} USD,{waiting} "
        f"to team {args.to_team}"
    )
    return 0
