"""The billing scenario the reconcile tests share: two projects and one the proxy never saw,
two keys of one project with the same tail, an unknown line item, and days of November 2026
(the last of them still open when first pulled)."""

from __future__ import annotations

from tests.fake_keys import fake_key
from tests.reconcile.fake_admin import FakeAdmin, cost

ADMIN_KEY = fake_key("admin", "adm1")
RED_KEY = fake_key("red", "r3d1")  # proj_red, tail r3d1
BLUE_KEY = fake_key("blue", "b1u3")  # proj_blue, tail b1u3; a second blue key shares it
BLUE_TWIN = fake_key("bluetwin", "b1u3")
GPT = "gpt-4o-2024-08-06"


def fake_admin() -> FakeAdmin:
    return FakeAdmin(
        ADMIN_KEY,
        projects={
            "proj_red": ("Red", [("key_red", "red ci", "sk-fak...r3d1")]),
            "proj_blue": (
                "Blue",
                [
                    ("key_blue1", "blue one", "sk-fak...b1u3"),
                    ("key_blue2", "blue two", "sk-fak...b1u3"),
                ],
            ),
            "proj_ghost": ("Ghost", [("key_ghost", "ghost", "sk-fak...gh05")]),
        },
        costs={
            "2026-11-01": [
                cost("0.0125", f"{GPT}, input", "proj_red", "key_red"),
                cost("0.05", f"{GPT}, output", "proj_red", "key_red"),
                cost("0.30", f"{GPT}, input", "proj_blue", "key_blue1"),
                cost("0.20", f"{GPT}, input", "proj_blue", "key_blue2"),
                cost("0.07", "vector store storage, per GB-day", "proj_red", None),
            ],
            "2026-11-02": [
                cost("1.25", f"{GPT}, input", "proj_ghost", "key_ghost"),
                cost("0.1000000001", f"{GPT}, output", "proj_red", "key_red"),
            ],
        },
    )
