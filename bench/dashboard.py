"""The dashboard at scale (issue 18): seed N usage rows (a year of a large organisation: 50
teams, 2,000 keys, 300 assistants), build the rollup, then time the overview page and a
month's `report --group-by team` (server time: the queries and the page's rendering, no
socket), and the resident memory of a per-event CSV export over fewer and more rows.

    .venv/bin/python bench/dashboard.py --backend postgres --rows 10000000
    .venv/bin/python bench/dashboard.py --backend sqlite --rows 2000000

PostgreSQL: the schema `bench_dashboard` of USAGE_PROXY_TEST_POSTGRES_URL's database (or
--url), dropped and made again. SQLite: bench/results/dashboard.db. The rows are generated in
SQL (generate_series, or a recursive CTE on SQLite): the fast bulk path; the rollup is then
built by `proxy.db.rollup.rebuild`, as `usage-proxy rollup rebuild` does. Not part of the
test suite. Prints a Markdown table and writes bench/results/dashboard-BACKEND.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.migrate import upgrade
from proxy.db.rollup import rebuild

RESULTS = Path(__file__).parent / "results"
START = "2026-01-01"
MONTH = "2026-06"
TEAMS, KEYS, ASSISTANTS = 50, 2000, 300

# One row per i in 1..N. A key (i % 2000) belongs to one team, mostly calls one kind and one
# model (a tenth of its calls another), its runs use three assistants, and it carries one of
# 20 tags or none: the spread of a real organisation, not a uniform random one.
_COLUMNS = (
    "kind, object_id, assistant_id, model, occurred_at, recorded_at, key_fingerprint, key_hint, "
    "team, tag, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, "
    "usage_source, code_interpreter_calls, code_interpreter_sessions, file_search_calls, "
    "web_search_calls, function_calls, cost_usd"
)


def _select(backend: str, lo: int, hi: int, n: int) -> str:
    """The INSERT of rows lo..hi of n."""
    k = "(i % 2000)"
    kinds = "ARRAY['assistants.run','response','chat.completion','embedding']"
    models = "ARRAY['gpt-4o','gpt-4o-mini','gpt-4.1','text-embedding-3-small']"
    if backend == "postgresql":
        kind = f"({kinds})[1 + ({k} + (i % 10 = 0)::int) % 4]"
        model = f"({models})[1 + ({k} / 7 + (i % 10 = 3)::int) % 4]"
        when = (
            f"timestamptz '{START} 00:00:00+00' + (i::float8 * 31536000 / {n}) "
            "* interval '1 second'"
        )
        fp = f"md5({k}::text)"
        hint = f"'sk-...' || lpad({k}::text, 4, '0')"
        # Teams spend unevenly: team t's events cost (1 + t^2 / 100) times the base.
        cost = "round((i % 997) * 0.0000137 * (1 + ((i % 2000) % 50) ^ 2 / 100.0), 10)"
        src = f"generate_series({lo}, {hi}) AS s(i)"
        tail = ""
        cat = "||"
    else:
        kind = (
            f"CASE ({k} + (i % 10 = 0)) % 4 WHEN 0 THEN 'assistants.run' WHEN 1 THEN 'response' "
            "WHEN 2 THEN 'chat.completion' ELSE 'embedding' END"
        )
        model = (
            f"CASE ({k} / 7 + (i % 10 = 3)) % 4 WHEN 0 THEN 'gpt-4o' WHEN 1 THEN 'gpt-4o-mini' "
            "WHEN 2 THEN 'gpt-4.1' ELSE 'text-embedding-3-small' END"
        )
        when = (
            f"strftime('%Y-%m-%d %H:%M:%S', '{START}', '+' || (i * 31536000 / {n}) || ' seconds')"
            " || '.000000'"
        )
        fp = f"printf('%064d', {k})"
        hint = f"printf('sk-...%04d', {k})"
        # 1e-10 units (proxy.db.models.Money); uneven teams as on PostgreSQL.
        cost = "(i % 997) * 1370 * (100 + ((i % 2000) % 50) * ((i % 2000) % 50))"
        src = "s"
        tail = f"WITH RECURSIVE s(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM s WHERE i < {hi}) "
        cat = "||"
    assistant = (
        f"CASE WHEN {kind} = 'assistants.run' THEN 'asst_' {cat} (({k} * 3 + i % 3) % 300) END"
    )
    tag = f"CASE WHEN {k} % 3 = 0 THEN NULL ELSE 'tag-' {cat} ({k} % 20) END"
    team = f"'team-' {cat} ({k} % 50)"
    tokens = "(200 + i % 1800)"
    return (
        f"{tail}INSERT INTO usage_records ({_COLUMNS}) SELECT {kind}, 'ev_' {cat} i, "
        f"{assistant}, {model}, {when}, {when}, {fp}, {hint}, {team}, {tag}, {tokens}, "
        f"i % 400, {tokens} + i % 400, 0, 0, CASE WHEN i % 5 = 0 THEN 'estimated' ELSE "
        f"'reported' END, 0, 0, 0, 0, 0, CASE WHEN i % 1000 = 0 THEN NULL ELSE {cost} END "
        f"FROM {src}"
    )


async def _seed(url: str, backend: str, n: int) -> dict[str, float]:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    timings = {}
    try:
        t = time.perf_counter()
        # Load first, build the indexes after: how a bulk load is done on both backends.
        async with engine.begin() as conn:
            rows = await conn.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'usage_records'"
                    " AND schemaname = current_schema()"
                    " AND indexname LIKE 'ix_%'"
                    if backend == "postgresql"
                    else "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                    "AND tbl_name = 'usage_records' AND name LIKE 'ix_%'"
                )
            )
            indexes = list(rows)
            for name, _ in indexes:
                await conn.execute(text(f"DROP INDEX {name}"))
        done = 0
        step = 1_000_000
        while done < n:
            part = min(step, n - done)
            sql = _select(backend, done + 1, done + part, n)
            async with engine.begin() as conn:
                await conn.execute(text(sql))
            done += part
            print(f"  seeded {done:,} rows ({time.perf_counter() - t:.0f} s)", flush=True)
        timings["seed_s"] = time.perf_counter() - t
        t = time.perf_counter()
        async with engine.begin() as conn:
            for _, ddl in indexes:
                await conn.execute(text(ddl))
            if backend == "postgresql":
                await conn.execute(text("ANALYZE usage_records"))
        timings["index_s"] = time.perf_counter() - t
        t = time.perf_counter()
        async with sm.begin() as session:
            timings["cells"] = await rebuild(session)
        async with engine.begin() as conn:
            await conn.execute(
                text("ANALYZE usage_rollup" if backend == "postgresql" else "ANALYZE")
            )
        timings["rollup_rebuild_s"] = time.perf_counter() - t
    finally:
        await engine.dispose()
    return timings


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


async def _time_pages(url: str, repeat: int) -> dict[str, Any]:
    from proxy.http.ui import data
    from proxy.http.ui.pages import _environment
    from proxy.reports.query import ReportQuery, parse_month
    from proxy.reports.run import run_report

    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    env = _environment()
    since, until = parse_month(MONTH)
    out: dict[str, Any] = {}
    try:

        async def overview() -> None:
            page = await data.overview(sm, data.Period(MONTH, dt.date(2026, 12, 2)), None)
            env.get_template("overview.html").render(**page, csrf="x", role="viewer")

        async def team_page() -> None:
            page = await data.team_page(sm, data.Period(MONTH, dt.date(2026, 12, 2)), "team-7")
            env.get_template("team.html").render(**page, csrf="x", role="viewer")

        async def report() -> None:
            await run_report(sm, ReportQuery(since, until, ("team",), fmt="table"))

        for name, fn in (("overview", overview), ("team_page", team_page), ("report_team", report)):
            await fn()  # warm: connections, templates, the database's cache
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                await fn()
                times.append((time.perf_counter() - t) * 1000)
            out[name] = {"p50_ms": statistics.median(times), "p95_ms": _p95(times)}
            print(f"  {name}: p50 {out[name]['p50_ms']:.0f} ms, p95 {out[name]['p95_ms']:.0f} ms")
    finally:
        await engine.dispose()
    return out


async def _export(url: str, rows: int, total: int) -> None:
    """Child process: stream the per-event CSV of the first `rows` rows (by time) and print
    the bytes sent and the peak RSS."""
    from proxy.reports.query import ReportQuery
    from proxy.reports.run import stream_report

    start = dt.datetime.fromisoformat(START).replace(tzinfo=dt.UTC)
    until = start + dt.timedelta(seconds=31536000 * rows / total + 1)
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    size = 0
    t = time.perf_counter()
    try:
        pieces = stream_report(sm, ReportQuery(since=start, until=until, fmt="csv"))
        assert pieces is not None
        async for piece in pieces:
            size += len(piece)
    finally:
        await engine.dispose()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps({"bytes": size, "peak_rss_mib": peak_kib / 1024, "s": time.perf_counter() - t})
    )


def _export_rss(url: str, rows: int, total: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--export", str(rows), "--total", str(total), "--url", url],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  export of {rows:,} rows: {result['bytes'] / 1e6:.0f} MB of CSV, peak RSS "
        f"{result['peak_rss_mib']:.0f} MiB, {result['s']:.0f} s"
    )
    return result


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url
    if args.backend == "sqlite":
        RESULTS.mkdir(exist_ok=True)
        return f"sqlite+aiosqlite:///{RESULTS / 'dashboard.db'}"
    base = os.environ.get(
        "USAGE_PROXY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
    return base + ("&" if "?" in base else "?") + "schema=bench_dashboard"


async def _fresh(url: str, backend: str) -> None:
    if backend == "sqlite":
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    else:
        base = url.split("?", 1)[0]
        engine = make_engine(base)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA IF EXISTS bench_dashboard CASCADE"))
            await conn.execute(text("CREATE SCHEMA bench_dashboard"))
        await engine.dispose()
    await upgrade(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--url")
    parser.add_argument("--reuse", action="store_true", help="keep the seeded database")
    parser.add_argument("--exports", default="1000000,10000000", help="rows per export run")
    parser.add_argument("--export", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = _url(args)
    if args.export:
        asyncio.run(_export(url, args.export, args.total))
        return
    backend = "postgresql" if args.backend == "postgres" else "sqlite"
    result: dict[str, Any] = {"backend": backend, "rows": args.rows, "month": MONTH}
    if not args.reuse:
        asyncio.run(_fresh(url, backend))
        print(f"seeding {args.rows:,} rows ({backend})")
        result["seed"] = asyncio.run(_seed(url, backend, args.rows))
        print(f"  {result['seed']}")
    result["pages"] = asyncio.run(_time_pages(url, args.repeat))
    result["exports"] = [
        {"rows": n, **_export_rss(url, n, args.rows)}
        for n in (int(x) for x in args.exports.split(",") if x)
        if n <= args.rows
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"dashboard-{args.backend}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
