"""Token estimates used for reservations and when a provider reports no usage."""

from __future__ import annotations

import json
import math

import pytest

from gateway.adapters.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    estimate_prompt_tokens,
    estimate_tokens,
)


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100),
                                              ("héllo wörld", 3)])
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_prompt_tokens_text_messages() -> None:
    body = {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": "Hello there, how are you?"}]}
    expected = REPLY_PRIMING + 2 * MESSAGE_OVERHEAD + math.ceil(14 / 4) + math.ceil(25 / 4)
    assert estimate_prompt_tokens(body) == expected


def test_prompt_tokens_parts_images_tools() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    body = {
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": tools,
    }
    text_tokens = math.ceil(22 / 4) + math.ceil((11 + 16) / 4) + math.ceil(5 / 4)
    tool_tokens = math.ceil(len(json.dumps(tools, separators=(",", ":"))) / 4)
    expected = REPLY_PRIMING + 3 * MESSAGE_OVERHEAD + text_tokens + 2 * IMAGE_TOKENS + tool_tokens
    assert estimate_prompt_tokens(body) == expected
    # the base64 payload of an image never counts as text
    assert estimate_prompt_tokens(body) < 400


def test_prompt_tokens_json_schema_and_empty() -> None:
    assert estimate_prompt_tokens({"messages": []}) == REPLY_PRIMING
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    schema = {**plain, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}
    assert estimate_prompt_tokens(schema) > estimate_prompt_tokens(plain)
