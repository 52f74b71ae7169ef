"""Adapter plumbing without sockets: SSE framing, error mapping table, transport error mapping,
usage finalisation and the shared client factory."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import httpx
import pytest

from gateway.adapters import registry, transport, upstream_errors
from gateway.adapters.contract import Target, Usage
from gateway.adapters.http_client import UpstreamClient, aclose_http_client, create_http_client, get_http_client
from gateway.adapters.registry import get_adapter
from gateway.adapters.shapes import parse_data_url
from gateway.adapters.sse import SSEDecoder
from gateway.adapters.upstream_errors import (
    CREDENTIALS_MESSAGE,
    error_from_event,
    error_from_status,
    error_from_transport,
    extract_error,
    scrub,
)
from gateway.errors import UpstreamError, UpstreamTimeout
from tests.support.apps import in_fresh_function

# --------------------------------------------------------------------------------------------
# SSE decoder
# --------------------------------------------------------------------------------------------


def _feed_all(pieces: list[bytes]) -> list[tuple[str | None, str]]:
    dec = SSEDecoder()
    out = []
    for p in pieces:
        out += [(e.event, e.data) for e in dec.feed(p)]
    out += [(e.event, e.data) for e in dec.close()]
    return out


def test_sse_basic_events_and_comments() -> None:
    raw = (b": OPENROUTER PROCESSING\n\n"
           b'data: {"a":1}\n\n'
           b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
           b"data: [DONE]\n\n")
    assert _feed_all([raw]) == [(None, '{"a":1}'), ("message_stop", '{"type":"message_stop"}'),
                                (None, "[DONE]")]


@pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"\r"])
def test_sse_line_endings_split_anywhere(sep: bytes) -> None:
    raw = (b"event: ping" + sep + b'data: {"x": "caf\xc3\xa9"}' + sep + sep
           + b"data: line1" + sep + b"data: line2" + sep + sep)
    expected = [("ping", '{"x": "café"}'), (None, "line1\nline2")]
    # every possible split point, including inside CRLF and inside a multi-byte character
    for i in range(len(raw) + 1):
        assert _feed_all([raw[:i], raw[i:]]) == expected, i
    assert _feed_all([bytes([b]) for b in raw]) == expected


def test_sse_mixed_line_endings_split_anywhere() -> None:
    """LF-only reads take a fast path; a read with a CR the spec's framing: mixed, they agree."""
    raw = b'data: {"a": 1}\n\r\ndata: b\r\n\ndata:  c\rdata: d\n\n: keep-alive\n\nevent: e\ndata: f\r\r'
    expected = [(None, '{"a": 1}'), (None, "b"), (None, " c\nd"), ("e", "f")]
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert _feed_all([raw[:i], raw[i:j], raw[j:]]) == expected, (i, j)


def test_sse_last_event_without_blank_line_is_kept() -> None:
    assert _feed_all([b'data: {"end": true}']) == [(None, '{"end": true}')]


def test_sse_field_without_space_and_unknown_fields() -> None:
    assert _feed_all([b"data:x\nid: 7\nretry: 100\n\n"]) == [(None, "x")]


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------

OPENAI_429 = {"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-abc123 on "
                                   "requests per min (RPM): Limit 3, Used 3, Requested 1.",
                        "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
OPENAI_401 = {"error": {"message": "Incorrect API key provided: sk-proj-****abcd. You can find your API key "
                                   "at https://platform.openai.com/account/api-keys.",
                        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
OPENAI_400 = {"error": {"message": "Invalid value for 'temperature': expected a number <= 2.",
                        "type": "invalid_request_error", "param": "temperature", "code": None}}
OPENAI_CTX = {"error": {"message": "This model's maximum context length is 128000 tokens. However, your "
                                   "messages resulted in 130000 tokens.", "type": "invalid_request_error",
                        "param": "messages", "code": "context_length_exceeded"}}
ANTHROPIC_529 = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                 "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
ANTHROPIC_400 = {"type": "error", "error": {"type": "invalid_request_error",
                                            "message": "max_tokens: Field required"}}
ANTHROPIC_404 = {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-x"}}
GEMINI_BAD_KEY = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                            "status": "INVALID_ARGUMENT",
                            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                         "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}
GEMINI_429 = {"error": {"code": 429, "message": "You exceeded your current quota, please check your plan "
                                                "and billing details.", "status": "RESOURCE_EXHAUSTED"}}
GEMINI_503 = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                        "status": "UNAVAILABLE"}}
GEMINI_504 = {"error": {"code": 504, "message": "Deadline expired before operation could complete.",
                        "status": "DEADLINE_EXCEEDED"}}
OPENROUTER_402 = {"error": {"code": 402, "message": "This request requires more credits"}}
OPENROUTER_403 = {"error": {"code": 403, "message": "Your input was flagged for \"harassment\".",
                            "metadata": {"reasons": ["harassment"], "flagged_input": "...",
                                         "provider_name": "OpenAI", "model_slug": "openai/gpt-4o"}}}


@pytest.mark.parametrize(
    ("provider", "status", "body", "cls", "our_status", "retryable", "code"),
    [
        ("openai", 429, OPENAI_429, UpstreamError, 429, True, "upstream_rate_limited"),
        ("gemini", 429, GEMINI_429, UpstreamError, 429, True, "upstream_rate_limited"),
        ("openai", 500, {"error": {"message": "The server had an error", "type": "server_error"}},
         UpstreamError, 502, True, "upstream_error"),
        ("anthropic", 529, ANTHROPIC_529, UpstreamError, 502, True, "upstream_unavailable"),
        ("gemini", 503, GEMINI_503, UpstreamError, 502, True, "upstream_unavailable"),
        ("openai", 502, "<html>Bad gateway</html>", UpstreamError, 502, True, "upstream_error"),
        ("openai", 408, {"error": {"message": "Request timed out"}}, UpstreamTimeout, 504, True,
         "upstream_timeout"),
        ("gemini", 504, GEMINI_504, UpstreamTimeout, 504, True, "upstream_timeout"),
        ("openai", 400, OPENAI_400, UpstreamError, 400, False, "upstream_bad_request"),
        ("openai", 400, OPENAI_CTX, UpstreamError, 400, False, "context_length_exceeded"),
        ("anthropic", 400, ANTHROPIC_400, UpstreamError, 400, False, "upstream_bad_request"),
        ("anthropic", 404, ANTHROPIC_404, UpstreamError, 400, False, "upstream_bad_request"),
        ("compat", 422, {"object": "error", "message": "bad field", "type": "BadRequestError"},
         UpstreamError, 400, False, "upstream_bad_request"),
        ("openai", 401, OPENAI_401, UpstreamError, 502, False, "upstream_auth_failed"),
        ("anthropic", 403, {"type": "error", "error": {"type": "permission_error", "message": "no"}},
         UpstreamError, 502, False, "upstream_auth_failed"),
        ("gemini", 400, GEMINI_BAD_KEY, UpstreamError, 502, False, "upstream_auth_failed"),
        ("openrouter", 402, OPENROUTER_402, UpstreamError, 502, True, "upstream_payment_required"),
        ("openrouter", 403, OPENROUTER_403, UpstreamError, 400, False, "content_flagged"),
    ],
)
def test_error_status_table(provider: str, status: int, body: Any, cls: type, our_status: int,
                            retryable: bool, code: str) -> None:
    raw = body if isinstance(body, str) else json.dumps(body)
    err = error_from_status(provider, status, raw.encode(), {"Retry-After": "7"}, api_key="sk-secret-123456")
    assert type(err) is cls
    assert err.status == our_status
    assert err.retryable is retryable
    assert err.code == code
    assert err.upstream_status == status
    assert err.provider == provider
    assert "sk-secret-123456" not in err.message
    if status == 429:
        assert err.headers == {"retry-after": "7"}
        assert "org-abc123" not in err.message  # the provider's account details stay private
        assert err.type == "rate_limit_error"
    else:
        assert err.headers == {}
    if our_status == 400:
        assert err.type == "invalid_request_error"


def test_bad_request_keeps_upstream_message() -> None:
    err = error_from_status("openai", 400, json.dumps(OPENAI_400).encode())
    assert err.message == OPENAI_400["error"]["message"]
    assert err.body()["error"]["code"] == "upstream_bad_request"
    err = error_from_status("anthropic", 400, json.dumps(ANTHROPIC_400).encode())
    assert err.message == "max_tokens: Field required"


def test_credentials_error_never_echoes_keys() -> None:
    err = error_from_status("openai", 401, json.dumps(OPENAI_401).encode(), api_key="sk-proj-abcd")
    assert err.message == CREDENTIALS_MESSAGE
    assert "sk-" not in json.dumps(err.body())


def test_bad_request_message_with_key_is_scrubbed() -> None:
    body = {"error": {"message": "key sk-live-ABCDEFGH12345 is not allowed for model x"}}
    err = error_from_status("compat", 400, json.dumps(body).encode(), api_key="zzz-my-own-key")
    assert "ABCDEFGH12345" not in err.message
    assert scrub("uses zzz-my-own-key here", "zzz-my-own-key") == "uses *** here"
    assert "AIza" not in scrub("key=AIzaSyA1234567890abcdefghijklmno")


def test_5xx_message_includes_provider_detail() -> None:
    err = error_from_status("anthropic", 529, json.dumps(ANTHROPIC_529).encode())
    assert "Overloaded" in err.message and "529" in err.message


@pytest.mark.parametrize(
    ("payload", "message", "kind"),
    [
        (OPENAI_400, OPENAI_400["error"]["message"], "invalid_request_error"),
        (ANTHROPIC_529, "Overloaded", "overloaded_error"),
        (GEMINI_503, "The model is overloaded. Please try again later.", "UNAVAILABLE"),
        ([GEMINI_503], "The model is overloaded. Please try again later.", "UNAVAILABLE"),
        ({"error": "model 'llama9' not found"}, "model 'llama9' not found", None),
        ({"object": "error", "message": "m", "type": "BadRequestError", "code": 400}, "m", "BadRequestError"),
        ("nope", None, None),
    ],
)
def test_extract_error_shapes(payload: Any, message: str | None, kind: str | None) -> None:
    assert extract_error(payload) == (message, kind)


def test_error_events_mid_stream() -> None:
    err = error_from_event("anthropic", ANTHROPIC_529)
    assert err.retryable and err.status == 502 and err.upstream_status == 529
    assert "while generating" in err.message and "Overloaded" in err.message
    err = error_from_event("openrouter", {"error": {"code": "server_error", "message": "Provider disconnected"}})
    assert err.retryable and err.status == 502
    err = error_from_event("gemini", {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}})
    assert err.status == 429 and err.retryable
    err = error_from_event("anthropic", {"type": "error", "error": {"type": "invalid_request_error",
                                                                   "message": "bad image"}})
    assert err.status == 400 and not err.retryable and err.message == "bad image"


def _aiohttp_conn_key() -> Any:
    from aiohttp.client_reqrep import ConnectionKey

    return ConnectionKey("api.example.com", 443, True, True, None, None, None)


def _mapped(original: BaseException, httpx_cls: type[Exception]) -> Exception:
    try:
        try:
            raise original
        except BaseException as e:
            raise httpx_cls(str(e)) from e
    except Exception as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "cls", "code"),
    [
        (httpx.ReadTimeout("read"), UpstreamTimeout, "upstream_timeout"),
        (httpx.PoolTimeout("pool"), UpstreamTimeout, "upstream_timeout"),
        (httpx.ConnectError("refused"), UpstreamError, "upstream_unreachable"),
        (httpx.RemoteProtocolError("peer closed"), UpstreamError, "upstream_connection_error"),
        (httpx.ReadError("reset"), UpstreamError, "upstream_connection_error"),
        # httpx_aiohttp maps these to the wrong httpx classes; the aiohttp cause decides
        (_mapped(aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout), UpstreamError,
         "upstream_connection_error"),
        (_mapped(aiohttp.ClientConnectorError(_aiohttp_conn_key(), OSError(111, "Connection refused")),
                 httpx.ConnectTimeout), UpstreamError, "upstream_unreachable"),
        (_mapped(aiohttp.SocketTimeoutError("Timeout on reading data from socket"), httpx.ReadTimeout),
         UpstreamTimeout, "upstream_timeout"),
        (_mapped(aiohttp.ConnectionTimeoutError("Connection timeout"), httpx.ConnectTimeout), UpstreamTimeout,
         "upstream_timeout"),
        (_mapped(aiohttp.ClientPayloadError("Response payload is not completed"), httpx.ReadError),
         UpstreamError, "upstream_connection_error"),
        (aiohttp.ClientPayloadError("raw, unmapped"), UpstreamError, "upstream_connection_error"),
        (TimeoutError(), UpstreamTimeout, "upstream_timeout"),
    ],
)
def test_transport_error_mapping(exc: BaseException, cls: type, code: str) -> None:
    err = error_from_transport("openai", exc)
    assert type(err) is cls
    assert err.code == code
    assert err.retryable is True
    assert err.status == (504 if cls is UpstreamTimeout else 502)


def test_stale_connection_detection() -> None:
    assert upstream_errors.is_stale_connection_error(_mapped(aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout))
    assert not upstream_errors.is_stale_connection_error(httpx.ReadTimeout("x"))


async def test_send_retries_once_on_stale_pooled_connection() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise _mapped(aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout)  # type: ignore[misc]
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        data = await transport.post_json(client, lambda: client.build_request("POST", "http://x/y"), "openai", "")
    assert data == {"ok": True} and calls == 2


async def test_send_gives_up_after_second_failure() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamError) as info:
            await transport.post_json(client, lambda: client.build_request("POST", "http://x/y"), "openai", "")
    assert info.value.retryable and info.value.status == 502


async def test_post_json_invalid_json_is_retryable_502() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>"))) as c:
        with pytest.raises(UpstreamError) as info:
            await transport.post_json(c, lambda: c.build_request("POST", "http://x/y"), "gemini", "")
    assert info.value.code == "upstream_bad_response" and info.value.retryable


# --------------------------------------------------------------------------------------------
# Misc helpers / contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    '{"a":1,"b":[true,null,"x"]}', '[1,2]', '"text"', '42', '-1.5e3', 'null', 'NaN', '{"x":Infinity}',
    ' {"a":1}', '{"a":1} ', '\t{"a":1}\n', '{"a":"caf\\u00e9 \u00e9"}', '{"a":{"b":{"c":[{}]}}}',
])
def test_load_json_event_parses_as_json_loads(data: str) -> None:
    assert repr(upstream_errors.load_json_event("openai", data)) == repr(json.loads(data))  # (NaN != NaN)


@pytest.mark.parametrize("data", ['{"a":1', '{"a":1}x', '{"a":1} {"b":2}', '\ufeff{"a":1}', '', '   ', "{'a':1}",
                                  '[1,]', 'nul', '{"a":1}}'])
def test_load_json_event_refuses_what_json_loads_refuses(data: str) -> None:
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(UpstreamError) as caught:
        upstream_errors.load_json_event("openai", data)
    assert caught.value.code == "upstream_bad_response" and caught.value.status == 502


def test_get_adapter() -> None:
    for p in registry.PROVIDERS:
        assert get_adapter(p).provider == p
    assert get_adapter("openai") is get_adapter("openai")
    with pytest.raises(ValueError, match="unknown provider"):
        get_adapter("bedrock")


def test_native_adapters_load_on_first_use_of_their_provider() -> None:
    """A cold start of the query function (functions/query/app.py) does not import the Anthropic
    and Gemini adapters; the first use of their provider does (adapter, model list, catalogue
    names), and gives what the eager registry gave."""

    code = ("import asyncio, json, sys, app\n"
            "native = ('gateway.adapters.anthropic', 'gateway.adapters.gemini')\n"
            "out = [sorted(m for m in native if m in sys.modules)]\n"
            "from gateway.adapters import registry\n"
            "openai = registry.get_adapter('openai')\n"
            "out.append(sorted(m for m in native if m in sys.modules))\n"
            "a = registry.get_adapter('anthropic')\n"
            "out.append([type(a).__module__, type(a).__name__, a is registry.get_adapter('anthropic'),\n"
            "            'gateway.adapters.gemini' in sys.modules])\n"
            "out.append(registry.catalogue_ids('anthropic', 'claude-3-7-sonnet-20250219'))\n"
            "async def get(url, headers, params):\n"
            "    return {'models': [{'name': 'models/gemini-2.5-flash',\n"
            "                        'supportedGenerationMethods': ['generateContent']}]}\n"
            "models, listed = asyncio.run(registry.provider('gemini').list_models(get, 'https://g.test/v1beta', {}))\n"
            "out.append([[m.provider, m.upstream] for m in models] + [listed])\n"
            "out.append(type(registry.get_adapter('gemini')).__name__)\n"
            "print(json.dumps(out))")
    at_import, after_openai, anthropic, ids, gemini_models, gemini = json.loads(in_fresh_function("query", code))
    assert at_import == [] and after_openai == []
    assert anthropic == ["gateway.adapters.anthropic", "AnthropicAdapter", True, False]
    assert ids[0] == "anthropic/claude-3.7-sonnet"
    assert gemini_models == [["gemini", "gemini-2.5-flash"], 1]
    assert gemini == "GeminiAdapter"


def test_target_repr_hides_key() -> None:
    t = Target("openai", "gpt-4o-mini", "openai/gpt-4o-mini", "https://api.openai.com/v1", "sk-very-secret")
    assert "sk-very-secret" not in repr(t)


def test_usage_as_openai() -> None:
    u = Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=3)
    assert u.as_openai() == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                             "prompt_tokens_details": {"cached_tokens": 3}}
    assert u.reported is True
    assert u.as_openai(reasoning_tokens=2)["completion_tokens_details"] == {"reasoning_tokens": 2}


def test_parse_data_url() -> None:
    assert parse_data_url("data:image/png;base64,iVBORw0KGgo=") == ("image/png", "iVBORw0KGgo=")
    assert parse_data_url("data:image/jpeg;charset=utf-8;base64,AAA") == ("image/jpeg", "AAA")
    assert parse_data_url("https://example.com/cat.png") is None
    assert parse_data_url("data:text/plain,hello") is None


# --------------------------------------------------------------------------------------------
# Shared HTTP client
# --------------------------------------------------------------------------------------------


async def test_get_http_client_is_shared_per_loop() -> None:
    await aclose_http_client()
    c1 = get_http_client()
    c2 = get_http_client()
    assert c1 is c2
    assert isinstance(c1, UpstreamClient)
    t = c1.timeout
    from gateway.config import get_settings

    s = get_settings()
    assert (t.connect, t.read, t.write, t.pool) == (s.upstream_connect_timeout_s, s.upstream_read_timeout_s,
                                                    10.0, 5.0)
    # the pool: at most 200 connections in use, idle ones kept 30 s
    assert c1.max_connections == 200 and c1.keepalive_expiry == 30.0

    # another loop (a thread running its own loop) gets its own client
    other: list[UpstreamClient] = []

    def run() -> None:
        async def grab() -> None:
            other.append(get_http_client())

        asyncio.run(grab())

    th = threading.Thread(target=run)
    th.start()
    th.join()
    assert other and other[0] is not c1
    # back on our loop: the old-loop client is replaced again, and it is usable
    c3 = get_http_client()
    assert c3 is not other[0] and not c3.is_closed
    await aclose_http_client()
    assert c3.is_closed


def test_get_http_client_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        get_http_client()


async def test_create_http_client_custom_timeout() -> None:
    client = create_http_client(timeout=httpx.Timeout(1.0))
    try:
        assert client.timeout.read == 1.0
    finally:
        await client.aclose()


async def test_upstream_connections_share_one_tls_context() -> None:
    """The upstream client does not load a CA bundle of its own: it verifies with one shared context
    (coldstart's in a function; a CA bundle costs tens of ms and 1-2.5 MiB of a cold start)."""
    import ssl

    from gateway.adapters.http_client import shared_ssl_context

    ctx = shared_ssl_context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx is shared_ssl_context()
    client = create_http_client()
    try:
        assert client.ssl_context is ctx
    finally:
        await client.aclose()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_an_upstream_body_is_json_dumps_compact(provider: str) -> None:
    """The request body each adapter sends is ``json.dumps(payload, separators=(",", ":"))``'s bytes
    (one shared encoder: ``http_client.request_json``), non-ASCII escaped as before."""
    from gateway.adapters import anthropic, gemini
    from gateway.adapters.http_client import create_http_client

    adapter = registry.get_adapter(provider)
    target = Target(provider, "m-1", f"{provider}/m-1", "https://upstream.invalid/v1", "sk-test")
    body = {"model": f"{provider}/m-1", "messages": [{"role": "user", "content": "h\u00e9llo \u2603 \"q\"\n"}],
            "max_tokens": 16, "temperature": 0.5}
    client = create_http_client()
    for stream in (False, True):
        sent = adapter.build_request(client, target, body, stream=stream).content
        payload = (anthropic.build_body(target, body, stream=stream) if provider == "anthropic"
                   else gemini.build_body(target, body) if provider == "gemini"
                   else adapter.build_body(target, body, stream=stream))
        assert sent == json.dumps(payload, separators=(",", ":")).encode()
        assert b"\\u00e9" in sent
