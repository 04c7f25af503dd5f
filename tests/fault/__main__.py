"""`python -m tests.fault [--full] [--backend sqlite|postgres|both]`: the scale-and-faults
scenario at CI size or full size (1,000 runs, a 30 s database outage), printing its summary.
`--kills N`: instead, the SIGKILL-at-any-moment scenario (tests/fault/kills.py) with N runs.

PostgreSQL is the one of $USAGE_PROXY_TEST_POSTGRES_URL (default: the local server's `test`
database); the run gets a schema of its own, dropped at the end. Exit code 0 when every
completed run was recorded exactly once, no client request failed because of accounting, every
row has the right tokens and team, and no key leaked into a table or a log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from tests.fault.kills import KillSize, run_kills
from tests.fault.outcome import CI, FULL
from tests.fault.scenario import run_scenario

_PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault", description=__doc__)
    parser.add_argument("--full", action="store_true", help="1,000 runs, a 30 s outage")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--kills", type=int, default=0, metavar="N", help="SIGKILLs, N runs")
    args = parser.parse_args()
    if args.kills:
        return _kills(args.kills, args.backend)
    size = FULL if args.full else CI
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    ok = True
    for backend in backends:
        pg_url = os.environ.get("USAGE_PROXY_TEST_POSTGRES_URL", _PG_DEFAULT)
        with tempfile.TemporaryDirectory(prefix=f"fault-{backend}-") as tmp:
            outcome = asyncio.run(run_scenario(backend, size, Path(tmp), pg_url))
        print("\n".join(outcome.lines()), flush=True)
        for problem in [*outcome.tally.failures, *outcome.ledger.missing, *outcome.leaks][:20]:
            print(f"  {problem}", flush=True)
        ok = ok and outcome.ok
    return 0 if ok else 1


def _kills(runs: int, backend: str) -> int:
    ok = True
    for name in ["sqlite", "postgres"] if backend == "both" else [backend]:
        pg_url = os.environ.get("USAGE_PROXY_TEST_POSTGRES_URL", _PG_DEFAULT)
        size = KillSize(runs=runs, duration=runs / 10)
        with tempfile.TemporaryDirectory(prefix=f"kills-{name}-") as tmp:
            outcome = asyncio.run(run_kills(name, size, Path(tmp), pg_url))
        print("\n".join(outcome.lines()), flush=True)
        for problem in [*outcome.failures, *outcome.lost, *outcome.ledger.duplicated][:20]:
            print(f"  {problem}", flush=True)
        ok = ok and outcome.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
