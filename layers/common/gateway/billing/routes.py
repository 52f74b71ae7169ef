"""Billing routes (functions/billing): Stripe Checkout, the Billing Portal and the caller's plan.

- ``POST /v1/billing/checkout`` ``{"credits": "25.00"}`` (one-time credit purchase within
  ``BILLING_MIN/MAX_CREDIT_PURCHASE``) or ``{"plan": "pro"}`` (a subscription to a tier with a
  ``stripe_price_id``) → ``{"id", "url", "mode"}``. The user's Stripe Customer is created on
  first use (idempotency key = user id) and reused; the session carries ``client_reference_id``
  and ``metadata.user_id`` (and the subscription ``metadata.tier``) so webhooks find the user.
  ``Idempotency-Key`` from the client (if sent) becomes the Stripe idempotency key, so a
  retried request returns the same session.
- ``POST /v1/billing/portal`` → ``{"id", "url"}`` of a Billing Portal session.
- ``GET /v1/subscription`` → tier, status, period end, cancel_at_period_end, limits and the
  monthly request quota used/remaining.

Credit and tier changes happen only in the webhook (signed by Stripe), never here.
Auth: ``Authorization: Bearer <API key | sign-in JWT>`` (the dashboard identity dependency);
checkout and the portal (where plans change) need a full-scope key or a sign-in token, never a
restricted key (403 ``insufficient_scope``). Sessions are USD only: credit is priced in USD, a plan
whose Stripe price is in another currency is refused (503 ``billing_unconfigured``), and every
session is created with ``currency=usd`` and Adaptive Pricing (local-currency presentment) off, so
neither multi-currency prices nor Stripe's conversion can make the customer pay another currency.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import db
from ..account import users
from ..account.identity import UserPrincipal
from ..account.schema import Body, IsoTimestamp, RateLimit, example
from ..auth import require_full_scope
from ..config import Tier, get_settings
from ..errors import BadRequest, Conflict, NotFound, ServiceUnavailable, UpstreamError
from ..http import error_responses, server_request_id
from ..money.ledger import next_period_start, period_start
from ..observability import logger
from . import stripe_api
from .subscriptions import TERMINAL_STATUSES, current_subscription, paid_tier

router = APIRouter(responses=error_responses(401, 403, 404, 409, 502))

# Stripe statuses of a subscription that still exists for billing purposes: a second checkout
# would double-bill, so plan changes go through the Billing Portal instead.
LIVE_STATUSES = frozenset({"active", "trialing", "past_due", "unpaid", "paused"})
MAX_IDEMPOTENCY_KEY_CHARS = 200


class CheckoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credits: Decimal | None = Field(default=None, gt=0, decimal_places=2, allow_inf_nan=False,
                                    description="USD of prepaid credit to buy (one-time payment)")
    plan: str | None = Field(default=None, min_length=1, max_length=64,
                             description="tier to subscribe to, e.g. 'pro'")

    @model_validator(mode="after")
    def _exactly_one(self) -> CheckoutRequest:
        if (self.credits is None) == (self.plan is None):
            raise ValueError("send exactly one of 'credits' (USD amount) or 'plan' (tier name)")
        return self


# --------------------------------------------------------------------------- responses
_SESSION_URL = "https://checkout.stripe.com/c/pay/cs_test_a1B2c3D4e5F6g7H8"


class CheckoutSession(Body):
    model_config = example({"object": "checkout.session", "id": "cs_test_a1B2c3D4e5F6g7H8", "url": _SESSION_URL,
                            "mode": "payment"})

    object: Literal["checkout.session"] = "checkout.session"
    id: str
    url: str = Field(description="send the customer here")
    mode: Literal["payment", "subscription"]


class PortalSession(Body):
    model_config = example({"object": "billing_portal.session", "id": "bps_1Q2w3E4r5T6y7U8i",
                            "url": "https://billing.stripe.com/p/session/test_YWNjdF8x"})

    object: Literal["billing_portal.session"] = "billing_portal.session"
    id: str
    url: str = Field(description="send the customer here")


class SubscriptionQuota(Body):
    limit: int | None = Field(description="monthly requests; null: unlimited")
    used: int
    remaining: int | None
    resets_at: dt.date


class Subscription(Body):
    model_config = example({
        "object": "subscription", "tier": "pro", "status": "active", "subscription_id": "sub_1Q2w3E4r5T6y7U8i",
        "current_period_end": "2025-04-01T00:00:00+00:00", "cancel_at_period_end": False, "cancel_at": None,
        "payment_failed_at": None, "included_credit": "5", "rate_limit": {"requests_per_minute": 60},
        "quota": {"limit": 1000, "used": 12, "remaining": 988, "resets_at": "2025-04-01"}})

    object: Literal["subscription"] = "subscription"
    tier: str
    status: str = Field(description="Stripe's subscription status, or 'none'")
    subscription_id: str | None
    current_period_end: IsoTimestamp | None
    cancel_at_period_end: bool
    cancel_at: IsoTimestamp | None
    payment_failed_at: IsoTimestamp | None
    included_credit: str = Field(description="USD of credit each paid period adds, a decimal string",
                                 examples=["5"])
    rate_limit: RateLimit
    quota: SubscriptionQuota


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


async def _user(user_id: UUID) -> dict[str, Any]:
    user = await users.get_user(user_id)
    if user is None:
        raise NotFound("user not found", code="user_not_found")
    return user


async def _customer_for(user: dict[str, Any]) -> str:
    """The user's Stripe Customer: stored, or created now and stored (first writer wins)."""
    if user["stripe_customer_id"]:
        return str(user["stripe_customer_id"])
    customer = await stripe_api.create_customer(str(user["id"]), user.get("email"))
    row = await db.fetchone(
        "UPDATE users SET stripe_customer_id = %s WHERE id = %s AND stripe_customer_id IS NULL "
        "RETURNING stripe_customer_id", (customer, user["id"]))
    if row is None:
        row = await db.fetchone("SELECT stripe_customer_id FROM users WHERE id = %s", (user["id"],))
    return str(row["stripe_customer_id"]) if row and row["stripe_customer_id"] else customer


def _client_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise BadRequest(f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters.",
                         param="Idempotency-Key")
    return ("client:" + key) if key else ("request:" + server_request_id(request))


def _redirect_url(name: str) -> str:
    """A Stripe redirect URL from config; a deployed stage never sends customers to localhost."""
    settings = get_settings()
    url = str(getattr(settings, name))
    if settings.deployed and ("127.0.0.1" in url or "localhost" in url):
        logger.error("billing redirect URL not configured for this stage", extra={"setting": name})
        raise ServiceUnavailable("Billing is not fully configured on this deployment.", code="billing_unconfigured")
    return url


def _plan(name: str) -> Tier:
    settings = get_settings()
    tier = paid_tier(name, settings)
    if tier is None:
        available = sorted(n for n, t in settings.tiers.items() if t.stripe_price_id)
        raise BadRequest(f"The plan {name!r} cannot be bought; available plans: {', '.join(available) or 'none'}.",
                         code="plan_not_available", param="plan")
    return tier


async def _ensure_no_live_subscription(user_id: UUID) -> None:
    """Refuse a second subscription. The webhook-fed table may lag behind Stripe, so a
    subscription it still believes live is checked against Stripe (billing path, not webhook)."""
    rows = await db.fetchall(
        "SELECT stripe_subscription_id FROM subscriptions WHERE user_id = %s AND status <> ALL(%s::text[]) "
        "ORDER BY last_event_created DESC LIMIT 5", (user_id, list(TERMINAL_STATUSES)))
    for row in rows:
        try:
            live = await stripe_api.retrieve_subscription(row["stripe_subscription_id"])
        except UpstreamError as exc:
            if exc.upstream_status == 404:
                continue
            raise
        if live.get("status") in LIVE_STATUSES:
            raise Conflict("You already have a subscription; change or cancel it in the billing portal "
                           "(POST /v1/billing/portal).", code="subscription_exists")


async def _ensure_usd(plan: Tier) -> None:
    """We sell in USD only (the webhook never credits another currency): refuse a plan whose
    Stripe price is in another one before a customer can pay it."""
    assert plan.stripe_price_id is not None
    currency = await stripe_api.price_currency(plan.stripe_price_id)
    if currency != "usd":
        logger.error("plan price is not in USD; checkout refused", extra={"plan": plan.name, "currency": currency})
        raise ServiceUnavailable(f"The {plan.name} plan cannot be bought on this deployment right now.",
                                 code="billing_unconfigured")


@router.post("/v1/billing/checkout")
async def create_checkout(body: CheckoutRequest, request: Request, principal: UserPrincipal) -> CheckoutSession:
    require_full_scope(principal, "start a checkout")
    settings = get_settings()
    user_id = str(principal.user_id)
    common: dict[str, Any] = {"client_reference_id": user_id, "success_url": _redirect_url("billing_success_url"),
                              "cancel_url": _redirect_url("billing_cancel_url"),
                              "currency": "usd", "adaptive_pricing": {"enabled": False}}
    credits: Decimal | None = None
    plan: Tier | None = None
    if body.credits is not None:
        credits = body.credits
        low, high = settings.billing_min_credit_purchase, settings.billing_max_credit_purchase
        if not low <= credits <= high:
            raise BadRequest(f"credits must be between {low} and {high} USD.", code="invalid_amount", param="credits",
                             min=str(low), max=str(high))
        cents = int((credits * 100).to_integral_exact())
        params: dict[str, Any] = {
            **common, "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": "usd", "unit_amount": cents,
                "product_data": {"name": "API credit", "description": f"${credits:.2f} of prepaid API credit"}}}],
            "metadata": {"user_id": user_id, "kind": "credits", "credits": f"{credits:.2f}"},
            "payment_intent_data": {"metadata": {"user_id": user_id, "credits": f"{credits:.2f}"}},
        }
    else:
        assert body.plan is not None
        plan = _plan(body.plan)
        await _ensure_usd(plan)
        await _ensure_no_live_subscription(principal.user_id)
        params = {
            **common, "mode": "subscription",
            "line_items": [{"price": plan.stripe_price_id, "quantity": 1}],
            "metadata": {"user_id": user_id, "kind": "subscription", "plan": plan.name},
            "subscription_data": {"metadata": {"user_id": user_id, "tier": plan.name}},
        }
    user = await _user(principal.user_id)
    customer = await _customer_for(user)
    params["customer"] = customer
    session = await stripe_api.create_checkout_session(
        params, stripe_api.idempotency_key("checkout", user_id, _client_key(request)))
    await db.execute(
        "INSERT INTO checkout_sessions (id, user_id, mode, credits, plan, stripe_customer_id) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (session.id, principal.user_id, params["mode"], credits, plan.name if plan else None, customer))
    return CheckoutSession(id=session.id, url=session.url, mode=params["mode"])


@router.post("/v1/billing/portal")
async def create_portal(request: Request, principal: UserPrincipal) -> PortalSession:
    require_full_scope(principal, "open the billing portal")
    settings = get_settings()
    user = await _user(principal.user_id)
    customer = await _customer_for(user)
    session = await stripe_api.create_portal_session(
        customer, _redirect_url("billing_portal_return_url"),
        stripe_api.idempotency_key("portal", str(principal.user_id), _client_key(request)),
        configuration=settings.stripe_portal_configuration_id or None)
    return PortalSession(id=session.id, url=session.url)


@router.get("/v1/subscription")
async def get_subscription(principal: UserPrincipal) -> Subscription:
    settings = get_settings()
    user = await _user(principal.user_id)
    async with db.connection() as conn:
        sub = await current_subscription(conn, principal.user_id)
    tier = settings.tier(user["tier"])
    used = 0 if user["period_start"] < period_start() else int(user["period_requests"])
    limit = tier.monthly_quota
    return Subscription(
        tier=tier.name,
        status=sub["status"] if sub else "none",
        subscription_id=sub["stripe_subscription_id"] if sub else None,
        current_period_end=_iso(sub["current_period_end"]) if sub else None,
        cancel_at_period_end=bool(sub["cancel_at_period_end"]) if sub else False,
        cancel_at=_iso(sub["cancel_at"]) if sub else None,
        payment_failed_at=_iso(sub["payment_failed_at"]) if sub else None,
        included_credit=str(tier.included_credit),
        rate_limit=RateLimit(requests_per_minute=tier.rpm),
        quota=SubscriptionQuota(limit=limit, used=used, remaining=None if limit is None else max(limit - used, 0),
                                resets_at=next_period_start()),
    )
