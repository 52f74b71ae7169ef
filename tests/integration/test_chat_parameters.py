"""Every parameter the current openai SDK sends, end to end through the query function against real
Postgres, the Upstash bridge and the fake providers (which refuse fields their real API refuses):
answered on an OpenAI model (everything forwarded) and on Anthropic and Gemini models (mapped,
the rest named in ``x-dropped-params``); unpriced parameters refused before any hold; audio input
and predictions held and billed; one usage record per request and balance == sum(ledger)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from gateway import db
from gateway.catalog import registry
from gateway.money import ledger
from gateway.money.pricing import ModelPrice, charge_for
from gateway.translation import DROPPED_PARAMS_HEADER
from tests.integration.test_chat import _auth, _parse_sse
from tests.integration.test_chat_money import balance, direct, records
from tests.support.account import upstream_requests
from tests.support.apps import function_fixtures
from tests.support.chat_contract import REFUSED_PARAMETERS, SDK_PARAMETERS, every_parameter_body

pytestmark = pytest.mark.integration
query_app, api = function_fixtures("functions/query/app.py", app="query_app", client="api")
D = Decimal
MARKUP = D("0.10")
ANTHROPIC_DROPPED = {"frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "metadata",
                     "moderation", "prediction", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
                     "reasoning_effort", "seed", "store", "verbosity", "top_p"}
GEMINI_DROPPED = {"logit_bias", "logprobs", "top_logprobs", "metadata", "moderation", "parallel_tool_calls",
                  "prediction", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
                  "safety_identifier", "store", "user", "verbosity"}  # reasoning_effort: thinkingConfig


@pytest.fixture
async def audio_model(stack: str) -> Any:
    """An OpenAI audio-input model with an audio price in the catalogue (``pricing_extra.audio``)."""
    await db.execute(
        """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
               max_completion_tokens, prompt_price, completion_price, pricing_extra, source)
           VALUES ('test/audio-in', 'audio in', 'openai', 'gpt-4o-audio-preview', 'test', 128000, 4096,
                   0.0000025, 0.00001, '{"audio": "0.00004"}', 'test')
           ON CONFLICT (id) DO NOTHING""")
    registry.invalidate()
    yield "test/audio-in"
    await db.execute("DELETE FROM model_pricing WHERE source = 'test'")
    registry.invalidate()


async def _money_is_consistent(database_url: str, user: Any, requests: int) -> list[dict[str, Any]]:
    """Exactly ``requests`` usage records, one ledger row per charge, balance == sum(ledger)."""
    recs = records(database_url, user.user_id)
    assert len(recs) == requests
    ledger_sum = direct(database_url, "SELECT COALESCE(sum(amount), 0) AS s FROM ledger_entries WHERE user_id = %s",
                        user.user_id)[0]["s"]
    assert balance(database_url, user.user_id)["balance"] == ledger_sum
    assert balance(database_url, user.user_id)["reserved"] == 0
    assert await ledger.invariant_violations() == []
    return recs


def test_the_every_parameter_body_is_every_sdk_parameter() -> None:
    body = every_parameter_body("m", stream=True)
    assert set(body) | REFUSED_PARAMETERS == SDK_PARAMETERS


@pytest.mark.parametrize("stream", [False, True])
async def test_every_sdk_parameter_is_forwarded_to_an_openai_model(api: Any, make_user: Any, fake_upstream: Any,
                                                                   database_url: str, stream: bool) -> None:
    user = await make_user("5")
    body = every_parameter_body("openai/gpt-4o-mini", stream=stream)
    r = await api.post("/v1/chat/completions", headers=_auth(user), json=body)
    assert r.status_code == 200, r.text
    assert DROPPED_PARAMS_HEADER not in r.headers
    sent = upstream_requests(fake_upstream, "openai")[-1]["body"]
    skip = {"model", "max_tokens", "service_tier", "stream_options", "messages"} | ({"stream"} if not stream else set())
    for name in set(body) - skip:
        assert sent[name] == body[name], name
    assert [m["role"] for m in sent["messages"]] == [m["role"] for m in body["messages"]]
    assert sent["max_completion_tokens"] == 64 and sent["service_tier"] == "default"
    rec = (await _money_is_consistent(database_url, user, 1))[0]
    assert rec["status"] == "ok" and rec["charge"] > 0 and rec["charge"] <= rec["hold"]


async def test_rejected_prediction_tokens_beyond_the_output_limit_stay_within_the_hold(
        api: Any, make_user: Any, database_url: str) -> None:
    """The fake bills every predicted token as rejected output on top of the words (OpenAI counts them
    in completion_tokens whatever max_tokens says): the hold counts the prediction's size."""
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Rewrite [[words:4]]"}],
        "max_tokens": 16, "prediction": {"type": "content", "content": "x" * 40_000}})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4 + 10_000
    rec = (await _money_is_consistent(database_url, user, 1))[0]
    assert rec["completion_tokens"] == 10_004
    assert 0 < rec["charge"] <= rec["hold"]  # no overrun


@pytest.mark.parametrize(("model", "provider"), [("anthropic/claude-3.7-sonnet", "anthropic"),
                                               ("google/gemini-2.5-flash", "gemini")])
async def test_reasoning_effort_becomes_the_providers_thinking_within_the_hold(
        api: Any, make_user: Any, fake_upstream: Any, database_url: str, model: str, provider: str) -> None:
    """Anthropic: extended thinking with a budget below max_tokens (temperature, which thinking
    rules out, named); Gemini 2.5: a thinking budget, thoughts spent from maxOutputTokens. The
    fakes refuse an invalid thinking request as the real APIs do; reasoning is billed within the hold."""
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": model, "messages": [{"role": "user", "content": "Think [[words:3]] [[reasoning:40]]"}],
        "reasoning_effort": "medium", "temperature": 0.4, "max_tokens": 4000})
    assert r.status_code == 200, r.text
    [sent] = upstream_requests(fake_upstream, provider)
    if provider == "anthropic":
        assert sent["body"]["thinking"] == {"type": "enabled", "budget_tokens": 3999}  # medium: 8,192, below 4,000
        assert "temperature" not in sent["body"] and r.headers[DROPPED_PARAMS_HEADER] == "temperature"
    else:
        config = sent["body"]["generationConfig"]
        assert config["thinkingConfig"] == {"thinkingBudget": 8192} and config["maxOutputTokens"] == 4000
        assert DROPPED_PARAMS_HEADER not in r.headers
    rec = (await _money_is_consistent(database_url, user, 1))[0]
    assert rec["completion_tokens"] >= 3 and 0 < rec["charge"] <= rec["hold"]


@pytest.mark.parametrize(("model", "provider", "dropped"), [
    ("anthropic/claude-3.5-haiku", "anthropic", ANTHROPIC_DROPPED),
    ("google/gemini-2.5-flash", "gemini", GEMINI_DROPPED),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_every_sdk_parameter_is_answered_by_a_translating_adapter(
        api: Any, make_user: Any, fake_upstream: Any, database_url: str, model: str, provider: str,
        dropped: set[str], stream: bool) -> None:
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json=every_parameter_body(model, stream=stream))
    assert r.status_code == 200, r.text  # the fake refuses any field its real API does not know
    assert set(r.headers[DROPPED_PARAMS_HEADER].split(", ")) == dropped
    calls = upstream_requests(fake_upstream, provider)
    assert len(calls) == 1 and calls[0]["status"] == 200
    if stream:
        chunks, done = _parse_sse(r.text)
        assert done and chunks[-1]["usage"]["prompt_tokens"] > 0
    rec = (await _money_is_consistent(database_url, user, 1))[0]
    assert rec["status"] == "ok" and 0 < rec["charge"] <= rec["hold"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"web_search_options": {"search_context_size": "high"}}, "web_search_options"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_unpriced_parameters_are_refused_and_change_nothing(api: Any, make_user: Any, fake_upstream: Any,
                                                                 database_url: str, extra: dict[str, Any],
                                                                 param: str, stream: bool) -> None:
    user = await make_user("5")
    before = balance(database_url, user.user_id)
    body = {**every_parameter_body("openai/gpt-4o-mini", stream=stream), **extra}
    r = await api.post("/v1/chat/completions", headers=_auth(user), json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("unsupported_parameter", param, "invalid_request_error")
    assert param in error["message"]
    assert balance(database_url, user.user_id) == before
    assert records(database_url, user.user_id) == []
    assert upstream_requests(fake_upstream) == []


def _audio_body(model: str, chars: int = 64_000) -> dict[str, Any]:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Transcribe this."},
        {"type": "input_audio", "input_audio": {"data": "A" * chars, "format": "wav"}}]}]}


async def test_audio_input_is_held_and_billed_at_the_audio_price(api: Any, make_user: Any, database_url: str,
                                                                 audio_model: str) -> None:
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json=_audio_body(audio_model))
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens_details"]["audio_tokens"] == 1_000  # the fake: a token per 64 characters
    rec = (await _money_is_consistent(database_url, user, 1))[0]
    assert (rec["audio_tokens"], rec["audio_price"]) == (1_000, D("0.00004"))
    price = ModelPrice(prompt=D("0.0000025"), completion=D("0.00001"), audio=D("0.00004"))
    expected = charge_for(price.provider_cost(usage["prompt_tokens"], usage["completion_tokens"], audio_tokens=1_000),
                          MARKUP)
    assert rec["charge"] == expected
    assert expected > charge_for(price.provider_cost(usage["prompt_tokens"], usage["completion_tokens"]), MARKUP)
    assert rec["charge"] <= rec["hold"]


async def test_audio_input_on_a_model_without_an_audio_price_is_refused(api: Any, make_user: Any,
                                                                        fake_upstream: Any,
                                                                        database_url: str) -> None:
    user = await make_user("5")
    before = balance(database_url, user.user_id)
    r = await api.post("/v1/chat/completions", headers=_auth(user), json=_audio_body("openai/gpt-4o-mini"))
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("unsupported_content", "messages")
    assert balance(database_url, user.user_id) == before
    assert records(database_url, user.user_id) == [] and upstream_requests(fake_upstream) == []


async def test_the_usage_chunk_carries_the_stream_id(api: Any, make_user: Any) -> None:
    user = await make_user("5")
    for model in ("openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"):
        r = await api.post("/v1/chat/completions", headers=_auth(user), json={
            "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}})
        chunks, done = _parse_sse(r.text)
        assert done and chunks[-1]["choices"] == [] and "usage" in chunks[-1]
        assert {c["id"] for c in chunks} == {chunks[0]["id"]}, model


async def test_usage_records_has_a_column_for_every_usage_field(stack: str) -> None:
    rows = await db.fetchall("SELECT column_name FROM information_schema.columns WHERE table_name = 'usage_records'")
    columns = {r["column_name"] for r in rows}
    assert set(ledger.RECORD_COLUMNS) | {"user_id", "hold"} <= columns


async def test_a_dropped_parameter_is_logged(api: Any, make_user: Any, caplog: pytest.LogCaptureFixture) -> None:
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "anthropic/claude-3.5-haiku", "messages": [{"role": "user", "content": "hi"}], "seed": 1,
        "verbosity": "low"})
    assert r.status_code == 200 and r.headers[DROPPED_PARAMS_HEADER] == "seed, verbosity"
    logged = [json.loads(m) if m.startswith("{") else m for m in caplog.messages]
    assert any("parameters not forwarded" in str(m) for m in logged)


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "meta-llama/llama-3.1-8b-instruct"])  # OpenAI, OpenRouter
async def test_store_true_is_never_stored_in_our_provider_account(api: Any, make_user: Any, fake_upstream: Any,
                                                                  model: str) -> None:
    """``store: true`` would keep the customer's conversation among OUR account's stored
    completions: it goes upstream as false and the answer names it in x-dropped-params."""
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": model, "store": True, "metadata": {"k": "v"}, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert "store" in r.headers[DROPPED_PARAMS_HEADER].split(", ")
    sent = upstream_requests(fake_upstream)[-1]["body"]
    assert sent["store"] is False and sent["metadata"] == {"k": "v"}
