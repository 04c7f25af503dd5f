"""The collector in its own process (`collector_process`, the default of `serve`): a child
started by the proxy, at a lower CPU priority, fetching with the keys it is told over a private
pipe, reporting its metrics back, started again if it dies, and gone when the proxy stops.

The proxy runs in this test's loop (so its accounting can be inspected); the collector is a
real child process on both backends, and the client is the official openai SDK.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.accounting.process.child import NICENESS
from proxy.accounting.process.supervisor import CollectorProcess
from proxy.app import ACCOUNTING
from proxy.keys import fingerprint
from tests.e2e.conftest import RunningProxy, client_for, wait_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import (
    KEY,
    SECRET,
    finished_run,
    ledger,
    one_row,
    seed_expectation,
    settings_for,
)
from tests.waiting import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOKEN = "collector-process-admin-token"
StartProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture(autouse=True)
def _setup(db_url: str, upstream: FakeUpstream) -> None:
    """The database before the proxy (so torn down after it); the beta header required."""
    upstream.require_beta = True


def collector_of(proxy: RunningProxy) -> CollectorProcess:
    collector = proxy.app[ACCOUNTING].collector
    assert isinstance(collector, CollectorProcess)
    return collector


async def started(proxy: RunningProxy) -> CollectorProcess:
    collector = collector_of(proxy)
    await asyncio.wait_for(collector.started.wait(), 30)
    return collector


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def health(proxy: RunningProxy) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        got = await http.get(f"{proxy.url}/_proxy/health")
        return (await got.json())["collector"]


async def metric(proxy: RunningProxy, line_start: str) -> float | None:
    async with aiohttp.ClientSession() as http:
        got = await http.get(
            f"{proxy.url}/_proxy/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        text = await got.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_run_is_collected_by_the_child_with_the_clients_key(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str, sm
) -> None:
    proxy = await start_proxy(
        settings_for(upstream, db_url, admin_token=TOKEN), collector_process=True
    )
    collector = await started(proxy)
    pid = collector.pid
    assert pid is not None and pid != os.getpid() and alive(pid)
    # Nicer than the proxy, by NICENESS where Linux allows it: niceness stops at 19, so under
    # `nice -n 10` the child is at 19, not 25.
    ours, childs = os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, pid)
    assert childs == min(ours + NICENESS, 19), (ours, childs)
    assert childs > ours or ours == 19, (ours, childs)
    assert await health(proxy) == {"ok": True, "process": pid, "unseen_creates": 0}

    async with client_for(proxy, KEY) as client:
        run = await finished_run(client, usage="no")
        row = await one_row(sm, run.id, timeout=30)
    prompt, completion = seed_expectation()
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["usage_source"] == "estimated"
    assert row["assistant_id"] == run.assistant_id
    assert row["key_fingerprint"] == fingerprint(KEY, SECRET.encode())
    # Fetched by the child, with the key that ran the run.
    assert {(kind, key) for kind, _, key in ledger(upstream, run.id)} == {
        ("steps", KEY),
        ("messages", KEY),
    }
    # Its metrics are the serving process's: /_proxy/metrics shows them.
    recorded = 'usage_proxy_runs_recorded_total{source="estimated"}'
    assert await wait_for(lambda: metric(proxy, recorded), timeout=10) == 1.0
    tokens = 'usage_proxy_tokens_total{model="gpt-4o",team="unassigned",type="completion"}'
    assert await metric(proxy, tokens) == completion


async def test_a_killed_child_is_replaced_and_told_the_keys_again(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str, sm
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url), collector_process=True)
    collector = await started(proxy)
    async with client_for(proxy, KEY) as client:
        first = await finished_run(client, usage="no")
        await one_row(sm, first.id, timeout=30)
        old = collector.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        # Forwarding goes on; the health endpoint tells that collection stopped, until the
        # replacement (started after a second's backoff) is up.
        await wait_for(lambda: _down(proxy), timeout=10)
        await wait_for(lambda: collector.pid != old and collector.started.is_set(), timeout=30)
        assert await health(proxy) == {"ok": True, "process": collector.pid, "unseen_creates": 0}
        # The key was told to the first child only: the new one has it from the restart.
        second = await finished_run(client, usage="no")
        row = await one_row(sm, second.id, timeout=30)
    assert row["usage_source"] == "estimated" and row["prompt_tokens"] == seed_expectation()[0]
    assert ("steps", second.id, KEY) in ledger(upstream, second.id)


async def _down(proxy: RunningProxy) -> bool:
    return (await health(proxy))["ok"] is False


async def test_the_inline_collector_reports_no_process(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url))
    assert await health(proxy) == {"ok": True, "process": None, "unseen_creates": 0}


async def test_the_child_stops_with_the_proxy(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url), collector_process=True)
    collector = await started(proxy)
    pid = collector.pid
    assert pid is not None
    await proxy.runner.cleanup()
    assert not alive(pid)


def shared_mib(pid: int) -> float:
    """Memory of `pid` that another process maps too (/proc/PID/smaps_rollup)."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    )
    kib = sum(int(fields[name].split()[0]) for name in ("Shared_Clean", "Shared_Dirty"))
    return kib / 1024


async def collecting(port: int) -> bool:
    """Whether `serve` on `port` answers health with its collector process running."""
    try:
        async with aiohttp.ClientSession() as http:
            got = await http.get(f"http://127.0.0.1:{port}/_proxy/health")
            return bool((await got.json())["collector"]["ok"])
    except aiohttp.ClientError:
        return False


def pss_mib(pid: int) -> float:
    """Proportional set size of `pid`: pages it shares with n processes count 1/n."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


async def test_serve_forks_a_lean_child_and_it_stops_when_serve_is_killed(
    upstream: FakeUpstream, db_url: str
) -> None:
    """`serve` forks its collector process after importing what both need, so the two share
    those pages, and neither loads a tokenizer table (o200k_base alone holds ~42 MiB) before a
    model needs it: idle, the two hold ~100 MiB PSS between them (bench/memory.py). SIGKILL
    leaves no shutdown to the serving process: the kernel closes its end of the pipe, and the
    child stops on its own instead of collecting for no one."""
    port = free_port()
    env = {
        **os.environ,
        "USAGE_PROXY_KEY_SECRET": SECRET,
        "USAGE_PROXY_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy", "serve", "--port", str(port)),
        *("--upstream", upstream.url, "--database-url", db_url, "--no-migrate"),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    try:
        [child] = map(int, await wait_for(lambda: children.read_text().split(), timeout=30))
        assert alive(child)
        # Forked, not spawned: the same command line as serve's.
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        assert cmdline == Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert shared_mib(child) > 32, shared_mib(child)
        await wait_for(lambda: collecting(port), timeout=30)
        # 205 MiB when both tokenizer tables were loaded at start, before the fork.
        total = pss_mib(proc.pid) + pss_mib(child)
        assert total < 140, total
    finally:
        proc.kill()
        await proc.wait()
    await wait_for(lambda: not alive(child), timeout=20)
