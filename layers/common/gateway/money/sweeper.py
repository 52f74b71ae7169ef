"""The orphan sweeper: the EventBridge Scheduler target (every 5 minutes) that closes
reservations no request will ever settle (``ledger.settle_orphans``).

A reservation is an orphan once it is older than ``RESERVATION_ORPHAN_MINUTES`` (default 20,
above the 15-minute timeout of the longest-lived function). One that was marked as sent upstream
is charged its hold, marked estimated (the provider billed a call whose usage never arrived); one
that was not is released. Every close is one idempotent settle statement, so a retried or
duplicate delivery changes nothing. The handler raises only when the database cannot be used:
Scheduler/Lambda retry, then the DLQ raises an alarm. ``mlp doctor`` does the same by hand.
First it gives back carried holds idle past their time (``ledger.release_idle_standing``,
docs/money.md "Carried holds").
"""

from __future__ import annotations

from typing import Any

from ..config import get_settings
from ..loops import run_in_container_loop
from ..observability import count, logger, metrics
from . import ledger


async def run(event: Any) -> dict[str, Any]:
    minutes = get_settings().reservation_orphan_minutes
    idle = await ledger.release_idle_standing()
    count("IdleHoldsReleased", idle)
    closed = await ledger.settle_orphans(minutes)
    charged = [o for o in closed if o.charged > 0]
    count("OrphansCharged", len(charged))
    count("OrphansReleased", len(closed) - len(charged))
    summary = {"older_than_minutes": minutes, "idle_holds_released": idle,
               "charged": [o.request_id for o in charged],
               "released": [o.request_id for o in closed if o.charged == 0]}
    if closed:
        logger.warning("closed orphan reservations", extra=summary)
    return summary



@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_in_container_loop(run(event))
