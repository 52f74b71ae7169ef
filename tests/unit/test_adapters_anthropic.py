"""Anthropic Messages adapter: OpenAI → Messages request translation, response and stream-event
translation (payloads from Anthropic's documented examples), errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.adapters import get_adapter
from gateway.adapters.anthropic import build_body, translate_response, usage_from_anthropic
from gateway.adapters.contract import Target
from gateway.errors import BadRequest, UpstreamError

T = Target("anthropic", "claude-sonnet-4-20250514", "anthropic/claude-sonnet-4", "https://api.anthropic.com/v1",
           "sk-ant-test")

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="


def test_request_translation_full_conversation() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What's the weather here?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}},
            ]},
            {"role": "user", "content": "And in Paris?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "toolu_01A", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}},
                {"id": "toolu_01B", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"location\": \"Lyon\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
            {"role": "tool", "tool_call_id": "toolu_01B", "content": [{"type": "text", "text": "18 degrees"}]},
            {"role": "user", "content": "Thanks!"},
        ],
        "tools": TOOLS,
        "tool_choice": "required",
        "max_completion_tokens": 512,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-42",
        "seed": 7,
        "models": ["x"],
    }
    out = build_body(T, body, stream=True)
    assert out["model"] == "claude-sonnet-4-20250514"
    assert out["system"] == "You are a weather bot.\n\nBe brief."
    assert out["max_tokens"] == 512
    assert out["temperature"] == 1.0  # clamped to Anthropic's range
    assert "top_p" not in out  # not together with temperature
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "user-42"}
    assert out["stream"] is True
    assert out["tools"] == [{"name": "get_weather", "description": "Get the current weather in a given location",
                             "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert out["tool_choice"] == {"type": "any"}
    assert "seed" not in out and "models" not in out
    msgs = out["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == [
        {"type": "text", "text": "What's the weather here?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}},
        {"type": "text", "text": "And in Paris?"},
    ]
    assert msgs[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"location": "Lyon"}},
    ]
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
        {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "18 degrees"}]},
        {"type": "text", "text": "Thanks!"},
    ]


def test_foreign_tool_ids_are_made_valid() -> None:
    body = {"messages": [
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9f2c__thought__CoUDAdHt+/==", "type": "function",
             "function": {"name": "weather", "arguments": "{}"}},
            {"id": "fc.1:abc", "type": "function", "function": {"name": "weather", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_9f2c__thought__CoUDAdHt+/==", "content": "sunny"},
        {"role": "tool", "tool_call_id": "fc.1:abc", "content": "rain"}]}
    msgs = build_body(T, body, stream=False)["messages"]
    assert [b["id"] for b in msgs[1]["content"]] == ["call_9f2c", "fc_1_abc"]
    assert [b["tool_use_id"] for b in msgs[2]["content"]] == ["call_9f2c", "fc_1_abc"]
    assert msgs[1]["content"][1]["input"] == {}


def test_request_defaults_and_options() -> None:
    out = build_body(T, {"messages": [{"role": "user", "content": "hi"}], "top_p": 0.5}, stream=False)
    assert out["max_tokens"] == 4096 and out["top_p"] == 0.5 and "stream" not in out and "system" not in out
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    out = build_body(T, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}, stream=False)
    assert out["max_tokens"] == 50


@pytest.mark.parametrize("asked", [None, "auto", "default"])
def test_always_the_standard_tier(asked: str | None) -> None:
    """Our price is Anthropic's standard one: never "auto" (its default), which would spend
    Priority Tier capacity at Priority prices whenever the organisation has some."""
    body = {"messages": [{"role": "user", "content": "hi"}], "service_tier": asked}
    assert build_body(T, body, stream=False)["service_tier"] == "standard_only"


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "tool_choice": choice,
            "parallel_tool_calls": parallel}
    assert build_body(T, body, stream=False).get("tool_choice") == expected


def test_tool_choice_dropped_without_tools() -> None:
    out = build_body(T, {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"}, stream=False)
    assert "tool_choice" not in out and "tools" not in out


def test_json_mode_becomes_instruction_and_cache_control_kept() -> None:
    body = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Long context",
                                                          "cache_control": {"type": "ephemeral"}}]},
                         {"role": "user", "content": "list 3 colors"}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "colors", "schema": {"type": "object", "properties": {"c": {"type": "array"}}}}}}
    out = build_body(T, body, stream=False)
    assert out["system"][0] == {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}
    assert "JSON" in out["system"][1]["text"] and '"properties"' in out["system"][1]["text"]


def test_unsupported_inputs_are_bad_requests() -> None:
    with pytest.raises(BadRequest):
        build_body(T, {"messages": [{"role": "user", "content": "hi"}], "n": 2}, stream=False)
    with pytest.raises(BadRequest):
        build_body(T, {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}]}, stream=False)
    with pytest.raises(BadRequest):
        build_body(T, {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}, stream=False)


def test_pdf_file_part_becomes_document() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "text", "text": "Summarize"}]}]}
    blocks = build_body(T, body, stream=False)["messages"][0]["content"]
    assert blocks[0] == {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                        "data": "JVBERi0x"}}


# https://docs.anthropic.com/en/api/messages (response example) and the tool-use guide
RESPONSE_TEXT = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 100,
              "cache_read_input_tokens": 1000},
}
RESPONSE_TOOL = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "model": "claude-sonnet-4-20250514",
    "stop_reason": "tool_use",
    "role": "assistant",
    "content": [
        {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"location": "San Francisco, CA", "unit": "celsius"}},
    ],
    "usage": {"input_tokens": 384, "output_tokens": 57},
}


def test_response_translation_text_and_usage() -> None:
    out, usage = translate_response(T, {"messages": []}, RESPONSE_TEXT)
    assert out["object"] == "chat.completion" and out["model"] == "anthropic/claude-sonnet-4"
    assert out["id"] == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hi! My name is Claude.",
                                            "refusal": None}
    assert out["choices"][0]["finish_reason"] == "stop"
    # input + cache writes + cache reads are all prompt tokens; cache reads are the cached ones
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reported) == \
        (3195, 503, 1000, True)
    # the cache writes are shown where OpenRouter shows them (contract.Tokens.cache_write_tokens)
    assert out["usage"] == {"prompt_tokens": 3195, "completion_tokens": 503, "total_tokens": 3698,
                            "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 100}}


def test_response_translation_tool_use() -> None:
    out, usage = translate_response(T, {"messages": []}, RESPONSE_TOOL)
    msg = out["choices"][0]["message"]
    assert msg["content"] == "I'll check the current weather in San Francisco for you."
    assert msg["tool_calls"] == [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                                  "function": {"name": "get_weather",
                                               "arguments": json.dumps({"location": "San Francisco, CA",
                                                                        "unit": "celsius"})}}]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert usage.prompt_tokens == 384 and usage.cached_tokens == 0


@pytest.mark.parametrize(("reason", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"),
                                                ("max_tokens", "length"), ("tool_use", "tool_calls"),
                                                ("refusal", "content_filter"), ("pause_turn", "stop")])
def test_stop_reasons(reason: str, finish: str) -> None:
    out, _ = translate_response(T, {"messages": []}, {**RESPONSE_TEXT, "stop_reason": reason})
    assert out["choices"][0]["finish_reason"] == finish


def test_only_tool_use_means_null_content_and_no_usage_estimates() -> None:
    data = {**RESPONSE_TOOL, "content": RESPONSE_TOOL["content"][1:]}
    data.pop("usage")
    out, usage = translate_response(T, {"messages": [{"role": "user", "content": "weather?"}]}, data)
    assert out["choices"][0]["message"]["content"] is None
    assert usage.reported is False and usage.prompt_tokens > 0 and usage.completion_tokens > 0


# --------------------------------------------------------------------------------------------
# streaming (the documented event sequence, incl. a tool_use block)
# --------------------------------------------------------------------------------------------


def ev(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


STREAM = [
    ev("message_start", {"type": "message_start", "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514", "stop_sequence": None, "stop_reason": None, "content": [],
        "usage": {"input_tokens": 472, "output_tokens": 2, "cache_read_input_tokens": 20,
                  "cache_creation_input_tokens": 0}}}),
    ev("content_block_start", {"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}}),
    ev("ping", {"type": "ping"}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": "Okay"}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": ", let's check the weather"}}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ev("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                               "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                               "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
    ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                               "delta": {"type": "input_json_delta", "partial_json": " \"San Francisco, CA\"}"}}),
    ev("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                         "usage": {"output_tokens": 89}}),
    ev("message_stop", {"type": "message_stop"}),
]


class Chunks(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes], exc: Exception | None = None) -> None:
        self.pieces, self.exc, self.closed = pieces, exc, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p
        if self.exc is not None:
            raise self.exc

    async def aclose(self) -> None:
        self.closed = True


def client_for(pieces: list[bytes], status: int = 200, exc: Exception | None = None,
               seen: list[httpx.Request] | None = None) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, stream=Chunks(pieces, exc))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_stream_translation() -> None:
    seen: list[httpx.Request] = []
    async with client_for(STREAM, seen=seen) as client:
        s = get_adapter("anthropic").stream(client, T, {"messages": [{"role": "user", "content": "weather?"}],
                                                        "tools": TOOLS, "stream": True})
        await s.open()
        chunks = [c async for c in s]
    req = seen[0]
    assert str(req.url) == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant-test" and req.headers["anthropic-version"] == "2023-06-01"
    assert json.loads(req.content)["stream"] is True
    assert all(c["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U" and c["model"] == "anthropic/claude-sonnet-4"
               and c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Okay, let's check the weather"
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"location": "San Francisco, CA"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert sum(1 for c in chunks if c["choices"][0]["finish_reason"]) == 1
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.cached_tokens, s.usage.reported) == \
        (492, 89, 20, True)


async def test_stream_error_event_overloaded() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    pieces = [*STREAM[:5], ev("error", overloaded)]
    got: list[dict[str, Any]] = []
    async with client_for(pieces) as client:
        s = get_adapter("anthropic").stream(client, T, {"messages": [{"role": "user", "content": "hi"}]})
        await s.open()
        with pytest.raises(UpstreamError) as info:
            async for c in s:
                got.append(c)
    assert len(got) == 3
    assert info.value.retryable and info.value.upstream_status == 529 and info.value.status == 502
    # partial usage: input known from message_start, output estimated from the text seen
    assert s.usage is not None and s.usage.prompt_tokens == 492 and s.usage.reported is False
    assert s.usage.completion_tokens == 8  # ceil(29 chars / 4)


async def test_stream_cut_before_message_stop() -> None:
    async with client_for(STREAM[:6], exc=httpx.ReadError("peer closed")) as client:
        s = get_adapter("anthropic").stream(client, T, {"messages": [{"role": "user", "content": "hi"}]})
        await s.open()
        with pytest.raises(UpstreamError) as info:
            async for _ in s:
                pass
    assert info.value.code == "upstream_connection_error" and info.value.retryable


async def test_stream_clean_eof_without_message_stop() -> None:
    async with client_for(STREAM[:-1]) as client:  # message_delta arrived, message_stop did not
        s = get_adapter("anthropic").stream(client, T, {"messages": [{"role": "user", "content": "hi"}]})
        await s.open()
        with pytest.raises(UpstreamError, match="before it was complete"):
            async for _ in s:
                pass
    assert s.usage is not None and s.usage.completion_tokens == 89 and s.usage.reported is True


async def test_complete_and_error_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["messages"][0]["content"][0]["text"] == "fail":
            return httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error",
                                                                        "message": "Overloaded"}})
        return httpx.Response(200, json=RESPONSE_TEXT)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        out, usage = await get_adapter("anthropic").complete(client, T, {"messages": [
            {"role": "user", "content": "hi"}]})
        assert out["choices"][0]["message"]["content"] == "Hi! My name is Claude." and usage.completion_tokens == 503
        with pytest.raises(UpstreamError) as info:
            await get_adapter("anthropic").complete(client, T, {"messages": [{"role": "user", "content": "fail"}]})
    assert info.value.retryable and info.value.upstream_status == 529


def test_compaction_iterations_are_billed() -> None:
    # server-side compaction: the top-level counts leave its sampling out, usage.iterations has it
    u = usage_from_anthropic({"input_tokens": 300, "output_tokens": 50, "cache_read_input_tokens": 0,
                              "iterations": [{"type": "compaction", "input_tokens": 180_000, "output_tokens": 3_000},
                                             {"type": "message", "input_tokens": 300, "output_tokens": 50}]})
    assert (u.prompt_tokens, u.completion_tokens) == (180_300, 3_050)
    plain = usage_from_anthropic({"input_tokens": 300, "output_tokens": 50, "cache_read_input_tokens": 7})
    assert (plain.prompt_tokens, plain.completion_tokens, plain.cached_tokens) == (307, 50, 7)
