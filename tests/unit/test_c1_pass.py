"""Issue 15, c1 lane: the non-streaming request's per-request work moved or made cheaper answers
exactly as before (no I/O: calls and candidates built from plain data)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway import auth
from gateway.adapters.contract import Target, Usage
from gateway.catalog.registry import ModelInfo
from gateway.chat import service
from gateway.chat.schema import ChatRequest
from gateway.money import ledger
from gateway.money.pricing import ModelPrice

D = Decimal


def _call(*, price: ModelPrice | None = None, markup: Decimal | None = None, key: bool = True,
          stream: bool = False) -> tuple[service.Call, service.Candidate]:
    model = ModelInfo(id="openai/gpt-4o-mini", name="m", provider="openai", upstream_model="gpt-4o-mini",
                      owned_by="openai", context_length=128_000, max_completion_tokens=16_384,
                      price=price or ModelPrice(prompt=D("0.00000015"), completion=D("0.0000006"),
                                                cache_read=D("0.000000075")),
                      is_free=False, markup=markup, input_modalities=("text",))
    target = Target("openai", "gpt-4o-mini", model.id, "http://127.0.0.1:1/v1", "sk-x")
    body: dict[str, Any] = {"model": model.id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
    candidate = service.Candidate(model=model, target=target, byok=False, output_limit=64, body=body)
    req = ChatRequest.model_validate({**body, "stream": stream})
    principal = auth.Principal(uuid.uuid4(), uuid.uuid4() if key else None, "free")
    size = service.measure_prompt(body)
    call = service.Call(request_id="req_" + uuid.uuid4().hex, principal=principal, req=req, candidates=[candidate],
                        size=size, hold=D("0.001"), started=time.perf_counter() - 0.25, deadline=0.0)
    return call, candidate


USAGES = [
    Usage(prompt_tokens=6, completion_tokens=16),
    Usage(prompt_tokens=1_000, completion_tokens=200, cached_tokens=300, cache_write_tokens=50, cost=D("0.00042")),
    Usage(prompt_tokens=3, completion_tokens=9, reported=False),  # estimated: the prompt charged at its bound
    Usage(prompt_tokens=0, completion_tokens=0),
]


def _fields(record: ledger.UsageRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "latency_ms"}


@pytest.mark.parametrize("usage", USAGES)
@pytest.mark.parametrize("markup", [None, D("0.3")])
@pytest.mark.parametrize("key", [True, False])
def test_an_answer_priced_later_is_the_record_usage_record_makes(usage: Usage, markup: Decimal | None,
                                                                 key: bool) -> None:
    call, c = _call(markup=markup, key=key)
    answered = service.Answered(call, c, usage)
    now = service.usage_record(call, "ok", candidate=c, usage=usage)
    later = answered.record()
    assert type(later) is ledger.UsageRecord and later is not answered.record()
    assert _fields(later) == _fields(now)
    later.latency_ms = now.latency_ms
    assert ledger.record_json(later) == ledger.record_json(now)  # the text the settle sends


def test_an_answer_priced_later_keeps_the_latency_of_its_answer() -> None:
    call, c = _call()
    answered = service.Answered(call, c, USAGES[0])
    assert 250 <= answered.latency_ms < 10_000
    call.started -= 5.0  # later pricing does not measure again
    assert answered.record().latency_ms == answered.latency_ms
    assert service.usage_record(call, "ok", candidate=c, usage=USAGES[0]).latency_ms >= 5_250


def test_a_record_passes_through_as_it_is() -> None:
    call, c = _call()
    record = service.usage_record(call, "failed", candidate=c)
    assert service._record_of(record) is record
    assert service._record_of(service.Answered(call, c, USAGES[0])).status == "ok"


async def test_respond_settles_the_priced_record_after_the_answer_on_a_plain_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    settled: list[ledger.UsageRecord] = []

    async def finish(call: service.Call, record: ledger.UsageRecord) -> None:
        settled.append(record)

    monkeypatch.setattr(service, "finish_shielded", finish)
    call, c = _call()
    call.rate_headers = {"X-RateLimit-Limit": "60"}
    answered = service.Answered(call, c, USAGES[1])
    response = await service.respond(call, {"id": "x", "choices": []}, answered)
    assert settled == [] and response.background is not None  # nothing priced before the answer is sent
    await response.background()
    assert [_fields(r) for r in settled] == [_fields(answered.record())]
    assert settled[0].latency_ms == answered.latency_ms


async def test_respond_settles_before_the_answer_in_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "QueryStreamFunction")
    settled: list[ledger.UsageRecord] = []

    async def finish(call: service.Call, record: ledger.UsageRecord) -> None:
        settled.append(record)

    monkeypatch.setattr(service, "finish_shielded", finish)
    call, c = _call()
    response = await service.respond(call, {"id": "x"}, service.Answered(call, c, USAGES[0]))
    assert response.background is None and [r.status for r in settled] == ["ok"]


async def test_a_render_failure_settles_the_priced_record_as_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    settled: list[ledger.UsageRecord] = []

    async def finish(call: service.Call, record: ledger.UsageRecord) -> None:
        settled.append(record)

    monkeypatch.setattr(service, "finish_shielded", finish)
    call, c = _call()
    answered = service.Answered(call, c, USAGES[1])
    with pytest.raises(ValueError):
        await service.respond(call, {"x": float("nan")}, answered)
    expected = {**_fields(answered.record()), "status": "failed", "error_code": "response_render_failed"}
    assert [_fields(r) for r in settled] == [expected]


MODEL_IDS = ["openai/gpt-4o-mini", "openai/gpt-5.2", "anthropic/claude-3.5-haiku", "anthropic/claude-opus-4.7",
             "google/gemini-2.5-flash", "meta-llama/llama-3.1-8b-instruct", ""]


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("images", [0, 1, 3])
@pytest.mark.parametrize("files", [0, 2])
def test_a_prompt_size_answers_as_the_image_formula(model_id: str, images: int, files: int) -> None:
    from gateway.adapters.tokens import image_token_max

    size = service.PromptSize(text_estimate=1_000, text_bound=4_000, images=images, files=files)
    assert size.estimate(model_id) == 1_000 + images * image_token_max(model_id)
    for context in (100, 4_000, 4_001, 10_000_000):
        expected = context if files else min(context, 4_000 + images * image_token_max(model_id))
        assert size.bound(model_id, context) == expected


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 22\r\n\r\n"
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\xcf\x06\x00G\xdd\xdc\x79\x02\x00\x00\x00",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart",  # closed before its end (a deadline)
])
async def test_a_closed_upstream_response_is_freed_without_the_cycle_collector(answer: bytes) -> None:
    import gc

    from gateway import upstream_http

    client = upstream_http.create_http_client()

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is upstream_http.UpstreamResponse)

    gc.collect()
    before = alive()
    gc.disable()
    try:
        conn = upstream_http._Connection()
        client._in_use += 1
        response = upstream_http.UpstreamResponse(client, conn, 30.0)
        conn.response = response
        conn.data_received(answer)
        assert response.status_code == 200
        if response._done:
            assert await response.aread() == b"ok"
        await response.aclose()
        assert conn.response is None and response.is_closed
        del response
        assert alive() == before  # freed by its reference count: no cycle left for gc
    finally:
        gc.enable()
        await client.aclose()
