"""Accounting.attribute remembers who pays per set of headers, against a real database."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.accounting.attribution import Attribution
from proxy.accounting.service import Accounting
from proxy.db import mappings
from proxy.keys import fingerprint
from proxy.settings import Settings
from tests.fake_keys import fake_key

SECRET = "test-secret"
KEY = fake_key("attributionc", "cdef")


def headers(**extra: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {KEY}", **extra}))


def accounting(sm: async_sessionmaker[AsyncSession], **settings: Any) -> Accounting:
    acc = Accounting(Settings(key_secret=SECRET, **settings))
    acc._sm = sm
    return acc


async def attribute(acc: Accounting, h: CIMultiDictProxy[str]) -> Attribution:
    """As a request whose headers were all sent upstream (X-Usage-* aside, which never are)."""
    return await acc.attribute(h, h)


async def test_the_same_headers_are_attributed_once(sm) -> None:
    await mappings.add_key_team(sm, fingerprint(KEY, SECRET.encode()), None, "red")
    acc = accounting(sm)
    first = await attribute(acc, headers())
    assert (first.team, first.key_hint) == ("red", "sk-...cdef")
    # A later change of the key's team shows once the cached answer expires, as before.
    await mappings.add_key_team(sm, fingerprint(KEY, SECRET.encode()), None, "blue")
    assert await attribute(acc, headers()) is first
    assert acc.credentials.get(first.key_fingerprint) == {"Authorization": f"Bearer {KEY}"}
    tagged = await attribute(acc, headers(**{"X-Usage-Tag": "nightly"}))
    assert tagged is not first and tagged.tag == "nightly"
    acc.attribution._attributions.clear()
    acc.attribution._teams.clear()
    assert (await attribute(acc, headers())).team == "blue"


async def test_a_client_team_is_a_header_of_its_own(sm) -> None:
    acc = accounting(sm, allow_client_team=True)
    a = await attribute(acc, headers(**{"X-Usage-Team": "green"}))
    b = await attribute(acc, headers(**{"X-Usage-Team": "violet"}))
    assert (a.team, b.team) == ("green", "violet")


async def test_an_unknown_team_is_not_remembered(sm) -> None:
    # The database is down: the team is left for the write to resolve, and not cached.
    acc = accounting(sm)

    class Down:
        def __call__(self, **kw: Any) -> Any:
            raise ConnectionRefusedError("down (test)")

        begin = __call__

    acc._sm = Down()  # type: ignore[assignment]
    who = await attribute(acc, headers())
    assert who.team is None and acc.attribution._attributions == {}
    acc._sm = sm
    assert (await attribute(acc, headers())).team == "unassigned"
