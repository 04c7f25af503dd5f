"""`billing pull`, `billing keys` and `billing import`: billed costs into the database, and how
the provider's keys match the proxy's. The admin key comes from OPENAI_ADMIN_KEY only: it has
no flag (flags show in `ps`) and is never printed."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from typing import Any

from proxy.cli.common import UsageError, argument, settings_of, with_db

__all__ = ["add_commands"]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    billing = sub.add_parser("billing", help="the provider's billed costs")
    commands = billing.add_subparsers(dest="billing_command", required=True, metavar="COMMAND")
    pull = commands.add_parser(
        "pull", parents=[common], help="pull billed costs per day, project, key and line item"
    )
    pull.add_argument("--since", type=argument(_date), required=True, help="first UTC day")
    pull.add_argument(
        "--until", type=argument(_date), help="UTC day to stop before (default: tomorrow)"
    )
    pull.set_defaults(run=_pull)
    keys = commands.add_parser(
        "keys", parents=[common], help="the provider's keys matched to the proxy's key hints"
    )
    keys.add_argument("--format", choices=("table", "csv", "json"), default="table")
    keys.set_defaults(run=_keys)
    imports = commands.add_parser(
        "import", parents=[common], help="import an Azure Cost Management actual-cost CSV"
    )
    imports.add_argument("--azure-csv", metavar="FILE", required=True)
    imports.set_defaults(run=_import)


def admin_key() -> str:
    """OPENAI_ADMIN_KEY, or a UsageError saying it is missing."""
    from proxy.reconcile.admin_api import ENV

    key = os.environ.get(ENV, "").strip()
    if not key:
        raise UsageError(f"{ENV} is not set: export an OpenAI admin key with read access to usage")
    return key


def _pull(args: argparse.Namespace) -> int:
    from proxy.forwarding.upstream.egress import Egress
    from proxy.reconcile.admin_api import AdminApi, AdminKeyRefused
    from proxy.reconcile.pull import pull

    until = args.until or dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    if args.since >= until:
        raise UsageError(f"--since {args.since} must be before --until {until}")
    key = admin_key()
    settings = settings_of(args)

    async def run(sm: Any) -> Any:
        egress = Egress(settings.upstream_proxy, settings.upstream_ca_file)
        async with AdminApi(settings.billing_url, key, egress=egress) as api:
            return await pull(sm, api, args.since, until)

    try:
        summary = with_db(settings, run)
    except AdminKeyRefused as exc:
        raise UsageError(str(exc)) from None
    print(summary.line())
    return 0


def _keys(args: argparse.Namespace) -> int:
    from proxy.reconcile.keys import keys_report

    print(with_db(settings_of(args), lambda sm: keys_report(sm, args.format)), end="")
    return 0


def _import(args: argparse.Namespace) -> int:
    from proxy.reconcile.azure import AzureCsvError, import_csv

    try:
        with open(args.azure_csv, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise UsageError(f"--azure-csv {args.azure_csv!r}: {exc.strerror}") from None
    try:
        summary = with_db(settings_of(args), lambda sm: import_csv(sm, text))
    except AzureCsvError as exc:
        raise UsageError(f"--azure-csv {args.azure_csv!r}: {exc}") from None
    print(summary)
    return 0
