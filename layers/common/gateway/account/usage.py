"""What the caller sees of their money: balance + quota, usage records (cursor-paginated,
newest first) and usage totals per day or model. Every query is scoped by the caller's user id
(the first condition of each statement); nothing here takes a user id from the request."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from .. import db
from ..auth import Principal
from ..config import get_settings
from ..errors import BadRequest, NotFound
from ..money import ledger
from ..money.format import money
from ..money.pricing import to_credit
from .schema import (
    Balance,
    BalanceKey,
    Credits,
    KeyInfo,
    KeyRateLimit,
    Quota,
    RateLimit,
    UsageByDay,
    UsageByModel,
    UsagePage,
    UsageRecord,
    UsageSummary,
    UsageTotals,
)

UTC = dt.UTC
MAX_PAGE = 100
_OFFSET_AS_SPACE = re.compile(r" (\d{2}:?\d{2})$")  # "+00:00" whose "+" became a space in a query string


# --------------------------------------------------------------------------- parsing
def parse_time(value: str | None, param: str, *, end_of_day: bool = False) -> dt.datetime | None:
    """ISO 8601 date or date-time (naive = UTC) or Unix seconds. A bare date as an upper bound
    (``end_of_day``) means the end of that day, so ``to=2025-01-31`` includes the 31st."""
    if value is None or not value.strip():
        return None
    v = _OFFSET_AS_SPACE.sub(r"+\1", value.strip())
    try:
        if re.fullmatch(r"\d{9,11}", v):
            return dt.datetime.fromtimestamp(int(v), UTC)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            d = dt.date.fromisoformat(v)
            start = dt.datetime(d.year, d.month, d.day, tzinfo=UTC)
            return start + dt.timedelta(days=1) if end_of_day else start
        parsed = dt.datetime.fromisoformat(v)
    except (ValueError, OverflowError, OSError):
        parsed = None
    if parsed is None:
        raise BadRequest(f"`{param}` must be an ISO 8601 date or date-time (e.g. 2025-01-31 or "
                         f"2025-01-31T12:00:00Z) or a Unix timestamp.", param=param)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _range(from_: str | None, to: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    start = parse_time(from_, "from")
    end = parse_time(to, "to", end_of_day=True)
    if start is not None and end is not None and start >= end:
        raise BadRequest("`from` must be before `to`.", param="from")
    return start, end


def encode_cursor(created_at: dt.datetime, row_id: int) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, row_id = raw.partition("|")
        parsed = dt.datetime.fromisoformat(ts)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, int(row_id)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise BadRequest("Invalid `cursor`: pass back the `next_cursor` of the previous page.",
                         param="cursor") from None


def _filters(user_id: UUID | str, start: dt.datetime | None, end: dt.datetime | None, model: str | None,
             api_key_id: UUID | None) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions (fixed text, chosen here) and their parameters; the user comes first, always."""
    conds = ["user_id = %(user_id)s"]
    params: dict[str, Any] = {"user_id": user_id}
    if start is not None:
        conds.append("created_at >= %(start)s")
        params["start"] = start
    if end is not None:
        conds.append("created_at < %(end)s")
        params["end"] = end
    if model:
        conds.append("(model_requested = %(model)s OR model_served = %(model)s)")
        params["model"] = model
    if api_key_id is not None:
        conds.append("api_key_id = %(api_key_id)s")
        params["api_key_id"] = api_key_id
    return conds, params


# --------------------------------------------------------------------------- balance
async def balance(principal: Principal) -> Balance:
    row = await db.fetchone(
        "SELECT u.tier, b.balance, b.reserved, b.period_start, b.period_requests, "
        "(SELECT COALESCE(sum(r.amount), 0) FROM reservations r WHERE r.user_id = u.id "
        "AND r.standing_until IS NOT NULL) AS carried, "
        "k.id AS key_id, k.name AS key_name, k.rpm AS key_rpm, k.spend_cap, k.spent, k.reserved AS key_reserved "
        "FROM users u JOIN balances b ON b.user_id = u.id "
        "LEFT JOIN api_keys k ON k.id = %(key_id)s AND k.user_id = u.id "
        "WHERE u.id = %(user_id)s", {"user_id": principal.user_id, "key_id": principal.key_id})
    if row is None:
        raise NotFound("Account not found.", code="user_not_found")
    settings = get_settings()
    tier = settings.tier(row["tier"])
    period = ledger.period_start()
    used = row["period_requests"] if row["period_start"] >= period else 0
    limit = tier.monthly_quota
    key: BalanceKey | None = None
    if row["key_id"] is not None:
        capped = row["spend_cap"] is not None
        key = BalanceKey(
            id=row["key_id"], name=row["key_name"], rpm=row["key_rpm"],
            spend_cap=money(row["spend_cap"]) if capped else None,
            spent=money(row["spent"]) if capped else None,
            remaining=money(max(row["spend_cap"] - row["spent"] - row["key_reserved"], Decimal(0)))
            if capped else None)
    return Balance(
        balance=money(row["balance"] - row["reserved"]), reserved=money(row["reserved"]), carried=money(row["carried"]),
        total=money(row["balance"]), tier=tier.name, rate_limit=RateLimit(requests_per_minute=tier.rpm),
        quota=Quota(period_start=period, resets_at=ledger.next_period_start(), requests_used=used,
                    requests_limit=limit, requests_remaining=None if limit is None else max(limit - used, 0)),
        api_key=key)


# --------------------------------------------------------------------------- usage records
def _record(r: dict[str, Any]) -> UsageRecord:
    return UsageRecord(
        id=r["request_id"], created_at=r["created_at"], api_key_id=r["api_key_id"], model=r["model_requested"],
        model_served=r["model_served"], provider=r["provider"], status=r["status"], stream=r["stream"],
        byok=r["byok"], prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
        cached_tokens=r["cached_tokens"], total_tokens=r["prompt_tokens"] + r["completion_tokens"],
        charge=money(r["charge"]), estimated=r["estimated"], latency_ms=r["latency_ms"], error_code=r["error_code"])


async def list_usage(user_id: UUID | str, *, limit: int = 20, cursor: str | None = None, from_: str | None = None,
                     to: str | None = None, model: str | None = None, api_key_id: UUID | None = None
                     ) -> UsagePage:
    start, end = _range(from_, to)
    conds, params = _filters(user_id, start, end, model, api_key_id)
    if cursor:
        params["cursor_ts"], params["cursor_id"] = decode_cursor(cursor)
        conds.append("(created_at, id) < (%(cursor_ts)s, %(cursor_id)s)")
    params["n"] = max(1, min(limit, MAX_PAGE)) + 1
    rows = await db.fetchall(
        "SELECT id, request_id, created_at, api_key_id, model_requested, model_served, provider, status, stream, "
        "byok, prompt_tokens, completion_tokens, cached_tokens, charge, estimated, latency_ms, error_code "
        "FROM usage_records WHERE " + " AND ".join(conds) + " ORDER BY created_at DESC, id DESC LIMIT %(n)s",
        params)
    has_more = len(rows) >= params["n"]
    rows = rows[: params["n"] - 1]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if has_more and rows else None
    return UsagePage(data=[_record(r) for r in rows], has_more=has_more, next_cursor=next_cursor)


GROUPS = {"day": "(created_at AT TIME ZONE 'UTC')::date", "model": "COALESCE(model_served, model_requested)"}
TOTALLED = ("requests", "failed_requests", "prompt_tokens", "completion_tokens", "cached_tokens", "charge")


def _totals(r: Mapping[str, Any]) -> dict[str, Any]:
    """The ``UsageTotals`` fields of a group's row (or of the sums of all groups)."""
    prompt, completion = int(r["prompt_tokens"]), int(r["completion_tokens"])
    return {"requests": int(r["requests"]), "failed_requests": int(r["failed_requests"]), "prompt_tokens": prompt,
            "completion_tokens": completion, "cached_tokens": int(r["cached_tokens"]),
            "total_tokens": prompt + completion, "charge": money(r["charge"])}


async def summary(user_id: UUID | str, *, group_by: Literal["day", "model"] = "day", from_: str | None = None,
                  to: str | None = None, model: str | None = None, api_key_id: UUID | None = None
                  ) -> UsageSummary:
    start, end = _range(from_, to)
    if start is None:
        p = ledger.period_start()
        start = dt.datetime(p.year, p.month, 1, tzinfo=UTC)  # default: the current month
        if end is not None and start >= end:
            raise BadRequest("`to` is before the start of the current month; pass `from` as well.", param="to")
    conds, params = _filters(user_id, start, end, model, api_key_id)
    rows = await db.fetchall(
        f"SELECT {GROUPS[group_by]} AS key, count(*) AS requests, "
        "count(*) FILTER (WHERE status NOT IN ('ok', 'partial')) AS failed_requests, "
        "COALESCE(sum(prompt_tokens), 0)::bigint AS prompt_tokens, "
        "COALESCE(sum(completion_tokens), 0)::bigint AS completion_tokens, "
        "COALESCE(sum(cached_tokens), 0)::bigint AS cached_tokens, COALESCE(sum(charge), 0) AS charge "
        "FROM usage_records WHERE " + " AND ".join(conds) + " GROUP BY 1 ORDER BY 1", params)
    data: list[UsageByDay] | list[UsageByModel]
    if group_by == "day":
        data = [UsageByDay(day=r["key"], **_totals(r)) for r in rows]
    else:
        data = [UsageByModel(model=r["key"], **_totals(r)) for r in rows]
    sums = {k: sum(r[k] for r in rows) for k in TOTALLED}
    return UsageSummary(group_by=group_by, from_=start, to=end, data=data, total=UsageTotals(**_totals(sums)))


# --------------------------------------------------------------------------- OpenRouter-style views
def _windows(now: dt.datetime | None = None) -> dict[str, dt.datetime]:
    """Start of the current UTC day, week (Monday) and month."""
    now = now or dt.datetime.now(UTC)
    day = dt.datetime(now.year, now.month, now.day, tzinfo=UTC)
    return {"day": day, "week": day - dt.timedelta(days=now.weekday()),
            "month": dt.datetime(now.year, now.month, 1, tzinfo=UTC)}


KEY_INFO_SQL = """
SELECT k.name, k.rpm, k.spend_cap, k.spent, k.reserved, u.tier,
       COALESCE(sum(r.charge), 0) AS usage,
       COALESCE(sum(r.charge) FILTER (WHERE r.created_at >= %(day)s), 0) AS usage_daily,
       COALESCE(sum(r.charge) FILTER (WHERE r.created_at >= %(week)s), 0) AS usage_weekly,
       COALESCE(sum(r.charge) FILTER (WHERE r.created_at >= %(month)s), 0) AS usage_monthly,
       COALESCE(sum(r.provider_cost) FILTER (WHERE r.byok), 0) AS byok_usage,
       COALESCE(sum(r.provider_cost) FILTER (WHERE r.byok AND r.created_at >= %(day)s), 0) AS byok_usage_daily,
       COALESCE(sum(r.provider_cost) FILTER (WHERE r.byok AND r.created_at >= %(week)s), 0) AS byok_usage_weekly,
       COALESCE(sum(r.provider_cost) FILTER (WHERE r.byok AND r.created_at >= %(month)s), 0) AS byok_usage_monthly
FROM api_keys k JOIN users u ON u.id = k.user_id
LEFT JOIN usage_records r ON r.user_id = k.user_id AND r.api_key_id = k.id
WHERE k.user_id = %(user_id)s AND k.id = %(key_id)s
GROUP BY k.id, u.tier
"""


async def key_info(principal: Principal, now: dt.datetime | None = None) -> KeyInfo:
    """OpenRouter's ``GET /api/v1/key`` data for the calling key. Amounts are Decimals (USD): the
    route writes them as exact JSON numbers. ``usage*`` is what we charged through this key (UTC
    day / week from Monday / month); ``byok_usage*`` the provider cost of its BYOK requests (paid to
    the provider by the customer, at list price); ``limit`` the key's spend cap (lifetime, so
    ``limit_reset`` is null)."""
    if principal.key_id is None:
        raise NotFound("This view is about an API key; call it with one.", code="api_key_required")
    row = await db.fetchone(KEY_INFO_SQL, {"user_id": principal.user_id, "key_id": principal.key_id,
                                           **_windows(now)})
    if row is None:
        raise NotFound("API key not found.", code="key_not_found")
    tier = get_settings().tier(row["tier"])
    cap = row["spend_cap"]
    remaining = None if cap is None else max(cap - row["spent"] - row["reserved"], Decimal(0))
    rpm = min(tier.rpm, row["rpm"]) if row["rpm"] else tier.rpm
    return KeyInfo(
        label=row["name"], limit=cap, limit_remaining=remaining,
        usage=row["usage"], usage_daily=row["usage_daily"], usage_weekly=row["usage_weekly"],
        usage_monthly=row["usage_monthly"], byok_usage=to_credit(row["byok_usage"]),
        byok_usage_daily=to_credit(row["byok_usage_daily"]), byok_usage_weekly=to_credit(row["byok_usage_weekly"]),
        byok_usage_monthly=to_credit(row["byok_usage_monthly"]), is_free_tier=tier.name == "free",
        creator_user_id=str(principal.user_id), rate_limit=KeyRateLimit(requests=rpm))


CREDITS_SQL = """
SELECT b.balance,
       COALESCE((SELECT -sum(l.amount) FROM ledger_entries l WHERE l.user_id = b.user_id AND l.kind = 'usage'), 0)
           AS used
FROM balances b WHERE b.user_id = %s
"""


async def credits(user_id: UUID | str) -> Credits:
    """OpenRouter's ``GET /api/v1/credits`` data: ``total_usage`` = every usage charge in the ledger,
    ``total_credits`` = balance + total_usage, so ``total_credits - total_usage`` is exactly the
    ledger balance (credit held for requests in flight is not usage yet: see ``/v1/balance``)."""
    row = await db.fetchone(CREDITS_SQL, (user_id,))
    if row is None:
        raise NotFound("Account not found.", code="user_not_found")
    return Credits(total_credits=row["balance"] + row["used"], total_usage=row["used"])
