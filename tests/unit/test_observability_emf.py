"""``emit()``'s EMF records (gateway.observability): the record built without a Powertools
``EphemeralMetrics`` per call (``_record``, issue 15 fifth pass) is the one Powertools' own checked
path makes (``_record_checked``: ``add_dimension`` / ``add_metric`` / ``serialize_metric_set``),
byte for byte once serialized, and anything Powertools would check, convert, warn about or refuse
takes the checked path."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from gateway import observability
from gateway.observability import MetricUnit

C, MS = MetricUnit.Count, MetricUnit.Milliseconds

_REQUEST = [("Requests", 1, C), ("PromptTokens", 12, C), ("CompletionTokens", 16, C),
            ("ProviderCostMicroUSD", 12.5, C), ("ChargeMicroUSD", 15.000001, C), ("LatencyMs", 3, MS),
            ("TimeToFirstByteMs", 0, MS)]


def _line(record: dict[str, Any]) -> str:
    record = json.loads(json.dumps(record))
    record["_aws"]["Timestamp"] = 0
    return json.dumps(record, separators=(",", ":"))


@pytest.mark.parametrize(("dimensions", "values"), [
    ({"provider": "openai"}, _REQUEST),
    ({"provider": "none"}, [("Requests", 1, C), ("UpstreamErrors", 1, C)]),
    ({"user": "6f1c2a", "x": "y"}, [("HoldOverrun", 1, C), ("HoldOverrunMicroUSD", 0.25, C)]),
    ({}, [("Webhook", 1, C)]),
    # the same name twice: one metric, both values, the last unit
    ({"provider": "openai"}, [("LatencyMs", 3, MS), ("Requests", 1, C), ("LatencyMs", 4.5, MetricUnit.Seconds)]),
    # names with surrounding spaces are stripped by Powertools
    ({"provider": "openai"}, [(" Requests ", 1, C)]),
    ({"provider": "a b"}, [("x" * 255, -1, MetricUnit.Bytes), ("Big", 10**18, MetricUnit.CountPerSecond)]),
])
def test_the_record_is_the_one_powertools_makes(dimensions: dict[str, str], values: list[Any]) -> None:
    fast = observability._record(dimensions, values, True)
    assert fast is not None
    assert _line(fast) == _line(observability._record_checked(dimensions, values, True))
    assert isinstance(fast["_aws"]["Timestamp"], int) and fast["_aws"]["Timestamp"] > 1_700_000_000_000


def test_an_example_record_in_full() -> None:
    record = observability._record({"provider": "openai"}, [("Requests", 1, C), ("LatencyMs", 3, MS)], True)
    assert record is not None
    assert _line(record) == (
        '{"_aws":{"Timestamp":0,"CloudWatchMetrics":[{"Namespace":"' + observability.metrics.namespace + '",'
        '"Dimensions":[["provider","service"]],"Metrics":[{"Name":"Requests","Unit":"Count"},'
        '{"Name":"LatencyMs","Unit":"Milliseconds"}]}]},"provider":"openai","service":"'
        + observability.SERVICE + '","Requests":[1.0],"LatencyMs":[3.0]}')


@pytest.mark.parametrize(("dimensions", "values", "service_dimension"), [
    ({"provider": ""}, [("Requests", 1, C)], True),  # Powertools warns and drops the dimension
    ({"provider": "  "}, [("Requests", 1, C)], True),
    ({" ": "x"}, [("Requests", 1, C)], True),
    ({"provider": 7}, [("Requests", 1, C)], True),  # converted to "7"
    ({"service": "other"}, [("Requests", 1, C)], True),  # our own service dimension
    ({"provider": "openai"}, [("Requests", True, C)], True),  # a bool, a Decimal: numbers.Number
    ({"provider": "openai"}, [("Requests", Decimal("1.5"), C)], True),
    ({"provider": "openai"}, [("Requests", 1, "Count")], True),  # a unit given as a string
    ({"provider": "openai"}, [("Requests", 1, C)], False),  # Powertools reads POWERTOOLS_SERVICE_NAME then
    ({f"d{i}": "v" for i in range(29)}, [("Requests", 1, C)], True),  # 29 + service: too many
    ({"provider": "openai"}, [(f"m{i}", 1, C) for i in range(100)], True),  # Powertools flushes at 100
])
def test_what_powertools_would_check_takes_its_path(dimensions: dict[str, Any], values: list[Any],
                                                    service_dimension: bool) -> None:
    assert observability._record(dimensions, values, service_dimension) is None


@pytest.mark.parametrize("values", [[("", 1, C)], [("x" * 256, 1, C)], [("Requests", "1", C)],
                                    [("Requests", 1, "Parsecs")]])
def test_invalid_metrics_still_raise_powertools_errors(values: list[Any]) -> None:
    assert observability._record({"provider": "openai"}, values, True) is None
    with pytest.raises(Exception) as err:
        observability._record_checked({"provider": "openai"}, values, True)
    assert type(err.value).__module__.startswith("aws_lambda_powertools")


@pytest.fixture
def deferring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(observability, "_METRICS_ON", True)
    monkeypatch.setattr(observability, "_deferring", True)
    observability._pending.clear()
    yield
    observability._pending.clear()


def test_emit_holds_the_record_for_the_invocations_line(deferring: None) -> None:
    observability.emit({"provider": "openai"}, _REQUEST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        observability.emit({"provider": ""}, [("Requests", 1, C)])  # the checked path: warns, no dimension
    assert [str(w.message) for w in caught if "provider" in str(w.message)]
    first, second = observability._pending
    assert _line(first) == _line(observability._record_checked({"provider": "openai"}, _REQUEST, True))
    assert second["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]] and "provider" not in second


def test_values_are_written_in_the_fewest_bytes_the_specification_allows() -> None:
    """``_compact_values`` (flush_metrics, before each line is printed): a metric's one value is that
    number, an integral float below 1e15 an integer; several values stay an array; members that are
    not metric targets (dimensions) stay as they are."""
    record: dict[str, Any] = {
        "_aws": {"Timestamp": 0, "CloudWatchMetrics": [{"Namespace": "N", "Dimensions": [["provider"]], "Metrics": [
            {"Name": "One", "Unit": "Count"}, {"Name": "Two"}, {"Name": "Big"}, {"Name": "Half"}]}]},
        "provider": "7.0", "One": [1.0], "Two": [2.0, 3.5], "Big": [1e16], "Half": [0.5], "Other": [4.0]}
    observability._compact_values(record)
    assert json.dumps(record, separators=(",", ":")).endswith(
        '"provider":"7.0","One":1,"Two":[2,3.5],"Big":1e+16,"Half":0.5,"Other":[4.0]}')
