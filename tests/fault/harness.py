"""The fault suite's tools: proxy processes, a pausable TCP relay in front of PostgreSQL, an
exclusive lock that makes SQLite writes fail, process memory readings, and the comparison of the
usage table with the fake upstream's ledger.

Nothing here sleeps for a fixed time except where the scenario itself is a duration (an outage
lasts N seconds): everything else waits on a condition with a timeout (`wait_until`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from proxy.db.engine import make_engine, sqlite_path
from tests.waiting import free_port, wait_until

__all__ = [
    "LedgerResult",
    "ProxyProcess",
    "SqliteLock",
    "TcpRelay",
    "compare_ledger",
    "fd_count",
    "free_port",
    "read_engine",
    "rss_bytes",
    "settled_rss",
    "wait_until",
]

MiB = 1024 * 1024


# --- processes -------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        out[name] = value.strip()
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS of /proc/PID/status), in bytes."""
    return int(_status(pid)["VmRSS"].split()[0]) * 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settled_rss(pid: int, *, window: float = 1.0, timeout: float = 30.0) -> int:
    """The process's RSS once it has stayed within 1 MiB for `window` seconds: a baseline taken
    after start-up work (the proxy loads its tokenizers in the background) has ended."""
    samples: list[tuple[float, int]] = []

    def steady() -> int | None:
        now = time.monotonic()
        samples.append((now, rss_bytes(pid)))
        recent = [rss for at, rss in samples if at >= now - window]
        if samples[0][0] <= now - window and max(recent) - min(recent) <= MiB:
            return recent[-1]
        return None

    return await wait_until(steady, timeout, interval=0.1, what="a steady RSS")


_CLI = [sys.executable, "-m", "proxy"]


@dataclass
class ProxyProcess:
    """One `usage-proxy serve` process on a fixed port. stdout and stderr go to files under
    `log_dir`, appended across restarts, so every log line of every incarnation can be read
    back (the secrets walk greps them)."""

    name: str
    upstream: str
    database_url: str
    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    # How `usage-proxy` is run: a prefix may put it elsewhere (another UTS namespace, so
    # another host name), as long as the process it starts ends up as the proxy (exec).
    command: list[str] = field(default_factory=lambda: list(_CLI))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr"

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.stdout"

    def pids(self) -> list[int]:
        """The serving process and the processes it started (its collector process)."""
        pid = self.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            children = []
        return [pid, *map(int, children)]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait for the `listening on` line."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_PROXY_")}
        env.update(self.env)
        args = ["serve", "--no-migrate", "--port", str(self.port)]
        args += ["--upstream", self.upstream, "--database-url", self.database_url]
        mark = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                *args,
                stdout=out,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        self.starts += 1

        def ready() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited: {self.tail()}")
            with open(self.stdout_path, "rb") as fh:
                fh.seek(mark)
                return b"listening on" in fh.read()

        await wait_until(ready, timeout, interval=0.02, what=f"{self.name} to listen")

    async def kill(self) -> None:
        """SIGKILL to the replica's every process, as when its machine goes: no shutdown code
        runs, not even the collector process's."""
        assert self.proc is not None
        for pid in reversed(self.pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return self.proc.returncode

    def logs(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.stdout_path, self.stderr_path)]
        return "\n".join(p for p in parts)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


# --- database outages ------------------------------------------------------------------------


class TcpRelay:
    """A TCP relay on 127.0.0.1 in front of `target` (PostgreSQL). `pause()` stops listening
    and drops every relayed connection, so the database is unreachable (connections refused)
    until `resume()`, which listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.dropped = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def url_for(self, url: str) -> str:
        """`url` with its host and port replaced by the relay's."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    async def pause(self) -> None:
        assert self._server is not None
        self._server.close()
        self._server = None
        for writer in list(self._conns):
            self.dropped += 1
            writer.transport.abort()
        self._conns.clear()

    async def resume(self) -> None:
        await self.start()

    async def close(self) -> None:
        if self._server is not None:
            await self.pause()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))
        pumps = [self._pump(reader, up_writer), self._pump(up_reader, writer)]
        for coro in pumps:
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(writer)
            writer.transport.abort()


_LOCKER = """
import select, sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
con.execute("ROLLBACK")
"""


class SqliteLock:
    """Another process holding `BEGIN EXCLUSIVE` on the database file: every writer waits its
    busy_timeout and then fails with `database is locked` (WAL readers still read)."""

    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        assert path is not None, url
        self.path = path
        self._proc: asyncio.subprocess.Process | None = None

    async def acquire(self, hold_at_most: float) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOCKER,
            str(self.path),
            str(hold_at_most),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 60)
        assert line.strip() == b"locked", line

    def writes_fail(self) -> str:
        """Proof that a writer is shut out: the error a short-timeout write gets."""
        con = sqlite3.connect(self.path, timeout=0.2, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return str(exc)
        finally:
            con.close()
        return ""

    async def release(self) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._proc.stdin.write(b"go\n")
            await self._proc.stdin.drain()
        await asyncio.wait_for(self._proc.wait(), 30)
        self._proc = None


# --- reading the database --------------------------------------------------------------------


def read_engine(url: str) -> AsyncEngine:
    """An engine for the harness's own reads (no pool: nothing outlives a check)."""
    return make_engine(url, poolclass=NullPool)


# --- the ledger ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerResult:
    expected: int
    recorded: int
    missing: list[str]
    duplicated: list[str]
    unexpected: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    def line(self) -> str:
        return (
            f"runs: {self.expected} expected, {self.recorded} recorded, "
            f"{len(self.missing)} missing, {len(self.duplicated)} duplicated"
        )


def compare_ledger(completed: Iterable[str], recorded: Iterable[str]) -> LedgerResult:
    """Completed runs (the upstream's ledger) against the object ids of the usage rows of kind
    assistants.run: each completed run must be there exactly once, and nothing else."""
    expected = set(completed)
    counts = Counter(recorded)
    return LedgerResult(
        expected=len(expected),
        recorded=sum(counts.values()),
        missing=sorted(expected - set(counts)),
        duplicated=sorted(run for run, n in counts.items() if n > 1),
        unexpected=sorted(set(counts) - expected),
    )
