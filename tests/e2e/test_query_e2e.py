"""The official `openai` SDK against the local stack (`make dev` in a subprocess)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tests.e2e.conftest import create_user

pytestmark = pytest.mark.e2e

ADAPTER_MODELS = [
    "openai/gpt-4o-mini",                 # OpenAI adapter
    "meta-llama/llama-3.1-8b-instruct",   # OpenRouter
    "anthropic/claude-3.5-haiku",         # Anthropic Messages API
    "google/gemini-2.5-flash",            # Gemini generateContent / streamGenerateContent
    "compat/llama3.2",                    # generic OpenAI-compatible server
]


@pytest.fixture(scope="module")
def sdk(local_stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=local_stack["api_key"], max_retries=0)


@pytest.fixture(scope="module")
def failing_model(local_stack: dict[str, Any]) -> str:
    with psycopg.connect(local_stack["database_url"], autocommit=True) as conn:
        conn.execute(
            """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
                   max_completion_tokens, prompt_price, completion_price, source)
               VALUES ('e2e/fail-500', 'always fails', 'openai', 'fail-500-model', 'e2e', 8192, 1024,
                       0.000001, 0.000002, 'e2e') ON CONFLICT (id) DO NOTHING""")
    # the stack's catalogue cache (CATALOG_TTL_S=1) picks the row up: wait until it is served
    deadline = time.monotonic() + 10
    while httpx.get(local_stack["openai_base_url"] + "/models/e2e/fail-500", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "e2e/fail-500 never appeared in the stack's catalogue"
        time.sleep(0.1)
    return "e2e/fail-500"


def _balance(local_stack: dict[str, Any]) -> Decimal:
    with psycopg.connect(local_stack["database_url"]) as conn:
        row = conn.execute("SELECT balance FROM balances WHERE user_id = %s", (local_stack["user_id"],)).fetchone()
        assert row is not None
        return Decimal(row[0])


@pytest.mark.parametrize("model", ADAPTER_MODELS)
def test_non_streaming_through_each_adapter(sdk: openai.OpenAI, local_stack: dict[str, Any], model: str) -> None:
    before = _balance(local_stack)
    resp = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi [[words:6]]"}],
                                       max_tokens=64)
    assert resp.model == model
    assert resp.choices[0].message.content and len(resp.choices[0].message.content.split()) == 6
    assert resp.usage is not None and resp.usage.completion_tokens == 6 and resp.usage.prompt_tokens > 0
    # settlement runs right after the response is sent
    deadline = time.monotonic() + 3
    while _balance(local_stack) >= before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _balance(local_stack) < before


@pytest.mark.parametrize("model", ADAPTER_MODELS)
def test_streaming_through_each_adapter(sdk: openai.OpenAI, model: str) -> None:
    stream = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi [[words:5]]"}],
                                         stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        assert chunk.model == model
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert len(text.split()) == 5
    assert usage is not None and usage.completion_tokens == 5


def test_stream_is_incremental(sdk: openai.OpenAI) -> None:
    started = time.perf_counter()
    arrivals = []
    stream = sdk.chat.completions.create(
        model="openai/gpt-4o-mini", stream=True,
        messages=[{"role": "user", "content": "slow [[words:5]] [[chunk_delay:0.3]]"}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] > 0.9  # chunks arrived spread out, not in one buffered burst


def test_fallback_from_failing_model(sdk: openai.OpenAI, failing_model: str) -> None:
    resp = sdk.chat.completions.create(model=failing_model, messages=[{"role": "user", "content": "Hi"}],
                                       extra_body={"models": ["anthropic/claude-3.5-haiku"]})
    assert resp.model == "anthropic/claude-3.5-haiku"


def test_error_classes(sdk: openai.OpenAI, local_stack: dict[str, Any]) -> None:
    bad = openai.OpenAI(base_url=local_stack["openai_base_url"], api_key="sk-mlp-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope/none", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.InternalServerError) as exc:
        sdk.chat.completions.create(model="openai/gpt-4o-mini",
                                    messages=[{"role": "user", "content": "x [[fail:500]]"}])
    assert exc.value.status_code == 502
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="openai/gpt-4o-mini",
                                    messages=[{"role": "user", "content": "x [[fail:429]]"}])
    poor = create_user(local_stack["database_url"], balance="0.0001")
    poor_sdk = openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=poor["api_key"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc402:
        poor_sdk.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert exc402.value.status_code == 402
    body: Any = exc402.value.body
    assert body["code"] == "insufficient_credits"


def test_mid_stream_failure_raises_in_sdk(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(model="openai/gpt-4o-mini", stream=True,
                                         messages=[{"role": "user", "content": "x [[words:10]] [[cut:3]]"}])
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_client_disconnect_keeps_reading_the_upstream_and_charges_its_real_usage(local_stack: dict[str, Any]) -> None:
    """A client that leaves mid-stream does not stop the bill: the provider finishes (and bills)
    the generation, reasoning included, so the gateway reads the stream to its final usage."""
    user = create_user(local_stack["database_url"], balance="5")
    body = {"model": "openai/gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "long [[words:40]] [[reasoning:500]] [[chunk_delay:0.02]]"}]}
    received = 0
    with httpx.stream("POST", local_stack["base_url"] + "/v1/chat/completions", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {user['api_key']}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received == 3:
                break  # the client goes away after 3 chunks
    deadline = time.monotonic() + 10
    row = None
    with psycopg.connect(local_stack["database_url"], autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT status, completion_tokens, charge, estimated FROM usage_records "
                               "WHERE user_id = %s", (user["user_id"],)).fetchone()
            if row:
                break
            time.sleep(0.05)
        assert row is not None, "no usage record: the request was never settled"
        status, completion_tokens, charge, estimated = row
        assert status == "cancelled" and estimated is False
        assert completion_tokens == 540 and charge > 0  # 40 words + 500 reasoning tokens, as reported
        balance, reserved = conn.execute("SELECT balance, reserved FROM balances WHERE user_id = %s",
                                         (user["user_id"],)).fetchone()  # type: ignore[misc]
        assert reserved == 0 and balance == Decimal("5") - charge
