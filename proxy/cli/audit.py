"""`audit`: the changes made to recorded usage after the fact (reassign, reprice), from
audit_log."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.cli.common import argument, settings_of, with_db
from proxy.reports.query import parse_when
from proxy.reports.render import FORMATS

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser(
        "audit", parents=[common], help="changes made to recorded usage (reassign, reprice)"
    )
    audit.add_argument(
        "--since", type=argument(parse_when), help="from this ISO date/datetime (inclusive)"
    )
    audit.add_argument("--format", choices=FORMATS, default="table")
    audit.set_defaults(run=_audit)


def _audit(args: argparse.Namespace) -> int:
    from proxy.db.audit import AUDIT_COLUMNS, audit_entries
    from proxy.reports.render import render

    rows = with_db(settings_of(args), lambda sm: audit_entries(sm, args.since))
    print(render(rows, AUDIT_COLUMNS, args.format, totals=False), end="")
    return 0
