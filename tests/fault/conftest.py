"""Fixtures of the fault suite: the fake upstream (tests/e2e/fake_upstream.py) in this loop, and
what the scenario modules share: one run of a scenario per backend, as a module fixture."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from tests.conftest import PG_ENV
from tests.e2e.fake_upstream import FakeUpstream

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"set {PG_ENV}"),
    ),
]


class _Lines(Protocol):
    def lines(self) -> list[str]: ...


_O = TypeVar("_O", bound=_Lines)


def run_once_per_backend(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    scenario: Callable[[str, Path, str], Awaitable[_O]],
) -> Iterator[_O]:
    """The body of a scenario module's `outcome` fixture (scope="module", params=BACKENDS):
    `scenario(backend, workdir, pg_url)` run once, its lines printed."""
    workdir: Path = tmp_path_factory.mktemp(f"{name}-{request.param}")
    result = asyncio.run(scenario(request.param, workdir, os.environ.get(PG_ENV, "")))
    print("\n" + "\n".join(result.lines()))
    yield result


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


__all__ = ["BACKENDS", "run_once_per_backend"]
