"""OpenAI Responses ⇄ internal chat: request validation and refusals, translation to the chat body
(checked against the openai SDK's chat types and our ChatRequest), and our Response objects and
typed SSE events read back by the openai SDK (``responses.create`` and the ``responses.stream``
accumulator)."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from gateway.adapters.contract import Usage
from gateway.errors import BadRequest, RateLimited
from gateway.responses import translate as T
from gateway.responses.schema import ResponsesRequest
from tests.support.chat_contract import assert_chat_body
from tests.support.sdk_replay import TWO_TOOL_CALLS, aiter_list, chat_stream, collect, openai_client, sse_json

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
EVENTS = TypeAdapter(ResponseStreamEvent)


def req(**overrides: Any) -> ResponsesRequest:
    body: dict[str, Any] = {"model": "openai/gpt-4o-mini", "input": "Hello"}
    body.update(overrides)
    return ResponsesRequest.model_validate(body)


# =============================================================================== schema
@pytest.mark.parametrize("bad", [
    {"nonsense": 1}, {"input": ""}, {"input": []}, {"temperature": 2.5}, {"max_output_tokens": 0},
    {"metadata": {f"k{i}": "v" for i in range(17)}}, {"metadata": {"k" * 65: "v"}},
    {"tools": [{**WEATHER, "name": "bad name"}]}, {"text": {"format": {"type": "json_schema", "schema": {}}}},
    {"reasoning": {"effort": "extreme"}}, {"tool_choice": "sometimes"},
])
def test_schema_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        req(**bad)


def test_schema_accepts_every_parameter_the_sdk_sends() -> None:
    import typing

    from openai.types.responses import response_create_params as params

    sdk = set(typing.get_type_hints(params.ResponseCreateParamsStreaming))
    assert sdk <= set(ResponsesRequest.model_fields), sorted(sdk - set(ResponsesRequest.model_fields))


# =============================================================================== to_chat
def test_string_input_instructions_and_sampling() -> None:
    t = T.to_chat(req(instructions="Be brief.", temperature=0.3, top_p=0.8, max_output_tokens=256, user="u-1",
                      parallel_tool_calls=False, service_tier="flex", store=True, metadata={"run": "7"}))
    assert t.body == {"model": "openai/gpt-4o-mini",
                      "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
                      "max_completion_tokens": 256, "temperature": 0.3, "top_p": 0.8, "parallel_tool_calls": False,
                      "user": "u-1", "service_tier": "flex"}
    assert t.dropped == []  # store and metadata are answered by the gateway, not dropped
    assert T.response_headers(t) == {"x-response-stored": "false"}
    assert_chat_body(t.body)


def test_items_conversation_with_tools() -> None:
    t = T.to_chat(req(tools=[WEATHER], tool_choice="auto", stream=True, input=[
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Weather in Paris and Rome?"},
            {"type": "input_image", "image_url": "https://example.com/map.png", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking both.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18°C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [
            {"type": "input_text", "text": "22°C, see chart"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]},
    ]))
    assert t.body["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/map.png",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "22°C, see chart"}]},
        {"role": "user", "content": [{"type": "image_url",
                                     "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    ]
    assert t.body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["parameters"],
        "strict": True}}]
    assert t.body["tool_choice"] == "auto"
    assert t.body["stream"] is True and t.body["stream_options"] == {"include_usage": True}
    assert t.dropped == ["reasoning items"]
    assert_chat_body(t.body)


def test_function_call_without_preceding_assistant_text_and_files() -> None:
    t = T.to_chat(req(input=[
        {"role": "user", "content": [{"type": "input_file", "filename": "a.pdf",
                                      "file_data": "data:application/pdf;base64,JVBERi0x"},
                                     {"type": "input_text", "text": "Summarise", "prompt_cache_breakpoint":
                                      {"mode": "explicit"}}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]))
    assert t.body["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert t.body["messages"][0]["content"][0] == {"type": "file", "file": {
        "file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"}}
    assert t.dropped == ["prompt_cache_breakpoint"]
    assert_chat_body(t.body, gaps={"messages[].content[].type=file"})


@pytest.mark.parametrize(("overrides", "param"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"background": True}, "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "input.0.content.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, "input.0.content.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}]},
     "input.0.content.0"),
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools.1"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools.0"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://m"}]}, "tools.0"),
    ({"tools": [{"type": "custom", "name": "grammar"}]}, "tools.0"),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                          "tools": [{"type": "web_search"}]}}, "tool_choice"),
])
def test_refusals_are_clear_400s(overrides: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        T.to_chat(req(**overrides))
    assert info.value.status == 400 and info.value.param == param
    assert info.value.message


def test_stateless_refusal_says_why() -> None:
    with pytest.raises(BadRequest) as info:
        T.to_chat(req(previous_response_id="resp_1"))
    assert "does not store responses" in info.value.message and "input" in info.value.message
    assert info.value.code == "unsupported_parameter"


def test_tool_choice_variants() -> None:
    other = {**WEATHER, "name": "get_time"}
    named = T.to_chat(req(tools=[WEATHER, other], tool_choice={"type": "function", "name": "get_time"}))
    assert named.body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert_chat_body(named.body)
    allowed = T.to_chat(req(tools=[WEATHER, other], tool_choice={
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}))
    assert [tool["function"]["name"] for tool in allowed.body["tools"]] == ["get_time"]
    assert allowed.body["tool_choice"] == "required"
    assert_chat_body(allowed.body)
    assert T.to_chat(req(tool_choice="none")).dropped == ["tool_choice"]


def test_text_format_reasoning_and_gapped_parameters() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    t = T.to_chat(req(text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True},
                            "verbosity": "low"},
                      reasoning={"effort": "high", "summary": "auto"}, safety_identifier="h-1",
                      prompt_cache_key="k-1", prompt_cache_retention="24h", truncation="auto",
                      include=["reasoning.encrypted_content"], top_logprobs=3, max_tool_calls=2))
    assert t.body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": schema, "strict": True}}
    assert t.body["reasoning_effort"] == "high" and t.body["verbosity"] == "low"
    assert (t.body["safety_identifier"], t.body["prompt_cache_key"], t.body["prompt_cache_retention"]) == (
        "h-1", "k-1", "24h")
    assert set(t.dropped) == {"reasoning.summary", "top_logprobs", "max_tool_calls", "include", "truncation"}
    assert_chat_body(t.body, gaps={"verbosity", "safety_identifier", "prompt_cache_key", "prompt_cache_retention"})
    assert T.to_chat(req(text={"format": {"type": "json_object"}})).body["response_format"] == {"type": "json_object"}
    assert "response_format" not in T.to_chat(req(text={"format": {"type": "text"}})).body
    assert T.to_chat(req(reasoning={"effort": "xhigh"})).body["reasoning_effort"] == "xhigh"


# =============================================================================== to_response
def completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "openai/gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                               "prompt_tokens_details": {"cached_tokens": 10},
                               "completion_tokens_details": {"reasoning_tokens": 4}}}


def test_response_object_is_what_the_sdk_parses() -> None:
    request = req(tools=[WEATHER], instructions="Be brief.", metadata={"run": "7"}, max_output_tokens=100,
                  text={"format": {"type": "json_object"}}, reasoning={"effort": "low"})
    out = T.to_response(completion({
        "content": "Checking.", "reasoning": "Need the tool.",
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        finish="tool_calls"), request, response_id="resp_fixed")
    resp = Response.model_validate(out)
    assert resp.id == "resp_fixed" and resp.status == "completed" and resp.object == "response"
    assert [item.type for item in resp.output] == ["reasoning", "message", "function_call"]
    assert resp.output[0].summary[0].text == "Need the tool."  # type: ignore[union-attr]
    assert resp.output_text == "Checking."
    call = resp.output[2]
    assert call.call_id == "call_9" and call.name == "get_weather" and call.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
    assert resp.usage is not None and resp.usage.input_tokens == 30 and resp.usage.output_tokens == 12
    assert resp.usage.input_tokens_details.cached_tokens == 10
    assert resp.usage.output_tokens_details.reasoning_tokens == 4
    assert resp.usage.total_tokens == 42
    assert out["store"] is False and out["metadata"] == {"run": "7"} and out["instructions"] == "Be brief."
    assert out["text"]["format"] == {"type": "json_object"} and out["reasoning"]["effort"] == "low"
    assert out["tools"][0]["name"] == "get_weather" and out["max_output_tokens"] == 100
    created = openai_client(out).responses.create(model="openai/gpt-4o-mini", input="x")
    assert created.output_text == "Checking." and created.output[2].call_id == "call_9"  # type: ignore[union-attr]


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_incomplete_responses(finish: str, reason: str) -> None:
    out = T.to_response(completion({"content": "Partial"}, finish=finish), req())
    resp = Response.model_validate(out)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == reason and resp.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert out["completed_at"] is None


def test_refusal_empty_output_and_pipeline_usage() -> None:
    usage = Usage(prompt_tokens=900, completion_tokens=80, cached_tokens=500, cache_write_tokens=100)
    out = T.to_response(completion({"content": None, "refusal": "No."}), req(), usage=usage)
    resp = Response.model_validate(out)
    assert resp.output[0].content[0].type == "refusal"  # type: ignore[union-attr]
    assert out["usage"]["input_tokens"] == 900 and out["usage"]["input_tokens_details"] == {
        "cached_tokens": 500, "cache_write_tokens": 100}
    assert out["usage"]["output_tokens_details"]["reasoning_tokens"] == 4  # from the completion's details
    empty = Response.model_validate(T.to_response(completion({"content": None}, finish="length"), req()))
    assert empty.output_text == "" and len(empty.output) == 1


# =============================================================================== to_events
USAGE = {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49, "prompt_tokens_details": {"cached_tokens": 8},
         "completion_tokens_details": {"reasoning_tokens": 3}}


async def events_for(chunks: list[dict[str, Any]], request: ResponsesRequest | None = None, **kw: Any) -> bytes:
    return await collect(T.to_events(aiter_list(chunks), request or req(stream=True), model="openai/gpt-4o-mini",
                                     **kw))


def assert_typed_events(raw: bytes) -> list[dict[str, Any]]:
    events = sse_json(raw)
    for name, data in events:
        assert name == data["type"]
        EVENTS.validate_python(data)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    return [data for _, data in events]


async def test_text_stream_event_sequence() -> None:
    raw = await events_for(chat_stream({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"},
                                       usage=USAGE), response_id="resp_s1")
    events = assert_typed_events(raw)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["id"] == "resp_s1" and final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 40 and final["usage"]["output_tokens_details"]["reasoning_tokens"] == 3


async def test_stream_read_by_the_sdk_stream_helper() -> None:
    raw = await events_for(chat_stream(
        {"role": "assistant", "content": ""}, {"reasoning": "Think"}, {"reasoning": "ing"}, {"content": "Calling."},
        *TWO_TOOL_CALLS,
        finish="tool_calls", usage=USAGE), req(stream=True, tools=[WEATHER]))
    assert_typed_events(raw)
    client = openai_client(raw)
    deltas: list[str] = []
    with client.responses.stream(model="openai/gpt-4o-mini", input="x", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == "Calling." and final.output_text == "Calling."
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.output[0].summary[0].text == "Thinking"  # type: ignore[union-attr]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [("call_1", '{"city":"Paris"}'),  # type: ignore[union-attr]
                                                         ("call_2", '{"city":"Rome"}')]
    assert final.usage is not None and final.usage.output_tokens == 9


async def test_long_stream_texts_are_whole_in_every_done_event_and_the_final_response() -> None:
    """Thousands of deltas per item (reasoning, text, a refusal, a call's arguments), and arguments for
    a call already closed (only the final Response can carry those): each `.done` event, each
    `output_item.done` and the final Response hold the whole text, in order."""
    n = 3000
    reasoning = [{"reasoning": f"r{i} "} for i in range(n)]
    text = [{"content": f"t{i} "} for i in range(n)]
    refusal = [{"refusal": f"x{i} "} for i in range(n)]
    args = [{"tool_calls": [{"index": 0, "function": {"arguments": f"{i},"}}]} for i in range(n)]
    late = {"tool_calls": [{"index": 0, "function": {"arguments": "late"}}]}
    second = {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "get_weather", "arguments": "{}"}}]}
    first = {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": "["}}]}
    raw = await events_for(chat_stream(*reasoning, *text, *refusal, first, *args, second, late,
                                       finish="tool_calls", usage=USAGE), req(stream=True, tools=[WEATHER]))
    events = assert_typed_events(raw)
    want_reasoning = "".join(d["reasoning"] for d in reasoning)
    want_text = "".join(d["content"] for d in text)
    want_refusal = "".join(d["refusal"] for d in refusal)
    want_args = "[" + "".join(f"{i}," for i in range(n))
    done = {e["type"]: e for e in events if e["type"].endswith(".done") and e["type"] != "response.output_item.done"}
    assert done["response.reasoning_summary_text.done"]["text"] == want_reasoning
    assert done["response.output_text.done"]["text"] == want_text
    assert done["response.refusal.done"]["refusal"] == want_refusal
    calls = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [c["arguments"] for c in calls] == [want_args, "{}"]  # "late" came after call_1 was closed
    final = events[-1]["response"]
    assert final["output"][0]["summary"][0]["text"] == want_reasoning
    assert final["output"][1]["content"] == [{"type": "output_text", "text": want_text, "annotations": [],
                                              "logprobs": []}, {"type": "refusal", "refusal": want_refusal}]
    assert [o["arguments"] for o in final["output"][2:]] == [want_args + "late", "{}"]


async def test_stream_read_by_create_with_stream_true() -> None:
    raw = await events_for(chat_stream({"content": "Hi"}, usage=USAGE))
    events = list(openai_client(raw).responses.create(model="m", input="x", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hi"  # type: ignore[union-attr]


async def test_stream_incomplete_and_pipeline_usage() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=16, cached_tokens=0)
    raw = await events_for(chat_stream({"content": "cut"}, finish="length", usage=USAGE), final_usage=lambda: usage)
    events = assert_typed_events(raw)
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["input_tokens"] == 100 and final["usage"]["output_tokens"] == 16


async def test_refusal_stream() -> None:
    raw = await events_for(chat_stream({"refusal": "I can't"}, {"refusal": " help."}, usage=USAGE))
    events = assert_typed_events(raw)
    kinds = [e["type"] for e in events]
    assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]


@pytest.mark.parametrize(("failure", "code"), [
    ({"error": {"message": "upstream broke", "type": "api_error", "code": "upstream_error"}}, "server_error"),
    ({"error": {"message": "slow down", "type": "rate_limit_error", "code": "upstream_rate_limited"}},
     "rate_limit_exceeded"),
])
async def test_stream_failure_mid_way(failure: dict[str, Any], code: str) -> None:
    raw = await events_for([*chat_stream({"content": "part"})[:-1], failure])
    events = assert_typed_events(raw)
    assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == code
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "part"
    with pytest.raises(RuntimeError):  # the SDK's helper: no response.completed
        with openai_client(raw).responses.stream(model="m", input="x") as stream:
            stream.get_final_response()


async def test_gateway_error_raised_by_the_iterator() -> None:
    async def broken() -> Any:
        yield chat_stream({"content": "a"})[0]
        raise RateLimited()

    events = assert_typed_events(await collect(T.to_events(broken(), req(stream=True), model="m")))
    assert events[-1]["response"]["error"]["code"] == "rate_limit_exceeded"
