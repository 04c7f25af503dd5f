"""Budget enforcement across replicas (issue 17): two `usage-proxy serve` replicas on one
PostgreSQL database, 32 concurrent clients of team red driving it past a small enforced daily
budget, and 4 clients of team blue (no budget) beside them. Reports the overspend (red's
recorded spend past the limit, in dollars and in requests) and the requests refused wrongly:
any 429 for blue, and any refusal of red whose message shows a spend below the limit or that
came before red's rows reached the limit in the database.

Run: .venv/bin/python bench/budgets.py [--postgres URL] [--latency-ms 20] [--limit-requests 400]
The database is a schema of its own in URL (default: the tests' database), dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Proc, free_port

BIN = str(Path(sys.executable).parent / "usage-proxy")
SECRET = "bench-budgets-secret"
RED, BLUE = "sk-bench-red-" + "r" * 24 + "0001", "sk-bench-blue-" + "b" * 24 + "0002"
# gpt-4o: 1,000 prompt tokens at $2.50/M and 500 completion tokens at $10/M.
PER_REQUEST = Decimal("0.0075")
BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
ADMIN = "bench-budgets-admin"
_FRESH = re.compile(r'^usage_proxy_budget_fresh_reads_total\{outcome="(\w+)"\} ([\d.e+]+)$', re.M)
_HOLDS = re.compile(r"^usage_proxy_(budget_holds_total|holds_timed_out) ([\d.e+]+)$", re.M)
_SPENT = re.compile(r"has used \$([\d,.]+) of its \$([\d,.]+)")


def fake_upstream(latency: float, arrivals: list[float]) -> web.Application:
    """A chat completion created now (so it falls in today's period), after `latency` s; the
    wall time each request of red arrives is appended to `arrivals`."""
    ids = iter(range(1, 10**9))

    async def chat(request: web.Request) -> web.Response:
        if RED in request.headers.get("Authorization", ""):
            arrivals.append(time.time())
        await request.read()
        await asyncio.sleep(latency)
        return web.json_response(
            {
                "id": f"chatcmpl-{next(ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "gpt-4o-2024-08-06",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def cli(url: str, *argv: str, stdin: str = "") -> str:
    env = {**os.environ, "USAGE_PROXY_KEY_SECRET": SECRET}
    done = subprocess.run(
        [BIN, *argv, "--database-url", url], input=stdin, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{argv[:2]}: {done.stderr.strip()}")
    return done.stdout


async def sql(url: str, statement: str) -> list[tuple]:
    from proxy.db.engine import make_engine

    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement))
            return list(result) if result.returns_rows else []
    finally:
        await engine.dispose()


class Client:
    """One client in a loop of chat completions through `proxy`, until stopped (red: until its
    first refusal)."""

    def __init__(self, http: aiohttp.ClientSession, proxy: str, key: str, stop_at_429: bool):
        self.http, self.url, self.key, self.stop_at_429 = (
            http,
            proxy + "/v1/chat/completions",
            key,
            stop_at_429,
        )
        self.ok = 0
        self.refused: list[tuple[float, str]] = []  # (wall time received, message)
        self.other: list[int] = []
        self.answered: list[tuple[float, float]] = []  # 200s: (wall time sent, received)

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        while not stop.is_set():
            sent = time.time()
            async with self.http.post(self.url, data=BODY, headers=headers) as r:
                body = await r.read()
            if r.status == 200:
                self.ok += 1
                self.answered.append((sent, time.time()))
            elif r.status == 429:
                self.refused.append((time.time(), json.loads(body)["error"]["message"]))
                if self.stop_at_429:
                    return
            else:
                self.other.append(r.status)


class Crossing:
    """Watches red's spend in the database (the daily rollup, which commits with the rows) in
    a loop on a connection of its own, and brackets the commit that reached the limit: it
    happened after `after` (the start of the last read that saw less) and before `before`
    (the end of the first read that saw the limit)."""

    def __init__(self, url: str, schema: str, limit: Decimal) -> None:
        self.url, self.limit = url, limit
        self.query = text(
            f'SELECT coalesce(sum(cost_usd), 0) FROM "{schema}".usage_rollup '
            "WHERE team = 'red' AND day = :day"
        )
        self.after = self.before = 0.0
        self.reads = 0

    async def watch(self) -> None:
        from proxy.db.engine import make_engine

        engine = make_engine(self.url)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        try:
            async with engine.connect() as conn:
                while True:
                    began = time.time()
                    spend = (await conn.execute(self.query, {"day": day})).scalar_one()
                    await conn.rollback()  # the next read sees what committed since
                    self.reads += 1
                    if Decimal(spend) >= self.limit:
                        self.before = time.time()
                        return
                    self.after = began
                    await asyncio.sleep(0.001)
        finally:
            await engine.dispose()


async def fresh_reads(http: aiohttp.ClientSession, replicas: list[Proc]) -> dict[str, int]:
    """Strict mode's fresh reads on both replicas, by outcome (read, timeout, failed), and
    its holds (budget_holds_total), of which holds_timed_out went out unrecorded."""
    out: dict[str, int] = {}
    for proxy in replicas:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(proxy.url + "/_proxy/metrics", headers=headers) as r:
            page = await r.text()
            for outcome, n in _FRESH.findall(page) + _HOLDS.findall(page):
                out[outcome] = out.get(outcome, 0) + int(float(n))
    return out


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 1) if values else None


async def bench(args: argparse.Namespace) -> dict:
    schema = f"bench_budgets_{uuid.uuid4().hex[:8]}"
    await sql(args.postgres, f'CREATE SCHEMA "{schema}"')
    url = make_url(args.postgres).update_query_dict({"schema": schema}).render_as_string(False)
    limit = PER_REQUEST * args.limit_requests
    replicas: list[Proc] = []
    runner = None
    logs = Path(tempfile.mkdtemp(prefix="bench-budgets-"))
    try:
        cli(url, "migrate")
        cli(url, "keys", "add", "--team", "red", stdin=RED + "\n")
        cli(url, "keys", "add", "--team", "blue", stdin=BLUE + "\n")
        cli(url, "budgets", "set", "--team", "red", "--limit", str(limit), "--period", "day",
            "--enforce")  # fmt: skip
        arrivals: list[float] = []
        runner = web.AppRunner(fake_upstream(args.latency_ms / 1000, arrivals), access_log=None)
        await runner.setup()
        upstream_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
        env = {
            "USAGE_PROXY_KEY_SECRET": SECRET,
            "USAGE_PROXY_LOG_LEVEL": "WARNING",
            "USAGE_PROXY_BUDGET_STRICT_TIMEOUT": str(args.strict_timeout),
            "USAGE_PROXY_ADMIN_TOKEN": ADMIN,
        }
        for i in range(2):
            port = free_port()
            upstream = f"http://127.0.0.1:{upstream_port}"
            argv = [BIN, "serve", "--port", str(port), "--upstream", upstream,
                    "--database-url", url, "--no-migrate"]  # fmt: skip
            replicas.append(Proc(f"replica{i}", argv, port, env, logs / f"replica{i}.log"))
        for proxy in replicas:
            await asyncio.to_thread(proxy.start)

        stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            reds = [Client(http, replicas[i % 2].url, RED, True) for i in range(32)]
            blues = [Client(http, replicas[i % 2].url, BLUE, False) for i in range(4)]
            crossing = Crossing(url, schema, limit)
            watcher = asyncio.create_task(crossing.watch())
            started = time.monotonic()
            blue_tasks = [asyncio.create_task(c.run(stop)) for c in blues]
            await asyncio.wait_for(
                asyncio.gather(*(c.run(stop) for c in reds)), timeout=args.timeout
            )
            elapsed = time.monotonic() - started
            stop.set()
            await asyncio.gather(*blue_tasks)
            await asyncio.wait_for(watcher, timeout=60)
            fresh = await fresh_reads(http, replicas)

        red_ok = sum(c.ok for c in reds)
        rows = f'"{schema}".usage_records'
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            [(n,)] = await sql(url, f"SELECT count(*) FROM {rows} WHERE team = 'red'")
            if n >= red_ok:
                break
            await asyncio.sleep(0.2)
        red_rows = await sql(
            url,
            f"SELECT recorded_at, cost_usd FROM {rows} WHERE team = 'red' ORDER BY recorded_at, id",
        )
        spent, crossed_at = Decimal(0), None
        for recorded_at, cost in red_rows:
            spent += Decimal(cost)
            if crossed_at is None and spent >= limit:
                crossed_at = recorded_at.timestamp()
        refusals = [r for c in reds for r in c.refused]
        shown_below = sum(
            1
            for _, message in refusals
            if (m := _SPENT.search(message))
            and Decimal(m[1].replace(",", "")) < Decimal(m[2].replace(",", ""))
        )
        early = sum(1 for at, _ in refusals if crossed_at is None or at < crossed_at)
        forwarded_after = sum(1 for at, _ in red_rows if crossed_at and at.timestamp() > crossed_at)
        over = spent - limit
        cross = crossing.before
        answered = [a for c in reds for a in c.answered]
        # Client-side latency of red's forwarded requests before the limit came near (the
        # first half of the limit) and after; blue's all along.
        red_by_sent = sorted(answered)
        half = red_by_sent[: args.limit_requests // 2]
        late = [a for a in red_by_sent if a[0] > cross - 2.0 and a[1] < cross]
        return {
            "replicas": 2,
            "red_clients": len(reds),
            "blue_clients": len(blues),
            "upstream_latency_ms": args.latency_ms,
            "limit_usd": str(limit),
            "limit_requests": args.limit_requests,
            "red_forwarded": red_ok,
            "red_rows": len(red_rows),
            "red_spend_usd": str(spent),
            "overspend_usd": str(over),
            "overspend_requests": float(over / PER_REQUEST),
            "forwarded_after_crossing": forwarded_after,
            # Certainly in flight at the commit (whenever in the bracket it was), and possibly.
            "in_flight_at_crossing": [
                sum(1 for sent, got in answered if sent < crossing.after and got > cross),
                sum(1 for sent, got in answered if sent < cross and got > crossing.after),
            ],
            "admitted_after_crossing": sum(1 for at in arrivals if at > cross),
            "crossing_bracket_ms": round((crossing.before - crossing.after) * 1000, 1),
            "red_p50_ms_first_half": _p50([got - sent for sent, got in half]),
            "red_p50_ms_last_2s_before_crossing": _p50([got - sent for sent, got in late]),
            "fresh_reads": fresh,
            "blue_p50_ms": _p50([got - sent for c in blues for sent, got in c.answered]),
            "red_refused": len(refusals),
            "wrongly_refused_red_below_limit": shown_below + early,
            "wrongly_refused_blue": sum(len(c.refused) for c in blues),
            "blue_forwarded": sum(c.ok for c in blues),
            "other_statuses": sorted({s for c in reds + blues for s in c.other}),
            "seconds_to_stop_all_red": round(elapsed, 2),
            "red_requests_per_second": round(red_ok / elapsed, 1),
        }
    finally:
        for proxy in replicas:
            await asyncio.to_thread(proxy.stop)
        if runner is not None:
            await runner.cleanup()
        await sql(args.postgres, f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "USAGE_PROXY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--limit-requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--strict-timeout", type=float, default=0.5, help="budget_strict_timeout (0: off)"
    )
    args = parser.parse_args()
    results = []
    for _ in range(args.rounds):
        result = asyncio.run(bench(args))
        print(json.dumps(result), flush=True)
        results.append(result)
    over = [r["overspend_requests"] for r in results]
    flight = [r["in_flight_at_crossing"] for r in results]
    after = [r["admitted_after_crossing"] for r in results]
    print(f"in flight at the crossing: {flight}; admitted after it: {after}")
    wrong = sum(r["wrongly_refused_red_below_limit"] + r["wrongly_refused_blue"] for r in results)
    print(
        f"overspend (requests): median {statistics.median(over):.1f}, max {max(over):.1f}; "
        f"wrongly refused: {wrong}"
    )


if __name__ == "__main__":
    main()
