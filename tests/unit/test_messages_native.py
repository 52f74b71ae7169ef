"""The native Messages path's pure parts: the prompt bound of an Anthropic body (the hold) and the
assembly of a Message from its stream events (the buffered API Gateway path)."""

from __future__ import annotations

import json

from gateway.adapters.contract import Usage
from gateway.adapters.tokens import image_token_max
from gateway.messages.native import DEFINED_TOOL_OVERHEAD, assemble_message, native_size

MODEL = "anthropic/claude-sonnet-4.5"
CONTEXT = 200_000


def _body(content: object, **extra: object) -> dict[str, object]:
    return {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": content}], **extra}


def test_bound_is_one_token_per_byte_of_everything_forwarded() -> None:
    text = "数字 1234567890 !!!"
    plain = native_size(_body(text))
    assert plain.bound(MODEL, CONTEXT) >= len(text.encode())
    # earlier turns' thinking blocks are forwarded natively, so they count
    thinking = {"role": "assistant", "content": [{"type": "thinking", "thinking": "x" * 5000, "signature": "s"},
                                                 {"type": "text", "text": "ok"}]}
    body = _body("hi")
    body["messages"] = [thinking, *body["messages"]]  # type: ignore[misc]
    assert native_size(body).bound(MODEL, CONTEXT) > 5000
    # the system prompt too
    assert native_size(_body("hi", system="y" * 3000)).bound(MODEL, CONTEXT) > 3000


def test_images_count_at_the_model_maximum_even_inside_tool_results() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 10}}
    size = native_size(_body([{"type": "tool_result", "tool_use_id": "t", "content": [image, image]}, image]))
    assert size.images == 3
    assert size.bound(MODEL, CONTEXT) >= 3 * image_token_max(MODEL)


def test_content_anthropic_fetches_itself_bounds_at_the_context_length() -> None:
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
    url_doc = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    text_doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "abc"}}
    assert native_size(_body([pdf])).bound(MODEL, CONTEXT) == CONTEXT
    assert native_size(_body([url_doc])).bound(MODEL, CONTEXT) == CONTEXT
    assert native_size(_body([text_doc])).bound(MODEL, CONTEXT) < 1000
    web_fetch = {"type": "web_fetch_20250910", "name": "web_fetch"}
    assert native_size(_body("hi", tools=[web_fetch])).bound(MODEL, CONTEXT) == CONTEXT
    mcp = [{"type": "url", "url": "https://mcp.example.com", "name": "x"}]
    assert native_size(_body("hi", mcp_servers=mcp)).bound(MODEL, CONTEXT) == CONTEXT


def test_anthropic_defined_client_tools_add_their_system_prompt() -> None:
    custom = {"name": "f", "input_schema": {"type": "object"}}
    editor = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
    with_custom = native_size(_body("hi", tools=[custom])).bound(MODEL, CONTEXT)
    with_editor = native_size(_body("hi", tools=[custom, editor])).bound(MODEL, CONTEXT)
    assert with_editor - with_custom >= DEFINED_TOOL_OVERHEAD


def test_assemble_message_from_events() -> None:
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                              "model": "claude-x", "usage": {"input_tokens": 10, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "see."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"a"'}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ": 1}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 42}},
        {"type": "message_stop"},
    ]
    message = assemble_message(events, MODEL, Usage(prompt_tokens=10, completion_tokens=42))
    assert message["id"] == "msg_1" and message["model"] == MODEL and message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
        {"type": "text", "text": "Hello"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
    ]
    assert message["usage"]["input_tokens"] == 10 and message["usage"]["output_tokens"] == 42
    json.dumps(message)  # renderable


def test_assemble_message_joins_long_answers_in_order_and_a_restarted_block_starts_over() -> None:
    """Thousands of deltas (a long answer) per block, interleaved across blocks, a block whose start
    already carries text, and a block started again (its earlier pieces are dropped, tool input too)."""
    n = 5000
    events: list[dict[str, object]] = [
        {"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Start:"}},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"stale"'}},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"k": ['}},
    ]
    for i in range(n):
        events.append({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" w{i}"}})
        events.append({"type": "content_block_delta", "index": 1,
                       "delta": {"type": "input_json_delta", "partial_json": ("" if i == 0 else ",") + str(i)}})
    events.append({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "]}"}})
    message = assemble_message(events, MODEL, Usage(prompt_tokens=1, completion_tokens=n))
    text, tool = message["content"]
    assert text["text"] == "Start:" + "".join(f" w{i}" for i in range(n))
    assert tool["input"] == {"k": list(range(n))}
