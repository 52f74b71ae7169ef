"""POST /webhooks/stripe against the real Postgres: every handled event type, idempotency,
ordering, refunds, refused requests and a database failure in the middle of processing.

Events are real Stripe JSON shapes (infra/local/fake_stripe.py builders) signed with Stripe's
scheme by tests/support/billing.py (HMAC-SHA256 computed independently of the stripe library).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway.billing import webhooks
from infra.local import fake_stripe as fs
from tests.support.billing import (
    PRICES,
    Billing,
    billing,
    checkout,
    deliver,
    fake_stripe_server,
    gateway,
    signature_header,
)

__all__ = ["billing", "fake_stripe_server", "gateway"]  # fixtures used by this module

# the stripe library's httpx client posts form bodies with ``data=`` (checkout route calls)
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Use .content=:DeprecationWarning")]

D = Decimal


def _pi() -> str:
    return "pi_" + uuid.uuid4().hex[:20]


async def _send(gateway: Any, billing: Billing, event: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = await deliver(gateway, event, billing.webhook_secret, **kw)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _send_all(gateway: Any, billing: Billing, events: list[dict[str, Any]], copies: int = 3,
                    seed: int = 0) -> list[str]:
    deliveries = [e for e in events for _ in range(copies)]
    random.Random(seed).shuffle(deliveries)
    return [(await _send(gateway, billing, e))["outcome"] for e in deliveries]


def _purchase_event(session_id: str, user_id: Any, customer: str | None, cents: int = 2000, pi: str | None = None,
                    *, created: int | None = None, event_type: str = "checkout.session.completed",
                    payment_status: str = "paid") -> dict[str, Any]:
    session = fs.checkout_session(session_id=session_id, mode="payment", customer=customer, user_id=str(user_id),
                                  amount_cents=cents, payment_intent=pi or _pi(), payment_status=payment_status,
                                  metadata={"user_id": str(user_id), "kind": "credits"})
    return fs.event(event_type, session, created=created)


async def _bought(gateway: Any, billing: Billing, user: Any, cents: int = 2000, pi: str | None = None,
                  **kw: Any) -> dict[str, Any]:
    """A credit purchase of ``cents`` started through our checkout route, completed: its event."""
    session = await checkout(gateway, user.api_key, credits=f"{cents / 100:.2f}")
    return _purchase_event(session["id"], user.user_id, billing.customer(user.user_id), cents, pi, **kw)


# --------------------------------------------------------------------------- one-time purchases
async def test_purchase_credits_once_per_payment(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    ev = await _bought(gateway, billing, user, 2550)
    outcomes = [(await _send(gateway, billing, ev))["outcome"] for _ in range(3)]
    assert outcomes == ["credited", "duplicate", "duplicate"]
    assert billing.balance(user.user_id) == D("25.50")
    pi = ev["data"]["object"]["payment_intent"]
    assert billing.ledger(user.user_id, "purchase") == [("purchase", D("25.50000000"), f"stripe:payment_intent:{pi}")]
    assert billing.scalar("SELECT outcome FROM stripe_events WHERE id = %s", (ev["id"],)) == "credited"
    assert billing.scalar("SELECT user_id FROM stripe_events WHERE id = %s", (ev["id"],)) == user.user_id
    assert webhooks.STATS[("checkout.session.completed", "credited")] == 1
    assert webhooks.STATS[("checkout.session.completed", "duplicate")] == 2


async def test_two_events_about_one_payment_credit_once(gateway: Any, billing: Billing, make_user: Any) -> None:
    """A delayed payment method: completed (unpaid) → nothing; async_payment_succeeded → credit;
    another event about the same PaymentIntent (a paid completed) → no second credit."""
    user = await make_user(balance="0", tier="free")
    session_id, pi = (await checkout(gateway, user.api_key, credits="10"))["id"], _pi()
    customer = billing.customer(user.user_id)
    unpaid = _purchase_event(session_id, user.user_id, customer, 1000, pi, payment_status="unpaid")
    paid = _purchase_event(session_id, user.user_id, customer, 1000, pi,
                           event_type="checkout.session.async_payment_succeeded")
    again = _purchase_event(session_id, user.user_id, customer, 1000, pi)
    assert (await _send(gateway, billing, unpaid))["outcome"] == "pending"
    assert billing.balance(user.user_id) == 0
    assert (await _send(gateway, billing, paid))["outcome"] == "credited"
    assert (await _send(gateway, billing, again))["outcome"] == "already_credited"
    assert billing.balance(user.user_id) == D("10")
    assert len(billing.ledger(user.user_id, "purchase")) == 1


async def test_unknown_session_and_customer_are_recorded_unmatched(gateway: Any, billing: Billing) -> None:
    session = fs.checkout_session(customer="cus_nobody", user_id=None, amount_cents=500, payment_intent=_pi())
    ev = fs.event("checkout.session.completed", session)
    assert (await _send(gateway, billing, ev))["outcome"] == "unmatched"
    assert billing.scalar("SELECT detail FROM stripe_events WHERE id = %s", (ev["id"],)) == "not_our_session"
    assert billing.scalar("SELECT count(*) FROM ledger_entries") == 0


# --------------------------------------------------------------------------- subscriptions
def _sub(customer: str, user_id: Any, tier: str = "pro", sub_id: str | None = None, **kw: Any) -> dict[str, Any]:
    return fs.subscription(subscription_id=sub_id, customer=customer, price_id=PRICES[tier],
                           metadata={"user_id": str(user_id), "tier": tier}, **kw)


def _inv(customer: str, sub_id: str, tier: str = "pro", **kw: Any) -> dict[str, Any]:
    return fs.invoice(customer=customer, subscription_id=sub_id, price_id=PRICES[tier], **kw)


async def test_subscription_created_sets_tier_and_invoice_grants_included_credit(gateway: Any, billing: Billing,
                                                                                make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    t0 = int(time.time()) - 100
    sub = _sub(customer, user.user_id, "pro", period_start=t0)
    inv = _inv(customer, sub["id"], "pro", created=t0, payment_intent=_pi())
    assert (await _send(gateway, billing, fs.event("customer.subscription.created", sub, created=t0)))["outcome"] \
        == "applied"
    assert billing.tier(user.user_id) == "pro"
    row = billing.sql("SELECT status, tier, current_period_end, cancel_at_period_end, price_id FROM subscriptions "
                      "WHERE stripe_subscription_id = %s", (sub["id"],))[0]
    assert row[0:2] == ("active", "pro") and row[3] is False and row[4] == PRICES["pro"]
    assert int(row[2].timestamp()) == sub["items"]["data"][0]["current_period_end"]
    # invoice.paid and invoice.payment_succeeded are two events about one invoice: one credit.
    assert (await _send(gateway, billing, fs.event("invoice.paid", inv, created=t0)))["outcome"] == "credited"
    assert (await _send(gateway, billing, fs.event("invoice.payment_succeeded", inv, created=t0)))["outcome"] \
        == "already_credited"
    assert billing.ledger(user.user_id, "subscription_credit") == [
        ("subscription_credit", D("5.00000000"), f"stripe:invoice:{inv['id']}")]


async def test_checkout_subscription_mode_links_the_subscription(gateway: Any, billing: Billing,
                                                                 make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    session = await checkout(gateway, user.api_key, plan="pro")
    sub_id = "sub_" + uuid.uuid4().hex[:14]
    completed = fs.checkout_session(session_id=session["id"], mode="subscription",
                                    customer=billing.customer(user.user_id), user_id=str(user.user_id),
                                    amount_cents=2000, subscription=sub_id,
                                    metadata={"user_id": str(user.user_id), "plan": "pro"})
    assert (await _send(gateway, billing, fs.event("checkout.session.completed", completed)))["outcome"] == "linked"
    assert billing.sql("SELECT user_id, status, tier FROM subscriptions WHERE stripe_subscription_id = %s",
                       (sub_id,)) == [(user.user_id, "incomplete", "pro")]
    assert billing.sql("SELECT status, stripe_subscription_id FROM checkout_sessions WHERE id = %s",
                       (session["id"],)) == [("complete", sub_id)]
    assert billing.tier(user.user_id) == "free"  # the subscription event, not the checkout, grants the tier
    assert billing.balance(user.user_id) == 0


async def test_subscription_updates_are_order_safe(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    t0 = int(time.time()) - 1000
    sub_id = "sub_" + uuid.uuid4().hex[:14]
    created = fs.event("customer.subscription.created", _sub(customer, user.user_id, "pro", sub_id), created=t0)
    to_team = fs.event("customer.subscription.updated", _sub(customer, user.user_id, "team", sub_id), created=t0 + 60)
    # Newer first: the older events must not overwrite it.
    assert (await _send(gateway, billing, to_team))["outcome"] == "applied"
    assert (await _send(gateway, billing, created))["outcome"] == "stale"
    assert billing.tier(user.user_id) == "team"
    # Same second: created < updated < deleted.
    t1 = t0 + 120
    same_updated = fs.event("customer.subscription.updated",
                            _sub(customer, user.user_id, "premium", sub_id, cancel_at_period_end=True), created=t1)
    same_created = fs.event("customer.subscription.created", _sub(customer, user.user_id, "pro", sub_id), created=t1)
    assert (await _send(gateway, billing, same_updated))["outcome"] == "applied"
    assert (await _send(gateway, billing, same_created))["outcome"] == "stale"
    assert billing.tier(user.user_id) == "premium"
    assert billing.scalar("SELECT cancel_at_period_end FROM subscriptions WHERE stripe_subscription_id = %s",
                          (sub_id,)) is True
    # deleted is terminal: a later-delivered (older) update cannot resurrect it.
    deleted = fs.event("customer.subscription.deleted",
                       _sub(customer, user.user_id, "premium", sub_id, status="canceled"), created=t0 + 300)
    late_update = fs.event("customer.subscription.updated", _sub(customer, user.user_id, "team", sub_id),
                           created=t0 + 200)
    assert (await _send(gateway, billing, deleted))["outcome"] == "applied"
    assert (await _send(gateway, billing, late_update))["outcome"] == "stale"
    assert billing.tier(user.user_id) == "free"
    assert billing.scalar("SELECT status FROM subscriptions WHERE stripe_subscription_id = %s", (sub_id,)) == \
        "canceled"


async def test_cancel_at_period_end_keeps_tier_until_deleted(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    t0 = int(time.time()) - 500
    sub_id = "sub_" + uuid.uuid4().hex[:14]
    await _send(gateway, billing, fs.event("customer.subscription.created", _sub(customer, user.user_id, "pro", sub_id),
                                           created=t0))
    await _send(gateway, billing, fs.event("customer.subscription.updated", _sub(
        customer, user.user_id, "pro", sub_id, cancel_at_period_end=True), created=t0 + 10))
    assert billing.tier(user.user_id) == "pro"
    r = await gateway.get("/v1/subscription", headers={"authorization": f"Bearer {user.api_key}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == "pro" and body["status"] == "active" and body["cancel_at_period_end"] is True
    assert body["current_period_end"] is not None
    await _send(gateway, billing, fs.event("customer.subscription.deleted", _sub(
        customer, user.user_id, "pro", sub_id, status="canceled", cancel_at_period_end=True), created=t0 + 20))
    assert billing.tier(user.user_id) == "free"


@pytest.mark.parametrize("policy,expected", [("keep", "pro"), ("restrict", "free")])
async def test_payment_failed_and_past_due_policy(gateway: Any, billing: Billing, make_user: Any,
                                                  monkeypatch: pytest.MonkeyPatch, policy: str, expected: str) -> None:
    from gateway.config import reset_settings

    monkeypatch.setenv("BILLING_PAST_DUE_POLICY", policy)
    reset_settings()
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    t0 = int(time.time()) - 500
    sub_id = "sub_" + uuid.uuid4().hex[:14]
    await _send(gateway, billing, fs.event("customer.subscription.created", _sub(customer, user.user_id, "pro", sub_id),
                                           created=t0))
    renewal = _inv(customer, sub_id, "pro", billing_reason="subscription_cycle", status="open",
                   attempt_count=1, next_payment_attempt=t0 + 86400, created=t0 + 100)
    failed = fs.event("invoice.payment_failed", renewal, created=t0 + 100)
    past_due = fs.event("customer.subscription.updated", _sub(customer, user.user_id, "pro", sub_id, status="past_due"),
                        created=t0 + 100)
    assert (await _send(gateway, billing, failed))["outcome"] == "recorded"
    assert (await _send(gateway, billing, past_due))["outcome"] == "applied"
    assert billing.tier(user.user_id) == expected
    body = (await gateway.get("/v1/subscription", headers={"authorization": f"Bearer {user.api_key}"})).json()
    assert body["status"] == "past_due" and body["payment_failed_at"] is not None
    # The retry succeeds: invoice paid (renewal → included credit), subscription active again.
    paid = dict(renewal, status="paid", amount_paid=2000, amount_remaining=0,
                status_transitions={"paid_at": t0 + 200})
    assert (await _send(gateway, billing, fs.event("invoice.paid", paid, created=t0 + 200)))["outcome"] == "credited"
    # A late duplicate failure notice about the now-paid invoice changes nothing.
    assert (await _send(gateway, billing, fs.event("invoice.payment_failed", renewal, created=t0 + 150)))["outcome"] \
        == "recorded"
    await _send(gateway, billing, fs.event("customer.subscription.updated",
                                           _sub(customer, user.user_id, "pro", sub_id), created=t0 + 200))
    assert billing.tier(user.user_id) == "pro"
    body = (await gateway.get("/v1/subscription", headers={"authorization": f"Bearer {user.api_key}"})).json()
    assert body["status"] == "active" and body["payment_failed_at"] is None
    assert billing.balance(user.user_id) == D("5")


async def test_which_invoices_grant_included_credit(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    sub_id = "sub_" + uuid.uuid4().hex[:14]
    cases = [("subscription_create", 2000, "pro", "credited"), ("subscription_cycle", 2000, "pro", "credited"),
             ("subscription_cycle", 9900, "team", "credited"), ("subscription_update", 1500, "team", "recorded"),
             ("subscription_cycle", 0, "pro", "recorded"), ("manual", 2000, "pro", "recorded")]
    for reason, paid, tier, outcome in cases:
        inv = _inv(customer, sub_id, tier, billing_reason=reason, amount=paid)
        assert (await _send(gateway, billing, fs.event("invoice.paid", inv)))["outcome"] == outcome, reason
    assert billing.balance(user.user_id) == D("5") + D("5") + D("50")


async def test_legacy_api_version_shapes(gateway: Any, billing: Billing, make_user: Any) -> None:
    """Pre-2025-03-31 shapes: period on the subscription, invoice.subscription, line.price,
    invoice.payment_intent (so a refund of the invoice claws back its included credit)."""
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    sub = fs.subscription(customer=customer, price_id=PRICES["team"], legacy=True)
    assert (await _send(gateway, billing, fs.event("customer.subscription.created", sub)))["outcome"] == "applied"
    assert billing.tier(user.user_id) == "team"
    end = billing.scalar("SELECT current_period_end FROM subscriptions WHERE stripe_subscription_id = %s",
                         (sub["id"],))
    assert int(end.timestamp()) == sub["current_period_end"]
    pi = _pi()
    inv = fs.invoice(customer=customer, subscription_id=sub["id"], price_id=PRICES["team"], amount=9900,
                     payment_intent=pi, legacy=True)
    assert (await _send(gateway, billing, fs.event("invoice.payment_succeeded", inv)))["outcome"] == "credited"
    assert billing.balance(user.user_id) == D("50")
    refund = fs.charge(payment_intent=pi, customer=customer, amount=9900, amount_refunded=4950)
    assert (await _send(gateway, billing, fs.event("charge.refunded", refund)))["outcome"] == "refunded"
    assert billing.balance(user.user_id) == D("25")


# --------------------------------------------------------------------------- refunds
async def test_refunds_partial_cumulative_and_below_zero_recorded(gateway: Any, billing: Billing,
                                                                  make_user: Any) -> None:
    from gateway.money import ledger

    user = await make_user(balance="0", tier="free")
    pi = _pi()
    await _send(gateway, billing, await _bought(gateway, billing, user, 2000, pi))
    customer = billing.customer(user.user_id)
    ch = "ch_" + uuid.uuid4().hex[:14]
    first = fs.event("charge.refunded", fs.charge(charge_id=ch, payment_intent=pi, customer=customer, amount=2000,
                                                   amount_refunded=500), created=int(time.time()) - 10)
    second = fs.event("charge.refunded", fs.charge(charge_id=ch, payment_intent=pi, customer=customer, amount=2000,
                                                    amount_refunded=1200), created=int(time.time()) - 5)
    # Newer (cumulative 12.00) first, then the older (5.00): 12.00 deducted in total.
    assert (await _send(gateway, billing, second))["outcome"] == "refunded"
    assert (await _send(gateway, billing, first))["outcome"] == "already_refunded"
    assert billing.balance(user.user_id) == D("8")
    # The user spends 7 of the remaining 8, then the rest of the charge is refunded: the
    # deduction goes through (balance -7) and the shortfall is recorded, never dropped.
    await ledger.credit(user.user_id, D("-7"), "usage", "test-usage-" + uuid.uuid4().hex)
    full = fs.event("charge.refunded", fs.charge(charge_id=ch, payment_intent=pi, customer=customer, amount=2000,
                                                  amount_refunded=2000))
    assert (await _send(gateway, billing, full))["outcome"] == "refunded"
    assert billing.balance(user.user_id) == D("-7")
    assert billing.sql("SELECT refunded_cents, deducted, shortfall FROM stripe_refunds WHERE charge_id = %s", (ch,)) \
        == [(2000, D("20"), D("7"))]
    assert [r[1] for r in billing.ledger(user.user_id, "refund")] == [D("-12"), D("-8")]
    assert billing.scalar("SELECT count(*) FROM ledger_entries GROUP BY reference HAVING count(*) > 1") is None


async def test_refund_before_its_payment_is_applied_when_the_payment_arrives(gateway: Any, billing: Billing,
                                                                             make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    pi = _pi()
    bought = await _bought(gateway, billing, user, 3000, pi)
    refund = fs.event("charge.refunded", fs.charge(payment_intent=pi, customer=billing.customer(user.user_id),
                                                   amount=3000, amount_refunded=3000))
    assert (await _send(gateway, billing, refund))["outcome"] == "recorded_unmatched"
    assert billing.balance(user.user_id) == 0
    assert (await _send(gateway, billing, bought))["outcome"] == "credited"
    assert billing.balance(user.user_id) == 0
    assert [r[1] for r in billing.ledger(user.user_id)] == [D("30"), D("-30")]


async def test_refund_of_unknown_payment_is_recorded(gateway: Any, billing: Billing) -> None:
    ev = fs.event("charge.refunded", fs.charge(payment_intent=_pi(), customer=None, amount=700, amount_refunded=700))
    assert (await _send(gateway, billing, ev))["outcome"] == "recorded_unmatched"
    assert billing.scalar("SELECT refunded_cents FROM stripe_refunds") == 700
    assert billing.scalar("SELECT count(*) FROM ledger_entries") == 0


# --------------------------------------------------------------------------- everything, shuffled
async def _scenario(gateway: Any, billing: Billing, user: Any, t0: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every handled event type once, about one user: a credit purchase (later partly refunded,
    one refund of it failing), a pro subscription bought through Checkout (first invoice paid →
    included credit, then disputed and the dispute won), an upgrade to team, a failed renewal
    (past_due), plus an event type we do not handle. Both checkouts go through our route."""
    user_id, sub_id = user.user_id, "sub_" + uuid.uuid4().hex[:14]
    purchase_id = (await checkout(gateway, user.api_key, credits="20"))["id"]
    plan_id = (await checkout(gateway, user.api_key, plan="pro"))["id"]
    customer = billing.customer(user_id)
    assert customer is not None
    pi_purchase, pi_invoice = _pi(), _pi()
    purchase = fs.checkout_session(session_id=purchase_id, mode="payment", customer=customer, user_id=str(user_id),
                                   amount_cents=2000, payment_intent=pi_purchase, metadata={"user_id": str(user_id)})
    sub_checkout = fs.checkout_session(session_id=plan_id, mode="subscription", customer=customer,
                                       user_id=str(user_id), amount_cents=2000, subscription=sub_id,
                                       metadata={"user_id": str(user_id), "plan": "pro"})
    first_invoice = billing.stripe.fake.add_invoice(_inv(customer, sub_id, "pro", created=t0 + 10), pi_invoice)
    invoice_charge = billing.stripe.fake.charge_of(pi_invoice)
    renewal = _inv(customer, sub_id, "team", billing_reason="subscription_cycle", status="open", created=t0 + 40)
    ch = "ch_" + uuid.uuid4().hex[:14]
    kept, failed = (fs.refund(charge_id=ch, payment_intent=pi_purchase, amount=500, created=t0 + 50),
                    fs.refund(charge_id=ch, payment_intent=pi_purchase, amount=300, created=t0 + 55))
    dispute = fs.dispute(charge_id=invoice_charge["id"], payment_intent=pi_invoice, amount=2000, created=t0 + 70)
    events = [
        fs.event("checkout.session.completed", purchase, created=t0),
        fs.event("customer.subscription.created", _sub(customer, user_id, "pro", sub_id), created=t0 + 10),
        fs.event("invoice.paid", first_invoice, created=t0 + 10),
        fs.event("invoice.payment_succeeded", first_invoice, created=t0 + 10),
        fs.event("checkout.session.completed", sub_checkout, created=t0 + 11),
        fs.event("customer.subscription.updated", _sub(customer, user_id, "team", sub_id), created=t0 + 20),
        fs.event("invoice.payment_failed", renewal, created=t0 + 40),
        fs.event("customer.subscription.updated", _sub(customer, user_id, "team", sub_id, status="past_due"),
                 created=t0 + 40),
        fs.event("charge.refunded", fs.charge(charge_id=ch, payment_intent=pi_purchase, customer=customer, amount=2000,
                                              amount_refunded=800), created=t0 + 55),
        fs.event("refund.created", kept, created=t0 + 50),
        fs.event("refund.created", failed, created=t0 + 55),
        fs.event("charge.refund.updated", dict(failed, status="failed", failure_reason="expired_or_canceled_card"),
                 created=t0 + 60),
        fs.event("refund.failed", dict(failed, status="failed", failure_reason="expired_or_canceled_card"),
                 created=t0 + 60),
        fs.event("charge.dispute.created", dispute, created=t0 + 70),
        fs.event("charge.dispute.closed", dict(dispute, status="won"), created=t0 + 90),
        fs.event("customer.updated", {"id": customer, "object": "customer"}, created=t0 + 60),
    ]
    # 20 bought - 5 refunded (the 3 of the failed refund come back) + 5 included (disputed, won back)
    expected = {"balance": D("20") - D("5") + D("5"), "tier": "team", "status": "past_due", "sub_id": sub_id,
                "events": len(events) - 1,
                "by_kind": {"purchase": D("20"), "refund": D("-5"), "subscription_credit": D("5")}}
    return events, expected


def _sums_by_kind(billing: Billing, user_id: Any) -> dict[str, Decimal]:
    """Net ledger movement per kind, kinds that net to zero left out (a dispute closed as won
    before its creation was processed never takes anything)."""
    return {k: Decimal(v) for k, v in billing.sql("SELECT kind, sum(amount) FROM ledger_entries WHERE user_id = %s "
                                                  "GROUP BY kind HAVING sum(amount) <> 0", (user_id,))}


@pytest.mark.parametrize("seed", range(6))
async def test_every_event_three_times_in_shuffled_order(gateway: Any, billing: Billing, make_user: Any,
                                                         seed: int) -> None:
    user = await make_user(balance="0", tier="free")
    events, expected = await _scenario(gateway, billing, user, int(time.time()) - 3600)
    outcomes = await _send_all(gateway, billing, events, copies=3, seed=seed)
    assert outcomes.count("duplicate") == 2 * expected["events"]
    assert outcomes.count("ignored") == 3  # the unhandled type, every time
    assert billing.balance(user.user_id) == expected["balance"]
    assert billing.tier(user.user_id) == expected["tier"]
    assert billing.scalar("SELECT status FROM subscriptions WHERE stripe_subscription_id = %s",
                          (expected["sub_id"],)) == expected["status"]
    assert _sums_by_kind(billing, user.user_id) == expected["by_kind"]
    assert billing.scalar("SELECT count(*) FROM ledger_entries GROUP BY reference HAVING count(*) > 1") is None
    assert billing.scalar("SELECT closed FROM stripe_disputes") is True
    assert billing.scalar("SELECT count(*) FROM stripe_events") == expected["events"]
    assert billing.scalar("SELECT count(*) FROM stripe_events WHERE outcome = 'processing'") == 0


async def test_every_event_three_times_concurrently(gateway: Any, billing: Billing, make_user: Any) -> None:
    """All deliveries at once (Stripe does send in parallel): same final state, no deadlock."""
    user = await make_user(balance="0", tier="free")
    events, expected = await _scenario(gateway, billing, user, int(time.time()) - 3600)
    deliveries = [e for e in events for _ in range(3)]
    random.Random(42).shuffle(deliveries)
    responses = await asyncio.gather(*(deliver(gateway, e, billing.webhook_secret) for e in deliveries))
    assert [r.status_code for r in responses] == [200] * len(deliveries), [r.text for r in responses]
    assert billing.balance(user.user_id) == expected["balance"]
    assert billing.tier(user.user_id) == expected["tier"]
    assert billing.scalar("SELECT count(*) FROM stripe_events") == expected["events"]
    assert _sums_by_kind(billing, user.user_id) == expected["by_kind"]
    assert billing.scalar("SELECT count(*) FROM ledger_entries GROUP BY reference HAVING count(*) > 1") is None


# --------------------------------------------------------------------------- refused requests
def _post_raw(gateway: Any, body: bytes | str, signature: str | None) -> Any:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["stripe-signature"] = signature
    return gateway.post("/webhooks/stripe", content=body, headers=headers)


async def test_refused_requests_write_nothing(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    ev = await _bought(gateway, billing, user, 5000)
    body = json.dumps(ev)
    now = int(time.time())
    before = billing.counts()
    cases = {
        "forged (wrong secret)": (body, signature_header(body, "whsec_attacker")),
        "tampered body": (body.replace("5000", "9000"), signature_header(body, billing.webhook_secret)),
        "missing header": (body, None),
        "garbage header": (body, "v1=abc"),
        "stale timestamp": (body, signature_header(body, billing.webhook_secret, now - 301)),
        "malformed JSON": ("{not json", signature_header("{not json", billing.webhook_secret)),
        "not an event": ('{"id": "x"}', signature_header('{"id": "x"}', billing.webhook_secret)),
        "event without data.object": (json.dumps({**ev, "data": {}}),
                                      signature_header(json.dumps({**ev, "data": {}}), billing.webhook_secret)),
    }
    for name, (payload, sig) in cases.items():
        r = await _post_raw(gateway, payload, sig)
        assert r.status_code == 400, (name, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error", name
        assert err["code"] in ("invalid_signature", "signature_expired", "malformed_event"), name
    r = await _post_raw(gateway, b"\xff\xfe" + body.encode(), signature_header(body, billing.webhook_secret))
    assert r.status_code == 400
    assert billing.counts() == before
    stats = webhooks.STATS
    assert stats[("other", "signature_invalid")] == 5 and stats[("other", "malformed")] == 4
    # Within the tolerance (295 s old) the same event is accepted.
    r = await _post_raw(gateway, body, signature_header(body, billing.webhook_secret, int(time.time()) - 295))
    assert r.status_code == 200 and r.json()["outcome"] == "credited"


async def test_stale_signature_code(gateway: Any, billing: Billing) -> None:
    body = json.dumps(fs.event("invoice.paid", {"id": "in_1", "object": "invoice"}))
    r = await _post_raw(gateway, body, signature_header(body, billing.webhook_secret, int(time.time()) - 3600))
    assert r.status_code == 400 and r.json()["error"]["code"] == "signature_expired"


async def test_unknown_event_type_is_ignored_without_writes(gateway: Any, billing: Billing) -> None:
    before = billing.counts()
    ev = fs.event("payment_intent.created", {"id": _pi(), "object": "payment_intent"})
    r = await deliver(gateway, ev, billing.webhook_secret)
    assert r.status_code == 200 and r.json() == {"received": True, "id": ev["id"], "outcome": "ignored"}
    assert billing.counts() == before


async def test_unconfigured_webhook_secret_is_503(gateway: Any, billing: Billing,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import reset_settings

    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "")
    reset_settings()
    ev = fs.event("invoice.paid", {"id": "in_1", "object": "invoice"})
    r = await deliver(gateway, ev, "whsec_any")
    assert r.status_code == 503 and r.json()["error"]["code"] == "webhook_unconfigured"


# --------------------------------------------------------------------------- failure mid-processing
async def test_db_failure_mid_processing_is_5xx_and_the_retry_applies_once(gateway: Any, billing: Billing,
                                                                           make_user: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection holds the user's balance row: the event id insert succeeds, then the
    ledger write times out on the lock → the whole transaction rolls back → 500. Once the lock is
    gone, Stripe's redelivery applies the event exactly once."""
    from gateway.config import reset_settings

    monkeypatch.setenv("STRIPE_WEBHOOK_LOCK_TIMEOUT_MS", "300")
    reset_settings()
    user = await make_user(balance="0", tier="free")
    ev = await _bought(gateway, billing, user, 4200)
    customer = billing.customer(user.user_id)
    with psycopg.connect(billing.database_url) as blocker:
        blocker.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
        r = await deliver(gateway, ev, billing.webhook_secret)
        assert r.status_code == 500, r.text
        assert r.json()["error"]["code"] == "webhook_processing_failed"
        blocker.rollback()
    assert billing.scalar("SELECT count(*) FROM stripe_events WHERE id = %s", (ev["id"],)) == 0
    assert billing.scalar("SELECT stripe_customer_id FROM users WHERE id = %s", (user.user_id,)) == customer
    assert billing.ledger(user.user_id) == []
    assert webhooks.STATS[("checkout.session.completed", "failed")] == 1
    outcomes = [(await _send(gateway, billing, ev))["outcome"] for _ in range(2)]
    assert outcomes == ["credited", "duplicate"]
    assert billing.balance(user.user_id) == D("42")
    assert len(billing.ledger(user.user_id)) == 1


async def test_failure_after_partial_writes_leaves_nothing(gateway: Any, billing: Billing, make_user: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The subscription row is written before users.tier; a lock on the user row makes the tier
    update fail → the subscription row and the event id roll back with it."""
    from gateway.config import reset_settings

    monkeypatch.setenv("STRIPE_WEBHOOK_LOCK_TIMEOUT_MS", "300")
    reset_settings()
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    ev = fs.event("customer.subscription.created", _sub(customer, user.user_id, "pro"))
    before = billing.counts()
    with psycopg.connect(billing.database_url) as blocker:
        blocker.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user.user_id,))
        r = await deliver(gateway, ev, billing.webhook_secret)
        assert r.status_code == 500
        blocker.rollback()
    assert billing.counts() == before
    assert billing.tier(user.user_id) == "free"
    assert (await _send(gateway, billing, ev))["outcome"] == "applied"
    assert billing.tier(user.user_id) == "pro"
