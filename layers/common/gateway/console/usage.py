"""Usage per UTC day x model served x API key, for the console's charts.

``GET /v1/usage/summary`` groups by day *or* model; a stacked chart by model or by key needs
both at once, and per key. One statement answers it, scoped to the caller like every account
query (user id first, on the ``(user_id, created_at)`` index).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import AliasChoices, Field

from .. import db
from ..account.schema import Body, IsoTimestamp, example
from ..account.usage import parse_time
from ..errors import BadRequest
from ..money.format import MoneyStr, money

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


class BreakdownRow(Body):
    day: dt.date
    model: str = Field(description="the model served (else requested)")
    api_key_id: UUID | None
    requests: int
    failed_requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    charge: MoneyStr


class UsageBreakdown(Body):
    model_config = example({
        "object": "usage_breakdown", "from": "2025-02-01T00:00:00+00:00", "to": "2025-03-02T00:00:00+00:00",
        "data": [{"day": "2025-03-01", "model": "openai/gpt-4o-mini",
                  "api_key_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "requests": 3, "failed_requests": 0,
                  "prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45, "charge": "0.00300000"}],
        "truncated": False, "total_charge": "0.00300000"})

    object: Literal["usage_breakdown"] = "usage_breakdown"
    from_: IsoTimestamp = Field(serialization_alias="from", validation_alias=AliasChoices("from_", "from"))
    to: IsoTimestamp
    data: list[BreakdownRow] = Field(description=f"by day, model and key; at most {MAX_ROWS} rows")
    truncated: bool = Field(description=f"more than {MAX_ROWS} rows: narrow the window")
    total_charge: MoneyStr


async def breakdown(user_id: UUID, from_: str | None, to: str | None) -> UsageBreakdown:
    start, end = window(from_, to)
    rows = await db.fetchall(BREAKDOWN_SQL, {"user_id": user_id, "start": start, "end": end, "n": MAX_ROWS + 1})
    data = [BreakdownRow(day=r["day"], model=r["model"], api_key_id=r["api_key_id"], requests=r["requests"],
                         failed_requests=r["failed_requests"], prompt_tokens=r["prompt_tokens"],
                         completion_tokens=r["completion_tokens"],
                         total_tokens=int(r["prompt_tokens"]) + int(r["completion_tokens"]), charge=money(r["charge"]))
            for r in rows[:MAX_ROWS]]
    return UsageBreakdown(from_=start.isoformat(), to=end.isoformat(), data=data, truncated=len(rows) > MAX_ROWS,
                          total_charge=money(sum((r["charge"] for r in rows[:MAX_ROWS]), Decimal(0))))
