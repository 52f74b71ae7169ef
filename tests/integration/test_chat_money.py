"""Money safety on the query path (issue 9), against real Postgres, the Upstash bridge and the fake
providers as real local servers: holds that bound the charge, every cost the provider bills
billed, and settlement that survives the Lambda lifecycle (deadlines, the Web Adapter's freeze,
client disconnects, database outages, orphans)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from mangum import Mangum
from psycopg.rows import dict_row

from gateway import auth, db, observability
from gateway.adapters.http_client import aclose_http_client
from gateway.adapters.tokens import measure_prompt
from gateway.catalog import registry
from gateway.chat import service
from gateway.chat.schema import ChatRequest
from gateway.config import reset_settings
from gateway.money import ledger, sweeper
from gateway.money.holds import hold_for
from gateway.money.pricing import ModelPrice, charge_for
from infra.local.servers import free_port, start_in_thread
from tests.integration.test_chat import _auth, _msg, _parse_sse
from tests.integration.test_health import FakeLambdaContext, invoke_in_own_loop
from tests.support.account import upstream_requests
from tests.support.apps import function_fixtures, post_event
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
# the query function's app (what Mangum wraps, and uvicorn serves behind the Web Adapter)
app, api = function_fixtures("functions/query/app.py", app="app", client="api")
D = Decimal
MARKUP = D("0.10")
PLAIN_MONEY = re.compile(r"^-?\d+\.\d{8}$")


# ----------------------------------------------------------------------------------- helpers
def direct(database_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Read the real database directly (not through the gateway's pool, which a test may cut)."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def records(database_url: str, user_id: Any) -> list[dict[str, Any]]:
    return direct(database_url, "SELECT * FROM usage_records WHERE user_id = %s ORDER BY id", user_id)


def balance(database_url: str, user_id: Any) -> dict[str, Any]:
    return direct(database_url, "SELECT * FROM balances WHERE user_id = %s", user_id)[0]


async def ask(api: httpx.AsyncClient, user: Any, model: str, text: str, **extra: Any) -> httpx.Response:
    return await api.post("/v1/chat/completions", headers=_auth(user),
                          json={"model": model, "messages": _msg(text), **extra})


async def one_request(api: httpx.AsyncClient, make_user: Any, database_url: str, model: str, text: str,
                      status: int = 200, **extra: Any) -> tuple[Any, httpx.Response, dict[str, Any]]:
    """A new user with $5 makes one request: (the user, the response, its usage record)."""
    user = await make_user("5")
    r = await ask(api, user, model, text, **extra)
    assert r.status_code == status, r.text
    return user, r, records(database_url, user.user_id)[0]


async def wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def price_of(model_id: str) -> ModelPrice:
    info = (await registry.models())[model_id]
    return info.price


def charged(price: ModelPrice, usage: dict[str, Any], **tokens: int) -> Decimal:
    cost = price.provider_cost(usage["prompt_tokens"], usage["completion_tokens"], **tokens)
    return charge_for(cost, MARKUP)


@pytest.fixture
async def models(stack: str) -> AsyncIterator[None]:
    """Test rows: a model with a request fee, one routed through OpenRouter with cache prices."""
    await db.execute(
        """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
               max_completion_tokens, prompt_price, completion_price, request_price, input_cache_read_price,
               input_cache_write_price, source)
           VALUES ('test/fee-haiku', 'fee', 'anthropic', 'claude-3-5-haiku-20241022', 'test', 200000, 8192,
                   0.0000008, 0.000004, 0.01, NULL, NULL, 'test'),
                  ('test/or-haiku', 'or', 'openrouter', 'anthropic/claude-3.5-haiku', 'test', 200000, 8192,
                   0.0000008, 0.000004, 0, 0.00000008, 0.000001, 'test')
           ON CONFLICT (id) DO NOTHING""")
    registry.invalidate()
    yield
    await db.execute("DELETE FROM model_pricing WHERE source = 'test'")
    registry.invalidate()


# =================================================================================== 1. the hold
async def test_ten_concurrent_image_heavy_requests_on_one_dollar_never_go_below_zero(
        api: Any, make_user: Any, database_url: str) -> None:
    """The reported attack: 100 image URLs to an Opus-class model with max_tokens 1, 10 at once,
    on $1 of credit. Each image costs ~1,600 tokens at Opus prices: the hold must cover them."""
    user = await make_user("1")
    images = [{"type": "image_url", "image_url": {"url": f"https://example.com/{i}.png"}} for i in range(100)]
    body = {"model": "anthropic/claude-opus-4", "max_tokens": 1,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}, *images]}]}
    codes = await asyncio.gather(*[api.post("/v1/chat/completions", headers=_auth(user), json=body)
                                   for _ in range(10)])
    state = balance(database_url, user.user_id)
    # the documented bound (docs/money.md): holds are upper bounds, so never below zero
    assert state["balance"] - state["reserved"] >= 0, [r.status_code for r in codes]
    assert all(r.status_code == 402 for r in codes)  # 100 x 1,600 tokens at $15/M is over $1 held
    assert await ledger.invariant_violations() == []


async def test_served_image_request_is_charged_within_its_hold(api: Any, make_user: Any,
                                                              database_url: str) -> None:
    user = await make_user("20")
    images = [{"type": "image_url", "image_url": {"url": f"https://example.com/{i}.png"}} for i in range(20)]
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "anthropic/claude-3.5-haiku", "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}, *images]}]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] >= 20 * 1_590  # the provider billed the images
    rec = records(database_url, user.user_id)[0]
    assert 0 < rec["charge"] <= rec["hold"]


async def test_cjk_text_is_held_at_a_token_per_character(api: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    r = await ask(api, user, "anthropic/claude-3.5-haiku", "你好世界" * 2_500, max_tokens=5)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] >= 10_000  # a token per CJK character
    rec = records(database_url, user.user_id)[0]
    assert rec["charge"] <= rec["hold"]


async def test_every_forwarded_message_field_is_held(api: Any, make_user: Any, database_url: str,
                                                     fake_upstream: Any) -> None:
    user = await make_user("5")
    base = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "go"}]
    with_extra = [base[0], {**base[1], "reasoning": "r" * 40_000}, base[2]]
    for messages in (base, with_extra):
        r = await api.post("/v1/chat/completions", headers=_auth(user), json={
            "model": "meta-llama/llama-3.1-8b-instruct", "max_tokens": 5,
            "messages": messages})
        assert r.status_code == 200, r.text
    sent = [req["body"] for req in upstream_requests(fake_upstream, "openrouter")]
    assert sent[-1]["messages"][1]["reasoning"] == "r" * 40_000  # forwarded...
    plain, extra = records(database_url, user.user_id)
    price = await price_of("meta-llama/llama-3.1-8b-instruct")  # no cache prices: prompt tokens at .prompt
    assert extra["hold"] - plain["hold"] >= charge_for(D(40_000) * price.prompt, MARKUP) - D("0.00000002")


async def test_output_limit_is_clamped_to_the_model_and_injected_when_absent(api: Any, make_user: Any,
                                                                             fake_upstream: Any,
                                                                             database_url: str) -> None:
    user = await make_user("5")
    r = await ask(api, user, "anthropic/claude-3.5-haiku", "Hello there", max_tokens=64_000)
    assert r.status_code == 200
    r = await ask(api, user, "google/gemini-2.5-flash", "Hello there")
    assert r.status_code == 200
    anthropic, = [q["body"] for q in upstream_requests(fake_upstream, "anthropic")]
    gemini, = [q["body"] for q in upstream_requests(fake_upstream, "gemini")]
    assert anthropic["max_tokens"] == 8192  # clamped to the model's maximum, not the client's 64,000
    assert gemini["generationConfig"]["maxOutputTokens"] == 65_536  # injected: what the hold counted
    first, _ = records(database_url, user.user_id)
    haiku = await price_of("anthropic/claude-3.5-haiku")
    size = measure_prompt({"messages": _msg()})
    assert first["hold"] == hold_for(haiku, size.bound("anthropic/claude-3.5-haiku", 200_000), 8192, MARKUP)


async def test_model_not_on_the_plan_is_403_even_without_credit(api: Any, make_user: Any,
                                                                fake_upstream: Any) -> None:
    user = await make_user("1", tier="free")
    r = await ask(api, user, "anthropic/claude-opus-4", "Hello there")
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert upstream_requests(fake_upstream) == []


async def test_money_in_error_bodies_is_a_plain_decimal_string(api: Any, make_user: Any) -> None:
    user = await make_user("0")
    r = await ask(api, user, "openai/gpt-4o-mini", "Hello there")
    assert r.status_code == 402
    err = r.json()["error"]
    assert err["balance"] == "0.00000000" and PLAIN_MONEY.match(err["required"]), err
    assert "E-" not in err["message"] and "$0.00000000 is available" in err["message"]


async def test_requests_in_flight_per_user_are_capped(api: Any, make_user: Any, setting: Any,
                                                      database_url: str) -> None:
    setting(max_in_flight_per_user=2)
    user = await make_user("5")
    body = {"model": "openai/gpt-4o-mini", "messages": _msg("slow [[ttfb:0.5]]")}
    responses = await asyncio.gather(*[api.post("/v1/chat/completions", headers=_auth(user), json=body)
                                       for _ in range(3)])
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429], codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "concurrency_limit_exceeded" and refused.headers["retry-after"]
    assert balance(database_url, user.user_id)["in_flight"] == 0
    assert await ledger.invariant_violations() == []


async def test_an_overrun_emits_hold_overrun_with_the_user_dimension(
        api: Any, make_user: Any, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    user = await make_user("5")
    capsys.readouterr()
    # OpenRouter reports a cost above every catalogue price (e.g. a surcharge): billed, and reported
    r = await ask(api, user, "meta-llama/llama-3.1-8b-instruct", "[[cost:0.5]]", max_tokens=5)
    assert r.status_code == 200
    rec = records(database_url, user.user_id)[0]
    assert rec["charge"] > rec["hold"]
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    overrun = [m for m in emf if "HoldOverrun" in m and m.get("user") == str(user.user_id)]
    assert len(overrun) == 1 and overrun[0]["HoldOverrun"] == [1.0]
    assert {"user", "service"} in [set(d) for d in overrun[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"]]


# =================================================================================== 2. billed options
async def test_priority_service_tier_is_refused_and_openai_is_asked_for_default(
        api: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o-mini", "service_tier": "priority", "messages": _msg()})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_service_tier"
    assert upstream_requests(fake_upstream) == []
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o-mini", "service_tier": "auto", "messages": _msg()})
    assert r.status_code == 200
    assert upstream_requests(fake_upstream, "openai")[-1]["body"]["service_tier"] == "default"


async def test_a_file_by_id_is_refused_it_would_read_the_gateways_own_account(
        api: Any, make_user: Any, fake_upstream: Any, database_url: str) -> None:
    """A ``file_id`` names a file of the provider account the call is made with — ours: refused
    before any hold (send ``file_data``)."""
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Summarise"}, {"type": "file", "file": {"file_id": "file-abc123"}}]}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == "messages.0.content.1.file.file_id"
    assert upstream_requests(fake_upstream) == [] and records(database_url, user.user_id) == []


async def test_openrouter_routing_is_capped_at_the_catalogue_price(api: Any, make_user: Any,
                                                                   fake_upstream: Any, database_url: str) -> None:
    user = await make_user("5")
    prefs = {"order": ["DeepInfra"], "allow_fallbacks": False, "max_price": {"completion": "100"}}
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "meta-llama/llama-3.1-8b-instruct", "provider": prefs, "messages": _msg()})
    assert r.status_code == 200, r.text
    sent = upstream_requests(fake_upstream, "openrouter")[-1]["body"]["provider"]
    assert sent["order"] == ["DeepInfra"] and sent["allow_fallbacks"] is False
    # USD per million tokens: llama-3.1-8b is $0.02 / $0.03 per million in the catalogue
    assert sent["max_price"] == {"prompt": "0.02", "completion": "0.03", "request": "0"}
    # an endpoint above the cap is not served, and nothing is charged
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "meta-llama/llama-3.1-8b-instruct", "provider": prefs, "messages": _msg("[[endpoint_price:2]]")})
    assert r.status_code in (400, 404, 502), r.text
    last = records(database_url, user.user_id)[-1]
    assert last["status"] == "failed" and last["charge"] == 0


async def test_openrouter_is_billed_at_least_its_reported_cost(api: Any, make_user: Any,
                                                               database_url: str) -> None:
    _, _, rec = await one_request(api, make_user, database_url, "meta-llama/llama-3.1-8b-instruct", "[[cost:0.25]]")
    assert rec["reported_cost"] == D("0.25") and rec["provider_cost"] == D("0.25")
    assert rec["charge"] == charge_for(D("0.25"), MARKUP) == D("0.275")


async def test_openrouter_cache_writes_are_billed(api: Any, make_user: Any, models: None,
                                                  database_url: str) -> None:
    _, r, rec = await one_request(api, make_user, database_url, "test/or-haiku",
                                  "cache " + "x" * 800 + " [[cache_write:150]]")
    price = await price_of("test/or-haiku")
    assert rec["cache_write_tokens"] == 150
    expected = charged(price, r.json()["usage"], cache_write_tokens=150)
    assert rec["charge"] == expected > charged(price, r.json()["usage"])
    assert rec["provider_cost"] >= rec["reported_cost"] > 0


async def test_anthropic_one_hour_cache_writes_cost_twice_the_input_price(api: Any, make_user: Any,
                                                                          database_url: str) -> None:
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "anthropic/claude-3.5-haiku", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "doc " + "x" * 800, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "summarise [[cache_write:200]]"}]}]})
    assert r.status_code == 200, r.text
    rec = records(database_url, user.user_id)[0]
    assert rec["cache_write_tokens"] == 200 and rec["cache_write_1h_tokens"] == 200
    price = await price_of("anthropic/claude-3.5-haiku")
    assert rec["cache_write_1h_price"] == price.cache_write_1h == price.prompt * 2
    usage = r.json()["usage"]
    assert rec["charge"] == charged(price, usage, cache_write_tokens=200, cache_write_1h_tokens=200)
    assert rec["charge"] > charged(price, usage, cache_write_tokens=200)  # more than 5-minute writes
    assert rec["charge"] <= rec["hold"]


async def test_a_gemini_pro_prompt_past_200k_tokens_is_billed_and_held_at_the_long_context_price(
        api: Any, make_user: Any, database_url: str) -> None:
    """Google bills a Gemini 2.5 Pro call whose prompt is over 200,000 tokens at $2.50 / $15 per
    million (not $1.25 / $10): such a call is charged at those prices, within its hold; a shorter
    one stays at the base price."""
    model = "google/gemini-2.5-pro"
    _, r, rec = await one_request(api, make_user, database_url, model, "abcd " * 161_000, max_tokens=16)
    usage = r.json()["usage"]
    assert rec["provider"] == "gemini" and usage["prompt_tokens"] > 200_000
    assert rec["provider_cost"] == (usage["prompt_tokens"] * D("0.0000025")
                                    + usage["completion_tokens"] * D("0.000015"))
    assert rec["charge"] == charge_for(rec["provider_cost"], MARKUP) <= rec["hold"]
    # the record's unit prices are the ones the call was billed at
    assert (rec["prompt_price"], rec["completion_price"]) == (D("0.0000025"), D("0.000015"))
    _, r, rec = await one_request(api, make_user, database_url, model, "abcd " * 1_000, max_tokens=16)
    usage = r.json()["usage"]
    assert rec["provider_cost"] == (usage["prompt_tokens"] * D("0.00000125")
                                    + usage["completion_tokens"] * D("0.00001"))
    assert (rec["prompt_price"], rec["completion_price"]) == (D("0.00000125"), D("0.00001"))


async def test_request_fee_is_charged_when_the_provider_reports_no_tokens(api: Any, make_user: Any,
                                                                          models: None, database_url: str) -> None:
    _, _, rec = await one_request(api, make_user, database_url, "test/fee-haiku", "[[zero_usage]]")
    assert rec["prompt_tokens"] == 0 and rec["completion_tokens"] == 0
    assert rec["charge"] == charge_for(D("0.01"), MARKUP) == D("0.011")


# =================================================================================== 3. Lambda lifecycle
async def test_non_streaming_call_past_the_deadline_is_504_and_charged_what_the_provider_bills(
        api: Any, make_user: Any, setting: Any, database_url: str) -> None:
    setting(request_deadline_s=0.5)
    user = await make_user("5")
    r = await ask(api, user, "openai/gpt-4o-mini", "slow [[ttfb:3]]", max_tokens=300)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    rec = records(database_url, user.user_id)[0]
    # a non-streaming generation is billed whole by the provider: the output limit, estimated
    assert rec["status"] == "timeout" and rec["estimated"] is True and rec["completion_tokens"] == 300
    assert 0 < rec["charge"] <= rec["hold"]
    assert balance(database_url, user.user_id)["reserved"] == 0


async def test_a_file_without_the_providers_count_is_charged_at_the_bound_held_for_it(
        api: Any, make_user: Any, setting: Any, database_url: str) -> None:
    """A file's tokens are not in our estimate: when the provider's usage never comes (here the
    deadline stops a non-streaming call) the prompt is charged at the context length the hold
    reserved for the file, not at the few tokens of the surrounding text."""
    setting(request_deadline_s=0.5)
    user = await make_user("5")
    pdf = "data:application/pdf;base64," + "JVBERi0xLjQK" * 2000
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"filename": "a.pdf", "file_data": pdf}},
            {"type": "text", "text": "slow [[ttfb:3]]"}]}]})
    assert r.status_code == 504, r.text
    rec = records(database_url, user.user_id)[0]
    context = (await registry.models())["openai/gpt-4o"].context_length
    assert rec["status"] == "timeout" and rec["estimated"] is True
    assert rec["prompt_tokens"] == context and rec["completion_tokens"] == 50
    assert rec["charge"] <= rec["hold"]
    assert balance(database_url, user.user_id)["reserved"] == 0


async def test_stream_past_the_deadline_without_the_providers_count_charges_the_output_limit(
        api: Any, make_user: Any, setting: Any, database_url: str) -> None:
    """The deadline cuts a stream before the provider's final usage (Anthropic and OpenAI report
    it at the end): what the model generated is unknown — thinking and reasoning are billed by the
    provider and never (or only in summary) streamed — so the output is charged at its limit, what
    the hold reserved for it, and marked estimated. Charging the visible output would let a prompt
    that makes a model think past the deadline pay for none of the thinking."""
    setting(request_deadline_s=0.6)
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "anthropic/claude-3.5-haiku", "stream": True, "max_tokens": 300,
        "messages": _msg("long [[words:100]] [[chunk_delay:0.05]]")})
    chunks, done = _parse_sse(r.text)
    assert not done and chunks[-1]["error"]["code"] == "upstream_timeout"
    produced = sum(1 for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content"))
    assert 0 < produced < 100
    rec = records(database_url, user.user_id)[0]
    assert rec["status"] == "timeout" and rec["estimated"] is True
    assert rec["completion_tokens"] == 300 and 0 < rec["charge"] <= rec["hold"]
    assert balance(database_url, user.user_id)["reserved"] == 0


async def test_a_cut_call_with_a_prediction_charges_its_rejected_tokens_bound_too(
        api: Any, make_user: Any, setting: Any, database_url: str) -> None:
    """A ``prediction``'s rejected tokens are billed as output beyond ``max_tokens``: a call the
    deadline cuts before OpenAI's count is charged the whole output bound the hold counted."""
    setting(request_deadline_s=0.6)
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 300,
        "prediction": {"type": "content", "content": "x" * 1000},
        "messages": _msg("long [[words:100]] [[chunk_delay:0.05]]")})
    chunks, done = _parse_sse(r.text)
    assert not done and chunks[-1]["error"]["code"] == "upstream_timeout"
    rec = records(database_url, user.user_id)[0]
    assert rec["status"] == "timeout" and rec["estimated"] is True
    assert rec["completion_tokens"] == 300 + 1000 and 0 < rec["charge"] <= rec["hold"]


async def test_stream_past_the_deadline_with_the_providers_running_count_charges_that_count(
        api: Any, make_user: Any, setting: Any, database_url: str) -> None:
    """Gemini reports its usage cumulatively in every chunk (thoughts included): a stream the
    deadline cuts is charged that count, exact, not the output limit."""
    setting(request_deadline_s=0.6)
    user = await make_user("5")
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "google/gemini-2.5-flash", "stream": True, "max_tokens": 300,
        "messages": _msg("long [[words:100]] [[chunk_delay:0.05]]")})
    chunks, done = _parse_sse(r.text)
    assert not done and chunks[-1]["error"]["code"] == "upstream_timeout"
    rec = records(database_url, user.user_id)[0]
    assert rec["status"] == "timeout" and rec["estimated"] is False
    assert 0 < rec["completion_tokens"] < 100 and 0 < rec["charge"] < rec["hold"]


async def test_a_call_cut_before_the_providers_usage_charges_the_prompt_at_its_bound(
        api: Any, make_user: Any, setting: Any, database_url: str) -> None:
    """OpenAI reports usage only at the end of a stream (Responses: in its terminal event), so a call
    the deadline cuts has none: its prompt is charged at 4 characters a token, while the provider
    bills up to a token per byte (single digits, punctuation, rare words). An attacker makes the cut
    certain (a slow reasoning model behind the 27 s API Gateway deadline) and pays a quarter of the
    prompt — up to ~$20 a request on gpt-5.4-pro. The prompt must be charged at its bound."""
    setting(request_deadline_s=0.6)
    user = await make_user("5")
    prompt = "1 2 3 4 5 6 7 8 9 0 " * 1_000  # 20,000 bytes: up to 20,000 tokens on the provider's bill
    r = await api.post("/v1/chat/completions", headers=_auth(user), json={
        "model": "openai/gpt-4o-mini", "stream": True,
        "messages": _msg(prompt + "[[words:100]] [[chunk_delay:0.05]]")})
    chunks, done = _parse_sse(r.text)
    assert not done and chunks[-1]["error"]["code"] == "upstream_timeout"
    rec = records(database_url, user.user_id)[0]
    assert rec["status"] == "timeout" and rec["estimated"] is True
    assert rec["prompt_tokens"] >= 20_000 and rec["charge"] <= rec["hold"]


def _post_event(body: dict[str, Any], api_key: str) -> dict[str, Any]:
    return post_event("/v1/chat/completions", body, {"authorization": f"Bearer {api_key}"})


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
async def test_api_gateway_path_answers_504_before_api_gateway_gives_up(
        app: Any, make_user: Any, setting: Any, database_url: str) -> None:
    """Under Mangum (QueryFunction behind API Gateway, 30 s) the deadline comes from the Lambda
    context and BUFFERED_DEADLINE_S; a non-streaming request reads the upstream as a stream, so the
    deadline stops the generation (charged at the output limit: OpenAI's count never came)."""
    setting(buffered_deadline_s=0.8)
    user = await make_user("5")
    assert FakeLambdaContext().get_remaining_time_in_millis() > 20_000  # the buffered budget binds
    handler = Mangum(app, lifespan="off")
    await db.close_pool()
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 500,
            "messages": _msg("long [[words:200]] [[chunk_delay:0.02]]")}
    response = await asyncio.to_thread(invoke_in_own_loop, handler, _post_event(body, user.api_key))
    assert response["statusCode"] == 504, response
    assert json.loads(response["body"])["error"]["code"] == "upstream_timeout"
    rec = records(database_url, user.user_id)[0]
    # OpenAI's count comes at the end of its stream: the output is charged at its limit
    assert rec["status"] == "timeout" and rec["estimated"] is True
    assert rec["completion_tokens"] == 500 and 0 < rec["charge"] <= rec["hold"]
    assert balance(database_url, user.user_id)["reserved"] == 0
    # within the deadline the same path answers a normal completion, billed from the stream's usage
    body = {"model": "openai/gpt-4o-mini", "messages": _msg("quick [[words:6]]")}
    response = await asyncio.to_thread(invoke_in_own_loop, handler, _post_event(body, user.api_key))
    assert response["statusCode"] == 200, response
    completion = json.loads(response["body"])
    assert completion["object"] == "chat.completion" and completion["choices"][0]["finish_reason"] == "stop"
    assert len(completion["choices"][0]["message"]["content"].split()) == 6
    assert completion["usage"]["completion_tokens"] == 6
    rec = records(database_url, user.user_id)[-1]
    assert rec["status"] == "ok" and rec["completion_tokens"] == 6 and rec["estimated"] is False


async def test_web_adapter_path_settles_before_the_response_ends(app: Any, make_user: Any,
                                                                 fake_upstream: Any, database_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind the Lambda Web Adapter the environment is frozen when the response completes: the
    settle must be done by the time the app sends the last byte."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "mlp-test-QueryStreamFunction")
    user = await make_user("5")
    settled_at_end: list[bool] = []

    async def checked(scope: Any, receive: Any, send: Any) -> None:
        async def checking_send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                rows = await asyncio.to_thread(records, database_url, user.user_id)
                settled_at_end.append(bool(rows))
            await send(message)
        await app(scope, receive, checking_send)

    registry.invalidate()
    transport = httpx.ASGITransport(app=checked)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        r = await c.post("/v1/chat/completions", headers=_auth(user),
                         json={"model": "openai/gpt-4o-mini", "messages": _msg()})
    assert r.status_code == 200
    assert settled_at_end == [True]


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "google/gemini-2.5-flash"])
async def test_a_completed_stream_is_settled_once_before_its_last_byte(app: Any, make_user: Any, fake_upstream: Any,
                                                                       database_url: str, model: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that completes is settled from its terminal event (issue 15 lever 27), in a task
    of its own while the rest is sent: in Lambda, by its final body message it is settled exactly
    once, at the provider's usage (the one the usage chunk reports), status ok, nothing left
    reserved. (On a plain server the final body message does not wait for it: test_stream_end.)"""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "mlp-test-QueryStreamFunction")
    user = await make_user("5")
    at_end: list[list[dict[str, Any]]] = []

    async def checked(scope: Any, receive: Any, send: Any) -> None:
        async def checking_send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                at_end.append(await asyncio.to_thread(records, database_url, user.user_id))
            await send(message)
        await app(scope, receive, checking_send)

    registry.invalidate()
    transport = httpx.ASGITransport(app=checked)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        r = await c.post("/v1/chat/completions", headers=_auth(user), json={
            "model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": _msg("[[words:7]]")})
    assert r.status_code == 200
    chunks, done = _parse_sse(r.text)
    assert done
    usage = chunks[-1]["usage"]
    assert len(at_end) == 1 and len(at_end[0]) == 1
    rec = at_end[0][0]
    assert rec["status"] == "ok" and rec["estimated"] is False and rec["stream"] is True
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert rec["completion_tokens"] == 7 and rec["charge"] > 0
    assert records(database_url, user.user_id) == at_end[0]  # once
    assert balance(database_url, user.user_id)["reserved"] == 0


def _openai_chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    obj = {"id": "chatcmpl-late", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o-mini",
           "choices": [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
           "usage": usage}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def test_a_stream_is_settled_while_its_upstream_body_is_still_open(app: Any, make_user: Any, fake_upstream: Any,
                                                                         database_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream that keeps its body open after ``[DONE]`` (its end in a later packet, a server
    that closes late): the relay drains that body before it ends (the connection goes back to the
    pool), and the settlement runs meanwhile, from the terminal event (issue 15 lever 27), not after
    the drain. The upstream here looks for the usage record before it ends its body."""
    from aiohttp import web

    user = await make_user("5")
    usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    answer = (_openai_chunk({"role": "assistant", "content": ""}) + _openai_chunk({"content": "one two three"})
              + _openai_chunk({}, "stop") + _openai_chunk({}, usage=usage) + b"data: [DONE]\n\n")
    settled_while_open: list[bool] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(answer)
        give_up = time.monotonic() + 0.15  # the relay drains for up to DRAIN_TIMEOUT_S = 0.2 s
        while True:
            rows = await asyncio.to_thread(records, database_url, user.user_id)
            if rows or time.monotonic() > give_up:
                settled_while_open.append(bool(rows))
                break
            await asyncio.sleep(0.005)
        try:
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    upstream = web.Application()
    upstream.router.add_post("/openai/v1/chat/completions", chat)
    runner = web.AppRunner(upstream)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        registry.invalidate()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/openai/v1")
            reset_settings()
            r = await c.post("/v1/chat/completions", headers=_auth(user), json={
                "model": "openai/gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                "messages": _msg("hi")})
        assert r.status_code == 200
        chunks, done = _parse_sse(r.text)
        assert done and chunks[-1]["usage"]["completion_tokens"] == 3
    finally:
        monkeypatch.undo()
        reset_settings()
        await runner.cleanup()
        await aclose_http_client()
    assert settled_while_open == [True]
    rec = records(database_url, user.user_id)
    assert len(rec) == 1 and rec[0]["status"] == "ok" and rec[0]["completion_tokens"] == 3
    assert rec[0]["estimated"] is False
    assert balance(database_url, user.user_id)["reserved"] == 0


def _stream_then_leave(url: str, api_key: str, body: dict[str, Any]) -> int:
    """Read the first SSE event, then close the connection (the client goes away)."""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {api_key}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                return r.status_code
    return 0


@pytest.fixture
def served_gateway(app: Any) -> Iterator[str]:
    """The query app under a real uvicorn (real disconnects)."""
    server = start_in_thread(app)
    yield server.url
    server.stop()


async def test_disconnect_after_the_first_chunk_bills_the_reported_reasoning_tokens(
        served_gateway: str, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    registry.invalidate()
    body = {"model": "openai/o4-mini", "stream": True,
            "messages": _msg("think [[reasoning:20000]] [[words:30]] [[chunk_delay:0.03]]")}
    assert await asyncio.to_thread(_stream_then_leave, served_gateway, user.api_key, body) == 200
    rec = (await wait_for(lambda: records(database_url, user.user_id)))[0]
    # the gateway kept reading after the client left: the provider's usage, reasoning included
    assert rec["status"] == "cancelled" and rec["estimated"] is False
    assert rec["completion_tokens"] == 20_030
    price = await price_of("openai/o4-mini")
    assert rec["charge"] == charge_for(price.provider_cost(rec["prompt_tokens"], 20_030), MARKUP)
    assert rec["charge"] > D("0.08")  # ~$0.088 of reasoning, not a few words' worth
    assert balance(database_url, user.user_id)["reserved"] == 0


async def test_disconnect_when_usage_never_arrives_charges_the_output_limit(
        served_gateway: str, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    registry.invalidate()
    body = {"model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 300,
            "messages": _msg("[[nousage]] [[words:20]] [[chunk_delay:0.03]]")}
    assert await asyncio.to_thread(_stream_then_leave, served_gateway, user.api_key, body) == 200
    rec = (await wait_for(lambda: records(database_url, user.user_id)))[0]
    assert rec["status"] == "cancelled" and rec["estimated"] is True and rec["completion_tokens"] == 300


async def test_a_billed_answer_that_cannot_be_used_is_still_settled(api: Any, make_user: Any,
                                                                    database_url: str) -> None:
    user = await make_user("5")
    for model in ("openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"):
        r = await api.post("/v1/chat/completions", headers=_auth(user), json={
            "model": model, "max_tokens": 50, "messages": _msg("[[malformed]] [[words:5]]")})
        assert r.status_code == 502, r.text
    for rec in records(database_url, user.user_id):
        assert rec["status"] == "failed" and rec["charge"] > 0 and rec["completion_tokens"] == 5
    assert balance(database_url, user.user_id)["reserved"] == 0


async def test_a_response_that_cannot_be_rendered_is_still_settled(api: Any, make_user: Any,
                                                                   database_url: str) -> None:
    user, _, rec = await one_request(api, make_user, database_url, "openai/gpt-4o-mini", "[[nan]] [[words:5]]",
                                     status=500)
    assert rec["status"] == "failed" and rec["error_code"] == "response_render_failed"
    assert rec["completion_tokens"] == 5 and rec["charge"] > 0  # the provider billed it
    assert balance(database_url, user.user_id)["reserved"] == 0


@pytest.fixture
async def flaky_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TcpProxy]:
    """The gateway's database behind a proxy the test can cut ("refuse") and restore ("forward")."""
    host, port = re.search(r"@([\d.]+):(\d+)/", database_url).groups()  # type: ignore[union-attr]
    proxy = TcpProxy(host, int(port))
    await db.close_pool()
    monkeypatch.setenv("DATABASE_URL", database_url.replace(f"{host}:{port}", proxy.url_host))
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "1")
    reset_settings()
    yield proxy
    await db.close_pool()
    db.reset_breaker()
    proxy.close()
    monkeypatch.undo()
    reset_settings()
    await aclose_http_client()


async def _cut_once_reserved(proxy: TcpProxy, database_url: str, user_id: Any) -> None:
    """Cut the database once the request holds its reservation (it is then on its way upstream)."""
    await wait_for(lambda: direct(database_url, "SELECT 1 FROM reservations WHERE user_id = %s", user_id))
    proxy.set_mode("refuse")


async def test_settle_retries_a_database_that_comes_back(api: Any, make_user: Any, setting: Any,
                                                         flaky_database: TcpProxy, database_url: str) -> None:
    user = await make_user("5")
    setting(settle_retry_s=15)
    request = asyncio.ensure_future(ask(api, user, "openai/gpt-4o-mini", "[[ttfb:0.6]] [[words:7]]"))
    await _cut_once_reserved(flaky_database, database_url, user.user_id)
    threading.Timer(1.0, flaky_database.set_mode, ("forward",)).start()  # back while the settle retries
    r = await request
    assert r.status_code == 200
    rec = (await wait_for(lambda: records(database_url, user.user_id)))[0]
    assert rec["status"] == "ok" and rec["completion_tokens"] == 7 and rec["estimated"] is False
    assert balance(database_url, user.user_id)["reserved"] == 0


async def test_requests_served_while_postgres_is_away_are_settled_when_it_returns(
        api: Any, make_user: Any, setting: Any, flaky_database: TcpProxy, database_url: str) -> None:
    user = await make_user("5")
    setting(settle_retry_s=0.2)
    request = asyncio.ensure_future(ask(api, user, "openai/gpt-4o-mini", "[[ttfb:0.6]] [[words:7]]"))
    await _cut_once_reserved(flaky_database, database_url, user.user_id)
    r = await request
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 7  # served meanwhile
    assert records(database_url, user.user_id) == []  # not settled yet: the database is away
    assert len(direct(database_url, "SELECT 1 FROM reservations WHERE user_id = %s", user.user_id)) == 1
    flaky_database.set_mode("forward")
    await _next_request_served(api, user)  # it settles itself, then the deferred one
    rows = await wait_for(lambda: [x for x in records(database_url, user.user_id) if x["completion_tokens"] == 7])
    assert rows[0]["status"] == "ok" and rows[0]["estimated"] is False  # the real usage, not a guess
    assert balance(database_url, user.user_id)["reserved"] == 0
    assert not service._deferred


async def _next_request_served(api: Any, user: Any) -> None:
    """The container's next request, sent until the database answers again (503 meanwhile): once
    served, it has settled itself and then what the container deferred."""
    while True:
        r = await ask(api, user, "openai/gpt-4o-mini", "[[words:2]]")
        if r.status_code == 200:
            return
        assert r.status_code == 503, r.text
        await asyncio.sleep(0.2)


async def test_a_stream_whose_settle_cannot_reach_postgres_still_ends_and_is_settled_later(
        app: Any, api: Any, make_user: Any, setting: Any, flaky_database: TcpProxy, database_url: str) -> None:
    """The settle of a completed stream runs from its terminal event while the last chunks are sent
    (issue 15 lever 27): when it cannot reach the database (retried, then deferred in the container)
    the stream still ends as any other — every chunk, the usage chunk, ``[DONE]``, then its final
    body message, no error raised — and the container's next request settles it at the provider's
    usage."""
    user = await make_user("5")
    setting(settle_retry_s=0.2)
    last: list[dict[str, Any]] = []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def watching_send(message: Any) -> None:
            last[:] = [message]
            await send(message)
        await app(scope, receive, watching_send)

    async def stream() -> httpx.Response:
        transport = httpx.ASGITransport(app=watched)  # an error in the app raises here
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            return await c.post("/v1/chat/completions", headers=_auth(user), json={
                "model": "openai/gpt-4o-mini", "messages": _msg("[[ttfb:0.6]] [[words:7]]"), "stream": True,
                "stream_options": {"include_usage": True}})

    request = asyncio.ensure_future(stream())
    await _cut_once_reserved(flaky_database, database_url, user.user_id)
    r = await request
    assert r.status_code == 200
    assert last[0]["type"] == "http.response.body" and last[0].get("more_body") is False  # the stream ended
    chunks, done = _parse_sse(r.text)
    assert done and not any("error" in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).count(" ") == 6
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    assert records(database_url, user.user_id) == []  # not settled yet: the database is away
    assert len(direct(database_url, "SELECT 1 FROM reservations WHERE user_id = %s", user.user_id)) == 1
    flaky_database.set_mode("forward")
    await _next_request_served(api, user)
    rows = await wait_for(lambda: [x for x in records(database_url, user.user_id) if x["completion_tokens"] == 7])
    assert rows[0]["status"] == "ok" and rows[0]["stream"] is True and rows[0]["estimated"] is False
    assert balance(database_url, user.user_id)["reserved"] == 0
    assert not service._deferred


async def test_a_call_still_running_after_a_second_marks_its_reservation_as_sent(
        api: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    slow = asyncio.ensure_future(ask(api, user, "openai/gpt-4o-mini", "[[ttfb:2]] [[words:2]]"))
    marked = await wait_for(lambda: direct(database_url, "SELECT upstream_at FROM reservations WHERE user_id = %s "
                                                       "AND upstream_at IS NOT NULL", user.user_id))
    assert len(marked) == 1  # while the provider is still answering
    assert (await slow).status_code == 200
    assert direct(database_url, "SELECT 1 FROM reservations WHERE user_id = %s", user.user_id) == []


async def test_sweeper_charges_orphans_that_reached_upstream_and_releases_the_others(
        make_user: Any, database_url: str) -> None:
    user = await make_user("10")
    await ledger.reserve(user.user_id, "orphan-sent", D("0.75"), model="openai/gpt-4o")
    await ledger.mark_upstream("orphan-sent")
    await ledger.reserve(user.user_id, "orphan-unsent", D("2"), model="openai/gpt-4o")
    await ledger.reserve(user.user_id, "live", D("1"), model="openai/gpt-4o")
    await db.execute("UPDATE reservations SET created_at = now() - interval '30 minutes' "
                     "WHERE request_id LIKE 'orphan-%%'")
    summary = await sweeper.run({"action": "sweep-orphans"})
    assert summary["charged"] == ["orphan-sent"] and summary["released"] == ["orphan-unsent"]
    recs = {r["request_id"]: r for r in records(database_url, user.user_id)}
    assert recs["orphan-sent"]["charge"] == D("0.75") and recs["orphan-sent"]["estimated"] is True
    assert recs["orphan-sent"]["status"] == "orphaned"
    assert recs["orphan-unsent"]["charge"] == 0
    state = balance(database_url, user.user_id)
    assert (state["balance"], state["reserved"], state["in_flight"]) == (D("9.25"), D("1"), 1)
    assert state["period_requests"] == 2  # the released one gave its quota request back
    assert (await sweeper.run({}))["charged"] == []  # a second run changes nothing
    assert await ledger.invariant_violations() == []


async def test_a_request_cancelled_while_the_provider_works_is_settled_before_the_cancellation_propagates(
        api: Any, make_user: Any, database_url: str) -> None:
    """What Starlette does to a request whose client left: an anyio cancel scope, cancelled, which
    delivers its cancellation again on every loop iteration until the task leaves it. The call was
    on its way (the provider bills it): the settle runs to the end under its shield, even while it
    waits (here for a lock another transaction holds on the balance), then the cancellation
    propagates (the scope catches it)."""
    user = await make_user("5")
    principal = await auth.authenticate_key(user.api_key)
    req = ChatRequest.model_validate({"model": "openai/gpt-4o-mini", "max_tokens": 50,
                                      "messages": _msg("slow [[sleep:3]]")})
    call = await service.plan("req-cancel-" + uuid.uuid4().hex, principal, req)
    assert not call.buffered
    await service.admit(call)
    blocker = await psycopg.AsyncConnection.connect(database_url)
    await blocker.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))

    async def release() -> None:
        await asyncio.sleep(1.0)  # the settle has been waiting for the lock for ~0.6 s
        await blocker.rollback()

    releasing = asyncio.create_task(release())
    log = io.StringIO()  # the Powertools handler writes to the stdout it saw at import: redirect it
    handler = observability.logger.registered_handler
    old_stream = handler.setStream(log)  # type: ignore[attr-defined]
    try:
        with anyio.CancelScope() as scope:
            asyncio.get_running_loop().call_later(0.4, scope.cancel)
            await service.complete(call)
    finally:
        handler.setStream(old_stream)  # type: ignore[attr-defined]
        await releasing
        await blocker.close()
    assert scope.cancelled_caught
    # the whole settle ran, up to its log line (without the shield it ends at the settle statement)
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    assert [e["status"] for e in lines if e["message"] == "chat completion"] == ["cancelled"], lines
    (rec,) = records(database_url, user.user_id)
    assert rec["status"] == "cancelled" and rec["estimated"] is True and rec["completion_tokens"] == 50
    assert balance(database_url, user.user_id)["reserved"] == 0
    assert await ledger.invariant_violations() == []
