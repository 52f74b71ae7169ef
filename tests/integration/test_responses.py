"""``POST /v1/responses`` in-process: the responses function's app with real Postgres, the Upstash
bridge and the fake providers, driven by the official openai SDK. Stateless, translated onto the
chat pipeline for every provider; every request leaves one usage record and balance == sum(ledger)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import openai
import pytest

from gateway import db
from tests.support.account import upstream_requests
from tests.support.apps import client_leaves_mid_stream, function_fixtures, post_event
from tests.support.money import money_state, one_record

pytestmark = pytest.mark.integration
responses_app, http = function_fixtures("functions/responses/app.py", app="responses_app", client="http")

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "google/gemini-2.5-flash"]
TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _sdk(app: Any, key: str) -> openai.AsyncOpenAI:
    import httpx2  # the SDK's own httpx fork

    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app, raise_app_exceptions=False),
                                base_url="http://gateway/v1")
    return openai.AsyncOpenAI(api_key=key, base_url="http://gateway/v1", http_client=client, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
async def test_create_plain(responses_app: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    response = await _sdk(responses_app, user.api_key).responses.create(
        model=model, instructions="Be brief.", input="Hello [[words:6]]", max_output_tokens=64)
    assert response.status == "completed" and response.model == model
    assert len(response.output_text.split()) == 6
    assert response.usage is not None and response.usage.output_tokens == 6 and response.usage.input_tokens > 0
    rec = await one_record(user.user_id)
    assert rec["completion_tokens"] == 6 and rec["charge"] > 0 and rec["model_served"] == model


@pytest.mark.parametrize("model", MODELS)
async def test_stream(responses_app: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    stream = await _sdk(responses_app, user.api_key).responses.create(model=model, input="Stream [[words:5]]",
                                                                      stream=True)
    kinds, text, final = [], "", None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert len(text.split()) == 5
    assert final is not None and final.usage is not None and final.usage.output_tokens == 5
    rec = await one_record(user.user_id)
    assert rec["stream"] is True and rec["completion_tokens"] == 5


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"])
async def test_function_call_round_trip(responses_app: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    client = _sdk(responses_app, user.api_key)
    first = await client.responses.create(model=model, input="Weather? [[tool:get_weather]]",
                                          tools=[TOOL])  # type: ignore[list-item]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"x": 1}
    second = await client.responses.create(model=model, tools=[TOOL], input=[  # type: ignore[list-item]
        {"role": "user", "content": "Weather?"}, calls[0].model_dump(exclude_none=True),  # type: ignore[list-item]
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny"}])
    assert second.status == "completed" and second.output_text
    state = await money_state(user.user_id)
    assert [r["status"] for r in state["usage"]] == ["ok", "ok"]


async def test_stream_function_call(responses_app: Any, make_user: Any) -> None:
    user = await make_user("5")
    stream = await _sdk(responses_app, user.api_key).responses.create(
        model="openai/gpt-4o-mini", input="[[tool:get_weather]]", tools=[TOOL], stream=True)  # type: ignore[list-item]
    done = [e async for e in stream if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"x": 1}
    await one_record(user.user_id)


async def test_text_format_and_reasoning_are_forwarded(http: Any, responses_app: Any, make_user: Any,
                                                       fake_upstream: Any) -> None:
    user = await make_user("5")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    text = {"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}
    for model in ("openai/gpt-4o-mini", "google/gemini-2.5-flash"):
        response = await _sdk(responses_app, user.api_key).responses.create(
            model=model, input="JSON please", reasoning={"effort": "low"}, text=text)  # type: ignore[arg-type]
        assert response.status == "completed"
        assert response.text is not None and response.text.format is not None
    native = upstream_requests(fake_upstream, "openai")[0]["body"]  # OpenAI's own Responses API, as written
    assert native["reasoning"] == {"effort": "low"} and native["text"] == text
    translated = upstream_requests(fake_upstream, "gemini")[0]["body"]
    assert translated["generationConfig"]["responseSchema"]["properties"] == {"a": {"type": "string"}}
    state = await money_state(user.user_id)
    assert [r["status"] for r in state["usage"]] == ["ok", "ok"]


async def test_max_output_tokens_is_incomplete(responses_app: Any, make_user: Any) -> None:
    user = await make_user("5")
    response = await _sdk(responses_app, user.api_key).responses.create(
        model="openai/gpt-4o-mini", input="[[words:50]]", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    rec = await one_record(user.user_id)
    assert rec["completion_tokens"] == 16


async def test_stateful_requests_are_refused_and_change_nothing(http: Any, make_user: Any,
                                                                fake_upstream: Any) -> None:
    user = await make_user("5")
    auth = {"Authorization": f"Bearer {user.api_key}"}
    for body in ({"model": "openai/gpt-4o-mini", "input": "x", "previous_response_id": "resp_1"},
                 {"model": "openai/gpt-4o-mini", "input": "x", "background": True},
                 {"model": "openai/gpt-4o-mini", "input": "x", "tools": [{"type": "web_search"}]},
                 {"model": "openai/gpt-4o-mini", "input": "x", "bogus": 1},
                 {"model": "nope/model", "input": "x"}):
        r = await http.post("/v1/responses", headers=auth, json=body)
        assert r.status_code in (400, 404), (body, r.text)
        assert r.json()["error"]["message"]
    r = await http.post("/v1/responses", json={"model": "openai/gpt-4o-mini", "input": "x"})
    assert r.status_code == 401
    assert upstream_requests(fake_upstream) == []
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"])
async def test_store_is_never_forwarded(http: Any, make_user: Any, fake_upstream: Any, model: str) -> None:
    user = await make_user("5")
    r = await http.post("/v1/responses", headers={"x-api-key": user.api_key},
                        json={"model": model, "input": "hi", "store": True})
    assert r.status_code == 200, r.text
    assert r.headers["x-response-stored"] == "false" and r.json()["store"] is False
    [sent] = upstream_requests(fake_upstream)
    if model.startswith("openai/"):  # native: told not to store
        assert sent["path"].endswith("/responses") and sent["body"]["store"] is False
    else:
        assert "store" not in sent["body"]


@pytest.mark.parametrize(("model", "last"), [("openai/gpt-4o-mini", "error"),
                                             ("anthropic/claude-3.5-haiku", "response.failed")])
async def test_error_mid_stream_ends_the_stream_and_charges_what_was_produced(http: Any, make_user: Any,
                                                                              model: str, last: str) -> None:
    user = await make_user("5")
    r = await http.post("/v1/responses", headers={"x-api-key": user.api_key}, json={
        "model": model, "input": "[[words:20]] [[stream_error:4]]", "stream": True})
    assert r.status_code == 200
    kinds = [line[len("event: "):] for line in r.text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] == last
    if last == "error":  # the sequence continues in our error event
        numbers = [json.loads(line[len("data: "):])["sequence_number"] for line in r.text.splitlines()
                   if line.startswith("data: ")]
        assert numbers == list(range(len(numbers)))
    await one_record(user.user_id, "partial")


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "google/gemini-2.5-flash"])
async def test_client_disconnect_mid_stream_still_settles(responses_app: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    body = {"model": model, "stream": True, "input": "[[words:8]] [[chunk_delay:0.05]]"}
    await client_leaves_mid_stream(responses_app, "/v1/responses", body, {"authorization": f"Bearer {user.api_key}"})
    rec = await one_record(user.user_id, "cancelled")
    assert rec["completion_tokens"] == 8 and rec["estimated"] is False and rec["charge"] > 0


# --------------------------------------------------------------------------- native: OpenAI's own Responses API
NATIVE = "openai/gpt-4o-mini"


async def _pricing(model: str) -> dict[str, Any]:
    row = await db.fetchone("SELECT upstream_model, max_completion_tokens, context_length FROM model_pricing "
                            "WHERE id = %s", (model,))
    assert row is not None
    return row


@pytest.mark.parametrize("stream", [False, True])
async def test_native_sends_the_responses_body_and_bills_its_usage(http: Any, responses_app: Any, make_user: Any,
                                                                   fake_upstream: Any, stream: bool) -> None:
    """An OpenAI model: the client's Responses body goes to OpenAI's /responses (model replaced,
    store false, the list-price tier, max_output_tokens injected as the hold counted it), and
    response.usage is billed — cached and reasoning tokens included — within the hold."""
    user = await make_user("5")
    model = await _pricing(NATIVE)
    reasoning_item = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-opaque"}
    client = _sdk(responses_app, user.api_key)
    kwargs: dict[str, Any] = {
        "model": NATIVE, "instructions": "Be brief.", "include": ["reasoning.encrypted_content"],
        "input": [{"role": "user", "content": "Earlier"}, reasoning_item,
                  {"role": "user", "content": [{"type": "input_text", "text": "Now [[words:7]] [[reasoning:5]] "
                                                                                 "[[cached:2]]"}]}]}
    if stream:
        events = [e async for e in await client.responses.create(stream=True, **kwargs)]
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        final = events[-1].response  # type: ignore[union-attr]
    else:
        final = await client.responses.create(**kwargs)
    assert final.model == NATIVE and final.status == "completed" and len(final.output_text.split()) == 7
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 5
    [sent] = upstream_requests(fake_upstream, "openai")
    assert sent["path"].endswith("/responses")
    body = sent["body"]
    assert body["model"] == model["upstream_model"] and body["input"][1] == reasoning_item
    assert body["store"] is False and body["service_tier"] == "default"
    assert body["include"] == ["reasoning.encrypted_content"] and body["instructions"] == "Be brief."
    assert body["max_output_tokens"] == model["max_completion_tokens"]
    assert bool(body.get("stream")) is stream
    rec = await one_record(user.user_id)
    assert rec["completion_tokens"] == final.usage.output_tokens == 12  # words + reasoning
    assert rec["prompt_tokens"] == final.usage.input_tokens and rec["cached_tokens"] == 2
    assert rec["estimated"] is False and 0 < rec["charge"] <= rec["hold"]


async def test_native_output_limit_is_clamped_and_bounds_the_hold(http: Any, make_user: Any,
                                                                  fake_upstream: Any) -> None:
    user = await make_user("5")
    model = await _pricing(NATIVE)
    r = await http.post("/v1/responses", headers={"x-api-key": user.api_key},
                        json={"model": NATIVE, "input": "Hi", "max_output_tokens": 10_000_000})
    assert r.status_code == 200, r.text
    assert "max_output_tokens above" in r.headers["x-dropped-params"]
    assert upstream_requests(fake_upstream, "openai")[0]["body"]["max_output_tokens"] == model["max_completion_tokens"]
    rec = await one_record(user.user_id)
    assert rec["charge"] <= rec["hold"]


async def test_native_images_and_files_count_in_the_hold(http: Any, make_user: Any, fake_upstream: Any) -> None:
    """A balance that covers the text but not the images' maximum (or a file at the context length)
    is refused before any call."""
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    file = {"type": "input_file", "file_url": "https://example.com/a.pdf"}
    text = {"type": "input_text", "text": "What is this?"}
    user = await make_user("0.01")
    auth = {"x-api-key": user.api_key}
    for parts in ([image, image, text], [file, text]):  # an image: up to 48,169 tokens on gpt-4o-mini
        r = await http.post("/v1/responses", headers=auth, json={
            "model": NATIVE, "max_output_tokens": 16, "input": [{"role": "user", "content": parts}]})
        assert r.status_code == 402, r.text
    assert upstream_requests(fake_upstream) == []
    assert (await money_state(user.user_id))["usage"] == []
    r = await http.post("/v1/responses", headers=auth, json={
        "model": NATIVE, "max_output_tokens": 16, "input": [{"role": "user", "content": [text]}]})
    assert r.status_code == 200, r.text


async def test_native_refusals_change_nothing(http: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    auth = {"x-api-key": user.api_key}
    cases = [
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools.0"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools.0"),
        ({"tools": [{"type": "image_generation"}]}, "tools.0"),
        ({"tools": [{"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                     "environment": "linux"}]}, "tools.0"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input.0"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
         "input.0.content.0"),
    ]
    for extra, param in cases:
        r = await http.post("/v1/responses", headers=auth, json={"model": NATIVE, "input": "x", **extra})
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param and r.json()["error"]["message"]
    assert upstream_requests(fake_upstream) == []
    state = await money_state(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


async def test_native_upstream_error_is_free(http: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await http.post("/v1/responses", headers={"x-api-key": user.api_key},
                        json={"model": NATIVE, "input": "[[fail:500]]"})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["message"]
    state = await money_state(user.user_id)
    assert [u["status"] for u in state["usage"]] == ["failed"] and state["balance"] == Decimal("5")


# --------------------------------------------------------------------------- behind API Gateway (Mangum)
@pytest.mark.filterwarnings("ignore:No application metrics to publish")
async def test_native_api_gateway_path_assembles_the_response_and_stops_at_the_deadline(
        responses_app: Any, make_user: Any, setting: Any) -> None:
    """Under Mangum a native request reads OpenAI's stream: the Response is the terminal event's
    (function call included), and the deadline stops a long generation: OpenAI's count never came,
    so the output is charged at its limit (reasoning is billed by OpenAI and never streamed)."""
    from mangum import Mangum

    from tests.integration.test_health import invoke_in_own_loop

    setting(buffered_deadline_s=0.8)
    user = await make_user("5")
    key = {"x-api-key": user.api_key}
    handler = Mangum(responses_app, lifespan="off")
    await db.close_pool()
    body = {"model": NATIVE, "tools": [TOOL], "input": "[[tool:get_weather]]"}
    response = await asyncio.to_thread(invoke_in_own_loop, handler, post_event("/v1/responses", body, key))
    assert response["statusCode"] == 200, response
    answer = json.loads(response["body"])
    assert answer["object"] == "response" and answer["model"] == NATIVE and answer["status"] == "completed"
    assert answer["output"][-1]["type"] == "function_call" and json.loads(answer["output"][-1]["arguments"]) == {"x": 1}
    assert answer["usage"]["output_tokens"] > 0
    body = {"model": NATIVE, "input": "long [[words:200]] [[chunk_delay:0.02]]", "max_output_tokens": 900}
    response = await asyncio.to_thread(invoke_in_own_loop, handler, post_event("/v1/responses", body, key))
    assert response["statusCode"] == 504, response
    state = await money_state(user.user_id)
    assert [r["status"] for r in state["usage"]] == ["ok", "timeout"] and state["reservations"] == []
    cut = state["usage"][1]
    assert cut["completion_tokens"] == 900 and cut["estimated"] is True and 0 < cut["charge"] <= cut["hold"]
