"""The native Responses path (``gateway.responses.native``): the body sent to OpenAI, the prompt's
upper bound the hold is built on, the usage billed, and a buffered stream assembled — checked
against the openai SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseCreateParams
from pydantic import TypeAdapter

from gateway.adapters.contract import Usage
from gateway.adapters.tokens import image_token_max
from gateway.errors import BadRequest, UpstreamError
from gateway.responses import native as N
from gateway.responses.schema import ResponsesRequest

MODEL = "openai/gpt-4o-mini"
LIMIT = 16_384


def req(**overrides: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": MODEL, "input": "Hello", **overrides})


def body_of(**overrides: Any) -> N.NativeBody:
    return N.native_body(req(**overrides), "gpt-4o-mini-2024-07-18", max_output_limit=LIMIT)


def test_the_body_is_the_clients_with_our_fields() -> None:
    item = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"}
    n = body_of(input=[{"role": "user", "content": "Hi"}, item], store=True, service_tier="auto",
                include=["reasoning.encrypted_content"], reasoning={"effort": "high", "summary": "auto"},
                text={"format": {"type": "json_object"}, "verbosity": "low"}, prompt_cache_key="k",
                tools=[{"type": "custom", "name": "grammar"}], moderation={"x": 1})
    b = n.body
    assert b["model"] == "gpt-4o-mini-2024-07-18" and b["store"] is False and b["service_tier"] == "default"
    assert b["input"][1] == item and b["reasoning"] == {"effort": "high", "summary": "auto"}
    assert b["max_output_tokens"] == LIMIT == n.output_limit  # injected: what the hold counts
    assert "stream" not in b and n.dropped == ["moderation"]
    TypeAdapter(ResponseCreateParams).validate_python(b)  # still a valid Responses request


def test_max_output_tokens_is_clamped() -> None:
    assert body_of(max_output_tokens=100).output_limit == 100
    n = body_of(max_output_tokens=10**9)
    assert n.body["max_output_tokens"] == n.output_limit == LIMIT and n.dropped == [f"max_output_tokens above {LIMIT}"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools.0"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "code_interpreter"}]}},
     "tool_choice"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]}, "input.0.content.0"),
])
def test_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        body_of(**extra)
    assert info.value.param == param


def test_the_bound_counts_every_byte_images_and_files() -> None:
    text = "€" * 1000  # 3 bytes each, ~1 token each: the bound is the bytes
    plain = body_of(instructions=text).size
    assert plain.text_bound >= 3000 and plain.images == plain.files == 0
    assert plain.bound(MODEL, 128_000) == plain.text_bound
    image = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 100_000}
    with_images = body_of(input=[{"role": "user", "content": [image, image, {"type": "input_text", "text": "?"}]}]).size
    assert with_images.images == 2 and with_images.text_bound < 1000  # the data is not text
    assert with_images.bound(MODEL, 10**9) == with_images.text_bound + 2 * image_token_max(MODEL)
    original = {**image, "detail": "original"}
    file = {"type": "input_file", "file_url": "https://example.com/a.pdf"}
    output = {"type": "function_call_output", "call_id": "c", "output": [file]}
    for content in ([original], [file]):
        assert body_of(input=[{"role": "user", "content": content}]).size.bound(MODEL, 128_000) == 128_000
    assert body_of(input=[output]).size.files == 1
    tools = body_of(tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}]).size
    assert tools.text_bound - body_of().size.text_bound > 500  # the tools overhead


def test_usage_from_responses() -> None:
    usage = N.usage_from_responses({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40},
                                    "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 20},
                                    "total_tokens": 130})
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (100, 40, 30)
    assert N.usage_from_responses(None) is None and N.usage_from_responses({}) is None


def _response(**extra: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4o-mini",
            "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], **extra}


def test_assemble_from_the_terminal_event() -> None:
    item = {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "c", "name": "f",
            "arguments": "{}"}
    usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}
    events = [{"type": "response.created", "response": _response(status="in_progress")},
              {"type": "response.output_item.done", "output_index": 0, "item": item},
              {"type": "response.completed", "response": _response(output=[item], usage=usage)}]
    out = N.assemble_response(events, MODEL, Usage(prompt_tokens=5, completion_tokens=3))
    parsed = Response.model_validate(out)
    assert parsed.model == MODEL and parsed.output[0].type == "function_call" and parsed.usage is not None
    assert parsed.usage.output_tokens == 3
    # a snapshot without the items or usage (no terminal event) is completed from the events
    partial = N.assemble_response(events[:2], MODEL, Usage(prompt_tokens=5, completion_tokens=2))
    assert partial["output"] == [item] and partial["usage"]["output_tokens"] == 2
    Response.model_validate(partial)


def test_error_frame_continues_the_sequence() -> None:
    wire = N.wire()
    assert wire.frame({"type": "response.created", "sequence_number": 0}).startswith(b"event: response.created")
    wire.frame({"type": "response.output_text.delta", "sequence_number": 1, "delta": "a"})
    frame = wire.error_frame(UpstreamError("boom", provider="openai", status=502, code="upstream_error"))
    data = json.loads(frame.split(b"data: ", 1)[1])
    assert frame.startswith(b"event: error") and data["sequence_number"] == 2 and data["message"] == "boom"


def test_the_fake_knows_the_sdks_request_fields() -> None:
    """The fake OpenAI refuses fields its real API does not know: its list is the SDK's."""
    import typing

    from openai.types.responses import response_create_params

    from infra.local.fake_surfaces import RESPONSES_FIELDS

    sdk = set(typing.get_type_hints(response_create_params.ResponseCreateParamsBase)) | {"stream"}
    assert sdk == RESPONSES_FIELDS
