"""``POST /webhooks/stripe``: verified, idempotent, order-safe Stripe event processing.

1. The ``Stripe-Signature`` header is verified on the raw body with the stripe library
   (``WebhookSignature.verify_header``, HMAC-SHA256 over ``"{t}.{body}"``, 300 s tolerance).
   A missing/forged signature, a stale timestamp or a malformed body → 400, nothing written.
2. Unknown event types → 200 ``ignored`` (no database work).
3. A handled event is processed in ONE transaction that first inserts its id into
   ``stripe_events``: a redelivery finds the id and is a 200 no-op, and an event whose effect
   failed leaves no trace (the insert rolls back with it) → 5xx so Stripe retries.
4. Credit is granted only for what we sold: a checkout session we created (our
   ``checkout_sessions`` row, same customer), for the amount actually paid; a plan's included
   credit pro rata to what its invoice paid; USD only. Users are found through the customer link
   our checkout route stored, never through metadata. Anything else is recorded, answered 200 and
   counted (``CheckoutSessionUnmatched``, ``NonUsdPayment``: alarmed).
5. Credits are ledger rows referenced by the Stripe object id (``stripe:payment_intent:…``,
   ``stripe:invoice:…``), so two different events about one payment (``invoice.paid`` +
   ``invoice.payment_succeeded``, ``checkout.session.completed`` + ``…async_payment_succeeded``)
   credit once. Refunds, failed refunds and disputes take back / give back shares of the payment's
   credit (``clawback``), commutative with the payment whichever arrives first.
6. Subscription state is order-safe: an event is applied only if its ``(created, order)`` is
   newer than the stored one (``subscriptions.last_event_created/last_event_order``); on a tie of
   ``created`` the subscription is read from Stripe and that state stored.
7. Reads from Stripe's API (an invoice's payments, a tied subscription) never happen inside the
   transaction: the handler raises ``FetchFirst``, the transaction rolls back, the object is
   fetched with no connection or lock held, and the event is processed again with it.

Metrics: ``WebhookEvents`` by event type and outcome (EMF in Lambda, ``STATS`` in process),
``WebhookFailures``, ``WebhookSignatureErrors``, ``CheckoutSessionUnmatched``, ``StripeDisputes``
and ``NonUsdPayment`` (alarmed in template.yaml).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import psycopg
from fastapi import APIRouter, Request
from pydantic import Field

from .. import db
from ..account.schema import Body, example
from ..config import Settings, Tier, get_settings
from ..errors import BadRequest, InternalError, ServiceUnavailable, UpstreamError
from ..money import ledger
from ..money.pricing import ZERO
from ..observability import MetricUnit, count, emit, in_lambda, logger
from . import stripe_api
from .clawback import REFUND_GONE, Reconciled, reconcile, record_payment, share
from .subscriptions import TERMINAL_STATUSES, paid_tier, recompute_tier, tier_for_price

router = APIRouter()

# Invoices that grant the tier's included monthly credit (a paid first invoice and each renewal).
# Mid-period plan changes (``subscription_update``) do not: the new tier's credit comes with the
# next renewal. Zero-amount invoices (trials, 100 % coupons) do not either.
CREDIT_BILLING_REASONS = frozenset({"subscription_create", "subscription_cycle"})
SUBSCRIPTION_EVENT_ORDER = {"customer.subscription.created": 0, "customer.subscription.updated": 1,
                            "customer.subscription.deleted": 2}
STATS: Counter[tuple[str, str]] = Counter()   # (event type, outcome) in this process


class MalformedEvent(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    detail: str | None = None
    user_id: UUID | None = None


# --------------------------------------------------------------------------- metrics
def _count(event_type: str, outcome: str) -> None:
    label = event_type if event_type in HANDLERS else "other"
    STATS[(label, outcome)] += 1
    count("WebhookEvents")
    if outcome == "failed":
        count("WebhookFailures")
    elif outcome in ("signature_invalid", "malformed"):
        count("WebhookSignatureErrors")
    if in_lambda():  # one EMF record per event, by type and outcome (dashboards)
        emit({"event_type": label, "outcome": outcome}, [("WebhookEventsByType", 1, MetricUnit.Count)])


# --------------------------------------------------------------------------- verification
def verify(payload: bytes, signature: str | None, settings: Settings) -> dict[str, Any]:
    """Verify the signature on the raw body, then parse and shape-check the event."""
    import stripe  # lazy: the webhook function's only heavy import

    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        _count("unknown", "malformed")
        raise BadRequest("The webhook body is not UTF-8.", code="malformed_event") from None
    try:
        stripe.WebhookSignature.verify_header(text, signature, settings.stripe_webhook_secret,
                                              tolerance=settings.stripe_webhook_tolerance_s)
    except stripe.SignatureVerificationError as exc:
        stale = "tolerance" in str(exc)
        _count("unknown", "signature_invalid")
        logger.warning("stripe webhook signature rejected", extra={"reason": str(exc)[:120]})
        raise BadRequest("The webhook timestamp is outside the tolerance window." if stale
                         else "Invalid Stripe-Signature.",
                         code="signature_expired" if stale else "invalid_signature") from None
    try:
        event = json.loads(text)
        _check_event_shape(event)
    except (ValueError, MalformedEvent) as exc:
        _count("unknown", "malformed")
        raise BadRequest(f"Malformed Stripe event: {exc}"[:200], code="malformed_event") from None
    return dict(event)


def _check_event_shape(event: Any) -> None:
    if not isinstance(event, dict) or event.get("object") != "event":
        raise MalformedEvent("not an event object")
    if not isinstance(event.get("id"), str) or not event["id"]:
        raise MalformedEvent("missing id")
    if not isinstance(event.get("type"), str) or not event["type"]:
        raise MalformedEvent("missing type")
    if not isinstance(event.get("created"), int) or isinstance(event.get("created"), bool):
        raise MalformedEvent("missing created")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise MalformedEvent("missing data.object")
    if not isinstance(data["object"].get("id"), str):
        raise MalformedEvent("missing data.object.id")


# --------------------------------------------------------------------------- route
class Ack(Body):
    """Stripe's delivery succeeded (it stops retrying); ``outcome`` says what the event did."""

    model_config = example({"received": True, "id": "evt_1Q2w3E4r5T6y7U8i", "outcome": "credited"})

    received: Literal[True] = True
    id: str = Field(description="the event id")
    outcome: str = Field(description="ignored (not a handled type), duplicate (already processed) or what it did")


@router.post("/webhooks/stripe")
async def stripe_webhook(request: Request) -> Ack:
    payload = await request.body()
    return await handle(payload, request.headers.get("stripe-signature"))


async def handle(payload: bytes, signature: str | None) -> Ack:
    settings = get_settings()
    if not settings.stripe_webhook_secret:
        _count("unknown", "failed")
        logger.error("stripe webhook received but STRIPE_WEBHOOK_SECRET is not configured")
        raise ServiceUnavailable("Stripe webhooks are not configured.", code="webhook_unconfigured")
    event = verify(payload, signature, settings)
    event_type, event_id = event["type"], event["id"]
    if event_type not in HANDLERS:
        _count(event_type, "ignored")
        return Ack(id=event_id, outcome="ignored")
    try:
        outcome = await process(event)
    except db.DatabaseUnavailable:  # database down or hung: 503 + Retry-After (gateway.http), no traceback
        _count(event_type, "failed")
        raise
    except Exception as exc:
        _count(event_type, "failed")
        logger.exception("stripe webhook processing failed", extra={
            "event_id": event_id, "event_type": event_type, "error": type(exc).__name__})
        raise InternalError("Processing the event failed; Stripe will retry it.",
                            code="webhook_processing_failed") from None
    _count(event_type, outcome.name)
    logger.info("stripe webhook", extra={"event_id": event_id, "event_type": event_type, "outcome": outcome.name,
                                         "detail": outcome.detail,
                                         "user_id": str(outcome.user_id) if outcome.user_id else None})
    return Ack(id=event_id, outcome=outcome.name)


class FetchFirst(Exception):
    """Raised by a handler that needs an object from Stripe's API: ``process`` rolls the
    transaction back, fetches it (no database connection or lock held meanwhile), and runs the
    handler again with the answer in ``Fetched``."""

    def __init__(self, key: str, fetch: Callable[[], Awaitable[Any]]) -> None:
        super().__init__(key)
        self.key, self.fetch = key, fetch


@dataclass(slots=True)
class Fetched:
    answers: dict[str, Any] = field(default_factory=dict)

    def need(self, key: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
        if key in self.answers:
            return self.answers[key]
        raise FetchFirst(key, fetch)


MAX_FETCHES = 4   # Stripe reads one event may need (one is the norm)


async def process(event: dict[str, Any]) -> Outcome:
    """Apply one event exactly once: the event id and its effect commit together."""
    handler = HANDLERS[event["type"]]
    fetched = Fetched()
    for _ in range(MAX_FETCHES + 1):
        try:
            return await _apply(handler, event, fetched)
        except FetchFirst as need:
            fetched.answers[need.key] = await need.fetch()
    raise RuntimeError(f"{event['type']} needed more than {MAX_FETCHES} Stripe reads")


async def _apply(handler: Handler, event: dict[str, Any], fetched: Fetched) -> Outcome:
    lock_timeout = f"{int(get_settings().stripe_webhook_lock_timeout_ms)}ms"
    for attempt in (1, 2):
        conn_used: psycopg.AsyncConnection[Any] | None = None
        try:
            async with db.transaction() as conn:
                conn_used = conn
                await conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
                cur = await conn.execute(
                    "INSERT INTO stripe_events (id, type, created, outcome) VALUES (%s, %s, %s, 'processing') "
                    "ON CONFLICT (id) DO NOTHING RETURNING id", (event["id"], event["type"], event["created"]))
                if await cur.fetchone() is None:
                    return Outcome("duplicate")
                outcome = await handler(conn, event, fetched)
                await conn.execute("UPDATE stripe_events SET outcome = %s, detail = %s, user_id = %s WHERE id = %s",
                                   (outcome.name, (outcome.detail or "")[:500] or None, outcome.user_id, event["id"]))
                return outcome
        except psycopg.OperationalError as exc:
            # A pooled connection that died while the container was frozen: the transaction
            # rolled back, so running it again on a fresh connection is safe (same rule as db.run).
            if attempt == 1 and db.is_connection_failure(exc, conn_used):
                logger.warning("database connection lost; retrying the event once",
                               extra={"event_id": event["id"], "error": type(exc).__name__})
                await db.drop_dead_connections()
                continue
            raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- helpers
def _id(value: Any) -> str | None:
    """An expandable Stripe field: ``"pi_…"`` or ``{"id": "pi_…", …}``."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"]) or None
    return None


def _meta(obj: Any) -> dict[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{name} must be an integer amount of cents")
    return value


def _ts(value: Any) -> dt.datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    return None


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def _usd(cents: int) -> Decimal:
    """Stripe amounts are integer cents: exact Decimal dollars, never float."""
    return Decimal(cents).scaleb(-2)


def _currency(obj: dict[str, Any]) -> str:
    return str(obj.get("currency") or "").lower()


def _non_usd(kind: str, obj: dict[str, Any], user_id: UUID | None) -> Outcome:
    """We sell in USD only (checkout refuses anything else): a non-USD payment is never
    credited, and its arrival is an alarm (NonUsdPayment)."""
    count("NonUsdPayment")
    logger.error("non-USD Stripe payment arrived; not credited", extra={
        "kind": kind, "object_id": obj.get("id"), "currency": _currency(obj), "user_id": str(user_id or "")})
    return Outcome("unmatched" if kind == "checkout" else "recorded", f"currency={_currency(obj)}", user_id)


async def _user_for_customer(conn: db.Connection, customer: str | None) -> UUID | None:
    """Our user for a Stripe customer: only the link our checkout route stored
    (``users.stripe_customer_id``, set before any session exists). Metadata and
    ``client_reference_id`` are never trusted to name a user: anything else on the Stripe
    account (a Payment Link, another product) could put any user id there."""
    if not customer:
        return None
    row = await db.fetchone_in(conn, "SELECT id FROM users WHERE stripe_customer_id = %s", (customer,))
    return UUID(str(row["id"])) if row is not None else None


async def _lock(conn: db.Connection, *, user: UUID | None = None, payment_intent: str | None = None) -> None:
    """Serialise the events of one user (and of one payment) with transaction-scoped advisory
    locks, taken in one global order (sorted keys), so concurrent deliveries never deadlock on
    the rows they touch in different orders."""
    keys = sorted(k for k in (f"pi:{payment_intent}" if payment_intent else None,
                              f"user:{user}" if user else None) if k)
    for key in keys:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("mlp:stripe:" + key,))


# --------------------------------------------------------------------------- checkout
async def on_checkout_completed(conn: db.Connection, event: dict[str, Any], fetched: Fetched) -> Outcome:
    """checkout.session.completed / .async_payment_succeeded: credit a purchase, or link a
    subscription, for a session WE created (our ``checkout_sessions`` row, same customer, same
    mode). The user comes from our row; nothing else is credited or linked."""
    s = event["data"]["object"]
    row = await db.fetchone_in(conn, "SELECT user_id, mode, credits, plan, stripe_customer_id FROM checkout_sessions "
                                "WHERE id = %s", (s["id"],))
    problem = _session_mismatch(s, row)
    if problem is not None:
        count("CheckoutSessionUnmatched")
        logger.error("checkout session not credited: not one we created as it arrived", extra={
            "session_id": s["id"], "reason": problem, "mode": s.get("mode"),
            "payment_link": _id(s.get("payment_link")), "customer": _id(s.get("customer"))})
        return Outcome("unmatched", problem, UUID(str(row["user_id"])) if row else None)
    assert row is not None
    user_id = UUID(str(row["user_id"]))
    if _currency(s) != "usd":
        return _non_usd("checkout", s, user_id)
    payment_intent, subscription = _id(s.get("payment_intent")), _id(s.get("subscription"))
    await _lock(conn, user=user_id, payment_intent=payment_intent)
    await conn.execute(
        "UPDATE checkout_sessions SET status = 'complete', completed_at = COALESCE(completed_at, now()), "
        "payment_intent = COALESCE(%s, payment_intent), "
        "stripe_subscription_id = COALESCE(%s, stripe_subscription_id) WHERE id = %s",
        (payment_intent, subscription, s["id"]))
    if row["mode"] == "payment":
        return await _purchase(conn, s, row, user_id, payment_intent)
    if not subscription:
        return Outcome("ignored", "no_subscription", user_id)
    plan = paid_tier(row["plan"])
    await conn.execute(
        "INSERT INTO subscriptions (user_id, stripe_subscription_id, stripe_customer_id, tier, status) "
        "VALUES (%s, %s, %s, %s, 'incomplete') ON CONFLICT (stripe_subscription_id) DO NOTHING",
        (user_id, subscription, row["stripe_customer_id"], plan.name if plan else "free"))
    return Outcome("linked", subscription, user_id)


def _session_mismatch(s: dict[str, Any], row: dict[str, Any] | None) -> str | None:
    """Why a completed session is not one of ours as it stands (None: it is)."""
    if row is None:
        return "not_our_session"
    if s.get("mode") != row["mode"]:
        return f"mode {s.get('mode')} != {row['mode']}"
    if _id(s.get("customer")) != row["stripe_customer_id"]:
        return "customer differs from the one we created the session for"
    claimed = {_uuid(s.get("client_reference_id")), _uuid(_meta(s).get("user_id"))} - {None}
    if claimed - {UUID(str(row["user_id"]))}:
        return "user differs from the one we created the session for"
    if row["mode"] == "payment" and not row["credits"]:
        return "no credit amount sold"
    return None


async def _purchase(conn: db.Connection, s: dict[str, Any], row: dict[str, Any], user_id: UUID,
                    payment_intent: str | None) -> Outcome:
    """Credit what we sold, or what was paid if less (a discount): ``min(credits sold,
    amount_total - tax)``. Never Stripe's pre-discount ``amount_subtotal``."""
    status = s.get("payment_status")
    if status == "no_payment_required":
        return Outcome("recorded", "nothing paid (100 % discount)", user_id)
    if status != "paid":
        # Delayed payment methods: credit arrives with checkout.session.async_payment_succeeded.
        return Outcome("pending", f"payment_status={status}", user_id)
    total = _int(s.get("amount_total"), "amount_total")
    tax = _int((s.get("total_details") or {}).get("amount_tax") or 0, "amount_tax")
    sold: Decimal = row["credits"]
    amount = min(sold, _usd(total - tax))
    if amount <= 0:
        return Outcome("recorded", f"nothing paid for credit (total={total}, tax={tax})", user_id)
    reference = f"stripe:payment_intent:{payment_intent}" if payment_intent else f"stripe:checkout_session:{s['id']}"
    result = await ledger.credit_in(conn, user_id, amount, "purchase", reference,
                                    description=f"Stripe credit purchase {s['id']}")
    await conn.execute("UPDATE checkout_sessions SET credited = %s WHERE id = %s", (amount, s["id"]))
    if payment_intent:
        # What was paid (after discounts, with tax) is what a refund is measured against.
        await record_payment(conn, payment_intent=payment_intent, user_id=user_id, source="checkout",
                             source_id=s["id"], amount_cents=total, currency="usd", credit=amount,
                             reference=reference)
    if result.applied:
        count("CreditPurchasedCents", int(amount * 100))
    detail = reference if amount == sold else f"{reference}: {amount} of {sold} sold (discounted)"
    return Outcome("credited" if result.applied else "already_credited", detail, user_id)


# --------------------------------------------------------------------------- subscriptions
def _subscription_item(sub: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """(price id, period start, period end) of the item that decides the tier. Periods are on
    the items since API version 2025-03-31 (basil), on the subscription before."""
    items = [i for i in ((sub.get("items") or {}).get("data") or []) if isinstance(i, dict)]
    chosen = next((i for i in items if tier_for_price(_id(i.get("price")))), items[0] if items else {})
    price_id = _id(chosen.get("price")) or _id(sub.get("plan"))
    start = sub.get("current_period_start") or chosen.get("current_period_start")
    end = sub.get("current_period_end") or chosen.get("current_period_end")
    return price_id, start, end


UPSERT_SUBSCRIPTION_SQL = """
INSERT INTO subscriptions AS s (user_id, stripe_subscription_id, stripe_customer_id, tier, status, price_id,
    current_period_start, current_period_end, cancel_at_period_end, cancel_at, canceled_at, ended_at,
    last_event_created, last_event_order, last_event_id)
VALUES (%(user_id)s, %(sub)s, %(customer)s, COALESCE(%(tier)s::text, 'free'), %(status)s, %(price)s,
    %(period_start)s, %(period_end)s, %(cancel_at_period_end)s, %(cancel_at)s, %(canceled_at)s, %(ended_at)s,
    %(created)s, %(order)s, %(event_id)s)
ON CONFLICT (stripe_subscription_id) DO UPDATE SET
    stripe_customer_id = COALESCE(EXCLUDED.stripe_customer_id, s.stripe_customer_id),
    tier = COALESCE(%(tier)s::text, s.tier),
    status = EXCLUDED.status,
    price_id = COALESCE(EXCLUDED.price_id, s.price_id),
    current_period_start = COALESCE(EXCLUDED.current_period_start, s.current_period_start),
    current_period_end = COALESCE(EXCLUDED.current_period_end, s.current_period_end),
    cancel_at_period_end = EXCLUDED.cancel_at_period_end,
    cancel_at = EXCLUDED.cancel_at,
    canceled_at = EXCLUDED.canceled_at,
    ended_at = EXCLUDED.ended_at,
    last_event_created = EXCLUDED.last_event_created,
    last_event_order = EXCLUDED.last_event_order,
    last_event_id = EXCLUDED.last_event_id,
    updated_at = now()
WHERE ((s.last_event_created, s.last_event_order) < (EXCLUDED.last_event_created, EXCLUDED.last_event_order)
       OR %(from_stripe)s)
  AND (s.status <> ALL(%(terminal)s::text[]) OR EXCLUDED.status = ANY(%(terminal)s::text[]))
RETURNING s.user_id
"""


async def on_subscription(conn: db.Connection, event: dict[str, Any], fetched: Fetched) -> Outcome:
    """customer.subscription.created / .updated / .deleted → subscription row and users.tier.

    ``deleted`` is sent when the subscription has ended: at the period end for a
    cancel-at-period-end cancellation (the portal's mode), or at once for an immediate one.
    Either way the user is on the free tier from that event on; until then
    ``cancel_at_period_end`` is shown and the paid tier kept.

    Two events of one subscription in the same second cannot be ordered by ``created``: on
    such a tie the subscription is read from Stripe and that state is stored.
    """
    sub = event["data"]["object"]
    customer = _id(sub.get("customer"))
    user_id = await _user_for_customer(conn, customer)
    if user_id is None:
        return Outcome("ignored", "unknown_user")
    await _lock(conn, user=user_id)
    order = SUBSCRIPTION_EVENT_ORDER[event["type"]]
    status = "canceled" if event["type"] == "customer.subscription.deleted" else str(sub.get("status") or "")
    stored = await db.fetchone_in(conn, "SELECT last_event_created, last_event_order FROM subscriptions "
                                   "WHERE stripe_subscription_id = %s", (sub["id"],))
    from_stripe = False
    if stored is not None and stored["last_event_created"] == event["created"]:
        live = fetched.need(f"subscription:{sub['id']}", lambda: _live_subscription(sub["id"]))
        if live is not None:
            sub, status, from_stripe = live, str(live.get("status") or ""), True
            order = max(order, int(stored["last_event_order"]))
    if not status:
        raise MalformedEvent("subscription without status")
    price_id, period_start, period_end = _subscription_item(sub)
    tier = tier_for_price(price_id) or paid_tier(_meta(sub).get("tier"))
    row = await db.fetchone_in(conn, UPSERT_SUBSCRIPTION_SQL, {
        "user_id": user_id, "sub": sub["id"], "customer": customer, "tier": tier.name if tier else None,
        "status": status, "price": price_id, "period_start": _ts(period_start), "period_end": _ts(period_end),
        "cancel_at_period_end": bool(sub.get("cancel_at_period_end")), "cancel_at": _ts(sub.get("cancel_at")),
        "canceled_at": _ts(sub.get("canceled_at")), "ended_at": _ts(sub.get("ended_at")),
        "created": event["created"], "order": order, "event_id": event["id"], "from_stripe": from_stripe,
        "terminal": list(TERMINAL_STATUSES)})
    if row is None:
        return Outcome("stale", f"{sub['id']} has newer state", user_id)
    owner = UUID(str(row["user_id"]))
    new_tier = await recompute_tier(conn, owner)
    detail = (f"{sub['id']} {status} tier={tier.name if tier else 'unknown price ' + str(price_id)} "
              f"user.tier={new_tier}" + (" (same-second tie: state read from Stripe)" if from_stripe else ""))
    return Outcome("applied", detail, owner)


async def _live_subscription(subscription_id: str) -> dict[str, Any] | None:
    """The subscription as Stripe has it now (None if Stripe does not know it)."""
    try:
        return await stripe_api.retrieve_subscription(subscription_id, webhook=True)
    except UpstreamError as exc:
        if exc.upstream_status == 404:
            logger.warning("subscription of a tied event not found in Stripe", extra={"subscription": subscription_id})
            return None
        raise


# --------------------------------------------------------------------------- invoices
def _invoice_subscription(inv: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(subscription id, subscription metadata snapshot): ``parent.subscription_details`` since
    API version 2025-03-31 (basil), top-level ``subscription``/``subscription_details`` before."""
    details = ((inv.get("parent") or {}).get("subscription_details")) or inv.get("subscription_details") or {}
    sub = _id(details.get("subscription")) or _id(inv.get("subscription"))
    return sub, _meta(details)


def _line_price(line: dict[str, Any]) -> str | None:
    pricing = (line.get("pricing") or {}).get("price_details") or {}
    return _id(pricing.get("price")) or _id(line.get("price")) or _id(line.get("plan"))


def _invoice_payment_intent(inv: dict[str, Any]) -> str | None:
    """From the event itself: ``invoice.payment_intent`` (before basil) or an expanded
    ``invoice.payments`` (never in a webhook since basil; then the invoice payments API)."""
    pi = _id(inv.get("payment_intent"))
    if pi:
        return pi
    for p in ((inv.get("payments") or {}).get("data") or []):
        payment = (p or {}).get("payment") or {}
        if p.get("status") in (None, "paid") and _id(payment.get("payment_intent")):
            return _id(payment.get("payment_intent"))
    return None


def included_credit(tier: Tier, inv: dict[str, Any]) -> Decimal:
    """A plan's included credit follows what was paid: ``included_credit * (amount_paid - tax) /
    subtotal`` (subtotal = the price before discounts), at most the full included credit. A
    99 %-off coupon gives 1 % of it; tax is not credit."""
    paid = _int(inv.get("amount_paid", 0), "amount_paid")
    subtotal = _int(inv.get("subtotal", 0) or 0, "subtotal")
    total, excl = inv.get("total"), inv.get("total_excluding_tax")
    tax = max(_int(total, "total") - _int(excl, "total_excluding_tax"), 0) if excl is not None and total is not None \
        else 0
    return share(tier.included_credit, paid - tax, subtotal)


async def _invoice_context(conn: db.Connection, inv: dict[str, Any]) -> tuple[UUID | None, str | None, str | None]:
    sub_id, sub_meta = _invoice_subscription(inv)
    user_id = await _user_for_customer(conn, _id(inv.get("customer")))
    lines = [x for x in ((inv.get("lines") or {}).get("data") or []) if isinstance(x, dict)]
    tier = next((t for t in (tier_for_price(_line_price(x)) for x in lines) if t), None)
    tier_name = tier.name if tier else None
    if tier_name is None and sub_id:
        row = await db.fetchone_in(conn, "SELECT tier FROM subscriptions WHERE stripe_subscription_id = %s", (sub_id,))
        tier_name = row["tier"] if row and paid_tier(row["tier"]) else None
    if tier_name is None:
        t = paid_tier(sub_meta.get("tier"))
        tier_name = t.name if t else None
    return user_id, sub_id, tier_name


def _invoice_period(inv: dict[str, Any]) -> tuple[dt.datetime | None, dt.datetime | None]:
    for line in ((inv.get("lines") or {}).get("data") or []):
        period = (line or {}).get("period") or {}
        if period.get("end"):
            return _ts(period.get("start")), _ts(period.get("end"))
    return _ts(inv.get("period_start")), _ts(inv.get("period_end"))


async def on_invoice_paid(conn: db.Connection, event: dict[str, Any], fetched: Fetched) -> Outcome:
    """invoice.paid / invoice.payment_succeeded: the tier's included credit, once per invoice,
    pro rata to what was paid; the PaymentIntents that paid it are recorded so a refund or a
    dispute of them takes the matching share back."""
    inv = event["data"]["object"]
    user_id, sub_id, tier_name = await _invoice_context(conn, inv)
    if user_id is None:
        return Outcome("ignored", "unknown_user")
    amount_paid = _int(inv.get("amount_paid", 0), "amount_paid")
    currency = _currency(inv)
    reason = inv.get("billing_reason")
    tier = get_settings().tiers.get(tier_name or "")
    credit = included_credit(tier, inv) if tier is not None and reason in CREDIT_BILLING_REASONS \
        and currency == "usd" else ZERO
    payments: list[stripe_api.InvoicePayment] = []
    if credit > 0:
        pi = _invoice_payment_intent(inv)
        payments = [stripe_api.InvoicePayment(inv["id"], pi, amount_paid)] if pi else fetched.need(
            f"invoice_payments:{inv['id']}", lambda: stripe_api.invoice_payments(inv["id"]))
    await _lock(conn, user=user_id, payment_intent=payments[0].payment_intent if len(payments) == 1 else None)
    period_start, period_end = _invoice_period(inv)
    paid_at = _ts((inv.get("status_transitions") or {}).get("paid_at")) or _ts(event["created"])
    await conn.execute(
        """INSERT INTO stripe_invoices AS i (id, user_id, stripe_subscription_id, tier, billing_reason,
               amount_paid_cents, currency, period_start, period_end, paid_at, attempt_count)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (id) DO UPDATE SET paid_at = COALESCE(i.paid_at, EXCLUDED.paid_at),
               amount_paid_cents = GREATEST(i.amount_paid_cents, EXCLUDED.amount_paid_cents),
               tier = COALESCE(i.tier, EXCLUDED.tier), billing_reason = EXCLUDED.billing_reason,
               period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
               next_payment_attempt = NULL, updated_at = now()""",
        (inv["id"], user_id, sub_id, tier_name, reason, amount_paid, currency, period_start, period_end, paid_at,
         _int(inv.get("attempt_count", 0) or 0, "attempt_count")))
    if currency != "usd":
        return _non_usd("invoice", inv, user_id)
    if credit <= 0:
        return Outcome("recorded", f"no included credit (reason={reason}, paid={amount_paid} {currency}, "
                                   f"tier={tier_name})", user_id)
    assert tier is not None
    reference = f"stripe:invoice:{inv['id']}"
    result = await ledger.credit_in(conn, user_id, credit, "subscription_credit", reference,
                                    description=f"{tier.name} included credit, invoice {inv['id']}")
    await conn.execute("UPDATE stripe_invoices SET credit = %s WHERE id = %s", (credit, inv["id"]))
    await _record_invoice_payments(conn, inv["id"], user_id, payments, credit, reference)
    detail = reference if credit == tier.included_credit else \
        f"{reference}: {credit} of {tier.included_credit} (pro rata to {amount_paid} paid)"
    return Outcome("credited" if result.applied else "already_credited", detail, user_id)


async def _record_invoice_payments(conn: db.Connection, invoice_id: str, user_id: UUID,
                                   payments: list[stripe_api.InvoicePayment], credit: Decimal, reference: str) -> None:
    """Split an invoice's credit over the PaymentIntents that paid it (usually one)."""
    paid = sum(p.amount_paid for p in payments)
    remaining = credit
    for i, p in enumerate(sorted(payments, key=lambda p: p.payment_intent)):
        part = remaining if i == len(payments) - 1 else min(share(credit, p.amount_paid, paid), remaining)
        remaining -= part
        if p.amount_paid > 0:
            await record_payment(conn, payment_intent=p.payment_intent, user_id=user_id, source="invoice",
                                 source_id=invoice_id, amount_cents=p.amount_paid, currency="usd", credit=part,
                                 reference=reference)


async def on_invoice_payment_failed(conn: db.Connection, event: dict[str, Any], fetched: Fetched) -> Outcome:
    """invoice.payment_failed: recorded (shown by GET /v1/subscription). The tier follows the
    subscription status Stripe sends alongside (past_due → per BILLING_PAST_DUE_POLICY)."""
    inv = event["data"]["object"]
    user_id, sub_id, tier_name = await _invoice_context(conn, inv)
    if user_id is None:
        return Outcome("ignored", "unknown_user")
    await _lock(conn, user=user_id)
    attempts = _int(inv.get("attempt_count", 0) or 0, "attempt_count")
    await conn.execute(
        """INSERT INTO stripe_invoices AS i (id, user_id, stripe_subscription_id, tier, billing_reason,
               currency, payment_failed_at, attempt_count, next_payment_attempt)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (id) DO UPDATE SET
               payment_failed_at = GREATEST(i.payment_failed_at, EXCLUDED.payment_failed_at),
               next_payment_attempt = CASE WHEN i.paid_at IS NULL AND EXCLUDED.attempt_count >= i.attempt_count
                                           THEN EXCLUDED.next_payment_attempt ELSE i.next_payment_attempt END,
               attempt_count = GREATEST(i.attempt_count, EXCLUDED.attempt_count), updated_at = now()""",
        (inv["id"], user_id, sub_id, tier_name, inv.get("billing_reason"), _currency(inv),
         _ts(event["created"]), attempts, _ts(inv.get("next_payment_attempt"))))
    count("InvoicePaymentFailed")
    return Outcome("recorded", f"payment failed, attempt {attempts}, policy={get_settings().billing_past_due_policy}",
                   user_id)


# --------------------------------------------------------------------------- refunds and disputes
async def _reconcile(conn: db.Connection, fetched: Fetched, payment_intent: str | None) -> Reconciled:
    """``clawback.reconcile`` of the payment; a PaymentIntent we have no payment for may have paid
    an invoice we credited (recorded before its payments could be resolved): ask Stripe which."""
    if not payment_intent:
        return Reconciled()
    result = await reconcile(conn, payment_intent)
    if result.matched:
        return result
    paid = fetched.need(f"invoices_paid_by:{payment_intent}", lambda: stripe_api.invoices_paid_by(payment_intent))
    for p in paid:
        inv = await db.fetchone_in(conn, "SELECT user_id, credit, amount_paid_cents FROM stripe_invoices "
                                    "WHERE id = %s AND credit > 0", (p.invoice,))
        if inv is not None:
            return await record_payment(conn, payment_intent=payment_intent, user_id=UUID(str(inv["user_id"])),
                                        source="invoice", source_id=p.invoice, amount_cents=p.amount_paid,
                                        currency="usd", reference=f"stripe:invoice:{p.invoice}",
                                        credit=share(inv["credit"], p.amount_paid, inv["amount_paid_cents"]))
    return result


def _refund_outcome(result: Reconciled, what: str) -> Outcome:
    if not result.matched:
        count("RefundUnmatched")
        return Outcome("recorded_unmatched", f"{what}: no credited payment (yet)")
    parts = [f"deducted {result.deducted}"] if result.deducted else []
    parts += [f"given back {result.restored}"] if result.restored else []
    parts += [f"shortfall {result.shortfall}"] if result.shortfall else []
    parts += [f"dispute share {result.dispute_taken - result.dispute_restored:+}"] \
        if result.dispute_taken or result.dispute_restored else []
    name = "restored" if result.restored > 0 else "refunded" if result.deducted > 0 else "already_refunded"
    return Outcome(name, f"{what}: " + (", ".join(parts) or "nothing to change"), result.user_id)


async def on_charge_refunded(conn: db.Connection, event: dict[str, Any], fetched: Fetched) -> Outcome:
    """charge.refunded: take back the credit bought with the refunded money (cumulative
    ``amount_refunded``, so partial refunds and out-of-order events add up exactly)."""
    ch = event["data"]["object"]
    payment_intent = _id(ch.get("payment_intent"))
    await _lock(conn, payment_intent=payment_intent)
    await conn.execute(
        """INSERT INTO stripe_refunds AS r (charge_id, payment_intent, amount_cents, refunded_cents, currency,
               last_event_created)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (charge_id) DO UPDATE SET refunded_cents = GREATEST(r.refunded_cents, EXCLUDED.refunded_cents),
               amount_cents = GREATEST(r.amount_cents, EXCLUDED.amount_cents),
               payment_intent = COALESCE(r.payment_intent, EXCLUDED.payment_intent),
               last_event_created = GREATEST(r.last_event_created, EXCLUDED.last_event_created), updated_at = now()""",
        (ch["id"], payment_intent, _int(ch.get("amount"), "amount"), _int(ch.get("amount_refunded"), "amount_refunded"),
         _currency(ch), event["created"]))
    return _refund_outcome(await _reconcile(conn, fetched, payment_intent), ch["id"])


async def on_refund(conn: db.Connection, event: dict[str, Any], fetched: Fetched) -> Outcome:
    """refund.created / charge.refund.updated / refund.failed (a Refund object): its state is
    recorded; a refund that failed or was canceled gives the credit taken for it back."""
    re = event["data"]["object"]
    charge_id, payment_intent = _id(re.get("charge")), _id(re.get("payment_intent"))
    if not charge_id:
        return Outcome("ignored", "refund without a charge")
    status = "failed" if event["type"] == "refund.failed" else str(re.get("status") or "pending")
    await _lock(conn, payment_intent=payment_intent)
    await conn.execute(
        """INSERT INTO stripe_refund_items AS r (refund_id, charge_id, payment_intent, amount_cents, currency, status,
               failure_reason, last_event_created)
           VALUES (%(id)s, %(charge)s, %(pi)s, %(amount)s, %(currency)s, %(status)s, %(reason)s, %(created)s)
           ON CONFLICT (refund_id) DO UPDATE SET
               status = CASE WHEN r.status = ANY(%(gone)s::text[]) THEN r.status
                             WHEN EXCLUDED.status = ANY(%(gone)s::text[])
                                  OR EXCLUDED.last_event_created >= r.last_event_created THEN EXCLUDED.status
                             ELSE r.status END,
               failure_reason = COALESCE(EXCLUDED.failure_reason, r.failure_reason),
               payment_intent = COALESCE(r.payment_intent, EXCLUDED.payment_intent),
               last_event_created = GREATEST(r.last_event_created, EXCLUDED.last_event_created), updated_at = now()""",
        {"id": re["id"], "charge": charge_id, "pi": payment_intent, "amount": _int(re.get("amount"), "amount"),
         "currency": _currency(re), "status": status, "reason": re.get("failure_reason"),
         "created": event["created"], "gone": list(REFUND_GONE)})
    # The charge's refund row, should this event come before charge.refunded.
    await conn.execute(
        "INSERT INTO stripe_refunds (charge_id, payment_intent, amount_cents, refunded_cents, currency) "
        "VALUES (%s, %s, 0, 0, %s) ON CONFLICT (charge_id) DO NOTHING", (charge_id, payment_intent, _currency(re)))
    outcome = _refund_outcome(await _reconcile(conn, fetched, payment_intent), f"{re['id']} ({status})")
    if status in REFUND_GONE:
        logger.warning("stripe refund failed", extra={"refund": re["id"], "charge": charge_id,
                                                      "reason": re.get("failure_reason"), "outcome": outcome.name})
    return outcome


async def on_dispute(conn: db.Connection, event: dict[str, Any], fetched: Fetched) -> Outcome:
    """charge.dispute.created: take the disputed share of the credit back (the balance may go
    negative) and block the user's new requests; .closed: won → given back, lost → kept taken.
    Every dispute raises the StripeDisputes alarm."""
    dp = event["data"]["object"]
    payment_intent, charge_id = _id(dp.get("payment_intent")), _id(dp.get("charge"))
    closed = event["type"] == "charge.dispute.closed"
    await _lock(conn, payment_intent=payment_intent or charge_id)
    applied = await db.fetchone_in(conn, """
        INSERT INTO stripe_disputes AS d (dispute_id, charge_id, payment_intent, amount_cents, currency, status,
            closed, last_event_created, last_event_order)
        VALUES (%(id)s, %(charge)s, %(pi)s, %(amount)s, %(currency)s, %(status)s, %(closed)s, %(created)s, %(order)s)
        ON CONFLICT (dispute_id) DO UPDATE SET status = EXCLUDED.status, closed = EXCLUDED.closed,
            amount_cents = EXCLUDED.amount_cents, payment_intent = COALESCE(d.payment_intent, EXCLUDED.payment_intent),
            last_event_created = EXCLUDED.last_event_created, last_event_order = EXCLUDED.last_event_order,
            updated_at = now()
        WHERE (d.last_event_created, d.last_event_order) < (EXCLUDED.last_event_created, EXCLUDED.last_event_order)
        RETURNING dispute_id""",
        {"id": dp["id"], "charge": charge_id, "pi": payment_intent, "amount": _int(dp.get("amount"), "amount"),
         "currency": _currency(dp), "status": str(dp.get("status") or ""), "closed": closed,
         "created": event["created"], "order": 1 if closed else 0})
    if not closed:
        count("StripeDisputes")
    result = await _reconcile(conn, fetched, payment_intent)
    logger.error("stripe dispute", extra={
        "dispute": dp["id"], "event_type": event["type"], "status": dp.get("status"), "amount": dp.get("amount"),
        "reason": dp.get("reason"), "payment_intent": payment_intent, "user_id": str(result.user_id or "")})
    if applied is None:
        return Outcome("stale", f"{dp['id']} has newer state", result.user_id)
    if not result.matched:
        return Outcome("recorded_unmatched", f"{dp['id']} {dp.get('status')}: no credited payment (yet)")
    change = result.dispute_taken - result.dispute_restored
    return Outcome("dispute_" + ("closed" if closed else "opened"),
                   f"{dp['id']} {dp.get('status')}: credit {'-' if change > 0 else '+'}{abs(change)}", result.user_id)


Handler = Callable[[Any, dict[str, Any], Fetched], Awaitable[Outcome]]
HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": on_checkout_completed,
    "checkout.session.async_payment_succeeded": on_checkout_completed,
    "customer.subscription.created": on_subscription,
    "customer.subscription.updated": on_subscription,
    "customer.subscription.deleted": on_subscription,
    "invoice.paid": on_invoice_paid,
    "invoice.payment_succeeded": on_invoice_paid,
    "invoice.payment_failed": on_invoice_payment_failed,
    "charge.refunded": on_charge_refunded,
    "refund.created": on_refund,
    "charge.refund.updated": on_refund,
    "refund.failed": on_refund,
    "charge.dispute.created": on_dispute,
    "charge.dispute.closed": on_dispute,
}
