"""The query path end to end in-process: real Postgres, the Upstash bridge on real Redis and the
fake providers, through the query function's FastAPI app (the object Mangum wraps)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest

from gateway import db, upstash
from gateway.catalog import registry
from gateway.config import reset_settings
from gateway.money import ledger
from gateway.money.holds import hold_for
from gateway.money.pricing import ModelPrice, charge_for
from tests.support.account import upstream_requests
from tests.support.apps import function_fixtures

pytestmark = pytest.mark.integration
query_app, client = function_fixtures("functions/query/app.py", app="query_app", client="client")


def _auth(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.api_key}"}


def _msg(text: str = "Hello there") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _state(user_id: Any) -> dict[str, Any]:
    bal = await ledger.get_balance(user_id)
    usage = await db.fetchall("SELECT * FROM usage_records WHERE user_id = %s ORDER BY id", (user_id,))
    entries = await db.fetchall("SELECT * FROM ledger_entries WHERE user_id = %s AND kind = 'usage'", (user_id,))
    reservations = await db.fetchall("SELECT * FROM reservations WHERE user_id = %s", (user_id,))
    return {"balance": bal, "usage": usage, "ledger": entries, "reservations": reservations}


async def _add_model(model_id: str, provider: str, upstream: str, prompt: str = "0.000001",
                     completion: str = "0.000002", context: int = 8192, max_out: int = 1024) -> None:
    await db.execute(
        """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
               max_completion_tokens, prompt_price, completion_price, source)
           VALUES (%s, %s, %s, %s, 'test', %s, %s, %s, %s, 'test')
           ON CONFLICT (id) DO UPDATE SET provider = EXCLUDED.provider, upstream_model = EXCLUDED.upstream_model,
               context_length = EXCLUDED.context_length, active = true""",
        (model_id, model_id, provider, upstream, context, max_out, Decimal(prompt), Decimal(completion)))
    registry.invalidate()


@pytest.fixture
async def test_models(stack: str) -> Any:
    await _add_model("test/fail-500", "openai", "fail-500-model")
    await _add_model("test/fail-429", "anthropic", "fail-429-model")
    await _add_model("test/small-context", "openai", "small", context=50)
    await _add_model("compat/llama3.2", "compat", "llama3.2", prompt="0.0000001", completion="0.0000002")
    yield
    await db.execute("DELETE FROM model_pricing WHERE source = 'test'")
    registry.invalidate()


def _expected_charge(model_row: dict[str, Any], usage: dict[str, Any], markup: str = "0.10") -> Decimal:
    price = ModelPrice(prompt=model_row["prompt_price"], completion=model_row["completion_price"],
                       request=model_row["request_price"], cache_read=model_row["input_cache_read_price"])
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    cost = price.provider_cost(usage["prompt_tokens"], usage["completion_tokens"], cached)
    return charge_for(cost, Decimal(markup))


async def _model_row(model_id: str) -> dict[str, Any]:
    row = await db.fetchone("SELECT * FROM model_pricing WHERE id = %s", (model_id,))
    assert row is not None
    return row


PROVIDER_MODELS = [
    ("openai/gpt-4o-mini", "openai"),
    ("anthropic/claude-3.5-haiku", "anthropic"),
    ("google/gemini-2.5-flash", "gemini"),
    ("meta-llama/llama-3.1-8b-instruct", "openrouter"),
    ("compat/llama3.2", "compat"),
]


@pytest.mark.parametrize(("model", "provider"), PROVIDER_MODELS)
async def test_non_streaming_bills_exactly_once(client: Any, make_user: Any, test_models: Any, fake_upstream: Any,
                                                model: str, provider: str) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": model, "messages": _msg("Say hi [[words:7]]"), "max_tokens": 50})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == model
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 7 and usage["prompt_tokens"] > 0
    assert r.headers["x-ratelimit-limit"] == "60"
    seen = [req for req in upstream_requests(fake_upstream) if req["provider"] == provider]
    assert len(seen) == 1

    state = await _state(user.user_id)
    expected = _expected_charge(await _model_row(model), usage)
    assert expected > 0
    assert len(state["usage"]) == 1 and len(state["ledger"]) == 1
    rec = state["usage"][0]
    assert rec["status"] == "ok" and rec["model_served"] == model and rec["provider"] == provider
    assert rec["prompt_tokens"] == usage["prompt_tokens"] and rec["completion_tokens"] == 7
    assert rec["charge"] == expected and rec["estimated"] is False
    assert state["ledger"][0]["amount"] == -expected
    assert state["balance"]["balance"] == Decimal("5") - expected
    assert state["balance"]["reserved"] == 0 and state["reservations"] == []
    assert await ledger.invariant_violations() == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_request_id_is_echoed_and_the_usage_id_is_returned(client: Any, make_user: Any,
                                                                         stream: bool) -> None:
    """A client's own X-Request-Id is echoed but never becomes the billing reference (a client could
    replay one to collide with another request): the request is billed under a fresh ``req_…`` id,
    which the response returns as ``x-usage-id`` so the customer (and support) can find its record."""
    user = await make_user("5")
    body = {"model": "openai/gpt-4o-mini", "messages": _msg("[[words:3]]"), "stream": stream}
    usage_ids = []
    for _ in range(2):  # the same client id twice: two records, two usage ids
        r = await client.post("/v1/chat/completions", headers={**_auth(user), "X-Request-Id": "client-trace-1"},
                              json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "client-trace-1"
        usage_ids.append(r.headers["x-usage-id"])
    assert usage_ids[0] != usage_ids[1] and all(u.startswith("req_") for u in usage_ids)
    state = await _state(user.user_id)
    assert [rec["request_id"] for rec in state["usage"]] == usage_ids  # GET /v1/usage lists these as ids
    assert [e["reference"] for e in state["ledger"]] == usage_ids
    # without a client id the request id is ours already: no second header
    r = await client.post("/v1/chat/completions", headers=_auth(user), json=body)
    assert r.status_code == 200 and "x-usage-id" not in r.headers
    assert (await _state(user.user_id))["usage"][-1]["request_id"] == r.headers["x-request-id"]


async def test_a_direct_model_with_image_output_is_not_served(client: Any, make_user: Any) -> None:
    """Gemini bills image output at $30 per million tokens against a text price of $2.50: a model
    that outputs images, routed directly, is not served (nothing held, nothing sent upstream)."""
    user = await make_user("5")
    await db.execute(
        """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
               max_completion_tokens, prompt_price, completion_price, source, output_modalities)
           VALUES ('test/image-out', 'image out', 'gemini', 'gemini-2.5-flash-image', 'test', 32768, 8192,
                   0.0000003, 0.0000025, 'test', ARRAY['image', 'text'])""")
    registry.invalidate()
    try:
        r = await client.post("/v1/chat/completions", headers=_auth(user),
                              json={"model": "test/image-out", "messages": _msg("draw a cat")})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        state = await _state(user.user_id)
        assert state["usage"] == [] and state["reservations"] == []
    finally:
        await db.execute("DELETE FROM model_pricing WHERE id = 'test/image-out'")
        registry.invalidate()


def _parse_sse(text: str) -> tuple[list[dict[str, Any]], bool]:
    chunks, done = [], False
    for line in text.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
        else:
            chunks.append(json.loads(data))
    return chunks, done


@pytest.mark.parametrize(("model", "provider"), PROVIDER_MODELS)
async def test_streaming_with_usage_chunk(client: Any, make_user: Any, test_models: Any, model: str,
                                          provider: str) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user), json={
        "model": model, "messages": _msg("Stream please [[words:5]]"), "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks, done = _parse_sse(r.text)
    assert done
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(content.split()) == 5
    assert all(c["model"] == model for c in chunks)
    assert len({c["id"] for c in chunks}) == 1  # the usage chunk too
    usage_chunks = [c for c in chunks if not c["choices"]]
    assert len(usage_chunks) == 1 and usage_chunks[0]["usage"]["completion_tokens"] == 5
    state = await _state(user.user_id)
    rec = state["usage"][0]
    assert rec["status"] == "ok" and rec["stream"] is True and rec["ttfb_ms"] is not None
    assert rec["charge"] == _expected_charge(await _model_row(model), usage_chunks[0]["usage"])
    assert state["balance"]["balance"] == Decimal("5") - rec["charge"]


async def test_stream_without_include_usage_has_no_usage_chunk(client: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o-mini", "messages": _msg("[[words:3]]"), "stream": True})
    chunks, done = _parse_sse(r.text)
    assert done and all(c["choices"] for c in chunks)
    assert (await _state(user.user_id))["usage"][0]["completion_tokens"] == 3


async def test_insufficient_credit_is_402_without_upstream_call(client: Any, make_user: Any,
                                                                fake_upstream: Any) -> None:
    user = await make_user("0.0001")
    r = await client.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": "openai/gpt-4o", "messages": _msg()})
    assert r.status_code == 402
    err = r.json()["error"]
    assert err["code"] == "insufficient_credits" and err["type"] == "insufficient_quota"
    assert Decimal(err["balance"]) == Decimal("0.0001") and Decimal(err["required"]) > Decimal("0.0001")
    assert upstream_requests(fake_upstream) == []
    state = await _state(user.user_id)
    assert state["usage"] == [] and state["ledger"] == [] and state["reservations"] == []
    assert state["balance"]["balance"] == Decimal("0.0001") and state["balance"]["period_requests"] == 0


@pytest.mark.parametrize(("payload", "status", "code"), [
    ({"model": "nope/unknown", "messages": _msg()}, 404, "model_not_found"),
    ({"model": "openai/gpt-4o-mini", "messages": []}, 400, "invalid_request"),
    ({"model": "openai/gpt-4o-mini", "messages": _msg(), "n": 2}, 400, "invalid_request"),
    ({"model": "openai/gpt-4o-mini", "messages": _msg(), "temperature": 5}, 400, "invalid_request"),
    ({"model": "openai/gpt-4o-mini", "messages": _msg(), "bogus_field": 1}, 400, "invalid_request"),
    ({"model": "openai/gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_request"),
    ({"messages": _msg()}, 400, "invalid_request"),
    # an OpenRouter reasoning budget at or above the output limit would be billed beyond the hold
    ({"model": "openai/gpt-4o-mini", "messages": _msg(), "max_tokens": 2000, "reasoning": {"max_tokens": 2000}},
     400, "invalid_request"),
    ({"model": "openai/gpt-4o-mini", "messages": _msg(), "reasoning": {"max_tokens": "lots"}}, 400, "invalid_request"),
    ({"model": "test/small-context", "messages": _msg("word " * 400)}, 400, "context_length_exceeded"),
])
async def test_bad_requests_change_nothing(client: Any, make_user: Any, test_models: Any, fake_upstream: Any,
                                           payload: dict[str, Any], status: int, code: str) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user), json=payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    assert upstream_requests(fake_upstream) == []
    state = await _state(user.user_id)
    assert state["usage"] == [] and state["ledger"] == [] and state["reservations"] == []
    assert state["balance"]["balance"] == Decimal("5") and state["balance"]["period_requests"] == 0


async def test_invalid_json_and_oversized_body(client: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers={**_auth(user), "content-type": "application/json"},
                          content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    big = {"model": "openai/gpt-4o-mini", "messages": _msg("x" * 6_000_000)}
    r = await client.post("/v1/chat/completions", headers=_auth(user), json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_bad_key_is_401(client: Any) -> None:
    r = await client.post("/v1/chat/completions", headers={"Authorization": "Bearer sk-mlp-wrong"},
                          json={"model": "openai/gpt-4o-mini", "messages": _msg()})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = await client.post("/v1/chat/completions", json={"model": "openai/gpt-4o-mini", "messages": _msg()})
    assert r.status_code == 401


async def test_model_not_allowed_on_free_tier_is_403(client: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5", tier="free")
    r = await client.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": "openai/gpt-4o", "messages": _msg()})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert upstream_requests(fake_upstream) == []
    state = await _state(user.user_id)
    assert state["usage"] == [] and state["reservations"] == [] and state["balance"]["reserved"] == 0
    assert state["balance"]["period_requests"] == 0
    # a cheap model is fine on the free tier
    r = await client.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": "openai/gpt-4o-mini", "messages": _msg()})
    assert r.status_code == 200


async def test_rate_limit_429_with_headers(client: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERS_JSON", json.dumps({"pro": {"rpm": 3}}))
    reset_settings()
    user = await make_user("5")
    statuses = []
    for _ in range(4):
        r = await client.post("/v1/chat/completions", headers=_auth(user),
                              json={"model": "openai/gpt-4o-mini", "messages": _msg()})
        statuses.append(r.status_code)
    assert statuses == [200, 200, 200, 429]
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "0"
    assert int(r.headers["x-ratelimit-reset"]) > 0
    state = await _state(user.user_id)
    assert len(state["usage"]) == 3 and state["reservations"] == []
    assert state["balance"]["period_requests"] == 3


async def test_monthly_quota_429(client: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERS_JSON", json.dumps({"free": {"monthly_quota": 2}}))
    reset_settings()
    user = await make_user("5", tier="free")
    codes = []
    for _ in range(3):
        r = await client.post("/v1/chat/completions", headers=_auth(user),
                              json={"model": "openai/gpt-4o-mini", "messages": _msg()})
        codes.append(r.status_code)
    assert codes == [200, 200, 429]
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["resets_at"] in err["message"]
    assert len((await _state(user.user_id))["usage"]) == 2


async def test_fallback_to_next_model_bills_the_served_model(client: Any, make_user: Any, test_models: Any,
                                                             fake_upstream: Any) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "test/fail-500", "models": ["test/fail-429", "anthropic/claude-3.5-haiku"],
        "messages": _msg("[[words:4]]")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "anthropic/claude-3.5-haiku"
    models_called = [req["model"] for req in upstream_requests(fake_upstream)]
    assert models_called == ["fail-500-model", "fail-429-model", "claude-3-5-haiku-20241022"]
    rec = (await _state(user.user_id))["usage"][0]
    assert rec["model_requested"] == "test/fail-500" and rec["model_served"] == "anthropic/claude-3.5-haiku"
    assert rec["charge"] == _expected_charge(await _model_row("anthropic/claude-3.5-haiku"), body["usage"])


async def test_streaming_fallback_before_first_byte(client: Any, make_user: Any, test_models: Any) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "test/fail-500", "models": ["google/gemini-2.5-flash"], "messages": _msg("[[words:3]]"),
        "stream": True})
    chunks, done = _parse_sse(r.text)
    assert r.status_code == 200 and done
    assert {c["model"] for c in chunks} == {"google/gemini-2.5-flash"}


@pytest.mark.parametrize(("directive", "status", "code"), [
    ("[[fail:500]]", 502, "upstream_error"),
    ("[[fail:503]]", 502, "upstream_unavailable"),
    ("[[fail:429]]", 429, "upstream_rate_limited"),
    ("[[fail:400]]", 400, None),
    ("[[cut:0]]", 502, None),
])
async def test_upstream_failure_releases_everything(client: Any, make_user: Any, directive: str, status: int,
                                                    code: str | None) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": "openai/gpt-4o-mini", "messages": _msg(f"hi {directive}")})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if code:
        assert err["code"] == code
    assert "sk-fake-openai" not in r.text
    state = await _state(user.user_id)
    assert state["balance"]["balance"] == Decimal("5") and state["balance"]["reserved"] == 0
    assert state["ledger"] == [] and state["reservations"] == []
    assert len(state["usage"]) == 1
    rec = state["usage"][0]
    assert rec["status"] == "failed" and rec["charge"] == 0 and rec["error_code"]
    assert state["balance"]["period_requests"] == 0


async def test_upstream_timeout_is_504(client: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_READ_TIMEOUT_S", "0.3")
    reset_settings()
    from gateway.adapters import http_client

    await http_client.aclose_http_client()
    try:
        user = await make_user("5")
        # a stream whose provider sends nothing at all (not even headers) within the read timeout;
        # a non-streaming call is bounded by the request deadline instead (test_chat_money.py)
        r = await client.post("/v1/chat/completions", headers=_auth(user), json={
            "model": "openai/gpt-4o-mini", "messages": _msg("[[sleep:2]]"), "stream": True})
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        state = await _state(user.user_id)
        assert state["usage"][0]["status"] == "failed" and state["balance"]["reserved"] == 0
    finally:
        monkeypatch.delenv("UPSTREAM_READ_TIMEOUT_S")
        reset_settings()
        await http_client.aclose_http_client()


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "google/gemini-2.5-flash"])
async def test_mid_stream_cut_charges_usage_so_far(client: Any, make_user: Any, model: str) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user), json={
        "model": model, "messages": _msg("[[words:20]] [[cut:4]]"), "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    chunks, done = _parse_sse(r.text)
    assert not done
    assert "error" in chunks[-1] and chunks[-1]["error"]["message"]
    state = await _state(user.user_id)
    rec = state["usage"][0]
    assert rec["status"] == "partial" and rec["charge"] > 0 and rec["completion_tokens"] > 0
    assert state["balance"]["balance"] == Decimal("5") - rec["charge"]
    assert state["balance"]["reserved"] == 0 and len(state["ledger"]) == 1


async def test_missing_usage_is_estimated_and_marked(client: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": "openai/gpt-4o-mini", "messages": _msg("[[nousage]] [[words:8]]")})
    assert r.status_code == 200
    rec = (await _state(user.user_id))["usage"][0]
    assert rec["estimated"] is True and rec["completion_tokens"] > 0 and rec["charge"] > 0


async def test_tool_calls_pass_through(client: Any, make_user: Any) -> None:
    user = await make_user("5")
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    for model in ("openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "google/gemini-2.5-flash"):
        r = await client.post("/v1/chat/completions", headers=_auth(user), json={
            "model": model, "messages": _msg("use it [[tool:lookup]]"), "tools": tools, "tool_choice": "auto"})
        assert r.status_code == 200, r.text
        call = r.json()["choices"][0]["message"]["tool_calls"][0]
        assert call["function"]["name"] == "lookup" and json.loads(call["function"]["arguments"]) == {"x": 1}


async def test_upstash_down_fails_open(client: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("UPSTASH_TIMEOUT_S", "0.2")
    reset_settings()
    upstash.reset_redis()
    try:
        user = await make_user("5")
        r = await client.post("/v1/chat/completions", headers=_auth(user),
                              json={"model": "openai/gpt-4o-mini", "messages": _msg()})
        assert r.status_code == 200
        monkeypatch.setenv("RATELIMIT_FAIL_OPEN", "false")
        reset_settings()
        r = await client.post("/v1/chat/completions", headers=_auth(user),
                              json={"model": "openai/gpt-4o-mini", "messages": _msg()})
        assert r.status_code == 503 and r.json()["error"]["code"] == "ratelimiter_unavailable"
        state = await _state(user.user_id)
        assert len(state["usage"]) == 1 and state["reservations"] == []
    finally:
        upstash.reset_redis()


async def test_200_parallel_requests_against_credit_for_10(client: Any, make_user: Any, test_models: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """At most 10 served; balance == sum(ledger) exactly; available never negative. The others are
    refused: 402, or a retryable 429 where the credit was given back by a concurrent request between
    the refusal and its wording (``ledger.refuse``)."""
    monkeypatch.setenv("DB_POOL_MAX", "20")
    reset_settings()
    await db.close_pool()
    model = await _model_row("openai/gpt-4o-mini")
    price = ModelPrice(prompt=model["prompt_price"], completion=model["completion_price"])
    body = {"model": "openai/gpt-4o-mini", "messages": _msg("[[words:200]]"), "max_tokens": 200}
    from gateway.adapters.tokens import estimate_prompt_tokens

    hold = hold_for(price, estimate_prompt_tokens({"messages": body["messages"], "max_tokens": 200}), 200,
                    Decimal("0.05"))
    start = hold * 10 + (hold / 2).quantize(Decimal("0.00000001"))
    user = await make_user(str(start), tier="enterprise")

    async def one() -> int:
        r = await client.post("/v1/chat/completions", headers=_auth(user), json=body)
        if r.status_code == 429:  # a refusal whose room a concurrent request gave back meanwhile (ledger.refuse)
            assert r.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert r.headers["retry-after"] == "1"
        return r.status_code

    codes = await asyncio.gather(*[one() for _ in range(200)])
    served = codes.count(200)
    assert 1 <= served <= 10
    assert set(codes) <= {200, 402, 429}
    state = await _state(user.user_id)
    assert state["balance"]["balance"] >= 0
    assert state["balance"]["balance"] - state["balance"]["reserved"] >= 0
    assert len(state["ledger"]) == served and state["reservations"] == []
    total = sum((e["amount"] for e in state["ledger"]), Decimal(0))
    assert state["balance"]["balance"] == start + total
    assert await ledger.invariant_violations() == []
    await db.close_pool()


async def test_metrics_are_dimensioned_by_provider(client: Any, make_user: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    user = await make_user("5")
    capsys.readouterr()
    r = await client.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": "anthropic/claude-3.5-haiku", "messages": _msg("[[words:3]]")})
    assert r.status_code == 200
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    by_provider = [rec for rec in records if rec.get("provider") == "anthropic"]
    assert len(by_provider) == 1
    rec = by_provider[0]
    assert ["provider", "service"] in rec["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    assert rec["Requests"] == [1.0] and rec["CompletionTokens"] == [3.0] and rec["ChargeMicroUSD"][0] > 0
    assert user.api_key not in json.dumps(records)


async def test_prompt_cache_writes_are_billed_at_the_cache_write_price(client: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await client.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "anthropic/claude-3.5-haiku",
        "messages": _msg("cache me " + "x" * 400 + " [[words:4]] [[cache_write:40]]")})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    row = await _model_row("anthropic/claude-3.5-haiku")
    assert row["input_cache_write_price"] == row["prompt_price"] * Decimal("1.25")  # seeded by migration 0005
    rec = (await _state(user.user_id))["usage"][0]
    assert rec["cache_write_tokens"] == 40 and rec["cache_write_price"] == row["input_cache_write_price"]
    price = ModelPrice(prompt=row["prompt_price"], completion=row["completion_price"],
                       cache_read=row["input_cache_read_price"], cache_write=row["input_cache_write_price"])
    expected = charge_for(price.provider_cost(usage["prompt_tokens"], usage["completion_tokens"], 0, 40),
                          Decimal("0.10"))
    assert rec["charge"] == expected
    assert expected > charge_for(price.provider_cost(usage["prompt_tokens"], usage["completion_tokens"]),
                                 Decimal("0.10"))
