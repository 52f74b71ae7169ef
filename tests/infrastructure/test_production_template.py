"""template.yaml for a real account: reserved-concurrency parameters, the alarms an operator needs
(streaming Function URL 5xx, account concurrency, rate limiter and database outages), one CORS
header list shared with the app, secret rotation that replaces containers, explicit DLQ deletion,
outputs for the Stripe wiring, and names that let two stacks share an account."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from gateway import db, ratelimit
from gateway.http import CORS_ALLOW_HEADERS, CORS_ALLOW_METHODS, CORS_EXPOSE_HEADERS, CORS_MAX_AGE_S
from infra.local.template import REPO_ROOT, load_template, serverless_functions


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rid: r["Properties"] for rid, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}


@pytest.mark.parametrize(("function", "parameter"), [
    ("QueryFunction", "QueryReservedConcurrency"),
    ("QueryStreamFunction", "QueryStreamReservedConcurrency"),
    ("MessagesFunction", "MessagesReservedConcurrency"),
    ("ResponsesFunction", "ResponsesReservedConcurrency"),
    ("EmbeddingsFunction", "EmbeddingsReservedConcurrency"),
    ("WebhooksFunction", "WebhooksReservedConcurrency"),
])
def test_reserved_concurrency_parameters_unset_by_default(template: dict[str, Any], function: str,
                                                          parameter: str) -> None:
    param = template["Parameters"][parameter]
    assert param["Default"] == "", "new accounts (quota 10) cannot reserve concurrency"
    assert re.fullmatch(param["AllowedPattern"], "") and re.fullmatch(param["AllowedPattern"], "25")
    cond = f"Has{parameter}"
    assert template["Conditions"][cond] == {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, ""]}]}
    props = serverless_functions(template)[function]
    assert props["ReservedConcurrentExecutions"] == {"Fn::If": [cond, {"Ref": parameter}, {"Ref": "AWS::NoValue"}]}


def test_function_url_5xx_and_account_concurrency_alarms(template: dict[str, Any]) -> None:
    alarms = _alarms(template)
    url = [p for p in alarms.values() if p.get("MetricName") == "Url5xxCount"]
    assert url and url[0]["Namespace"] == "AWS/Lambda"
    assert url[0]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "QueryStreamFunction"}}]
    concurrency = [p for p in alarms.values() if p.get("MetricName") == "ClaimedAccountConcurrency"]
    assert concurrency and concurrency[0]["Threshold"] == {"Ref": "ConcurrencyAlarmThreshold"}
    assert concurrency[0]["Statistic"] == "Maximum"


@pytest.mark.parametrize(("metric", "module"), [("RateLimiterUnavailable", ratelimit), ("DatabaseUnavailable", db)])
def test_outage_alarms_watch_the_metrics_the_code_emits(template: dict[str, Any], metric: str, module: Any) -> None:
    assert f'count("{metric}")' in inspect.getsource(module)
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    [props] = [p for p in _alarms(template).values() if p.get("MetricName") == metric]
    assert props["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert props["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
    assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_every_alarm_is_in_the_deploy_doc(template: dict[str, Any]) -> None:
    doc = (REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    per_function = {rid for rid in _alarms(template) if rid.endswith("FunctionErrorsAlarm")}
    assert "<Function>ErrorsAlarm" in doc
    missing = [rid for rid in _alarms(template) if rid not in per_function and f"`{rid}`" not in doc]
    assert not missing, f"docs/deploy.md does not explain {missing}"


def test_cors_is_one_list_for_api_gateway_and_the_app(template: dict[str, Any]) -> None:
    cors = template["Resources"]["Api"]["Properties"]["CorsConfiguration"]["Fn::If"]
    for branch in cors[1:]:
        assert branch["AllowHeaders"] == list(CORS_ALLOW_HEADERS)
        assert branch["ExposeHeaders"] == list(CORS_EXPOSE_HEADERS)
        assert branch["AllowMethods"] == list(CORS_ALLOW_METHODS)
        assert branch["MaxAge"] == CORS_MAX_AGE_S


def test_cors_exposes_the_rate_limit_headers_we_send() -> None:
    decision = ratelimit.Decision(allowed=False, limit=10, remaining=0, reset=1e10)
    sent = {h.lower() for h in decision.headers()}
    assert sent == {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"}
    assert sent <= set(CORS_EXPOSE_HEADERS)
    assert {"http-referer", "x-title", "authorization", "content-type"} <= set(CORS_ALLOW_HEADERS)


def test_secret_rotation_replaces_every_container(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["SECRETS_REVISION"] == {"Ref": "SecretsRevision"}
    assert not [k for k in env if k.startswith("POWERTOOLS_TRACER")]  # no X-Ray SDK any more


def test_dlq_deletion_is_explicit(template: dict[str, Any]) -> None:
    for rid, res in template["Resources"].items():
        if res["Type"] == "AWS::SQS::Queue":
            assert res.get("DeletionPolicy") and res.get("UpdateReplacePolicy"), rid


def test_outputs_for_the_operator(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["WebhookUrl"]["Value"]["Fn::Sub"].endswith("/webhooks/stripe")
    assert outputs["ModelsWarmDeadLetterQueueUrl"]["Value"] == {"Ref": "ModelsWarmDeadLetterQueue"}
    assert outputs["SecretsPath"]["Value"] == {"Fn::Sub": "/mlp/${Stage}/"}


def test_explicit_names_are_unique_per_stack(template: dict[str, Any]) -> None:
    """Two stacks (even of the same Stage) in one account must not collide on a fixed name."""
    named = []
    for rid, res in template["Resources"].items():
        props = res.get("Properties") or {}
        for key in ("LogGroupName", "LayerName", "QueueName", "TopicName", "AlarmName", "FunctionName", "Name"):
            if key in props and isinstance(props[key], dict) and "Fn::Sub" in props[key]:
                named.append((rid, key, props[key]["Fn::Sub"]))
        for event in (props.get("Events") or {}).values():
            name = (event.get("Properties") or {}).get("Name")
            if name is not None:
                named.append((rid, "Events.Name", name["Fn::Sub"]))
    assert named
    for rid, key, text in named:
        if text.startswith("/aws/lambda/${"):  # follows the function's generated (unique) name
            continue
        assert "${AWS::StackName}" in text, f"{rid}.{key} = {text!r} collides between two stacks"
