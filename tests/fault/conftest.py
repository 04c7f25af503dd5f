"""Fixtures of the fault suite: the fake upstream (tests/e2e/fake_upstream.py) in this loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.fake_upstream import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()
