"""OpenAI / OpenRouter / compat adapter: request forwarding, response and chunk translation
(payloads shaped like the providers' documented examples), driven through httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.adapters import get_adapter
from gateway.adapters.contract import Target
from gateway.adapters.openai_compat import OpenAICompatAdapter
from gateway.errors import UpstreamError

OPENAI = Target("openai", "gpt-4o-mini", "openai/gpt-4o-mini", "https://api.openai.com/v1", "sk-test-openai")
OPENROUTER = Target("openrouter", "openai/gpt-4o-mini", "openai/gpt-4o-mini", "https://openrouter.ai/api/v1",
                    "sk-or-test")
COMPAT = Target("compat", "llama3.1:8b", "local/llama3.1", "http://127.0.0.1:11434/v1", "")

BODY: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "Hello!"}],
    "temperature": 0.2,
    "max_completion_tokens": 100,
    "stop": None,
    "models": ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"],
    "stream": False,
}

# https://platform.openai.com/docs/api-reference/chat/object
OPENAI_RESPONSE = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I assist you today?",
                                         "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
              "prompt_tokens_details": {"cached_tokens": 6, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default",
    "system_fingerprint": "fp_44709d6fcb",
}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    obj = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
           "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


USAGE_CHUNK = (b'data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,'
               b'"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[],'
               b'"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,'
               b'"prompt_tokens_details":{"cached_tokens":4}}}\n\n')


class Chunks(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes], exc: Exception | None = None) -> None:
        self.pieces = pieces
        self.exc = exc
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p
        if self.exc is not None:
            raise self.exc

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """A MockTransport answering every request with the given response; records requests."""

    def __init__(self, status: int = 200, *, json_body: Any = None, pieces: list[bytes] | None = None,
                 exc: Exception | None = None, headers: dict[str, str] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.json_body = json_body
        self.stream = Chunks(pieces or [], exc) if pieces is not None or exc is not None else None
        self.headers = headers or {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.stream is not None:
            return httpx.Response(self.status, headers={"content-type": "text/event-stream", **self.headers},
                                  stream=self.stream)
        return httpx.Response(self.status, json=self.json_body, headers=self.headers)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    @property
    def sent(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)


# --------------------------------------------------------------------------------------------
# request
# --------------------------------------------------------------------------------------------


def test_build_body_forwards_and_cleans() -> None:
    adapter = get_adapter("openai")
    out = adapter.build_body(OPENAI, BODY, stream=False)
    assert out["model"] == "gpt-4o-mini"
    assert "models" not in out and "stop" not in out and "stream" not in out
    assert out["messages"] == BODY["messages"]
    assert out["temperature"] == 0.2 and out["max_completion_tokens"] == 100


def test_build_body_stream_forces_include_usage() -> None:
    adapter = get_adapter("openai")
    out = adapter.build_body(OPENAI, {**BODY, "stream": True, "stream_options": {"include_usage": False}},
                             stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_openrouter_keeps_its_fields_others_drop_them() -> None:
    body = {**BODY, "provider": {"order": ["OpenAI"]}, "transforms": ["middle-out"], "usage": {"include": True}}
    orr = get_adapter("openrouter").build_body(OPENROUTER, body, stream=False)
    assert orr["model"] == "openai/gpt-4o-mini" and orr["provider"] == {"order": ["OpenAI"]}
    assert "models" not in orr and "usage" not in orr
    oai = get_adapter("openai").build_body(OPENAI, body, stream=False)
    assert "provider" not in oai and "transforms" not in oai


def test_output_limit_field_per_provider() -> None:
    out = get_adapter("compat").build_body(COMPAT, BODY, stream=False)
    assert out["max_tokens"] == 100 and "max_completion_tokens" not in out
    legacy = {**BODY, "max_completion_tokens": None, "max_tokens": 77}
    out = get_adapter("openai").build_body(OPENAI, legacy, stream=False)
    assert out["max_completion_tokens"] == 77 and "max_tokens" not in out
    out = get_adapter("openrouter").build_body(OPENROUTER, legacy, stream=False)
    assert out["max_tokens"] == 77 and "max_completion_tokens" not in out


def test_gemini_thought_signatures_are_stripped_from_tool_ids() -> None:
    msgs = [{"role": "user", "content": "w?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9f2c__thought__CoUDAdHt+/==", "type": "function",
                 "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_9f2c__thought__CoUDAdHt+/==", "content": "sunny"}]
    out = get_adapter("openai").build_body(OPENAI, {"messages": msgs}, stream=False)
    assert out["messages"][1]["tool_calls"][0]["id"] == "call_9f2c"
    assert out["messages"][2]["tool_call_id"] == "call_9f2c"
    assert msgs[2]["tool_call_id"].endswith("==")  # the caller's body is not mutated
    plain = [{"role": "user", "content": "hi"}]
    assert get_adapter("openai").build_body(OPENAI, {"messages": plain}, stream=False)["messages"] is plain


def test_headers() -> None:
    h = get_adapter("openai").headers(OPENAI)
    assert h["authorization"] == "Bearer sk-test-openai"
    assert "authorization" not in get_adapter("compat").headers(COMPAT)  # keyless local server
    h = OpenAICompatAdapter("compat", extra_headers=lambda: {"X-Extra": "1"}).headers(COMPAT)
    assert h["X-Extra"] == "1"


# --------------------------------------------------------------------------------------------
# complete
# --------------------------------------------------------------------------------------------


async def test_complete_translates_response() -> None:
    up = Upstream(json_body=OPENAI_RESPONSE)
    async with up.client() as client:
        out, usage = await get_adapter("openai").complete(client, OPENAI, BODY)
    req = up.requests[0]
    assert str(req.url) == "https://api.openai.com/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test-openai"
    assert up.sent["model"] == "gpt-4o-mini" and "models" not in up.sent
    assert out["model"] == "openai/gpt-4o-mini"
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["content"] == "Hello! How can I assist you today?"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                            "prompt_tokens_details": {"cached_tokens": 6},
                            "completion_tokens_details": OPENAI_RESPONSE["usage"]["completion_tokens_details"]}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reported) == (19, 10, 6, True)


async def test_complete_openrouter_strips_cost_and_provider() -> None:
    resp = {"id": "gen-1741569952-abc", "provider": "OpenAI", "model": "openai/gpt-4o-mini",
            "object": "chat.completion", "created": 1741569952,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None,
                                                 "reasoning": None},
                         "logprobs": None, "finish_reason": "stop", "native_finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10, "cost": 0.0000024,
                      "is_byok": False, "prompt_tokens_details": {"cached_tokens": 0},
                      "cost_details": {"upstream_inference_cost": None},
                      "completion_tokens_details": {"reasoning_tokens": 0}}}
    up = Upstream(json_body=resp)
    async with up.client() as client:
        out, usage = await get_adapter("openrouter").complete(client, OPENROUTER, BODY)
    assert "provider" not in out
    assert "cost" not in out["usage"] and "is_byok" not in out["usage"]
    assert usage.prompt_tokens == 8 and usage.completion_tokens == 2


async def test_complete_tool_calls_pass_through() -> None:
    resp = {**OPENAI_RESPONSE, "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                                            "message": {"role": "assistant", "content": None, "tool_calls": [
                                                {"id": "call_abc123", "type": "function",
                                                 "function": {"name": "get_current_weather",
                                                              "arguments": "{\n\"location\": \"Boston, MA\"\n}"}}
                                            ]}}]}
    up = Upstream(json_body=resp)
    async with up.client() as client:
        out, _ = await get_adapter("openai").complete(client, OPENAI, BODY)
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_current_weather"
    assert out["choices"][0]["finish_reason"] == "tool_calls"


async def test_complete_without_usage_estimates() -> None:
    resp = {k: v for k, v in OPENAI_RESPONSE.items() if k != "usage"}
    up = Upstream(json_body=resp)
    async with up.client() as client:
        out, usage = await get_adapter("compat").complete(client, COMPAT, BODY)
    assert usage.reported is False
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 9  # 34 chars / 4
    assert out["usage"]["total_tokens"] == usage.prompt_tokens + usage.completion_tokens


async def test_complete_groq_usage_in_x_groq() -> None:
    resp = {k: v for k, v in OPENAI_RESPONSE.items() if k != "usage"}
    resp["x_groq"] = {"id": "req_01", "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
    up = Upstream(json_body=resp)
    async with up.client() as client:
        _, usage = await get_adapter("compat").complete(client, COMPAT, BODY)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reported) == (5, 7, True)


async def test_complete_openrouter_error_in_200_body() -> None:
    up = Upstream(json_body={"error": {"code": 502, "message": "Provider returned error",
                                       "metadata": {"raw": "upstream error", "provider_name": "OpenAI"}}})
    async with up.client() as client:
        with pytest.raises(UpstreamError) as info:
            await get_adapter("openrouter").complete(client, OPENROUTER, BODY)
    assert info.value.retryable and info.value.status == 502


@pytest.mark.parametrize(("status", "our", "retryable"), [(429, 429, True), (500, 502, True), (503, 502, True),
                                                          (400, 400, False), (404, 400, False),
                                                          (401, 502, False)])
async def test_complete_error_statuses(status: int, our: int, retryable: bool) -> None:
    up = Upstream(status, json_body={"error": {"message": "boom", "type": "x", "code": None}},
                  headers={"retry-after": "3"})
    async with up.client() as client:
        with pytest.raises(UpstreamError) as info:
            await get_adapter("openai").complete(client, OPENAI, BODY)
    err = info.value
    assert (err.status, err.retryable, err.upstream_status, err.provider) == (our, retryable, status, "openai")
    assert ("retry-after" in err.headers) == (status == 429)


# --------------------------------------------------------------------------------------------
# stream
# --------------------------------------------------------------------------------------------


async def collect(stream: Any) -> list[dict[str, Any]]:
    await stream.open()
    return [c async for c in stream]


async def test_stream_chunks_and_usage() -> None:
    pieces = [
        b": OPENROUTER PROCESSING\n\n",
        chunk({"role": "assistant", "content": ""}, usage=None),
        chunk({"content": "Hello"}, usage=None),
        chunk({"content": " world"}, usage=None) + chunk({}, "stop", usage=None),
        USAGE_CHUNK,
        b"data: [DONE]\n\n",
    ]
    up = Upstream(pieces=pieces)
    async with up.client() as client:
        s = get_adapter("openai").stream(client, OPENAI, {**BODY, "stream": True})
        assert s.usage is None
        chunks = await collect(s)
    assert up.sent["stream"] is True and up.sent["stream_options"] == {"include_usage": True}
    assert len(chunks) == 4  # the usage-only chunk is swallowed
    assert all(c["model"] == "openai/gpt-4o-mini" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello world"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.cached_tokens, s.usage.reported) == \
        (9, 12, 4, True)
    assert up.stream is not None and up.stream.closed


def compact(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """A chunk as OpenAI sends it: compact JSON, UTF-8, ``"usage":null`` with include_usage."""
    obj = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
           "model": "gpt-4o-mini-2024-07-18", "service_tier": "default", "system_fingerprint": "fp_44709d6fcb",
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], "usage": None,
           "obfuscation": "x1", **extra}
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def test_stream_relays_the_upstream_bytes_with_our_model_name() -> None:
    """Compact OpenAI chunks are relayed as the upstream's own text with the model renamed and the
    ``"usage":null`` removed (no second serialisation); other forms are serialised from the chunk.
    Either way the frame decodes to exactly the chunk every other consumer reads."""
    from gateway.adapters.sse import FramedChunk
    from gateway.chat.service import _sse

    pieces = [
        compact({"role": "assistant", "content": ""}),
        compact({"content": "Grüße \"model\":\"gpt-4o-mini-2024-07-18\""}),  # the needle inside content
        chunk({"content": " spaced"}, usage=None),                        # json.dumps' default spacing
        compact({"content": "!"}, provider="OpenAI"),                       # a key we drop
        compact({}, "stop"),
        USAGE_CHUNK,
        b"data: [DONE]\n\n",
    ]
    up = Upstream(pieces=pieces)
    async with up.client() as client:
        chunks = await collect(get_adapter("openai").stream(client, OPENAI, {**BODY, "stream": True}))
    assert [type(c) is FramedChunk for c in chunks] == [True, True, False, False, True]
    for c in chunks:
        frame = _sse(c)
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
        assert json.loads(frame[6:]) == dict(c)
        assert c["model"] == "openai/gpt-4o-mini" and "usage" not in c and "provider" not in c
    relayed = _sse(chunks[1]).decode()
    assert "Grüße" in relayed and relayed.count('"model":"openai/gpt-4o-mini"') == 1
    assert chunks[1]["choices"][0]["delta"]["content"] == 'Grüße "model":"gpt-4o-mini-2024-07-18"'
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("provider", ["openai", "openrouter", "compat"])
async def test_a_buffered_stream_builds_no_relay_frames(provider: str) -> None:
    """``relay = False`` (a buffered answer: the chunks are assembled, never sent): plain dicts,
    no ``data:`` frames built, and the same chunks and usage (exact, from the provider's last
    event; a Groq-style ``x_groq.usage`` too) as the relayed stream."""
    from gateway.adapters.sse import FramedChunk

    pieces = [
        compact({"role": "assistant", "content": ""}),
        compact({"content": "Hello"}),
        chunk({"content": " spaced"}, usage=None),
        compact({"content": "!"}, provider="OpenAI"),
        compact({}, "stop"),
        USAGE_CHUNK,
        b"data: [DONE]\n\n",
    ]
    target = Target(provider, "gpt-4o-mini", "openai/gpt-4o-mini", "https://api.example.com/v1", "sk-test")
    runs = []
    for relay in (True, False):
        up = Upstream(pieces=pieces)
        async with up.client() as client:
            stream = get_adapter(provider).stream(client, target, {**BODY, "stream": True})
            assert stream.relay is True  # the default: a relay
            stream.relay = relay
            chunks = await collect(stream)
        runs.append((chunks, stream.usage))
    (relayed, relayed_usage), (buffered, buffered_usage) = runs
    assert any(type(c) is FramedChunk for c in relayed)
    assert [type(c) for c in buffered] == [dict] * 5
    assert [dict(c) for c in relayed] == buffered
    assert buffered_usage == relayed_usage and buffered_usage is not None and buffered_usage.reported
    assert (buffered_usage.prompt_tokens, buffered_usage.completion_tokens, buffered_usage.cached_tokens) == (9, 12, 4)

    groq = [chunk({"content": "Hi"}), chunk({}, "stop", x_groq={"id": "req_1", "usage": {
        "prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}), b"data: [DONE]\n\n"]
    up = Upstream(pieces=groq)
    async with up.client() as client:
        stream = get_adapter(provider).stream(client, target, {**BODY, "stream": True})
        stream.relay = False
        chunks = await collect(stream)
    assert [type(c) for c in chunks] == [dict, dict] and "x_groq" not in chunks[1]
    assert stream.usage is not None and stream.usage.reported
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (7, 2)


async def test_stream_tool_call_deltas() -> None:
    pieces = [
        chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "location\":\"Paris\"}"}}]}),
        chunk({}, "tool_calls"),
        USAGE_CHUNK,
        b"data: [DONE]\n\n",
    ]
    up = Upstream(pieces=pieces)
    async with up.client() as client:
        chunks = await collect(get_adapter("openrouter").stream(client, OPENROUTER, BODY))
    args = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                   for c in chunks if c["choices"][0]["delta"].get("tool_calls"))
    assert json.loads(args) == {"location": "Paris"}


async def test_stream_without_usage_is_estimated() -> None:
    pieces = [chunk({"role": "assistant", "content": ""}), chunk({"content": "12345678"}), chunk({}, "stop"),
              b"data: [DONE]\n\n"]
    up = Upstream(pieces=pieces)
    async with up.client() as client:
        s = get_adapter("compat").stream(client, COMPAT, BODY)
        await collect(s)
    assert s.usage is not None and s.usage.reported is False
    assert s.usage.completion_tokens == 2 and s.usage.prompt_tokens > 0


async def test_stream_error_object_mid_stream() -> None:
    pieces = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
              b'data: {"error": {"message": "The server had an error while processing your request.", '
              b'"type": "server_error", "param": null, "code": null}}\n\n']
    up = Upstream(pieces=pieces)
    got: list[dict[str, Any]] = []
    async with up.client() as client:
        s = get_adapter("openai").stream(client, OPENAI, BODY)
        await s.open()
        with pytest.raises(UpstreamError) as info:
            async for c in s:
                got.append(c)
    assert len(got) == 2
    assert info.value.retryable and "server had an error" in info.value.message
    assert s.usage is not None and s.usage.reported is False and s.usage.completion_tokens == 1


async def test_stream_openrouter_error_chunk() -> None:
    err_chunk = (b'data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"openai/gpt-4o",'
                 b'"provider":"OpenAI","error":{"code":"server_error","message":"Provider disconnected"},'
                 b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error",'
                 b'"native_finish_reason":"error"}]}\n\n')
    up = Upstream(pieces=[chunk({"role": "assistant", "content": ""}), err_chunk])
    async with up.client() as client:
        s = get_adapter("openrouter").stream(client, OPENROUTER, BODY)
        await s.open()
        with pytest.raises(UpstreamError, match="Provider disconnected"):
            async for _ in s:
                pass


async def test_stream_without_done_is_an_error() -> None:
    up = Upstream(pieces=[chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})])
    async with up.client() as client:
        s = get_adapter("openai").stream(client, OPENAI, BODY)
        await s.open()
        with pytest.raises(UpstreamError) as info:
            async for _ in s:
                pass
    assert info.value.code == "upstream_stream_incomplete" and info.value.retryable


async def test_stream_compat_accepts_eof_after_finish() -> None:
    up = Upstream(pieces=[chunk({"role": "assistant", "content": "Hi"}), chunk({}, "stop")])
    async with up.client() as client:
        chunks = await collect(get_adapter("compat").stream(client, COMPAT, BODY))
    assert len(chunks) == 2


async def test_stream_connection_reset_mid_stream() -> None:
    up = Upstream(pieces=[chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi there"})],
                  exc=httpx.ReadError("Response payload is not completed"))
    async with up.client() as client:
        s = get_adapter("openai").stream(client, OPENAI, BODY)
        await s.open()
        got = []
        with pytest.raises(UpstreamError) as info:
            async for c in s:
                got.append(c)
    assert len(got) == 2 and info.value.retryable and info.value.status == 502
    assert s.usage is not None and s.usage.completion_tokens == 2 and not s.usage.reported


async def test_stream_open_maps_status_errors() -> None:
    up = Upstream(429, pieces=[b'{"error": {"message": "Rate limit", "type": "requests", "code": '
                               b'"rate_limit_exceeded"}}'], headers={"retry-after": "20"})
    async with up.client() as client:
        s = get_adapter("openai").stream(client, OPENAI, BODY)
        with pytest.raises(UpstreamError) as info:
            await s.open()
        assert s.usage is None
        await s.aclose()
        assert s.usage is None  # never opened: nothing to bill
    assert info.value.status == 429 and info.value.headers == {"retry-after": "20"}
    assert up.stream is not None and up.stream.closed


async def test_stream_aclose_is_idempotent_and_finalises_usage() -> None:
    up = Upstream(pieces=[chunk({"role": "assistant", "content": ""}), chunk({"content": "abcdefgh"}),
                          chunk({"content": "more"}), chunk({}, "stop"), b"data: [DONE]\n\n"])
    async with up.client() as client:
        s = get_adapter("openai").stream(client, OPENAI, BODY)
        await s.open()
        it = s.__aiter__()
        await it.__anext__()
        await it.__anext__()
        await s.aclose()
        await s.aclose()
    assert up.stream is not None and up.stream.closed
    assert s.usage is not None and s.usage.reported is False and s.usage.completion_tokens == 2


async def test_stream_events_split_across_reads_and_a_last_event_without_its_blank_line() -> None:
    """The SSE parse inside the stream's own loop (issue 15 fifth pass): events cut anywhere across
    reads, several in one read, CRLF framing, and a final ``[DONE]`` the body ends without a blank
    line after (the parser's end-of-body event) give the same chunks and usage."""
    body = (chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hel"}) + chunk({"content": "lo"})
            + chunk({}, "stop") + USAGE_CHUNK + b"data: [DONE]")
    splits = [body[:7], body[7:200], body[200:201], body[201:-3], body[-3:]]
    crlf = [body.replace(b"\n", b"\r\n")]
    for pieces in (splits, crlf, [body]):
        up = Upstream(pieces=pieces)
        async with up.client() as client:
            s = get_adapter("openai").stream(client, OPENAI, BODY)
            chunks = await collect(s)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello"
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
        assert s.usage is not None and s.usage.reported and s.usage.completion_tokens == 12
        assert up.stream is not None and up.stream.closed


async def test_stream_stops_at_done_in_the_middle_of_a_read() -> None:
    """Events after ``[DONE]`` in the same read are not chunks (the rest of the body is drained)."""
    up = Upstream(pieces=[chunk({"content": "Hi"}) + chunk({}, "stop") + b"data: [DONE]\n\n"
                          + chunk({"content": "late"})])
    async with up.client() as client:
        chunks = await collect(get_adapter("openai").stream(client, OPENAI, BODY))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Hi", None]


async def test_stream_on_done_runs_at_the_terminal_event_with_the_final_usage() -> None:
    """``on_done`` (issue 15 lever 27: the relay settles from it) runs once, right after the
    terminal event, before the rest of the body is read, with ``usage`` already final (reported, or
    estimated when the provider sent none); a stream that breaks or ends early never calls it."""
    served: list[int] = []

    class Counting(Chunks):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for i, p in enumerate(self.pieces):
                served.append(i)
                yield p

    async def run(provider: str, target: Target, pieces: list[bytes]) -> tuple[list[Any], Any]:
        served.clear()
        up = Upstream(pieces=pieces)
        up.stream = Counting(pieces)
        seen: list[Any] = []
        async with up.client() as client:
            s = get_adapter(provider).stream(client, target, BODY)
            s.on_done = lambda: seen.append((len(served), s.usage and (s.usage.completion_tokens, s.usage.reported)))
            try:
                await collect(s)
            except UpstreamError:
                pass
        return seen, s.usage

    # reported usage: called after the read holding [DONE], before the two reads after it
    seen, usage = await run("openai", OPENAI, [chunk({"content": "Hi"}), chunk({}, "stop"),
                                               USAGE_CHUNK + b"data: [DONE]\n\n", b": after\n\n", b": more\n\n"])
    assert seen == [(3, (12, True))] and served == [0, 1, 2, 3, 4]
    assert (usage.completion_tokens, usage.reported) == (12, True)  # aclose left it as it was
    # no usage from the provider: the estimate, final at that point
    seen, usage = await run("compat", COMPAT, [chunk({"content": "12345678"}), chunk({}, "stop"),
                                               b"data: [DONE]\n\n", b": after\n\n"])
    assert seen == [(3, (2, False))] and (usage.completion_tokens, usage.reported) == (2, False)
    # broken streams: cut before [DONE], an in-stream error
    seen, _ = await run("openai", OPENAI, [chunk({"content": "Hi"})])
    assert seen == []
    seen, _ = await run("openai", OPENAI, [chunk({"content": "Hi"}), b'data: {"error": {"message": "boom"}}\n\n'])
    assert seen == []


@pytest.mark.parametrize(("budget", "limit", "sent"),
                         [(9_000, 4_000, 3_999), (4_000, 4_000, 3_999), (2_000, 4_000, 2_000)])
def test_openrouter_reasoning_budget_is_kept_below_the_output_limit_sent(budget: int, limit: int, sent: int) -> None:
    """OpenRouter bills a reasoning budget as output: above the limit the hold counts (a limit the
    pipeline clamped to the model's maximum) it is lowered to fit; within it, forwarded as is."""
    body = {**BODY, "max_completion_tokens": limit, "reasoning": {"max_tokens": budget, "exclude": True}}
    out = get_adapter("openrouter").build_body(OPENROUTER, body, stream=False)
    assert out["reasoning"] == {"max_tokens": sent, "exclude": True}
    assert body["reasoning"]["max_tokens"] == budget  # the client's body is not changed
