"""`prices missing` and `reprice`: models and tools recorded without a price, and pricing
them once a price is in `pricing_file` (each change written to audit_log; `usage-proxy audit`
lists them)."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.cli.common import UsageError, argument, settings_of, with_db
from proxy.reports.query import parse_when
from proxy.reports.render import FORMATS

__all__ = ["add_commands"]

_MISSING_COLUMNS = (
    "model",
    "missing",
    "events",
    "prompt_tokens",
    "completion_tokens",
    "code_interpreter_sessions",
    "file_search_calls",
    "web_search_calls",
    "first_seen",
    "last_seen",
)


def _window(parser: argparse.ArgumentParser, *, since_required: bool = False) -> None:
    parser.add_argument(
        "--since",
        type=argument(parse_when),
        required=since_required,
        help="rows that occurred from this ISO date/datetime (inclusive)",
    )
    parser.add_argument(
        "--until", type=argument(parse_when), help="to this ISO date/datetime (exclusive)"
    )
    parser.add_argument(
        "--pricing-file", metavar="FILE", help="price overrides (default: the setting)"
    )


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    prices = sub.add_parser("prices", help="prices the proxy lacks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    missing = prices.add_parser(
        "missing",
        parents=[common],
        help="models and tools recorded without a price, with counts",
    )
    _window(missing)
    missing.add_argument("--format", choices=FORMATS, default="table")
    missing.set_defaults(run=_missing)

    reprice = sub.add_parser(
        "reprice",
        parents=[common],
        help="price past rows that had no price (written to the audit log)",
    )
    _window(reprice, since_required=True)
    reprice.add_argument("--model", help="only rows of this model")
    reprice.add_argument(
        "--all",
        action="store_true",
        dest="every_row",
        help="price every selected row again, not only unpriced ones (a corrected price)",
    )
    reprice.add_argument("--dry-run", action="store_true", help="show what would change")
    reprice.set_defaults(run=_reprice)


def _checked_window(args: argparse.Namespace) -> None:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError("--since must be before --until")


def _prices(args: argparse.Namespace) -> Any:
    from proxy.accounting.pricing import load_price_table

    # A bad file is a ConfigError naming it: one line, exit code 2.
    return load_price_table(settings_of(args).pricing_file or None)


def _missing(args: argparse.Namespace) -> int:
    from proxy.accounting.pricing.reprice import missing_prices
    from proxy.reports.render import render

    _checked_window(args)
    table = _prices(args)
    rows = with_db(settings_of(args), lambda sm: missing_prices(sm, table, args.since, args.until))
    print(render(rows, _MISSING_COLUMNS, args.format, totals=False), end="")
    return 0


def _reprice(args: argparse.Namespace) -> int:
    from proxy.accounting.pricing.reprice import reprice

    _checked_window(args)
    table = _prices(args)
    done = with_db(
        settings_of(args),
        lambda sm: reprice(
            sm,
            table,
            args.since,
            args.until,
            model=args.model,
            every_row=args.every_row,
            dry_run=args.dry_run,
        ),
    )
    verb = "would reprice" if args.dry_run else "repriced"
    print(
        f"{verb} {done.rows} rows, {done.cost_usd:+f} USD; "
        f"{done.still_unpriced} rows still without a price"
    )
    return 0
