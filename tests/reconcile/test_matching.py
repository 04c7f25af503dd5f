from __future__ import annotations

import pytest

from proxy.reconcile.billed import BilledKey, tail_of
from proxy.reconcile.matching import KeyIndex, Resolved

KEYS = [
    BilledKey("k1", "p1", "P1", "one", "sk-abc...aaaa"),
    BilledKey("k2", "p1", "P1", "two", "sk-abc...bbbb"),
    BilledKey("k3", "p1", "P1", "three", "sk-abc...bbbb"),  # same tail as k2, same project
    BilledKey("k4", "p2", "P2", "four", "sk-proj-****aaaa"),  # same tail as k1, other project
    BilledKey("k5", "p2", "P2", "five", "sk-abc...cccc"),
]


@pytest.mark.parametrize(
    ("text", "tail"),
    [("sk-...abcd", "abcd"), ("sk-abc...abcd", "abcd"), ("sk-proj-***abcd", "abcd"),
     ("...wxyz", "wxyz"), ("", None), (None, None), ("sk-...ab", None)],
)  # fmt: skip
def test_tail(text, tail):
    assert tail_of(text) == tail


def test_billed_keys_resolve_to_project_and_hint():
    index = KeyIndex(KEYS)
    assert index.billed("p1", "k1") == Resolved("p1", "sk-...aaaa")
    assert index.billed("p1", "k2") == Resolved("p1", "sk-...bbbb", ambiguous=True)
    assert index.billed("p9", "unlisted") == Resolved("p9", None)
    assert index.billed("", "") == Resolved(None, None)


def test_recorded_rows_match_on_project_and_tail_never_guessing():
    index = KeyIndex(KEYS)
    assert index.recorded("p1", "sk-...aaaa") == Resolved("p1", "sk-...aaaa")
    assert index.recorded("p1", "sk-...bbbb").ambiguous
    # Without a project, the tail decides only when one project has it.
    assert index.recorded(None, "sk-...cccc") == Resolved("p2", "sk-...cccc")
    assert index.recorded(None, "sk-...aaaa") == Resolved(None, "sk-...aaaa")
    assert index.recorded("p1", None) == Resolved("p1", None)


def test_matches_list_every_key_once():
    matches = KeyIndex(KEYS).matches(
        [("p1", "sk-...aaaa"), (None, "sk-...cccc"), ("p3", "sk-...dddd")]
    )
    got = [(m.status, m.project, m.key_hint, m.api_key_ids) for m in matches]
    assert got == [
        ("matched", "p1", "sk-...aaaa", ("k1",)),
        ("ambiguous", "p1", "sk-...bbbb", ("k2", "k3")),
        ("unseen", "p2", "sk-...aaaa", ("k4",)),
        ("matched", "p2", "sk-...cccc", ("k5",)),
        ("unknown", "p3", "sk-...dddd", ()),
    ]
