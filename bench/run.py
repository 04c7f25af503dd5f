"""Issue #6's benchmark: the same workload directly against a fast fake upstream, through the
bare aiohttp pass-through (the floor) and through usage-proxy (SQLite, accounting on), on
uvloop and on asyncio's own loop, in alternating rounds. Prints a table and writes
bench/results/latest.json. Run: .venv/bin/python bench/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import load
import recording
import table
from procs import Proc, command_output, cpu_name, free_port, reset_peak, status_kib

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PY = sys.executable
USAGE_PROXY = str(Path(PY).with_name("usage-proxy"))
PROXY_ENV = {
    "USAGE_PROXY_KEY_SECRET": "bench-secret-not-a-real-one",
    "USAGE_PROXY_LOG_LEVEL": "WARNING",
}
FULL = {
    "rounds": 3,
    "lat_s": 2,
    "thr_s": 3,
    "sse_events": 50,
    "mib": 256,
    "runs": 2000,
    "workers": [2, 16],
    "est_s": 1.5,
    "deadline": 90.0,
    "quiet_s": 2.0,
    "bursts": 3,
}
QUICK = {
    **FULL,
    "rounds": 1,
    "lat_s": 1,
    "thr_s": 1,
    "sse_events": 20,
    "mib": 256,
    "runs": 300,
    "est_s": 0.5,
    "deadline": 30.0,
    "quiet_s": 1.0,
    "bursts": 1,
}


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine on uvloop when installed (less client-side noise)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def migrated(db: Path) -> str:
    url = f"sqlite+aiosqlite:///{db}"
    subprocess.run(
        [USAGE_PROXY, "migrate", "--database-url", url],
        env={**os.environ, **PROXY_ENV},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return url


def proxy_proc(
    name: str,
    upstream: str,
    db: Path,
    logs: Path,
    env: dict[str, str] | None = None,
    asyncio_loop: bool = False,
) -> Proc:
    port = free_port()
    head = [PY, str(HERE / "serve_asyncio.py")] if asyncio_loop else [USAGE_PROXY]
    argv = [
        *head,
        "serve",
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--database-url",
        migrated(db),
        "--no-migrate",
    ]
    return Proc(name, argv, port, {**PROXY_ENV, **(env or {})}, logs / f"{name}.log")


def small_requests(procs: dict[str, Proc], cfg: dict[str, Any], r: int) -> dict[str, Any]:
    """One round: serial latency, then 32-connection throughput, for every target in a rotated
    order; CPU of the serving process around each (after it settles)."""
    names = list(procs)
    order = names[r % len(names) :] + names[: r % len(names)]
    out = {}
    for name in order:
        p = procs[name]
        url = f"{p.url}/v1/chat/completions"
        c0 = p.settle()
        lat = load.wrk(url, connections=1, seconds=cfg["lat_s"])
        c1 = p.settle()
        thr = load.wrk(url, connections=32, seconds=cfg["thr_s"])
        c2 = p.settle()
        # Accounting work left queued when wrk stops is part of serving those requests:
        # sustained throughput counts the time the proxy needs to drain it.
        drain = p.waited
        out[name] = {
            "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"],
            "window_rps": thr["rps"],
            "rps": thr["requests"] / (thr["seconds"] + drain),
            "drain_s": drain,
            "settled": p.settled,
            "cpu_per_1000_serial": (c1 - c0) / lat["requests"] * 1000,
            "cpu_per_1000": (c2 - c1) / thr["requests"] * 1000,
            "errors": lat["errors"] + thr["errors"],
            "requests": lat["requests"] + thr["requests"],
        }
    return out


def sse_round(procs: dict[str, Proc], cfg: dict[str, Any], r: int) -> dict[str, Any]:
    names = list(procs)
    order = names[r % len(names) :] + names[: r % len(names)]
    out = {}
    for name in order:
        base = procs[name].url
        delays = arun(load.sse_delays(base, events=cfg["sse_events"], interval_ms=20))
        out[name] = {
            "n": len(delays),
            "p50_ms": statistics.median(delays),
            "p99_ms": load.percentile(delays, 99),
        }
    return out


def peak_during(pid: int, transfer: Coroutine[Any, Any, float]) -> dict[str, float]:
    """RSS before, and peak RSS while the transfer runs: VmHWM after resetting it, and VmRSS
    sampled every 5 ms in case the reset is not allowed."""
    pre = status_kib(pid, "VmRSS")
    hwm = reset_peak(pid)
    peak = [pre]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], status_kib(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        mb_s = arun(transfer)
    finally:
        stop.set()
        sampler.join()
    if hwm:
        peak[0] = max(peak[0], status_kib(pid, "VmHWM"))
    return {
        "mb_s": mb_s,
        "pre_mib": pre / 1024,
        "peak_mib": peak[0] / 1024,
        "growth_mib": (peak[0] - pre) / 1024,
        "hwm_reset": hwm,
    }


def memory(procs: dict[str, Proc], cfg: dict[str, Any], idle: dict[str, float]) -> dict[str, Any]:
    mib = cfg["mib"]
    out: dict[str, Any] = {}
    for name, p in procs.items():
        base = p.url
        if name == "direct":
            out[name] = {
                "download": {"mb_s": arun(load.download(base, mib))},
                "upload": {"mb_s": arun(load.upload(base, mib))},
            }
            continue
        p.settle()
        out[name] = {
            "idle_fresh_mib": idle[name],
            "idle_children_mib": idle.get(name + "/children", 0.0),
            "idle_pss_mib": idle.get(name + "/pss", 0.0),
            "download": peak_during(p.pid, load.download(base, mib)),
        }
        p.settle()
        out[name]["upload"] = peak_during(p.pid, load.upload(base, mib))
    return out


def accounting(fake: Proc, tmp: Path, logs: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, workers in enumerate(cfg["workers"]):
        setting = f"workers={workers}"
        db_path = tmp / f"accounting-{workers}.sqlite"
        env = {"USAGE_PROXY_COLLECTOR_WORKERS": str(workers)}
        p = proxy_proc(f"proxy-{setting}", fake.url, db_path, logs, env)
        db = None
        try:
            p.start().settle()
            db = recording.Db(db_path)
            res: dict[str, Any] = {}
            n, deadline = cfg["runs"], cfg["deadline"]
            if i == 0:
                res["chat"] = arun(recording.chat_rows(p.url, db, n, wait=3.0))
            p.settle()
            res["throughput"] = arun(
                recording.runs_throughput(fake.url, p.url, db, n, deadline=deadline)
            )
            # Each burst's window is ~1 s (~200 probe samples), and its quiet baseline moves by
            # a few tenths of a ms from one try to the next: several, and the median judged.
            res["bursts"] = []
            for _ in range(cfg.get("bursts", 1)):
                p.settle()
                res["bursts"].append(
                    arun(
                        recording.burst(
                            fake.url, p.url, db, n, quiet=cfg["quiet_s"], deadline=deadline
                        )
                    )
                )
            out[setting] = res
            print(
                f"  {setting}: recorded {res['throughput']['recorded_per_s']:.0f} runs/s",
                flush=True,
            )
        finally:
            if db is not None:
                db.close()
            p.stop()
    return out


def meta() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        return command_output(*argv, cwd=HERE.parent, stderr=True)

    cpu = cpu_name()
    versions = {}
    for pkg in ("aiohttp", "uvloop", "multidict", "yarl", "SQLAlchemy", "aiosqlite", "tiktoken"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    import aiohttp.http_parser as parser

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "versions": versions,
        "aiohttp_c_parser": parser.HttpRequestParser.__module__ == "aiohttp._http_parser",
        "wrk": cmd("wrk", "--version").splitlines()[0] if cmd("wrk", "--version") else "",
        "git_head": cmd("git", "rev-parse", "--short", "HEAD"),
        "git_dirty": cmd("git", "status", "--porcelain", "--untracked-files=no").splitlines(),
        "loadavg_start": os.getloadavg(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="usage-proxy benchmark (issue #6)")
    ap.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    ap.add_argument("--runs", type=int, help="finished runs per accounting figure")
    ap.add_argument("--workers", help="collector_workers settings, e.g. 2,16")
    ap.add_argument("--no-asyncio", action="store_true", help="skip the asyncio-loop targets")
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    ap.add_argument("--render", type=Path, help="only judge and print a results JSON again")
    args = ap.parse_args()
    if args.render:
        report(json.loads(args.render.read_text()), args.out)
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.runs:
        cfg["runs"] = args.runs
    if args.workers:
        cfg["workers"] = [int(w) for w in args.workers.split(",")]
    load.require_wrk()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops everything
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"meta": meta(), "config": cfg}
    started = time.monotonic()
    procs: dict[str, Proc] = {}
    with tempfile.TemporaryDirectory(prefix="usage-proxy-bench-") as tmp_name:
        tmp = Path(tmp_name)
        fake = Proc(
            "direct",
            [PY, str(HERE / "fake_upstream.py"), "--port", str(free_port())],
            0,
            log=logs / "fake_upstream.log",
        )
        fake.port = int(fake.argv[-1])
        try:
            fake.start()
            procs["direct"] = fake
            bare = [PY, str(HERE / "bare_proxy.py")]
            for name in ("bare", "bare-asyncio"):
                if name.endswith("asyncio") and args.no_asyncio:
                    continue
                port = free_port()
                argv = [*bare, str(port), fake.url, *(["--asyncio"] if "asyncio" in name else [])]
                procs[name] = Proc(name, argv, port, log=logs / f"{name}.log").start()
            procs["proxy"] = proxy_proc("proxy", fake.url, tmp / "proxy.sqlite", logs).start()
            if not args.no_asyncio:
                procs["proxy-asyncio"] = proxy_proc(
                    "proxy-asyncio", fake.url, tmp / "proxy-asyncio.sqlite", logs, asyncio_loop=True
                ).start()
            idle: dict[str, float] = {}
            for name, p in procs.items():
                p.settle()
                idle[name] = status_kib(p.pid, "VmRSS") / 1024
                idle[name + "/children"] = p.children_rss_mib()
                idle[name + "/pss"] = p.pss_mib()
                load.wrk(f"{p.url}/v1/chat/completions", connections=32, seconds=1)  # warm-up
            res["small"] = {name: [] for name in procs}
            res["sse"] = {name: [] for name in procs}
            for r in range(cfg["rounds"]):
                print(f"round {r + 1}/{cfg['rounds']}: small requests", flush=True)
                for name, v in small_requests(procs, cfg, r).items():
                    res["small"][name].append(v)
            for r in range(cfg["rounds"]):
                print(f"round {r + 1}/{cfg['rounds']}: SSE", flush=True)
                for name, v in sse_round(procs, cfg, r).items():
                    res["sse"][name].append(v)
            print(f"memory: {cfg['mib']} MiB transfers", flush=True)
            res["memory"] = memory(procs, cfg, idle)
            for name in list(procs):
                if name != "direct":
                    procs.pop(name).stop()
            print("estimator", flush=True)
            res["estimator"] = recording.estimator(cfg["est_s"])
            print(f"accounting: {cfg['runs']} runs per figure", flush=True)
            res["accounting"] = accounting(fake, tmp, logs, cfg)
        finally:
            for p in procs.values():
                p.stop()
            fake.stop()
    res["meta"]["loadavg_end"] = os.getloadavg()
    res["meta"]["seconds"] = time.monotonic() - started
    report(res, args.out)
    return 0


def report(res: dict[str, Any], out: Path) -> None:
    """Judge, print, and write the JSON and the Markdown table."""
    rows = table.build_rows(res)
    res["rows"] = [r.as_dict() for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    out.with_suffix(".md").write_text(table.markdown(rows) + "\n")
    print()
    print(table.text(rows))
    m = res["meta"]
    print(
        f"\n{m['date']}  {m['cores']} cores  Python {m['python']}  {m['seconds']:.0f} s  "
        f"load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}  -> {out}"
    )
    errors = sum(v["errors"] for rounds in res["small"].values() for v in rounds)
    if errors:
        print(f"warning: {errors} failed requests during the small-request rounds")


if __name__ == "__main__":
    sys.exit(main())
