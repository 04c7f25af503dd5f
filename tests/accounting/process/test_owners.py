"""Worker ids and whether their process is dead (proxy.accounting.process.owners), against
real processes of this host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from proxy.accounting.process.owners import is_dead, parse_owner, this_host, worker_id


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_worker_id_names_this_process() -> None:
    me = worker_id("abc123")
    owner = parse_owner(me)
    assert owner is not None
    assert (owner.host, owner.pid) == (this_host(), os.getpid())
    assert owner.boot != "-" and owner.start.isdigit()
    assert me.endswith(".abc123")


def test_a_live_process_is_not_dead_and_a_gone_one_is() -> None:
    assert not is_dead(worker_id("x"))
    owner = parse_owner(worker_id("x"))
    assert owner is not None
    gone = _exited_pid()
    assert is_dead(f"{owner.host}:{gone}:{owner.boot}.{owner.start}.x")


def test_a_zombie_is_dead() -> None:
    # Killed but not reaped, as a SIGKILLed proxy's collector process stays when the init
    # that inherits it does not reap.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = parse_owner(worker_id("x"))
    assert owner is not None
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        start = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        assert is_dead(f"{owner.host}:{child.pid}:{owner.boot}.{start}.x")
    finally:
        child.wait()


def test_a_pid_that_is_another_process_now_is_dead() -> None:
    owner = parse_owner(worker_id("x"))
    assert owner is not None
    # This pid, but started at another time: the claim's process is gone, its pid reused.
    reused = f"{owner.host}:{owner.pid}:{owner.boot}.{int(owner.start) - 1}.x"
    assert is_dead(reused)
    other_boot = f"{owner.host}:{owner.pid}:00000000.{owner.start}.x"
    assert is_dead(other_boot)


def test_another_hosts_worker_is_never_known_dead_here() -> None:
    gone = _exited_pid()
    assert not is_dead(f"elsewhere.example:{gone}:00000000.1.x")
    # An older release's id (host:pid:random): only a pid that is gone counts.
    assert is_dead(f"{this_host()}:{gone}:a1b2c3")
    assert not is_dead(f"{this_host()}:{os.getpid()}:a1b2c3")
    assert parse_owner("not-an-id") is None
    assert not is_dead("not-an-id")
