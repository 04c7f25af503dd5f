"""Made-up API keys for the tests, assembled at run time: no string in the tree looks like a
real key to a secret scanner or a reader, and each says what it is."""

from __future__ import annotations


def fake_key(label: str, last4: str) -> str:
    """An OpenAI-style key that is plainly fake: `sk-fake-<label>-xxxx...<last4>`. The last
    four characters are what hints (`sk-...<last4>`) show, so tests choose them."""
    assert len(last4) == 4
    return "-".join(("sk", "fake", label, "x" * 20 + last4))
