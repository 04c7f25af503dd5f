"""`rollup rebuild [--since DATE]`: make the daily rollup (usage_rollup) what the usage rows
sum to again, for every day or for the days from DATE; `rollup check` says whether it is. The
proxy keeps the rollup in step by itself (proxy.db.rollup): these are for repairs, such as
after rows were changed by hand with SQL."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from proxy.cli.common import argument, settings_of, with_db

__all__ = ["add_commands"]


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date (YYYY-MM-DD)") from None


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("rollup", help="the daily rollup behind reports and the dashboard")
    cmds = group.add_subparsers(dest="rollup_command", required=True, metavar="COMMAND")
    rebuild = cmds.add_parser(
        "rebuild", parents=[common], help="recompute the rollup from the usage rows"
    )
    rebuild.add_argument(
        "--since", type=argument(_day), help="only the days from this ISO date (UTC)"
    )
    rebuild.set_defaults(run=_rebuild)
    check = cmds.add_parser(
        "check", parents=[common], help="exit 1 unless the rollup equals the usage rows' sums"
    )
    check.set_defaults(run=_check)


def _rebuild(args: argparse.Namespace) -> int:
    from proxy.db.rollup import rebuild

    async def run(sm: Any) -> int:
        async with sm.begin() as session:
            return await rebuild(session, args.since)

    cells = with_db(settings_of(args), run)
    since = f" from {args.since}" if args.since else ""
    print(f"rebuilt the rollup{since}: {cells} cells")
    return 0


def _check(args: argparse.Namespace) -> int:
    from proxy.db.rollup import DIMENSIONS, expected_cells, stored_cells

    async def run(sm: Any) -> tuple[list[Any], list[Any]]:
        async with sm() as session:
            return await stored_cells(session), await expected_cells(session)

    stored, expected = with_db(settings_of(args), run)

    def keyed(cells: list[Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {tuple(c[d] for d in DIMENSIONS): c for c in cells}

    have, want = keyed(stored), keyed(expected)
    wrong = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
    if wrong:
        print(f"the rollup differs in {len(wrong)} cells, first {wrong[0]}: run `rollup rebuild`")
        return 1
    print(f"the rollup is right: {len(have)} cells")
    return 0
