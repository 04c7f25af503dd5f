"""`budgets set|list|remove`: spending limits per team, key or project and period (README,
"Budgets"). A key is named by its hint (`sk-...abcd`, resolved to its fingerprint here, and
refused when two keys share it) or by its fingerprint; never by the key itself."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from proxy.budgets.periods import PERIODS
from proxy.budgets.spec import (
    SpecError,
    parse_limit,
    parse_period,
    parse_warn,
    warn_text,
)
from proxy.cli.common import PROG, UsageError, argument, settings_of, with_db

__all__ = ["add_commands"]

_DEFAULT_WARN = "50,80,100"


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    budgets = sub.add_parser("budgets", help="spending limits, alerts, enforcement").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    put = budgets.add_parser(
        "set", parents=[common], help="set the budget of a team, key or project for a period"
    )
    who = put.add_mutually_exclusive_group(required=True)
    who.add_argument("--team")
    who.add_argument("--key-hint", metavar="HINT", help="a key by its hint, sk-...abcd")
    who.add_argument("--fingerprint", help="a key by its fingerprint (see `keys list`)")
    who.add_argument("--project", help="an OpenAI project id")
    put.add_argument("--limit", required=True, type=argument(_limit), metavar="USD")
    put.add_argument("--period", required=True, type=argument(_period), metavar="|".join(PERIODS))
    put.add_argument(
        "--warn",
        type=argument(_warn),
        default=parse_warn(_DEFAULT_WARN),
        metavar="PERCENTS",
        help=f"ascending percentages of the limit that send an alert (default {_DEFAULT_WARN})",
    )
    put.add_argument(
        "--enforce", action="store_true", help="refuse the subject's requests once it is reached"
    )
    put.set_defaults(run=_set)
    ls = budgets.add_parser("list", parents=[common], help="budgets with spend and state")
    ls.add_argument("--format", choices=("table", "csv", "json"), default="table")
    ls.set_defaults(run=_list)
    rm = budgets.add_parser("remove", parents=[common], help="remove a budget by its id")
    rm.add_argument("id", type=argument(_budget_id))
    rm.set_defaults(run=_remove)


def _spec(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except SpecError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    return convert


_limit = _spec(parse_limit)
_limit.__name__ = "limit"
_period = _spec(parse_period)
_period.__name__ = "period"
_warn = _spec(parse_warn)
_warn.__name__ = "warn"


def _budget_id(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a budget id (see `budgets list`)")
    return int(text)


def _check_hint(hint: str) -> None:
    if "..." not in hint or len(hint) > 16:
        # Never echoed: what was typed may be the key itself.
        raise UsageError("--key-hint: expected a hint like sk-...abcd (never the key itself)")


def _set(args: argparse.Namespace) -> int:
    from proxy.db import budgets as db_budgets

    if args.key_hint:
        _check_hint(args.key_hint)
    settings = settings_of(args)

    async def put(sm: Any) -> tuple[int, str, str]:
        kind, subject, hint = "team", args.team, None
        if args.project:
            kind, subject = "project", args.project
        elif args.fingerprint:
            kind, subject = "key", args.fingerprint
        elif args.key_hint:
            found = await db_budgets.fingerprints_of_hint(sm, args.key_hint)
            if not found:
                raise UsageError(
                    f"--key-hint: no key {args.key_hint} is mapped or has recorded usage; "
                    "name it by --fingerprint"
                )
            if len(found) > 1:
                raise UsageError(
                    f"--key-hint: {len(found)} keys share the hint {args.key_hint} "
                    f"({', '.join(fp[:12] for fp in found)}); name one by --fingerprint"
                )
            kind, subject, hint = "key", found[0], args.key_hint
        budget_id = await db_budgets.set_budget(
            sm,
            subject_kind=kind,
            subject=subject,
            key_hint=hint,
            limit_usd=args.limit,
            period=args.period,
            warn=warn_text(args.warn),
            enforce=args.enforce,
        )
        return budget_id, kind, hint or subject

    budget_id, kind, shown = with_db(settings, put)
    enforced = ", enforced" if args.enforce else ""
    print(
        f"budget {budget_id}: {kind} {shown}, ${args.limit:f} per {args.period}, "
        f"warn at {warn_text(args.warn) or 'none'}%{enforced}"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from proxy.budgets.spend import current_statuses
    from proxy.budgets.view import render_statuses

    now = dt.datetime.now(dt.UTC)
    statuses = with_db(settings_of(args), lambda sm: current_statuses(sm, now))
    print(render_statuses(statuses, args.format), end="")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from proxy.db.budgets import remove_budget

    if not with_db(settings_of(args), lambda sm: remove_budget(sm, args.id)):
        print(f"{PROG}: no budget {args.id}", f"(see `{PROG} budgets list`)")
        return 1
    print(f"budget {args.id} removed")
    return 0
