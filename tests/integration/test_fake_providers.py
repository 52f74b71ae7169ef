"""The fake providers (infra/local/fake_providers.py) speak each provider's real wire format.

The app runs in a uvicorn thread; the official ``openai`` SDK (and the ``anthropic`` SDK when it
is installed) plus raw httpx drive it, so a format drift shows up as a parse failure here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import httpx
import openai
import pytest

from infra.local import fake_catalog
from infra.local.fake_providers import base_urls, create_app, parse_directives
from infra.local.servers import start_in_thread

KEY = "sk-test-byok-123456"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    running = start_in_thread(create_app())
    try:
        yield running.url
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def _reset(server: str) -> None:
    httpx.post(f"{server}/__fake/reset").raise_for_status()


@pytest.fixture()
def urls(server: str) -> dict[str, str]:
    return base_urls(server)


@pytest.fixture()
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as client:
        yield client


def prompt_tokens(*texts: str) -> int:
    return max(1, math.ceil(sum(len(t) for t in texts) / 4))


def oai(urls: dict[str, str], provider: str, key: str = KEY, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=urls[provider], api_key=key, max_retries=0, **kw)


def requests_log(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = http.get("/__fake/requests", params=params)
    r.raise_for_status()
    return r.json()


def sse_events(raw: str, sep: str = "\n\n") -> list[dict[str, Any]]:
    """Parse an SSE body into [{"event": ..., "data": ...}] (comments skipped)."""
    events = []
    for block in raw.split(sep):
        event, data = None, []
        for line in block.replace("\r\n", "\n").split("\n"):
            if line.startswith(":") or not line:
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if data:
            events.append({"event": event, "data": "\n".join(data)})
    return events


# --------------------------------------------------------------------------------------------
# OpenAI-shaped providers through the official SDK
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "openrouter", "compat"])
def test_openai_sdk_non_stream(urls: dict[str, str], http: httpx.Client, provider: str) -> None:
    model = "openai/gpt-4o-mini" if provider == "openrouter" else "gpt-4o-mini"
    client = oai(urls, provider)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    resp = client.chat.completions.create(model=model, messages=messages)
    assert resp.object == "chat.completion"
    assert resp.id
    assert resp.model == model
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == f"Hello from {provider} {model}."
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == prompt_tokens("Be brief.", "Say hi")
    assert resp.usage.completion_tokens == 4
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 4
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    if provider == "openrouter":
        extra = resp.model_extra or {}
        assert extra["provider"] == "OpenAI"
        # cost is computed from the fake catalogue's price for openai/gpt-4o-mini
        expected = Decimal(resp.usage.prompt_tokens) * Decimal("0.00000015") + 4 * Decimal("0.0000006")
        assert resp.usage.model_extra["cost"] == pytest.approx(float(expected))
    log = requests_log(http, provider=provider)
    assert len(log) == 1
    entry = log[0]
    assert entry["key"] == KEY and entry["key_source"] == "authorization"
    assert "authorization" not in entry["headers"]
    assert entry["model"] == model and entry["status"] == 200 and entry["stream"] is False
    assert entry["body"]["messages"] == messages
    assert entry["path"] == urlparse(urls[provider]).path + "/chat/completions"


@pytest.mark.parametrize("provider", ["openai", "compat"])
def test_openai_sdk_stream_with_and_without_include_usage(urls: dict[str, str], provider: str) -> None:
    client = oai(urls, provider)
    messages = [{"role": "user", "content": "Stream please [[words:6]]"}]
    chunks = list(client.chat.completions.create(model="m1", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 6  # one word per chunk
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Hello from {provider} m1. Hello from"
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == prompt_tokens("Stream please [[words:6]]")
    assert last.usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])

    chunks = list(client.chat.completions.create(model="m1", messages=messages, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openrouter_stream_always_has_usage_and_processing_comment(urls: dict[str, str],
                                                                   http: httpx.Client) -> None:
    client = oai(urls, "openrouter")
    chunks = list(client.chat.completions.create(
        model="anthropic/claude-sonnet-4", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.model_extra["cost"] > 0
    assert all((c.model_extra or {}).get("provider") == "Anthropic" for c in chunks)

    raw = http.post(f"{urls['openrouter']}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                    json={"model": "x/y", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.startswith(": OPENROUTER PROCESSING\n\n")
    assert raw.text.endswith("data: [DONE]\n\n")
    events = sse_events(raw.text)
    payloads = [json.loads(e["data"]) for e in events[:-1]]
    assert payloads[-1]["usage"]["total_tokens"] == payloads[-1]["usage"]["prompt_tokens"] + 4
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-2]["choices"][0]["native_finish_reason"] == "stop"


def test_openai_max_tokens_and_words(urls: dict[str, str]) -> None:
    client = oai(urls, "openai")
    resp = client.chat.completions.create(model="gpt-4o", max_tokens=3,
                                          messages=[{"role": "user", "content": "[[words:10]]"}])
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "Hello from openai"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    resp = client.chat.completions.create(model="gpt-4o", max_completion_tokens=50,
                                          messages=[{"role": "user", "content": "[[words:9]]"}])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 9
    assert resp.choices[0].message.content == "Hello from openai gpt-4o. Hello from openai gpt-4o. Hello"


def test_directives_only_read_from_last_user_message(urls: dict[str, str]) -> None:
    client = oai(urls, "openai")
    resp = client.chat.completions.create(model="gpt-4o", messages=[
        {"role": "user", "content": "[[fail:500]] [[words:1]]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "now"}, {"type": "text", "text": " [[words:2]]"}]},
    ])
    assert resp.choices[0].message.content == "Hello from"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "w",
                                           "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("provider", ["openai", "openrouter", "compat"])
def test_openai_tool_call(urls: dict[str, str], provider: str) -> None:
    client = oai(urls, provider)
    messages = [{"role": "user", "content": "weather? [[tool:get_weather]]"}]
    resp = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"x": 1}
    assert resp.usage is not None
    assert resp.usage.completion_tokens == math.ceil((len("get_weather") + len('{"x": 1}')) / 4)

    chunks = list(client.chat.completions.create(model="m", messages=messages, tools=TOOLS,
                                                 stream=True))
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices
                   for tc in (c.choices[0].delta.tool_calls or []) if tc.function)
    names = [tc.function.name for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])
             if tc.function and tc.function.name]
    assert names == ["get_weather"] and json.loads(args) == {"x": 1}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        ["tool_calls"]

    # Without tools in the request the directive is ignored.
    resp = client.chat.completions.create(model="m", messages=messages)
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.content


def test_usage_directives_openai(urls: dict[str, str]) -> None:
    client = oai(urls, "openai")
    text = "x" * 400 + " [[cached:40]] [[reasoning:7]]"
    resp = client.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": text}])
    usage = resp.usage
    assert usage is not None
    assert usage.prompt_tokens == prompt_tokens(text)
    assert usage.prompt_tokens_details.cached_tokens == 40
    assert usage.completion_tokens_details.reasoning_tokens == 7
    assert usage.completion_tokens == 4 + 7
    assert usage.total_tokens == usage.prompt_tokens + 11


@pytest.mark.parametrize("provider", ["openai", "openrouter", "compat"])
def test_openai_nousage(urls: dict[str, str], provider: str) -> None:
    client = oai(urls, provider)
    messages = [{"role": "user", "content": "hi [[nousage]]"}]
    resp = client.chat.completions.create(model="m", messages=messages)
    assert resp.usage is None
    chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"Hello from {provider} m."


def test_openai_auth_errors(urls: dict[str, str], http: httpx.Client) -> None:
    r = http.post(f"{urls['openai']}/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "didn't provide an API key" in err["message"]
    with pytest.raises(openai.AuthenticationError) as exc:
        oai(urls, "openai", key="invalid-key-000000").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "invalid_api_key"

    r = http.post(f"{urls['openrouter']}/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401 and r.json() == {"error": {"message": "No auth credentials found", "code": 401}}
    r = http.post(f"{urls['compat']}/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
    # The key that was refused is still in the log.
    assert requests_log(http, provider="openai")[-1]["key"] == "invalid-key-000000"


def test_openai_validation_errors(urls: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oai(urls, "openai").chat.completions.create(model="m", messages=[])
    assert "messages" in exc.value.message


# --------------------------------------------------------------------------------------------
# Failure directives
# --------------------------------------------------------------------------------------------

OPENAI_EXC = {400: openai.BadRequestError, 401: openai.AuthenticationError, 429: openai.RateLimitError,
              500: openai.InternalServerError, 503: openai.InternalServerError}


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
@pytest.mark.parametrize("stream", [False, True])
def test_fail_directive_openai_sdk(urls: dict[str, str], status: int, stream: bool) -> None:
    client = oai(urls, "openai")
    with pytest.raises(OPENAI_EXC[status]) as exc:
        client.chat.completions.create(model="gpt-4o", stream=stream,
                                       messages=[{"role": "user", "content": f"[[fail:{status}]]"}])
    err = exc.value
    assert err.status_code == status
    body = err.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    if status == 429:
        assert err.response.headers["retry-after"] == "1"
        assert body["code"] == "rate_limit_exceeded"
    if status >= 500:
        assert body["type"] == "server_error"


def _chat_request(urls: dict[str, str], provider: str, text: str, model: str = "m",
                  stream: bool = False, key: str = KEY) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, json) of a minimal chat request for ``provider``."""
    if provider == "anthropic":
        return (f"{urls['anthropic']}/messages",
                {"x-api-key": key, "anthropic-version": "2023-06-01"},
                {"model": model, "max_tokens": 100, "stream": stream,
                 "messages": [{"role": "user", "content": text}]})
    if provider == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return (f"{urls['gemini']}/models/{model}:{method}", {"x-goog-api-key": key},
                {"contents": [{"role": "user", "parts": [{"text": text}]}]})
    return (f"{urls[provider]}/chat/completions", {"Authorization": f"Bearer {key}"},
            {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})


def _assert_error_shape(provider: str, status: int, body: Any) -> None:
    if provider == "anthropic":
        assert body["type"] == "error"
        assert body["error"]["type"] == {400: "invalid_request_error", 401: "authentication_error",
                                         429: "rate_limit_error", 500: "api_error",
                                         503: "overloaded_error", 529: "overloaded_error"}[status]
        assert body["error"]["message"] and body["request_id"].startswith("req_")
    elif provider == "gemini":
        assert body["error"]["code"] == status
        assert body["error"]["status"] == {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
                                           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                                           503: "UNAVAILABLE", 529: "INTERNAL"}[status]
        assert body["error"]["message"]
    elif provider == "openrouter":
        assert body["error"]["code"] == status and body["error"]["message"]
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("provider", ["openai", "openrouter", "anthropic", "gemini", "compat"])
@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_fail_directive_every_provider(urls: dict[str, str], http: httpx.Client, provider: str,
                                       status: int) -> None:
    url, headers, body = _chat_request(urls, provider, f"hello [[fail:{status}]] [[retry_after:7]]")
    r = http.post(url, headers=headers, json=body)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    _assert_error_shape(provider, status, r.json())
    if status == 429:
        assert r.headers["retry-after"] == "7"
    else:
        assert "retry-after" not in r.headers
    assert requests_log(http)[-1]["status"] == status


def test_anthropic_overloaded_529(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers, body = _chat_request(urls, "anthropic", "[[fail:529]]")
    r = http.post(url, headers=headers, json=body)
    assert r.status_code == 529
    _assert_error_shape("anthropic", 529, r.json())


def test_gemini_429_has_retry_info(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers, body = _chat_request(urls, "gemini", "[[fail:429]]", model="gemini-2.5-flash")
    err = http.post(url, headers=headers, json=body).json()["error"]
    retry = [d for d in err["details"] if d["@type"].endswith("RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]


@pytest.mark.parametrize("provider", ["openai", "openrouter", "anthropic", "gemini", "compat"])
@pytest.mark.parametrize("model,status", [("acme-fail-500-v1", 500), ("acme-fail-429", 429)])
def test_model_name_failures(urls: dict[str, str], http: httpx.Client, provider: str, model: str,
                             status: int) -> None:
    url, headers, body = _chat_request(urls, provider, "hello", model=model, stream=True)
    r = http.post(url, headers=headers, json=body)
    assert r.status_code == status
    _assert_error_shape(provider, status, r.json())


def test_timeout_model_hangs_until_client_gives_up(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers, body = _chat_request(urls, "openai", "hello", model="slow-timeout-model")
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post(url, headers=headers, json=body, timeout=0.3)
    assert time.monotonic() - start < 2
    # The server is still healthy and the request was logged.
    assert http.get("/__fake/health").json() == {"ok": True}
    assert requests_log(http)[-1]["model"] == "slow-timeout-model"


def test_sleep_and_ttfb(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers, body = _chat_request(urls, "openai", "[[sleep:5]]")
    with pytest.raises(httpx.ReadTimeout):
        http.post(url, headers=headers, json=body, timeout=0.3)

    url, headers, body = _chat_request(urls, "openai", "[[sleep:0.3]]")
    start = time.monotonic()
    assert http.post(url, headers=headers, json=body).status_code == 200
    assert time.monotonic() - start >= 0.28

    url, headers, body = _chat_request(urls, "anthropic", "[[ttfb:0.4]]", stream=True)
    start = time.monotonic()
    with http.stream("POST", url, headers=headers, json=body) as r:
        headers_at = time.monotonic() - start
        first_at = None
        for chunk in r.iter_bytes():
            if chunk and first_at is None:
                first_at = time.monotonic() - start
    assert r.status_code == 200
    assert headers_at < 0.3
    assert first_at is not None and first_at >= 0.38


def test_chunk_delay(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers, body = _chat_request(urls, "gemini", "[[words:5]] [[chunk_delay:0.1]]", stream=True,
                                       model="gemini-2.0-flash")
    start = time.monotonic()
    stamps = []
    with http.stream("POST", url, headers=headers, json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                stamps.append(time.monotonic() - start)
    assert len(stamps) == 5
    assert stamps[-1] - stamps[0] >= 0.35  # 4 gaps of 0.1 s, timer slack


@pytest.mark.parametrize("provider", ["openai", "openrouter", "anthropic", "gemini", "compat"])
def test_cut_stream_closes_without_terminator(urls: dict[str, str], http: httpx.Client,
                                              provider: str) -> None:
    url, headers, body = _chat_request(urls, provider, "[[words:20]] [[cut:3]]", stream=True)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), http.stream("POST", url, headers=headers, json=body) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            received += chunk
    text = received.decode()
    sep = "\r\n\r\n" if provider == "gemini" else "\n\n"
    assert len(sse_events(text, sep)) == 3
    assert "[DONE]" not in text and "message_stop" not in text


def test_cut_non_stream_sends_partial_body(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers, body = _chat_request(urls, "anthropic", "[[cut:1]]")
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(url, headers=headers, json=body)
    with pytest.raises(openai.APIConnectionError):
        oai(urls, "openai").chat.completions.create(model="m", messages=[{"role": "user", "content": "[[cut:1]]"}])


def test_stream_error_openai_sdk_raises(urls: dict[str, str]) -> None:
    stream = oai(urls, "openai").chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "[[words:10]] [[stream_error:3]]"}])
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 3


@pytest.mark.parametrize("provider", ["openrouter", "anthropic", "gemini"])
def test_stream_error_event(urls: dict[str, str], http: httpx.Client, provider: str) -> None:
    url, headers, body = _chat_request(urls, provider, "[[words:10]] [[stream_error:2]]", stream=True)
    r = http.post(url, headers=headers, json=body)
    assert r.status_code == 200
    events = sse_events(r.text, "\r\n\r\n" if provider == "gemini" else "\n\n")
    assert len(events) == 3
    last = json.loads(events[-1]["data"])
    if provider == "anthropic":
        assert events[-1]["event"] == "error" and last["error"]["type"] == "overloaded_error"
    elif provider == "openrouter":
        assert last["error"]["code"] == "server_error"
        assert last["choices"][0]["finish_reason"] == "error"
    else:
        assert last["error"]["status"] == "INTERNAL"


# --------------------------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------------------------

ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def test_anthropic_message(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"model": "claude-sonnet-4-20250514", "max_tokens": 100, "system": "You are terse.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello [[cached:2]]"}]}]}
    r = http.post(f"{urls['anthropic']}/messages", headers=ANTHROPIC_HEADERS, json=body)
    assert r.status_code == 200
    assert r.headers["request-id"].startswith("req_")
    msg = r.json()
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["id"].startswith("msg_")
    assert msg["model"] == "claude-sonnet-4-20250514"
    assert msg["content"] == [{"type": "text", "text": "Hello from anthropic claude-sonnet-4-20250514."}]
    assert msg["stop_reason"] == "end_turn" and msg["stop_sequence"] is None
    total = prompt_tokens("You are terse.", "Hello [[cached:2]]")
    assert msg["usage"]["input_tokens"] == total - 2
    assert msg["usage"]["cache_read_input_tokens"] == 2
    assert msg["usage"]["cache_creation_input_tokens"] == 0
    assert msg["usage"]["output_tokens"] == 4
    entry = requests_log(http, provider="anthropic")[-1]
    assert entry["key"] == KEY and entry["key_source"] == "x-api-key"
    assert "x-api-key" not in entry["headers"] and entry["headers"]["anthropic-version"] == "2023-06-01"


def test_anthropic_max_tokens_and_nousage(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"model": "claude-3-5-haiku-20241022", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi [[nousage]]"}]}
    msg = http.post(f"{urls['anthropic']}/messages", headers=ANTHROPIC_HEADERS, json=body).json()
    assert msg["stop_reason"] == "max_tokens"
    assert msg["content"][0]["text"] == "Hello from"
    assert "usage" not in msg


def test_anthropic_stream_events(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"model": "claude-3-5-haiku-20241022", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "hi [[words:5]] [[reasoning:3]]"}]}
    r = http.post(f"{urls['anthropic']}/messages", headers=ANTHROPIC_HEADERS, json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [e["event"] for e in events]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 5 + \
        ["content_block_stop", "message_delta", "message_stop"]
    datas = [json.loads(e["data"]) for e in events]
    assert all(d["type"] == e["event"] for d, e in zip(datas, events, strict=True))
    start = datas[0]["message"]
    assert start["usage"]["input_tokens"] == prompt_tokens("hi [[words:5]] [[reasoning:3]]")
    assert start["content"] == [] and start["stop_reason"] is None
    assert datas[1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
    assert text == "Hello from anthropic claude-3-5-haiku-20241022. Hello"
    assert datas[-2]["delta"]["stop_reason"] == "end_turn"
    assert datas[-2]["usage"] == {"output_tokens": 5 + 3}


def test_anthropic_stream_tool_use(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"model": "claude-sonnet-4-20250514", "max_tokens": 100, "stream": True,
            "tools": [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "[[tool:lookup]]"}]}
    events = sse_events(http.post(f"{urls['anthropic']}/messages", headers=ANTHROPIC_HEADERS, json=body).text)
    datas = [json.loads(e["data"]) for e in events]
    block = datas[1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "lookup" and block["id"].startswith("toolu_")
    partial = "".join(d["delta"]["partial_json"] for d in datas if d["type"] == "content_block_delta")
    assert all(d["delta"]["type"] == "input_json_delta" for d in datas if d["type"] == "content_block_delta")
    assert json.loads(partial) == {"x": 1}
    assert datas[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_auth_and_validation(urls: dict[str, str], http: httpx.Client) -> None:
    url = f"{urls['anthropic']}/messages"
    body = {"model": "claude-3-haiku-20240307", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    r = http.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401
    assert r.json()["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
    r = http.post(url, json=body, headers={"x-api-key": KEY})
    assert r.status_code == 400 and r.json()["error"]["message"] == "anthropic-version: header is required"
    r = http.post(url, json=body, headers={**ANTHROPIC_HEADERS, "x-api-key": "invalid-1"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid x-api-key"
    r = http.post(url, json={**body, "max_tokens": None}, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_sdk(urls: dict[str, str]) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=urls["anthropic"].removesuffix("/v1"), api_key=KEY, max_retries=0)
    msg = client.messages.create(model="claude-test-model", max_tokens=50,
                                 messages=[{"role": "user", "content": "Hi"}])
    assert msg.content[0].text == "Hello from anthropic claude-test-model."
    assert msg.usage.input_tokens == 1 and msg.usage.output_tokens == 4
    with client.messages.stream(model="claude-test-model", max_tokens=50,
                                messages=[{"role": "user", "content": "Hi [[words:7]]"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from anthropic claude-test-model. Hello from anthropic"
    assert final.usage.output_tokens == 7 and final.stop_reason == "end_turn"
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "[[fail:429]]"}])
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "[[fail:529]]"}])


# --------------------------------------------------------------------------------------------
# Gemini
# --------------------------------------------------------------------------------------------


def test_gemini_generate_content(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"systemInstruction": {"parts": [{"text": "Be nice."}]},
            "contents": [{"role": "user", "parts": [{"text": "Hi [[cached:1]] [[reasoning:5]]"}]}]}
    r = http.post(f"{urls['gemini']}/models/gemini-2.5-flash:generateContent",
                  headers={"x-goog-api-key": KEY}, json=body)
    assert r.status_code == 200
    data = r.json()
    cand = data["candidates"][0]
    assert cand["content"] == {"parts": [{"text": "Hello from gemini gemini-2.5-flash."}], "role": "model"}
    assert cand["finishReason"] == "STOP" and cand["index"] == 0
    usage = data["usageMetadata"]
    prompt = prompt_tokens("Be nice.", "Hi [[cached:1]] [[reasoning:5]]")
    assert usage["promptTokenCount"] == prompt
    assert usage["candidatesTokenCount"] == 4
    assert usage["thoughtsTokenCount"] == 5
    assert usage["cachedContentTokenCount"] == 1
    assert usage["totalTokenCount"] == prompt + 4 + 5
    assert data["modelVersion"] == "gemini-2.5-flash"
    entry = requests_log(http, provider="gemini")[-1]
    assert entry["key"] == KEY and entry["key_source"] == "x-goog-api-key" and entry["model"] == "gemini-2.5-flash"

    # ?key= works too and is not echoed in the logged query.
    r = http.post(f"{urls['gemini']}/models/gemini-2.0-flash:generateContent", params={"key": "qkey"}, json=body)
    assert r.status_code == 200
    entry = requests_log(http, provider="gemini")[-1]
    assert entry["key"] == "qkey" and entry["key_source"] == "query" and entry["query"] == {}


def test_gemini_max_tokens_nousage_and_auth(urls: dict[str, str], http: httpx.Client) -> None:
    url = f"{urls['gemini']}/models/gemini-2.0-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "hi [[nousage]]"}]}], "generationConfig": {"maxOutputTokens": 3}}
    data = http.post(url, headers={"x-goog-api-key": KEY}, json=body).json()
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert data["candidates"][0]["content"]["parts"][0]["text"] == "Hello from gemini"
    assert "usageMetadata" not in data
    r = http.post(url, json=body)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    r = http.post(url, json=body, headers={"x-goog-api-key": "invalid"})
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    r = http.post(url, json={}, headers={"x-goog-api-key": KEY})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_gemini_sse_stream(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi [[words:6]]"}]}]}
    r = http.post(f"{urls['gemini']}/models/gemini-2.5-pro:streamGenerateContent", params={"alt": "sse"},
                  headers={"x-goog-api-key": KEY}, json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("\r\n\r\n")
    frames = [json.loads(e["data"]) for e in sse_events(r.text, "\r\n\r\n")]
    assert len(frames) == 6
    text = "".join(f["candidates"][0]["content"]["parts"][0]["text"] for f in frames)
    assert text == "Hello from gemini gemini-2.5-pro. Hello from"
    assert [f["candidates"][0].get("finishReason") for f in frames] == [None] * 5 + ["STOP"]
    assert [f["usageMetadata"]["candidatesTokenCount"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert frames[-1]["usageMetadata"]["totalTokenCount"] == prompt_tokens("Hi [[words:6]]") + 6
    assert len({f["responseId"] for f in frames}) == 1
    assert requests_log(http)[-1]["stream"] is True


def test_gemini_stream_without_sse_is_a_json_array(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    r = http.post(f"{urls['gemini']}/models/gemini-2.5-pro:streamGenerateContent",
                  headers={"x-goog-api-key": KEY}, json=body)
    chunks = r.json()
    assert isinstance(chunks, list) and len(chunks) == 4
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_function_call(urls: dict[str, str], http: httpx.Client) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "[[tool:get_time]]"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_time", "description": "t"}]}]}
    data = http.post(f"{urls['gemini']}/models/gemini-2.5-flash:generateContent",
                     headers={"x-goog-api-key": KEY}, json=body).json()
    assert data["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "get_time", "args": {"x": 1}}}]
    r = http.post(f"{urls['gemini']}/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                  headers={"x-goog-api-key": KEY}, json=body)
    frames = [json.loads(e["data"]) for e in sse_events(r.text, "\r\n\r\n")]
    assert frames[-1]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_time"
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_unknown_method_is_404(urls: dict[str, str], http: httpx.Client) -> None:
    r = http.post(f"{urls['gemini']}/models/gemini-2.5-flash:predictLongRunning",
                  headers={"x-goog-api-key": KEY}, json={})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


# --------------------------------------------------------------------------------------------
# Request log
# --------------------------------------------------------------------------------------------


def test_request_log_filter_limit_clear_and_cap(urls: dict[str, str], http: httpx.Client) -> None:
    for provider in ("openai", "anthropic", "gemini"):
        url, headers, body = _chat_request(urls, provider, "hi", key=f"key-{provider}")
        http.post(url, headers={**headers, "X-Custom": "1"}, json=body).raise_for_status()
    log = requests_log(http)
    assert [e["provider"] for e in log] == ["openai", "anthropic", "gemini"]
    assert [e["key"] for e in log] == ["key-openai", "key-anthropic", "key-gemini"]
    for e in log:
        assert e["headers"]["x-custom"] == "1"
        assert not {"authorization", "x-api-key", "x-goog-api-key"} & set(e["headers"])
        assert e["method"] == "POST" and e["status"] == 200 and isinstance(e["ts"], float)
    assert [e["provider"] for e in requests_log(http, provider="anthropic")] == ["anthropic"]
    assert [e["provider"] for e in requests_log(http, limit=2)] == ["anthropic", "gemini"]
    assert http.delete("/__fake/requests").status_code == 200
    assert requests_log(http) == []

    client = oai(urls, "openai")
    for _ in range(205):
        client.models.list()
    log = requests_log(http)
    assert len(log) == 200
    assert log[-1]["id"] - log[0]["id"] == 199


# --------------------------------------------------------------------------------------------
# Catalogues
# --------------------------------------------------------------------------------------------


def test_openrouter_catalogue_shape_and_prices(urls: dict[str, str], http: httpx.Client) -> None:
    r = http.get(f"{urls['openrouter']}/models")  # public: no key needed
    assert r.status_code == 200
    models = r.json()["data"]
    assert len(models) == 300
    assert len({m["id"] for m in models}) == 300
    required = {"id", "canonical_slug", "name", "created", "description", "context_length", "architecture",
                "pricing", "top_provider", "per_request_limits", "supported_parameters"}
    for m in models:
        assert required <= set(m), m["id"]
        assert {"modality", "input_modalities", "output_modalities", "tokenizer", "instruct_type"} <= \
            set(m["architecture"])
        assert {"context_length", "max_completion_tokens", "is_moderated"} <= set(m["top_provider"])
        for value in m["pricing"].values():
            assert isinstance(value, str)
            Decimal(value)  # parses
        assert isinstance(m["created"], int) and isinstance(m["supported_parameters"], list)
    by_id = {m["id"]: m for m in models}
    for mid in ["openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-4.1", "openai/gpt-4.1-mini", "openai/o3-mini",
                "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku", "anthropic/claude-opus-4",
                "google/gemini-2.5-flash", "google/gemini-2.5-pro", "google/gemini-2.0-flash-001",
                "meta-llama/llama-3.3-70b-instruct", "meta-llama/llama-3.1-8b-instruct",
                "mistralai/mistral-large", "mistralai/mistral-small", "deepseek/deepseek-chat",
                "deepseek/deepseek-r1"]:
        assert mid in by_id, mid
    mini = by_id["openai/gpt-4o-mini"]
    assert mini["pricing"]["prompt"] == "0.00000015" and mini["pricing"]["completion"] == "0.0000006"
    assert mini["pricing"]["input_cache_read"] == "0.000000075"
    assert mini["context_length"] == 128000 and mini["top_provider"]["max_completion_tokens"] == 16384
    sonnet = by_id["anthropic/claude-sonnet-4"]["pricing"]
    assert (sonnet["prompt"], sonnet["completion"], sonnet["input_cache_write"]) == \
        ("0.000003", "0.000015", "0.00000375")
    assert by_id["openai/gpt-4o"]["architecture"]["input_modalities"] == ["text", "image", "file"]
    free = [m for m in models if m["id"].endswith(":free")]
    assert len(free) >= 4
    assert all(m["pricing"]["prompt"] == "0" and m["pricing"]["completion"] == "0" for m in free)
    assert by_id["openrouter/auto"]["pricing"]["prompt"] == "-1"  # real edge case
    assert models == fake_catalog.openrouter_models()  # deterministic


def test_other_catalogues(urls: dict[str, str], http: httpx.Client) -> None:
    models = oai(urls, "openai").models.list()
    ids = [m.id for m in models.data]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    raw = http.get(f"{urls['openai']}/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert raw["object"] == "list" and set(raw["data"][0]) == {"id", "object", "created", "owned_by"}
    assert oai(urls, "openai").models.retrieve("gpt-4o").owned_by == "system"
    assert http.get(f"{urls['openai']}/models").status_code == 401

    compat = oai(urls, "compat").models.list()
    assert "llama3.2:3b" in [m.id for m in compat.data]

    r = http.get(f"{urls['anthropic']}/models", headers=ANTHROPIC_HEADERS)
    page = r.json()
    assert page["has_more"] is False
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
    assert set(page["data"][0]) == {"type", "id", "display_name", "created_at"}
    assert "claude-sonnet-4-20250514" in [m["id"] for m in page["data"]]
    page1 = http.get(f"{urls['anthropic']}/models", params={"limit": 3}, headers=ANTHROPIC_HEADERS).json()
    assert len(page1["data"]) == 3 and page1["has_more"] is True
    page2 = http.get(f"{urls['anthropic']}/models", params={"limit": 3, "after_id": page1["last_id"]},
                     headers=ANTHROPIC_HEADERS).json()
    assert page2["data"][0]["id"] == page["data"][3]["id"]
    assert http.get(f"{urls['anthropic']}/models").status_code == 401

    g = http.get(f"{urls['gemini']}/models", headers={"x-goog-api-key": KEY}).json()
    names = [m["name"] for m in g["models"]]
    assert "models/gemini-2.5-flash" in names and "nextPageToken" not in g
    flash = next(m for m in g["models"] if m["name"] == "models/gemini-2.5-flash")
    assert {"version", "displayName", "description", "inputTokenLimit", "outputTokenLimit",
            "supportedGenerationMethods"} <= set(flash)
    assert "generateContent" in flash["supportedGenerationMethods"]
    p1 = http.get(f"{urls['gemini']}/models", params={"pageSize": 5, "key": KEY}).json()
    assert len(p1["models"]) == 5 and p1["nextPageToken"]
    p2 = http.get(f"{urls['gemini']}/models", params={"pageSize": 5, "pageToken": p1["nextPageToken"],
                                                      "key": KEY}).json()
    assert p2["models"][0]["name"] == names[5]
    one = http.get(f"{urls['gemini']}/models/gemini-2.5-pro", headers={"x-goog-api-key": KEY}).json()
    assert one["name"] == "models/gemini-2.5-pro"


def test_catalogue_control_endpoints(urls: dict[str, str], http: httpx.Client) -> None:
    r = http.put("/__fake/catalog/openrouter", json=["acme/new-model", "acme/free-one:free",
                                                     {"id": "raw/entry", "anything": True}])
    assert r.status_code == 200 and r.json()["count"] == 3
    models = http.get(f"{urls['openrouter']}/models").json()["data"]
    assert [m["id"] for m in models] == ["acme/new-model", "acme/free-one:free", "raw/entry"]
    assert models[1]["pricing"]["prompt"] == "0" and Decimal(models[0]["pricing"]["prompt"]) > 0
    assert models[2] == {"id": "raw/entry", "anything": True}

    http.put("/__fake/catalog/gemini", json=["gemini-x"]).raise_for_status()
    g = http.get(f"{urls['gemini']}/models", headers={"x-goog-api-key": KEY}).json()
    assert [m["name"] for m in g["models"]] == ["models/gemini-x"]

    assert http.post("/__fake/catalog/anthropic/fail", json={"status": 503}).status_code == 200
    r = http.get(f"{urls['anthropic']}/models", headers=ANTHROPIC_HEADERS)
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"
    http.post("/__fake/catalog/openrouter/fail", json={"status": 500}).raise_for_status()
    r = http.get(f"{urls['openrouter']}/models")
    assert r.status_code == 500 and r.json()["error"]["code"] == 500
    http.delete("/__fake/catalog/anthropic/fail").raise_for_status()
    assert http.get(f"{urls['anthropic']}/models", headers=ANTHROPIC_HEADERS).status_code == 200
    assert http.get(f"{urls['openrouter']}/models").status_code == 500

    assert http.put("/__fake/catalog/nope", json=[]).status_code == 404
    assert http.put("/__fake/catalog/openai", json={"not": "a list"}).status_code == 400

    http.post("/__fake/reset").raise_for_status()
    assert requests_log(http) == []
    assert len(http.get(f"{urls['openrouter']}/models").json()["data"]) == 300
    assert http.get(f"{urls['anthropic']}/models", headers=ANTHROPIC_HEADERS).status_code == 200


def test_openrouter_cost_follows_catalogue(urls: dict[str, str]) -> None:
    httpx.put(urls["openrouter"].split("/openrouter")[0] + "/__fake/catalog/openrouter",
              json=[{"id": "acme/priced", "pricing": {"prompt": "0.001", "completion": "0.002",
                                                      "request": "0.5"}}]).raise_for_status()
    resp = oai(urls, "openrouter").chat.completions.create(
        model="acme/priced", messages=[{"role": "user", "content": "12345678"}])  # 2 prompt tokens
    assert resp.usage is not None
    assert resp.usage.model_extra["cost"] == pytest.approx(2 * 0.001 + 4 * 0.002 + 0.5)


def test_create_app_gives_fresh_state(http: httpx.Client) -> None:
    other = start_in_thread(create_app())
    try:
        httpx.put(f"{other.url}/__fake/catalog/openai", json=["only-one"]).raise_for_status()
        assert len(httpx.get(f"{other.url}/__fake/catalog/openai").json()) == 1
        assert len(http.get("/__fake/catalog/openai").json()) > 1
    finally:
        other.stop()


def test_parse_directives() -> None:
    d = parse_directives("a [[fail:429]] [[sleep:0.5]] [[ttfb:0.2]] [[words:12]] [[chunk_delay:0.05]] "
                         "[[cut:3]] [[nousage]] [[tool:get_x]] [[cached:5]] [[reasoning:2]] [[bogus:zz]] "
                         "[[words:notanumber]]")
    assert (d.fail, d.sleep, d.ttfb, d.words, d.chunk_delay, d.cut, d.nousage, d.tool, d.cached,
            d.reasoning) == (429, 0.5, 0.2, 12, 0.05, 3, True, "get_x", 5, 2)
    assert parse_directives("plain").fail is None
    assert parse_directives("", model="acme/fail-503-x").fail == 503
    t = parse_directives("", model="my-timeout-model")
    assert t.fail == 504 and t.sleep >= 60


# ----------------------------------------------------------------------------- what providers bill
def test_images_and_non_ascii_text_are_billed_like_the_real_providers(urls: dict[str, str],
                                                                      http: httpx.Client) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    for model, per_image in (("gpt-4o", 765), ("gpt-4o-mini", 25_501)):
        content = [{"type": "text", "text": "abcd"}, image, image]
        r = http.post(f"{urls['openai']}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": content}]})
        assert r.json()["usage"]["prompt_tokens"] == 1 + 2 * per_image
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    r = http.post(f"{urls['anthropic']}/messages", headers=ANTHROPIC_HEADERS, json={
        "model": "claude-opus-4", "max_tokens": 5, "messages": [{"role": "user", "content": [block] * 3}]})
    assert r.json()["usage"]["input_tokens"] == 1 + 3 * 1_590
    r = http.post(f"{urls['gemini']}/models/gemini-2.5-flash:generateContent", headers={"x-goog-api-key": KEY},
                  json={"contents": [{"role": "user", "parts": [
                      {"text": "hi"}, {"fileData": {"mimeType": "image/png", "fileUri": "https://e.x/a.png"}}]}]})
    assert r.json()["usageMetadata"]["promptTokenCount"] == 1 + 2_322
    r = http.post(f"{urls['openai']}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json={
        "model": "gpt-4o", "messages": [{"role": "user", "content": "你好" * 50}]})
    assert r.json()["usage"]["prompt_tokens"] == 100  # a token per CJK character


def test_reasoning_counts_in_the_output_limit(urls: dict[str, str]) -> None:
    resp = oai(urls, "openai").chat.completions.create(
        model="o4-mini", max_completion_tokens=50,
        messages=[{"role": "user", "content": "[[reasoning:45]] [[words:20]]"}])
    assert resp.usage is not None and resp.usage.completion_tokens == 50
    assert resp.usage.completion_tokens_details.reasoning_tokens == 45
    assert resp.choices[0].finish_reason == "length" and len((resp.choices[0].message.content or "").split()) == 5


def test_openrouter_cost_cache_writes_and_max_price(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers = f"{urls['openrouter']}/chat/completions", {"Authorization": f"Bearer {KEY}"}
    model = "anthropic/claude-3.5-haiku"
    prices = fake_catalog.openrouter_pricing_index(fake_catalog.openrouter_models())[model]
    r = http.post(url, headers=headers, json={"model": model, "messages": [
        {"role": "user", "content": "x" * 396 + " [[cache_write:60]]"}]})
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == 104 and usage["prompt_tokens_details"]["cache_write_tokens"] == 60
    expected = 44 * prices["prompt"] + 60 * prices["input_cache_write"] + 4 * prices["completion"]
    assert Decimal(str(usage["cost"])) == pytest.approx(expected, rel=Decimal("1e-9"))
    surcharge = [{"role": "user", "content": "[[cost:1.5]]"}]
    r = http.post(url, headers=headers, json={"model": model, "messages": surcharge})
    assert r.json()["usage"]["cost"] == 1.5
    listed = {"prompt": str(prices["prompt"] * 1_000_000), "completion": str(prices["completion"] * 1_000_000)}
    capped = {"model": model, "provider": {"max_price": listed}}
    ok = http.post(url, headers=headers, json={**capped, "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200
    over = http.post(url, headers=headers, json={**capped, "messages": [
        {"role": "user", "content": "hi [[endpoint_price:1.5]]"}]})
    assert over.status_code == 404 and "max_price" in over.json()["error"]["message"]


def test_anthropic_one_hour_cache_writes_and_openai_service_tier(urls: dict[str, str], http: httpx.Client) -> None:
    def message(ttl: str | None) -> dict[str, Any]:
        control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
        content = [{"type": "text", "text": "x" * 400, "cache_control": control},
                   {"type": "text", "text": "[[cache_write:50]]"}]
        return {"model": "claude-3-5-haiku-20241022", "max_tokens": 5,
                "messages": [{"role": "user", "content": content}]}

    five = http.post(f"{urls['anthropic']}/messages", headers=ANTHROPIC_HEADERS, json=message(None)).json()["usage"]
    hour = http.post(f"{urls['anthropic']}/messages", headers=ANTHROPIC_HEADERS, json=message("1h")).json()["usage"]
    assert five["cache_creation"] == {"ephemeral_5m_input_tokens": 50, "ephemeral_1h_input_tokens": 0}
    assert hour["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 50}
    assert hour["cache_creation_input_tokens"] == 50
    for asked, served in ((None, "default"), ("auto", "default"), ("priority", "priority")):
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                **({"service_tier": asked} if asked else {})}
        r = http.post(f"{urls['openai']}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body)
        assert r.json()["service_tier"] == served


def test_zero_usage_malformed_and_nan(urls: dict[str, str], http: httpx.Client) -> None:
    url, headers = f"{urls['openai']}/chat/completions", {"Authorization": f"Bearer {KEY}"}

    def ask(text: str) -> httpx.Response:
        return http.post(url, headers=headers, json={"model": "m", "messages": [{"role": "user", "content": text}]})

    zero = ask("[[zero_usage]]")
    assert zero.json()["usage"]["prompt_tokens"] == 0 and zero.json()["usage"]["completion_tokens"] == 0
    bad = ask("[[malformed]]")
    assert bad.json()["choices"] == {"unexpected": True} and bad.json()["usage"]["completion_tokens"] == 4
    nan = ask("[[nan]]")
    assert "NaN" in nan.text and math.isnan(json.loads(nan.text)["choices"][0]["logprobs"]["content"][0]["logprob"])
