"""What the command groups share: the parser class, argument converters, the settings of a
command's options, and running a coroutine on the configured database."""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.settings import OPTIONS, Settings, load_settings, mask_url

__all__ = ["PROG", "Parser", "UsageError", "argument", "settings_of", "with_db"]

PROG = "usage-proxy"


class UsageError(Exception):
    """A bad argument: one `usage-proxy: error: ...` line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print the usage block and exit
        raise UsageError(f"{_hide_values(message)} (see `{self.prog} --help`)")


# An option whose name says it holds a secret (`--key-secret VALUE` is a mistake: secrets
# have no flags), and values that look like one: an API key, a bearer token, or a long run of
# letters and digits mixed, as generated tokens are.
_SECRET_NAME = re.compile(r"secret|token|key|passw|credential|auth", re.IGNORECASE)
_SECRET_VALUE = re.compile(
    r"^(sk-|bearer\s)|^(?=.*[A-Za-z])(?=.*\d)[A-Za-z0-9_\-+/=.]{20,}$", re.IGNORECASE
)


def _shown(option: str, value: str) -> str:
    """`value` as an error message may echo it: *** when it may be a secret, a URL with its
    password masked, else as typed, so that a typo can be seen."""
    if _SECRET_NAME.search(option) or _SECRET_VALUE.search(value):
        return "***"
    return mask_url(value) if "://" in value else value


def _hide_values(message: str) -> str:
    """Unknown arguments are echoed as typed, except values that may be secrets (_shown)."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    shown, previous = [], ""
    for token in message[len(prefix) :].split(" "):
        original = token
        if token.startswith("--") and "=" in token:
            name, value = token.split("=", 1)
            token = f"{name}={_shown(name, value)}"
        elif previous.startswith("-") and "=" not in previous and not token.startswith("-"):
            token = _shown(previous, token)
        else:
            token = _shown("", token)
        shown.append(token)
        previous = original
    return prefix + " ".join(shown)


def argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` as an argparse type whose ValueError message is shown."""

    # argparse shows the message of an ArgumentTypeError, but only "invalid value" otherwise.
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings, with the command's options (and --config) at the highest precedence."""
    names = {opt.name for opt in OPTIONS} | {"config"}
    return load_settings({k: v for k, v in vars(args).items() if k in names})


def with_db(
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
