"""`report`: the options of proxy.reports.query, run and rendered by proxy.reports."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy.cli.common import UsageError, argument, settings_of, with_db
from proxy.reports.query import (
    FILTERS,
    GROUP_FIELDS,
    KINDS,
    REPORT_FORMATS,
    ReportError,
    ReportQuery,
    parse_group_by,
    parse_kind,
    parse_month,
    parse_when,
)

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser("report", parents=[common], help="usage per event or group")
    report.add_argument(
        "--since", type=argument(parse_when), help="from this ISO date/datetime (inclusive)"
    )
    report.add_argument(
        "--until", type=argument(parse_when), help="to this ISO date/datetime (exclusive)"
    )
    report.add_argument("--month", type=argument(parse_month), help="one UTC month, YYYY-MM")
    report.add_argument(
        "--group-by",
        type=argument(parse_group_by),
        metavar="FIELDS",
        help=f"of {','.join(GROUP_FIELDS)}",
    )
    report.add_argument("--team", help="only this team")
    report.add_argument(
        "--kind", type=argument(parse_kind), help=f"only this kind: one of {', '.join(KINDS)}"
    )
    report.add_argument("--model", help="only this model")
    report.add_argument(
        "--format",
        choices=REPORT_FORMATS,
        default="table",
        help="focus: FOCUS 1.2 CSV (FinOps Open Cost and Usage Specification)",
    )
    report.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    from proxy.reports.run import unseen_note

    try:
        query = ReportQuery.from_args(
            since=args.since,
            until=args.until,
            month=args.month,
            group_by=args.group_by,
            filters={name: getattr(args, name) for name in FILTERS},
            fmt=args.format,
        )
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    text, unseen = with_db(settings_of(args), lambda sm: _with_unseen(sm, query))
    print(text, end="")
    if unseen.count:
        print(unseen_note(unseen), file=sys.stderr)
    return 0


async def _with_unseen(sm: Any, query: ReportQuery) -> tuple[str, Any]:
    from proxy.db.unseen_creates import unseen
    from proxy.reports.run import run_report

    return await run_report(sm, query), await unseen(sm, query.since, query.until)
