"""The scheduled warming handler: discovery + a freshly rendered catalogue in the cache.

Invoked by an EventBridge Scheduler schedule (SAM ``ScheduleV2``, every 30 minutes). The schedule
sends this ``Input`` (Scheduler fills in the ``<aws.scheduler.*>`` context attributes)::

    {"action": "warm-models", "schedule_arn": "<aws.scheduler.schedule-arn>",
     "scheduled_time": "<aws.scheduler.scheduled-time>", "execution_id": "<aws.scheduler.execution-id>",
     "attempt_number": "<aws.scheduler.attempt-number>"}

An EventBridge *rule* ``Scheduled Event`` and an empty event work too (manual invokes).

Idempotent: discovery converges (a second run changes nothing), and a delivery of the same
schedule slot (``schedule_arn`` + ``scheduled_time``) that already succeeded is skipped.
A failing provider keeps its last good data and emits ``CatalogSourceFailure``; the handler only
raises -- so Lambda retries and finally the DLQ gets the event -- when every source failed or the
database write failed, after re-publishing the catalogue from Postgres so it is still served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from ..loops import close_container_loop, run_in_container_loop
from ..observability import logger, metrics
from . import cache, discovery

T = TypeVar("T")


class WarmFailed(RuntimeError):
    """Every catalogue source failed (or the write did): Lambda retries, then the DLQ."""


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    trigger_id: str | None
    schedule_arn: str | None = None
    scheduled_time: str | None = None
    execution_id: str | None = None
    attempt: int | None = None
    force: bool = False


def _placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("<aws.scheduler.")


def parse_event(event: Any) -> ScheduleInfo:
    """What this invocation is: a Scheduler delivery, an EventBridge rule event or a manual call."""
    if not isinstance(event, dict):
        return ScheduleInfo(trigger_id=None)
    force = event.get("force") is True
    arn, when = event.get("schedule_arn"), event.get("scheduled_time")
    if arn or when:
        arn = None if _placeholder(arn) else arn
        when = None if _placeholder(when) else when
        attempt_raw = event.get("attempt_number")
        attempt = int(attempt_raw) if isinstance(attempt_raw, str | int) and str(attempt_raw).isdigit() else None
        execution = event.get("execution_id")
        return ScheduleInfo(trigger_id=f"{arn}@{when}" if arn and when else None, schedule_arn=arn,
                            scheduled_time=when, execution_id=None if _placeholder(execution) else execution,
                            attempt=attempt, force=force)
    if event.get("detail-type") == "Scheduled Event":  # EventBridge rule (Schedule v1)
        resources = event.get("resources") or []
        rule = resources[0] if resources and isinstance(resources[0], str) else None
        when = event.get("time")
        return ScheduleInfo(trigger_id=f"{rule}@{when}" if rule and when else None, schedule_arn=rule,
                            scheduled_time=when, execution_id=event.get("id"), force=force)
    return ScheduleInfo(trigger_id=None, force=force)


async def run(event: Any) -> dict[str, Any]:
    info = parse_event(event)
    logger.append_keys(schedule_trigger=info.trigger_id, schedule_attempt=info.attempt)
    result = await discovery.discover(trigger="schedule", trigger_id=None if info.force else info.trigger_id,
                                      force=info.force, emit_metrics=True)
    summary = {k: v for k, v in result.to_dict().items() if k != "changes"}
    if result.status == "skipped":
        # Already synced for this slot; still make sure the cache holds the catalogue.
        catalogue = await cache.publish_from_database()
        summary.update(published_version=catalogue.version, active=len(catalogue))
        return summary
    if result.published_version is None:
        # discovery could not publish (or did not run the write): serve the last good catalogue
        try:
            catalogue = await cache.publish_from_database()
            summary.update(published_version=catalogue.version, active=len(catalogue))
        except Exception:
            logger.exception("could not publish the catalogue after the scheduled sync")
    if result.status == "failed":
        raise WarmFailed(f"catalogue sync failed: {result.error}")
    return summary


def shutdown() -> None:
    """Close what the handler's loop holds (tests, local runs)."""
    from .. import db
    from ..adapters.http_client import aclose_http_client

    async def close() -> None:
        await db.close_pool()
        await aclose_http_client()

    close_container_loop(close)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_in_container_loop(run(event))
