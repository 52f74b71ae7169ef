"""QueryStreamFunction's entry point (functions/query/app.py ``stream_app``, what run.sh serves
with uvicorn behind the Lambda Web Adapter): the environment is frozen as soon as a response
completes, so the Powertools metrics of a request (the stream's settlement included) must be
written BEFORE its last body message; every log line carries the Lambda request id the adapter
forwards in ``x-amzn-lambda-context``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gateway import observability, upstash
from gateway.catalog import registry
from gateway.config import reset_settings
from infra.local.servers import free_port
from tests.support.apps import load_module, post_scope

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[2] / "functions" / "query" / "app.py"
LAMBDA_CONTEXT = {"request_id": "0f4c2f3e-8c0a-4a8e-9a5b-2b8f3f1a9c11", "deadline": 1893456000000,
                  "invoked_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:mlp-dev-QueryStream",
                  "xray_trace_id": "Root=1-65a1b2c3-0123456789abcdef01234567", "env_config": {}}


@pytest.fixture(scope="module")
def query_module(stack: str, fake_upstream: Any) -> ModuleType:
    return load_module("functions/query/app.py", "mlp_query_stream_under_test")


async def _call(app: Any, body: dict[str, Any], api_key: str, capsys: pytest.CaptureFixture[str]
                ) -> tuple[list[dict[str, Any]], str]:
    """Drive the ASGI app like uvicorn does; returns the messages sent, each with the stdout
    written before it (under "stdout_before")."""
    raw = json.dumps(body).encode()
    scope = post_scope("/v1/chat/completions", {"authorization": f"Bearer {api_key}",
                                                "x-amzn-lambda-context": json.dumps(LAMBDA_CONTEXT)})
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append({**message, "stdout_before": capsys.readouterr().out})

    capsys.readouterr()
    await app(scope, receive, send)
    return sent, capsys.readouterr().out


def _emf(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        if line.startswith("{") and "_aws" in line:
            records.append(json.loads(line))
    return records


async def test_stream_metrics_are_flushed_before_the_response_completes(
        query_module: ModuleType, make_user: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not observability._METRICS_ON:
        pytest.skip("Powertools metrics disabled in this environment")
    registry.invalidate()
    user = await make_user(balance="5")
    # Behind the Web Adapter: in Lambda (on a plain server a stream's settle follows its last byte)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "mlp-test-QueryStreamFunction")
    # Upstash unreachable: the rate limiter fails open and logs a warning during the request.
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{free_port()}")
    reset_settings()
    upstash.reset_redis()
    observability.flush_metrics()  # start from an empty set
    capsys.readouterr()
    log = io.StringIO()  # the Powertools handler writes to the stdout it saw at import: redirect it
    handler = observability.logger.registered_handler
    old_stream = handler.setStream(log)  # type: ignore[attr-defined]
    try:
        sent, after = await _call(query_module.stream_app, {
            "model": "openai/gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            user.api_key, capsys)
        observability.logger.warning("after the request")
    finally:
        handler.setStream(old_stream)  # type: ignore[attr-defined]
        monkeypatch.undo()
        reset_settings()
        upstash.reset_redis()
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    chunks = [m for m in sent if m["type"] == "http.response.body"]
    assert b"data: [DONE]" in b"".join(m.get("body", b"") for m in chunks)
    last = chunks[-1]
    assert not last.get("more_body", False)
    # The EMF record with this request's metrics (the stream's settlement counts "Requests") was
    # written before the last body message, i.e. before the Web Adapter ends the invocation.
    before_last = "".join(m["stdout_before"] for m in sent if m is not last) + last["stdout_before"]
    flushed = [r for r in _emf(before_last) if "Requests" in r]
    assert flushed, (before_last[-3000:], after[-2000:])
    assert flushed[-1]["RateLimiterUnavailable"] == 1
    assert not observability.metrics.metric_set  # nothing left for the frozen environment
    assert "Requests" not in "".join(r.keys().__repr__() for r in _emf(after))
    # Every log line of the request carries the Lambda request id; none after it.
    logs = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    during = [entry for entry in logs if entry.get("message") != "after the request"]
    assert any(entry.get("message") == "rate limiter unavailable" for entry in during), logs
    for entry in during:
        assert entry["function_request_id"] == LAMBDA_CONTEXT["request_id"], entry
        assert entry["cold_start"] in (True, False)
    assert "function_request_id" not in logs[-1] and logs[-1]["message"] == "after the request"


def test_run_sh_serves_the_instrumented_app() -> None:
    script = (APP.parent / "run.sh").read_text(encoding="utf-8")
    assert "exec python -m serve" in script
    assert "Config(app.stream_app," in (APP.parent / "serve.py").read_text(encoding="utf-8")
