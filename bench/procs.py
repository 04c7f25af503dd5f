"""Processes under test: start them in their own process groups, wait until they serve, and
read what they cost from /proc (CPU ticks, RSS, peak RSS). Everything listens on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Proc",
    "command_output",
    "cpu_name",
    "cpu_seconds",
    "descendants",
    "free_port",
    "reset_peak",
    "status_kib",
]

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def descendants(pid: int) -> list[int]:
    """Every live process started by `pid`, and theirs (the proxy's collector process)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status: VmRSS, VmHWM, ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Proc:
    """One server process, in its own process group, listening on `port`."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    settled: bool = True
    waited: float = 0.0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Proc:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.popen = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}; see {self.log}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout:g} s")

    def cpu(self) -> float:
        """CPU seconds of the process and the processes it started: the proxy's collector
        process is part of what the proxy costs."""
        total = cpu_seconds(self.pid)
        for pid in descendants(self.pid):
            with contextlib.suppress(FileNotFoundError):
                total += cpu_seconds(pid)
        return total

    def pss_mib(self) -> float:
        """Proportional set size of the process and its children: what they hold between them,
        pages they share counted once (the collector process shares the tokenizer's tables)."""
        total = 0
        for pid in (self.pid, *descendants(self.pid)):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        return total / 1024

    def children_rss_mib(self) -> float:
        total = 0
        for pid in descendants(self.pid):
            with contextlib.suppress(FileNotFoundError, KeyError):
                total += status_kib(pid, "VmRSS")
        return total / 1024

    def settle(self, quiet: float = 0.25, bound: float = 60.0) -> float:
        """Wait until the process stops using CPU (observers and collectors may still be
        working after the last response): until its CPU time rose by less than 1.5 clock
        ticks over the last `quiet` seconds, read every 20 ms (a sliding window, so `waited`
        has the resolution of the reads, not of the window). Returns its CPU seconds then.
        `settled` says whether it did within `bound` seconds, `waited` how long it worked on
        (the quiet window that proves it is not counted)."""
        t0 = time.monotonic()
        reads = [(t0, self.cpu())]
        while reads[-1][0] - t0 < bound:
            time.sleep(0.02)
            now, cpu = time.monotonic(), self.cpu()
            reads.append((now, cpu))
            while len(reads) > 2 and reads[1][0] <= now - quiet:
                reads.pop(0)
            start, before = reads[0]
            if now - start >= quiet and cpu - before < 1.5 / _TICK:
                self.settled, self.waited = True, max(start - t0, 0.0)
                return cpu
        self.settled, self.waited = False, time.monotonic() - t0
        return reads[-1][1]

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def command_output(*argv: str, cwd: Path, stderr: bool = False) -> str:
    """What the command printed (its stdout; with `stderr`, its stderr when stdout is empty),
    or "" when it cannot run: the machine facts a results file records."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr if stderr else done.stdout).rstrip()


def cpu_name() -> str:
    return next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
