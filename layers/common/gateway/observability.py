"""Powertools Logger, Metrics and Tracer: one instance each per process.

Locally and in tests tracing is disabled (``POWERTOOLS_TRACE_DISABLED``) and metrics are only
flushed inside a Lambda invocation. ``instrument(handler)`` wraps a Mangum handler in the order
the Powertools docs show: logger (correlation id from the API Gateway event) outermost, then
metrics (flushed once per invocation, cold-start metric), then tracer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

if os.environ.get("STAGE", "local") in ("local", "test") and "AWS_LAMBDA_FUNCTION_NAME" not in os.environ:
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "MultiLLM")

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "multi-llm")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "MultiLLM"), service=SERVICE)


class _NoopTracer:
    """Stands in for Powertools' Tracer when tracing is disabled, so the X-Ray SDK (and the
    botocore it pulls in, ~0.3 s of cold start) is never imported. Same decorator API."""

    def _decorator(self, func: Any = None, **_: Any) -> Any:
        if func is None:
            return lambda f: f
        return func

    capture_lambda_handler = _decorator
    capture_method = _decorator

    def put_annotation(self, *_: Any, **__: Any) -> None:
        return None

    put_metadata = put_annotation


def _tracing_enabled() -> bool:
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() not in ("1", "true", "yes")


tracer: Any = Tracer(service=SERVICE) if _tracing_enabled() else _NoopTracer()

__all__ = ["MetricUnit", "count", "emit", "instrument", "logger", "metrics", "tracer"]

_METRICS_ON = not is_metrics_disabled()


def count(name: str, value: float = 1, unit: MetricUnit = MetricUnit.Count) -> None:
    """Add a metric to the current set (a no-op when Powertools metrics are disabled)."""
    if _METRICS_ON:
        metrics.add_metric(name=name, unit=unit, value=value)


def emit(dimensions: dict[str, str], values: list[tuple[str, float, MetricUnit]]) -> None:
    """Publish metrics under their own dimensions (e.g. per provider) as ONE EMF record now,
    independent of the function-wide set flushed at the end of the invocation."""
    if not _METRICS_ON:
        return
    m = EphemeralMetrics(namespace=metrics.namespace, service=SERVICE)
    for key, value in dimensions.items():
        m.add_dimension(name=key, value=value)
    for name, amount, unit in values:
        m.add_metric(name=name, unit=unit, value=amount)
    m.flush_metrics()


def instrument(handler: Callable[[dict[str, Any], Any], Any]) -> Callable[[dict[str, Any], Any], Any]:
    """Wrap a Lambda handler (a ``Mangum`` instance) with Powertools, in the documented order."""
    def lambda_handler(event: dict[str, Any], context: Any) -> Any:
        return handler(event, context)

    wrapped = tracer.capture_lambda_handler(lambda_handler, capture_response=False)
    wrapped = metrics.log_metrics(wrapped, capture_cold_start_metric=True)
    wrapped = logger.inject_lambda_context(wrapped, correlation_id_path=correlation_paths.API_GATEWAY_HTTP,
                                           clear_state=True)
    return wrapped


def in_lambda() -> bool:
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ
