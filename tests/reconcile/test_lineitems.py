from __future__ import annotations

import pytest

from proxy.reconcile.lineitems import OTHER, billed_label, recorded_label


@pytest.mark.parametrize(
    ("line_item", "label"),
    [
        ("gpt-4o-2024-08-06, input", "gpt-4o-2024-08-06"),
        ("gpt-4o-2024-08-06, output", "gpt-4o-2024-08-06"),
        ("GPT-4o-mini-2024-07-18, cached input", "gpt-4o-mini-2024-07-18"),
        ("text-embedding-3-small, input", "text-embedding-3-small"),
        ("o3-2025-04-16, input (batch)", "o3-2025-04-16"),
        ("vector store storage, per GB-day", OTHER),
        ("code interpreter sessions", OTHER),
        ("ft:gpt-4o-mini:acme::abc, training", OTHER),
        ("", OTHER),
        (None, OTHER),
    ],
)
def test_billed_line_items(line_item, label):
    assert billed_label(line_item) == label


def test_recorded_rows_meet_at_the_model():
    assert recorded_label("chat.completion", "gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    assert recorded_label("assistants.run", None) == OTHER
