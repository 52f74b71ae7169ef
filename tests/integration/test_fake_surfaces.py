"""The fake providers' embeddings, Responses and count_tokens endpoints (infra/local/fake_surfaces.py)
driven by the official openai/anthropic SDKs and raw HTTP, so a wire-format drift is a parse failure."""

from __future__ import annotations

import json
import math
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from infra.local.fake_providers import base_urls
from infra.local.fake_surfaces import fake_vector
from infra.local.servers import RunningServer
from tests.support.sdk_replay import sse_json

KEY = "sk-test-surfaces-123"
TOOL = {"type": "function", "name": "lookup", "description": "Look up", "strict": False,
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}


@pytest.fixture()
def server(fake_upstream: RunningServer) -> str:
    """The session's fake providers (tests/integration/conftest.py), from default state."""
    httpx.post(f"{fake_upstream.url}/__fake/reset").raise_for_status()
    return fake_upstream.url


@pytest.fixture()
def urls(server: str) -> dict[str, str]:
    return base_urls(server)


def oai(urls: dict[str, str], provider: str = "openai", key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=urls[provider], api_key=key, max_retries=0)


def logged(server: str, provider: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{server}/__fake/requests", params={"provider": provider}).json())


# =============================================================================== embeddings
@pytest.mark.parametrize("provider", ["openai", "openrouter", "compat"])
def test_openai_sdk_embeddings(urls: dict[str, str], server: str, provider: str) -> None:
    client = oai(urls, provider)
    floats = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "日本"],
                                      encoding_format="float")
    default = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "日本"])  # SDK: base64
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 16
    assert floats.data[0].embedding == pytest.approx(fake_vector("hello world", 16))
    for decoded, exact in zip(default.data, floats.data, strict=True):  # float32 of the same vector
        assert decoded.embedding == pytest.approx(exact.embedding, rel=1e-6)
    assert math.isclose(sum(v * v for v in floats.data[1].embedding), 1.0, rel_tol=1e-9)
    assert floats.usage.prompt_tokens == math.ceil(11 / 4) + 1 and floats.model == "text-embedding-3-small"
    tokens = client.embeddings.create(model="m", input=[[1, 2, 3], [4]], dimensions=4, encoding_format="float")
    assert tokens.usage.prompt_tokens == 4 and len(tokens.data[1].embedding) == 4
    entry = logged(server, provider)[-1]
    assert entry["key"] == KEY and entry["path"].endswith("/embeddings") and entry["status"] == 200


def test_embeddings_errors(urls: dict[str, str]) -> None:
    client = oai(urls)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="m", input="")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="m", input=["ok", ""])
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="m", input="please [[fail:429]]")
    with pytest.raises(openai.AuthenticationError):
        oai(urls, key="invalid-key").embeddings.create(model="m", input="x")
    with pytest.raises(openai.InternalServerError):
        oai(urls, "openrouter").embeddings.create(model="fail-503", input="x")
    raw = httpx.post(urls["openai"] + "/embeddings", json={"model": "m", "input": "x [[nousage]]"},
                     headers={"Authorization": f"Bearer {KEY}"}).json()
    assert "usage" not in raw and len(raw["data"]) == 1


def test_gemini_embed_content_and_batch(urls: dict[str, str], server: str) -> None:
    base = urls["gemini"]
    headers = {"x-goog-api-key": "gem-key"}
    one = httpx.post(f"{base}/models/gemini-embedding-001:embedContent", headers=headers,
                     json={"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 8})
    assert one.status_code == 200 and one.json() == {"embedding": {"values": pytest.approx(fake_vector("hello", 8))}}
    batch = httpx.post(f"{base}/models/gemini-embedding-001:batchEmbedContents", headers=headers, json={"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}} for t in ("a", "b", "c")]})
    assert batch.status_code == 200
    assert [len(e["values"]) for e in batch.json()["embeddings"]] == [16, 16, 16]
    assert batch.json()["embeddings"][2]["values"] == pytest.approx(fake_vector("c", 16))
    assert logged(server, "gemini")[-1]["model"] == "gemini-embedding-001"
    # the chat fake's Gemini routes still work next to these
    chat = httpx.post(f"{base}/models/gemini-2.5-flash:generateContent", headers=headers,
                      json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
    assert chat.status_code == 200 and chat.json()["candidates"][0]["content"]["parts"][0]["text"]


@pytest.mark.parametrize(("body", "headers", "status"), [
    ({"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]}, {"x-goog-api-key": "k"}, 400),
    ({"requests": [{"model": "models/e", "content": {"parts": [{"text": "a"}]}}] * 101}, {"x-goog-api-key": "k"}, 400),
    ({"requests": []}, {"x-goog-api-key": "k"}, 400),
    ({"requests": [{"model": "models/e", "content": {"parts": [{"text": "a"}]}}]}, {}, 403),
    ({"requests": [{"model": "models/e", "content": {"parts": [{"text": "a [[fail:429]]"}]}}]},
     {"x-goog-api-key": "k"}, 429),
])
def test_gemini_embed_errors(urls: dict[str, str], body: dict[str, Any], headers: dict[str, str], status: int) -> None:
    r = httpx.post(f"{urls['gemini']}/models/e:batchEmbedContents", headers=headers, json=body)
    assert r.status_code == status and r.json()["error"]["code"] == status


def test_gemini_count_tokens(urls: dict[str, str], server: str) -> None:
    """Google's ``countTokens`` REST shape: ``contents`` or ``generateContentRequest.contents`` (then
    ``contents`` is ignored), answered ``totalTokens`` (+ ``promptTokensDetails``); the embed
    answer's ``usageMetadata`` on ``[[embed_usage]]``; ``[[count_*]]`` directives drive the count
    apart from the embedding."""
    base = urls["gemini"]
    headers = {"x-goog-api-key": "gem-key"}
    url = f"{base}/models/gemini-embedding-001:countTokens"
    contents = [{"parts": [{"text": "hello world"}]}, {"parts": [{"text": "日本"}]}]
    counted = httpx.post(url, headers=headers, json={"contents": contents})
    assert counted.status_code == 200
    assert counted.json() == {"totalTokens": 3 + 1, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}]}
    wrapped = httpx.post(url, headers=headers, json={"generateContentRequest": {
        "model": "models/gemini-embedding-001", "contents": contents}})
    assert wrapped.status_code == 200 and wrapped.json()["totalTokens"] == 4
    (last,) = [e for e in logged(server, "gemini") if e["body"] == {"contents": contents}]
    assert last["model"] == "gemini-embedding-001" and last["path"].endswith(":countTokens")
    both = httpx.post(url, headers=headers, json={"contents": [{"parts": [{"text": "x" * 40}]}],
                                                  "generateContentRequest": {"contents": contents}})
    assert both.status_code == 200 and both.json()["totalTokens"] == 4  # contents ignored
    for body, status in (({"contents": []}, 400), ({}, 400), ({"generateContentRequest": {}}, 400)):
        r = httpx.post(url, headers=headers, json=body)
        assert r.status_code == status and r.json()["error"]["code"] == status
    assert httpx.post(url, json={"contents": contents}).status_code == 403  # no key
    directives = [("[[count_fail:429]]", 429, None), ("[[count_tokens:-5]]", 200, {"totalTokens": -5}),
                  ("[[count_tokens:none]]", 200, {}), ("[[count_sleep:0.1]]", 200, None)]
    for directive, status, answer in directives:
        r = httpx.post(url, headers=headers, json={"contents": [{"parts": [{"text": f"x {directive}"}]}]})
        assert r.status_code == status
        if answer is not None:
            assert {k: v for k, v in r.json().items() if k == "totalTokens"} == answer
    # the embed answer: no count, unless [[embed_usage]] (Google's usageMetadata)
    batch = {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}}
                          for t in ("a [[embed_usage]]", "b")]}
    answer = httpx.post(f"{base}/models/gemini-embedding-001:batchEmbedContents", headers=headers, json=batch).json()
    assert answer["usageMetadata"] == {"promptTokenCount": 5 + 1,
                                       "promptTokenDetails": [{"modality": "TEXT", "tokenCount": 6}]}
    # the count directives do not touch the embedding
    batch["requests"][0]["content"]["parts"][0]["text"] = "a [[count_fail:500]]"
    plain = httpx.post(f"{base}/models/gemini-embedding-001:batchEmbedContents", headers=headers, json=batch)
    assert plain.status_code == 200 and "usageMetadata" not in plain.json()


# =============================================================================== count_tokens
def test_anthropic_count_tokens_with_the_sdk(urls: dict[str, str]) -> None:
    client = anthropic.Anthropic(base_url=urls["anthropic"].removesuffix("/v1"), api_key=KEY, max_retries=0)
    counted = client.messages.count_tokens(model="claude-x", system="You are terse.",
                                           messages=[{"role": "user", "content": "Hello there, how are you?"}])
    assert counted.input_tokens == math.ceil((len("You are terse.") + len("Hello there, how are you?")) / 4)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=urls["anthropic"].removesuffix("/v1"), api_key="invalid-k",
                            max_retries=0).messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])


# =============================================================================== Responses
def test_responses_create(urls: dict[str, str], server: str) -> None:
    client = oai(urls)
    resp = client.responses.create(model="gpt-5-mini", input="Hi", instructions="Be nice.")
    assert resp.output_text == "Hello from openai gpt-5-mini." and resp.status == "completed"
    assert resp.usage is not None and resp.usage.input_tokens == math.ceil(len("Be nice.Hi") / 4)
    assert resp.usage.output_tokens == 4 and resp.id.startswith("resp_")
    Response.model_validate(httpx.post(urls["openai"] + "/responses", json={"model": "m", "input": "x"},
                                       headers={"Authorization": f"Bearer {KEY}"}).json())
    long = client.responses.create(model="m", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Tell me [[words:9]] [[reasoning:5]] [[cached:1]]"}]}], max_output_tokens=6)
    assert long.status == "incomplete" and long.incomplete_details is not None
    assert long.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in long.output] == ["reasoning", "message"]
    assert long.usage is not None and long.usage.output_tokens == 6  # reasoning counts inside the limit
    assert long.usage.output_tokens_details.reasoning_tokens == 5 and long.usage.input_tokens_details.cached_tokens == 1
    assert logged(server, "openai")[-1]["path"] == "/openai/v1/responses"


def test_responses_function_call_and_stream(urls: dict[str, str]) -> None:
    client = oai(urls)
    called = client.responses.create(model="m", input="Use it [[tool:lookup]]", tools=[TOOL])  # type: ignore[list-item]
    call = called.output[0]
    assert call.type == "function_call" and call.name == "lookup" and json.loads(call.arguments) == {"x": 1}
    with client.responses.stream(model="m", input="Stream [[words:6]]") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello from openai m. Hello from"
    with client.responses.stream(model="m", input="[[tool:lookup]]", tools=[TOOL]) as stream:  # type: ignore[list-item]
        final = stream.get_final_response()
    assert final.output[0].type == "function_call" and final.output[0].arguments == '{"x": 1}'  # type: ignore[union-attr]


def test_responses_stream_is_typed_and_numbered(urls: dict[str, str]) -> None:
    raw = httpx.post(urls["openai"] + "/responses", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "m", "input": "x [[reasoning:2]]", "stream": True}).content
    events = sse_json(raw)
    adapter = TypeAdapter(ResponseStreamEvent)
    for name, data in events:
        assert name == data["type"]
        adapter.validate_python(data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"


def test_responses_errors_and_stream_error(urls: dict[str, str]) -> None:
    client = oai(urls)
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.responses.create(model="m", input="x", previous_response_id="resp_nope")
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="m", input="x [[fail:500]]")
    raw = httpx.post(urls["openai"] + "/responses", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "m", "input": "x [[stream_error:3]]", "stream": True}).content
    events = sse_json(raw)
    assert len(events) == 4 and events[-1][0] == "error" and events[-1][1]["sequence_number"] == 3
    assert events[-1][1]["code"] == "server_error"
