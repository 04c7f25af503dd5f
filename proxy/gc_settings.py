"""How often the garbage collector runs in the proxy's long-running processes.

CPython starts a young-generation collection every 700 net allocations of container objects.
A forwarded request allocates a few hundred (aiohttp's request, response, futures and tasks,
the exchange, the usage row), and the rows and jobs waiting for their batch survive into the
older generations, which are then traversed again and again: at the default threshold the
collector took ~12% of the serving process's CPU per request (bench/README.md). Nearly every
one of those objects is freed by reference counting long before a larger threshold is reached,
so a collection every 10,000 allocations finds the same garbage for a small part of the work.
Cyclic garbage waits a little longer to be freed: at most ~10,000 objects, a few MiB.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "collect_less"]

YOUNG_THRESHOLD = 10_000


def collect_less() -> None:
    """Set this process's collection thresholds for serving (older generations unchanged)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
