"""Every adapter against the fake providers (infra/local/fake_providers.py) over real sockets,
through the lean upstream client the gateway uses in production (gateway.upstream_http).

Covers, per provider: non-stream and stream translation, usage extraction (reported, cached,
missing → estimated), error statuses, timeouts, a cut stream (error + partial usage), in-stream
error events, incremental delivery (first chunk long before the end), ``aclose`` stopping the
upstream, tool calls and keep-alive connection reuse.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gateway.adapters import Target, create_http_client, get_adapter, get_http_client, registry
from gateway.adapters.http_client import aclose_http_client
from gateway.config import reset_settings
from gateway.errors import UpstreamError, UpstreamTimeout
from infra.local.fake_providers import base_urls, create_app
from infra.local.servers import start_in_thread

PROVIDERS = list(registry.PROVIDERS)
UPSTREAM_MODEL = {"openai": "gpt-4o-mini", "openrouter": "openai/gpt-4o-mini",
                  "anthropic": "claude-sonnet-4-20250514", "gemini": "gemini-2.5-flash", "compat": "llama3.1:8b"}
PUBLIC_ID = {"openai": "openai/gpt-4o-mini", "openrouter": "openai/gpt-4o-mini",
             "anthropic": "anthropic/claude-sonnet-4", "gemini": "google/gemini-2.5-flash",
             "compat": "local/llama3.1"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"x": {"type": "integer"}}}}}]


@dataclass
class Spy:
    """ASGI wrapper: which TCP connection served each request, body sends and disconnects."""

    app: Any
    log: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry: dict[str, Any] = {"path": scope["path"], "client": tuple(scope["client"] or ()), "sends": 0,
                                 "disconnected_at": None, "finished": False}
        self.log.append(entry)

        async def recv() -> Any:
            msg = await receive()
            if msg["type"] == "http.disconnect" and entry["disconnected_at"] is None:
                entry["disconnected_at"] = time.monotonic()
            return msg

        async def snd(msg: Any) -> None:
            if msg["type"] == "http.response.body" and msg.get("body"):
                entry["sends"] += 1
            await send(msg)

        try:
            await self.app(scope, recv, snd)
        finally:
            entry["finished"] = True


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, Spy]]:
    spy = Spy(create_app())
    server = start_in_thread(spy)
    try:
        yield server.url, spy
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _reset(fake: tuple[str, Spy]) -> None:
    httpx.post(f"{fake[0]}/__fake/reset").raise_for_status()
    fake[1].log.clear()


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = create_http_client(timeout=httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0))
    yield c
    await c.aclose()


@pytest.fixture
async def short_client() -> AsyncIterator[httpx.AsyncClient]:
    c = create_http_client(timeout=httpx.Timeout(connect=2.0, read=0.5, write=2.0, pool=2.0))
    yield c
    await c.aclose()


def target(fake: tuple[str, Spy], provider: str, *, model: str | None = None, key: str | None = None) -> Target:
    return Target(provider, model or UPSTREAM_MODEL[provider], PUBLIC_ID[provider], base_urls(fake[0])[provider],
                  key if key is not None else f"key-{provider}-0123456789")


SYSTEM = "You are a test double."


def body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "ignored", "messages": [{"role": "system", "content": SYSTEM},
                                             {"role": "user", "content": text}], **extra}


def expected_prompt(text: str) -> int:
    return max(1, math.ceil((len(SYSTEM) + len(text)) / 4))


def last_request(fake: tuple[str, Spy], provider: str) -> dict[str, Any]:
    items = httpx.get(f"{fake[0]}/__fake/requests", params={"provider": provider, "limit": 1}).json()
    assert items, "the fake saw no request"
    return items[-1]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# --------------------------------------------------------------------------------------------
# happy paths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_complete(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    text = "Say hello [[words:6]]"
    out, usage = await get_adapter(provider).complete(client, target(fake, provider), body(text, models=["x/y"]))
    assert out["object"] == "chat.completion" and out["model"] == PUBLIC_ID[provider]
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"].startswith(f"Hello from {provider} ")
    assert len(msg["content"].split()) == 6
    assert out["choices"][0]["finish_reason"] == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reported) == (expected_prompt(text), 6, True)
    assert out["usage"]["total_tokens"] == usage.prompt_tokens + 6
    seen = last_request(fake, provider)
    assert seen["key"] == f"key-{provider}-0123456789"
    assert seen["model"] == UPSTREAM_MODEL[provider]
    assert seen["stream"] is False
    if provider != "gemini":
        assert "models" not in seen["body"]


@pytest.mark.parametrize("stream", [False, True])
async def test_openrouter_attribution_headers(fake: tuple[str, Spy], client: httpx.AsyncClient,
                                             monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    """OPENROUTER_HTTP_REFERER / OPENROUTER_APP_TITLE reach OpenRouter as HTTP-Referer / X-Title
    (completions and streams); the other providers never see them."""
    monkeypatch.setenv("OPENROUTER_HTTP_REFERER", "https://gateway.example.com")
    monkeypatch.setenv("OPENROUTER_APP_TITLE", "Multi-LLM Gateway")
    reset_settings()
    try:
        for provider in ("openrouter", "openai"):
            adapter = get_adapter(provider)
            if stream:
                s = adapter.stream(client, target(fake, provider), body("hi [[words:2]]", stream=True))
                await s.open()
                _ = [c async for c in s]
            else:
                await adapter.complete(client, target(fake, provider), body("hi [[words:2]]"))
            headers = {k.lower(): v for k, v in last_request(fake, provider)["headers"].items()}
            if provider == "openrouter":
                assert headers["http-referer"] == "https://gateway.example.com"
                assert headers["x-title"] == "Multi-LLM Gateway"
            else:
                assert "http-referer" not in headers and "x-title" not in headers
    finally:
        monkeypatch.delenv("OPENROUTER_HTTP_REFERER")
        monkeypatch.delenv("OPENROUTER_APP_TITLE")
        reset_settings()
    await get_adapter("openrouter").complete(client, target(fake, "openrouter"), body("hi [[words:2]]"))
    headers = {k.lower() for k in last_request(fake, "openrouter")["headers"]}
    assert "http-referer" not in headers and "x-title" not in headers  # unset: not sent


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    text = "Stream please [[words:5]]"
    s = get_adapter(provider).stream(client, target(fake, provider), body(text, stream=True))
    await s.open()
    chunks = [c async for c in s]
    assert all(c["model"] == PUBLIC_ID[provider] and c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["choices"] for c in chunks)  # the usage-only chunk is never yielded
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert text_of(chunks).split() == ["Hello", "from", provider, f"{UPSTREAM_MODEL[provider]}.", "Hello"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.reported) == (expected_prompt(text), 5, True)
    seen = last_request(fake, provider)
    assert seen["stream"] is True
    if provider in ("openai", "compat", "openrouter"):
        assert seen["body"]["stream_options"] == {"include_usage": True}
    if provider == "gemini":
        assert seen["query"] == {"alt": "sse"}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream_is_incremental(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    s = get_adapter(provider).stream(client, target(fake, provider),
                                     body("[[ttfb:0]] [[chunk_delay:0.2]] [[words:8]]"))
    t0 = time.monotonic()
    await s.open()
    stamps: list[float] = []
    content_stamps: list[float] = []
    async for c in s:
        now = time.monotonic() - t0
        stamps.append(now)
        if c["choices"][0]["delta"].get("content"):
            content_stamps.append(now)
    total = stamps[-1]
    assert total >= 1.2  # ~8-11 frames 0.2 s apart
    assert stamps[0] < 0.5, stamps  # the first chunk is relayed as soon as it is sent
    assert content_stamps[0] < 0.9, content_stamps
    assert content_stamps[0] < total / 2
    # chunks arrive spread over time, not in one burst at the end
    assert content_stamps[-1] - content_stamps[0] >= 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cached_tokens(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    text = "A long prompt that will be cached, repeated enough to have tokens [[cached:5]]"
    _, usage = await get_adapter(provider).complete(client, target(fake, provider), body(text))
    if provider == "compat":
        return  # compat servers report prompt_tokens_details too, nothing provider-specific to check
    assert usage.cached_tokens == 5
    assert usage.prompt_tokens == expected_prompt(text)  # cached tokens are part of the prompt count


async def test_anthropic_cache_writes_count_as_prompt(fake: tuple[str, Spy], client: httpx.AsyncClient) -> None:
    text = "A long prompt that will be cached, repeated enough to have tokens [[cached:4]] [[cache_write:6]]"
    _, usage = await get_adapter("anthropic").complete(client, target(fake, "anthropic"), body(text))
    assert (usage.prompt_tokens, usage.cached_tokens) == (expected_prompt(text), 4)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_usage_is_estimated(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    text = "no usage please [[nousage]] [[words:4]]"
    out, usage = await get_adapter(provider).complete(client, target(fake, provider), body(text))
    assert usage.reported is False and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert out["usage"]["prompt_tokens"] == usage.prompt_tokens
    s = get_adapter(provider).stream(client, target(fake, provider), body(text))
    await s.open()
    chunks = [c async for c in s]
    assert text_of(chunks)
    assert s.usage is not None and s.usage.reported is False
    assert s.usage.prompt_tokens > 0 and s.usage.completion_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_calls(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    import json

    b = body("weather? [[tool:get_weather]]", tools=TOOLS, tool_choice="auto")
    out, _ = await get_adapter(provider).complete(client, target(fake, provider), b)
    choice = out["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather" and call["id"]
    assert json.loads(call["function"]["arguments"]) == {"x": 1}
    assert choice["finish_reason"] == "tool_calls"

    s = get_adapter(provider).stream(client, target(fake, provider), b)
    await s.open()
    chunks = [c async for c in s]
    parts = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert parts[0]["function"]["name"] == "get_weather" and parts[0]["id"]
    assert json.loads("".join(p["function"].get("arguments") or "" for p in parts)) == {"x": 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

ERRORS = [(500, 502, True), (503, 502, True), (429, 429, True), (400, 400, False), (404, 400, False),
          (401, 502, False)]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("code", "status", "retryable"), ERRORS)
async def test_error_statuses(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str, code: int,
                              status: int, retryable: bool) -> None:
    b = body(f"please fail [[fail:{code}]] [[retry_after:7]]")
    for attempt in ("complete", "stream"):
        with pytest.raises(UpstreamError) as info:
            if attempt == "complete":
                await get_adapter(provider).complete(client, target(fake, provider), b)
            else:
                s = get_adapter(provider).stream(client, target(fake, provider), b)
                try:
                    await s.open()
                finally:
                    await s.aclose()
        err = info.value
        assert type(err) is UpstreamError
        assert (err.status, err.retryable, err.upstream_status, err.provider) == (status, retryable, code,
                                                                                  provider), attempt
        if code == 429:
            assert err.headers == {"retry-after": "7"} and err.code == "upstream_rate_limited"
        if code == 401:
            assert err.message == "provider rejected the credentials"
        assert f"key-{provider}" not in err.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_invalid_key(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    t = target(fake, provider, key="invalid-key-123456789")
    with pytest.raises(UpstreamError) as info:
        await get_adapter(provider).complete(client, t, body("hi"))
    assert info.value.message == "provider rejected the credentials"
    assert not info.value.retryable and info.value.status == 502
    assert "invalid-key" not in str(info.value.body())


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("model_suffix", "status"), [("fail-500", 502), ("fail-429", 429)])
async def test_failing_model_ids(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str,
                                 model_suffix: str, status: int) -> None:
    t = target(fake, provider, model=f"{UPSTREAM_MODEL[provider]}-{model_suffix}")
    with pytest.raises(UpstreamError) as info:
        await get_adapter(provider).complete(client, t, body("hi"))
    assert info.value.status == status and info.value.retryable


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_timeouts(fake: tuple[str, Spy], short_client: httpx.AsyncClient, provider: str) -> None:
    adapter = get_adapter(provider)
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await adapter.complete(short_client, target(fake, provider), body("slow [[sleep:3]]"))
    assert info.value.status == 504 and info.value.retryable
    s = adapter.stream(short_client, target(fake, provider), body("slow [[sleep:3]]"))
    with pytest.raises(UpstreamTimeout):
        await s.open()
    await s.aclose()
    # a model id containing "timeout" never answers
    s = adapter.stream(short_client, target(fake, provider, model="slow-timeout-model"), body("hi"))
    with pytest.raises(UpstreamTimeout):
        await s.open()
    assert time.monotonic() - t0 < 5
    # a stream that stalls after it started: the read timeout fires mid-stream
    s = adapter.stream(short_client, target(fake, provider), body("[[words:5]] [[chunk_delay:2]]"))
    await s.open()
    got = []
    with pytest.raises(UpstreamTimeout):
        async for c in s:
            got.append(c)
    assert got  # the first chunk came before the stall
    assert s.usage is not None


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cut_stream(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    s = get_adapter(provider).stream(client, target(fake, provider), body("[[words:10]] [[cut:5]]"))
    await s.open()
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as info:
        async for c in s:
            got.append(c)
    assert got and info.value.retryable and info.value.status == 502
    assert text_of(got)
    u = s.usage
    assert u is not None and u.prompt_tokens > 0 and u.completion_tokens > 0
    if provider != "gemini":  # Gemini's cumulative usageMetadata stays exact
        assert u.reported is False


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cut_non_stream_body(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await get_adapter(provider).complete(client, target(fake, provider), body("[[cut:1]]"))
    assert info.value.retryable and info.value.status == 502
    # the request was not silently re-sent after a response had started
    assert len(httpx.get(f"{fake[0]}/__fake/requests", params={"provider": provider}).json()) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_in_stream_error_event(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    s = get_adapter(provider).stream(client, target(fake, provider), body("[[words:10]] [[stream_error:4]]"))
    await s.open()
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as info:
        async for c in s:
            got.append(c)
    assert got and info.value.retryable
    assert "while generating" in info.value.message
    assert s.usage is not None


# --------------------------------------------------------------------------------------------
# connection handling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_aclose_stops_the_upstream(fake: tuple[str, Spy], client: httpx.AsyncClient, provider: str) -> None:
    spy = fake[1]
    s = get_adapter(provider).stream(client, target(fake, provider), body("[[words:60]] [[chunk_delay:0.1]]"))
    await s.open()
    it = s.__aiter__()
    for _ in range(3):
        await it.__anext__()
    closed_at = time.monotonic()
    await s.aclose()
    await s.aclose()  # idempotent
    entry = next(e for e in spy.log if "chat/completions" in e["path"] or "messages" in e["path"]
                 or "GenerateContent" in e["path"])
    for _ in range(40):
        if entry["finished"]:
            break
        await asyncio.sleep(0.05)
    assert entry["finished"], "the fake kept streaming after aclose()"
    assert entry["disconnected_at"] is not None and entry["disconnected_at"] - closed_at < 1.0
    assert entry["sends"] < 20  # far from the 60+ frames of the full answer
    assert s.usage is not None and s.usage.completion_tokens > 0  # final (partial) usage after aclose


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_keepalive_connection_is_reused(fake: tuple[str, Spy], provider: str) -> None:
    spy = fake[1]
    c = create_http_client()
    try:
        t = target(fake, provider)
        await get_adapter(provider).complete(c, t, body("one"))
        s = get_adapter(provider).stream(c, t, body("two [[words:3]]"))
        await s.open()
        _ = [x async for x in s]
        await get_adapter(provider).complete(c, t, body("three"))
    finally:
        await c.aclose()
    ports = [e["client"] for e in spy.log if not e["path"].startswith("/__fake")]
    assert len(ports) == 3 and len(set(ports)) == 1, ports  # one TCP connection for all three calls


async def test_shared_client_against_fake(fake: tuple[str, Spy]) -> None:
    await aclose_http_client()
    client = get_http_client()
    out, usage = await get_adapter("openai").complete(client, target(fake, "openai"), body("hi"))
    assert get_http_client() is client
    assert out["choices"][0]["message"]["content"] and usage.reported
    await aclose_http_client()
    assert client.is_closed


async def test_unreachable_provider(client: httpx.AsyncClient) -> None:
    from infra.local.servers import free_port

    t = Target("openai", "gpt-4o-mini", "openai/gpt-4o-mini", f"http://127.0.0.1:{free_port()}/v1", "k")
    with pytest.raises(UpstreamError) as info:
        await get_adapter("openai").complete(client, t, body("hi"))
    assert type(info.value) is UpstreamError
    assert info.value.code == "upstream_unreachable" and info.value.retryable and info.value.status == 502
    s = get_adapter("openai").stream(client, t, body("hi"))
    with pytest.raises(UpstreamError):
        await s.open()


async def test_read_timeout_of_one_call(fake: tuple[str, Spy], client: httpx.AsyncClient) -> None:
    """``complete(read_timeout=...)`` (the caller's deadline) bounds that call below the client's 5 s."""
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await get_adapter("openai").complete(client, target(fake, "openai"), body("slow [[sleep:3]]"),
                                             read_timeout=0.3)
    assert time.monotonic() - t0 < 2.0 and info.value.status == 504 and info.value.retryable
    out, _ = await get_adapter("openai").complete(client, target(fake, "openai"), body("hi"), read_timeout=2.0)
    assert out["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------------------------
# a raw HTTP/1.1 server: dead pooled connections, disconnects, compressed answers
# --------------------------------------------------------------------------------------------

ANSWER = (b'{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
          b'"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}')


@dataclass
class RawServer:
    """``answers(connection_no, request_no_on_it)`` -> the raw response bytes, or None to close
    the connection without answering."""

    answers: Any
    connections: int = 0
    requests: int = 0
    seen_headers: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.requests += 1
                self.seen_headers.append(head)
                n += 1
                answer = self.answers(conn, n)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def http_answer(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"content-type: application/json", b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@pytest.fixture
async def raw_server() -> AsyncIterator[Any]:
    servers: list[asyncio.Server] = []

    async def start(answers: Any) -> tuple[RawServer, Target]:
        raw = RawServer(answers)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return raw, Target("openai", "gpt-4o-mini", "openai/gpt-4o-mini", f"http://127.0.0.1:{port}/v1", "k")

    yield start
    for s in servers:
        s.close()


async def test_dead_pooled_connection_is_retried_once(raw_server: Any) -> None:
    """The provider closed the kept-alive connection when our next request arrived: the request is
    sent again on a new connection (nothing was answered, nothing billed), once."""
    raw, t = await raw_server(lambda conn, n: http_answer(ANSWER) if n == 1 else None)
    c = create_http_client()
    try:
        adapter = get_adapter("openai")
        await adapter.complete(c, t, body("one"))
        out, usage = await adapter.complete(c, t, body("two"))
        assert out["choices"][0]["message"]["content"] == "hello" and usage.prompt_tokens == 3
        assert (raw.connections, raw.requests) == (2, 3)
        s = adapter.stream(c, t, body("three"))  # the stream's open() retries the same way
        with pytest.raises(UpstreamError):  # (the answer is not SSE: what matters is the retry)
            await s.open()
            _ = [x async for x in s]
        await s.aclose()
        assert (raw.connections, raw.requests) == (3, 5)
    finally:
        await c.aclose()


async def test_provider_closing_before_answering(raw_server: Any) -> None:
    """Closed without an answer twice: ``upstream_connection_error`` (502, retryable: fallback)."""
    raw, t = await raw_server(lambda conn, n: None)
    c = create_http_client()
    try:
        with pytest.raises(UpstreamError) as info:
            await get_adapter("openai").complete(c, t, body("hi"))
        assert type(info.value) is UpstreamError and info.value.code == "upstream_connection_error"
        assert info.value.status == 502 and info.value.retryable
        assert raw.requests == 2  # the first attempt and one retry
    finally:
        await c.aclose()


async def test_compressed_answer_and_request_headers(raw_server: Any) -> None:
    import gzip

    raw, t = await raw_server(lambda conn, n: http_answer(gzip.compress(ANSWER), b"content-encoding: gzip"))
    c = create_http_client()
    try:
        out, usage = await get_adapter("openai").complete(c, t, body("hi"))
        assert out["choices"][0]["message"]["content"] == "hello" and usage.completion_tokens == 1
    finally:
        await c.aclose()
    head = raw.seen_headers[0].lower()
    assert head.startswith(b"post /v1/chat/completions http/1.1")
    for expected in (b"authorization: bearer k", b"content-type: application/json",
                     b"user-agent: multi-llm-gateway/", b"accept-encoding: gzip"):
        assert expected in head
