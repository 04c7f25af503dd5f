"""The serving process's side of the collector process (proxy.accounting.process.child):
starts it, tells it the keys it may fetch with and when jobs were written, hands on what it
recorded (UsageRecorded) and the failures it reports, and starts it again should it die.

`serve` forks the first collector process before its event loop starts (`fork_collector`),
after its imports and with the garbage collector frozen, so the two processes share those
pages (~50 MiB). Neither loads a tokenizer table before a model needs it
(proxy.accounting.estimate.tokenizer): each loads what it estimates with, on first use. A
collector started again later is spawned afresh (forking a process whose threads may hold
locks is not safe).

Keys go only over a socketpair private to the two processes (proxy.accounting.process.wire):
never a file, an argument or the environment. Jobs are in the database, so a collector that
dies loses nothing: its jobs' leases run out and the next one (or another replica) takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

from proxy.accounting.process import wire
from proxy.accounting.usage import UsageSink
from proxy.keys import CredentialStore, Headers
from proxy.settings import Settings

__all__ = ["CollectorProcess", "Forked", "fork_collector"]

_log = logging.getLogger("proxy.accounting.collector")

_STOP_TIMEOUT = 15.0  # the child's own shutdown allows 10 s for the database
_RESTART_MAX = 30.0
_HEALTHY = 60.0  # a child that ran this long restarts at once, not after a backoff
# Unsent bytes beyond which a wake-up is not queued: the collector polls anyway, and one
# queued wake-up wakes it as well as many.
_WAKE_BUFFER = 64 * 1024


class Forked:
    """A collector process forked by `fork_collector`, and the serving end of its socket."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.returncode: int | None = None
        self._reaping: asyncio.Task[int] | None = None

    async def wait(self) -> int:
        if self._reaping is None:
            self._reaping = asyncio.ensure_future(self._reap())
        return await asyncio.shield(self._reaping)

    async def _reap(self) -> int:
        # Not asyncio's child watchers: they know only the processes they started.
        loop = asyncio.get_running_loop()
        fd = os.pidfd_open(self.pid)
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def fork_collector() -> Forked | None:
    """Fork the collector process now: before the event loop, with no thread running, so the
    child starts from a clean copy. None where that cannot be done (another thread runs, or no
    os.pidfd_open); `CollectorProcess` then spawns one."""
    if not hasattr(os, "pidfd_open") or len(os.listdir("/proc/self/task")) != 1:
        return None
    if threading.active_count() != 1:
        return None
    from proxy.accounting.process import child as collector_child

    # Objects alive now are never moved by a collection in either process, so the pages that
    # hold them stay shared.
    gc.freeze()
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the collector process
        code = 0
        try:
            ours.close()
            collector_child.run(theirs.detach())
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            # Never return into the serving process's code.
            os._exit(code)
    theirs.close()
    return Forked(pid, ours)


class _Spawned:
    """A collector process started with `python -m proxy.accounting.process.child FD`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()


class CollectorProcess:
    """Same lifecycle as RunCollector (`start`, `wake`, `stop`), the work done elsewhere."""

    def __init__(
        self,
        settings: Settings,
        credentials: CredentialStore,
        recorded: UsageSink,
        failed: Callable[[str, int], None],
        forked: Forked | None = None,
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._recorded = recorded
        self._failed = failed
        self._forked = forked  # the first child, if serve forked one
        self._writer: asyncio.StreamWriter | None = None
        self._proc: Forked | _Spawned | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.started = asyncio.Event()  # set while a child is collecting

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """A collector process is up and collecting."""
        return self.started.is_set()

    def start(self) -> None:
        self._stopping = False
        self._credentials.listener = self._tell_key
        self._task = asyncio.create_task(self._supervise(), name="collector-process")

    def wake(self) -> None:
        writer = self._writer
        if (
            writer is not None
            and not writer.is_closing()
            and writer.transport.get_write_buffer_size() < _WAKE_BUFFER
        ):
            writer.write(wire.WAKE)

    async def stop(self) -> None:
        """Close the pipe, which stops the child once it has given its jobs back; kill it if
        it takes longer than its own shutdown allows."""
        self._stopping = True
        self._credentials.listener = None
        if self._writer is not None:
            self._writer.close()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                _log.error("the collector process did not stop in %.0f s: killed", _STOP_TIMEOUT)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _tell_key(self, fp: str, headers: Headers) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(wire.key_line(fp, headers))

    async def _supervise(self) -> None:
        delay = 1.0
        while not self._stopping:
            began = time.monotonic()
            try:
                code = await self._run_child()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("the collector process failed")
                code = None
            if self._stopping:
                return
            if time.monotonic() - began > _HEALTHY:
                delay = 1.0
            # Collection stops meanwhile, forwarding does not; jobs wait in the database.
            _log.error("the collector process exited (%s); starting another in %.0f s", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX)

    async def _run_child(self) -> int | None:
        if self._forked is not None:
            self._proc, ours, self._forked = self._forked, self._forked.sock, None
        else:
            self._proc, ours = await _spawn()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._writer = writer
        writer.write(wire.settings_line(self._settings))
        for fp, headers in self._credentials.live():
            writer.write(wire.key_line(fp, headers))
        try:
            await self._listen(reader)
        finally:
            self.started.clear()
            self._writer = None
            writer.close()
        return await self._proc.wait()

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        read = 0
        async for kind, payload in wire.messages(reader, "collector process"):
            read += 1
            if not read % 64:
                # Lines already buffered are read without a pause; requests must not wait
                # for a backlog of them.
                await asyncio.sleep(0)
            if kind == "recorded":
                self._recorded(payload)
            elif kind == "failed":
                self._failed(*payload)
            elif kind == "ready":
                self.started.set()
            else:
                _log.error("collector process: unexpected %r message", kind)


async def _spawn() -> tuple[_Spawned, socket.socket]:
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy.accounting.process.child",
            str(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return _Spawned(proc), ours
