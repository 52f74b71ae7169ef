"""The official `openai` SDK's ``embeddings.create`` against the local stack (`make dev` in a
subprocess): float and base64 (the SDK's default, decoded by it), every provider format, each
request one usage record, balance == sum(ledger)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import openai
import psycopg
import pytest

from tests.e2e.conftest import create_user

pytestmark = pytest.mark.e2e

EMBEDDING_MODELS = [
    ("openai/text-embedding-3-small", "openai"),
    ("google/gemini-embedding-001", "gemini"),        # batchEmbedContents (+ countTokens)
    ("mistralai/mistral-embed-2312", "openrouter"),
    ("compat/nomic-embed-text", "compat"),
]


def _rows(local_stack: dict[str, Any], user_id: str, records: int = 0,
          timeout: float = 10.0) -> tuple[list[tuple[Any, ...]], Decimal, Decimal]:
    """(usage records, balance, sum of the ledger) of one user, once it has ``records`` usage records:
    the local stack settles after the response (Lambda before it), so the last may still be on its way."""
    deadline = time.monotonic() + timeout
    while True:
        usage, balance, total = _read(local_stack, user_id)
        if len(usage) >= records or time.monotonic() > deadline:
            return usage, balance, total
        time.sleep(0.05)


def _read(local_stack: dict[str, Any], user_id: str) -> tuple[list[tuple[Any, ...]], Decimal, Decimal]:
    with psycopg.connect(local_stack["database_url"]) as conn:
        usage = conn.execute("SELECT model_served, provider, status, prompt_tokens, charge, estimated "
                             "FROM usage_records WHERE user_id = %s ORDER BY id", (user_id,)).fetchall()
        balance = conn.execute("SELECT balance FROM balances WHERE user_id = %s", (user_id,)).fetchone()
        total = conn.execute("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE user_id = %s",
                             (user_id,)).fetchone()
    assert balance is not None and total is not None
    return usage, Decimal(balance[0]), Decimal(total[0])


@pytest.mark.parametrize(("model", "provider"), EMBEDDING_MODELS)
def test_openai_sdk_embeddings_create(local_stack: dict[str, Any], model: str, provider: str) -> None:
    user = create_user(local_stack["database_url"], balance="5")
    sdk = openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=user["api_key"], max_retries=0)
    floats = sdk.embeddings.create(model=model, input=["hello world", "日本"], encoding_format="float")
    assert floats.model == model and [d.index for d in floats.data] == [0, 1]
    assert all(isinstance(v, float) for v in floats.data[0].embedding) and len(floats.data[0].embedding) == 16
    default = sdk.embeddings.create(model=model, input=["hello world", "日本"])  # base64 on the wire
    assert [d.embedding for d in default.data] == [pytest.approx(d.embedding, rel=1e-6) for d in floats.data]
    assert floats.usage.prompt_tokens == default.usage.prompt_tokens > 0
    usage, balance, ledger_sum = _rows(local_stack, user["user_id"], records=2)
    assert [(u[0], u[1], u[2]) for u in usage] == [(model, provider, "ok")] * 2
    assert all(u[3] == floats.usage.prompt_tokens and u[4] > 0 for u in usage)
    # every count exact: the provider's usage, or for Gemini (its answer has none) Google's countTokens
    assert floats.usage.prompt_tokens == 3 + 1 and all(u[5] is False for u in usage)
    assert balance == ledger_sum == Decimal("5") - sum(u[4] for u in usage)


def test_openai_sdk_embeddings_errors(local_stack: dict[str, Any]) -> None:
    user = create_user(local_stack["database_url"], balance="5")
    sdk = openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=user["api_key"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as chat_model:
        sdk.embeddings.create(model="openai/gpt-4o-mini", input="x")
    assert chat_model.value.code == "model_not_embedding"
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="openai/text-embedding-3-small", input="")
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk.embeddings.create(model="google/gemini-embedding-001", input="word " * 3000)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="nope/nothing", input="x")
    usage, balance, ledger_sum = _rows(local_stack, user["user_id"])
    assert usage == [] and balance == ledger_sum == Decimal("5")
