"""`sql`: one read-only query against the usage database (the views: usage, usage_daily,
usage_monthly_team), for operators with no database client at hand."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.cli.common import UsageError, settings_of
from proxy.db.readonly import QueryError, run_readonly
from proxy.reports.render import render

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    sql = sub.add_parser(
        "sql", parents=[common], help="run a read-only query (the views: usage, usage_daily, ...)"
    )
    sql.add_argument("statement", help='for example "SELECT * FROM usage_monthly_team"')
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.set_defaults(run=_sql)


def _sql(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    try:
        columns, rows = asyncio.run(run_readonly(settings.database_url, args.statement))
    except QueryError as exc:
        raise UsageError(f"sql: {exc}") from None
    table = [dict(zip(columns, row, strict=True)) for row in rows]
    print(render(table, columns, args.format, totals=False), end="")
    return 0
