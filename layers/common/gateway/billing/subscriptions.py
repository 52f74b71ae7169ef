"""Subscriptions → tiers: which Stripe price is which tier, which subscription statuses keep a
paid tier, and the one statement that derives ``users.tier`` from a user's subscriptions.

Policy (docs/billing.md):
- ``active`` and ``trialing`` subscriptions give their tier.
- ``past_due`` keeps the tier while Stripe retries the payment (``BILLING_PAST_DUE_POLICY=keep``,
  the default) or drops to free at once (``restrict``). Stripe's retry settings decide when a
  past_due subscription becomes ``unpaid``/``canceled``; both give the free tier.
- ``canceled`` (customer.subscription.deleted), ``unpaid``, ``incomplete``,
  ``incomplete_expired`` and ``paused`` give the free tier.
- With several subscriptions, the highest tier (its ``rank`` in the tier table) wins.

The query path reads ``users.tier`` inside its reserve statement, so a change here applies to
the user's very next request.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ..config import FREE_TIER, Settings, Tier, get_settings
from ..db import Connection, fetchone_in

TERMINAL_STATUSES = ("canceled", "incomplete_expired")


def entitled_statuses(settings: Settings | None = None) -> list[str]:
    settings = settings or get_settings()
    statuses = ["active", "trialing"]
    if settings.billing_past_due_policy == "keep":
        statuses.append("past_due")
    return statuses


def tier_rank(settings: Settings | None = None) -> list[str]:
    """Tier names, lowest first (by ``rank``: ``Settings.tier_ranking``)."""
    return (settings or get_settings()).tier_ranking()


def tier_for_price(price_id: str | None, settings: Settings | None = None) -> Tier | None:
    if not price_id:
        return None
    for tier in (settings or get_settings()).tiers.values():
        if tier.stripe_price_id and tier.stripe_price_id == price_id:
            return tier
    return None


def paid_tier(name: str | None, settings: Settings | None = None) -> Tier | None:
    """The tier called ``name`` if it exists and is sold through Stripe (has a price id)."""
    if not name:
        return None
    tier = (settings or get_settings()).tiers.get(name)
    return tier if tier is not None and tier.stripe_price_id else None


RECOMPUTE_TIER_SQL = """
UPDATE users u SET tier = COALESCE((
    SELECT s.tier FROM subscriptions s
    WHERE s.user_id = u.id AND s.status = ANY(%(entitled)s::text[])
    ORDER BY COALESCE(array_position(%(ranks)s::text[], s.tier), 0) DESC, s.last_event_created DESC
    LIMIT 1), %(free)s)
WHERE u.id = %(user_id)s
RETURNING u.tier
"""


async def recompute_tier(conn: Connection, user_id: UUID | str) -> str | None:
    """Set ``users.tier`` from the user's subscriptions (inside the caller's transaction)."""
    settings = get_settings()
    cur = await conn.execute(RECOMPUTE_TIER_SQL, {
        "entitled": entitled_statuses(settings), "ranks": tier_rank(settings), "free": FREE_TIER,
        "user_id": user_id})
    row = await cur.fetchone()
    return None if row is None else str(row[0])


CURRENT_SUBSCRIPTION_SQL = """
SELECT s.stripe_subscription_id, s.tier, s.status, s.current_period_end, s.cancel_at_period_end,
       s.cancel_at, s.price_id,
       (SELECT i.payment_failed_at FROM stripe_invoices i
        WHERE i.stripe_subscription_id = s.stripe_subscription_id AND i.paid_at IS NULL
          AND i.payment_failed_at IS NOT NULL
        ORDER BY i.payment_failed_at DESC LIMIT 1) AS payment_failed_at
FROM subscriptions s
WHERE s.user_id = %(user_id)s
ORDER BY (s.status = ANY(%(entitled)s::text[])) DESC,
         COALESCE(array_position(%(ranks)s::text[], s.tier), 0) DESC,
         s.last_event_created DESC, s.created_at DESC
LIMIT 1
"""


async def current_subscription(conn: Connection, user_id: UUID | str) -> dict[str, Any] | None:
    """The subscription that decides the user's tier (else their most recent one)."""
    settings = get_settings()
    return await fetchone_in(conn, CURRENT_SUBSCRIPTION_SQL, {
        "user_id": user_id, "entitled": entitled_statuses(settings), "ranks": tier_rank(settings)})
