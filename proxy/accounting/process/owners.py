"""Who holds a claim, and whether it is still alive: a worker's id names its host, its pid, the
boot it runs in and its start time, so a process on the same host can tell a dead predecessor
(its pid gone, or now another process) from a live neighbour, and free its claims at once
instead of waiting out their lease.

On Linux the start time is field 22 of /proc/PID/stat (clock ticks since boot) and the boot is
/proc/sys/kernel/random/boot_id. Where these cannot be read (another system), the id carries
`-` for both, and only a pid that is gone counts as dead.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Owner", "is_dead", "parse_owner", "this_host", "worker_id"]

_UNKNOWN = "-"


@dataclass(frozen=True, slots=True)
class Owner:
    host: str
    pid: int
    boot: str
    start: str


def this_host() -> str:
    return socket.gethostname()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8] or _UNKNOWN
    except OSError:
        return _UNKNOWN


def _start_time(pid: int) -> str | None:
    """The process's start time in ticks since boot; None when there is no such process, or
    only its corpse: a zombie (state Z) is what a SIGKILLed collector process is until its
    parent, or an init that may never do it, reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _UNKNOWN
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else _UNKNOWN


def worker_id(suffix: str) -> str:
    """`host:pid:boot.start.suffix`: this process's id as a claimer."""
    pid = os.getpid()
    start = _start_time(pid) or _UNKNOWN
    return f"{this_host()}:{pid}:{_boot_id()}.{start}.{suffix}"


def parse_owner(worker: str) -> Owner | None:
    """The parts of a worker id; None for one this module did not make (an older release's
    `host:pid:random`: its pid is kept, with boot and start unknown)."""
    host, sep, rest = worker.rpartition(":")
    host, sep2, pid_text = host.rpartition(":")
    if not sep or not sep2:
        return None
    # rpartition from the right: `rest` is boot.start.suffix, `pid_text` the pid.
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    parts = rest.split(".")
    if len(parts) == 3:
        return Owner(host, pid, parts[0], parts[1])
    return Owner(host, pid, _UNKNOWN, _UNKNOWN)


def is_dead(worker: str, *, host: str | None = None) -> bool:
    """Whether the worker is certainly dead: it ran on this host, and its pid is gone (or a
    zombie), or is another process now (another start time), or it ran before this boot. A
    worker of another host is never known dead here: its lease tells."""
    owner = parse_owner(worker)
    if owner is None or owner.host != (host or this_host()):
        return False
    boot = _boot_id()
    if _UNKNOWN not in (owner.boot, boot) and owner.boot != boot:
        return True
    start = _start_time(owner.pid)
    if start is None:
        return True
    return _UNKNOWN not in (owner.start, start) and owner.start != start
