"""`serve` and `migrate`.

`serve` logs to stderr (proxy.logs), waits up to DB_WAIT seconds for a database server that is
still starting, migrates unless --no-migrate, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from proxy.cli.common import settings_of
from proxy.cli.startup import require_bindable, warn_unknown_environment
from proxy.settings import OPTIONS, mask_url

__all__ = ["DB_WAIT", "add_commands", "upgrade_when_reachable"]

_log = logging.getLogger("proxy.cli")
# Seconds `serve` waits for a database server that does not answer yet: long enough for a
# PostgreSQL container to initialise its data directory on first start.
DB_WAIT = 120.0
_LOCAL_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[common], help="run the proxy")
    for opt in OPTIONS:
        if not opt.flag or opt.secret or opt.name == "database_url":
            continue
        flag = "--" + opt.name.replace("_", "-")
        if opt.type is bool:
            # A setting that is on by default has a flag that turns it off, and says so.
            serve.add_argument(
                flag if not opt.default else "--no-" + flag[2:],
                dest=opt.name,
                action="store_const",
                const=not opt.default,
                help=opt.help if not opt.default else f"do not {opt.help}",
            )
        else:
            serve.add_argument(flag, dest=opt.name, type=opt.type, help=opt.help)
    serve.set_defaults(run=_serve)

    sub.add_parser("migrate", parents=[common], help="upgrade the schema").set_defaults(
        run=_migrate
    )


def _serve(args: argparse.Namespace) -> int:
    from proxy.logs import configure_logging

    settings = settings_of(args)
    restore_logging = configure_logging(settings)
    try:
        warn_unknown_environment()
        # Before the migration: a port in use is one line, with the database untouched.
        require_bindable(settings.host, settings.port)
        if settings.migrate:
            asyncio.run(upgrade_when_reachable(settings.database_url, DB_WAIT))
        # Imported here: the other commands need neither aiohttp's server nor the accounting.
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
    from proxy.db.engine import describe_url
    from proxy.db.migrate import head, upgrade

    settings = settings_of(args)
    asyncio.run(upgrade(settings.database_url))
    print(f"{describe_url(settings.database_url)}: at revision {head()}")
    return 0
