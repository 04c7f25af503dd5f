"""Where the proxy's CPU per request goes: the same small chat completion (wrk, 32
connections) through the bare pass-through and through usage-proxy with parts switched off,
in alternating rounds. The parts are switched off from outside, with make_app's own options
(and by emptying the dispatcher's hook lists); proxy code is not changed.

Modes:
  full           what `usage-proxy serve` runs (accounting, every observer), log level WARNING
  full-info      the same at the default log level INFO (one access line per request)
  no-writes      every observer, but usage rows are dropped instead of written
  no-acct-obs    accounting running (database, collector) but only the metrics observer
  no-accounting  make_app(accounting=False): forwarding, dispatcher, metrics observer
  forward-only   no observer at all and no access logger: the Forwarder alone

Run: .venv/bin/python bench/ablation.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import load
from procs import Proc, free_port

HERE = Path(__file__).resolve().parent
MODES = ("full", "full-info", "no-writes", "no-acct-obs", "no-accounting", "forward-only")


async def _serve(
    mode: str, port: int, upstream: str, database_url: str, row_gather: float | None = None
) -> None:
    from aiohttp import web

    from proxy.app import DISPATCHER, make_app, start_site
    from proxy.db.migrate import upgrade
    from proxy.logs import configure_logging
    from proxy.settings import load_settings

    level = "INFO" if mode == "full-info" else "WARNING"
    flags = {"port": port, "upstream": upstream, "database_url": database_url, "log_level": level}
    settings = load_settings(flags)
    configure_logging(settings)
    await upgrade(database_url)
    if mode in ("full", "full-info", "no-writes"):
        app = make_app(settings)
        from proxy.accounting.sources.events.observer import EventObserver

        for observer in app[DISPATCHER].observers:
            if not isinstance(observer, EventObserver):
                continue
            if mode == "no-writes":
                observer.accounting.rows.submit = lambda row: None  # type: ignore[method-assign]
            if row_gather is not None:
                observer.accounting.rows._gather = row_gather
    elif mode == "no-acct-obs":
        app = make_app(settings, observers=[])
    else:
        app = make_app(settings, accounting=False)
    if mode == "forward-only":
        hooks = app[DISPATCHER]._hooks
        for name in hooks:
            hooks[name].clear()
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    else:
        runner = await start_site(app, "127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _measure(procs: dict[str, Proc], rounds: int, seconds: float) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name in procs}
    names = list(procs)
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            p = procs[name]
            c0 = p.settle()
            res = load.wrk(f"{p.url}/v1/chat/completions", connections=32, seconds=seconds)
            c1 = p.settle()
            out[name].append(
                {
                    "rps": res["rps"],
                    "cpu_ms": (c1 - c0) / res["requests"] * 1e3,
                    "drain_s": p.waited,
                }
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument("--database-url", help=argparse.SUPPRESS)
    # Under callgrind the proxy runs ~50x slower, so the row writer's 0.1 s gather would write
    # a few rows per transaction instead of the ~100 it writes at full speed.
    ap.add_argument("--row-gather", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve, args.port, args.upstream, args.database_url, args.row_gather))
        return 0
    load.require_wrk()
    py = sys.executable
    env = {"USAGE_PROXY_KEY_SECRET": "bench-secret-not-a-real-one"}
    logs = HERE / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, Proc] = {}
    with tempfile.TemporaryDirectory(prefix="usage-proxy-ablation-") as tmp:
        fake_port = free_port()
        fake = Proc(
            "fake", [py, str(HERE / "fake_upstream.py"), "--port", str(fake_port)], fake_port
        )
        try:
            fake.start()
            port = free_port()
            procs["bare"] = Proc(
                "bare", [py, str(HERE / "bare_proxy.py"), str(port), fake.url], port
            )
            for mode in MODES:
                port, db = free_port(), f"sqlite+aiosqlite:///{tmp}/{mode}.sqlite"
                argv = [
                    py,
                    __file__,
                    "--serve",
                    mode,
                    "--port",
                    str(port),
                    "--upstream",
                    fake.url,
                    "--database-url",
                    db,
                ]
                procs[mode] = Proc(mode, argv, port, env, logs / f"ablation-{mode}.log")
            for p in procs.values():
                p.start(timeout=60)
                load.wrk(f"{p.url}/v1/chat/completions", connections=32, seconds=1)
            res = _measure(procs, args.rounds, args.seconds)
        finally:
            for p in procs.values():
                p.stop()
            fake.stop()
    bare = statistics.median(r["cpu_ms"] for r in res["bare"])
    print(f"\n{'target':14s} {'CPU ms/req':>10s} {'vs bare':>8s} {'extra us':>9s} {'req/s':>7s}")
    for name, rows in res.items():
        cpu = statistics.median(r["cpu_ms"] for r in rows)
        rps = statistics.median(r["rps"] for r in rows)
        print(f"{name:14s} {cpu:10.3f} {cpu / bare:7.2f}x {1000 * (cpu - bare):9.0f} {rps:7.0f}")
    print(f"\nmachine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
