"""The scheduled warming handler (functions/models/warm.py) invoked the way EventBridge Scheduler
invokes it: the ``Input`` of the ScheduleV2 event in template.yaml with the ``<aws.scheduler.*>``
context attributes substituted, as Scheduler does before each delivery."""

# ruff: noqa: F811  (test arguments named after the catalog_env fixture imported below)

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.catalog import cache, render, warm
from infra.local.template import load_template, serverless_functions
from tests.support.catalog import CatalogEnv, catalog_env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCHEDULE_ARN = "arn:aws:scheduler:us-east-1:123456789012:schedule/default/mlp-dev-models-warm"


def warm_handler() -> Any:
    name = "fn_models_warm"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / "models" / "warm.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].handler


def scheduler_event(scheduled_time: str = "2025-06-01T12:30:00Z", attempt: int = 1,
                    execution_id: str = "d32c5kddcf5bb8c3") -> dict[str, Any]:
    """What Scheduler delivers: the template's Input with the context attributes filled in."""
    fn = serverless_functions(load_template("template.yaml"))["ModelsWarmFunction"]
    (event,) = [e for e in fn["Events"].values() if e["Type"] == "ScheduleV2"]
    text = event["Properties"]["Input"]
    for placeholder, value in {"<aws.scheduler.schedule-arn>": SCHEDULE_ARN,
                               "<aws.scheduler.scheduled-time>": scheduled_time,
                               "<aws.scheduler.execution-id>": execution_id,
                               "<aws.scheduler.attempt-number>": str(attempt)}.items():
        assert placeholder in text
        text = text.replace(placeholder, value)
    return dict(json.loads(text))


class LambdaContext:
    function_name = "mlp-dev-ModelsWarmFunction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:mlp-dev-ModelsWarmFunction"
    memory_limit_in_mb = 512
    aws_request_id = "5c0b0d8c-1f1e-4e4a-9f0e-1a2b3c4d5e6f"
    log_group_name = "/aws/lambda/mlp-dev-ModelsWarmFunction"
    log_stream_name = "2025/06/01/[$LATEST]0123456789abcdef"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30000


@pytest.fixture
def invoke(catalog_env: CatalogEnv) -> Iterator[Any]:
    handler = warm_handler()

    def call(event: dict[str, Any]) -> dict[str, Any]:
        return dict(handler(event, LambdaContext()))

    try:
        yield call
    finally:
        warm.shutdown()  # the handler's own event loop: close its DB pool and HTTP clients


def cached_snapshot(env: CatalogEnv) -> dict[str, Any] | None:
    snapshot_key, _, _ = cache.keys()
    text = env.redis_get(snapshot_key)
    return render.decode_snapshot(text) if text else None


def emf_metrics(out: str) -> list[dict[str, Any]]:
    docs = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def test_scheduled_invocation_syncs_and_warms_the_cache(catalog_env: CatalogEnv, invoke: Any,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    env = catalog_env
    event = scheduler_event()
    assert event["action"] == "warm-models" and event["schedule_arn"] == SCHEDULE_ARN

    result = invoke(event)

    assert result["status"] == "ok" and result["added"] == 283 and result["deactivated"] == 4
    assert result["active"] == 305 and result["published_version"]
    snapshot = cached_snapshot(env)
    assert snapshot is not None and snapshot["version"] == result["published_version"]
    assert len(snapshot["models"]) == 305
    sync = env.sql("SELECT trigger, trigger_id, status FROM catalog_syncs")
    assert sync == [{"trigger": "schedule", "trigger_id": f"{SCHEDULE_ARN}@2025-06-01T12:30:00Z", "status": "ok"}]
    docs = emf_metrics(capsys.readouterr().out)
    assert any("CatalogModelsAdded" in d and d["CatalogModelsAdded"] in (283, [283.0], 283.0) for d in docs), docs

    # Scheduler may deliver the same slot again (retry after a timeout on its side): no second run
    again = invoke(scheduler_event(attempt=2, execution_id="e0000000000000002"))
    assert again["status"] == "skipped" and again["published_version"] == result["published_version"]
    assert len(env.sql("SELECT id FROM catalog_syncs")) == 1

    # the next slot runs, changes nothing, and the cached catalogue keeps its version
    nxt = invoke(scheduler_event(scheduled_time="2025-06-01T13:00:00Z"))
    assert nxt["status"] == "ok" and (nxt["added"], nxt["updated"], nxt["deactivated"]) == (0, 0, 0)
    assert nxt["published_version"] == result["published_version"]


def test_provider_failure_keeps_the_catalogue_and_emits_a_metric(catalog_env: CatalogEnv, invoke: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    env = catalog_env
    first = invoke(scheduler_event())
    env.fake_fail("openrouter", 502)
    capsys.readouterr()

    result = invoke(scheduler_event(scheduled_time="2025-06-01T13:00:00Z"))

    assert result["status"] == "partial" and result["failed_sources"] == ["openrouter"]
    assert (result["added"], result["updated"], result["deactivated"]) == (0, 0, 0)
    assert result["published_version"] == first["published_version"]
    snapshot = cached_snapshot(env)
    assert snapshot is not None and len(snapshot["models"]) == 305
    docs = emf_metrics(capsys.readouterr().out)
    per_source = [d for d in docs if "CatalogSourceFailure" in d]
    assert per_source and per_source[0]["source"] == "openrouter"
    assert per_source[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["source"]]
    aggregate = [d for d in docs if "CatalogSourceFailures" in d]
    assert aggregate, "the aggregate the alarm watches"
    assert aggregate[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]  # as the alarm has it


def test_every_source_failing_raises_for_retry_and_dlq_but_still_serves(catalog_env: CatalogEnv,
                                                                        invoke: Any) -> None:
    env = catalog_env
    for provider in ("openrouter", "openai", "anthropic", "gemini"):
        env.fake_fail(provider, 500)
    with pytest.raises(warm.WarmFailed):
        invoke(scheduler_event())
    snapshot = cached_snapshot(env)
    assert snapshot is not None and len(snapshot["models"]) == 26  # the seeded catalogue is still published
    assert env.sql("SELECT status FROM catalog_syncs") == [{"status": "failed"}]
    # a retry of the same slot is not skipped (the failed run did not count)
    for provider in ("openrouter", "openai", "anthropic", "gemini"):
        env.fake_recover(provider)
    assert invoke(scheduler_event(attempt=2))["status"] == "ok"


def test_eventbridge_rule_and_empty_events_work_too(catalog_env: CatalogEnv, invoke: Any) -> None:
    rule_event = {"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
                  "source": "aws.events", "account": "123456789012", "time": "2025-06-01T12:30:00Z",
                  "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:123456789012:rule/mlp-warm"],
                  "detail": {}}
    assert invoke(rule_event)["status"] == "ok"
    assert invoke({})["status"] == "ok"  # a manual invoke: no slot, always runs
    assert invoke(rule_event)["status"] == "skipped"
