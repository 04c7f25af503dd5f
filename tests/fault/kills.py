"""SIGKILL at any moment (issue #19, item 1): two `usage-proxy serve` replicas on one database,
openai SDK clients driving Assistants runs through them, and a killer that SIGKILLs a replica
(serving and collector process) again and again and restarts it at once. Half the kills land
at a random moment; the other half land the instant a client has received a finished run from
the victim, before the victim can have written what it saw (the window issue #19 measured).

Runs take time, as real ones do (four polls, or 0.3 s of stream, from create to end), and
clients poll every 0.1 s. Clients never poll a run again once they saw it finished, and a
fifth of them never poll at all ("forget": create the run, then nothing). The ledger is every
run the upstream created: each must end with exactly one usage row, collected by the replicas
on their own.

Two guards close the windows a kill used to leave (proxy/accounting/sources/assistants/
creates.py): a create's answer is held until its job is stored, so a run only created (never
polled again) is never answered before the database knows it (`lost_unpolled`); and a create
on a thread writes an intent before it is forwarded, so a create whose answer died with its
replica (the client saw a connection error and retried: `orphans`) is found again by listing
the thread. A create-and-run names no thread, so its orphans cannot be found: they are counted
apart (`orphans_create_and_run`), and so are the replicas' own count of them: `unseen`, the
create-and-runs the database holds as maybe unrecorded once every dead worker's was marked
(replicas run with `unseen_after` = UNSEEN_AFTER), which must bound every lost run. The fake
upstream's clock is the wall clock here, as the API's is: an intent's recovery compares the
runs' created_at with the intent's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from proxy.accounting.process.owners import is_dead
from proxy.db import mappings
from proxy.db.engine import make_sessionmaker
from proxy.db.migrate import upgrade
from proxy.keys import fingerprint
from tests.e2e.fake_upstream import FakeUpstream
from tests.fault.clients import PLANS, Client, Replica, RunSpec, Tally
from tests.fault.harness import LedgerResult, ProxyProcess, compare_ledger, read_engine, wait_until
from tests.fault.outcome import make_keys
from tests.fault.scenario import KEY_SECRET, pg_schema

__all__ = ["KillOutcome", "KillSize", "run_kills"]

UNSEEN_AFTER = 1.0  # seconds: the replicas' `unseen_after`, small so the count settles quickly


@dataclass(frozen=True)
class KillSize:
    runs: int
    duration: float  # seconds over which runs start
    clients: int = 16
    kill_every: tuple[float, float] = (0.5, 2.0)  # seconds between kills, drawn uniformly
    # At least this many kills while runs are being made, however slowly a loaded machine
    # restarts the replicas: the runs wait for the kills (test_kills asserts it).
    min_kills: int = 5
    settle: float = 120.0


@dataclass
class KillOutcome:
    backend: str
    size: KillSize
    ledger: LedgerResult  # every run the upstream created
    lost: list[str]  # missing runs some client polled or streamed
    # For each: seconds from its last sighting to its process's kill (None: a seer lives on)
    lost_ages: list[float | None]
    # Of those, the runs created on a thread (their create held, and with an intent).
    lost_on_a_thread: list[str]
    lost_unpolled: list[str]  # missing runs only created, with their create's age at the kill
    unpolled_ages: list[float | None]  # seconds from each one's create answer to its kill
    orphans: list[str]  # missing runs no client saw, created on a thread (an intent's)
    orphans_create_and_run: list[str]  # the same, by a create-and-run (not recoverable)
    # Create-and-runs the replicas counted unseen (maybe unrecorded), as the database holds
    # them at the end; None: the count did not settle (a dead worker's left unmarked).
    unseen: int | None = None
    unseen_seconds: float = 0.0  # the wait for that count, after the settle
    kills: int = 0
    kills_after_finish: int = 0  # landed right after a client received a finished run
    finish_lost_with_process: int = 0  # runs seen finished only by processes killed later
    forgotten: int = 0
    requests: int = 0
    killed_failures: int = 0
    failures: list[str] = field(default_factory=list)
    collector_retrieves: int = 0
    settle_seconds: float = 0.0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.ledger.duplicated or self.ledger.unexpected or self.failures)

    def lines(self) -> list[str]:
        return [
            f"[{self.backend}, kills] {self.ledger.line()}; {len(self.lost)} lost, "
            f"{len(self.lost_unpolled)} never-polled runs lost {self.lost_unpolled}, "
            f"{len(self.orphans)} orphaned creates on a thread lost {self.orphans}, "
            f"{len(self.orphans_create_and_run)} orphaned create-and-runs lost, "
            f"{self.unseen} create-and-runs counted unseen",
            f"lost: {self.lost} (on a thread: {self.lost_on_a_thread}; seconds from the last "
            f"sighting to the kill: {self.lost_ages})",
            f"{self.kills} SIGKILLs ({self.kills_after_finish} right after a client received a "
            f"finished run); {self.finish_lost_with_process} runs seen finished only by processes "
            f"killed later; {self.forgotten} runs never polled after their create",
            f"client requests: {self.requests}, {self.killed_failures} failed on a killed "
            f"replica (done again), {len(self.failures)} failed otherwise; the collectors "
            f"retrieved runs {self.collector_retrieves} times; settled in "
            f"{self.settle_seconds:.1f} s (the unseen count {self.unseen_seconds:.1f} s more); "
            f"{self.elapsed:.1f} s in all",
        ]


class KillScenario:
    def __init__(self, size: KillSize, db_url: str, workdir: Path, seed: int = 19) -> None:
        self.size = size
        self.db_url = db_url
        self.backend = (
            "postgres" if make_url(db_url).get_backend_name() == "postgresql" else "sqlite"
        )
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.keys = make_keys(8)
        self.tally = Tally()
        self.fake = FakeUpstream()
        self.replicas: list[Replica] = []
        self._engine = read_engine(db_url)
        self._armed: Replica | None = None
        self._fired = asyncio.Event()
        self._killed_sightings: set[tuple[str, int]] = set()
        self._killed_at: dict[tuple[str, int], float] = {}
        self.unpolled_ages: list[float | None] = []
        self.kills = 0
        self.kills_after_finish = 0

    async def _start(self) -> None:
        f = self.fake.faults
        f.rate_429, f.rate_500, f.rate_drop = 0.03, 0.02, 0.01
        f.latency, f.retry_after, f.rng = 0.01, "0.1", random.Random(self.rng.random())
        self.fake.polls_to_complete = 4
        self.fake.stream_pause = 0.3
        self.fake.wall_clock = True
        await self.fake.start()
        sm = make_sessionmaker(self._engine)
        for key in self.keys:
            await mappings.add_key_team(sm, fingerprint(key, KEY_SECRET.encode()), None, "team")
        env = {
            "USAGE_PROXY_KEY_SECRET": KEY_SECRET,
            "USAGE_PROXY_COLLECTOR_POLL_INTERVAL": "0.1",
            "USAGE_PROXY_COLLECTOR_RETRY_BASE": "0.05",
            "USAGE_PROXY_COLLECTOR_MAX_BACKOFF": "1",
            "USAGE_PROXY_COLLECTOR_WORKERS": "8",
            "USAGE_PROXY_COLLECTOR_FETCH_TIMEOUT": "10",
            "USAGE_PROXY_UNSEEN_AFTER": str(UNSEEN_AFTER),
        }
        for name in ("a", "b"):
            proc = ProxyProcess(name, self.fake.url, self.db_url, self.workdir / "logs", env=env)
            self.replicas.append(Replica(proc))
        await asyncio.gather(*(r.proc.start() for r in self.replicas))
        self.tally.on_sighting.append(self._on_sighting)

    def _specs(self) -> list[RunSpec]:
        names = list(PLANS)
        weights = [PLANS[n][1] for n in names]
        modes, mode_weights = ["poll", "create_and_run", "stream", "forget"], [45, 20, 15, 20]
        return [
            RunSpec(
                plan=self.rng.choices(names, weights)[0],
                mode=self.rng.choices(modes, mode_weights)[0],
                home=self.rng.randrange(2),
                extra_polls=0,  # never asked again once seen finished
                cross=False,
            )
            for _ in range(self.size.runs)
        ]

    # --- killing -----------------------------------------------------------------------------
    def _kill_now(self, victim: Replica) -> None:
        """SIGKILL the replica's every process, from inside the client's own turn of the loop:
        nothing of the replica runs between the client's answer and its death."""
        pids = victim.proc.pids()
        victim.up = False
        victim.epoch += 1
        self._killed_sightings.add((victim.name, victim.epoch - 1))
        self._killed_at[(victim.name, victim.epoch - 1)] = time.monotonic()
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.kills += 1

    def _on_sighting(self, run_id: str, via: tuple[str, int]) -> None:
        victim = self._armed
        if victim is not None and victim.up and via == (victim.name, victim.epoch):
            self._armed = None
            self.kills_after_finish += 1
            self._kill_now(victim)
            self._fired.set()

    async def _killer(self, until: float) -> None:
        """Kill an up replica every `kill_every` seconds, alternately at a random moment and
        right after a client received a finished run from it; each comes back as soon as it can
        (a restart of its own, which the next kill does not wait for: both may be down)."""
        restarts: list[asyncio.Task[None]] = []
        after_finish = False
        while time.monotonic() < until or self.kills < self.size.min_kills:
            await asyncio.sleep(self.rng.uniform(*self.size.kill_every))
            up = await wait_until(
                lambda: [r for r in self.replicas if r.up], 60, interval=0.01, what="one up"
            )
            victim = self.rng.choice(up)
            after_finish = not after_finish
            if not after_finish:
                # A random moment, but one with a client request in flight to the victim when
                # there is one within 2 s: an idle moment between polls proves less (a CI run
                # drew 5 idle ones in a row once).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        while not self.tally.in_flight[victim.name]:
                            await asyncio.sleep(0.005)
                self._kill_now(victim)
            else:
                self._fired.clear()
                self._armed = victim
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self._fired.wait()
                if self._armed is victim:  # no finished run went through it: kill it anyway
                    self._armed = None
                    self._kill_now(victim)
            restarts.append(asyncio.create_task(self._restart(victim)))
        await asyncio.gather(*restarts)

    def _killed(self, n: int) -> bool:
        return self.kills >= n

    async def _restart(self, victim: Replica) -> None:
        assert victim.proc.proc is not None
        await victim.proc.proc.wait()
        await victim.proc.start()
        victim.up = True

    # --- the run -----------------------------------------------------------------------------
    async def run(self) -> KillOutcome:
        started = time.monotonic()
        try:
            await self._start()
            clients = [
                Client(
                    self.keys[i % len(self.keys)],
                    self.replicas,
                    self.tally,
                    random.Random(i),
                    pace=0.1,
                )
                for i in range(self.size.clients)
            ]
            queue: asyncio.Queue[RunSpec | None] = asyncio.Queue()
            workers = [asyncio.create_task(self._work(c, queue)) for c in clients]
            t0 = time.monotonic()
            killer = asyncio.create_task(self._killer(t0 + 0.85 * self.size.duration))
            specs = self._specs()
            interval = self.size.duration / len(specs)
            for i, spec in enumerate(specs):
                await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
                due = self.size.min_kills * i // len(specs)
                if self.kills < due:
                    await wait_until(partial(self._killed, due), 120, interval=0.01, what="kills")
                queue.put_nowait(spec)
            for _ in workers:
                queue.put_nowait(None)
            await asyncio.gather(*workers)
            await killer
            # Every key is used once more on every replica, as live traffic would: keys live
            # in memory only, so a restarted replica follows a run once its key is back.
            for c in clients[: len(self.keys)]:
                for i in range(len(self.replicas)):
                    await c.call(lambda sdk: sdk.models.list(), i)
            settle_from = time.monotonic()
            ledger = await self._settle()
            settle = time.monotonic() - settle_from
            unseen_from = time.monotonic()
            unseen = await self._unseen()
            unseen_wait = time.monotonic() - unseen_from
            for c in clients:
                await c.close()
            outcome = await self._outcome(ledger, settle, time.monotonic() - started)
            outcome.unseen, outcome.unseen_seconds = unseen, unseen_wait
            return outcome
        finally:
            await asyncio.gather(*(r.proc.stop() for r in self.replicas), return_exceptions=True)
            await self.fake.close()
            await self._engine.dispose()

    async def _work(self, client: Client, queue: asyncio.Queue[RunSpec | None]) -> None:
        while (spec := await queue.get()) is not None:
            try:
                await client.run(spec)
            except Exception as exc:
                self.tally.aborted.append(f"{spec}: {type(exc).__name__}: {exc}")

    async def _recorded(self) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT object_id FROM usage_records WHERE kind = 'assistants.run'")
            )
            return list(rows.scalars())

    async def _unseen(self) -> int | None:
        """The create-and-runs counted unseen, once every dead worker's intent is marked (the
        replicas mark them `unseen_after` seconds after they were written; a live worker's is
        its own to delete)."""

        async def marked() -> int | None:
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text("SELECT worker, unseen_at FROM run_intents WHERE thread_id IS NULL")
                    )
                ).all()
            if any(unseen_at is None and is_dead(worker) for worker, unseen_at in rows):
                return None
            return sum(1 for _, unseen_at in rows if unseen_at is not None)

        counts: list[int] = []

        async def settled() -> bool:
            count = await marked()
            if count is not None:
                counts.append(count)
            return count is not None

        with contextlib.suppress(AssertionError):
            await wait_until(settled, 10 + 10 * UNSEEN_AFTER, interval=0.25, what="unseen")
        return counts[-1] if counts else None

    def in_window(self, run: str) -> float | None:
        """For a run only created, how long before its replica's kill the create was answered
        (negative: answered after the kill, from the socket's buffer); None if not killed."""
        if run not in self.tally.forgotten:
            return None
        via, at = self.tally.forgotten[run]
        killed = self._killed_at.get(via)
        return None if killed is None else killed - at

    async def _settle(self) -> LedgerResult:
        async def caught_up() -> bool:
            ledger = compare_ledger(self.fake.runs, await self._recorded())
            async with self._engine.connect() as conn:
                pending = await conn.scalar(text("SELECT count(*) FROM collection_jobs"))
            # No job left: what is missing now was never written (the test says whether
            # each is in the window its create's replica died in).
            seen = set(self.tally.plans) | set(self.tally.sightings)
            return not pending and all(
                self.in_window(r) is not None or self.unwritten_for(r) is not None or r not in seen
                for r in ledger.missing
            )

        with contextlib.suppress(AssertionError):
            await wait_until(caught_up, self.size.settle, interval=0.25, what="collection")
        return compare_ledger(self.fake.runs, await self._recorded())

    def unwritten_for(self, run: str) -> float | None:
        """For a run every process that saw it was killed: seconds from the last time a client
        received it to the first of those kills (the time its job had to be written); None
        when a process that saw it lives on."""
        at = self.tally.sighted_at.get(run)
        seen = self.tally.sightings.get(run) or set()
        if at is None or not seen or not seen <= set(self._killed_at):
            return None
        return min(self._killed_at[via] for via in seen) - at

    def _describe(self, run: str) -> str:
        """A lost run, and the incarnations that saw it finished, with when (before their
        kill) the last sighting was."""
        at = self.tally.sighted_at.get(run)
        seen = []
        for via in sorted(self.tally.sightings.get(run, ())):
            killed = self._killed_at.get(via)
            when = "" if killed is None or at is None else f" {(killed - at) * 1000:.0f} ms"
            seen.append(f"{via[0]}#{via[1]}{when}")
        return f"{run} ({self.tally.plans.get(run)}): seen finished by {', '.join(seen)}"

    async def _outcome(self, ledger: LedgerResult, settle: float, elapsed: float) -> KillOutcome:
        seen = set(self.tally.plans) | set(self.tally.sightings)
        forgotten = self.tally.forgotten
        lost_runs = [run for run in ledger.missing if run in seen and run not in forgotten]
        threads = self.tally.created_threads
        lost = [self._describe(run) for run in lost_runs]
        lost_ages = [self.unwritten_for(run) for run in lost_runs]
        on_thread = [r for r in lost_runs if self.fake.runs[r]["thread_id"] in threads]
        unseen = [run for run in ledger.missing if run not in seen]
        orphans = [r for r in unseen if self.fake.runs[r]["thread_id"] in threads]
        orphans_cr = [r for r in unseen if self.fake.runs[r]["thread_id"] not in threads]
        unpolled = []
        for run in ledger.missing:
            if run in forgotten:
                age = self.in_window(run)
                when = "never killed" if age is None else f"{age * 1000:.0f} ms before its kill"
                unpolled.append(f"{run}: created via {forgotten[run][0]}, answered {when}")
                self.unpolled_ages.append(age)
        died = sum(
            1
            for sightings in self.tally.sightings.values()
            if sightings and sightings <= self._killed_sightings
        )
        retrieves = sum(
            1
            for r in self.fake.requests
            if r["method"] == "GET"
            and "/runs/" in r["path"]
            and not r["path"].endswith("/steps")
            and "OpenAI/Python" not in r["headers"].get("User-Agent", "")
        )
        return KillOutcome(
            backend=self.backend,
            size=self.size,
            ledger=ledger,
            lost=lost,
            lost_ages=lost_ages,
            lost_on_a_thread=on_thread,
            lost_unpolled=unpolled,
            unpolled_ages=self.unpolled_ages,
            orphans=orphans,
            orphans_create_and_run=orphans_cr,
            kills=self.kills,
            kills_after_finish=self.kills_after_finish,
            finish_lost_with_process=died,
            forgotten=sum(1 for s in self.tally.plans if s not in self.tally.sightings),
            requests=self.tally.requests,
            killed_failures=self.tally.killed_failures,
            failures=[*self.tally.failures, *self.tally.aborted],
            collector_retrieves=retrieves,
            settle_seconds=settle,
            elapsed=elapsed,
        )


async def run_kills(backend: str, size: KillSize, workdir: Path, pg_url: str = "") -> KillOutcome:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'usage.db'}"
        await upgrade(url)
        return await KillScenario(size, url, workdir).run()
    async with pg_schema(pg_url) as url:
        return await KillScenario(size, url, workdir).run()
