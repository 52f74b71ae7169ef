"""``POST /v1/responses`` in-process: the responses function's app with real Postgres, the Upstash
bridge and the fake providers, driven by the official openai SDK. Stateless, translated onto the
chat pipeline for every provider; every request leaves one usage record and balance == sum(ledger)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway import db
from gateway.catalog import registry
from gateway.money import ledger
from tests.support.account import upstream_requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "google/gemini-2.5-flash"]
TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _load_app(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("fn_" + path.replace("/", "_"), ROOT / path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.app


@pytest.fixture(scope="session")
def responses_app(stack: str, fake_upstream: Any) -> Any:
    return _load_app("functions/responses/app.py")


@pytest.fixture
async def http(responses_app: Any, fake_upstream: Any) -> Any:
    registry.invalidate()
    httpx.delete(fake_upstream.url + "/__fake/requests")
    transport = httpx.ASGITransport(app=responses_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


def _sdk(app: Any, key: str) -> openai.AsyncOpenAI:
    import httpx2  # the SDK's own httpx fork

    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app, raise_app_exceptions=False),
                                base_url="http://gateway/v1")
    return openai.AsyncOpenAI(api_key=key, base_url="http://gateway/v1", http_client=client, max_retries=0)


async def _money(user_id: Any) -> dict[str, Any]:
    usage = await db.fetchall("SELECT * FROM usage_records WHERE user_id = %s ORDER BY id", (user_id,))
    entries = await db.fetchall("SELECT amount FROM ledger_entries WHERE user_id = %s", (user_id,))
    reservations = await db.fetchall("SELECT * FROM reservations WHERE user_id = %s", (user_id,))
    balance = await ledger.get_balance(user_id)
    assert balance is not None
    assert balance["balance"] == sum((e["amount"] for e in entries), Decimal(0))
    return {"usage": usage, "balance": balance["balance"], "reservations": reservations}


async def _one_record(user_id: Any, status: str = "ok") -> dict[str, Any]:
    state = await _money(user_id)
    assert len(state["usage"]) == 1, state["usage"]
    assert state["reservations"] == []
    rec = state["usage"][0]
    assert rec["status"] == status
    return rec


@pytest.mark.parametrize("model", MODELS)
async def test_create_plain(responses_app: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    response = await _sdk(responses_app, user.api_key).responses.create(
        model=model, instructions="Be brief.", input="Hello [[words:6]]", max_output_tokens=64)
    assert response.status == "completed" and response.model == model
    assert len(response.output_text.split()) == 6
    assert response.usage is not None and response.usage.output_tokens == 6 and response.usage.input_tokens > 0
    rec = await _one_record(user.user_id)
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
    rec = await _one_record(user.user_id)
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
    state = await _money(user.user_id)
    assert [r["status"] for r in state["usage"]] == ["ok", "ok"]


async def test_stream_function_call(responses_app: Any, make_user: Any) -> None:
    user = await make_user("5")
    stream = await _sdk(responses_app, user.api_key).responses.create(
        model="openai/gpt-4o-mini", input="[[tool:get_weather]]", tools=[TOOL], stream=True)  # type: ignore[list-item]
    done = [e async for e in stream if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"x": 1}
    await _one_record(user.user_id)


async def test_text_format_and_reasoning_are_forwarded(http: Any, responses_app: Any, make_user: Any,
                                                       fake_upstream: Any) -> None:
    user = await make_user("5")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    response = await _sdk(responses_app, user.api_key).responses.create(
        model="openai/gpt-4o-mini", input="JSON please", reasoning={"effort": "low"},
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}})
    assert response.status == "completed"
    assert response.text is not None and response.text.format is not None
    sent = upstream_requests(fake_upstream, "openai")[0]["body"]
    assert sent["reasoning_effort"] == "low"
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == schema
    await _one_record(user.user_id)


async def test_max_output_tokens_is_incomplete(responses_app: Any, make_user: Any) -> None:
    user = await make_user("5")
    response = await _sdk(responses_app, user.api_key).responses.create(
        model="openai/gpt-4o-mini", input="[[words:50]]", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    rec = await _one_record(user.user_id)
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
    state = await _money(user.user_id)
    assert state["usage"] == [] and state["balance"] == Decimal("5")


async def test_store_is_never_forwarded(http: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    r = await http.post("/v1/responses", headers={"x-api-key": user.api_key},
                        json={"model": "openai/gpt-4o-mini", "input": "hi", "store": True})
    assert r.status_code == 200, r.text
    assert r.headers["x-response-stored"] == "false" and r.json()["store"] is False
    assert "store" not in upstream_requests(fake_upstream, "openai")[0]["body"]


async def test_error_mid_stream_is_response_failed(http: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await http.post("/v1/responses", headers={"x-api-key": user.api_key}, json={
        "model": "openai/gpt-4o-mini", "input": "[[words:20]] [[stream_error:4]]", "stream": True})
    assert r.status_code == 200
    kinds = [line[len("event: "):] for line in r.text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    await _one_record(user.user_id, "partial")


async def test_client_disconnect_mid_stream_still_settles(responses_app: Any, make_user: Any) -> None:
    user = await make_user("5")
    raw = json.dumps({"model": "openai/gpt-4o-mini", "stream": True,
                      "input": "[[words:8]] [[chunk_delay:0.05]]"}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/responses", "raw_path": b"/v1/responses", "query_string": b"",
             "root_path": "", "server": ("gateway", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"gateway"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {user.api_key}".encode())]}
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            gone.set()
            raise OSError("client gone")

    await responses_app(scope, receive, send)
    rec = await _one_record(user.user_id, "cancelled")
    assert rec["completion_tokens"] == 8 and rec["estimated"] is False and rec["charge"] > 0
