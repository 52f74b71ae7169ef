"""Powertools Logger and Metrics: one instance each per process.

``instrument(handler)`` wraps a Mangum handler: log keys (Lambda request id, cold start, the API
Gateway request id as correlation id), then metrics, flushed once per invocation as ONE EMF record (see
``flush_metrics``), with a ``ColdStart`` count in it on the first invocation.

``instrument_asgi(app)`` does the same for the streaming function, which runs the app under
uvicorn behind the Lambda Web Adapter: there is no handler to decorate, and the execution
environment is frozen as soon as a response completes. So per request it adds the Lambda request
id (from the adapter's ``x-amzn-lambda-context`` header) to every log line, and flushes the
metrics just BEFORE the last body message of the response is sent (after the stream's own
settlement), so they are written while the invocation is still running.

No X-Ray SDK: the Powertools tracer extra pulled the maintenance-mode aws-xray-sdk and ~24 MiB of
botocore into the layer for little; the template's ``Tracing`` parameter (PassThrough by default,
docs/deploy.md) can still have Lambda record its own segments. Locally and in tests metrics are
only flushed inside a Lambda invocation.

Lambda's JSON log format passes these lines unchanged (they are JSON already); its application
log level is capped at INFO by the template because EMF records carry no "level" key (see
``apply_stricter_log_level``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.constants import MAX_DIMENSIONS, MAX_METRICS

if os.environ.get("STAGE", "local") in ("local", "test") and "AWS_LAMBDA_FUNCTION_NAME" not in os.environ:
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "MultiLLM")

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "multi-llm")
logger = Logger(service=SERVICE)


def apply_stricter_log_level(environ: Mapping[str, str] = os.environ) -> None:
    """Powertools prefers Lambda's application log level (``AWS_LAMBDA_LOG_LEVEL``, advanced
    logging controls) to ``POWERTOOLS_LOG_LEVEL``. template.yaml caps Lambda's at INFO: a stdout
    line without a "level" key, such as every EMF record, is INFO to Lambda and would be dropped at
    WARN. So a stricter ``POWERTOOLS_LOG_LEVEL`` (the LogLevel parameter: WARNING, ERROR) is
    applied here, to the logger itself."""
    if not environ.get("AWS_LAMBDA_LOG_LEVEL"):
        return
    wanted = logging.getLevelName((environ.get("POWERTOOLS_LOG_LEVEL") or environ.get("LOG_LEVEL") or "").upper())
    if isinstance(wanted, int) and wanted > logger.log_level:
        logging.getLogger(logger.name).setLevel(wanted)


apply_stricter_log_level()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "MultiLLM"), service=SERVICE)

__all__ = ["MetricUnit", "count", "emit", "instrument", "instrument_asgi", "logger", "metrics"]

_METRICS_ON = not is_metrics_disabled()
# Inside an instrumented invocation, ``emit()`` records are held here and written with the
# function-wide set by ``flush_metrics`` (one log line per invocation instead of one per record).
_pending: list[dict[str, Any]] = []
_deferring = False


def metrics_on() -> bool:
    """Whether ``count`` and ``emit`` write anything (Powertools metrics not disabled)."""
    return _METRICS_ON


def count(name: str, value: float = 1, unit: MetricUnit = MetricUnit.Count) -> None:
    """Add a metric to the current set (a no-op when Powertools metrics are disabled)."""
    if _METRICS_ON:
        metrics.add_metric(name=name, unit=unit, value=value)


def emit(dimensions: dict[str, str], values: list[tuple[str, float, MetricUnit]], *,
         service_dimension: bool = True) -> None:
    """Publish metrics under their own dimensions (e.g. per provider) as ONE EMF record now,
    independent of the function-wide set flushed at the end of the invocation (plus the
    ``service`` dimension unless ``service_dimension`` is false)."""
    if not _METRICS_ON:
        return
    if _deferring:
        record = _record(dimensions, values, service_dimension)
        _pending.append(record if record is not None else _record_checked(dimensions, values, service_dimension))
        return
    _ephemeral(dimensions, values, service_dimension).flush_metrics()


def _ephemeral(dimensions: Mapping[str, str], values: list[tuple[str, float, MetricUnit]],
               service_dimension: bool) -> EphemeralMetrics:
    """The record's metric set built through Powertools' own checks (``add_dimension``, ``add_metric``)."""
    m = EphemeralMetrics(namespace=metrics.namespace, service=SERVICE if service_dimension else None)
    for key, value in dimensions.items():
        m.add_dimension(name=key, value=value)
    for name, amount, unit in values:
        m.add_metric(name=name, unit=unit, value=amount)
    return m


def _record_checked(dimensions: Mapping[str, str], values: list[tuple[str, float, MetricUnit]],
                    service_dimension: bool) -> dict[str, Any]:
    return dict(_ephemeral(dimensions, values, service_dimension).serialize_metric_set())


# One serializer for ``_record``: Powertools' ``serialize_metric_set`` with the metric and
# dimension sets passed in (no state of its own: no service, no default dimensions).
_serializer = EphemeralMetrics(namespace="-", service="")
_UNIT_VALUES = {unit: unit.value for unit in MetricUnit}


def _record(dimensions: Mapping[str, str], values: list[tuple[str, float, MetricUnit]],
            service_dimension: bool) -> dict[str, Any] | None:
    """The EMF record ``_record_checked`` makes, without its per-record costs (an
    ``EphemeralMetrics`` built per record, its unit lists rebuilt, a debug message formatted per
    metric): the same sets, serialized by the same Powertools ``serialize_metric_set``. Only for
    what passes Powertools' checks unchanged (non-blank str dimensions, int/float values,
    ``MetricUnit`` units, metric names of 1-255 chars, no ``service`` key of our own); anything
    else returns None and takes the checked path (its warnings, errors and conversions)."""
    namespace = metrics.namespace
    if namespace is None or not service_dimension or len(values) >= MAX_METRICS or "service" in dimensions:
        return None  # (without the service dimension Powertools still reads POWERTOOLS_SERVICE_NAME)
    dims: dict[str, str] = {}
    for key, value in dimensions.items():
        if type(value) is not str or not value.strip() or not key.strip():
            return None
        dims[key] = value
    if SERVICE:
        dims["service"] = SERVICE
    metric_set: dict[str, dict[str, Any]] = {}
    for name, amount, unit in values:
        kind = type(amount)
        unit_value = _UNIT_VALUES.get(unit) if type(unit) is MetricUnit else None
        name = name.strip()
        if unit_value is None or (kind is not int and kind is not float) or not 0 < len(name) <= 255:
            return None
        metric = metric_set.get(name)
        if metric is None:
            metric_set[name] = {"Unit": unit_value, "StorageResolution": 60, "Value": [float(amount)]}
        else:
            metric["Unit"] = unit_value
            metric["Value"].append(float(amount))
    if len(dims) > MAX_DIMENSIONS:
        return None
    _serializer.namespace = namespace
    return dict(_serializer.serialize_metric_set(metrics=metric_set, dimensions=dims, metadata={}))


def instrument(handler: Callable[[dict[str, Any], Any], Any]) -> Callable[[dict[str, Any], Any], Any]:
    """Wrap a Lambda handler (a ``Mangum`` instance): the invocation's log keys, then its metrics
    written once at its end (``flush_metrics``).

    The log keys are the ones the streaming function's lines carry (``function_request_id``,
    ``cold_start``) plus the API Gateway request id as ``correlation_id``; not Powertools'
    ``inject_lambda_context`` set (function name, ARN, memory size, X-Ray id: ~200 bytes on every
    line that the log group and the platform's REPORT line already say)."""
    def lambda_handler(event: dict[str, Any], context: Any) -> Any:
        global _cold, _deferring
        request_context = event.get("requestContext") if isinstance(event, dict) else None
        _clear_log_state()  # keys an earlier invocation added (as inject_lambda_context(clear_state=True))
        logger.append_keys(function_request_id=getattr(context, "aws_request_id", None), cold_start=_cold,
                           correlation_id=(request_context or {}).get("requestId"))
        if _cold and _METRICS_ON:
            metrics.add_metric(name="ColdStart", unit=MetricUnit.Count, value=1)
        _cold = False
        _deferring = True
        try:
            return handler(event, context)
        finally:
            _deferring = False
            flush_metrics()
            logger.remove_keys([*_LOG_KEYS, "correlation_id"])

    return lambda_handler


# The formatter and its keys (in order) right after the last ``logger.clear_state()``.
_clean_log_state: tuple[Any, list[tuple[str, Any]]] | None = None


def _clear_log_state() -> None:
    """``logger.clear_state()`` (which builds a new formatter: ~3 µs), skipped when the formatter is
    the one that call left and holds exactly the keys it had then, in the same order: an
    invocation that added no keys of its own beyond the ones ``instrument`` removes (issue 15
    lever 35)."""
    global _clean_log_state
    formatter: Any = logger.registered_formatter
    clean = _clean_log_state
    if clean is not None and clean[0] is formatter and list(formatter.log_format.items()) == clean[1]:
        return
    logger.clear_state()
    formatter = logger.registered_formatter
    _clean_log_state = (formatter, list(formatter.log_format.items()))


# ----------------------------------------------------------------------------- Lambda Web Adapter
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
_LOG_KEYS = ("function_request_id", "cold_start")
_cold = True


_CONTEXT_KEY = "mlp.lambda_context"  # the parsed context, kept in the scope for the request's other readers


def adapter_context(scope: Scope) -> dict[str, Any]:
    """The Lambda context the Web Adapter forwards as JSON in ``x-amzn-lambda-context`` (read
    once per request: ``instrument_asgi`` and the chat deadline both ask; do not modify it)."""
    known = scope.get(_CONTEXT_KEY)
    if known is not None:
        return known  # type: ignore[no-any-return]
    context: dict[str, Any] = {}
    for name, value in scope.get("headers", ()):
        if name == b"x-amzn-lambda-context":
            try:
                data = json.loads(value)
            except ValueError:
                break
            if isinstance(data, dict):
                context = data
            break
    scope[_CONTEXT_KEY] = context
    return context


def flush_metrics() -> None:
    """Write the function-wide metric set and the ``emit()`` records held since the last flush
    as ONE EMF line: EMF allows several metric directives (each with its own dimensions) in one
    record whose metric values are shared top-level keys, so records merge as long as a key they
    share has the same value (``Requests: 1`` function-wide and per provider); a record that
    would contradict the merged one is written on its own line."""
    records = list(_pending)
    _pending.clear()
    if not _METRICS_ON:
        return
    if metrics.metric_set:
        records.insert(0, dict(metrics.serialize_metric_set()))
        metrics.clear_metrics()
    if not records:
        return
    merged, alone = records[0], []
    for record in records[1:]:
        if all(merged.get(k, v) == v for k, v in record.items() if k != "_aws"):
            merged["_aws"]["CloudWatchMetrics"].extend(record["_aws"]["CloudWatchMetrics"])
            merged.update((k, v) for k, v in record.items() if k != "_aws")
        else:
            alone.append(record)
    for record in (merged, *alone):
        _compact_values(record)
        print(json.dumps(record, separators=(",", ":")))


# Below this an integral float is written as "123.0" by json (repr); from 1e16 on as "1e+16", shorter than the int.
_INT_SAFE = 1e15


def _compact_values(record: dict[str, Any]) -> None:
    """Write the record's metric values in fewer bytes, as the EMF specification allows: an integral
    value as a JSON integer (Powertools stores every value as a float, ``[1.0]``; the specification
    only asks for numbers), and a metric's one value as that number instead of an array of one (a
    target MAY be a number or an array of numbers): ``[1.0]`` -> ``1``, four bytes less per
    single integral value, 20 of the 560 bytes of a successful query's record (issue 15, log
    bytes). Only the metric targets the directives name change, in the record itself (no copy):
    dimensions and other members stay as Powertools wrote them."""
    for directive in record["_aws"]["CloudWatchMetrics"]:
        for definition in directive["Metrics"]:
            name = definition["Name"]
            values = record.get(name)
            if type(values) is list:
                for i, value in enumerate(values):
                    if type(value) is float and value.is_integer() and -_INT_SAFE < value < _INT_SAFE:
                        values[i] = int(value)
                if len(values) == 1:
                    record[name] = values[0]


def instrument_asgi(app: ASGIApp) -> ASGIApp:
    """The streaming function's ``instrument``: Lambda request id in the logs, metrics flushed
    before each response completes (see the module docstring)."""
    async def wrapped(scope: Scope, receive: Callable[[], Awaitable[Message]],
                      send: Callable[[Message], Awaitable[None]]) -> None:
        global _cold
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        context = adapter_context(scope)
        global _deferring
        keys = {"function_request_id": str(context.get("request_id") or "")[:64] or None, "cold_start": _cold}
        logger.append_keys(**keys)
        if _cold and _METRICS_ON:
            metrics.add_metric(name="ColdStart", unit=MetricUnit.Count, value=1)
        _cold = False
        flushed = False
        # The Web Adapter sends one request at a time: this invocation's emit() records are held
        # for its one EMF line (a local uvicorn with concurrent requests has metrics off).
        _deferring = True

        async def send_and_flush(message: Message) -> None:
            nonlocal flushed
            global _deferring
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not flushed:
                flushed = True
                _deferring = False
                flush_metrics()
            await send(message)

        try:
            await app(scope, receive, send_and_flush)
        finally:
            if not flushed:  # no complete response (the client went away, an error mid-stream)
                _deferring = False
                flush_metrics()
            logger.remove_keys(list(_LOG_KEYS))

    return wrapped


def in_lambda() -> bool:
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ
