"""Prompt estimates from the kept part of an oversized request: pure."""

from __future__ import annotations

import json

from proxy.accounting.estimate.partial import estimate_partial_prompt


def words(text: str) -> int:
    return len(text.split())


def test_complete_string_values_count_keys_do_not():
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "one two three"}]}
    ).encode()

    assert estimate_partial_prompt(body, words) == 1 + 1 + 3  # gpt-4o, user, the content


def test_a_cut_value_counts_what_was_kept_and_images_count_at_the_high_rate():
    body = json.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "text", "text": "alpha beta gamma delta"},
                    ],
                }
            ]
        }
    ).encode()
    cut = body[: body.index(b"gamma") + 2]

    # user, image_url, (the data URL: an image), text, "alpha beta ga"
    assert estimate_partial_prompt(cut, words) == 1 + 1 + 765 + 1 + 3


def test_a_body_cut_inside_an_image_counts_the_image():
    body = b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": '
    body += b'{"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg'
    assert estimate_partial_prompt(body, words) == 1 + 1 + 765
