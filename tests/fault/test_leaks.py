"""The leak finder itself: what counts as a key appearing, and what does not."""

from __future__ import annotations

import pytest

from tests.fake_keys import fake_key
from tests.fault.leaks import find_leaks

KEY = fake_key("leaks", "LMNP")


@pytest.mark.parametrize(
    ("text", "leaks"),
    [
        (f"Authorization: Bearer {KEY}", 1),
        (f"key={KEY.removeprefix('sk-')}", 1),
        ("...jKLMNP" + KEY[20:28] + "...", 1),  # any 8 characters of the secret part
        (KEY[-4:] + " sk-...MNP " + KEY[8:15], 0),  # a hint, and 7 characters, are fine
        ("sk-proj-", 0),
        ("line one\nsecond " + KEY[3:11] + " here\nthird", 1),
    ],
)
def test_find_leaks(text: str, leaks: int) -> None:
    found = find_leaks({"t": text}, [KEY])
    assert len(found) == leaks
    for leak in found:
        assert KEY[3:] not in str(leak) and leak.where == "t"
        assert "\n" not in leak.context
