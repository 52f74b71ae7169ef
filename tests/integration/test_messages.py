"""``POST /v1/messages`` in-process: the messages function's app (what Mangum wraps) with real
Postgres, the Upstash bridge and the fake providers; driven by the official anthropic SDK where a
client is involved. Native for Anthropic models, translated for the others; every request leaves
one usage record and balance == sum(ledger)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from gateway import db
from tests.support.account import upstream_requests
from tests.support.apps import client_leaves_mid_stream, function_fixtures, load_module, post_event
from tests.support.money import money_state, one_record

pytestmark = pytest.mark.integration
messages_app, http = function_fixtures("functions/messages/app.py", app="messages_app", client="http")

NATIVE = "anthropic/claude-3.5-haiku"
TRANSLATED = "openai/gpt-4o-mini"
TOOL = {"name": "get_weather", "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _sdk(http: httpx.AsyncClient, key: str) -> anthropic.AsyncAnthropic:
    """The SDK on the same in-process app (it ships its own httpx fork, ``httpx2``)."""
    import httpx2

    app = http._transport.app  # type: ignore[attr-defined]
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app, raise_app_exceptions=False),
                                base_url="http://gateway")
    return anthropic.AsyncAnthropic(api_key=key, base_url="http://gateway", http_client=client, max_retries=0)


# --------------------------------------------------------------------------- the SDK, both paths
@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
async def test_sdk_create(http: Any, make_user: Any, fake_upstream: Any, model: str) -> None:
    user = await make_user("5")
    client = _sdk(http, user.api_key)
    message = await client.messages.create(model=model, max_tokens=64, system="Be brief.",
                                           messages=[{"role": "user", "content": "Hi [[words:6]]"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and len(message.content[0].text.split()) == 6
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 6 and message.usage.input_tokens > 0
    rec = await one_record(user.user_id)
    assert rec["completion_tokens"] == 6 and rec["charge"] > 0 and rec["model_served"] == model
    provider = "anthropic" if model == NATIVE else "openai"
    seen = upstream_requests(fake_upstream, provider)
    assert len(seen) == 1
    if model == NATIVE:  # the client's body went through as it was written
        assert seen[0]["body"]["system"] == "Be brief." and seen[0]["body"]["max_tokens"] == 64


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
async def test_sdk_stream(http: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    client = _sdk(http, user.api_key)
    async with client.messages.stream(model=model, max_tokens=64,
                                       messages=[{"role": "user", "content": "Stream [[words:5]]"}]) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len("".join(texts).split()) == 5
    assert final.usage.output_tokens == 5 and final.stop_reason == "end_turn"
    rec = await one_record(user.user_id)
    assert rec["completion_tokens"] == 5 and rec["stream"] is True


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
async def test_sdk_tool_use_round_trip(http: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    client = _sdk(http, user.api_key)
    first = await client.messages.create(model=model, max_tokens=64, tools=[TOOL],  # type: ignore[list-item]
                                         messages=[{"role": "user", "content": "Weather? [[tool:get_weather]]"}])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"x": 1}
    second = await client.messages.create(model=model, max_tokens=64, tools=[TOOL],  # type: ignore[list-item]
                                          messages=[{"role": "user", "content": "Weather?"},
                                                    {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
                                                    {"role": "user", "content": [{
                                                        "type": "tool_result", "tool_use_id": call.id,
                                                        "content": "Sunny"}]}])
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    state = await money_state(user.user_id)
    assert [r["status"] for r in state["usage"]] == ["ok", "ok"]


async def test_stream_tool_use_translated(http: Any, make_user: Any) -> None:
    user = await make_user("5")
    client = _sdk(http, user.api_key)
    async with client.messages.stream(model=TRANSLATED, max_tokens=64, tools=[TOOL],  # type: ignore[list-item]
                                       messages=[{"role": "user", "content": "[[tool:get_weather]]"}]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["tool_use"] and final.content[0].input == {"x": 1}  # type: ignore[union-attr]
    await one_record(user.user_id)


async def test_claude_code_model_name_resolves_to_the_catalogue(http: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await http.post("/v1/messages", headers={"x-api-key": user.api_key, "anthropic-version": "2023-06-01"},
                        json={"model": "claude-3-5-haiku-20241022", "max_tokens": 16,
                              "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == NATIVE
    assert r.headers["request-id"]
    await one_record(user.user_id)


# --------------------------------------------------------------------------- hold: client numbers
async def test_max_tokens_is_clamped_to_the_model_and_bounds_the_hold(http: Any, make_user: Any,
                                                                      fake_upstream: Any) -> None:
    user = await make_user("5")
    model = await db.fetchone("SELECT max_completion_tokens FROM model_pricing WHERE id = %s", (NATIVE,))
    assert model is not None
    r = await http.post("/v1/messages", headers={"x-api-key": user.api_key},
                        json={"model": NATIVE, "max_tokens": 10_000_000, "thinking": {
                            "type": "enabled", "budget_tokens": 9_999_999},
                            "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert "max_tokens above" in r.headers["x-dropped-params"]
    sent = upstream_requests(fake_upstream, "anthropic")[0]["body"]
    assert sent["max_tokens"] == model["max_completion_tokens"]
    assert sent["thinking"]["budget_tokens"] < sent["max_tokens"]
    await one_record(user.user_id)


async def test_images_count_in_the_hold(http: Any, make_user: Any, fake_upstream: Any) -> None:
    """A balance that covers the text but not the images' maximum is refused before any call."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    text = {"type": "text", "text": "What is this?"}
    user = await make_user("0.002")
    r = await http.post("/v1/messages", headers={"x-api-key": user.api_key}, json={
        "model": NATIVE, "max_tokens": 1, "messages": [{"role": "user", "content": [image] * 50 + [text]}]})
    assert r.status_code == 402, r.text
    assert r.json()["error"]["type"] == "billing_error"
    assert upstream_requests(fake_upstream) == []
    assert (await money_state(user.user_id))["usage"] == []
    r = await http.post("/v1/messages", headers={"x-api-key": user.api_key}, json={
        "model": NATIVE, "max_tokens": 1, "messages": [{"role": "user", "content": [text]}]})
    assert r.status_code == 200, r.text


async def test_server_side_compaction_is_held(http: Any, make_user: Any, fake_upstream: Any) -> None:
    """Compaction (``context_management`` edit ``compact_*``) runs an extra sampling step once the
    input reaches its trigger: the whole prompt read again and a summary written, billed on top of
    the answer (Anthropic reports it only in ``usage.iterations``). The hold counts it whenever the
    prompt can reach the trigger, and not otherwise."""
    user = await make_user("0.15")
    key = {"x-api-key": user.api_key, "anthropic-beta": "compact-2026-01-12"}
    body = {"model": NATIVE, "max_tokens": 16, "messages": [{"role": "user", "content": "a " * 30_000}]}

    def compact(trigger: int) -> dict[str, Any]:
        return {**body, "context_management": {"edits": [{"type": "compact_20260112", "trigger": {
            "type": "input_tokens", "value": trigger}}]}}

    r = await http.post("/v1/messages", headers=key, json=compact(50_000))  # ~60,000-token bound: it can fire
    assert r.status_code == 402, r.text
    assert r.json()["error"]["type"] == "billing_error"
    assert upstream_requests(fake_upstream) == []
    assert (await money_state(user.user_id))["usage"] == []
    for allowed in (body, compact(100_000)):  # no compaction, or a trigger the prompt cannot reach
        r = await http.post("/v1/messages", headers=key, json=allowed)
        assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- errors: Anthropic's shape
async def test_errors_in_anthropic_shape_change_nothing(http: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    cases = [
        ({}, {"model": NATIVE, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}, 401,
         "authentication_error"),
        ({"x-api-key": user.api_key}, {"model": NATIVE, "messages": [{"role": "user", "content": "x"}]}, 400,
         "invalid_request_error"),
        ({"x-api-key": user.api_key}, {"model": "nope/model", "max_tokens": 8,
                                       "messages": [{"role": "user", "content": "x"}]}, 404, "not_found_error"),
        ({"x-api-key": user.api_key}, {"model": NATIVE, "max_tokens": 8, "speed": "fast",
                                       "messages": [{"role": "user", "content": "x"}]}, 400,
         "invalid_request_error"),
        ({"x-api-key": user.api_key}, {"model": TRANSLATED, "max_tokens": 8, "tools": [
            {"type": "web_search_20250305", "name": "web_search"}],
            "messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request_error"),
    ]
    for headers, body, status, kind in cases:
        r = await http.post("/v1/messages", headers=headers, json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == kind and err["error"]["message"]
        assert r.headers["request-id"]
    assert upstream_requests(fake_upstream) == []
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


async def test_errors_before_the_route_are_anthropic_shaped_too(http: Any, make_user: Any,
                                                                 fake_upstream: Any) -> None:
    """The middleware's refusals (NUL, body too large) and the router's 404/405 answer in Anthropic's
    shape on /v1/messages; other paths keep the OpenAI shape."""
    user = await make_user("5")
    key = {"x-api-key": user.api_key, "content-type": "application/json"}
    nul = json.dumps({"model": NATIVE, "max_tokens": 8, "messages": [{"role": "user", "content": "a\u0000b"}]})
    huge = b'{"model": "x", "pad": "' + b"a" * 5_000_001 + b'"}'
    cases = [
        (await http.post("/v1/messages", headers=key, content=nul.encode()), 400, "invalid_request_error",
         "nul_character"),
        (await http.post("/v1/messages", headers=key, content=huge), 413, "request_too_large", "payload_too_large"),
        (await http.post("/v1/messages/nope", headers=key, json={}), 404, "not_found_error", "not_found"),
        (await http.get("/v1/messages", headers=key), 405, "invalid_request_error", "method_not_allowed"),
    ]
    for r, status, kind, code in cases:
        assert r.status_code == status, r.text
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == kind, body
        assert body["error"]["code"] == code and body["error"]["message"]
        assert body["request_id"] == r.headers["x-request-id"]
    other = await http.post("/v1/chat/completions", headers=key, json={})  # not a route of this function
    assert other.status_code == 404 and "type" not in other.json()  # the OpenAI shape off /v1/messages
    assert other.json()["error"]["code"] == "not_found"
    assert upstream_requests(fake_upstream) == []
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


async def test_server_tools_that_loop_on_anthropics_side_are_refused(http: Any, make_user: Any,
                                                                      fake_upstream: Any) -> None:
    """web_fetch, tool search and MCP servers run several billed rounds upstream: no hold bounds them."""
    user = await make_user("5")
    base = {"model": NATIVE, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    for extra, param in [({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "tools.0"),
                         ({"tools": [{"type": "tool_search_tool_regex_20251119", "name": "tool_search"}]}, "tools.0"),
                         ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "m"}]},
                          "mcp_servers")]:
        r = await http.post("/v1/messages", headers={"x-api-key": user.api_key}, json={**base, **extra})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param
    assert upstream_requests(fake_upstream) == []
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


async def test_any_tool_anthropic_runs_itself_is_refused(http: Any, make_user: Any, fake_upstream: Any) -> None:
    """Anthropic-defined tools are an allowlist of the ones the client runs (bash, text editor,
    computer, memory): a server tool — here the advisor, which consults a pricier model billed at
    its rates — is refused before any hold, whatever its beta."""
    user = await make_user("5")
    key = {"x-api-key": user.api_key, "anthropic-beta": "advisor-tool-2026-03-01"}
    base = {"model": NATIVE, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    advisor = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-7"}
    r = await http.post("/v1/messages", headers=key, json={**base, "tools": [TOOL, advisor]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == "tools.1"
    assert upstream_requests(fake_upstream) == []
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")
    bash = {"type": "bash_20250124", "name": "bash"}  # a client tool: forwarded
    r = await http.post("/v1/messages", headers=key, json={**base, "tools": [TOOL, bash]})
    assert r.status_code == 200, r.text


async def test_files_api_sources_are_refused_on_the_native_path(http: Any, make_user: Any,
                                                                 fake_upstream: Any) -> None:
    """A Files API ``file_id`` names a file of our own Anthropic organisation: refused before any hold,
    in a message or inside a tool result (the translation refuses it too)."""
    user = await make_user("5")
    key = {"x-api-key": user.api_key, "anthropic-beta": "files-api-2025-04-14"}
    image = {"type": "image", "source": {"type": "file", "file_id": "file_011"}}
    document = {"type": "document", "source": {"type": "file", "file_id": "file_011"}}
    turns = [
        ([{"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}], "messages.0.content.0"),
        ([{"role": "user", "content": "go"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
                                             "input": {"city": "Paris"}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [document]}]}],
         "messages.2.content.0.content.0"),
    ]
    for messages, param in turns:
        r = await http.post("/v1/messages", headers=key, json={"model": NATIVE, "max_tokens": 8, "tools": [TOOL],
                                                               "messages": messages})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param
    assert upstream_requests(fake_upstream) == []
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


async def test_sdk_raises_its_typed_errors(http: Any, make_user: Any) -> None:
    user = await make_user("0")
    client = _sdk(http, user.api_key)
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(model=NATIVE, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 402
    with pytest.raises(anthropic.AuthenticationError):
        await _sdk(http, "mlp-wrong").messages.create(model=NATIVE, max_tokens=8,
                                                      messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
async def test_upstream_error_is_anthropic_shaped_and_free(http: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    r = await http.post("/v1/messages", headers={"x-api-key": user.api_key},
                        json={"model": model, "max_tokens": 8,
                              "messages": [{"role": "user", "content": "[[fail:400]]"}]})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"
    rec = await one_record(user.user_id, "failed")
    assert rec["charge"] == 0


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
async def test_error_mid_stream_is_an_error_event_and_charges_what_was_produced(http: Any, make_user: Any,
                                                                                model: str) -> None:
    user = await make_user("5")
    r = await http.post("/v1/messages", headers={"x-api-key": user.api_key}, json={
        "model": model, "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "[[words:20]] [[stream_error:4]]"}]})
    assert r.status_code == 200
    events = [line[len("event: "):] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error"
    rec = await one_record(user.user_id, "partial")
    assert rec["charge"] > 0


# --------------------------------------------------------------------------- money edges
@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
async def test_client_disconnect_mid_stream_still_settles(messages_app: Any, make_user: Any, model: str) -> None:
    """The client leaves after the first event: the relay keeps reading to the provider's usage
    and the request is settled once (charged what was produced, nothing held)."""
    user = await make_user("5")
    body = {"model": model, "max_tokens": 64, "stream": True, "messages": [
        {"role": "user", "content": "[[words:8]] [[chunk_delay:0.05]]"}]}
    # the send fails a little after the client left
    await client_leaves_mid_stream(messages_app, "/v1/messages", body, {"x-api-key": user.api_key}, accepted=3)
    rec = await one_record(user.user_id, "cancelled")
    assert rec["completion_tokens"] == 8 and rec["estimated"] is False and rec["charge"] > 0


async def test_count_tokens(http: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    body = {"messages": [{"role": "user", "content": "Count these words please"}]}
    native = await http.post("/v1/messages/count_tokens", headers={"x-api-key": user.api_key},
                             json={"model": NATIVE, **body})
    assert native.status_code == 200, native.text
    assert native.json()["input_tokens"] > 0
    assert len(upstream_requests(fake_upstream, "anthropic")) == 1
    translated = await http.post("/v1/messages/count_tokens", headers={"x-api-key": user.api_key},
                                 json={"model": TRANSLATED, **body})
    assert translated.status_code == 200 and translated.json()["input_tokens"] > 0
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


# --------------------------------------------------------------------------- behind API Gateway (Mangum)
@pytest.mark.filterwarnings("ignore:No application metrics to publish")
@pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
async def test_api_gateway_path_assembles_the_message_and_stops_at_the_deadline(
        messages_app: Any, make_user: Any, setting: Any, model: str) -> None:
    """Under Mangum a non-streaming request reads the upstream as a stream: the Message is
    assembled from its events (tool input from the JSON deltas), and the deadline stops a long
    generation with Anthropic's timeout error. The provider's count never came, so the output is
    charged at its limit (hidden thinking is billed by the provider and never seen)."""
    from mangum import Mangum

    from tests.integration.test_health import invoke_in_own_loop

    setting(buffered_deadline_s=0.8)
    user = await make_user("5")
    key = {"x-api-key": user.api_key}
    handler = Mangum(messages_app, lifespan="off")
    await db.close_pool()
    body = {"model": model, "max_tokens": 64, "tools": [TOOL],
            "messages": [{"role": "user", "content": "[[tool:get_weather]]"}]}
    response = await asyncio.to_thread(invoke_in_own_loop, handler, post_event("/v1/messages", body, key))
    assert response["statusCode"] == 200, response
    message = json.loads(response["body"])
    assert message["type"] == "message" and message["stop_reason"] == "tool_use"
    assert [b["type"] for b in message["content"]][-1] == "tool_use"
    assert message["content"][-1]["input"] == {"x": 1} and message["usage"]["output_tokens"] > 0
    body = {"model": model, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "long [[words:200]] [[chunk_delay:0.02]]"}]}
    response = await asyncio.to_thread(invoke_in_own_loop, handler, post_event("/v1/messages", body, key))
    assert response["statusCode"] == 504, response
    err = json.loads(response["body"])
    assert err["type"] == "error" and err["error"]["type"] == "timeout_error"
    state = await money_state(user.user_id)
    assert [r["status"] for r in state["usage"]] == ["ok", "timeout"] and state["reservations"] == []
    cut = state["usage"][1]
    assert cut["completion_tokens"] == 1000 and cut["estimated"] is True and 0 < cut["charge"] <= cut["hold"]


async def test_one_streaming_function_serves_every_surface(stack: str, fake_upstream: Any, make_user: Any) -> None:
    """QueryStreamFunction (functions/query/app.py ``stream_app``, what run.sh serves) answers chat,
    Messages and Responses, so a client has one streaming base URL; the buffered QueryFunction app
    serves chat only and does not build the streaming app until it is asked for."""
    module = load_module("functions/query/app.py", "fn_query_stream_surfaces")
    assert "stream_app" not in vars(module)
    user = await make_user("5")
    bodies = {"/v1/chat/completions": {"model": TRANSLATED, "messages": [{"role": "user", "content": "Hi"}]},
              "/v1/messages": {"model": NATIVE, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
              "/v1/messages/count_tokens": {"model": NATIVE, "messages": [{"role": "user", "content": "Hi"}]},
              "/v1/responses": {"model": TRANSLATED, "input": "Hi"}}
    for app, served in ((module.stream_app, set(bodies)), (module.app, {"/v1/chat/completions"})):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            for path, body in bodies.items():
                r = await c.post(path, headers={"x-api-key": user.api_key}, json=body)
                assert r.status_code == (200 if path in served else 404), (path, r.text)


CLAUDE_CODE_BETAS = "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14," \
                    "context-1m-2025-08-07"


def _claude_code_body(model: str) -> dict[str, Any]:
    """What Claude Code sends (abridged): system blocks with cache_control, tools with cache_control,
    a thinking budget, metadata.user_id, an earlier turn with a signed thinking block, a stream."""
    return {
        "model": model, "max_tokens": 32000, "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "metadata": {"user_id": "user_" + "a" * 64 + "_account__session_" + "b" * 36},
        "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
                   {"type": "text", "text": "Tool instructions...", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {
            "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
            "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list files"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should run ls.", "signature": "EqQBCkYIBxgCKkA"},
                {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "a.py\nb.py",
                 "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "now summarise [[words:4]]"}]}],
    }


@pytest.mark.parametrize("model", [NATIVE, TRANSLATED, "claude-3-5-haiku-20241022"])
async def test_a_claude_code_request(http: Any, make_user: Any, fake_upstream: Any, model: str) -> None:
    user = await make_user("5")
    r = await http.post("/v1/messages?beta=true", json=_claude_code_body(model), headers={
        "authorization": f"Bearer {user.api_key}",  # ANTHROPIC_AUTH_TOKEN
        "anthropic-version": "2023-06-01", "anthropic-beta": CLAUDE_CODE_BETAS})
    assert r.status_code == 200, r.text
    events = [line[len("event: "):] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop", events
    assert "content_block_delta" in events
    native = model != TRANSLATED
    [sent] = upstream_requests(fake_upstream, "anthropic" if native else "openai")
    body = sent["body"]
    if native:  # as written (thinking signature, cache_control), max_tokens clamped, the 1M-context beta not sent
        assert body["messages"] == _claude_code_body(model)["messages"]
        assert body["system"][1]["cache_control"] == {"type": "ephemeral"}
        assert body["max_tokens"] == 8192 and body["thinking"] == {"type": "enabled", "budget_tokens": 8191}
        assert r.headers["x-dropped-params"] == "max_tokens above 8192, anthropic-beta: context-1m-2025-08-07"
    else:  # translated: thinking budget as an effort, the signed thinking block not replayed
        assert body["reasoning_effort"] == "high"
        assert body["max_completion_tokens"] == 16384  # gpt-4o-mini's maximum: the clamp the hold counted
        assert "thinking blocks" in r.headers["x-dropped-params"]
        assert body["messages"][2]["tool_calls"][0]["function"]["name"] == "Bash"
    rec = await one_record(user.user_id)
    assert rec["completion_tokens"] >= 4 and rec["charge"] > 0


async def test_translated_max_tokens_is_clamped_too(http: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    r = await http.post("/v1/messages", headers={"x-api-key": user.api_key}, json={
        "model": TRANSLATED, "max_tokens": 10_000_000, "thinking": {"type": "enabled", "budget_tokens": 9_000_000},
        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    model = await db.fetchone("SELECT max_completion_tokens FROM model_pricing WHERE id = %s", (TRANSLATED,))
    assert model is not None
    sent = upstream_requests(fake_upstream, "openai")[0]["body"]
    assert sent["max_completion_tokens"] == model["max_completion_tokens"] and sent["reasoning_effort"] == "high"
    await one_record(user.user_id)
