"""The models route family and its scheduled warming function in template.yaml: routes, the
EventBridge Scheduler schedule (every 30 min), its retry policy and DLQ, the function's own async
failure destination, the DLQ alarm, least privilege."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.catalog.warm import parse_event
from infra.local.template import REPO_ROOT, http_routes, load_template, serverless_functions


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


@pytest.fixture(scope="module")
def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return serverless_functions(template)


@pytest.fixture(scope="module")
def schedule(functions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    events = [e for e in (functions["ModelsWarmFunction"].get("Events") or {}).values() if e["Type"] == "ScheduleV2"]
    assert len(events) == 1, "ModelsWarmFunction needs exactly one ScheduleV2 event"
    return dict(events[0]["Properties"])


def getatt(value: Any) -> tuple[str, str]:
    assert isinstance(value, dict) and "Fn::GetAtt" in value, value
    resource, attribute = value["Fn::GetAtt"]
    return resource, attribute


def test_models_routes_and_function(template: dict[str, Any], functions: dict[str, dict[str, Any]]) -> None:
    routes = {(r.method, r.path): r.logical_id for r in http_routes(template)}
    assert routes[("GET", "/v1/models")] == "ModelsFunction"
    assert routes[("GET", "/v1/models/{model_id+}")] == "ModelsFunction"  # ids contain a slash: greedy
    assert {k for k, v in routes.items() if v == "ModelsFunction"} == {("GET", "/v1/models"),
                                                                       ("GET", "/v1/models/{model_id+}")}
    fn = functions["ModelsFunction"]
    assert fn["CodeUri"] == "functions/models/" and fn["Handler"] == "app.handler"
    assert (REPO_ROOT / "functions" / "models" / "app.py").is_file()
    assert fn["Timeout"] >= 25, "?refresh=true runs discovery inside the request"


def test_warm_function_is_scheduled_not_routed(functions: dict[str, dict[str, Any]]) -> None:
    fn = functions["ModelsWarmFunction"]
    assert fn["CodeUri"] == "functions/models/" and fn["Handler"] == "warm.handler"
    assert (REPO_ROOT / "functions" / "models" / "warm.py").is_file()
    assert [e["Type"] for e in fn["Events"].values()] == ["ScheduleV2"]
    assert fn["Timeout"] >= 25  # concurrent fetches bounded by CATALOG_FETCH_TIMEOUT_S (20 s) + the write


def test_schedule_every_30_minutes(schedule: dict[str, Any]) -> None:
    assert schedule["ScheduleExpression"] == "rate(30 minutes)"
    assert schedule.get("State", "ENABLED") == "ENABLED"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Name"] == {"Fn::Sub": "${AWS::StackName}-models-warm"}, "one schedule name per stack"


def test_schedule_retry_policy(schedule: dict[str, Any]) -> None:
    retry = schedule["RetryPolicy"]
    assert 1 <= retry["MaximumRetryAttempts"] <= 185
    # retries must give up before the next run is due (30 min)
    assert 60 <= retry["MaximumEventAgeInSeconds"] < 1800


def test_schedule_dead_letter_queue_and_function_failure_destination(template: dict[str, Any],
                                                                     functions: dict[str, dict[str, Any]],
                                                                     schedule: dict[str, Any]) -> None:
    queue, attribute = getatt(schedule["DeadLetterConfig"]["Arn"])
    assert attribute == "Arn"
    dlq = template["Resources"][queue]
    assert dlq["Type"] == "AWS::SQS::Queue"
    assert dlq["Properties"]["MessageRetentionPeriod"] == 1209600
    assert dlq["Properties"].get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in dlq["Properties"]
    # Scheduler invokes Lambda asynchronously: a failing run is retried by Lambda, then sent here too
    invoke = functions["ModelsWarmFunction"]["EventInvokeConfig"]
    assert 0 <= invoke["MaximumRetryAttempts"] <= 2
    assert invoke["MaximumEventAgeInSeconds"] < 1800
    on_failure = invoke["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS" and getatt(on_failure["Destination"]) == (queue, "Arn")


def test_dlq_depth_alarm(template: dict[str, Any], schedule: dict[str, Any]) -> None:
    queue, _ = getatt(schedule["DeadLetterConfig"]["Arn"])
    alarms = []
    for rid, res in template["Resources"].items():
        props = res.get("Properties") or {}
        if res["Type"] != "AWS::CloudWatch::Alarm" or props.get("Namespace") != "AWS/SQS":
            continue
        dims = {d["Name"]: d["Value"] for d in props.get("Dimensions", [])}
        if dims.get("QueueName") == {"Fn::GetAtt": [queue, "QueueName"]}:
            alarms.append((rid, props))
    assert len(alarms) == 1, "one alarm on the DLQ depth"
    _, props = alarms[0]
    assert props["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert props["Threshold"] == 1 and props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert {"Ref": "AlarmTopic"} in props["AlarmActions"]
    assert props["TreatMissingData"] == "notBreaching"


def test_source_failure_alarm_watches_the_metric_discovery_emits(template: dict[str, Any]) -> None:
    alarm = template["Resources"]["ModelsSourceFailureAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("MultiLLM", "CatalogSourceFailures")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": {"Ref": "AWS::StackName"}}]  # this stack's only
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "MultiLLM"
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}


def test_least_privilege(functions: dict[str, dict[str, Any]]) -> None:
    for name in ("ModelsFunction", "ModelsWarmFunction"):
        # the core and provider secrets only; SAM adds exactly sqs:SendMessage on the DLQ for the destination
        assert functions[name]["Policies"] == [{"Ref": "CoreSecretsPolicy"}, {"Ref": "ProvidersSecretsPolicy"}], name


def test_log_groups(template: dict[str, Any]) -> None:
    for name in ("ModelsFunction", "ModelsWarmFunction"):
        group = template["Resources"][f"{name}LogGroup"]["Properties"]
        assert group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{name}}}"}
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_schedule_input_is_what_the_handler_reads(schedule: dict[str, Any]) -> None:
    raw = schedule["Input"]
    doc = json.loads(raw)
    assert doc == {"action": "warm-models", "schedule_arn": "<aws.scheduler.schedule-arn>",
                   "scheduled_time": "<aws.scheduler.scheduled-time>",
                   "execution_id": "<aws.scheduler.execution-id>",
                   "attempt_number": "<aws.scheduler.attempt-number>"}
    arn = "arn:aws:scheduler:eu-west-1:1:schedule/default/s"
    delivered = json.loads(raw.replace("<aws.scheduler.schedule-arn>", arn)
                           .replace("<aws.scheduler.scheduled-time>", "2025-01-01T00:30:00Z")
                           .replace("<aws.scheduler.execution-id>", "abc")
                           .replace("<aws.scheduler.attempt-number>", "3"))
    info = parse_event(delivered)
    assert info.trigger_id == "arn:aws:scheduler:eu-west-1:1:schedule/default/s@2025-01-01T00:30:00Z"
    assert info.attempt == 3
