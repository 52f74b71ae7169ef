"""Usage per UTC day x model served x API key, for the console's charts.

``GET /v1/usage/summary`` groups by day *or* model; a stacked chart by model or by key needs
both at once, and per key. One statement answers it, scoped to the caller like every account
query (user id first, on the ``(user_id, created_at)`` index).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from uuid import UUID

from .. import db
from ..account.usage import parse_time
from ..errors import BadRequest
from ..money.format import money

UTC = dt.UTC
DEFAULT_DAYS = 30
MAX_DAYS = 92
MAX_ROWS = 5000

BREAKDOWN_SQL = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, COALESCE(model_served, model_requested) AS model,
       api_key_id, count(*) AS requests,
       count(*) FILTER (WHERE status NOT IN ('ok', 'partial')) AS failed_requests,
       COALESCE(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       COALESCE(sum(completion_tokens), 0)::bigint AS completion_tokens,
       COALESCE(sum(charge), 0) AS charge
FROM usage_records
WHERE user_id = %(user_id)s AND created_at >= %(start)s AND created_at < %(end)s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
LIMIT %(n)s
"""


def window(from_: str | None, to: str | None, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end): default the last ``DEFAULT_DAYS`` UTC days including today; at most ``MAX_DAYS``."""
    now = now or dt.datetime.now(UTC)
    end = parse_time(to, "to", end_of_day=True) or now
    start = parse_time(from_, "from")
    if start is None:
        today = dt.datetime(end.year, end.month, end.day, tzinfo=UTC)
        start = today - dt.timedelta(days=DEFAULT_DAYS - 1)
    if start >= end:
        raise BadRequest("`from` must be before `to`.", param="from")
    if end - start > dt.timedelta(days=MAX_DAYS):
        raise BadRequest(f"The window is limited to {MAX_DAYS} days; narrow `from`/`to`.", param="from")
    return start, end


async def breakdown(user_id: UUID, from_: str | None, to: str | None) -> dict[str, Any]:
    start, end = window(from_, to)
    rows = await db.fetchall(BREAKDOWN_SQL, {"user_id": user_id, "start": start, "end": end, "n": MAX_ROWS + 1})
    truncated = len(rows) > MAX_ROWS
    data = []
    total = Decimal(0)
    for r in rows[:MAX_ROWS]:
        prompt, completion = int(r["prompt_tokens"]), int(r["completion_tokens"])
        data.append({"day": r["day"].isoformat(), "model": r["model"],
                     "api_key_id": str(r["api_key_id"]) if r["api_key_id"] else None,
                     "requests": int(r["requests"]), "failed_requests": int(r["failed_requests"]),
                     "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                     "charge": money(r["charge"])})
        total += r["charge"]
    return {"object": "usage_breakdown", "from": start.isoformat(), "to": end.isoformat(), "data": data,
            "truncated": truncated, "total_charge": money(total)}
