"""Gemini adapter: OpenAI → generateContent translation, response / SSE-chunk translation
(payloads shaped like recorded Gemini API traffic), schema reduction, thought signatures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.adapters import get_adapter
from gateway.adapters.contract import Target
from gateway.adapters.gemini import (
    THOUGHT_SEP,
    build_body,
    split_call_id,
    to_gemini_schema,
    translate_response,
)
from gateway.errors import UpstreamError

T = Target("gemini", "gemini-2.5-flash", "google/gemini-2.5-flash",
           "https://generativelanguage.googleapis.com/v1beta", "AIza-test-key")
TOOLS = [{"type": "function", "function": {
    "name": "weather", "description": "Get weather information for a location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "the city"}},
                   "required": ["location"], "additionalProperties": False}}}]


def test_request_translation() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": [
                {"type": "text", "text": "What's the weather in Florence,Italy?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/pic.png"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_1{THOUGHT_SEP}CoUDAdHtim8N4H", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"location\": \"Florence, Italy\"}"}}]},
            {"role": "tool", "tool_call_id": f"call_1{THOUGHT_SEP}CoUDAdHtim8N4H",
             "content": "{\"temp_c\": 21}"},
            {"role": "tool", "tool_call_id": "call_2", "name": "other", "content": "plain text"},
            {"role": "user", "content": "thanks"},
        ],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "temperature": 0.3, "top_p": 0.8, "max_tokens": 4000, "stop": ["\n\n"], "seed": 42,
        "response_format": {"type": "json_object"},
        "models": ["ignored"], "user": "u1",
    }
    out = build_body(T, body)
    assert out["systemInstruction"] == {"parts": [{"text": "You are a helpful assistant"}]}
    assert out["contents"] == [
        {"role": "user", "parts": [
            {"text": "What's the weather in Florence,Italy?"},
            {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
            {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/pic.png"}},
        ]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"location": "Florence, Italy"}},
             "thoughtSignature": "CoUDAdHtim8N4H"},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "weather", "response": {"temp_c": 21}}},
            {"functionResponse": {"name": "other", "response": {"result": "plain text"}}},
            {"text": "thanks"},
        ]},
    ]
    assert out["tools"] == [{"functionDeclarations": [{
        "name": "weather", "description": "Get weather information for a location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string",
                                                                     "description": "the city"}},
                       "required": ["location"]}}]}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}
    assert out["generationConfig"] == {"temperature": 0.3, "topP": 0.8, "maxOutputTokens": 4000,
                                       "stopSequences": ["\n\n"], "seed": 42,
                                       "responseMimeType": "application/json"}
    assert "models" not in out and "user" not in out


@pytest.mark.parametrize(("choice", "cfg"), [
    ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
    ("none", {"functionCallingConfig": {"mode": "NONE"}}),
    ("required", {"functionCallingConfig": {"mode": "ANY"}}),
    (None, None),
])
def test_tool_choice(choice: Any, cfg: Any) -> None:
    out = build_body(T, {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "tool_choice": choice})
    assert out.get("toolConfig") == cfg


def test_tool_without_parameters_and_minimal_request() -> None:
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
    out = build_body(T, {"messages": [{"role": "user", "content": "time?"}], "tools": tools})
    assert out["tools"] == [{"functionDeclarations": [{"name": "now"}]}]
    assert "generationConfig" not in out and "systemInstruction" not in out


def test_json_schema_response_format() -> None:
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]},
                             "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
                             "kind": {"const": "person"}},
              "required": ["name"], "additionalProperties": False,
              "$defs": {"tag": {"type": "string", "enum": ["a", "b"]}}}
    out = build_body(T, {"messages": [{"role": "user", "content": "x"}], "n": 2,
                         "response_format": {"type": "json_schema",
                                             "json_schema": {"name": "p", "schema": schema, "strict": True}}})
    gen = out["generationConfig"]
    assert gen["responseMimeType"] == "application/json" and gen["candidateCount"] == 2
    assert gen["responseSchema"] == {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "nullable": True},
                       "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
                       "kind": {"type": "string", "enum": ["person"]}},
        "required": ["name"],
    }


def test_schema_anyof_null_collapses() -> None:
    s = {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "d"}
    assert to_gemini_schema(s) == {"type": "string", "nullable": True, "description": "d"}


def test_split_call_id() -> None:
    assert split_call_id(f"call_x{THOUGHT_SEP}SIG==") == ("call_x", "SIG==")
    assert split_call_id("call_y") == ("call_y", None)
    assert split_call_id(None) == (None, None)


# Recorded gemini-2.5-pro tool-call answer (thoughtSignature shortened)
RESPONSE_TOOL = {
    "candidates": [{"content": {"parts": [{"functionCall": {"name": "weather",
                                                            "args": {"location": "Florence, Italy"}},
                                           "thoughtSignature": "CoUDAdHtim8N4HKZPr0LvOdoOCBZ"}],
                                "role": "model"},
                    "finishReason": "STOP", "index": 0,
                    "finishMessage": "Model generated function call(s)."}],
    "usageMetadata": {"promptTokenCount": 54, "candidatesTokenCount": 15, "totalTokenCount": 162,
                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 54}], "thoughtsTokenCount": 93},
    "modelVersion": "gemini-2.5-pro",
    "responseId": "5-_MaLWhAbbQz7IPk9m26QE",
}
RESPONSE_TEXT = {
    "candidates": [{"content": {"parts": [{"text": "thinking...", "thought": True},
                                          {"text": "Hello! "}, {"text": "How can I help?"}], "role": "model"},
                    "finishReason": "MAX_TOKENS", "index": 0}],
    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20, "totalTokenCount": 120,
                      "cachedContentTokenCount": 64},
    "modelVersion": "gemini-2.5-flash",
    "responseId": "abc",
}


def test_response_tool_call() -> None:
    out, usage = translate_response(T, {"messages": []}, RESPONSE_TOOL)
    assert out["model"] == "google/gemini-2.5-flash" and out["id"] == "5-_MaLWhAbbQz7IPk9m26QE"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"] == {"name": "weather",
                                                               "arguments": '{"location": "Florence, Italy"}'}
    assert split_call_id(call["id"])[1] == "CoUDAdHtim8N4HKZPr0LvOdoOCBZ"  # signature rides in the id
    # thoughts count as completion tokens
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (54, 108, 0)
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 93}
    # the id round-trips: the signature goes back on the functionCall part
    back = build_body(T, {"messages": [{"role": "user", "content": "w?"}, {**choice["message"]},
                                       {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]})
    assert back["contents"][1]["parts"][0]["thoughtSignature"] == "CoUDAdHtim8N4HKZPr0LvOdoOCBZ"
    assert back["contents"][2]["parts"][0]["functionResponse"]["name"] == "weather"


def test_response_text_skips_thoughts() -> None:
    out, usage = translate_response(T, {"messages": []}, RESPONSE_TEXT)
    assert out["choices"][0]["message"]["content"] == "Hello! How can I help?"
    assert out["choices"][0]["finish_reason"] == "length"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reported) == (100, 20, 64, True)


@pytest.mark.parametrize(("reason", "finish"), [("STOP", "stop"), ("MAX_TOKENS", "length"),
                                                ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
                                                ("BLOCKLIST", "content_filter"), ("OTHER", "stop")])
def test_finish_reasons(reason: str, finish: str) -> None:
    data = {**RESPONSE_TEXT, "candidates": [{**RESPONSE_TEXT["candidates"][0], "finishReason": reason}]}
    assert translate_response(T, {"messages": []}, data)[0]["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_and_missing_usage() -> None:
    data = {"promptFeedback": {"blockReason": "SAFETY"}, "modelVersion": "gemini-2.5-flash"}
    out, usage = translate_response(T, {"messages": [{"role": "user", "content": "bad"}]}, data)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] == ""
    assert usage.reported is False and usage.prompt_tokens > 0


def test_multiple_candidates() -> None:
    data = {"candidates": [{"content": {"parts": [{"text": "A"}], "role": "model"}, "finishReason": "STOP",
                            "index": 0},
                           {"content": {"parts": [{"text": "B"}], "role": "model"}, "finishReason": "STOP",
                            "index": 1}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}}
    out, _ = translate_response(T, {"messages": []}, data)
    assert [(c["index"], c["message"]["content"]) for c in out["choices"]] == [(0, "A"), (1, "B")]


# --------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"


def frag(text: str | None, n: int, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": [{"text": text}] if text is not None else [], "role": "model"},
                            "index": 0}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": n, "totalTokenCount": 8 + n,
                              "thoughtsTokenCount": 12},
            "modelVersion": "gemini-2.5-flash", "responseId": "resp-1", **extra}


class Chunks(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes], exc: Exception | None = None) -> None:
        self.pieces, self.exc = pieces, exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p
        if self.exc is not None:
            raise self.exc


def client_for(pieces: list[bytes], exc: Exception | None = None,
               seen: list[httpx.Request] | None = None, status: int = 200) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, stream=Chunks(pieces, exc))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_stream_translation() -> None:
    seen: list[httpx.Request] = []
    pieces = [sse(frag("The", 1)), sse(frag(" quick brown", 3)), sse(frag(" fox.", 5, "STOP"))]
    async with client_for(pieces, seen=seen) as client:
        s = get_adapter("gemini").stream(client, T, {"messages": [{"role": "user", "content": "go"}]})
        await s.open()
        chunks = [c async for c in s]
    req = seen[0]
    assert req.url.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert req.url.params["alt"] == "sse" and req.headers["x-goog-api-key"] == "AIza-test-key"
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "The"}, {"content": " quick brown"}, {"content": " fox."}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert all(c["id"] == "resp-1" and c["model"] == "google/gemini-2.5-flash" for c in chunks)
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.reported) == (8, 17, True)


async def test_stream_function_call() -> None:
    obj = {**RESPONSE_TOOL}
    async with client_for([sse(obj)]) as client:
        s = get_adapter("gemini").stream(client, T, {"messages": [{"role": "user", "content": "w?"}],
                                                     "tools": TOOLS})
        await s.open()
        chunks = [c async for c in s]
    delta = chunks[0]["choices"][0]["delta"]
    assert delta["tool_calls"][0]["index"] == 0
    assert json.loads(delta["tool_calls"][0]["function"]["arguments"]) == {"location": "Florence, Italy"}
    assert chunks[0]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_cut_keeps_cumulative_usage() -> None:
    async with client_for([sse(frag("The", 1)), sse(frag(" quick", 2))]) as client:
        s = get_adapter("gemini").stream(client, T, {"messages": [{"role": "user", "content": "go"}]})
        await s.open()
        with pytest.raises(UpstreamError) as info:
            async for _ in s:
                pass
    assert info.value.code == "upstream_stream_incomplete"
    assert s.usage is not None and s.usage.completion_tokens == 14 and s.usage.reported is True


async def test_stream_error_object() -> None:
    err = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                     "status": "UNAVAILABLE"}}
    async with client_for([sse(frag("The", 1)), sse(err)]) as client:
        s = get_adapter("gemini").stream(client, T, {"messages": [{"role": "user", "content": "go"}]})
        await s.open()
        with pytest.raises(UpstreamError) as info:
            async for _ in s:
                pass
    assert info.value.retryable and info.value.upstream_status == 503 and "overloaded" in info.value.message


async def test_stream_without_usage_metadata_is_estimated() -> None:
    bare = [{k: v for k, v in frag(t, 0, f).items() if k != "usageMetadata"}
            for t, f in (("abcd", None), ("efgh", "STOP"))]
    async with client_for([sse(o) for o in bare]) as client:
        s = get_adapter("gemini").stream(client, T, {"messages": [{"role": "user", "content": "go"}]})
        await s.open()
        _ = [c async for c in s]
    assert s.usage is not None and s.usage.reported is False and s.usage.completion_tokens == 2


async def test_stream_blocked_prompt() -> None:
    async with client_for([sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                                "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}})]) as client:
        s = get_adapter("gemini").stream(client, T, {"messages": [{"role": "user", "content": "bad"}]})
        await s.open()
        chunks = [c async for c in s]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


async def test_complete_and_errors() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "bad-key" in request.headers["x-goog-api-key"]:
            return httpx.Response(400, json={"error": {
                "code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                                           "reason": "API_KEY_INVALID"}]}})
        return httpx.Response(200, json=RESPONSE_TEXT)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        out, usage = await get_adapter("gemini").complete(client, T, {"messages": [{"role": "user", "content": "x"}]})
        assert out["choices"][0]["message"]["content"] == "Hello! How can I help?" and usage.cached_tokens == 64
        assert seen[0].url.path == "/v1beta/models/gemini-2.5-flash:generateContent"
        bad = Target("gemini", "models/gemini-2.5-flash", "g", T.base_url, "bad-key-AIzaXYZ")
        with pytest.raises(UpstreamError) as info:
            await get_adapter("gemini").complete(client, bad, {"messages": [{"role": "user", "content": "x"}]})
    assert seen[1].url.path == "/v1beta/models/gemini-2.5-flash:generateContent"  # "models/" not doubled
    assert info.value.message == "provider rejected the credentials" and not info.value.retryable
