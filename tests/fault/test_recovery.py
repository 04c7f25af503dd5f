"""Recovery in seconds (issue #19, item 2): the jobs a SIGKILLed replica had claimed are
collected within 15 s of its restart on the same host (it frees a dead predecessor's claims at
once), and within 30 s by another replica (leases of 10 s, renewed while held), on both
backends. Real `usage-proxy serve` processes with the default lease and poll interval, the
openai SDK as the client; the upstream holds every steps/messages fetch until the kill, so the
victim dies holding all the jobs.

The bounds are asserted generously, as the timeouts of condition waits; the measured figures
are printed and kept in bench/README.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import text

from proxy.db.migrate import upgrade
from tests.conftest import PG_ENV
from tests.e2e.fake_upstream import FakeUpstream
from tests.fault.conftest import BACKENDS
from tests.fault.harness import ProxyProcess, read_engine, wait_until
from tests.fault.outcome import make_keys
from tests.fault.scenario import KEY_SECRET, pg_schema

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

RUNS = 20
# `OTHER_HOST + [name, command...]` runs the command under another host name.
OTHER_HOST = ["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh"]
KEY = make_keys(1, seed=19)[0]


@contextlib.asynccontextmanager
async def database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
        await upgrade(url)
        yield url
    else:
        async with pg_schema(os.environ[PG_ENV]) as url:
            yield url


class Bench:
    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.fake = FakeUpstream()
        self.fake.faults.fetch_gate = asyncio.Event()  # closed: every collection hangs
        self.engine = read_engine(url)
        self.procs: list[ProxyProcess] = []

    async def __aenter__(self) -> Bench:
        await self.fake.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)
        await self.fake.close()
        await self.engine.dispose()

    async def replica(
        self, name: str, host: str | None = None, env: dict[str, str] | None = None
    ) -> ProxyProcess:
        # The default lease and poll interval, unless `env` says otherwise.
        env = {"USAGE_PROXY_KEY_SECRET": KEY_SECRET, **(env or {})}
        proc = ProxyProcess(name, self.fake.url, self.url, self.tmp_path / "logs", env=env)
        if host is not None:
            proc.command = [*OTHER_HOST, host, sys.executable, "-m", "proxy"]
        await proc.start()
        self.procs.append(proc)
        return proc

    async def finished_runs(self, proc: ProxyProcess) -> list[str]:
        async with openai.AsyncOpenAI(api_key=KEY, base_url=proc.url + "/v1") as sdk:
            assistant = await sdk.beta.assistants.create(model="gpt-4o", metadata={"usage": "no"})
            ids = []
            for _ in range(RUNS):
                run = await sdk.beta.threads.create_and_run_poll(
                    assistant_id=assistant.id,
                    thread={"messages": [{"role": "user", "content": "2+2?"}]},
                    poll_interval_ms=5,
                )
                ids.append(run.id)
            return ids

    async def held_by(self, proc: ProxyProcess) -> int:
        held = 0
        async with self.engine.connect() as conn:
            for pid in proc.pids():
                held += int(
                    await conn.scalar(
                        text("SELECT count(*) FROM collection_jobs WHERE claimed_by LIKE :p"),
                        {"p": f"%:{pid}:%"},
                    )
                    or 0
                )
        return held

    async def recorded(self, ids: list[str]) -> bool:
        async with self.engine.connect() as conn:
            rows = set((await conn.execute(text("SELECT object_id FROM usage_records"))).scalars())
            pending = await conn.scalar(text("SELECT count(*) FROM collection_jobs"))
        return set(ids) <= rows and not pending


def _other_hosts() -> bool:
    """Whether a process can be given a host name of its own (a UTS namespace)."""
    try:
        done = subprocess.run(
            [*OTHER_HOST, "probe", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


async def use_key(proc: ProxyProcess) -> None:
    """Any request: keys live in memory only, and traffic brings them back."""
    async with openai.AsyncOpenAI(api_key=KEY, base_url=proc.url + "/v1") as sdk:
        await sdk.models.list()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_restarted_replica_collects_its_predecessors_jobs_within_seconds(
    backend: str, tmp_path: Path
) -> None:
    async with database(backend, tmp_path) as url, Bench(url, tmp_path) as bench:
        a = await bench.replica("a")
        ids = await bench.finished_runs(a)
        await wait_until(lambda: bench.held_by(a), 30, what="a holding jobs")
        await wait_until(lambda: _holds_all(bench, a), 30, what="a holding every job")
        await a.kill()
        bench.fake.faults.fetch_gate.set()
        await a.start()
        restarted = time.monotonic()
        await use_key(a)
        await wait_until(lambda: bench.recorded(ids), 30, interval=0.05, what="collection")
        took = time.monotonic() - restarted
        print(f"\n[{backend}] {RUNS} jobs of a SIGKILLed replica collected {took:.2f} s after "
              "its restart on the same host")  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_restarted_replica_settles_its_predecessors_container_job_within_seconds(
    backend: str, tmp_path: Path
) -> None:
    """The container collector frees a dead predecessor's claims as the Assistants one does.
    Its lease is set long (120 s) here: only the take-over can settle the job in seconds."""
    async with database(backend, tmp_path) as url, Bench(url, tmp_path) as bench:
        bench.fake.faults.fetch_gate = None
        bench.fake.faults.container_gate = asyncio.Event()  # closed: the read hangs
        a = await bench.replica("a", env={"USAGE_PROXY_COLLECTOR_LEASE": "120"})
        async with openai.AsyncOpenAI(api_key=KEY, base_url=a.url + "/v1") as sdk:
            plan = {"fake_tools": "code_interpreter"}  # the fake's container: cntr_gpt-4.1
            await sdk.responses.create(model="gpt-4.1", input="hi", metadata=plan)
        await wait_until(lambda: bench.fake.container_fetches, 30, what="a reading the container")
        assert await bench.held_by(a) == 1
        await a.kill()
        bench.fake.faults.container_gate.set()
        await a.start()
        restarted = time.monotonic()
        await use_key(a)
        await wait_until(
            lambda: bench.recorded(["cntr_gpt-4.1"]), 15, interval=0.05, what="the container"
        )
        took = time.monotonic() - restarted
        print(f"\n[{backend}] the container job of a SIGKILLed replica settled {took:.2f} s "
              "after its restart on the same host (lease 120 s)")  # fmt: skip


@pytest.mark.skipif(not _other_hosts(), reason="no `unshare --uts` here (needs root)")
@pytest.mark.parametrize("backend", BACKENDS)
async def test_another_replica_collects_a_dead_replicas_jobs_within_its_lease(
    backend: str, tmp_path: Path
) -> None:
    async with database(backend, tmp_path) as url, Bench(url, tmp_path) as bench:
        a = await bench.replica("a")
        # Another host: it cannot tell whether a's pid is alive, only that a stops renewing.
        b = await bench.replica("b", host="other-host")
        ids = await bench.finished_runs(a)
        await wait_until(lambda: _holds_all(bench, a), 30, what="a holding every job")
        await use_key(b)  # only now: b could not claim any of them before
        await a.kill()
        killed = time.monotonic()
        bench.fake.faults.fetch_gate.set()
        await wait_until(lambda: bench.recorded(ids), 45, interval=0.05, what="collection")
        took = time.monotonic() - killed
        print(f"\n[{backend}] {RUNS} jobs of a SIGKILLed replica collected by another "
              f"{took:.2f} s after the kill")  # fmt: skip


async def _holds_all(bench: Bench, proc: ProxyProcess) -> bool:
    return await bench.held_by(proc) == RUNS
