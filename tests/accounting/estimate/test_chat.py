import pytest

from proxy.accounting.estimate.chat import (
    ChatEstimateConstants,
    ChatStream,
    estimate_chat_stream,
    estimate_completion,
    estimate_prompt,
)
from proxy.accounting.estimate.tokenizer import counter_for_model

# The examples of OpenAI's cookbook "How to count tokens with tiktoken", with the counts the
# cookbook reports (and says the API agreed with).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {
                    "type": "string",
                    "description": "The unit of temperature to return",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location"],
        },
    },
}
TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("model", "expected"), [("gpt-4o", 124), ("gpt-4", 129)])
def test_prompt_matches_the_cookbook(model: str, expected: int) -> None:
    count = counter_for_model(model)
    assert estimate_prompt({"messages": COOKBOOK_MESSAGES}, count) == expected


def test_function_tools_match_the_cookbook_for_gpt_4o() -> None:
    request = {"messages": TOOL_MESSAGES, "tools": [WEATHER_TOOL]}
    assert estimate_prompt(request, counter_for_model("gpt-4o")) == 101
    # The legacy `functions` parameter describes the same function the same way.
    legacy = {"messages": TOOL_MESSAGES, "functions": [WEATHER_TOOL["function"]]}
    assert estimate_prompt(legacy, counter_for_model("gpt-4o")) == 101


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "user", "content": "a b c"}, 3 + 1 + 3),
        ({"role": "user", "name": "bob", "content": "a"}, 3 + 1 + 1 + 1 + 1),
        (
            {"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "text"}]},
            3 + 1 + 2,
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "x", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "input_audio", "input_audio": {"data": "..."}},
                ],
            },
            3 + 1 + 85 + 765,
        ),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "x y"}}],
            },
            3 + 1 + (3 + 1 + 2),
        ),
        ({"role": "tool", "tool_call_id": "c", "content": "sunny"}, 3 + 1 + 1 + 1),
        ({"role": "assistant", "function_call": {"name": "f", "arguments": "x"}}, 3 + 1 + 5),
        ({"role": 7, "content": {"odd": True}, "tool_calls": "no"}, 3),
    ],
)
def test_prompt_counts_each_part(message: dict, expected: int) -> None:
    assert estimate_prompt({"messages": [message]}, words) == expected + 3


@pytest.mark.parametrize("request_body", [{}, {"messages": "no"}, {"tools": [1, {"type": "x"}]}])
def test_prompt_of_odd_requests_is_zero(request_body: dict) -> None:
    assert estimate_prompt(request_body, words) == 0


def test_constants_are_configurable() -> None:
    c = ChatEstimateConstants(per_message=0, reply_priming=0, image_high=1000)
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    assert estimate_prompt({"messages": [message]}, words, c) == 1 + 1000


def test_completion_counts_each_piece_and_tool_call() -> None:
    assert estimate_completion(["a b", "", "c"], 0, words) == 3
    assert estimate_completion(["f", "x y"], 1, words) == 3 + 3


def chunk(delta: dict | None = None, **fields) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    base = {"id": "chatcmpl-1", "model": "gpt-4o", "created": 1_700_000_000, "choices": choices}
    return base | fields


def test_stream_gathers_text_tool_calls_and_usage() -> None:
    s = ChatStream()
    # Azure's first chunk: content filter results, no id, no model.
    s.add({"id": "", "model": "", "choices": [], "prompt_filter_results": []})
    s.add(chunk({"role": "assistant", "content": "Hello"}))
    s.add(chunk({"content": " world"}))
    s.add(
        chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": ""}}]})
    )
    s.add(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}))
    s.add(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]}))
    s.add(chunk({"tool_calls": [{"index": 1, "function": {"name": "other", "arguments": "{}"}}]}))
    assert not s.finished and s.usage is None
    s.add({**chunk(), "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    s.add(chunk(usage={"prompt_tokens": 5, "completion_tokens": 3}))
    assert (s.id, s.model, s.created) == ("chatcmpl-1", "gpt-4o", 1_700_000_000)
    assert s.finished and s.usage == {"prompt_tokens": 5, "completion_tokens": 3}
    assert s.tool_calls == 2
    assert sorted(s.pieces()) == sorted(
        ["Hello world", "get_weather", '{"city": "Paris"}', "other", "{}"]
    )


def test_stream_keeps_choices_apart() -> None:
    s = ChatStream()
    for n, text in [(0, "a"), (1, "x"), (0, "b"), (1, "y")]:
        s.add({"choices": [{"index": n, "delta": {"content": text}}]})
    assert sorted(s.pieces()) == ["ab", "xy"]


def test_stream_text_beyond_the_cap_is_counted_by_length() -> None:
    s = ChatStream(max_chars=10)
    for text in ["12345", "12345", "1234567890ab"]:
        s.add(chunk({"content": text}))
    assert s.pieces() == ["1234512345"]
    assert s.overflow == 12
    assert estimate_chat_stream(None, s, words) == (0, 1 + 3)


def test_stream_estimate_adds_the_request_prompt() -> None:
    s = ChatStream()
    s.add(chunk({"content": "a b c"}))
    request = {"messages": [{"role": "user", "content": "hi there"}]}
    assert estimate_chat_stream(request, s, words) == (3 + 1 + 2 + 3, 3)
