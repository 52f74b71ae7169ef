"""The EMF lines a query invocation writes (gateway.observability) are valid embedded metric format
and still carry every metric the CloudWatch alarms of template.yaml read, under the dimensions
and unit they are written with; the per-provider record keeps its metrics, units and dimensions.

The lines are written the way Lambda sees them: ``instrument()`` around a handler, in a fresh
interpreter with the template's environment resolved for one stack (as
tests/infrastructure/test_metrics_per_stack.py does), metrics on, stdout parsed line by line. The
handler records what a query invocation records (gateway.chat.service ``_finish``: the
per-provider record, ``UpstreamErrors`` on a failure, ``HoldOverrun`` per user on an overrun) and,
in the "every alarm" invocation, counts every metric an alarm reads (the code counts them with
``count()`` where the event happens: a database or Upstash outage, a Stripe webhook, a sign-up ...).

The EMF rules checked are the specification's
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html):
the ``_aws`` member with an integer ``Timestamp`` and a ``CloudWatchMetrics`` array of directives
(``Namespace``, ``Dimensions``: at least one dimension set of strings, ``Metrics``: at most 100
definitions with a ``Name`` and an optional ``Unit`` from CloudWatch's list), every referenced
target a member of the root node, a dimension target a string, a metric target a number or an
array of at most 100 numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from infra.local.template import REPO_ROOT, load_template

NAMESPACE = "MultiLLM"
STACK = "mlp-prod"
STACK_NAME = {"Ref": "AWS::StackName"}
UNITS = {"Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
         "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
         "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
         "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"}
# What a successful query writes per provider (gateway.chat.service._finish), name -> unit.
PER_PROVIDER = {"Requests": "Count", "PromptTokens": "Count", "CompletionTokens": "Count",
                "ProviderCostMicroUSD": "Count", "ChargeMicroUSD": "Count", "LatencyMs": "Milliseconds"}

_INVOKE = r"""
import sys
from types import SimpleNamespace
from gateway import observability
from gateway.observability import MetricUnit, count, emit

C, MS = MetricUnit.Count, MetricUnit.Milliseconds
alarm_metrics = sys.argv[1:]

def success(event, context):  # gateway.chat.service._finish, a request that ended "ok"
    emit({"provider": "openai"}, [("Requests", 1, C), ("PromptTokens", 6, C), ("CompletionTokens", 16, C),
                                  ("ProviderCostMicroUSD", 10.5, C), ("ChargeMicroUSD", 11.03, C),
                                  ("LatencyMs", 21, MS)])
    return {"statusCode": 200}

def every_alarm(event, context):  # a failed request, a charge above its hold, and every alarm's event
    count("UpstreamErrors")
    emit({"provider": "anthropic"}, [("Requests", 1, C), ("UpstreamErrors", 1, C)])
    count("HoldOverrun")
    emit({"user": "6f1c2a"}, [("HoldOverrun", 1, C), ("HoldOverrunMicroUSD", 2500.0, C)])
    for name in alarm_metrics:
        if name != "HoldOverrun":
            count(name)
    return {"statusCode": 502}

for name, handler in (("cold", success), ("warm", success), ("every_alarm", every_alarm)):
    observability.instrument(handler)({"requestContext": {"requestId": name}}, SimpleNamespace(aws_request_id=name))
    print("@@" + name, flush=True)
"""


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


def multillm_alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rid: r["Properties"] for rid, r in template["Resources"].items()
            if r["Type"] == "AWS::CloudWatch::Alarm" and (r.get("Properties") or {}).get("Namespace") == NAMESPACE}


@pytest.fixture(scope="module")
def lines(template: dict[str, Any]) -> dict[str, list[str]]:
    """Each invocation's stdout lines (cold success, warm success, every alarm)."""
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    child = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "AWS_LAMBDA_"))}
    child.update({name: STACK if env[name] == STACK_NAME else env[name]
                  for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE")})
    child.update(AWS_LAMBDA_FUNCTION_NAME=f"{STACK}-QueryFunction-AbC123", STAGE="test",
                 POWERTOOLS_METRICS_DISABLED="false", POWERTOOLS_LOG_LEVEL="INFO")
    names = sorted({p["MetricName"] for p in multillm_alarms(template).values()})
    out = subprocess.run([sys.executable, "-c", _INVOKE, *names], env=child, cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    by_invocation: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@@"):
            by_invocation[line[2:]] = current
            current = []
        else:
            current.append(line)
    assert set(by_invocation) == {"cold", "warm", "every_alarm"}, out
    return by_invocation


def assert_valid_emf(line: str) -> dict[str, Any]:
    """One stdout line checked against the EMF specification; the parsed record."""
    record = json.loads(line)
    assert isinstance(record, dict) and line == line.strip()
    aws = record["_aws"]
    assert isinstance(aws, dict) and type(aws["Timestamp"]) is int and aws["Timestamp"] > 1_500_000_000_000
    directives = aws["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert isinstance(directive["Namespace"], str) and 0 < len(directive["Namespace"]) <= 255
        assert isinstance(directive["Dimensions"], list) and directive["Dimensions"]
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for key in dimension_set:
                assert isinstance(record[key], str) and record[key], f"dimension target {key!r}"
        assert isinstance(directive["Metrics"], list) and 0 < len(directive["Metrics"]) <= 100
        for definition in directive["Metrics"]:
            assert set(definition) <= {"Name", "Unit", "StorageResolution"}, definition
            assert definition.get("Unit", "None") in UNITS, definition
            value = record[definition["Name"]]
            values = value if isinstance(value, list) else [value]
            assert 0 < len(values) <= 100, definition
            assert all(type(v) in (int, float) for v in values), f"metric target {definition['Name']!r}: {value!r}"
    return record


def published(records: list[dict[str, Any]]) -> dict[tuple[str, str, frozenset[tuple[str, str]]], tuple[str, float]]:
    """(namespace, metric, dimensions with values) -> (unit, sum of the values) over the records."""
    series: dict[tuple[str, str, frozenset[tuple[str, str]]], tuple[str, float]] = {}
    for record in records:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for definition in directive["Metrics"]:
                value = record[definition["Name"]]
                total = float(sum(value)) if isinstance(value, list) else float(value)
                for dimension_set in directive["Dimensions"]:
                    key = (directive["Namespace"], definition["Name"],
                           frozenset((d, record[d]) for d in dimension_set))
                    unit, before = series.get(key, (definition.get("Unit", "None"), 0.0))
                    series[key] = (unit, before + total)
    return series


def emf(lines: list[str]) -> list[dict[str, Any]]:
    return [assert_valid_emf(line) for line in lines if line.startswith('{"_aws"')]


def test_the_ten_alarms_on_our_namespace_read_service_counts_and_treat_missing_data_as_ok(
        template: dict[str, Any]) -> None:
    """A counter is written only when its event happens (no zeros): that is safe because every
    alarm on our metrics sums them against a threshold of at least 1 and treats missing data as
    not breaching."""
    alarms = multillm_alarms(template)
    assert len(alarms) == 10, sorted(alarms)
    for rid, props in alarms.items():
        assert props["Dimensions"] == [{"Name": "service", "Value": STACK_NAME}], rid
        assert props["Statistic"] == "Sum" and props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold", rid
        assert props["TreatMissingData"] == "notBreaching", rid
        threshold = props["Threshold"]
        if isinstance(threshold, dict):  # a parameter
            threshold = template["Parameters"][threshold["Ref"]]["Default"]
        assert float(threshold) >= 1, rid


def test_every_alarm_metric_is_written_in_one_valid_line(template: dict[str, Any],
                                                         lines: dict[str, list[str]]) -> None:
    records = emf(lines["every_alarm"])
    assert len(records) == 1 and len(lines["every_alarm"]) == 1, lines["every_alarm"]
    series = published(records)
    for rid, props in multillm_alarms(template).items():
        dims = frozenset((d["Name"], STACK if d["Value"] == STACK_NAME else d["Value"]) for d in props["Dimensions"])
        key = (NAMESPACE, props["MetricName"], dims)
        assert key in series, f"{rid} reads {key}; written: {sorted(series)}"
        unit, total = series[key]
        assert unit == props.get("Unit", "Count") and total >= 1, (rid, unit, total)
    # the failed request's and the overrun's own records, merged into the same line
    assert series[(NAMESPACE, "UpstreamErrors", frozenset({("provider", "anthropic"), ("service", STACK)}))] == (
        "Count", 1.0)
    assert series[(NAMESPACE, "Requests", frozenset({("provider", "anthropic"), ("service", STACK)}))] == (
        "Count", 1.0)
    assert series[(NAMESPACE, "HoldOverrunMicroUSD", frozenset({("user", "6f1c2a"), ("service", STACK)}))] == (
        "Count", 2500.0)


def test_a_successful_query_writes_one_line_per_provider_with_its_units(lines: dict[str, list[str]]) -> None:
    for invocation in ("cold", "warm"):
        records = emf(lines[invocation])
        assert len(records) == 1 and len(lines[invocation]) == 1, lines[invocation]
        series = published(records)
        openai = frozenset({("provider", "openai"), ("service", STACK)})
        per_provider = {name: unit for (ns, name, dims), (unit, _) in series.items()
                        if ns == NAMESPACE and dims == openai}
        assert per_provider == PER_PROVIDER
        assert series[(NAMESPACE, "ChargeMicroUSD", openai)][1] == 11.03
        function_wide = {name for (_, name, dims) in series if dims == frozenset({("service", STACK)})}
        assert function_wide == ({"ColdStart"} if invocation == "cold" else set())


def test_the_warm_success_line_is_no_longer_than_needed(lines: dict[str, list[str]]) -> None:
    """The bytes CloudWatch Logs bills for a successful query (bench/lambda_bench.py's "log bytes
    per invocation"): a metric's one value is a number, not an array of one, an integral one a
    JSON integer; no spaces, one directive."""
    (line,) = lines["warm"]
    record = json.loads(line)
    assert line == json.dumps(record, separators=(",", ":"))
    assert '"Requests":1,' in line and '"LatencyMs":21' in line and '"ProviderCostMicroUSD":10.5,' in line
    assert len(record["_aws"]["CloudWatchMetrics"]) == 1
