"""Embeddings: the OpenAI request validated, the input-token estimate the hold uses, the response in
both encodings (read back by the openai SDK), and the OpenAI-format and Gemini translations."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from openai.types import CreateEmbeddingResponse
from pydantic import ValidationError

from gateway.embeddings import translate as T
from gateway.embeddings.schema import (
    MAX_INPUTS,
    EmbeddingsRequest,
    decode,
    embeddings_response,
    encode,
    estimate_input_tokens,
    hold_tokens,
    text_tokens,
)
from gateway.errors import BadRequest, UpstreamError
from tests.support.sdk_replay import openai_client

VECTORS = [[0.5, -0.25, 0.125], [1.0, 0.0, -1.0], [0.75, 0.5, 0.25]]


def req(**overrides: Any) -> EmbeddingsRequest:
    body: dict[str, Any] = {"model": "openai/text-embedding-3-small", "input": "hello world"}
    body.update(overrides)
    return EmbeddingsRequest.model_validate(body)


# =============================================================================== request
@pytest.mark.parametrize(("value", "items", "token_ids"), [
    ("hello", ["hello"], False),
    (["a", "b"], ["a", "b"], False),
    (["1", "2"], ["1", "2"], False),
    ([101, 2023, 102], [[101, 2023, 102]], True),
    ([[1, 2], [3]], [[1, 2], [3]], True),
])
def test_input_shapes(value: Any, items: list[Any], token_ids: bool) -> None:
    r = req(input=value)
    assert r.items() == items and r.token_ids is token_ids


@pytest.mark.parametrize("bad", [
    {"input": ""}, {"input": []}, {"input": [""]}, {"input": [[]]}, {"input": [-1]}, {"input": [True, False]},
    {"input": [[1, True]]}, {"input": [1, "a"]}, {"input": None}, {"input": ["x"] * (MAX_INPUTS + 1)},
    {"input": [2**31]}, {"encoding_format": "int8"}, {"dimensions": 0}, {"user": "u" * 257}, {"extra": 1},
    {"model": ""},
])
def test_input_refusals(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        req(**bad)


def test_upstream_body() -> None:
    assert req(dimensions=256, user="u1", encoding_format="base64").upstream_body("text-embedding-3-small") == {
        "model": "text-embedding-3-small", "input": "hello world", "encoding_format": "base64", "dimensions": 256,
        "user": "u1"}
    assert T.openai_body(req(input=[1, 2]), "m") == {"model": "m", "input": [1, 2], "encoding_format": "float"}


# =============================================================================== estimate
def test_text_token_estimate_counts_non_ascii_as_one_token_each() -> None:
    assert text_tokens("") == 0 and text_tokens("abcd") == 1 and text_tokens("abcde") == 2
    assert text_tokens("日本語のテキスト") == 8  # CJK: about one token per character
    assert text_tokens("café") == 2  # 3 ASCII chars → 1 token, "é" → 1


def test_hold_estimate_per_item_with_cap() -> None:
    r = req(input=["a" * 40, "日本" * 10, "x"])
    assert estimate_input_tokens(r) == 10 + 20 + 1
    assert estimate_input_tokens(r, per_item_cap=12) == 10 + 12 + 1
    assert estimate_input_tokens(req(input=[[1] * 50, [2] * 5])) == 55  # token ids count exactly
    assert estimate_input_tokens(req(input=[[1] * 50, [2] * 5]), per_item_cap=8) == 13
    huge = req(input=["word " * 100_000] * 3)
    assert estimate_input_tokens(huge, per_item_cap=8192) == 3 * 8192  # bounded by the model's input limit


def test_hold_is_an_upper_bound_even_for_adversarial_text() -> None:
    noise = "x9$#~`|^" * 500  # symbols tokenize far worse than 4 characters per token
    r = req(input=[noise, "日本語", "a"])
    assert hold_tokens(r, per_item_cap=8192) == 4000 + 9 + 1  # UTF-8 bytes: a tokenizer's worst case
    assert hold_tokens(r, per_item_cap=8192) > estimate_input_tokens(r)
    assert hold_tokens(r, per_item_cap=100) == 100 + 9 + 1
    assert hold_tokens(req(input=[[5] * 30]), per_item_cap=8192) == 30


# =============================================================================== response
def test_encode_decode_float32_base64() -> None:
    encoded = encode([0.5, -1.25, 3.0], "base64")
    assert isinstance(encoded, str) and decode(encoded) == [0.5, -1.25, 3.0]
    assert encode([1, 2], "float") == [1.0, 2.0]
    assert math.isclose(decode(encode([0.1], "base64"))[0], 0.1, rel_tol=1e-7)  # float32 precision


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_response_is_what_the_sdk_reads(encoding_format: str) -> None:
    body = embeddings_response([encode(v, encoding_format) for v in VECTORS], model="openai/text-embedding-3-small",
                               prompt_tokens=7)
    parsed = CreateEmbeddingResponse.model_validate(body) if encoding_format == "float" else None
    if parsed is not None:
        assert [d.index for d in parsed.data] == [0, 1, 2]
    client = openai_client(body)
    kwargs: dict[str, Any] = {"encoding_format": "float"} if encoding_format == "float" else {}  # SDK default: base64
    result = client.embeddings.create(model="openai/text-embedding-3-small", input=["a", "b", "c"], **kwargs)
    assert [d.embedding for d in result.data] == VECTORS
    assert result.usage.prompt_tokens == 7 and result.usage.total_tokens == 7 and result.model.startswith("openai/")


# =============================================================================== OpenAI format
def openai_answer(vectors: list[list[float]], encoding_format: str = "float", *, order: list[int] | None = None,
                  usage: dict[str, int] | None = None) -> dict[str, Any]:
    order = order or list(range(len(vectors)))
    data = [{"object": "embedding", "index": i, "embedding": encode(vectors[i], encoding_format)} for i in order]
    out: dict[str, Any] = {"object": "list", "data": data, "model": "text-embedding-3-small-2025"}
    if usage is not None:
        out["usage"] = usage
    return out


def test_from_openai_orders_by_index_renames_the_model_and_bills_reported_tokens() -> None:
    r = req(input=["a", "b", "c"])
    body, usage = T.from_openai(openai_answer(VECTORS, order=[2, 0, 1], usage={"prompt_tokens": 6, "total_tokens": 6}),
                                r, model="openai/text-embedding-3-small")
    assert [d["embedding"] for d in body["data"]] == VECTORS and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["model"] == "openai/text-embedding-3-small" and body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reported) == (6, 0, True)


def test_from_openai_converts_the_encoding_when_the_upstream_answered_the_other() -> None:
    r = req(input=["a", "b", "c"], encoding_format="base64")
    body, _ = T.from_openai(openai_answer(VECTORS, "float", usage={"prompt_tokens": 3}), r, model="m")
    assert all(isinstance(d["embedding"], str) for d in body["data"])
    assert [decode(d["embedding"]) for d in body["data"]] == VECTORS
    passthrough, _ = T.from_openai(openai_answer(VECTORS, "base64", usage={"prompt_tokens": 3}), r, model="m")
    assert passthrough["data"][0]["embedding"] == encode(VECTORS[0], "base64")


def test_from_openai_without_usage_estimates_and_says_so() -> None:
    r = req(input=["a" * 40, "b" * 8, "c"])
    _, usage = T.from_openai(openai_answer(VECTORS), r, model="m")
    assert (usage.prompt_tokens, usage.reported) == (10 + 2 + 1, False)


@pytest.mark.parametrize("answer", [
    {"data": [{"index": 0, "embedding": [0.1]}]},                                   # too few
    {"data": [{"index": 0, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]},  # duplicate index
    {"data": [{"index": 0, "embedding": [0.1]}, {"index": 5, "embedding": [0.2]}]},  # out of range
    {"data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": None}]},
    {"error": "nope"}, [],
])
def test_from_openai_bad_answers_are_retryable_502s(answer: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        T.from_openai(answer, req(input=["a", "b"]), model="m", provider="compat")
    assert info.value.status == 502 and info.value.retryable and "compat" in info.value.message


# =============================================================================== Gemini
def test_gemini_batches_and_body() -> None:
    r = req(input=[f"t{i}" for i in range(250)], dimensions=768)
    batches = T.gemini_batches(r)
    assert [len(b) for b in batches] == [100, 100, 50] and batches[2][-1] == "t249"
    body = T.gemini_body(batches[0][:2], "models/gemini-embedding-001", dimensions=r.dimensions)
    assert body == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "t0"}]}, "outputDimensionality": 768},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "t1"}]}, "outputDimensionality": 768}]}
    assert T.gemini_body(["x"], "gemini-embedding-001")["requests"][0] == {
        "model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]}}
    assert T.gemini_path("gemini-embedding-001") == "models/gemini-embedding-001:batchEmbedContents"
    assert T.gemini_path("models/text-embedding-004") == "models/text-embedding-004:batchEmbedContents"
    with pytest.raises(BadRequest) as info:
        T.gemini_batches(req(input=[1, 2, 3]))
    assert info.value.param == "input"


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_from_gemini_joins_batches_in_order(encoding_format: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "GEMINI_MAX_BATCH", 2)  # batches of 2 texts: [a, b], [c]
    r = req(input=["a" * 8, "b" * 8, "c" * 8], encoding_format=encoding_format)
    answers = [{"embeddings": [{"values": VECTORS[0]}, {"values": VECTORS[1]}]},
               {"embeddings": [{"values": VECTORS[2]}]}]
    body, usage = T.from_gemini(answers, r, model="google/gemini-embedding-001")
    assert [decode(d["embedding"]) for d in body["data"]] == VECTORS
    assert isinstance(body["data"][0]["embedding"], str) is (encoding_format == "base64")
    assert (usage.prompt_tokens, usage.reported) == (24, False)  # no count at all: the bound, marked so
    assert T.from_gemini(answers, r, model="m", per_item_cap=5)[1].prompt_tokens == 15  # each at most the limit
    reported = [{**answers[0], "usageMetadata": {"promptTokenCount": 4}},
                {**answers[1], "usageMetadata": {"promptTokenCount": 2}}]
    _, usage = T.from_gemini(reported, r, model="m")
    assert (usage.prompt_tokens, usage.reported) == (6, True)
    # Google's own count wins over countTokens'; a batch with neither is billed at its bound
    _, usage = T.from_gemini([reported[0], answers[1]], r, model="m", counts=[3, 1])
    assert (usage.prompt_tokens, usage.reported) == (4 + 1, True)
    _, usage = T.from_gemini(answers, r, model="m", counts=[5, None])
    assert (usage.prompt_tokens, usage.reported) == (5 + 8, False)
    with pytest.raises(UpstreamError):  # an answer per batch, each with one vector per text
        T.from_gemini([{"embeddings": [{"values": v} for v in VECTORS]}], r, model="m")


@pytest.mark.parametrize(("count", "billed", "exact"), [
    (5, 5, True),            # the counted tokens
    (2, 2, True),            # a token per text: the least plausible count
    (16, 16, True),          # the bound itself
    (17, 16, False),         # above the bound (what was held): nonsense, the bound
    (1, 16, False),          # fewer tokens than texts: nonsense
    (0, 16, False),
    (-3, 16, False),
    (None, 16, False),       # failed, timed out, refused, missing
])
def test_gemini_batch_tokens_uses_a_plausible_count_else_the_bound(count: int | None, billed: int,
                                                                     exact: bool) -> None:
    texts = ["a" * 8, "b" * 8]
    assert T.gemini_batch_tokens(texts, {"embeddings": []}, count, per_item_cap=2048) == (billed, exact)
    # Google's count in the answer is the authority (even when a countTokens total differs)
    answer = {"usageMetadata": {"promptTokenCount": 7}}
    assert T.gemini_batch_tokens(texts, answer, count, per_item_cap=2048) == (7, True)
    for nonsense in ({"promptTokenCount": -1}, {"promptTokenCount": True}, {"promptTokenCount": "7"}, {}):
        assert T.gemini_batch_tokens(texts, {"usageMetadata": nonsense}, count, per_item_cap=2048) == (billed, exact)


def test_gemini_count_tokens_request_and_answer() -> None:
    assert T.gemini_count_path("gemini-embedding-001") == "models/gemini-embedding-001:countTokens"
    assert T.gemini_count_path("models/x y") == "models/x%20y:countTokens"
    assert T.gemini_count_body(["a", "b"]) == {"contents": [{"parts": [{"text": "a"}]}, {"parts": [{"text": "b"}]}]}
    assert T.gemini_total_tokens({"totalTokens": 12, "promptTokensDetails": []}) == 12
    for nonsense in ({}, {"totalTokens": "12"}, {"totalTokens": 1.5}, {"totalTokens": True}, [], None):
        assert T.gemini_total_tokens(nonsense) is None


@pytest.mark.parametrize("answers", [
    [{"embeddings": [{"values": [0.1]}]}],                      # fewer vectors than inputs
    [{"embeddings": [{"values": [0.1]}, {"nothing": 1}]}],
    [{"error": {"code": 500}}],
])
def test_from_gemini_bad_answers(answers: list[Any]) -> None:
    with pytest.raises(UpstreamError):
        T.from_gemini(answers, req(input=["a", "b"]), model="m")


def test_openrouter_reported_cost_is_kept() -> None:
    req = EmbeddingsRequest(model="m", input=["a", "b"])
    data = {"data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": [0.2]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2, "cost": 0.0000042}}
    _, usage = T.from_openai(data, req, model="m", provider="openrouter")
    assert usage.prompt_tokens == 2 and usage.reported and usage.cost == Decimal("0.0000042")
    _, plain = T.from_openai({**data, "usage": {"prompt_tokens": 2}}, req, model="m")
    assert plain.cost is None
