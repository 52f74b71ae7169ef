"""Each stack's metrics and alarms are its own. Two stacks in one account and region (mlp-staging and
mlp-prod, docs/deploy.md) write EMF records into the same ``MultiLLM`` namespace; what keeps them
apart is the ``service`` dimension, which Powertools adds to every record from
``POWERTOOLS_SERVICE_NAME``. So every function's environment sets it to the stack name, and every
alarm (and dashboard widget) on ``MultiLLM`` reads exactly the dimension set the code writes, with
``service`` = that stack's name. CloudWatch matches an alarm to a metric by namespace, name and the
exact, complete set of dimensions: a record of the other stack (or one with an extra dimension)
is another metric and can never fire the alarm."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local.template import REPO_ROOT, load_template, serverless_functions

NAMESPACE = "MultiLLM"
STACK_NAME = {"Ref": "AWS::StackName"}
_STACK_MARKER = "@@STACK@@"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


# ----------------------------------------------------------------------------- what reads MultiLLM
def _dims(dimensions: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in dimensions or []}


def _sub_text(value: Any) -> str | None:
    """A string, or the string of a ``Fn::Sub``, with ``${AWS::StackName}`` as a marker."""
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        value = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
    return value.replace("${AWS::StackName}", _STACK_MARKER) if isinstance(value, str) else None


def _expression_service(expression: str) -> Any:
    """The ``service`` a metric-math SEARCH filters on (None when it does not)."""
    match = re.search(r"""service\s*=\s*["']?([^"'\s)}]+)""", expression)
    return None if match is None else STACK_NAME if match.group(1) == _STACK_MARKER else match.group(1)


def _dashboard_metrics(body: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(namespace, metric, dimensions)`` of every metric of a dashboard body (a JSON string or a
    ``Fn::Sub`` of one, ``${AWS::StackName}`` read as the stack's name), with CloudWatch's ``"."``
    (same as the row above) shorthand resolved; a metric-math ``expression`` on the namespace (a
    SEARCH) is reported with the ``service`` it filters on, if any."""
    text = _sub_text(body)
    assert text is not None, f"unreadable DashboardBody {body!r}"
    for widget in json.loads(text).get("widgets", []):
        previous: list[Any] = []
        for row in (widget.get("properties") or {}).get("metrics", []):
            options = row[-1] if row and isinstance(row[-1], dict) else {}
            fields = [previous[i] if v == "." and i < len(previous) else v
                      for i, v in enumerate(x for x in row if not isinstance(x, dict))]
            expression = options.get("expression")
            if isinstance(expression, str) and NAMESPACE in expression:
                yield NAMESPACE, "<expression>", {"service": _expression_service(expression)}
            if len(fields) >= 2:
                previous = fields
                pairs: list[Any] = [STACK_NAME if v == _STACK_MARKER else v for v in fields[2:]]
                yield fields[0], fields[1], dict(zip(pairs[::2], pairs[1::2], strict=False))


def multillm_readers(template: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(resource, metric, dimensions)`` for every alarm metric (plain or in ``Metrics`` math) and
    dashboard metric on the MultiLLM namespace; a dashboard's stack name is ``{"Ref": "AWS::StackName"}``."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for rid, resource in template["Resources"].items():
        props = resource.get("Properties") or {}
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            if props.get("Namespace") == NAMESPACE:
                found.append((rid, props["MetricName"], _dims(props.get("Dimensions"))))
            for query in props.get("Metrics") or []:
                metric = (query.get("MetricStat") or {}).get("Metric") or {}
                if metric.get("Namespace") == NAMESPACE:
                    found.append((rid, metric["MetricName"], _dims(metric.get("Dimensions"))))
                expression = _sub_text(query.get("Expression"))
                if expression is not None and NAMESPACE in expression:
                    found.append((rid, "<expression>", {"service": _expression_service(expression)}))
        elif resource["Type"] == "AWS::CloudWatch::Dashboard":
            found += [(rid, metric, dims) for namespace, metric, dims in _dashboard_metrics(props.get("DashboardBody"))
                      if namespace == NAMESPACE]
    return found


def not_scoped_to_the_stack(template: dict[str, Any]) -> list[str]:
    return [f"{rid}: {metric} {dims}" for rid, metric, dims in multillm_readers(template)
            if dims.get("service") != STACK_NAME]


# ----------------------------------------------------------------------------- the template
def test_every_function_names_its_service_after_the_stack(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["POWERTOOLS_SERVICE_NAME"] == STACK_NAME
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE
    for name, props in serverless_functions(template).items():
        variables = props["Environment"]["Variables"]
        assert variables["POWERTOOLS_SERVICE_NAME"] == STACK_NAME, f"{name} overrides the service name"
        assert variables["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE, f"{name} overrides the namespace"


def test_every_alarm_and_dashboard_on_multillm_reads_its_own_stack(template: dict[str, Any]) -> None:
    readers = multillm_readers(template)
    assert len({rid for rid, _, _ in readers}) >= 10, "the alarms on our own metrics were not found"
    assert not not_scoped_to_the_stack(template)


def test_the_check_sees_an_unscoped_alarm_or_dashboard(template: dict[str, Any]) -> None:
    """The check above is not vacuous: a literal service value, a missing one, a math alarm and a
    dashboard widget (also through the "." shorthand and a SEARCH expression) are all caught."""
    bad = copy.deepcopy(template)
    res = bad["Resources"]
    res["HoldOverrunAlarm"]["Properties"]["Dimensions"] = [{"Name": "service", "Value": "multi-llm-gateway"}]
    res["DatabaseUnavailableAlarm"]["Properties"]["Dimensions"] = []
    res["MathAlarm"] = {"Type": "AWS::CloudWatch::Alarm", "Properties": {"Metrics": [
        {"Id": "m", "MetricStat": {"Metric": {"Namespace": NAMESPACE, "MetricName": "UpstreamErrors",
                                              "Dimensions": [{"Name": "service", "Value": STACK_NAME}]}}},
        {"Id": "n", "MetricStat": {"Metric": {"Namespace": NAMESPACE, "MetricName": "Requests"}}}]}}
    res["Board"] = {"Type": "AWS::CloudWatch::Dashboard", "Properties": {"DashboardBody": {"Fn::Sub": json.dumps(
        {"widgets": [{"type": "metric", "properties": {"metrics": [
            [NAMESPACE, "Requests", "service", "${AWS::StackName}"],
            [".", "UpstreamErrors", ".", "mlp-staging"],
            [{"expression": f"SEARCH('{{{NAMESPACE},service}} MetricName=\"Requests\"', 'Sum', 300)"}],
            [{"expression": f"SEARCH('{{{NAMESPACE},provider,service}} service=\"${{AWS::StackName}}\"', 'Sum', 300)"}],
            ["AWS/Lambda", "Errors", "FunctionName", "x"]]}}]})}}}
    assert sorted(not_scoped_to_the_stack(bad)) == sorted([
        "Board: <expression> {'service': None}",
        "Board: UpstreamErrors {'service': 'mlp-staging'}",
        "DatabaseUnavailableAlarm: DatabaseUnavailable {}",
        "HoldOverrunAlarm: HoldOverrun {'service': 'multi-llm-gateway'}",
        "MathAlarm: Requests {}",
    ])


# ----------------------------------------------------------------------------- against the records
_WRITE_RECORDS = """
import sys
from types import SimpleNamespace
from gateway import observability

def handler(event, context):
    for name in sys.argv[1:]:
        observability.count(name)
    return {"statusCode": 200}

observability.instrument(handler)({"requestContext": {"requestId": "r"}}, SimpleNamespace(aws_request_id="i"))
"""


def _records(stack: str, template: dict[str, Any], metrics: list[str]) -> list[dict[str, Any]]:
    """The EMF records a function of stack ``stack`` writes when the code counts ``metrics``: the
    layer run in a fresh interpreter with the template's environment resolved for that stack."""
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    resolved = {name: stack if env[name] == STACK_NAME else env[name]
                for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE")}
    assert all(isinstance(v, str) for v in resolved.values()), resolved
    child = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    child.update(resolved, AWS_LAMBDA_FUNCTION_NAME=f"{stack}-QueryFunction-AbC123", STAGE="test",
                 POWERTOOLS_METRICS_DISABLED="false", POWERTOOLS_LOG_LEVEL="ERROR")
    out = subprocess.run([sys.executable, "-c", _WRITE_RECORDS, *metrics], env=child, cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def _published(records: list[dict[str, Any]]) -> set[tuple[str, str, frozenset[tuple[str, str]]]]:
    """Every (namespace, metric, complete dimension set with values) the records publish."""
    series = set()
    for record in records:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                dims = frozenset((name, record[name]) for name in dimension_set)
                series |= {(directive["Namespace"], m["Name"], dims) for m in directive["Metrics"]}
    return series


def test_alarms_match_exactly_the_series_their_own_stack_writes(template: dict[str, Any]) -> None:
    """Each MultiLLM alarm (the function-wide counts the code makes with ``count()``), resolved for
    mlp-prod, is one of the series mlp-prod's functions publish, and none that mlp-staging's do."""
    alarms = [(rid, metric, dims) for rid, metric, dims in multillm_readers(template)
              if template["Resources"][rid]["Type"] == "AWS::CloudWatch::Alarm"]
    names = sorted({metric for _, metric, _ in alarms})
    prod = _published(_records("mlp-prod", template, names))
    staging = _published(_records("mlp-staging", template, names))
    assert prod and staging and not prod & staging
    for rid, metric, dims in alarms:
        wanted = (NAMESPACE, metric, frozenset((k, "mlp-prod" if v == STACK_NAME else v) for k, v in dims.items()))
        assert wanted in prod, f"{rid} reads {wanted}, which mlp-prod does not publish: {sorted(prod)}"
        assert wanted not in staging, f"{rid} would fire on mlp-staging's records"
