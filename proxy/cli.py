"""The `usage-proxy` command: serve, migrate, report, keys, projects, estimate, calibrate.

Commands stay thin: parse, call, format. Every command takes --database-url and --config with
the precedence of proxy.settings (flag > environment > config file > default). Secrets
(key_secret, admin_token) have no flags: flags show in `ps`.

`serve` logs to stderr (proxy.logs), waits up to DB_WAIT seconds for a database server that is
still starting, migrates unless --no-migrate, and serves until SIGINT or SIGTERM.

Exit codes: 0 success; 2 a bad argument or setting (one `usage-proxy: error: ...` line on
stderr); 1 anything else (one line, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from proxy import __version__
from proxy.calibration.commands import add_commands as add_calibration_commands
from proxy.errors import ConfigError
from proxy.settings import OPTIONS, Settings, load_settings, mask_url

__all__ = [
    "DB_WAIT",
    "main",
    "parse_group_by",
    "parse_month",
    "parse_when",
    "upgrade_when_reachable",
]

_PROG = "usage-proxy"
_log = logging.getLogger("proxy.cli")
# Seconds `serve` waits for a database server that does not answer yet: long enough for a
# PostgreSQL container to initialise its data directory on first start.
DB_WAIT = 120.0
_LOCAL_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_GROUP_FIELDS = (
    "team",
    "assistant",
    "conversation",
    "prompt",
    "model",
    "key",
    "project",
    "kind",
    "tag",
    "day",
    "month",
)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print the usage block and exit
        raise _UsageError(f"{_hide_values(message)} (see `{self.prog} --help`)")


def _hide_values(message: str) -> str:
    """Unknown options are echoed without their values: `--key-secret VALUE` is a mistake
    whose value is probably a secret."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    shown, previous = [], ""
    for token in message[len(prefix) :].split(" "):
        if token.startswith("--") and "=" in token:
            token = token.split("=", 1)[0] + "=***"
        elif previous.startswith("-") and "=" not in previous and not token.startswith("-"):
            token = "***"
        shown.append(token)
        previous = token
    return prefix + " ".join(shown)


def parse_when(text: str) -> dt.datetime:
    """An ISO date (midnight UTC) or datetime; naive means UTC. Raises ValueError."""
    try:
        if len(text) == 10:
            value = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
        else:
            value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date or datetime") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def parse_month(text: str) -> tuple[dt.datetime, dt.datetime]:
    """A UTC month, YYYY-MM, as (its first instant, the next month's). Raises ValueError."""
    try:
        start = dt.datetime.strptime(text, "%Y-%m").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a month (YYYY-MM)") from None
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def parse_group_by(text: str) -> list[str]:
    """A comma list of report group-by fields. Raises ValueError."""
    fields = [f.strip() for f in text.split(",") if f.strip()]
    for name in fields:
        if name not in _GROUP_FIELDS:
            raise ValueError(f"unknown field {name!r} (choose from {', '.join(_GROUP_FIELDS)})")
    if not fields:
        raise ValueError("no fields given")
    return fields


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    # argparse shows the message of an ArgumentTypeError, but only "invalid value" otherwise.
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


_when = _argument(parse_when)
_month = _argument(parse_month)
_group_by = _argument(parse_group_by)


def _build_parser() -> _Parser:
    parser = _Parser(prog=_PROG, description="A transparent OpenAI proxy that records usage.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("--database-url", metavar="URL", help="SQLAlchemy database URL")
    common.add_argument("--config", metavar="FILE", help="TOML config file")

    serve = sub.add_parser("serve", parents=[common], help="run the proxy")
    for opt in OPTIONS:
        if not opt.flag or opt.secret or opt.name == "database_url":
            continue
        flag = "--" + opt.name.replace("_", "-")
        if opt.type is bool:
            serve.add_argument(
                flag if not opt.default else "--no-" + flag[2:],
                dest=opt.name,
                action="store_const",
                const=not opt.default,
                help=opt.help,
            )
        else:
            serve.add_argument(flag, dest=opt.name, type=opt.type, help=opt.help)
    serve.set_defaults(run=_serve)

    sub.add_parser("migrate", parents=[common], help="upgrade the schema").set_defaults(
        run=_migrate
    )

    report = sub.add_parser("report", parents=[common], help="usage per event or group")
    report.add_argument("--since", type=_when, help="from this ISO date/datetime (inclusive)")
    report.add_argument("--until", type=_when, help="to this ISO date/datetime (exclusive)")
    report.add_argument("--month", type=_month, help="one UTC month, YYYY-MM")
    report.add_argument(
        "--group-by", type=_group_by, metavar="FIELDS", help=f"of {','.join(_GROUP_FIELDS)}"
    )
    report.add_argument("--team")
    report.add_argument("--kind")
    report.add_argument("--model")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.set_defaults(run=_report)

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
    sql = sub.add_parser(
        "sql", parents=[common], help="run a read-only query (the views: usage, usage_daily, ...)"
    )
    sql.add_argument("statement", help='for example "SELECT * FROM usage_monthly_team"')
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.set_defaults(run=_sql)
    add_calibration_commands(sub, common, _settings)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = {opt.name for opt in OPTIONS} | {"config"}
    return load_settings({k: v for k, v in vars(args).items() if k in names})


def _with_db(
    settings: Settings, fn: Callable[[Any], Awaitable[Any]], *, require_migrated: bool = True
) -> Any:
    """Run `fn(sessionmaker)` on the configured database, in a fresh event loop."""
    from proxy.db.engine import make_engine, make_sessionmaker
    from proxy.db.migrate import require_head

    async def run() -> Any:
        if require_migrated:
            await require_head(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            return await fn(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _serve(args: argparse.Namespace) -> int:
    from proxy.logs import configure_logging

    settings = _settings(args)
    restore_logging = configure_logging(settings)
    try:
        if settings.migrate:
            asyncio.run(upgrade_when_reachable(settings.database_url, DB_WAIT))
        from proxy.app import serve

        serve(settings)
    finally:
        restore_logging()
    return 0


async def upgrade_when_reachable(url: str, wait: float) -> None:
    """Upgrade the schema. While a database server cannot be reached (it is still starting, as
    in docker compose or after a reboot), try again with backoff for up to `wait` seconds;
    any other error, and every SQLite error, is raised at once."""
    from sqlalchemy.exc import SQLAlchemyError

    from proxy.db.migrate import upgrade

    deadline = time.monotonic() + wait
    delay = 0.5
    while True:
        try:
            await upgrade(url)
            return
        except (OSError, SQLAlchemyError) as exc:
            if not _unreachable(exc, url) or time.monotonic() + delay > deadline:
                raise
            _log.warning(
                "database %s not reachable yet (%s); retrying in %.1f s",
                mask_url(url),
                type(exc).__name__,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _unreachable(exc: BaseException, url: str) -> bool:
    """Whether `exc` says the database server is not there yet, rather than that something is
    wrong (bad credentials, a bad schema, a SQLite file that cannot be opened)."""
    from asyncpg.exceptions import CannotConnectNowError, TooManyConnectionsError

    from proxy.db.engine import split_url

    if split_url(url)[0].get_backend_name() == "sqlite":
        return False
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, CannotConnectNowError | TooManyConnectionsError):
            return True  # "the database system is starting up"
        if isinstance(current, OSError) and not isinstance(current, _LOCAL_OS_ERRORS):
            return True  # refused, unreachable, DNS not resolvable yet, timed out
        todo += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return False


def _migrate(args: argparse.Namespace) -> int:
    from proxy.db.migrate import head, upgrade

    settings = _settings(args)
    asyncio.run(upgrade(settings.database_url))
    print(f"{mask_url(settings.database_url)}: at revision {head()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from proxy.db.queries import EVENT_COLUMNS, GROUP_FIELDS, SUMS, usage_events, usage_groups
    from proxy.report import EVENT_TABLE_COLUMNS, render

    if args.month and (args.since or args.until):
        raise _UsageError("--month cannot be combined with --since or --until")
    since, until = args.month or (args.since, args.until)
    if since and until and since >= until:
        raise _UsageError("--since must be before --until")
    settings = _settings(args)
    filters = {"team": args.team, "kind": args.kind, "model": args.model}
    if args.group_by:
        rows = _with_db(
            settings, lambda sm: usage_groups(sm, args.group_by, since, until, **filters)
        )
        columns = [c for name in dict.fromkeys(args.group_by) for c in GROUP_FIELDS[name]]
        print(render(rows, [*columns, *SUMS], args.format), end="")
    else:
        rows = _with_db(settings, lambda sm: usage_events(sm, since, until, **filters))
        text = render(rows, EVENT_COLUMNS, args.format, table_columns=EVENT_TABLE_COLUMNS)
        print(text, end="")
    return 0


def _sql(args: argparse.Namespace) -> int:
    from proxy.db.readonly import QueryError, run_readonly
    from proxy.report import render

    settings = _settings(args)
    try:
        columns, rows = asyncio.run(run_readonly(settings.database_url, args.statement))
    except QueryError as exc:
        raise _UsageError(f"sql: {exc}") from None
    print(
        render(
            [dict(zip(columns, row, strict=True)) for row in rows],
            columns,
            args.format,
            totals=False,
        ),
        end="",
    )
    return 0


def _read_key() -> str:
    """One API key from stdin; on a terminal without echo."""
    key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = key.strip()
    if not key:
        raise _UsageError("no API key on stdin (pipe one line holding the key)")
    return key


def _keys_add(args: argparse.Namespace) -> int:
    from proxy.db.records import add_key_team, hmac_secret
    from proxy.keys import fingerprint, hint

    key = _read_key()
    settings = _settings(args)

    async def add(sm: Any) -> tuple[str, str]:
        fp = fingerprint(key, await hmac_secret(sm, settings.key_secret))
        await add_key_team(sm, fp, hint(key), args.team, args.label)
        return fp, hint(key)

    fp, shown = _with_db(settings, add)
    print(f"{shown} ({fp[:12]}) -> {args.team}")
    return 0


def _print_mappings(args: argparse.Namespace, fetch: Any, columns: Sequence[str]) -> int:
    from proxy.report import render

    rows = [{c: getattr(r, c) for c in columns} for r in _with_db(_settings(args), fetch)]
    print(render(rows, columns, args.format, totals=False), end="")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from proxy.db.records import list_key_teams

    columns = ["key_hint", "key_fingerprint", "team", "label", "created_at"]
    return _print_mappings(args, list_key_teams, columns)


def _keys_remove(args: argparse.Namespace) -> int:
    from proxy.db.records import hmac_secret, remove_key_team
    from proxy.keys import fingerprint

    key = None if args.fingerprint else _read_key()
    settings = _settings(args)

    async def remove(sm: Any) -> bool:
        fp = args.fingerprint or fingerprint(key, await hmac_secret(sm, settings.key_secret))
        return await remove_key_team(sm, fp)

    if not _with_db(settings, remove):
        print(f"{_PROG}: no mapping for that key", file=sys.stderr)
        return 1
    return 0


def _projects_add(args: argparse.Namespace) -> int:
    from proxy.db.records import add_project_team

    _with_db(_settings(args), lambda sm: add_project_team(sm, args.project, args.team))
    print(f"{args.project} -> {args.team}")
    return 0


def _projects_list(args: argparse.Namespace) -> int:
    from proxy.db.records import list_project_teams

    return _print_mappings(args, list_project_teams, ["project", "team", "created_at"])


def _projects_remove(args: argparse.Namespace) -> int:
    from proxy.db.records import remove_project_team

    if not _with_db(_settings(args), lambda sm: remove_project_team(sm, args.project)):
        print(f"{_PROG}: no mapping for project {args.project!r}", file=sys.stderr)
        return 1
    return 0


def _error(message: str) -> None:
    print(f"{_PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except (_UsageError, ConfigError) as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The one broad handler: a command fails with one line, never a traceback.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        return 1
