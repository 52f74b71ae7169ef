"""The query function's Lambda handler writes ONE EMF record per invocation: the per-provider
record, merged with the function-wide set when there is one (``ColdStart`` on the first
invocation, ``UpstreamErrors`` on a failure) as metric directives of one line
(gateway.observability.flush_metrics); and its "chat completion" line is INFO only when the request
did not simply succeed."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from gateway import db, observability, upstash
from tests.integration.test_health import http_api_v2_event, invoke_in_own_loop
from tests.support.apps import load_module

pytestmark = pytest.mark.integration

@pytest.fixture
def query_module(stack: str, fake_upstream: Any) -> ModuleType:
    return load_module("functions/query/app.py", "mlp_query_lambda_under_test")


def _chat_event(api_key: str) -> dict[str, Any]:
    event = http_api_v2_event("/v1/chat/completions", headers={"authorization": f"Bearer {api_key}",
                                                                 "content-type": "application/json"})
    event["routeKey"] = "POST /v1/chat/completions"
    event["requestContext"]["http"]["method"] = "POST"
    event["body"] = json.dumps({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    return event


def _logged(level: str, invoke: Callable[[], Any]) -> tuple[Any, list[dict[str, Any]]]:
    """``invoke()``'s result and the Powertools log lines it wrote at ``level``."""
    log = io.StringIO()  # the Powertools handler writes to the stdout it saw at import: redirect it
    handler = observability.logger.registered_handler
    old_stream = handler.setStream(log)  # type: ignore[attr-defined]
    old_level = observability.logger.log_level
    observability.logger.setLevel(level)
    try:
        result = invoke()
        observability.logger.info("after the invocation")
    finally:
        handler.setStream(old_stream)  # type: ignore[attr-defined]
        observability.logger.setLevel(old_level)
    return result, [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]


async def test_log_lines_carry_the_request_ids_only(query_module: ModuleType, make_user: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user(balance="5")
    await db.close_pool()
    upstash.reset_redis()
    event = _chat_event(user.api_key)
    response, lines = await asyncio.to_thread(
        _logged, "DEBUG", lambda: invoke_in_own_loop(query_module.handler, event))  # a success: DEBUG
    assert response["statusCode"] == 200, response
    completion = [e for e in lines if e["message"] == "chat completion"]
    assert len(completion) == 1, lines
    entry = completion[0]
    assert entry["function_request_id"] == "6f1a7c2e-52b4-4a47-9d0e-1d3c8f0b9a11"  # FakeLambdaContext
    assert entry["correlation_id"] == "RlkqXgWJoAMEPnA=" and entry["cold_start"] in (True, False)
    assert not {"function_arn", "function_name", "function_memory_size", "xray_trace_id"} & set(entry)
    after = lines[-1]
    assert after["message"] == "after the invocation" and "function_request_id" not in after
    assert "correlation_id" not in after


async def test_only_a_request_that_did_not_end_ok_logs_its_completion_at_info(
        query_module: ModuleType, make_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A plain success is in its usage_records row (found by the request id an on-call engineer
    has) and in the metrics; its "chat completion" line is DEBUG. A failure keeps it at INFO, and
    counts UpstreamErrors function-wide (where an alarm can read it) and per provider."""
    user = await make_user(balance="5")
    await db.close_pool()
    upstash.reset_redis()
    observability.flush_metrics()  # start from an empty set
    capsys.readouterr()
    ok, failed = _chat_event(user.api_key), _chat_event(user.api_key)
    ok["requestContext"]["requestId"] = "ok-" + uuid.uuid4().hex
    failed["requestContext"]["requestId"] = "failed-" + uuid.uuid4().hex
    failed["body"] = json.dumps({"model": "openai/gpt-4o-mini",
                                 "messages": [{"role": "user", "content": "[[fail:500]]"}]})

    def both() -> list[dict[str, Any]]:
        return [invoke_in_own_loop(query_module.handler, event) for event in (ok, failed)]

    responses, lines = await asyncio.to_thread(_logged, "INFO", both)
    assert [r["statusCode"] for r in responses] == [200, 502], responses
    completion = [e for e in lines if e["message"] == "chat completion"]
    assert [(e["correlation_id"], e["status"], e["level"]) for e in completion] == [
        (failed["requestContext"]["requestId"], "failed", "INFO")]
    rows = await db.fetchall("SELECT request_id, status, provider, completion_tokens, charge FROM usage_records "
                             "WHERE user_id = %s ORDER BY id", (user.user_id,))
    await db.close_pool()
    assert [(r["request_id"], r["status"]) for r in rows] == [
        (ok["requestContext"]["requestId"], "ok"), (failed["requestContext"]["requestId"], "failed")]
    assert rows[0]["provider"] == "openai" and rows[0]["completion_tokens"] > 0 and rows[0]["charge"] > 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert len(records) == 2, records  # one line per invocation
    failure = records[1]
    errors_under = [d["Dimensions"] for d in failure["_aws"]["CloudWatchMetrics"]
                    if "UpstreamErrors" in {m["Name"] for m in d["Metrics"]}]
    assert sorted(errors_under) == [[["provider", "service"]], [["service"]]]
    assert failure["UpstreamErrors"] == 1  # one value: a number (observability._compact_values)


async def test_one_emf_record_per_invocation(query_module: ModuleType, make_user: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    user = await make_user(balance="5")
    await db.close_pool()  # the handler's thread gets its own loop and pool
    upstash.reset_redis()
    observability.flush_metrics()  # start from an empty set
    capsys.readouterr()
    for invocation in range(2):
        event = _chat_event(user.api_key)
        event["requestContext"]["requestId"] = f"emf-{invocation}"
        response = await asyncio.to_thread(invoke_in_own_loop, query_module.handler, event)
        assert response["statusCode"] == 200, response
        out = capsys.readouterr().out
        records = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
        assert len(records) == 1, out[-3000:]
        record = records[0]
        directives = record["_aws"]["CloudWatchMetrics"]
        # a warm success: the per-provider directive only (a cold start adds [service] ColdStart)
        function_wide = [d for d in directives if d["Dimensions"] == [["service"]]]
        assert [m["Name"] for d in function_wide for m in d["Metrics"]] == (["ColdStart"] if function_wide else [])
        if invocation == 1:
            assert not function_wide
        per_provider = [d for d in directives if d["Dimensions"] == [["provider", "service"]]]
        assert len(per_provider) == 1 and len(directives) == len(function_wide) + 1
        assert {m["Name"] for m in per_provider[0]["Metrics"]} == {
            "Requests", "PromptTokens", "CompletionTokens", "ProviderCostMicroUSD", "ChargeMicroUSD", "LatencyMs"}
        assert record["provider"] == "openai" and record["Requests"] == 1 and record["CompletionTokens"]
