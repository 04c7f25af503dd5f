"""keys.py: key extraction, fingerprint, hint and the in-memory credential store."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.accounting.process.wire import key_line
from proxy.keys import (
    CredentialStore,
    UsedCredential,
    conflicting_keys,
    extract_key,
    fingerprint,
    hint,
    replay_request,
    split_query,
    used_credential,
)
from tests.fake_keys import fake_key

KEY = fake_key("keys", "WXYZ")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"Authorization": f"Bearer {KEY}"}, KEY),
        ({"authorization": f"bearer   {KEY} "}, KEY),
        ({"api-key": f" {KEY} "}, KEY),
        ({"Authorization": "Basic abc"}, None),
        ({"Authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_extract_key(headers: dict[str, str], key: str | None) -> None:
    assert extract_key(CIMultiDictProxy(CIMultiDict(headers))) == key


def test_fingerprint_and_hint_keep_nothing_of_the_key_but_its_last_four() -> None:
    fp = fingerprint(KEY, b"secret")
    assert len(fp) == 64 and KEY not in fp and fp != fingerprint(KEY, b"other")
    assert hint(KEY) == "sk-...WXYZ" and hint("short") == "..."


def test_the_store_keeps_the_replayed_headers_until_they_expire() -> None:
    clock = Clock()
    store = CredentialStore(ttl=60, clock=clock)
    headers = CIMultiDictProxy(
        CIMultiDict({"authorization": f"Bearer {KEY}", "OpenAI-Project": "proj_1", "Cookie": "no"})
    )
    store.remember("fp", headers)
    assert "fp" in store and "other" not in store
    # Looked up case-insensitively, stored under the store's own names; nothing else is kept.
    assert store.get("fp") == {"Authorization": f"Bearer {KEY}", "OpenAI-Project": "proj_1"}
    clock.now += 59
    store.remember("fp", CIMultiDict({"api-key": KEY}))  # the latest headers, a new lease
    clock.now += 59
    assert "fp" in store and store.get("fp") == {"api-key": KEY}
    clock.now += 2
    assert "fp" not in store and store.get("fp") is None and store.fingerprints() == []


def test_a_listener_hears_new_and_changed_keys_and_one_still_in_use_each_minute() -> None:
    clock = Clock()
    told: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    store = CredentialStore(ttl=3600, clock=clock, listener=lambda fp, h: told.append((fp, h)))
    store.remember("fp", {"Authorization": f"Bearer {KEY}"})
    assert told == [("fp", (("Authorization", f"Bearer {KEY}"),))]
    for _ in range(50):  # a second apart: refreshed, not told again
        clock.now += 1
        store.remember("fp", {"Authorization": f"Bearer {KEY}"})
    assert len(told) == 1 and store.live() == [("fp", (("Authorization", f"Bearer {KEY}"),))]
    clock.now += 2
    store.remember("fp", {"api-key": KEY})  # changed headers: told at once
    assert told[-1] == ("fp", (("api-key", KEY),)) and len(told) == 2
    clock.now += 61
    store.remember("fp", {"api-key": KEY})  # still in use after a minute: told again
    assert len(told) == 3


def test_a_key_seen_again_within_a_second_is_not_refreshed() -> None:
    clock = Clock()
    store = CredentialStore(ttl=10, clock=clock)
    assert store.remember("fp", {"api-key": KEY}) is True  # new
    clock.now += 0.5
    assert store.remember("fp", {"api-key": KEY}) is False
    clock.now += 9.6  # 10.1 s after the first sighting: the refresh half a second in was skipped
    assert "fp" not in store
    assert store.remember("fp", {"api-key": KEY}) is True  # expired, so new again
    clock.now += 20
    store.put("fp", (("api-key", KEY),))
    assert store.get("fp") == {"api-key": KEY} and store.put("fp", ()) is False


# Header values as aiohttp's server decodes bytes that are not UTF-8: surrogate escapes.
def _escaped(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def test_a_key_that_is_not_utf8_is_fingerprinted_by_its_bytes_and_hinted_printably() -> None:
    raw = KEY.encode()[:-4] + b"\xff\xfe\x80z"
    fp = fingerprint(_escaped(raw), b"secret")
    assert fp == hmac.new(b"secret", raw, hashlib.sha256).hexdigest()
    assert hint(_escaped(raw)) == "sk-..."
    assert hint(KEY[:-4] + "ab\tc") == "sk-..."


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        # A decoy beside the key the upstream takes: the key is kept, the decoy is not.
        (
            {"Authorization": f"Bearer {KEY}", "api-key": _escaped(b"\xffjunk")},
            {"Authorization": f"Bearer {KEY}"},
        ),
        (
            {"api-key": KEY, "OpenAI-Project": _escaped(b"proj_\xff")},
            {"api-key": KEY},
        ),
        # The key itself cannot be sent again: nothing is kept (another key would be used).
        ({"Authorization": _escaped(b"Bearer \xff" + KEY.encode()), "api-key": KEY}, None),
        ({"Authorization": _escaped(b"Bearer \xff" + KEY.encode())}, None),
    ],
)
def test_the_store_keeps_only_what_can_be_sent_again(
    headers: dict[str, str], kept: dict[str, str] | None
) -> None:
    told: list[bytes] = []
    store = CredentialStore(listener=lambda fp, h: told.append(key_line(fp, h)))
    store.remember("fp", CIMultiDictProxy(CIMultiDict(headers)))
    assert store.get("fp") == kept
    assert len(told) == (kept is not None)  # and the line to the collector process encodes


def test_the_store_forgets_the_least_recently_seen_key_beyond_its_limit() -> None:
    clock = Clock()
    store = CredentialStore(clock=clock, limit=3)
    for fp in ("a", "b", "c"):
        store.remember(fp, {"api-key": fp * 12})
        clock.now += 2  # beyond the refresh interval: each sighting counts
    store.remember("a", {"api-key": "a" * 12})  # seen again: now the most recent
    store.put("d", (("api-key", "d" * 12),))
    assert sorted(store.fingerprints()) == ["a", "c", "d"]
    assert [fp for fp, _ in store.live()] == ["c", "a", "d"]


@pytest.mark.parametrize(
    ("sent", "used"),
    [
        (None, None),
        ({"OpenAI-Project": "proj_a"}, None),
        (
            {"api-key": KEY, "OpenAI-Project": "proj_a", "X-Other": "x"},
            UsedCredential(KEY, (("api-key", KEY), ("OpenAI-Project", "proj_a"))),
        ),
        (
            {"Authorization": _escaped(b"Bearer \xff" + KEY.encode())},
            UsedCredential(_escaped(b"\xff" + KEY.encode()), None),
        ),
    ],
)
def test_the_credential_a_request_used_is_read_from_the_headers_sent(
    sent: dict[str, str] | None, used: UsedCredential | None
) -> None:
    assert used_credential(CIMultiDict(sent) if sent is not None else None) == used


@pytest.mark.parametrize(
    ("query", "safe", "secret"),
    [
        ("", "", ()),
        ("api-version=2024-05-01", "api-version=2024-05-01", ()),
        (f"api-version=1&api-key={KEY}", "api-version=1", (("api-key", KEY),)),
        (f"key={KEY}&limit=5", "limit=5", (("key", KEY),)),
        (
            "api_key=abc&x-api-key=def&token=t",
            "",
            (("api_key", "abc"), ("x-api-key", "def"), ("token", "t")),
        ),
        (f"note={KEY}&monkey=1&keyboard=2", "monkey=1&keyboard=2", (("note", KEY),)),  # by value
        (f"note=x{KEY}&a=1", "a=1", (("note", f"x{KEY}"),)),  # with no word boundary before it
    ],
)
def test_credential_looking_query_parameters_are_split_off(
    query: str, safe: str, secret: tuple[tuple[str, str], ...]
) -> None:
    assert split_query(query) == (safe, secret)


def test_a_key_in_the_query_is_used_and_replayed_from_memory() -> None:
    used = used_credential(CIMultiDict({"OpenAI-Project": "p"}), f"api-version=1&api-key={KEY}")
    assert used is not None and used.key == KEY and used.replay is not None
    headers, query = replay_request(dict(used.replay), "api-version=1")
    assert headers == {"OpenAI-Project": "p"}
    assert query == f"api-version=1&api-key={KEY}"
    # A header key wins over one in the query, as the upstream's does.
    assert used_credential({"api-key": "header-key"}, f"key={KEY}").key == "header-key"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "conflict"),
    [
        ({"Authorization": "Bearer sk-one", "api-key": "sk-two"}, True),
        ({"Authorization": "Bearer sk-one", "api-key": " sk-one "}, False),
        ({"Authorization": "Bearer sk-one"}, False),
        ({"api-key": "sk-two"}, False),
        ({"Authorization": "Basic abc", "api-key": "sk-two"}, False),
        ({"Authorization": "Bearer sk-one", "api-key": ""}, False),
    ],
)
def test_two_different_keys_conflict(headers, conflict):
    assert conflicting_keys(headers) is conflict
