"""The official `openai` SDK sending every parameter it has against the local stack (`make dev` in a
subprocess): answered on an OpenAI model and on an Anthropic model (``x-dropped-params``), the
unpriced ones refused with the SDK's BadRequestError, and the money consistent afterwards."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import openai
import psycopg
import pytest

from tests.support.chat_contract import REFUSED_PARAMETERS, SDK_PARAMETERS, every_parameter_body

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sdk(local_stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=local_stack["api_key"], max_retries=0)


def _money(local_stack: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal, int]:
    """(balance, reserved, sum of the ledger, usage records) of the stack's user."""
    with psycopg.connect(local_stack["database_url"]) as conn:
        row = conn.execute(
            "SELECT b.balance, b.reserved, (SELECT COALESCE(sum(amount), 0) FROM ledger_entries l "
            "WHERE l.user_id = b.user_id), (SELECT count(*) FROM usage_records u WHERE u.user_id = b.user_id) "
            "FROM balances b WHERE b.user_id = %s", (local_stack["user_id"],)).fetchone()
        assert row is not None
        return Decimal(row[0]), Decimal(row[1]), Decimal(row[2]), int(row[3])


def _settled(local_stack: dict[str, Any], records: int) -> tuple[Decimal, Decimal, Decimal, int]:
    """Wait for the settle that runs right after the response is sent."""
    deadline = time.monotonic() + 5
    state = _money(local_stack)
    while (state[3] < records or state[1] != 0) and time.monotonic() < deadline:
        time.sleep(0.02)
        state = _money(local_stack)
    return state


def _kwargs(model: str, *, stream: bool) -> dict[str, Any]:
    body = every_parameter_body(model, stream=stream)
    # every parameter the installed SDK has (stream_options only with stream)
    assert set(body) | REFUSED_PARAMETERS == SDK_PARAMETERS - (set() if stream else {"stream_options"})
    return body


@pytest.mark.parametrize(("model", "dropped"), [
    ("openai/gpt-4o-mini", None),
    ("anthropic/claude-3.5-haiku", {"seed", "verbosity", "prediction", "logit_bias", "reasoning_effort"}),
])
def test_every_parameter_non_streaming(sdk: openai.OpenAI, local_stack: dict[str, Any], model: str,
                                       dropped: set[str] | None) -> None:
    records = _money(local_stack)[3]
    raw = sdk.chat.completions.with_raw_response.create(**_kwargs(model, stream=False))
    completion = raw.parse()
    assert completion.model == model and completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    header = raw.headers.get("x-dropped-params")
    if dropped is None:
        assert header is None
    else:
        assert header is not None and dropped <= set(header.split(", "))
    balance, reserved, ledger_sum, count = _settled(local_stack, records + 1)
    assert count == records + 1 and reserved == 0 and balance == ledger_sum


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"])
def test_every_parameter_streaming(sdk: openai.OpenAI, local_stack: dict[str, Any], model: str) -> None:
    records = _money(local_stack)[3]
    stream = sdk.chat.completions.create(**_kwargs(model, stream=True))
    text, usage, ids = "", None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text and usage is not None and usage.completion_tokens > 0
    assert len(ids) == 1  # the usage chunk carries the stream's id
    balance, reserved, ledger_sum, count = _settled(local_stack, records + 1)
    assert count == records + 1 and reserved == 0 and balance == ledger_sum


@pytest.mark.parametrize(("extra", "param"), [
    ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
])
def test_unpriced_parameters_are_refused_by_the_sdk_error(sdk: openai.OpenAI, local_stack: dict[str, Any],
                                                          extra: dict[str, Any], param: str) -> None:
    before = _money(local_stack)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(**{**_kwargs("openai/gpt-4o-mini", stream=False), **extra})
    assert info.value.code == "unsupported_parameter" and info.value.param == param
    time.sleep(0.1)
    assert _money(local_stack) == before
