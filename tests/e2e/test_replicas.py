"""Replicas (issue #4): two real `usage-proxy serve` processes on one database record exactly
one row per run, collect each run once, and strand no job when one of them dies mid-collection.

The fake upstream runs in the test process; the replicas are started with the CLI contract
(`python -m proxy serve --port P --upstream URL --database-url URL --no-migrate`, the secret and
the collector's timings in the environment) and are ready when /_proxy/health answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.estimate.runs import RunEstimate, estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.db.engine import reading
from proxy.db.models import CollectionJob, UsageRecord
from tests.e2e.conftest import wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.fake_keys import fake_key
from tests.waiting import free_port

# The SDK marks every Assistants method deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = fake_key("replicas", "9012")
SECRET = "e2e-replica-secret"
LEASE = 2.0  # short, for the test that needs a dead replica's claim to run out
# Long, for tests where no replica dies: a collection that outlasts its lease on a loaded
# machine (the first one also loads the tokenizer) is taken over and fetched twice.
LONG_LEASE = 120.0
QUESTION = "Write Python code that calculates 2+2 and give me the output."

SM = async_sessionmaker[AsyncSession]


@dataclass
class Replica:
    proc: asyncio.subprocess.Process
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """The serving process and its collector process: every process whose parent it is,
        read from each process's own /proc/PID/stat. (/proc/PID/task/TID/children lists only
        the children of one thread, and the kernel documents it as unreliable while children
        come and go.)"""
        return [self.pid, *_children(self.pid)]

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=KEY, base_url=self.url + "/v1", max_retries=0)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited while the folder was read
        # The fields after the command name, which may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


async def _healthy(replica: Replica, session: aiohttp.ClientSession) -> bool:
    if replica.proc.returncode is not None:
        raise AssertionError(f"replica exited with {replica.proc.returncode}:\n{replica.output()}")
    try:
        async with session.get(replica.url + "/_proxy/health") as resp:
            return resp.status == 200 and (await resp.json())["database"]["ok"] is True
    except aiohttp.ClientError:
        return False


@pytest.fixture
async def start_replica(
    db_url: str, upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Replica]]]:
    started: list[Replica] = []
    env = {
        **os.environ,
        "USAGE_PROXY_KEY_SECRET": SECRET,
        "USAGE_PROXY_COLLECTOR_POLL_INTERVAL": "0.05",
        "USAGE_PROXY_COLLECTOR_RETRY_BASE": "0.05",
        "USAGE_PROXY_COLLECTOR_MAX_BACKOFF": "0.5",
    }

    async def start(lease: float = LEASE) -> Replica:
        port = free_port()
        log = tmp_path / f"replica-{port}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "proxy", "serve", "--port", str(port)),
                *("--upstream", upstream.url, "--database-url", db_url, "--no-migrate"),
                env={**env, "USAGE_PROXY_COLLECTOR_LEASE": str(lease)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        replica = Replica(proc, f"http://127.0.0.1:{port}", log)
        started.append(replica)
        async with aiohttp.ClientSession() as session:
            await wait_for(lambda: _healthy(replica, session), timeout=30, interval=0.05)
        return replica

    yield start
    for replica in started:
        if replica.proc.returncode is None:
            replica.proc.send_signal(signal.SIGTERM)
    for replica in started:
        try:
            await asyncio.wait_for(replica.proc.wait(), 15)
        except TimeoutError:
            replica.proc.kill()
            await replica.proc.wait()


async def _rows(sm: SM) -> list[dict[str, Any]]:
    async with reading(sm) as session:
        return [dict(r) for r in (await session.execute(select(UsageRecord.__table__))).mappings()]


async def _jobs(sm: SM) -> list[dict[str, Any]]:
    async with reading(sm) as session:
        return [
            dict(r) for r in (await session.execute(select(CollectionJob.__table__))).mappings()
        ]


async def _start_run(client: openai.AsyncOpenAI, **plan: str) -> Any:
    assistant = await client.beta.assistants.create(
        model="gpt-4o", tools=[{"type": "code_interpreter"}], metadata=plan
    )
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    return await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)


def _ledger(fake: FakeUpstream, run: Any) -> list[tuple[str, str, str]]:
    return sorted(f for f in fake.fetches if f[1] in (run.id, run.thread_id))


def _estimate(fake: FakeUpstream, run_id: str) -> RunEstimate:
    """The estimate from the fake's own objects: what the collector should compute."""
    run = {k: v for k, v in fake.runs[run_id].items() if not k.startswith("_")}
    steps, messages = fake.steps[run_id], fake.messages[run["thread_id"]]
    return estimate_run(run, steps, messages, counter_for_model(run["model"]))


async def test_replicas_polled_at_once_record_each_run_once(
    upstream: FakeUpstream, start_replica, sm: SM
) -> None:
    upstream.polls_to_complete = 8
    upstream.require_beta = True
    a, b = await asyncio.gather(start_replica(LONG_LEASE), start_replica(LONG_LEASE))
    async with a.client() as ca, b.client() as cb:
        runs = [await _start_run(ca, usage=u) for u in ("no", "yes", "no", "yes", "no")]
        polls = [
            c.beta.threads.runs.poll(run.id, thread_id=run.thread_id)
            for run in runs
            for c in (ca, cb, ca, cb)
        ]
        lists = [
            c.beta.threads.runs.list(thread_id=run.thread_id) for run in runs for c in (ca, cb)
        ]
        done = await asyncio.gather(*polls, *lists)
    assert {r.status for r in done[: len(polls)]} == {"completed"}

    ids = {run.id for run in runs}
    assert upstream.completed_runs == ids
    await wait_for(lambda: _recorded(sm, ids), timeout=20)
    await wait_for(lambda: _no_jobs(sm), timeout=10)
    rows = await _rows(sm)
    assert sorted(r["object_id"] for r in rows) == sorted(ids)  # one row per run, no more
    by_id = {r["object_id"]: r for r in rows}
    for run, source in zip(runs, ("estimated", "reported") * 3, strict=False):
        assert by_id[run.id]["usage_source"] == source
        # Collected once: one steps fetch and one messages fetch, by one of the replicas.
        assert _ledger(upstream, run) == [
            ("messages", run.thread_id, KEY),
            ("steps", run.id, KEY),
        ]


async def _recorded(sm: SM, ids: set[str]) -> bool:
    return ids <= {r["object_id"] for r in await _rows(sm)}


async def _no_jobs(sm: SM) -> bool:
    return await _jobs(sm) == []


async def test_a_replica_killed_mid_collection_strands_nothing(
    upstream: FakeUpstream, start_replica, sm: SM
) -> None:
    upstream.faults.fetch_gate = asyncio.Event()  # collections hang in their first fetch
    upstream.require_beta = True
    a, b = await asyncio.gather(start_replica(), start_replica())
    async with a.client() as ca, b.client() as cb:
        run = await _start_run(ca, usage="no")
        await asyncio.gather(
            ca.beta.threads.runs.poll(run.id, thread_id=run.thread_id),
            cb.beta.threads.runs.poll(run.id, thread_id=run.thread_id),
        )
    steps_path = f"/v1/threads/{run.thread_id}/runs/{run.id}/steps"
    await wait_for(lambda: any(r["path"] == steps_path for r in upstream.requests), timeout=10)
    (job,) = await _jobs(sm)
    holder = int(job["claimed_by"].rsplit(":", 2)[1])
    a_pids, b_pids = a.pids(), b.pids()
    assert holder in a_pids + b_pids, (holder, a_pids, b_pids)
    dead, survivor, dead_pids = (a, b, a_pids) if holder in a_pids else (b, a, b_pids)

    # The machine goes: both of its processes at once, so nothing gives the job back.
    for pid in dead_pids:
        os.kill(pid, signal.SIGKILL)
    assert await dead.proc.wait() == -signal.SIGKILL
    upstream.faults.fetch_gate.set()

    rows = await wait_for(lambda: _rows(sm), timeout=LEASE + 15)
    assert [r["object_id"] for r in rows] == [run.id]
    expected = _estimate(upstream, run.id)
    assert (rows[0]["usage_source"], rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (
        "estimated",
        expected.prompt_tokens,
        expected.completion_tokens,
    )
    # The survivor took the job over: on this host it may free the dead pid's claim before
    # the lease runs out (tests/fault/test_recovery.py measures both ways), never after.
    assert rows[0]["recorded_at"] <= job["claimed_until"] + dt.timedelta(seconds=LEASE + 5)
    await wait_for(lambda: _no_jobs(sm), timeout=10)
    assert survivor.proc.returncode is None
