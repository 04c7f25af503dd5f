"""A background sweep that runs every so often and outlives its failures: a database that is
down is one warning line per sweep; anything else is logged whole; both are retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proxy.db.errors import DB_ERRORS

__all__ = ["sweep_forever"]


async def sweep_forever(
    sweep: Callable[[], Awaitable[object]], every: float, what: str, log: logging.Logger
) -> None:
    """Call `sweep` every `every` seconds until cancelled; `what` names it in log lines."""
    while True:
        try:
            await sweep()
        except asyncio.CancelledError:
            raise
        except DB_ERRORS as exc:
            log.warning("cannot %s: %s", what, type(exc).__name__)
        except Exception:
            log.exception("%s failed; retrying", what)
        await asyncio.sleep(every)
