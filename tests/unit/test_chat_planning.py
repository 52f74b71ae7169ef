"""Pieces of the query path with no I/O: the request deadline, the output limit sent upstream, the
OpenRouter price cap, and the completion assembled from a stream."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from gateway.catalog.registry import ModelInfo
from gateway.chat.responses import assemble
from gateway.chat.schema import ChatRequest
from gateway.chat.service import budget_for, openrouter_preferences, output_limit
from gateway.config import Settings
from gateway.errors import BadRequest
from gateway.money.pricing import ModelPrice

D = Decimal
SETTINGS = Settings()


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_budget_under_mangum_is_the_api_gateway_budget_or_the_lambda_time_left() -> None:
    assert budget_for({"aws.context": Context(60_000)}, SETTINGS) == (SETTINGS.buffered_deadline_s, True)
    budget, buffered = budget_for({"aws.context": Context(15_000)}, SETTINGS)
    assert buffered and budget == pytest.approx(15 - SETTINGS.deadline_margin_s)


def test_budget_behind_the_web_adapter_follows_the_invocation_deadline() -> None:
    soon = json.dumps({"request_id": "x", "deadline": int((time.time() + 100) * 1000)}).encode()
    budget, buffered = budget_for({"headers": [(b"x-amzn-lambda-context", soon)]}, SETTINGS)
    assert not buffered and budget == pytest.approx(100 - SETTINGS.deadline_margin_s, abs=1)
    late = json.dumps({"deadline": int((time.time() + 10_000) * 1000)}).encode()
    assert budget_for({"headers": [(b"x-amzn-lambda-context", late)]}, SETTINGS)[0] == SETTINGS.request_deadline_s
    for junk in (b"not json", b"[]", b'{"deadline": "soon"}', b'{"deadline": true}'):
        assert budget_for({"headers": [(b"x-amzn-lambda-context", junk)]}, SETTINGS) == \
            (SETTINGS.request_deadline_s, False)
    assert budget_for({"headers": []}, SETTINGS) == (SETTINGS.request_deadline_s, False)


def _model(provider: str, context: int = 200_000, max_out: int = 8192) -> ModelInfo:
    return ModelInfo(id=f"{provider}/m", name="m", provider=provider, upstream_model="m", owned_by="t",
                     context_length=context, max_completion_tokens=max_out,
                     price=ModelPrice(prompt=D("0.000001"), completion=D("0.000002")), is_free=False, markup=None,
                     input_modalities=("text",))


def _req(**kw: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "x/m", "messages": [{"role": "user", "content": "hi"}], **kw})


def test_output_limit_is_clamped_or_injected() -> None:
    assert output_limit(_req(max_tokens=64_000), _model("anthropic"), 10) == 8192
    assert output_limit(_req(max_completion_tokens=100), _model("openai"), 10) == 100
    assert output_limit(_req(), _model("anthropic"), 10) == 8192
    # the prompt and the output share the context window: what the context leaves
    assert output_limit(_req(), _model("openai", context=8192, max_out=8192), 8000) == 192
    assert output_limit(_req(), _model("openai", context=8192, max_out=8192), 9000) == 1
    # Gemini's output limit does not share the (input) context length
    assert output_limit(_req(), _model("gemini", context=8192, max_out=8192), 8000) == 8192


def test_openrouter_price_cap() -> None:
    price = ModelPrice(prompt=D("0.000003"), completion=D("0.000015"), request=D("0.0004"), image=D("0.0048"))
    prefs = openrouter_preferences({"order": ["Anthropic"], "allow_fallbacks": False}, price)
    assert prefs == {"order": ["Anthropic"], "allow_fallbacks": False,
                     "max_price": {"prompt": "3", "completion": "15", "request": "0.0004"}}
    lower = openrouter_preferences({"max_price": {"prompt": 1, "completion": "99", "image": "-2"}}, price, images=True)
    assert lower["max_price"] == {"prompt": "1", "completion": "15", "request": "0.0004", "image": "0"}
    assert openrouter_preferences(None, ModelPrice(prompt=D(0), completion=D(0)))["max_price"] == \
        {"prompt": "0", "completion": "0", "request": "0"}
    with pytest.raises(BadRequest):
        openrouter_preferences({"max_price": {"prompt": "cheap"}}, price)


def test_assemble_a_completion_from_chunks() -> None:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "x",
            "system_fingerprint": "fp"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "look", "arguments": ""}}]}}]},
        {**head, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"x":'}}]}}]},
        {**head, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "1}"}}]}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    out = assemble(chunks, "public/model", usage)
    assert out["object"] == "chat.completion" and out["id"] == "chatcmpl-1" and out["model"] == "public/model"
    assert out["system_fingerprint"] == "fp" and out["usage"] == usage
    choice, = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Hello"
    assert choice["message"]["tool_calls"] == [{"id": "call_1", "type": "function",
                                                "function": {"name": "look", "arguments": '{"x":1}'}}]
    empty = assemble([], "m", None)
    assert empty["choices"][0]["message"]["content"] == "" and empty["choices"][0]["finish_reason"] == "stop"


def test_assemble_joins_many_pieces_per_choice_and_field() -> None:
    """Two choices interleaved, reasoning and content, a tool call's arguments in many pieces: each
    field is the concatenation of its pieces in order."""
    words = [f"w{i} " for i in range(3000)]
    chunks = []
    for i, word in enumerate(words):
        chunks.append({"id": "c", "choices": [
            {"index": 1, "delta": {"content": word.upper()}},
            {"index": 0, "delta": {"reasoning": str(i % 10), "content": word}},
        ]})
    chunks.append({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_9", "function": {"name": "f", "arguments": ""}}]}}]})
    chunks += [{"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ch}}]}}]} for ch in '{"a": [1, 2, 3]}']
    out = assemble(chunks, "m", None)
    first, second = out["choices"]
    assert first["message"]["content"] == "".join(words)
    assert first["message"]["reasoning"] == "".join(str(i % 10) for i in range(3000))
    assert first["message"]["tool_calls"] == [{"id": "call_9", "type": "function",
                                               "function": {"name": "f", "arguments": '{"a": [1, 2, 3]}'}}]
    assert second["index"] == 1 and second["message"]["content"] == "".join(words).upper()
    assert "tool_calls" not in second["message"] and second["message"]["refusal"] is None


def test_assemble_single_field_deltas() -> None:
    """Deltas of one field (the usual ``{"content": token}``, which takes a shorter path), mixed with
    others: reasoning first, a refusal, a ``null`` or non-text content (ignored), logprobs, a
    second choice that only refuses, and the usage chunk's empty choices."""
    lp = [{"token": "a", "logprob": -0.1}]
    chunks: list[dict[str, Any]] = [
        {"id": "c", "created": 5, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"reasoning": "think"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "A"}, "logprobs": {"content": lp}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": None}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": ["not", "text"]}}]},
        {"id": "c", "choices": [{"index": 1, "delta": {"refusal": "I can't"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "B"}, "logprobs": {"content": lp}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"id": "c", "choices": []},
    ]
    out = assemble(chunks, "m", None)
    first, second = out["choices"]
    assert first == {"index": 0, "message": {"role": "assistant", "content": "AB", "refusal": None,
                                             "reasoning": "think"},
                     "finish_reason": "length", "logprobs": {"content": lp + lp}}
    assert list(first["message"]) == ["role", "content", "refusal", "reasoning"]
    assert second == {"index": 1, "message": {"role": "assistant", "content": "", "refusal": "I can't"},
                      "finish_reason": "stop", "logprobs": None}
    assert out["created"] == 5 and "usage" not in out
    only_null = assemble([{"id": "c", "choices": [{"index": 0, "delta": {"content": None}}]}], "m", None)
    assert only_null["choices"][0]["message"]["content"] == ""
