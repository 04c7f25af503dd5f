"""`keys` and `projects`: which team pays for an API key or an OpenAI project. A key is read
from standard input, never from arguments, and only its fingerprint and hint are stored."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

from proxy.cli.common import PROG, UsageError, settings_of, with_db

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="map API keys to teams").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = keys.add_parser("add", parents=[common], help="map the key read from stdin to a team")
    add.add_argument("--team", required=True)
    add.add_argument("--label")
    add.set_defaults(run=_keys_add)
    ls = keys.add_parser("list", parents=[common], help="list key mappings")
    ls.add_argument("--format", choices=("table", "csv", "json"), default="table")
    ls.set_defaults(run=_keys_list)
    rm = keys.add_parser("remove", parents=[common], help="unmap the key read from stdin")
    rm.add_argument("--fingerprint", help="unmap this fingerprint instead (see `keys list`)")
    rm.set_defaults(run=_keys_remove)

    projects = sub.add_parser("projects", help="map OpenAI projects to teams").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    padd = projects.add_parser("add", parents=[common], help="map a project id to a team")
    padd.add_argument("project")
    padd.add_argument("--team", required=True)
    padd.set_defaults(run=_projects_add)
    pls = projects.add_parser("list", parents=[common], help="list project mappings")
    pls.add_argument("--format", choices=("table", "csv", "json"), default="table")
    pls.set_defaults(run=_projects_list)
    prm = projects.add_parser("remove", parents=[common], help="unmap a project id")
    prm.add_argument("project")
    prm.set_defaults(run=_projects_remove)


def _read_key() -> str:
    """One API key from stdin; on a terminal without echo."""
    key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = key.strip()
    if not key:
        raise UsageError("no API key on stdin (pipe one line holding the key)")
    return key


def _keys_add(args: argparse.Namespace) -> int:
    from proxy.db.mappings import add_key_team
    from proxy.db.secrets import hmac_secret
    from proxy.keys import fingerprint, hint

    key = _read_key()
    settings = settings_of(args)

    async def add(sm: Any) -> tuple[str, str]:
        fp = fingerprint(key, await hmac_secret(sm, settings.key_secret))
        await add_key_team(sm, fp, hint(key), args.team, args.label)
        return fp, hint(key)

    fp, shown = with_db(settings, add)
    print(f"{shown} ({fp[:12]}) -> {args.team}")
    return 0


def _print_mappings(args: argparse.Namespace, fetch: Any, columns: Sequence[str]) -> int:
    from proxy.reports.render import render

    rows = [{c: getattr(r, c) for c in columns} for r in with_db(settings_of(args), fetch)]
    print(render(rows, columns, args.format, totals=False), end="")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from proxy.db.mappings import list_key_teams

    columns = ["key_hint", "key_fingerprint", "team", "label", "created_at"]
    return _print_mappings(args, list_key_teams, columns)


def _keys_remove(args: argparse.Namespace) -> int:
    from proxy.db.mappings import remove_key_team
    from proxy.db.secrets import hmac_secret
    from proxy.keys import fingerprint

    key = None if args.fingerprint else _read_key()
    settings = settings_of(args)

    async def remove(sm: Any) -> bool:
        fp = args.fingerprint or fingerprint(key, await hmac_secret(sm, settings.key_secret))
        return await remove_key_team(sm, fp)

    if not with_db(settings, remove):
        print(f"{PROG}: no mapping for that key", file=sys.stderr)
        return 1
    return 0


def _projects_add(args: argparse.Namespace) -> int:
    from proxy.db.mappings import add_project_team

    with_db(settings_of(args), lambda sm: add_project_team(sm, args.project, args.team))
    print(f"{args.project} -> {args.team}")
    return 0


def _projects_list(args: argparse.Namespace) -> int:
    from proxy.db.mappings import list_project_teams

    return _print_mappings(args, list_project_teams, ["project", "team", "created_at"])


def _projects_remove(args: argparse.Namespace) -> int:
    from proxy.db.mappings import remove_project_team

    if not with_db(settings_of(args), lambda sm: remove_project_team(sm, args.project)):
        print(f"{PROG}: no mapping for project {args.project!r}", file=sys.stderr)
        return 1
    return 0
