"""The in-memory credential store, end to end (issue 20): keys the upstream refuses are not
kept, the store holds at most `credential_limit` keys (the least recently used go first), and
/_proxy/metrics shows how many it holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import openai
import pytest

from proxy.accounting.service import Accounting
from proxy.app import ACCOUNTING
from proxy.keys import fingerprint
from tests.e2e.conftest import RunningProxy, client_for
from tests.e2e.fake_upstream import FakeUpstream
from tests.e2e.test_assistants import SECRET, settings_for
from tests.e2e.test_collector_process import metric
from tests.e2e.test_events import settle
from tests.fake_keys import fake_key

StartProxy = Callable[..., Awaitable[RunningProxy]]
TOKEN = "collector-process-admin-token"  # what tests.e2e.test_collector_process.metric sends
HI = [{"role": "user", "content": "hi"}]
HELD = "usage_proxy_credentials_held"


@pytest.fixture(autouse=True)
def _setup(db_url: str, upstream: FakeUpstream) -> None:
    """The database before the proxy, so torn down after it."""


def accounting_of(proxy: RunningProxy) -> Accounting:
    return proxy.app[ACCOUNTING]


def fp(key: str) -> str:
    return fingerprint(key, SECRET.encode())


async def chat(proxy: RunningProxy, key: str, status: int | None = None) -> None:
    async with client_for(proxy, key) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HI,
            metadata={"fake_status": str(status)} if status else None,
        )


@pytest.mark.parametrize(
    ("status", "error"), [(401, openai.AuthenticationError), (403, openai.PermissionDeniedError)]
)
async def test_a_key_the_upstream_refuses_is_not_kept(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str, status: int, error: type
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url, admin_token=TOKEN))
    good = fake_key("good", "0001")
    await chat(proxy, good)
    for i in range(20):
        with pytest.raises(error):
            await chat(proxy, fake_key("bogus", f"{i:04d}"), status)
    await settle(proxy)
    assert accounting_of(proxy).credentials.fingerprints() == [fp(good)]
    assert await metric(proxy, HELD) == 1.0


async def test_the_store_holds_at_most_credential_limit_keys(
    upstream: FakeUpstream, start_proxy: StartProxy, db_url: str
) -> None:
    proxy = await start_proxy(settings_for(upstream, db_url, admin_token=TOKEN, credential_limit=5))
    keys = [fake_key("many", f"{i:04d}") for i in range(12)]
    for key in keys:
        await chat(proxy, key)
    await settle(proxy)
    # The least recently used went first: the last five are held.
    assert sorted(accounting_of(proxy).credentials.fingerprints()) == sorted(map(fp, keys[-5:]))
    assert await metric(proxy, HELD) == 5.0
