"""Anthropic Messages ⇄ internal chat: request validation, translation to the chat body (checked
against the openai SDK's own types and our ChatRequest), the native passthrough's refusals and
headers, the stream meter, and our Message / SSE events read back by the official anthropic SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter, ValidationError

from gateway.adapters.contract import Usage
from gateway.errors import (
    BadRequest,
    InsufficientCredits,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.messages import translate as T
from gateway.messages.schema import CountTokensRequest, MessagesRequest
from tests.support.chat_contract import assert_chat_body
from tests.support.sdk_replay import TWO_TOOL_CALLS, aiter_list, anthropic_client, chat_stream, collect, sse_json

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
PDF = "JVBERi0xLjQKJeLjz9MK"
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def req(**overrides: Any) -> MessagesRequest:
    body: dict[str, Any] = {"model": "openai/gpt-4o-mini", "max_tokens": 1024,
                            "messages": [{"role": "user", "content": "Hello"}]}
    body.update(overrides)
    return MessagesRequest.model_validate(body)


# =============================================================================== schema
@pytest.mark.parametrize("bad", [
    {"nonsense": 1},                                                         # unknown top-level field
    {"max_tokens": 0},
    {"messages": []},
    {"temperature": 1.5},                                                     # Anthropic's range is 0..1
    {"thinking": {"type": "enabled", "budget_tokens": 2048}},                 # budget must be < max_tokens
    {"thinking": {"type": "enabled"}},
    {"tool_choice": {"type": "tool"}},
    {"tools": [{"name": "x"}]},                                               # a custom tool needs input_schema
    {"tools": [WEATHER, WEATHER]},
    {"metadata": {"user_id": "u", "other": 1}},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": PNG}}]}]},
    {"messages": [{"role": "user", "content": "hi", "name": "x"}]},
])
def test_schema_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        req(**bad)


def test_schema_keeps_unknown_block_types_and_new_block_fields() -> None:
    r = req(messages=[{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_fetch", "input": {"url": "https://x"}},
        {"type": "text", "text": "ok", "citations": [{"type": "char_location", "cited_text": "a"}]}]}])
    dumped = r.model_dump(mode="json", exclude_unset=True)
    assert dumped["messages"][0]["content"][0] == {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_fetch",
                                                   "input": {"url": "https://x"}}
    assert dumped["messages"][0]["content"][1]["citations"] == [{"type": "char_location", "cited_text": "a"}]


def test_schema_errors_become_a_400_in_anthropic_shape() -> None:
    from gateway.translation import bad_request

    with pytest.raises(ValidationError) as info:
        MessagesRequest.model_validate_json(b'{"model": "m", "max_tokens": 0, "messages": []}')
    err = bad_request(info.value)
    assert err.status == 400 and err.param == "messages" and "max_tokens" in err.message
    assert T.error_body(err)["error"]["type"] == "invalid_request_error"
    with pytest.raises(ValidationError) as info:
        MessagesRequest.model_validate_json(b"{not json")
    assert bad_request(info.value).message == "Request body is not valid JSON."


# =============================================================================== to_chat
def test_claude_code_style_conversation() -> None:
    r = req(
        stream=True, max_tokens=8192, temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END"],
        metadata={"user_id": "user_abc"},
        system=[{"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Project rules.", "cache_control": {"type": "ephemeral"}}],
        tools=[WEATHER],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                 "cache_control": {"type": "ephemeral", "ttl": "5m"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call the tool.", "signature": "EqQBCkYIBxgC"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C, sunny"},
                {"type": "text", "text": "Thanks!"}]},
        ])
    t = T.to_chat(r)
    assert t.body == {
        "model": "openai/gpt-4o-mini",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are Claude Code."},
                                           {"type": "text", "text": "Project rules.",
                                            "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_01A", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "18°C, sunny"},
            {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"],
                                                    "description": "Weather in a city"}}],
        "tool_choice": "auto", "parallel_tool_calls": False,
        "max_completion_tokens": 8192, "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "user": "user_abc",
    }
    assert t.dropped == ["image cache_control", "thinking blocks", "top_k"]
    assert t.headers() == {"x-dropped-params": "image cache_control, thinking blocks, top_k"}
    assert_chat_body(t.body)


def test_system_string_and_system_role_messages() -> None:
    t = T.to_chat(req(system="Be brief.", messages=[{"role": "system", "content": "Extra."},
                                                   {"role": "user", "content": "hi"}]))
    assert t.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Extra."},
                                  {"role": "user", "content": "hi"}]
    assert_chat_body(t.body)


def test_images_by_url_and_documents() -> None:
    t = T.to_chat(req(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Plain doc."}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "Block doc."}]}},
        {"type": "document", "title": "spec.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                             "data": PDF}},
        {"type": "text", "text": "Summarise."}]}]))
    assert t.body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "Plain doc."},
        {"type": "text", "text": "Block doc."},
        {"type": "file", "file": {"filename": "spec.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "text", "text": "Summarise."},
    ]
    # PDFs need chat `file` parts, which ChatRequest does not accept yet: a named known gap
    assert_chat_body(t.body, gaps={"messages[].content[].type=file"})


@pytest.mark.parametrize(("block", "code"), [
    ({"type": "image", "source": {"type": "file", "file_id": "file_011"}}, "unsupported_content"),
    ({"type": "document", "source": {"type": "url", "url": "https://x/y.pdf"}}, "unsupported_content"),
    ({"type": "document", "source": {"type": "file", "file_id": "file_011"}}, "unsupported_content"),
    ({"type": "container_upload", "file_id": "file_011"}, "unsupported_content"),
])
def test_unmappable_content_is_a_clear_400(block: dict[str, Any], code: str) -> None:
    with pytest.raises(BadRequest) as info:
        T.to_chat(req(messages=[{"role": "user", "content": [block]}]))
    assert info.value.code == code and info.value.param is not None and info.value.param.startswith("messages.0")


def test_tool_results_with_images_errors_and_parallel_calls() -> None:
    t = T.to_chat(req(tools=[WEATHER], messages=[
        {"role": "user", "content": "Two cities"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "A"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "B"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "map:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": "city not found",
             "cache_control": {"type": "ephemeral"}}]},
    ]))
    msgs = t.body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "user"]
    assert msgs[1]["content"] is None and [c["id"] for c in msgs[1]["tool_calls"]] == ["toolu_1", "toolu_2"]
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "map:"}]}
    assert msgs[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": "city not found"}
    assert msgs[4] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}
    assert t.dropped == ["tool_result.is_error", "tool_result.cache_control"]
    assert_chat_body(t.body)


def test_tool_blocks_in_the_wrong_role_are_refused() -> None:
    with pytest.raises(BadRequest):
        T.to_chat(req(messages=[{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "x", "input": {}}]}]))
    with pytest.raises(BadRequest):
        T.to_chat(req(messages=[{"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]))


@pytest.mark.parametrize(("choice", "expected", "parallel"), [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "none"}, "none", None),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
])
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    t = T.to_chat(req(tools=[WEATHER], tool_choice=choice))
    assert t.body["tool_choice"] == expected
    assert t.body.get("parallel_tool_calls") == parallel
    assert_chat_body(t.body)


def test_tool_choice_without_tools_is_dropped_and_tool_extras_named() -> None:
    assert T.to_chat(req(tool_choice={"type": "auto"})).dropped == ["tool_choice"]
    t = T.to_chat(req(tools=[{**WEATHER, "cache_control": {"type": "ephemeral"}, "strict": True}]))
    assert t.body["tools"][0]["function"]["strict"] is True
    assert t.dropped == ["tools[].cache_control"]


def test_anthropic_defined_tools_need_anthropic_and_priced_server_tools_are_refused() -> None:
    bash = {"type": "bash_20250124", "name": "bash"}
    with pytest.raises(BadRequest) as info:
        T.to_chat(req(tools=[bash]))
    assert info.value.code == "unsupported_tool"
    assert T.native_body(req(tools=[bash]), "claude-x").body["tools"] == [bash]  # fine on Anthropic itself
    for server_tool in ({"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                        {"type": "code_execution_20250825", "name": "code_execution"}):
        for translate in (T.to_chat, lambda r: T.native_body(r, "claude-x")):
            with pytest.raises(BadRequest) as info:
                translate(req(tools=[server_tool]))
            assert info.value.code == "unsupported_tool" and "billed per use" in info.value.message


def test_long_tool_names_and_too_many_stop_sequences_are_clear_400s() -> None:
    with pytest.raises(BadRequest, match="64 characters"):
        T.to_chat(req(tools=[{**WEATHER, "name": "t" * 65}]))
    with pytest.raises(BadRequest, match="stop_sequences"):
        T.to_chat(req(stop_sequences=["a", "b", "c", "d", "e"]))


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (2048, "low"), (2049, "medium"), (8192, "medium"),
                                                (8193, "high"), (30000, "high")])
def test_thinking_budget_becomes_reasoning_effort(budget: int, effort: str) -> None:
    t = T.to_chat(req(max_tokens=32000, thinking={"type": "enabled", "budget_tokens": budget}))
    assert t.body["reasoning_effort"] == effort and t.body["max_completion_tokens"] == 32000
    assert_chat_body(t.body)


def test_effort_and_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    t = T.to_chat(req(thinking={"type": "adaptive", "display": "summarized"},
                      output_config={"effort": "xhigh", "format": {"type": "json_schema", "schema": schema}}))
    assert t.body["reasoning_effort"] == "xhigh"
    assert t.body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert t.dropped == ["thinking.display"]
    assert_chat_body(t.body, gaps={"reasoning_effort=xhigh"})
    assert "reasoning_effort" not in T.to_chat(req(thinking={"type": "disabled"})).body


def test_anthropic_only_options_are_dropped_and_named() -> None:
    t = T.to_chat(req(service_tier="auto", speed="fast", inference_geo="us", container="c", diagnostics={},
                      context_management={"edits": []}, mcp_servers=[{"type": "url", "url": "https://m"}],
                      workspace_id="w", user_profile_id="p", cache_control={"type": "ephemeral"}))
    assert set(t.dropped) == {"speed", "context_management", "mcp_servers", "user_profile_id", "workspace_id",
                              "cache_control", "service_tier", "inference_geo", "container", "diagnostics"}
    assert set(t.body) == {"model", "messages", "max_completion_tokens"}


def test_non_streaming_body_has_no_stream_options() -> None:
    body = T.to_chat(req()).body
    assert "stream" not in body and "stream_options" not in body
    assert_chat_body(body)


# =============================================================================== native
def test_native_body_forwards_every_field_unchanged_but_the_model() -> None:
    raw = {"model": "anthropic/claude-sonnet-4", "max_tokens": 2048, "stream": True,
           "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
           "thinking": {"type": "enabled", "budget_tokens": 1024},
           "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                      "cache_control": {"type": "ephemeral"}}]},
                        {"role": "assistant", "content": [
                            {"type": "thinking", "thinking": "hmm", "signature": "EqQBCkYIBxgCKkAx"},
                            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3"},
                            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "P"}}]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                      "content": "sunny"}]}],
           "tools": [WEATHER], "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
           "metadata": {"user_id": "u"}, "top_k": 5}
    t = T.native_body(MessagesRequest.model_validate(raw), "claude-sonnet-4-20250514")
    assert t.body == {**raw, "model": "claude-sonnet-4-20250514", "service_tier": "standard_only"}
    assert t.dropped == []


@pytest.mark.parametrize("asked", [None, "auto", "standard_only"])
def test_native_body_always_asks_for_the_standard_tier(asked: str | None) -> None:
    """Our price is Anthropic's standard one: "auto" (also Anthropic's default when the field is
    absent) would use Priority Tier capacity, billed at Priority prices, whenever the organisation
    has some. count_tokens takes no tier."""
    raw = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    if asked is not None:
        raw["service_tier"] = asked
    assert T.native_body(MessagesRequest.model_validate(raw), "claude-x").body["service_tier"] == "standard_only"
    counted = T.native_body(CountTokensRequest.model_validate(
        {k: v for k, v in raw.items() if k not in ("max_tokens", "service_tier")}), "claude-x")
    assert "service_tier" not in counted.body


def test_native_body_refuses_premium_options_and_strips_org_fields() -> None:
    for field, value in (("speed", "fast"), ("inference_geo", "us"), ("container", "container_1")):
        with pytest.raises(BadRequest) as info:
            T.native_body(req(**{field: value}), "claude-x")
        assert info.value.param == field and info.value.code == "unsupported_parameter"
    assert "inference_geo" in T.native_body(req(inference_geo="global", speed="standard"), "claude-x").body
    t = T.native_body(req(workspace_id="wrkspc_1", user_profile_id="prof_1"), "claude-x")
    assert "workspace_id" not in t.body and "user_profile_id" not in t.body
    assert t.dropped == ["workspace_id", "user_profile_id"]


def test_native_body_clamps_max_tokens_to_the_limit_the_hold_used() -> None:
    r = req(max_tokens=128000, thinking={"type": "enabled", "budget_tokens": 100000})
    t = T.native_body(r, "claude-x", max_tokens_limit=64000)
    assert t.body["max_tokens"] == 64000 and t.body["thinking"]["budget_tokens"] == 63999
    assert t.dropped == ["max_tokens above 64000"]
    small = T.native_body(req(max_tokens=100), "claude-x", max_tokens_limit=64000)
    assert small.body["max_tokens"] == 100 and small.dropped == []


def test_native_body_strips_thinking_another_model_produced() -> None:
    t = T.native_body(req(messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "from gpt", "signature": ""},
                                          {"type": "text", "text": "hello"}]},
        {"role": "user", "content": "again"}]), "claude-x")
    assert t.body["messages"][1]["content"] == [{"type": "text", "text": "hello"}]
    assert t.dropped == ["thinking blocks without a signature"]


def test_native_count_tokens_body() -> None:
    r = CountTokensRequest.model_validate({"model": "anthropic/claude-sonnet-4", "system": "s",
                                           "messages": [{"role": "user", "content": "hi"}]})
    assert T.native_body(r, "claude-x").body == {"model": "claude-x", "system": "s",
                                                 "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValidationError):  # not a count_tokens field
        CountTokensRequest.model_validate({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
                                                                                      "content": "x"}]})


def test_native_headers() -> None:
    headers, dropped = T.native_headers({
        "Anthropic-Version": "2023-06-01", "x-api-key": "sk-mlp-secret",
        "anthropic-beta": "claude-code-20250219, interleaved-thinking-2025-05-14,context-1m-2025-08-07,"
                          "files-api-2025-04-14,fine-grained-tool-streaming-2025-05-14,,future-thing-2030-01-01"})
    assert headers == {"anthropic-version": "2023-06-01",
                       "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
                                         "fine-grained-tool-streaming-2025-05-14"}
    assert dropped == ["anthropic-beta: context-1m-2025-08-07", "anthropic-beta: files-api-2025-04-14",
                       "anthropic-beta: future-thing-2030-01-01"]
    assert T.native_headers({}) == ({"anthropic-version": "2023-06-01"}, [])
    assert T.mode_for("anthropic") == "native"
    assert {T.mode_for(p) for p in ("openai", "openrouter", "gemini", "compat")} == {"translate"}


# =============================================================================== to_message
def completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "openai/gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                               "prompt_tokens_details": {"cached_tokens": 10}}}


def test_to_message_text_thinking_and_tools_parse_with_the_sdk() -> None:
    out = T.to_message(completion({
        "content": "Let me check.", "reasoning": "The user wants weather.",
        "reasoning_details": [{"type": "reasoning.text", "text": "…", "signature": "sig-1"}],
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                       {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{bad"}}]},
        finish="tool_calls"))
    msg = Message.model_validate(out)
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert msg.content[0].thinking == "The user wants weather." and msg.content[0].signature == "sig-1"
    assert msg.content[2].input == {"city": "Paris"} and msg.content[2].id == "call_1"
    assert msg.content[3].input == {"_raw": "{bad"}
    assert msg.stop_reason == "tool_use" and msg.id.startswith("msg_") and msg.model == "openai/gpt-4o-mini"
    assert out["usage"] == {"input_tokens": 20, "output_tokens": 12, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 10}


@pytest.mark.parametrize(("finish", "reason"), [("stop", "end_turn"), ("length", "max_tokens"),
                                                ("tool_calls", "tool_use"), ("content_filter", "refusal"),
                                                (None, "end_turn")])
def test_stop_reasons(finish: str | None, reason: str) -> None:
    assert T.to_message(completion({"content": "x"}, finish=finish))["stop_reason"] == reason  # type: ignore[arg-type]


def test_to_message_prefers_the_pipeline_usage_and_handles_refusals() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=50, cached_tokens=600, cache_write_tokens=300)
    out = T.to_message(completion({"content": None, "refusal": "I can't help with that."}, finish="content_filter"),
                       usage=usage, model="openai/gpt-4o", message_id="msg_fixed")
    assert out["usage"] == {"input_tokens": 100, "output_tokens": 50, "cache_creation_input_tokens": 300,
                            "cache_read_input_tokens": 600}
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert (out["id"], out["model"], out["stop_reason"]) == ("msg_fixed", "openai/gpt-4o", "refusal")
    Message.model_validate(out)
    client = anthropic_client(out)
    created = client.messages.create(model="openai/gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert created.content[0].text == "I can't help with that." and created.usage.cache_read_input_tokens == 600


# =============================================================================== to_events
STREAM_USAGE = {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49,
                "prompt_tokens_details": {"cached_tokens": 8}}


async def events_for(chunks: list[dict[str, Any]], **kw: Any) -> bytes:
    return await collect(T.to_events(aiter_list(chunks), model="openai/gpt-4o-mini", **kw))


async def test_stream_text_events_in_order_and_valid() -> None:
    raw = await events_for(chat_stream({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"},
                                       usage=STREAM_USAGE), input_tokens=41, message_id="msg_s1")
    events = sse_json(raw)
    assert [name for name, _ in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                            "content_block_delta", "content_block_stop", "message_delta",
                                            "message_stop"]
    assert all(name == data["type"] for name, data in events)
    adapter = TypeAdapter(RawMessageStreamEvent)
    for name, data in events:
        if name != "ping":
            adapter.validate_python(data)
    assert events[0][1]["message"]["usage"]["input_tokens"] == 41 and events[0][1]["message"]["id"] == "msg_s1"
    assert events[6][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"input_tokens": 32, "output_tokens": 9, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 8}}


async def test_stream_read_by_the_anthropic_sdk_helper() -> None:
    raw = await events_for(chat_stream(
        {"role": "assistant", "content": ""}, {"reasoning": "Think"}, {"reasoning": "ing."},
        {"content": "Calling."},
        *TWO_TOOL_CALLS,
        finish="tool_calls", usage=STREAM_USAGE))
    client = anthropic_client(raw)
    with client.messages.stream(model="openai/gpt-4o-mini", max_tokens=100,
                                messages=[{"role": "user", "content": "x"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Calling."
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == "Thinking."
    assert final.content[2].input == {"city": "Paris"} and final.content[3].input == {"city": "Rome"}
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_input_tokens) == (32, 9, 8)


async def test_stream_final_usage_from_the_pipeline_wins() -> None:
    usage = Usage(prompt_tokens=500, completion_tokens=70, cached_tokens=100, cache_write_tokens=200)
    raw = await events_for(chat_stream({"content": "x"}, finish="length", usage=STREAM_USAGE),
                           final_usage=lambda: usage)
    delta = next(data for name, data in sse_json(raw) if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"] == {"input_tokens": 200, "output_tokens": 70, "cache_creation_input_tokens": 200,
                              "cache_read_input_tokens": 100}


async def test_stream_through_chat_sse_bytes() -> None:
    """The surface sits on the pipeline's existing SSE bytes unchanged (chat_chunks reads them)."""
    from gateway.translation import chat_chunks

    chunks = chat_stream({"role": "assistant", "content": ""}, {"content": "Hi"}, usage=STREAM_USAGE)
    pipeline_bytes = [b""] + [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    raw = await collect(T.to_events(chat_chunks(aiter_list(pipeline_bytes)), model="m"))
    final = anthropic_client(raw).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    types = [event.type for event in final]
    assert types == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]


@pytest.mark.parametrize(("error", "sdk_error"), [
    ({"error": {"message": "Provider overloaded", "type": "api_error", "code": "upstream_unavailable"}},
     "overloaded_error"),
    ({"error": {"message": "slow", "type": "api_error", "code": "upstream_timeout"}}, "timeout_error"),
    ({"error": {"message": "boom", "type": "api_error", "code": "upstream_error"}}, "api_error"),
])
async def test_stream_error_mid_way(error: dict[str, Any], sdk_error: str) -> None:
    chunks = [*chat_stream({"content": "partial"})[:-1], error]
    raw = await events_for(chunks)
    events = sse_json(raw)
    assert [name for name, _ in events][-3:] == ["content_block_delta", "content_block_stop", "error"]
    assert events[-1][1]["error"]["type"] == sdk_error
    with pytest.raises(anthropic.APIStatusError) as info:
        with anthropic_client(raw).messages.stream(model="m", max_tokens=5,
                                                   messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_message()
    assert info.value.body["error"]["type"] == sdk_error  # type: ignore[index]


async def test_stream_gateway_error_raised_by_the_iterator() -> None:
    async def broken() -> Any:
        yield chat_stream({"content": "a"})[0]
        raise UpstreamTimeout()

    raw = await collect(T.to_events(broken(), model="m"))
    assert sse_json(raw)[-1] == ("error", {"type": "error", "error": {
        "type": "timeout_error", "message": "The upstream provider did not answer in time.",
        "code": "upstream_timeout"}})


# =============================================================================== errors
@pytest.mark.parametrize(("err", "kind", "sdk_class"), [
    (BadRequest("bad"), "invalid_request_error", anthropic.BadRequestError),
    (InsufficientCredits(balance="0.10000000", required="0.50000000"), "billing_error", anthropic.APIStatusError),
    (RateLimited(headers={"retry-after": "3"}), "rate_limit_error", anthropic.RateLimitError),
    (ServiceUnavailable(), "overloaded_error", anthropic.InternalServerError),
    (UpstreamError(), "api_error", anthropic.InternalServerError),
    (UpstreamTimeout(), "timeout_error", anthropic.InternalServerError),
])
def test_errors_in_anthropic_shape_read_by_the_sdk(err: Any, kind: str, sdk_class: type[Exception]) -> None:
    body = T.error_body(err, request_id="req_1")
    assert body["type"] == "error" and body["error"]["type"] == kind and body["request_id"] == "req_1"
    assert body["error"]["message"] == err.message
    response = T.error_response(err, "req_1")
    assert response.status_code == err.status and response.headers["request-id"] == "req_1"
    for name, value in err.headers.items():
        assert response.headers[name] == value
    with pytest.raises(sdk_class) as info:
        anthropic_client(json.loads(bytes(response.body)), status=err.status).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == err.status  # type: ignore[attr-defined]
    assert info.value.body["error"]["type"] == kind  # type: ignore[attr-defined]
    if isinstance(err, InsufficientCredits):
        assert body["error"]["balance"] == "0.10000000" and body["error"]["required"] == "0.50000000"


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (402, "billing_error"), (403, "permission_error"),
                                              (404, "not_found_error"), (405, "invalid_request_error"),
                                              (413, "request_too_large"), (422, "invalid_request_error"),
                                              (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
                                              (503, "overloaded_error"), (504, "timeout_error"),
                                              (529, "overloaded_error"), (599, "api_error")])
def test_error_type_per_status(status: int, kind: str) -> None:
    assert T.error_type(status) == kind


# =============================================================================== count_tokens
def test_count_tokens_estimate_grows_with_the_prompt_and_survives_native_only_content() -> None:
    small = T.count_tokens_estimate(CountTokensRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    large = T.count_tokens_estimate(CountTokensRequest.model_validate(
        {"model": "m", "system": "x" * 4000, "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}))
    assert 0 < small["input_tokens"] < large["input_tokens"] and large["input_tokens"] >= 1000
    native_only = CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://x/" + "y" * 400 + ".pdf"}}]}]})
    assert T.count_tokens_estimate(native_only)["input_tokens"] >= 100


