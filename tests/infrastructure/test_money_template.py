"""template.yaml for money safety (issue 9): the orphan sweeper's schedule (every 5 minutes, retry
policy, DLQ with an alarm), the HoldOverrun alarm, and the streaming function's timeout and
deadline."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import Settings
from infra.local.template import REPO_ROOT, load_template, serverless_functions


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


def sweeper_schedule(functions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    events = [e for e in (functions["SweeperFunction"].get("Events") or {}).values() if e["Type"] == "ScheduleV2"]
    assert len(events) == 1, "SweeperFunction needs exactly one ScheduleV2 event"
    return dict(events[0]["Properties"])


def test_sweeper_is_scheduled_every_5_minutes(template: dict[str, Any]) -> None:
    functions = serverless_functions(template)
    schedule = sweeper_schedule(functions)
    fn = functions["SweeperFunction"]
    assert fn["CodeUri"] == "functions/sweeper/" and fn["Handler"] == "app.handler"
    assert (REPO_ROOT / "functions" / "sweeper" / "app.py").is_file()
    assert [e["Type"] for e in fn["Events"].values()] == ["ScheduleV2"]
    assert schedule["ScheduleExpression"] == "rate(5 minutes)"
    assert schedule.get("State", "ENABLED") == "ENABLED" and schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Name"] == {"Fn::Sub": "${AWS::StackName}-orphan-sweeper"}
    assert json.loads(schedule["Input"])["action"] == "sweep-orphans"
    assert fn["Policies"] == [{"Ref": "CoreSecretsPolicy"}]  # the database URL only
    assert fn["Environment"]["Variables"]["SECRETS_AUDIENCES"] == "core"


def test_sweeper_retries_then_dead_letters_with_an_alarm(template: dict[str, Any]) -> None:
    functions = serverless_functions(template)
    schedule = sweeper_schedule(functions)
    retry = schedule["RetryPolicy"]
    assert 1 <= retry["MaximumRetryAttempts"] <= 185
    assert 60 <= retry["MaximumEventAgeInSeconds"] < 300, "retries give up before the next run is due"
    queue, attribute = schedule["DeadLetterConfig"]["Arn"]["Fn::GetAtt"]
    assert attribute == "Arn" and template["Resources"][queue]["Type"] == "AWS::SQS::Queue"
    invoke = functions["SweeperFunction"]["EventInvokeConfig"]
    assert invoke["MaximumEventAgeInSeconds"] < 300
    on_failure = invoke["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS" and on_failure["Destination"] == {"Fn::GetAtt": [queue, "Arn"]}
    alarms = [props for res in template["Resources"].values() if res["Type"] == "AWS::CloudWatch::Alarm"
              for props in [res["Properties"]]
              if {"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}} in props.get("Dimensions", [])]
    assert len(alarms) == 1
    assert alarms[0]["MetricName"] == "ApproximateNumberOfMessagesVisible" and alarms[0]["Threshold"] == 1
    assert {"Ref": "AlarmTopic"} in alarms[0]["AlarmActions"]


def test_orphans_are_older_than_any_request_can_live(template: dict[str, Any]) -> None:
    longest = max(props["Timeout"] for props in serverless_functions(template).values())
    assert Settings().reservation_orphan_minutes * 60 > longest, "the sweeper must never close a live request"


def test_hold_overrun_alarm(template: dict[str, Any]) -> None:
    alarm = template["Resources"]["HoldOverrunAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("MultiLLM", "HoldOverrun")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": {"Ref": "AWS::StackName"}}]  # this stack's only
    assert alarm["Threshold"] == 1 and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert {"Ref": "AlarmTopic"} in alarm["AlarmActions"]


def test_streaming_function_lives_15_minutes_and_its_deadline_leaves_time_to_settle(
        template: dict[str, Any]) -> None:
    functions = serverless_functions(template)
    stream = functions["QueryStreamFunction"]
    assert stream["Timeout"] == 900  # Function URL response streaming: at most 15 minutes
    deadline = float(stream["Environment"]["Variables"]["REQUEST_DEADLINE_S"])
    settings = Settings()
    assert deadline + settings.settle_retry_s + 30 < stream["Timeout"]
    # behind API Gateway the buffered deadline answers before its 30 s limit
    assert settings.buffered_deadline_s + 1 < 30
    assert settings.buffered_deadline_s + settings.deadline_margin_s <= functions["QueryFunction"]["Timeout"]
