"""``POST /webhooks/stripe``: verified, idempotent, order-safe Stripe event processing.

1. The ``Stripe-Signature`` header is verified on the raw body with the stripe library
   (``WebhookSignature.verify_header``, HMAC-SHA256 over ``"{t}.{body}"``, 300 s tolerance).
   A missing/forged signature, a stale timestamp or a malformed body → 400, nothing written.
2. Unknown event types → 200 ``ignored`` (no database work).
3. A handled event is processed in ONE transaction that first inserts its id into
   ``stripe_events``: a redelivery finds the id and is a 200 no-op, and an event whose effect
   failed leaves no trace (the insert rolls back with it) → 5xx so Stripe retries.
4. Credits are ledger rows referenced by the Stripe object id (``stripe:payment_intent:…``,
   ``stripe:invoice:…``, ``stripe:refund:<charge>:<cumulative cents>``), so two different events
   about one payment (``invoice.paid`` + ``invoice.payment_succeeded``,
   ``checkout.session.completed`` + ``…async_payment_succeeded``) credit once.
5. Subscription state is order-safe: an event is applied only if its ``(created, order)`` is
   newer than the stored one (``subscriptions.last_event_created/last_event_order``).
   Refunds are commutative with the payment they refund (recorded, then matched whichever
   arrives first). No outbound calls on this path.

Metrics: ``WebhookEvents`` by event type and outcome (EMF in Lambda, ``STATS`` in process),
``WebhookFailures`` and ``WebhookSignatureErrors`` (alarmed in template.yaml).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row

from .. import db
from ..config import Settings, get_settings
from ..errors import BadRequest, InternalError, ServiceUnavailable
from ..observability import SERVICE, MetricUnit, in_lambda, logger, metrics
from . import ledger
from .pricing import ZERO, to_credit
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
    metrics.add_metric(name="WebhookEvents", unit=MetricUnit.Count, value=1)
    if outcome == "failed":
        metrics.add_metric(name="WebhookFailures", unit=MetricUnit.Count, value=1)
    elif outcome in ("signature_invalid", "malformed"):
        metrics.add_metric(name="WebhookSignatureErrors", unit=MetricUnit.Count, value=1)
    if in_lambda():
        from aws_lambda_powertools.metrics import single_metric

        with single_metric(name="WebhookEventsByType", unit=MetricUnit.Count, value=1,
                           namespace=metrics.namespace, default_dimensions={"service": SERVICE}) as m:
            m.add_dimension(name="event_type", value=label)
            m.add_dimension(name="outcome", value=outcome)


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
@router.post("/webhooks/stripe")
async def stripe_webhook(request: Request) -> JSONResponse:
    payload = await request.body()
    body = await handle(payload, request.headers.get("stripe-signature"))
    return JSONResponse(body)


async def handle(payload: bytes, signature: str | None) -> dict[str, Any]:
    settings = get_settings()
    if not settings.stripe_webhook_secret:
        _count("unknown", "failed")
        logger.error("stripe webhook received but STRIPE_WEBHOOK_SECRET is not configured")
        raise ServiceUnavailable("Stripe webhooks are not configured.", code="webhook_unconfigured")
    event = verify(payload, signature, settings)
    event_type, event_id = event["type"], event["id"]
    if event_type not in HANDLERS:
        _count(event_type, "ignored")
        return {"received": True, "id": event_id, "outcome": "ignored"}
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
    return {"received": True, "id": event_id, "outcome": outcome.name}


async def process(event: dict[str, Any]) -> Outcome:
    """Apply one event exactly once: the event id and its effect commit together."""
    handler = HANDLERS[event["type"]]
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
                outcome = await handler(conn, event)
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


async def _one(conn: Any, sql: str, params: Any) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        row: dict[str, Any] | None = await cur.fetchone()
        return row


async def _resolve_user(conn: Any, *, customer: str | None = None, metadata: dict[str, Any] | None = None,
                        client_reference_id: Any = None) -> UUID | None:
    """Our user for a Stripe object: the stored customer link first (set before any checkout),
    then the ``user_id`` metadata / ``client_reference_id`` we put on the objects we create."""
    if customer:
        row = await _one(conn, "SELECT id FROM users WHERE stripe_customer_id = %s", (customer,))
        if row is not None:
            return UUID(str(row["id"]))
    for candidate in ((metadata or {}).get("user_id"), client_reference_id):
        user_id = _uuid(candidate)
        if user_id is not None:
            row = await _one(conn, "SELECT id FROM users WHERE id = %s", (user_id,))
            if row is not None:
                return user_id
    return None


async def _lock(conn: Any, *, user: UUID | None = None, payment_intent: str | None = None) -> None:
    """Serialise the events of one user (and of one payment) with transaction-scoped advisory
    locks, taken in one global order (sorted keys), so concurrent deliveries never deadlock on
    the rows they touch in different orders."""
    keys = sorted(k for k in (f"pi:{payment_intent}" if payment_intent else None,
                              f"user:{user}" if user else None) if k)
    for key in keys:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("mlp:stripe:" + key,))


async def _link_customer(conn: Any, user_id: UUID, customer: str) -> None:
    await conn.execute(
        "UPDATE users SET stripe_customer_id = %(c)s WHERE id = %(u)s AND stripe_customer_id IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM users WHERE stripe_customer_id = %(c)s)", {"c": customer, "u": user_id})


# --------------------------------------------------------------------------- refunds ↔ payments
async def _record_payment(conn: Any, *, payment_intent: str, user_id: UUID, source: str, source_id: str,
                          amount_cents: int, currency: str, credit: Decimal, reference: str) -> None:
    await conn.execute(
        "INSERT INTO stripe_payments (payment_intent, user_id, source, source_id, amount_cents, currency, credit, "
        "ledger_reference) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (payment_intent) DO NOTHING",
        (payment_intent, user_id, source, source_id, amount_cents, currency, credit, reference))
    await _reconcile_refunds(conn, payment_intent)


@dataclass(slots=True)
class RefundResult:
    matched: bool = False
    deducted: Decimal = ZERO
    shortfall: Decimal = ZERO
    user_id: UUID | None = None


async def _reconcile_refunds(conn: Any, payment_intent: str) -> RefundResult:
    """Take back the credit a payment granted, in proportion to what was refunded of it.

    Runs whenever a payment or a refund of it is recorded, whichever arrives first, so the
    result does not depend on delivery order. The deduction may take available credit below
    zero (credit already spent): it is applied anyway and the shortfall recorded.
    """
    result = RefundResult()
    pay = await _one(conn, "SELECT user_id, amount_cents, credit FROM stripe_payments WHERE payment_intent = %s "
                           "FOR UPDATE", (payment_intent,))
    if pay is None:
        return result
    result.matched, result.user_id = True, UUID(str(pay["user_id"]))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT charge_id, refunded_cents, deducted FROM stripe_refunds WHERE payment_intent = %s "
                          "ORDER BY charge_id FOR UPDATE", (payment_intent,))
        refunds = await cur.fetchall()
    granted: Decimal = pay["credit"]
    for r in refunds:
        others = sum((x["deducted"] for x in refunds if x["charge_id"] != r["charge_id"]), ZERO)
        with localcontext() as ctx:
            ctx.prec = 60
            share = granted * Decimal(min(r["refunded_cents"], pay["amount_cents"])) / Decimal(pay["amount_cents"])
        target = min(to_credit(share), max(granted - others, ZERO))
        delta = target - r["deducted"]
        if delta <= 0:
            continue
        reference = f"stripe:refund:{r['charge_id']}:{r['refunded_cents']}"
        applied = await ledger.credit_in(conn, result.user_id, -delta, "refund", reference,
                                         description=f"Stripe refund of {payment_intent}", allow_negative=True)
        if not applied.applied:
            continue
        shortfall = min(delta, -applied.available) if applied.available < 0 else ZERO
        await conn.execute("UPDATE stripe_refunds SET deducted = deducted + %s, shortfall = shortfall + %s, "
                           "user_id = COALESCE(user_id, %s), updated_at = now() WHERE charge_id = %s",
                           (delta, shortfall, result.user_id, r["charge_id"]))
        r["deducted"] += delta
        result.deducted += delta
        result.shortfall += shortfall
    if result.shortfall > 0:
        metrics.add_metric(name="RefundShortfall", unit=MetricUnit.Count, value=1)
        logger.warning("refund took available credit below zero", extra={
            "payment_intent": payment_intent, "user_id": str(result.user_id), "shortfall": str(result.shortfall)})
    return result


# --------------------------------------------------------------------------- checkout
async def on_checkout_completed(conn: Any, event: dict[str, Any]) -> Outcome:
    """checkout.session.completed / .async_payment_succeeded: buy credit, or link a subscription."""
    s = event["data"]["object"]
    customer = _id(s.get("customer"))
    user_id = await _resolve_user(conn, customer=customer, metadata=_meta(s),
                                  client_reference_id=s.get("client_reference_id"))
    if user_id is None:
        return Outcome("ignored", "unknown_user")
    payment_intent, subscription = _id(s.get("payment_intent")), _id(s.get("subscription"))
    await _lock(conn, user=user_id, payment_intent=payment_intent)
    if customer:
        await _link_customer(conn, user_id, customer)
    await conn.execute(
        "UPDATE checkout_sessions SET status = 'complete', completed_at = COALESCE(completed_at, now()), "
        "payment_intent = COALESCE(%s, payment_intent), "
        "stripe_subscription_id = COALESCE(%s, stripe_subscription_id) WHERE id = %s",
        (payment_intent, subscription, s["id"]))
    mode = s.get("mode")
    if mode == "payment":
        return await _purchase(conn, s, user_id, payment_intent)
    if mode == "subscription":
        if not subscription:
            return Outcome("ignored", "no_subscription", user_id)
        plan = paid_tier(_meta(s).get("plan"))
        await conn.execute(
            "INSERT INTO subscriptions (user_id, stripe_subscription_id, stripe_customer_id, tier, status) "
            "VALUES (%s, %s, %s, %s, 'incomplete') ON CONFLICT (stripe_subscription_id) DO NOTHING",
            (user_id, subscription, customer, plan.name if plan else "free"))
        return Outcome("linked", subscription, user_id)
    return Outcome("ignored", f"mode={mode}", user_id)


async def _purchase(conn: Any, s: dict[str, Any], user_id: UUID, payment_intent: str | None) -> Outcome:
    if s.get("payment_status") != "paid":
        # Delayed payment methods: credit arrives with checkout.session.async_payment_succeeded.
        return Outcome("pending", f"payment_status={s.get('payment_status')}", user_id)
    currency = str(s.get("currency") or "").lower()
    if currency != "usd":
        return Outcome("ignored", f"currency={currency}", user_id)
    subtotal = s.get("amount_subtotal")
    cents = _int(subtotal if subtotal is not None else s.get("amount_total"), "amount_subtotal")
    if cents <= 0:
        return Outcome("ignored", "zero_amount", user_id)
    amount = _usd(cents)
    reference = f"stripe:payment_intent:{payment_intent}" if payment_intent else f"stripe:checkout_session:{s['id']}"
    result = await ledger.credit_in(conn, user_id, amount, "purchase", reference,
                                    description=f"Stripe credit purchase {s['id']}")
    total = s.get("amount_total")
    paid_cents = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else None
    if payment_intent and paid_cents:
        # What was paid (after discounts/tax) is what a refund is measured against.
        await _record_payment(conn, payment_intent=payment_intent, user_id=user_id, source="checkout",
                              source_id=s["id"], amount_cents=paid_cents, currency=currency, credit=amount,
                              reference=reference)
    if result.applied:
        metrics.add_metric(name="CreditPurchasedCents", unit=MetricUnit.Count, value=cents)
    return Outcome("credited" if result.applied else "already_credited", reference, user_id)


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
WHERE (s.last_event_created, s.last_event_order) < (EXCLUDED.last_event_created, EXCLUDED.last_event_order)
  AND (s.status <> ALL(%(terminal)s::text[]) OR EXCLUDED.status = ANY(%(terminal)s::text[]))
RETURNING s.user_id
"""


async def on_subscription(conn: Any, event: dict[str, Any]) -> Outcome:
    """customer.subscription.created / .updated / .deleted → subscription row and users.tier.

    ``deleted`` is sent when the subscription has ended: at the period end for a
    cancel-at-period-end cancellation (the portal's mode), or at once for an immediate one.
    Either way the user is on the free tier from that event on; until then
    ``cancel_at_period_end`` is shown and the paid tier kept.
    """
    sub = event["data"]["object"]
    customer = _id(sub.get("customer"))
    user_id = await _resolve_user(conn, customer=customer, metadata=_meta(sub))
    if user_id is None:
        return Outcome("ignored", "unknown_user")
    await _lock(conn, user=user_id)
    price_id, period_start, period_end = _subscription_item(sub)
    tier = tier_for_price(price_id) or paid_tier(_meta(sub).get("tier"))
    status = "canceled" if event["type"] == "customer.subscription.deleted" else str(sub.get("status") or "")
    if not status:
        raise MalformedEvent("subscription without status")
    row = await _one(conn, UPSERT_SUBSCRIPTION_SQL, {
        "user_id": user_id, "sub": sub["id"], "customer": customer, "tier": tier.name if tier else None,
        "status": status, "price": price_id, "period_start": _ts(period_start), "period_end": _ts(period_end),
        "cancel_at_period_end": bool(sub.get("cancel_at_period_end")), "cancel_at": _ts(sub.get("cancel_at")),
        "canceled_at": _ts(sub.get("canceled_at")), "ended_at": _ts(sub.get("ended_at")),
        "created": event["created"], "order": SUBSCRIPTION_EVENT_ORDER[event["type"]], "event_id": event["id"],
        "terminal": list(TERMINAL_STATUSES)})
    if row is None:
        return Outcome("stale", f"{sub['id']} has newer state", user_id)
    owner = UUID(str(row["user_id"]))
    new_tier = await recompute_tier(conn, owner)
    detail = f"{sub['id']} {status} tier={tier.name if tier else 'unknown price ' + str(price_id)} user.tier={new_tier}"
    return Outcome("applied", detail, owner)


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
    """Old API versions: ``invoice.payment_intent``; basil+: ``invoice.payments`` (when present)."""
    pi = _id(inv.get("payment_intent"))
    if pi:
        return pi
    for p in ((inv.get("payments") or {}).get("data") or []):
        payment = (p or {}).get("payment") or {}
        if p.get("status") in (None, "paid") and _id(payment.get("payment_intent")):
            return _id(payment.get("payment_intent"))
    return None


async def _invoice_context(conn: Any, inv: dict[str, Any]) -> tuple[UUID | None, str | None, str | None]:
    sub_id, sub_meta = _invoice_subscription(inv)
    user_id = await _resolve_user(conn, customer=_id(inv.get("customer")), metadata=sub_meta)
    lines = [x for x in ((inv.get("lines") or {}).get("data") or []) if isinstance(x, dict)]
    tier = next((t for t in (tier_for_price(_line_price(x)) for x in lines) if t), None)
    tier_name = tier.name if tier else None
    if tier_name is None and sub_id:
        row = await _one(conn, "SELECT tier FROM subscriptions WHERE stripe_subscription_id = %s", (sub_id,))
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


async def on_invoice_paid(conn: Any, event: dict[str, Any]) -> Outcome:
    """invoice.paid / invoice.payment_succeeded: the tier's included credit, once per invoice."""
    inv = event["data"]["object"]
    user_id, sub_id, tier_name = await _invoice_context(conn, inv)
    if user_id is None:
        return Outcome("ignored", "unknown_user")
    payment_intent = _invoice_payment_intent(inv)
    await _lock(conn, user=user_id, payment_intent=payment_intent)
    amount_paid = _int(inv.get("amount_paid", 0), "amount_paid")
    currency = str(inv.get("currency") or "").lower()
    reason = inv.get("billing_reason")
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
    tier = get_settings().tiers.get(tier_name or "")
    if reason not in CREDIT_BILLING_REASONS or amount_paid <= 0 or currency != "usd" or tier is None \
            or tier.included_credit <= 0:
        return Outcome("recorded", f"no included credit (reason={reason}, paid={amount_paid} {currency}, "
                                   f"tier={tier_name})", user_id)
    reference = f"stripe:invoice:{inv['id']}"
    included = to_credit(tier.included_credit)
    result = await ledger.credit_in(conn, user_id, included, "subscription_credit", reference,
                                    description=f"{tier.name} included credit, invoice {inv['id']}")
    await conn.execute("UPDATE stripe_invoices SET credit = %s WHERE id = %s", (included, inv["id"]))
    if payment_intent:
        await _record_payment(conn, payment_intent=payment_intent, user_id=user_id, source="invoice",
                              source_id=inv["id"], amount_cents=amount_paid, currency=currency, credit=included,
                              reference=reference)
    return Outcome("credited" if result.applied else "already_credited", reference, user_id)


async def on_invoice_payment_failed(conn: Any, event: dict[str, Any]) -> Outcome:
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
        (inv["id"], user_id, sub_id, tier_name, inv.get("billing_reason"), str(inv.get("currency") or "").lower(),
         _ts(event["created"]), attempts, _ts(inv.get("next_payment_attempt"))))
    metrics.add_metric(name="InvoicePaymentFailed", unit=MetricUnit.Count, value=1)
    return Outcome("recorded", f"payment failed, attempt {attempts}, policy={get_settings().billing_past_due_policy}",
                   user_id)


# --------------------------------------------------------------------------- refunds
async def on_charge_refunded(conn: Any, event: dict[str, Any]) -> Outcome:
    """charge.refunded: take back the credit bought with the refunded money (cumulative
    ``amount_refunded``, so partial refunds and out-of-order events add up exactly)."""
    ch = event["data"]["object"]
    payment_intent = _id(ch.get("payment_intent"))
    user_id = await _resolve_user(conn, customer=_id(ch.get("customer")), metadata=_meta(ch))
    await _lock(conn, user=user_id, payment_intent=payment_intent)
    amount = _int(ch.get("amount"), "amount")
    refunded = _int(ch.get("amount_refunded"), "amount_refunded")
    await conn.execute(
        """INSERT INTO stripe_refunds AS r (charge_id, payment_intent, user_id, amount_cents, refunded_cents, currency,
               last_event_created)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (charge_id) DO UPDATE SET refunded_cents = GREATEST(r.refunded_cents, EXCLUDED.refunded_cents),
               payment_intent = COALESCE(r.payment_intent, EXCLUDED.payment_intent),
               user_id = COALESCE(r.user_id, EXCLUDED.user_id),
               last_event_created = GREATEST(r.last_event_created, EXCLUDED.last_event_created), updated_at = now()""",
        (ch["id"], payment_intent, user_id, amount, refunded, str(ch.get("currency") or "").lower(), event["created"]))
    result = await _reconcile_refunds(conn, payment_intent) if payment_intent else RefundResult()
    if not result.matched:
        metrics.add_metric(name="RefundUnmatched", unit=MetricUnit.Count, value=1)
        return Outcome("recorded_unmatched", f"{ch['id']}: no credited payment (yet) for {payment_intent}", user_id)
    detail = f"{ch['id']}: deducted {result.deducted}" + (f", shortfall {result.shortfall}" if result.shortfall else "")
    return Outcome("refunded" if result.deducted > 0 else "already_refunded", detail, result.user_id)


Handler = Callable[[Any, dict[str, Any]], Awaitable[Outcome]]
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
}
