"""The scale-and-faults scenario, end to end: two `usage-proxy serve` replicas on one database
(PostgreSQL through a pausable relay, or one SQLite file), the fake upstream in this process
with probabilistic faults on the steps and messages fetches, and concurrent openai SDK clients.

Timeline (fractions of `size.duration`, over which runs are started at a steady rate):
- 0.15: the database becomes unreachable for `size.outage` seconds (relay paused, or an
  exclusive lock held on the SQLite file); the proof that writes really fail is kept;
- then, once both replicas have written their in-memory backlog, at 0.55 or later: replica "a"
  is killed with SIGKILL at a moment it holds claimed collection jobs and has client requests
  in flight, and restarted `size.down` seconds later on the same port;
- after the last run, collection must catch up within `size.settle` seconds.

A run whose only terminal sightings went through the killed process, and that had neither a job
nor a usage row when it died, was lost with that process's memory: the proxy writes a job
after relaying the answer (never delaying it). Such runs are polled again through a live replica
(as a client would after an error) and counted in `lost_with_process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.engine import make_url

from proxy.accounting.estimate.runs import RunEstimate, estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.db import mappings
from proxy.db.engine import make_sessionmaker
from proxy.db.migrate import upgrade
from proxy.keys import fingerprint
from tests.e2e.fake_upstream import FakeUpstream
from tests.fault.clients import PLANS, Client, Replica, RunSpec, Tally
from tests.fault.harness import (
    LedgerResult,
    ProxyProcess,
    SqliteLock,
    TcpRelay,
    compare_ledger,
    read_engine,
    wait_until,
)
from tests.fault.leaks import dump_tables, find_leaks
from tests.fault.outcome import Outcome, Size, make_keys

__all__ = ["ADMIN_TOKEN", "KEY_SECRET", "Scenario", "pg_schema", "run_scenario"]

KEY_SECRET = "fault-suite-hmac-secret"
ADMIN_TOKEN = "fault-suite-admin-token-0123456789"
_DB_FAILURE_LOGS = ("database write failed", "cannot reach the database", "recording run")


class Scenario:
    def __init__(self, size: Size, db_url: str, workdir: Path, *, seed: int = 1) -> None:
        self.size = size
        self.db_url = db_url
        postgres = make_url(db_url).get_backend_name() == "postgresql"
        self.backend = "postgres" if postgres else "sqlite"
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.keys = make_keys(min(size.clients, 8))
        self.teams = {key: f"team-{i % 3}" for i, key in enumerate(self.keys)}
        self.tally = Tally()
        self.fake = FakeUpstream()
        self.relay: TcpRelay | None = None
        self.replicas: list[Replica] = []
        self._engine = read_engine(db_url)
        self._killed: tuple[str, int] = ("", -1)  # the killed incarnation: (name, epoch)
        self._killed_at = 0.0

    # --- set-up ----------------------------------------------------------------------------
    async def _start(self) -> None:
        f, size = self.fake.faults, self.size
        f.rate_429, f.rate_500, f.rate_drop = size.rate_429, size.rate_500, size.rate_drop
        f.latency, f.retry_after, f.rng = size.latency, "0.2", random.Random(self.rng.random())
        await self.fake.start()
        proxy_url = self.db_url
        if self.backend == "postgres":
            url = make_url(self.db_url)
            self.relay = TcpRelay(url.host or "127.0.0.1", url.port or 5432)
            await self.relay.start()
            proxy_url = self.relay.url_for(self.db_url)
        sm = make_sessionmaker(self._engine)
        for key, team in self.teams.items():
            fp = fingerprint(key, KEY_SECRET.encode())
            await mappings.add_key_team(sm, fp, None, team)
        env = {
            "USAGE_PROXY_KEY_SECRET": KEY_SECRET,
            "USAGE_PROXY_ADMIN_TOKEN": ADMIN_TOKEN,
            "USAGE_PROXY_COLLECTOR_POLL_INTERVAL": "0.05",
            "USAGE_PROXY_COLLECTOR_RETRY_BASE": "0.05",
            "USAGE_PROXY_COLLECTOR_MAX_BACKOFF": "1",
            "USAGE_PROXY_COLLECTOR_LEASE": "3",
            "USAGE_PROXY_COLLECTOR_WORKERS": "8",
            "USAGE_PROXY_COLLECTOR_FETCH_TIMEOUT": "10",
        }
        for name, fmt in (("a", "text"), ("b", "json")):
            proc = ProxyProcess(
                name,
                self.fake.url,
                proxy_url,
                self.workdir / "logs",
                env={**env, "USAGE_PROXY_LOG_FORMAT": fmt},
            )
            self.replicas.append(Replica(proc))
        await asyncio.gather(*(r.proc.start() for r in self.replicas))

    def _specs(self) -> list[RunSpec]:
        names = list(PLANS)
        weights = [PLANS[n][1] for n in names]
        specs = []
        for _ in range(self.size.runs):
            extra = self.rng.choices([0, 1, 2, 3], [55, 25, 12, 8])[0]
            specs.append(
                RunSpec(
                    plan=self.rng.choices(names, weights)[0],
                    mode=self.rng.choices(["poll", "create_and_run", "stream"], [60, 25, 15])[0],
                    home=self.rng.randrange(len(self.replicas)),
                    extra_polls=extra,
                    cross=extra > 0 and self.rng.random() < 0.6,
                )
            )
        return specs

    # --- the run ---------------------------------------------------------------------------
    async def run(self) -> Outcome:
        started = time.monotonic()
        try:
            try:
                await self._start()
                outcome = await self._run(started)
            finally:
                await self._stop()
            texts = {**await dump_tables(self._engine), **self.logs()}
            outcome.leaks = find_leaks(texts, self.keys)
            return outcome
        finally:
            await self._engine.dispose()

    async def _run(self, started: float) -> Outcome:
        clients = [
            Client(self.keys[i % len(self.keys)], self.replicas, self.tally, random.Random(i))
            for i in range(self.size.clients)
        ]
        queue: asyncio.Queue[RunSpec | None] = asyncio.Queue()
        t0 = time.monotonic()
        workers = [asyncio.create_task(self._work(c, queue)) for c in clients]
        faults = asyncio.create_task(self._faults(t0, clients[0]))
        specs = self._specs()
        interval = self.size.duration / len(specs)
        for i, spec in enumerate(specs):
            # Open-loop arrivals: run i starts at t0 + i * interval, busy clients or not.
            await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            queue.put_nowait(spec)
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        outage_proof, db_logs, holding, restart = await faults
        by_key = {c.key: c for c in clients}
        lost = await self._repoll_lost(by_key)
        for c in clients:
            await c.close()
        ledger = await self._settle()
        misattributed, wrong = await self._check_rows()
        return Outcome(
            backend=self.backend,
            size=self.size,
            ledger=ledger,
            tally=self.tally,
            elapsed=time.monotonic() - started,
            outage_proof=outage_proof,
            db_failure_logs=db_logs,
            killed_holding=holding,
            lost_with_process=lost,
            restart_seconds=restart,
            injected=self.fake.faults.injected,
            fetches=sum(self.fake.faults.injected.values()) + len(self.fake.fetches),
            misattributed=misattributed,
            wrong_tokens=wrong,
        )

    async def _work(self, client: Client, queue: asyncio.Queue[RunSpec | None]) -> None:
        while (spec := await queue.get()) is not None:
            try:
                await client.run(spec)
            except Exception as exc:  # already counted by the client; the others go on
                self.tally.aborted.append(f"{spec}: {type(exc).__name__}: {exc}")

    async def _faults(self, t0: float, client: Client) -> tuple[str, int, int, float]:
        await asyncio.sleep(max(0.0, t0 + 0.15 * self.size.duration - time.monotonic()))
        proof = await self._outage()
        db_logs = sum(
            r.proc.logs().count(marker) for r in self.replicas for marker in _DB_FAILURE_LOGS
        )
        await wait_until(self._backlogs_empty, 60, interval=0.1, what="backlogs written")
        await asyncio.sleep(max(0.0, t0 + 0.55 * self.size.duration - time.monotonic()))
        holding, restart = await self._kill_and_restart(self.replicas[0], client)
        return proof, db_logs, holding, restart

    async def _outage(self) -> str:
        outage = self.size.outage
        if self.relay is not None:
            await self.relay.pause()
            await wait_until(self._health_down, 10, what="health to see the database down")
            proof = f"relay paused, {self.relay.dropped} connections dropped, health: down"
            await asyncio.sleep(outage)  # the outage itself
            await self.relay.resume()
            return proof
        lock = SqliteLock(self.db_url)
        await lock.acquire(hold_at_most=outage + 60)
        try:
            proof = lock.writes_fail()
            assert proof == "database is locked", proof
            await asyncio.sleep(outage + self.size.sqlite_extra)  # the outage itself
        finally:
            await lock.release()
        return f"exclusive lock held, a writer got {proof!r}"

    async def _admin_get(self, replica: Replica, path: str) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(replica.proc.url + path, headers=headers) as resp,
        ):
            return resp.status, await resp.text()

    async def _health_down(self) -> bool:
        for r in self.replicas:
            _, body = await self._admin_get(r, "/_proxy/health")
            if '"ok": false' not in body and '"ok":false' not in body:
                return False
        return True

    async def _backlogs_empty(self) -> bool:
        for r in self.replicas:
            _, body = await self._admin_get(r, "/_proxy/metrics")
            if "usage_proxy_unwritten_jobs 0.0" not in body:
                return False
        return True

    async def _held_by(self, replica: Replica) -> int:
        held = 0
        async with self._engine.connect() as conn:
            for pid in replica.proc.pids():  # the collector may be a child process
                result = await conn.execute(
                    text("SELECT count(*) FROM collection_jobs WHERE claimed_by LIKE :p"),
                    {"p": f"%:{pid}:%"},
                )
                held += int(result.scalar() or 0)
        return held

    async def _kill_and_restart(self, victim: Replica, client: Client) -> tuple[int, float]:
        # In the middle of collection: the victim holds claimed jobs when it dies, and client
        # requests are in flight to it (at least a chat stream that stays open).
        streaming = asyncio.Event()
        chat = asyncio.create_task(client.interrupted_chat(self.replicas.index(victim), streaming))
        await wait_until(streaming.is_set, 10, interval=0.01, what="a chat stream in flight")

        async def busy() -> int:
            if not self.tally.in_flight[victim.name]:
                return 0
            return await self._held_by(victim)

        holding = await wait_until(busy, 30, interval=0.002, what="a replica mid-collection")
        victim.up = False
        victim.epoch += 1
        await victim.proc.kill()
        killed = self._killed_at = time.monotonic()
        self._killed = (victim.name, victim.epoch - 1)
        await asyncio.sleep(self.size.down)  # the replica stays down this long
        await victim.proc.start()
        victim.up = True
        await chat  # done again on the other replica
        return holding, time.monotonic() - killed

    async def _runs_lost_with(self, name: str, epoch: int) -> list[str]:
        """Runs no live process saw terminal, of which the dead one left no job and no row."""
        only_there = [run for run, seen in self.tally.sightings.items() if seen == {(name, epoch)}]
        if not only_there:
            return []
        async with self._engine.connect() as conn:
            known = set(
                (await conn.execute(text("SELECT object_id FROM collection_jobs"))).scalars()
            ) | set(
                (
                    await conn.execute(
                        text("SELECT object_id FROM usage_records WHERE kind = 'assistants.run'")
                    )
                ).scalars()
            )
        return [run for run in only_there if run not in known]

    async def _repoll_lost(self, clients: dict[str, Client]) -> list[float]:
        """After the workload: poll again, with their own keys, the runs lost with the killed
        process (see the module docstring)."""
        lost = await self._runs_lost_with(*self._killed)
        for run in lost:
            await clients[self.tally.keys[run]].poll(self.tally.threads[run], run, None)
        return [self._killed_at - self.tally.sighted_at[run] for run in lost]

    async def _recorded(self) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT object_id FROM usage_records WHERE kind = 'assistants.run'")
            )
            return list(rows.scalars())

    async def _settle(self) -> LedgerResult:
        async def caught_up() -> bool:
            ledger = compare_ledger(self.fake.completed_runs, await self._recorded())
            async with self._engine.connect() as conn:
                pending = await conn.scalar(text("SELECT count(*) FROM collection_jobs"))
            return not ledger.missing and not pending

        with contextlib.suppress(AssertionError):  # the comparison below says what is missing
            await wait_until(caught_up, self.size.settle, interval=0.2, what="collection")
        return compare_ledger(self.fake.completed_runs, await self._recorded())

    async def _check_rows(self) -> tuple[list[str], list[str]]:
        """Rows billed to another team than their key's, and rows whose tokens are not what
        the run reported (reported usage) or that were not estimated from fetched objects."""
        hints = {f"sk-...{k[-4:]}": k for k in self.keys}
        sql = (
            "SELECT object_id, key_hint, team, usage_source, prompt_tokens, completion_tokens, "
            "status FROM usage_records WHERE kind = 'assistants.run'"
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(text(sql))).all()
        misattributed, wrong = [], []
        for run, hint, team, source, prompt, completion, status in rows:
            key = hints.get(hint)
            if key is None or self.teams[key] != team:
                misattributed.append(f"{run}: {hint} billed to {team}")
            reported = self.fake.runs[run]["_plan"].get("usage", "yes") == "yes"
            if reported and (source, prompt, completion) != ("reported", 300, 47):
                wrong.append(f"{run}: {source} {prompt}/{completion}, reported 300/47")
            if not reported:
                e = self._estimate(run)
                expected = ("estimated", e.prompt_tokens, e.completion_tokens)
                if (source, prompt, completion) != expected:
                    wrong.append(
                        f"{run} ({status}): {source} {prompt}/{completion}, "
                        f"estimated {e.prompt_tokens}/{e.completion_tokens} from its objects"
                    )
        return misattributed, wrong

    def _estimate(self, run_id: str) -> RunEstimate:
        """The run's estimate from the fake's objects (each run has a thread of its own, so
        nothing is added to it after the run)."""
        run = {k: v for k, v in self.fake.runs[run_id].items() if not k.startswith("_")}
        steps, messages = self.fake.steps[run_id], self.fake.messages[run["thread_id"]]
        return estimate_run(run, steps, messages, counter_for_model(run["model"]))

    async def _stop(self) -> None:
        await asyncio.gather(*(r.proc.stop() for r in self.replicas), return_exceptions=True)
        if self.relay is not None:
            await self.relay.close()
        await self.fake.close()

    def logs(self) -> dict[str, str]:
        return {r.name: r.proc.logs() for r in self.replicas}


@contextlib.asynccontextmanager
async def pg_schema(base_url: str) -> AsyncIterator[str]:
    """A new schema in the PostgreSQL database of `base_url`, migrated: its URL (`?schema=`).
    Dropped with everything in it on exit."""
    schema = f"fault_{uuid.uuid4().hex[:12]}"
    engine = read_engine(base_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"schema": schema}).render_as_string(False)
        try:
            await upgrade(url)
            yield url
        finally:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await engine.dispose()


async def run_scenario(backend: str, size: Size, workdir: Path, pg_url: str = "") -> Outcome:
    """The scenario on a fresh database: a SQLite file in `workdir`, or a schema of its own in
    the PostgreSQL database of `pg_url`."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'usage.db'}"
        await upgrade(url)
        return await Scenario(size, url, workdir).run()
    async with pg_schema(pg_url) as url:
        return await Scenario(size, url, workdir).run()
