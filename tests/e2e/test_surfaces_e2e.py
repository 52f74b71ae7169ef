"""The Anthropic Messages and OpenAI Responses surfaces against the local stack (`make dev` in a
subprocess), driven by the official clients: the anthropic SDK (``x-api-key``, as Claude Code
sends it) on an Anthropic model (native) and on a non-Anthropic model (translated), and the openai
SDK's ``responses.create``. Each request leaves exactly one usage record, and the balance is the
sum of the ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import psycopg
import pytest

from tests.e2e.conftest import create_user
from tests.support.apps import stream_function

pytestmark = pytest.mark.e2e

NATIVE = "anthropic/claude-3.5-haiku"
TRANSLATED = "openai/gpt-4o-mini"
MESSAGES_MODELS = [NATIVE, TRANSLATED]
WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
                  "parameters": WEATHER["input_schema"]}


@pytest.fixture
def user(local_stack: dict[str, Any]) -> dict[str, str]:
    return create_user(local_stack["database_url"], balance="5")


def _claude(local_stack: dict[str, Any], user: dict[str, str]) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key, and appends /v1/messages to the base URL (as Claude Code).
    return anthropic.Anthropic(base_url=local_stack["base_url"], api_key=user["api_key"], max_retries=0)


def _openai(local_stack: dict[str, Any], user: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=user["api_key"], max_retries=0)


def settled(local_stack: dict[str, Any], user: dict[str, str], requests: int) -> list[dict[str, Any]]:
    """Wait until ``requests`` usage records exist and nothing is held (the local stack settles right
    after the response is sent); then check balance == sum(ledger) and return the records."""
    deadline = time.monotonic() + 5
    with psycopg.connect(local_stack["database_url"], autocommit=True) as conn:
        while True:
            records = conn.execute("SELECT status, charge, completion_tokens, stream FROM usage_records "
                                   "WHERE user_id = %s ORDER BY id", (user["user_id"],)).fetchall()
            held = conn.execute("SELECT count(*) FROM reservations WHERE user_id = %s",
                                (user["user_id"],)).fetchone()
            if len(records) >= requests and held is not None and held[0] == 0:
                break
            assert time.monotonic() < deadline, f"not settled: {records}"
            time.sleep(0.02)
        row = conn.execute("SELECT balance FROM balances WHERE user_id = %s", (user["user_id"],)).fetchone()
        total = conn.execute("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE user_id = %s",
                             (user["user_id"],)).fetchone()
    assert row is not None and total is not None
    assert Decimal(row[0]) == Decimal(total[0]) < Decimal("5")
    assert len(records) == requests, records
    return [{"status": r[0], "charge": r[1], "completion_tokens": r[2], "stream": r[3]} for r in records]


# --------------------------------------------------------------------------- anthropic SDK
@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_anthropic_messages_create(local_stack: dict[str, Any], user: dict[str, str], model: str) -> None:
    message = _claude(local_stack, user).messages.create(
        model=model, max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Hi [[words:6]]"}])
    assert message.type == "message" and message.model == model and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and len(message.content[0].text.split()) == 6
    assert message.usage.output_tokens == 6 and message.usage.input_tokens > 0
    [record] = settled(local_stack, user, 1)
    assert record["status"] == "ok" and record["completion_tokens"] == 6 and record["charge"] > 0


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_anthropic_messages_stream(local_stack: dict[str, Any], user: dict[str, str], model: str) -> None:
    with _claude(local_stack, user).messages.stream(
            model=model, max_tokens=64, messages=[{"role": "user", "content": "Stream [[words:5]]"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 5 and final.usage.output_tokens == 5 and final.stop_reason == "end_turn"
    [record] = settled(local_stack, user, 1)
    assert record["status"] == "ok" and record["stream"] is True and record["completion_tokens"] == 5


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_anthropic_tool_use(local_stack: dict[str, Any], user: dict[str, str], model: str) -> None:
    client = _claude(local_stack, user)
    first = client.messages.create(model=model, max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                   messages=[{"role": "user", "content": "Weather in Oslo? [[tool:get_weather]]"}])
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"x": 1}
    with client.messages.stream(model=model, max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                messages=[{"role": "user", "content": "Weather in Oslo?"},
                                          {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
                                          {"role": "user", "content": [{"type": "tool_result",
                                                                        "tool_use_id": call.id,
                                                                        "content": "Sunny, 21 C"}]}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.content[0].type == "text"
    assert [r["status"] for r in settled(local_stack, user, 2)] == ["ok", "ok"]


def test_anthropic_count_tokens_is_free(local_stack: dict[str, Any], user: dict[str, str]) -> None:
    client = _claude(local_stack, user)
    for model in MESSAGES_MODELS:
        counted = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "Count me"}])
        assert counted.input_tokens > 0
    first = client.messages.create(model=NATIVE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert first.content
    settled(local_stack, user, 1)  # the counts left no record, the message one


def test_anthropic_errors_are_typed(local_stack: dict[str, Any]) -> None:
    broke = create_user(local_stack["database_url"], balance="0")
    client = anthropic.Anthropic(base_url=local_stack["base_url"], api_key=broke["api_key"], max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=NATIVE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 402
    assert info.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope/missing", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    wrong = anthropic.Anthropic(base_url=local_stack["base_url"], api_key="mlp-wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=NATIVE, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])


# --------------------------------------------------------------------------- openai SDK: Responses
@pytest.mark.parametrize("model", [TRANSLATED, NATIVE])
def test_responses_create(local_stack: dict[str, Any], user: dict[str, str], model: str) -> None:
    response = _openai(local_stack, user).responses.create(model=model, instructions="Be brief.",
                                                           input="Hello [[words:6]]")
    assert response.status == "completed" and response.model == model
    assert len(response.output_text.split()) == 6
    assert response.usage is not None and response.usage.output_tokens == 6
    [record] = settled(local_stack, user, 1)
    assert record["status"] == "ok" and record["completion_tokens"] == 6


@pytest.mark.parametrize("model", [TRANSLATED, NATIVE])
def test_responses_stream(local_stack: dict[str, Any], user: dict[str, str], model: str) -> None:
    stream = _openai(local_stack, user).responses.create(model=model, input="Stream [[words:5]]", stream=True)
    kinds, text, final = [], "", None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert len(text.split()) == 5 and final is not None and final.usage is not None
    assert final.usage.output_tokens == 5
    [record] = settled(local_stack, user, 1)
    assert record["status"] == "ok" and record["stream"] is True


def test_responses_function_call(local_stack: dict[str, Any], user: dict[str, str]) -> None:
    client = _openai(local_stack, user)
    first = client.responses.create(model=TRANSLATED, input="Weather in Oslo? [[tool:get_weather]]",
                                    tools=[RESPONSES_TOOL])  # type: ignore[list-item]
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"x": 1}
    second = client.responses.create(model=TRANSLATED, tools=[RESPONSES_TOOL], input=[  # type: ignore[list-item]
        {"role": "user", "content": "Weather in Oslo?"}, call.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}])
    assert second.status == "completed" and second.output_text
    assert [r["status"] for r in settled(local_stack, user, 2)] == ["ok", "ok"]


def test_responses_refuses_stored_state(local_stack: dict[str, Any], user: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _openai(local_stack, user).responses.create(model=TRANSLATED, input="Hi", previous_response_id="resp_123")
    assert "previous_response_id" in str(info.value)
    with psycopg.connect(local_stack["database_url"]) as conn:
        assert conn.execute("SELECT count(*) FROM usage_records WHERE user_id = %s",
                            (user["user_id"],)).fetchone() == (0,)


# --------------------------------------------------------------------------- the streaming Function URL
@pytest.fixture(scope="module")
def stream_url(local_stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """functions/query/run.sh itself (uvicorn serving ``stream_app``, as behind the Lambda Web
    Adapter): ONE streaming function for chat, Messages and Responses."""
    fake = local_stack["fake_providers_url"]
    env = {"OPENAI_BASE_URL": f"{fake}/openai/v1", "OPENAI_API_KEY": "sk-fake-openai",
           "ANTHROPIC_BASE_URL": f"{fake}/anthropic/v1", "ANTHROPIC_API_KEY": "sk-ant-fake"}
    with stream_function(local_stack, tmp_path_factory.mktemp("stream"), env, "/v1/messages") as url:
        yield url


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_streaming_url_serves_messages(local_stack: dict[str, Any], stream_url: str, user: dict[str, str],
                                       model: str) -> None:
    client = anthropic.Anthropic(base_url=stream_url, api_key=user["api_key"], max_retries=0)
    assert client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "Hi"}]).input_tokens > 0
    with client.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": "Stream [[words:5]]"}]) as stream:
        text = "".join(stream.text_stream)
    assert len(text.split()) == 5
    [record] = settled(local_stack, user, 1)
    assert record["status"] == "ok" and record["stream"] is True


def test_streaming_url_serves_responses(local_stack: dict[str, Any], stream_url: str, user: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=stream_url + "/v1", api_key=user["api_key"], max_retries=0)
    events = [e.type for e in client.responses.create(model=TRANSLATED, input="[[words:3]]", stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    [record] = settled(local_stack, user, 1)
    assert record["status"] == "ok"
