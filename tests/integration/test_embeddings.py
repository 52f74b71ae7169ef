"""``POST /v1/embeddings`` (functions/embeddings) against real Postgres, the Upstash bridge and the
fake providers: every provider format (OpenAI, Gemini's batchEmbedContents, OpenRouter, compat),
billed exactly once per input token through the chat money path, refusals that change nothing,
upstream failures and deadlines with chat's statuses, embedding models in ``GET /v1/models``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from mangum import Mangum

from gateway import auth, db
from gateway.catalog import registry
from gateway.chat import service as chat_service
from gateway.config import FREE_TIER, get_settings, reset_settings
from gateway.embeddings import schema, service
from gateway.embeddings.schema import EmbeddingsRequest, decode
from gateway.money import ledger
from gateway.money.holds import hold_for
from gateway.money.pricing import charge_for
from infra.local.fake_surfaces import fake_vector
from tests.integration.test_chat import _auth, _msg, _state
from tests.integration.test_health import http_api_v2_event, invoke_in_own_loop
from tests.support.account import upstream_requests
from tests.support.apps import app_client, load_app

pytestmark = pytest.mark.integration
D = Decimal
MARKUP = D("0.10")  # the pro tier's

MODELS = [
    ("openai/text-embedding-3-small", "openai"),
    ("google/gemini-embedding-001", "gemini"),
    ("mistralai/mistral-embed-2312", "openrouter"),
    ("compat/nomic-embed-text", "compat"),
]


@pytest.fixture(scope="session")
def embeddings_app(stack: str, fake_upstream: Any) -> Any:
    return load_app("functions/embeddings/app.py")


@pytest.fixture
async def client(embeddings_app: Any, fake_upstream: Any) -> Any:
    await db.execute(
        """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
               max_completion_tokens, prompt_price, completion_price, output_modalities, source)
           VALUES ('compat/nomic-embed-text', 'Local: nomic-embed-text', 'compat', 'nomic-embed-text:latest',
                   'local', 2048, 0, 0.00000001, 0, ARRAY['embeddings'], 'test')
           ON CONFLICT (id) DO NOTHING""")
    async with app_client(embeddings_app, fake_upstream) as c:
        yield c
    await db.execute("DELETE FROM model_pricing WHERE source = 'test'")
    registry.invalidate()


@pytest.fixture
def counts_in_time(setting: Any) -> None:
    """For the tests that assert a Gemini batch billed by Google's count: the count gets 5 s once the
    batches answered instead of the default 0.2 s. The fake answers it at once, but a loaded machine
    can take longer than 0.2 s to deliver it (a clean-clone CI run did), and the bound is then billed,
    as designed. The grace itself is tested below with the default and with this setting."""
    setting(embeddings_count_grace_s=5)


async def embed(client: httpx.AsyncClient, user: Any, **body: Any) -> httpx.Response:
    return await client.post("/v1/embeddings", headers=_auth(user), json=body)


async def price_of(model_id: str) -> Decimal:
    return (await registry.embedding_models())[model_id].price.prompt


async def assert_unchanged(user: Any, fake_upstream: Any, balance: str = "5") -> None:
    """Nothing happened: no upstream call, no usage record, no ledger row, no reservation."""
    assert upstream_requests(fake_upstream) == []
    state = await _state(user.user_id)
    assert state["usage"] == [] and state["ledger"] == [] and state["reservations"] == []
    assert state["balance"]["balance"] == D(balance) and state["balance"]["reserved"] == 0
    assert state["balance"]["period_requests"] == 0 and state["balance"]["in_flight"] == 0


# ================================================================================ billed once
@pytest.mark.parametrize(("model", "provider"), MODELS)
@pytest.mark.usefixtures("counts_in_time")
async def test_embeddings_bill_exactly_once(client: Any, make_user: Any, fake_upstream: Any, model: str,
                                            provider: str) -> None:
    user = await make_user("5")
    texts = ["hello world", "日本語のテキスト", "a" * 100]
    r = await embed(client, user, model=model, input=texts)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == model
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and isinstance(d["embedding"], list) for d in body["data"])
    assert body["data"][1]["embedding"] == pytest.approx(fake_vector(texts[1], 16))
    seen = upstream_requests(fake_upstream, provider)
    assert len(upstream_requests(fake_upstream)) == len(seen)  # only this provider was called
    usage = body["usage"]
    if provider == "gemini":
        # the batch, and at the same time Google's free token count of the same texts (its answer
        # carries no count): what Google bills, counted by its tokenizer, not the bound
        assert sorted(s["path"].rsplit(":", 1)[1] for s in seen) == ["batchEmbedContents", "countTokens"]
        (count,) = [s for s in seen if s["path"].endswith("/models/gemini-embedding-001:countTokens")]
        assert count["body"] == {"contents": [{"parts": [{"text": t}]} for t in texts]}
        assert count["key_source"] == "x-goog-api-key"
    else:  # OpenAI's format: one call, its reported usage; no count is asked
        assert len(seen) == 1 and seen[0]["path"].endswith("/embeddings")
    assert usage["prompt_tokens"] == sum(math.ceil(len(t) / 4) for t in texts)  # what the fake reports / counts
    assert usage["prompt_tokens"] < schema.hold_tokens(EmbeddingsRequest(model=model, input=texts), per_item_cap=2048)
    assert service.ESTIMATED_HEADER not in r.headers
    assert usage["total_tokens"] == usage["prompt_tokens"]
    assert r.headers["x-ratelimit-limit"] == "60"

    state = await _state(user.user_id)
    expected = charge_for(usage["prompt_tokens"] * await price_of(model), MARKUP)
    assert expected > 0
    assert len(state["usage"]) == 1 and len(state["ledger"]) == 1
    rec = state["usage"][0]
    assert rec["status"] == "ok" and rec["model_served"] == model and rec["provider"] == provider
    assert rec["prompt_tokens"] == usage["prompt_tokens"] and rec["completion_tokens"] == 0
    assert rec["charge"] == expected and rec["estimated"] is False and rec["stream"] is False
    assert state["ledger"][0]["amount"] == -expected
    assert state["balance"]["balance"] == D("5") - expected
    assert state["balance"]["reserved"] == 0 and state["reservations"] == []
    assert await ledger.invariant_violations() == []


async def test_hold_is_an_upper_bound_of_the_charge(client: Any, make_user: Any) -> None:
    user = await make_user("5")
    principal = await auth.authenticate_key(user.api_key)
    for model in ("openai/text-embedding-3-small", "google/gemini-embedding-001"):
        texts = ["plain ascii text here", "ünïcödé ✓ 日本", "x" * 4000]
        req = EmbeddingsRequest(model=model, input=texts)
        call = await service.plan("req-hold-" + model, principal, req)
        info = (await registry.embedding_models())[model]
        bytes_bound = sum(min(len(t.encode()), info.context_length) for t in texts)  # Gemini: 2048 per item
        assert call.hold == hold_for(info.price, bytes_bound, 0, MARKUP)
        r = await embed(client, user, model=model, input=texts)
        assert r.status_code == 200, r.text
        assert charge_for(r.json()["usage"]["prompt_tokens"] * info.price.prompt, MARKUP) <= call.hold
    # each item is held at most at the model's input limit
    huge = EmbeddingsRequest(model="openai/text-embedding-3-small", input=["ab " * 5000])
    call = await service.plan("req-hold-cap", principal, huge)
    info = (await registry.embedding_models())["openai/text-embedding-3-small"]
    assert call.hold == hold_for(info.price, info.context_length, 0, MARKUP)


# ================================================================================ formats
async def test_base64_dimensions_and_a_single_string(client: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    r = await embed(client, user, model="openai/text-embedding-3-small", input="one text", dimensions=8,
                    encoding_format="base64")
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert isinstance(item["embedding"], str)
    assert decode(item["embedding"]) == pytest.approx(fake_vector("one text", 8), rel=1e-6)
    sent = upstream_requests(fake_upstream, "openai")[0]["body"]
    assert sent["model"] == "text-embedding-3-small" and sent["dimensions"] == 8
    assert sent["encoding_format"] == "base64"
    # Gemini answers floats: encoded here; dimensions -> outputDimensionality
    r = await embed(client, user, model="google/gemini-embedding-001", input=["x", "y"], dimensions=4,
                    encoding_format="base64")
    assert r.status_code == 200, r.text
    assert [decode(d["embedding"]) for d in r.json()["data"]] == [
        pytest.approx(fake_vector(t, 4), rel=1e-6) for t in ("x", "y")]
    sent = upstream_requests(fake_upstream, "gemini")[0]["body"]
    assert sent["requests"][0] == {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]},
                                   "outputDimensionality": 4}
    assert len((await _state(user.user_id))["usage"]) == 2


async def test_token_id_inputs(client: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    r = await embed(client, user, model="openai/text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 4 and len(r.json()["data"]) == 2
    one = await embed(client, user, model="openai/text-embedding-3-small", input=[5, 6, 7])
    assert one.status_code == 200 and len(one.json()["data"]) == 1 and one.json()["usage"]["prompt_tokens"] == 3
    assert [rec["prompt_tokens"] for rec in (await _state(user.user_id))["usage"]] == [4, 3]


@pytest.mark.usefixtures("counts_in_time")
async def test_gemini_splits_batches_of_100(client: Any, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user("5")
    texts = [f"text number {i}" for i in range(250)]
    r = await embed(client, user, model="google/gemini-embedding-001", input=texts)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(250))
    assert data[0]["embedding"] == pytest.approx(fake_vector(texts[0], 16))
    assert data[249]["embedding"] == pytest.approx(fake_vector(texts[249], 16))
    seen = upstream_requests(fake_upstream, "gemini")
    embeds = [s for s in seen if s["path"].endswith(":batchEmbedContents")]
    counts = [s for s in seen if s["path"].endswith(":countTokens")]
    assert len(seen) == 6 and sorted(len(s["body"]["requests"]) for s in embeds) == [50, 100, 100]
    assert sorted(len(s["body"]["contents"]) for s in counts) == [50, 100, 100]  # one count per batch
    state = await _state(user.user_id)
    assert len(state["usage"]) == 1 and len(state["ledger"]) == 1
    rec = state["usage"][0]
    assert rec["prompt_tokens"] == sum(math.ceil(len(t) / 4) for t in texts)
    assert rec["estimated"] is False
    assert state["balance"]["balance"] == D("5") - rec["charge"]
    assert await ledger.invariant_violations() == []


# ================================================================================ refusals
REFUSED = [
    ({"model": "openai/text-embedding-3-small", "input": ""}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": []}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": ["ok", ""]}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": ["x"] * 2049}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": [True, False]}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": "x", "encoding_format": "int8"}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": "x", "dimensions": 0}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": "x", "surprise": 1}, 400, None),
    ({"model": "openai/text-embedding-3-small", "input": ["fine", "word " * 9000]}, 400, "context_length_exceeded"),
    ({"model": "google/gemini-embedding-001", "input": "word " * 2100}, 400, "context_length_exceeded"),
    ({"model": "google/gemini-embedding-001", "input": [[1, 2, 3]]}, 400, None),
    ({"model": "openai/gpt-4o-mini", "input": "x"}, 400, "model_not_embedding"),
    ({"model": "nope/unknown", "input": "x"}, 404, "model_not_found"),
]


@pytest.mark.parametrize(("body", "status", "code"), REFUSED)
async def test_refusals_change_nothing(client: Any, make_user: Any, fake_upstream: Any, body: dict[str, Any],
                                       status: int, code: str | None) -> None:
    user = await make_user("5")
    r = await client.post("/v1/embeddings", headers=_auth(user), json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == ("invalid_request_error" if status == 400 else error["type"]) and error["message"]
    if code is not None:
        assert error["code"] == code
    await assert_unchanged(user, fake_upstream)


async def test_missing_key_and_insufficient_credit(client: Any, make_user: Any, fake_upstream: Any) -> None:
    r = await client.post("/v1/embeddings", json={"model": "openai/text-embedding-3-small", "input": "x"})
    assert r.status_code == 401
    user = await make_user("0.0000001")
    r = await embed(client, user, model="openai/text-embedding-3-large", input=["y" * 8000] * 20)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    await assert_unchanged(user, fake_upstream, balance="0.0000001")


async def test_x_api_key_is_accepted(client: Any, make_user: Any) -> None:
    user = await make_user("5")
    r = await client.post("/v1/embeddings", headers={"x-api-key": user.api_key},
                          json={"model": "openai/text-embedding-3-small", "input": "x"})
    assert r.status_code == 200, r.text


async def test_an_embedding_model_is_refused_by_chat(stack: str, fake_upstream: Any, make_user: Any) -> None:
    chat = load_app("functions/query/app.py")
    registry.invalidate()
    httpx.delete(fake_upstream.url + "/__fake/requests")
    user = await make_user("5")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=chat), base_url="http://gateway") as c:
        r = await c.post("/v1/chat/completions", headers=_auth(user),
                         json={"model": "openai/text-embedding-3-small", "messages": _msg()})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "model_not_chat"
    assert "POST /v1/embeddings" in r.json()["error"]["message"]
    await assert_unchanged(user, fake_upstream)


# ================================================================================ upstream failures
@pytest.mark.parametrize(("model", "directive", "status", "code"), [
    ("openai/text-embedding-3-small", "[[fail:429]]", 429, "upstream_rate_limited"),
    ("openai/text-embedding-3-small", "[[fail:500]]", 502, "upstream_error"),
    ("google/gemini-embedding-001", "[[fail:503]]", 502, "upstream_unavailable"),
    ("mistralai/mistral-embed-2312", "[[fail:400]]", 400, "upstream_bad_request"),
])
async def test_upstream_errors_release_the_hold(client: Any, make_user: Any, model: str, directive: str,
                                                status: int, code: str) -> None:
    user = await make_user("5")
    r = await embed(client, user, model=model, input=f"please {directive}")
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    state = await _state(user.user_id)
    (rec,) = state["usage"]
    assert rec["status"] == "failed" and rec["charge"] == 0 and rec["error_code"] == code
    assert state["ledger"] == [] and state["reservations"] == [] and state["balance"]["balance"] == D("5")
    assert await ledger.invariant_violations() == []


async def test_gemini_inputs_without_any_count_are_billed_at_their_bound(client: Any, make_user: Any) -> None:
    """No count from Google (its answer carries none, countTokens failed): Gemini's tokenizer makes a
    token of every digit, so 1,000 digits are 1,000 tokens on Google's bill; they are billed at
    least that (at 4 characters a token, a quarter of what Google charges us); an input is never
    billed above the model's limit."""
    user = await make_user("5")
    digits = "1234567890" * 100
    inputs = [digits, "9" * 5_000 + " [[count_fail:500]]"]
    r = await embed(client, user, model="google/gemini-embedding-001", input=inputs)
    assert r.status_code == 200, r.text
    (rec,) = (await _state(user.user_id))["usage"]
    assert rec["estimated"] is True and rec["prompt_tokens"] == 1_000 + 2_048  # the second at the input limit
    assert r.json()["usage"]["prompt_tokens"] == rec["prompt_tokens"] and rec["charge"] <= rec["hold"]
    assert r.headers[service.ESTIMATED_HEADER] == "true"


# Google's countTokens failing, slow or talking nonsense never fails nor delays the answer: that
# batch is billed at its bound (what was held for it), marked estimated.
@pytest.mark.parametrize("directive", [
    "[[count_fail:500]]", "[[count_fail:429]]", "[[count_fail:400]]",
    "[[count_sleep:5]]",                          # not back EMBEDDINGS_COUNT_GRACE_S (0.2 s) after the batch answered
    "[[count_tokens:100000]]",                    # above the bound (what was held)
    "[[count_tokens:-5]]", "[[count_tokens:0]]", "[[count_tokens:none]]",  # negative, zero, missing
])
async def test_a_count_that_fails_or_is_nonsense_bills_the_bound(client: Any, make_user: Any, fake_upstream: Any,
                                                                 directive: str) -> None:
    user = await make_user("5")
    texts = ["hello world", f"second text {directive}"]
    r = await embed(client, user, model="google/gemini-embedding-001", input=texts)
    assert r.status_code == 200, r.text
    assert [d["embedding"] for d in r.json()["data"]] == [pytest.approx(fake_vector(t, 16)) for t in texts]
    bound = schema.hold_tokens(EmbeddingsRequest(model="m", input=texts), per_item_cap=2048)
    assert r.json()["usage"]["prompt_tokens"] == bound and r.headers[service.ESTIMATED_HEADER] == "true"
    state = await _state(user.user_id)
    (rec,) = state["usage"]
    assert rec["status"] == "ok" and rec["prompt_tokens"] == bound and rec["estimated"] is True
    assert rec["charge"] == charge_for(bound * await price_of("google/gemini-embedding-001"), MARKUP) <= rec["hold"]
    assert state["balance"]["balance"] == D("5") - rec["charge"] and state["reservations"] == []
    assert await ledger.invariant_violations() == []


async def test_the_grace_for_a_count_is_a_setting(client: Any, make_user: Any, setting: Any) -> None:
    """A count 0.5 s behind its batch: dropped with the default 0.2 s (the bound billed), used with
    ``EMBEDDINGS_COUNT_GRACE_S=3`` (exact)."""
    texts = ["a count half a second late [[count_sleep:0.5]]"]
    bound = schema.hold_tokens(EmbeddingsRequest(model="m", input=texts), per_item_cap=2048)
    billed = []
    for grace in (None, 3):
        if grace is not None:
            setting(embeddings_count_grace_s=grace)
        user = await make_user("5")
        r = await embed(client, user, model="google/gemini-embedding-001", input=texts)
        assert r.status_code == 200, r.text
        (rec,) = (await _state(user.user_id))["usage"]
        billed.append((rec["prompt_tokens"], rec["estimated"]))
    assert billed == [(bound, True), (sum(math.ceil(len(t) / 4) for t in texts), False)]


async def test_a_slow_count_never_holds_the_answer_past_the_deadline(client: Any, make_user: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUEST_DEADLINE_S", "1")
    reset_settings()
    user = await make_user("5")
    texts = ["slow count [[count_sleep:20]]"]
    r = await embed(client, user, model="google/gemini-embedding-001", input=texts)
    assert r.status_code == 200, r.text  # not the deadline's 504: the count is dropped
    (rec,) = (await _state(user.user_id))["usage"]
    assert rec["status"] == "ok" and rec["estimated"] is True
    assert rec["prompt_tokens"] == schema.hold_tokens(EmbeddingsRequest(model="m", input=texts), per_item_cap=2048)


async def test_a_dropped_count_is_not_left_running(client: Any, make_user: Any) -> None:
    """Nothing may run after a Lambda answers: the slow count is cancelled before ``embed`` returns."""
    user = await make_user("5")
    principal = await auth.authenticate_key(user.api_key)
    req = EmbeddingsRequest(model="google/gemini-embedding-001", input=["slow count [[count_sleep:20]]"])
    call = await service.plan("req-drop-" + uuid.uuid4().hex, principal, req)
    await chat_service.admit(call)
    before = asyncio.all_tasks()
    response, record = await service.embed(call, req)
    assert [t for t in asyncio.all_tasks() - before if not t.done()] == []
    assert record.estimated is True and response["usage"]["prompt_tokens"] == call.size.text_bound
    await chat_service.finish_shielded(call, record)


@pytest.mark.usefixtures("counts_in_time")
async def test_googles_own_count_wins_and_batches_are_billed_each_by_their_best_count(
        client: Any, make_user: Any, fake_upstream: Any) -> None:
    """Per batch of 100: Google's ``usageMetadata.promptTokenCount`` when its answer has one (newer
    models report it), else countTokens' total, else the bound: 250 texts, batch 1 reported
    (``[[embed_usage]]``), batch 2 counted, batch 3's count refused."""
    user = await make_user("5")
    texts = [f"text number {i}" for i in range(250)]
    texts[0] += " [[embed_usage]] [[count_tokens:1]]"   # the reported count wins over a (bad) count
    texts[200] += " [[count_fail:503]]"
    r = await embed(client, user, model="google/gemini-embedding-001", input=texts)
    assert r.status_code == 200, r.text
    fake = [sum(math.ceil(len(t) / 4) for t in texts[i:i + 100]) for i in (0, 100)]
    bound = schema.hold_tokens(EmbeddingsRequest(model="m", input=texts[200:]), per_item_cap=2048)
    (rec,) = (await _state(user.user_id))["usage"]
    assert rec["prompt_tokens"] == fake[0] + fake[1] + bound and rec["estimated"] is True
    assert r.json()["usage"]["prompt_tokens"] == rec["prompt_tokens"]
    # all three reported or counted: exact
    other = await make_user("5")
    texts[200] = "text number 200"
    r = await embed(client, other, model="google/gemini-embedding-001", input=texts)
    (rec,) = (await _state(other.user_id))["usage"]
    assert rec["estimated"] is False and service.ESTIMATED_HEADER not in r.headers
    assert rec["prompt_tokens"] == fake[0] + sum(math.ceil(len(t) / 4) for t in texts[100:])
    assert await ledger.invariant_violations() == []


@pytest.mark.parametrize("count_directive", ["", " [[count_fail:500]]"])
@pytest.mark.usefixtures("counts_in_time")
async def test_a_gemini_batch_failing_after_others_bills_the_answered_ones(client: Any, make_user: Any,
                                                                           count_directive: str) -> None:
    """Only the answered batches are billed: at their count, or their bound when it failed."""
    user = await make_user("5")
    texts = ["boom [[fail:500]]"] + [f"text {i}{count_directive}" for i in range(150)]  # batch 1 fails, 2 answers
    r = await embed(client, user, model="google/gemini-embedding-001", input=texts)
    assert r.status_code == 502, r.text
    state = await _state(user.user_id)
    (rec,) = state["usage"]
    if count_directive:
        answered = schema.hold_tokens(EmbeddingsRequest(model="m", input=texts[100:]), per_item_cap=2048)
        assert answered != schema.hold_tokens(EmbeddingsRequest(model="m", input=texts[:51]), per_item_cap=2048)
    else:
        answered = sum(math.ceil(len(t) / 4) for t in texts[100:])
    assert rec["status"] == "failed" and rec["prompt_tokens"] == answered
    assert rec["estimated"] is bool(count_directive)
    assert rec["charge"] == charge_for(answered * await price_of("google/gemini-embedding-001"), MARKUP)
    assert state["balance"]["balance"] == D("5") - rec["charge"]
    assert await ledger.invariant_violations() == []


async def test_deadline_is_504_and_bills_the_inputs(client: Any, make_user: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUEST_DEADLINE_S", "0.5")
    reset_settings()
    user = await make_user("5")
    r = await embed(client, user, model="openai/text-embedding-3-small", input="slow [[sleep:3]]")
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    state = await _state(user.user_id)
    (rec,) = state["usage"]
    # the bound that was held (a short input: no cap applies), not the estimate
    tokens = schema.hold_tokens(EmbeddingsRequest(model="m", input="slow [[sleep:3]]"), per_item_cap=10**9)
    assert rec["status"] == "timeout" and rec["estimated"] is True and rec["prompt_tokens"] == tokens
    assert rec["charge"] == charge_for(tokens * await price_of("openai/text-embedding-3-small"), MARKUP)
    assert state["balance"]["balance"] == D("5") - rec["charge"] and state["reservations"] == []


# ================================================================================ catalogue
async def test_embedding_models_in_the_catalogue(stack: str) -> None:
    app = load_app("functions/models/app.py")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
        from gateway.catalog import cache
        cache.reset_local()
        listed = (await c.get("/v1/models")).json()["data"]
        only = (await c.get("/v1/models", params={"modality": "embeddings"})).json()["data"]
    by_id = {m["id"]: m for m in listed}
    small = by_id["openai/text-embedding-3-small"]
    assert small["architecture"]["output_modalities"] == ["embeddings"]
    assert small["architecture"]["modality"] == "text->embeddings"
    shown = D("0.00000002") * (1 + get_settings().tier(FREE_TIER).markup)  # our price, per input token
    assert D(small["pricing"]["prompt"]) == shown and D(small["pricing"]["completion"]) == 0
    assert small["context_length"] == 8192 and small["max_completion_tokens"] == 0
    assert {m["id"] for m in only} == {"openai/text-embedding-3-small", "openai/text-embedding-3-large",
                                       "google/gemini-embedding-001", "mistralai/mistral-embed-2312"}
    assert "openai/gpt-4o-mini" in by_id and by_id["openai/gpt-4o-mini"]["architecture"]["output_modalities"] == [
        "text"]


# ================================================================================ lifecycle
async def test_a_cancelled_call_is_billed_its_inputs(client: Any, make_user: Any) -> None:
    """The client left while the provider was working: the provider bills the inputs, so do we."""
    user = await make_user("5")
    principal = await auth.authenticate_key(user.api_key)
    req = EmbeddingsRequest(model="openai/text-embedding-3-small", input=["slow [[sleep:3]]", "other"])
    call = await service.plan("req-cancel-" + uuid.uuid4().hex, principal, req)
    await chat_service.admit(call)
    task = asyncio.create_task(service.embed(call, req))
    await asyncio.sleep(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    state = await _state(user.user_id)
    (rec,) = state["usage"]
    tokens = schema.hold_tokens(req, per_item_cap=10**9)  # the bound that was held, not the estimate
    assert rec["status"] == "cancelled" and rec["prompt_tokens"] == tokens and rec["estimated"] is True
    assert rec["charge"] == charge_for(tokens * await price_of("openai/text-embedding-3-small"), MARKUP) > 0
    assert state["reservations"] == [] and state["balance"]["balance"] == D("5") - rec["charge"]
    assert await ledger.invariant_violations() == []


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
async def test_the_lambda_handler_answers_and_settles(embeddings_app: Any, make_user: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """EmbeddingsFunction's handler (Mangum behind API Gateway, on the runtime's own loop, in
    Lambda mode): the answer, and the usage settled by the time the invocation returns."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "mlp-test-embeddings")
    user = await make_user("5")
    await db.close_pool()  # the handler runs on its own loop, as the Lambda runtime does
    body = {"model": "openai/text-embedding-3-small", "input": ["in lambda"]}
    event = http_api_v2_event("/v1/embeddings", headers={
        "authorization": f"Bearer {user.api_key}", "content-type": "application/json",
        "content-length": str(len(json.dumps(body)))})
    event["routeKey"] = event["requestContext"]["routeKey"] = "POST /v1/embeddings"
    event["requestContext"]["http"]["method"] = "POST"
    event["body"] = json.dumps(body)
    response = await asyncio.to_thread(invoke_in_own_loop, Mangum(embeddings_app, lifespan="off"), event)
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"])["usage"]["prompt_tokens"] == 3
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:  # right when it returned
        rows = conn.execute("SELECT status, charge FROM usage_records WHERE user_id = %s",
                            (user.user_id,)).fetchall()
        reserved = conn.execute("SELECT reserved FROM balances WHERE user_id = %s", (user.user_id,)).fetchone()
    assert [r[0] for r in rows] == ["ok"] and rows[0][1] > 0 and reserved == (0,)


# ================================================================================ OpenRouter's routing price
async def test_openrouter_is_told_our_price_and_never_routes_above_the_hold(client: Any, make_user: Any,
                                                                            fake_upstream: Any) -> None:
    """OpenRouter picks the endpoint; ``provider.max_price`` = the catalogue price keeps it from one
    that costs more than the hold counts (the fake's ``[[endpoint_price:F]]``): OpenRouter's 404
    (no endpoint), a 400 ``upstream_bad_request`` as for chat, nothing charged. At the catalogue
    price the call is billed, never below OpenRouter's cost."""
    model = "mistralai/mistral-embed-2312"
    price = await price_of(model)
    user = await make_user("5")
    r = await embed(client, user, model=model, input=["pricier endpoint [[endpoint_price:1.5]]"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_bad_request", r.text
    assert "max_price" in r.json()["error"]["message"]
    (sent,) = upstream_requests(fake_upstream, "openrouter")
    assert sent["body"]["provider"] == {"max_price": {"prompt": format((price * 1_000_000).normalize(), "f"),
                                                      "completion": "0", "request": "0"}}
    state = await _state(user.user_id)
    assert state["ledger"] == [] and state["reservations"] == [] and state["balance"]["balance"] == D("5")
    assert [rec["charge"] for rec in state["usage"]] == [0]

    other = await make_user("5")
    r = await embed(client, other, model=model, input=["same price [[endpoint_price:1]]"])
    assert r.status_code == 200, r.text
    (rec,) = (await _state(other.user_id))["usage"]
    cost = r.json()["usage"]["prompt_tokens"] * price
    assert rec["charge"] == charge_for(cost, MARKUP) and rec["charge"] >= cost
    assert await ledger.invariant_violations() == []
