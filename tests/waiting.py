"""Shared test helpers: wait on a condition (never a fixed sleep), and pick a free port."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "wait_until"]


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, *, interval: float = 0.05, what: str = ""
) -> Any:
    """Wait until predicate() (plain or async) is truthy and return its value; AssertionError
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or predicate!r}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
