"""The root parser and `main()`: `--version`, the options every command takes, and one
`add_commands` per command group. A new group is a module with an `add_commands(sub,
common)`, added to _GROUPS."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.cli import (
    audit,
    billing,
    budgets,
    calibration,
    mappings,
    prices,
    reassign,
    reconcile,
    report,
    rollup,
    serve,
    sql,
)
from proxy.cli.common import PROG, Parser, UsageError
from proxy.errors import ConfigError

__all__ = ["main"]

_GROUPS = (
    serve,
    report,
    prices,
    reassign,
    audit,
    mappings,
    sql,
    calibration,
    billing,
    reconcile,
    budgets,
    rollup,
)


def _build_parser() -> Parser:
    parser = Parser(prog=PROG, description="A transparent OpenAI proxy that records usage.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = Parser(add_help=False)
    common.add_argument("--database-url", metavar="URL", help="SQLAlchemy database URL")
    common.add_argument("--config", metavar="FILE", help="TOML config file")
    for group in _GROUPS:
        group.add_commands(sub, common)
    return parser


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except (UsageError, ConfigError) as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The one broad handler: a command fails with one line, never a traceback.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        return 1
