"""What a fault-suite run is sized to and what it found: `Size` (CI and FULL), the keys it uses,
and `Outcome` with its summary lines."""

from __future__ import annotations

import random
import string
from collections import Counter
from dataclasses import dataclass, field

from tests.fault.clients import Tally
from tests.fault.harness import LedgerResult
from tests.fault.leaks import Leak

__all__ = ["CI", "FULL", "Outcome", "Size", "make_keys"]


@dataclass(frozen=True)
class Size:
    name: str
    runs: int
    clients: int
    duration: float
    outage: float
    down: float
    settle: float
    # SQLite writers wait busy_timeout (5 s) before they fail, so its lock is held this much
    # longer than the outage; PostgreSQL refuses connections at once.
    sqlite_extra: float = 3.0
    rate_429: float = 0.08
    rate_500: float = 0.05
    rate_drop: float = 0.03
    latency: float = 0.03


CI = Size("ci", runs=60, clients=8, duration=12.0, outage=5.0, down=1.0, settle=45.0)
FULL = Size(
    "full",
    runs=1000,
    clients=40,
    duration=90.0,
    outage=30.0,
    down=5.0,
    settle=240.0,
    sqlite_extra=5.0,
)


def make_keys(n: int, seed: int = 7) -> list[str]:
    """Project-style keys whose secret part shares no 8-character run with hex text (rows carry
    hex fingerprints), so a leak check cannot match by chance."""
    rng = random.Random(seed)
    alphabet = "".join(c for c in string.ascii_letters if c.lower() not in "abcdef")
    return ["sk-proj-" + "".join(rng.choices(alphabet, k=40)) for _ in range(n)]


def _ages(ages: list[float]) -> str:
    if not ages:
        return ""
    return " (answered " + ", ".join(f"{a * 1000:.0f}" for a in ages) + " ms before the kill)"


@dataclass
class Outcome:
    backend: str
    size: Size
    ledger: LedgerResult
    tally: Tally
    elapsed: float
    outage_proof: str
    db_failure_logs: int
    killed_holding: int
    lost_with_process: list[float]  # per run lost: seconds between its answer and the kill
    restart_seconds: float
    injected: Counter[str]
    fetches: int
    misattributed: list[str]
    wrong_tokens: list[str]
    leaks: list[Leak] = field(default_factory=list)

    def lines(self) -> list[str]:
        t = self.tally
        inj = self.injected
        return [
            f"[{self.backend}, {self.size.name}] {self.ledger.line()}",
            f"client requests: {t.requests} made, {len(t.failures)} failed because of "
            f"accounting, {t.killed_failures} failed on the killed replica (done again on "
            f"the other)",
            f"faults: database unreachable {self.size_outage():g} s ({self.outage_proof}; "
            f"{self.db_failure_logs} failed-write log lines); SIGKILL of replica a holding "
            f"{self.killed_holding} claimed job(s), back in {self.restart_seconds:.1f} s; "
            f"{len(self.lost_with_process)} run(s) lost with the killed process and polled "
            f"again{_ages(self.lost_with_process)}; "
            f"upstream 429 x{inj['429']}, 500 x{inj['500']}, dropped x{inj['drop']} of "
            f"{self.fetches} steps/messages fetches",
            f"rows: {len(self.misattributed)} billed to the wrong team, "
            f"{len(self.wrong_tokens)} with wrong tokens; {len(self.leaks)} key leaks in "
            f"tables and logs; {self.elapsed:.1f} s",
        ]

    @property
    def ok(self) -> bool:
        return (
            self.ledger.ok
            and not self.tally.failures
            and not self.misattributed
            and not self.wrong_tokens
            and not self.leaks
        )

    def size_outage(self) -> float:
        return self.size.outage + (self.size.sqlite_extra if self.backend == "sqlite" else 0.0)
