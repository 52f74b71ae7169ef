"""Money safety of the Stripe webhook (issue 10), each case with real signed events against the
fake Stripe (current API version shapes) and the real Postgres:

- credit only checkout sessions we created, for what was paid, in USD;
- disputes take the credit back and block new requests until closed (won → given back, lost → kept);
- a refund that failed gives its share back;
- basil+ invoices (no payment_intent) still match their refunds through the invoice payments API;
- a plan's included credit is pro rata to what its invoice paid;
- subscription events tied on ``created`` store the state Stripe has.

Most flows go through our checkout route and the fake's "customer pays / bank refunds / cardholder
disputes" controls, which return the events Stripe would send; the tests deliver them signed.
"""

from __future__ import annotations

import random
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway.errors import Forbidden, InsufficientCredits
from gateway.money import ledger
from infra.local import fake_stripe as fs
from tests.support.billing import (
    PRICES,
    Billing,
    billing,
    checkout,
    deliver,
    deliver_all,
    fake_stripe_server,
    gateway,
    metric,
)

__all__ = ["billing", "fake_stripe_server", "gateway"]  # fixtures used by this module

# the stripe library's httpx client posts form bodies with ``data=`` (checkout route calls)
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Use .content=:DeprecationWarning")]

D = Decimal


async def _send(gateway: Any, billing: Billing, event: dict[str, Any]) -> str:
    r = await deliver(gateway, event, billing.webhook_secret)
    assert r.status_code == 200, r.text
    return str(r.json()["outcome"])


async def _buy(gateway: Any, billing: Billing, user: Any, credits: str, *, discount_percent: int = 0
               ) -> tuple[str, list[str]]:
    """Credits bought through our route, paid on the fake: (PaymentIntent, webhook outcomes)."""
    session = await checkout(gateway, user.api_key, credits=credits)
    events = billing.stripe.fake.complete(session["id"], discount_percent)
    outcomes = await deliver_all(gateway, billing, events)
    return str(events[-1]["data"]["object"]["payment_intent"]), outcomes


async def _subscribe(gateway: Any, billing: Billing, user: Any, plan: str, *, discount_percent: int = 0
                     ) -> tuple[dict[str, Any], list[str]]:
    """A plan bought through our route, paid on the fake: (the first invoice, webhook outcomes)."""
    session = await checkout(gateway, user.api_key, plan=plan)
    events = billing.stripe.fake.complete(session["id"], discount_percent)
    outcomes = await deliver_all(gateway, billing, events)
    return next(e["data"]["object"] for e in events if e["type"] == "invoice.paid"), outcomes


def _charge_paying(billing: Billing, invoice: dict[str, Any]) -> dict[str, Any]:
    [payment] = [p for p in billing.stripe.fake.invoice_payments.values() if p["invoice"] == invoice["id"]]
    return billing.stripe.fake.charge_of(payment["payment"]["payment_intent"])


# --------------------------------------------------------------------------- 1. only what we sold
async def test_payment_link_session_naming_our_user_is_not_credited_or_linked(gateway: Any, billing: Billing,
                                                                             make_user: Any) -> None:
    """A session we did not create (a Payment Link, another product on the Stripe account) that
    names our user in client_reference_id and metadata: recorded, 200, alarmed; no credit, and
    its customer is not linked to our user."""
    user = await make_user(balance="0", tier="free")
    session = fs.checkout_session(customer="cus_attacker" + uuid.uuid4().hex[:6], user_id=str(user.user_id),
                                  amount_cents=100_000, payment_intent="pi_" + uuid.uuid4().hex,
                                  metadata={"user_id": str(user.user_id), "kind": "credits"},
                                  payment_link="plink_" + uuid.uuid4().hex[:10])
    ev = fs.event("checkout.session.completed", session)
    assert [await _send(gateway, billing, ev) for _ in range(2)] == ["unmatched", "duplicate"]
    assert billing.balance(user.user_id) == 0 and billing.ledger(user.user_id) == []
    assert billing.customer(user.user_id) is None, "a foreign customer is never linked to our user"
    assert billing.sql("SELECT outcome, detail FROM stripe_events WHERE id = %s", (ev["id"],)) == [
        ("unmatched", "not_our_session")]
    assert metric("CheckoutSessionUnmatched") == 1


@pytest.mark.parametrize("change", ["customer", "mode", "user"])
async def test_our_session_arriving_changed_is_not_credited(gateway: Any, billing: Billing, make_user: Any,
                                                           change: str) -> None:
    user = await make_user(balance="0", tier="free")
    other = await make_user(balance="0", tier="free")
    session = await checkout(gateway, user.api_key, credits="50")
    customer = billing.customer(user.user_id)
    fields: dict[str, Any] = {"session_id": session["id"], "mode": "payment", "customer": customer,
                              "user_id": str(user.user_id), "amount_cents": 5000, "payment_intent": "pi_x" + change,
                              "metadata": {"user_id": str(user.user_id)}}
    fields.update({"customer": {"customer": "cus_someone_else"}, "mode": {"mode": "subscription"},
                   "user": {"user_id": str(other.user_id), "metadata": {"user_id": str(other.user_id)}}}[change])
    assert await _send(gateway, billing, fs.event("checkout.session.completed", fs.checkout_session(**fields))) \
        == "unmatched"
    assert billing.balance(user.user_id) == 0 and billing.balance(other.user_id) == 0
    assert billing.customer(user.user_id) == customer and billing.customer(other.user_id) is None
    assert billing.scalar("SELECT status FROM checkout_sessions WHERE id = %s", (session["id"],)) == "open"
    assert metric("CheckoutSessionUnmatched") == 1


async def test_discounted_session_credits_what_was_paid(gateway: Any, billing: Billing, make_user: Any) -> None:
    """A 40 % coupon on a 50.00 purchase: 30.00 paid, 30.00 credited (not the 50.00 subtotal); a
    full refund of the 30.00 takes all of it back."""
    user = await make_user(balance="0", tier="free")
    pi, outcomes = await _buy(gateway, billing, user, "50", discount_percent=40)
    assert outcomes == ["credited"]
    assert billing.balance(user.user_id) == D("30")
    assert billing.sql("SELECT amount_cents, credit FROM stripe_payments WHERE payment_intent = %s", (pi,)) == [
        (3000, D("30"))]
    assert billing.scalar("SELECT credited FROM checkout_sessions") == D("30")
    refund = billing.stripe.fake.refund_charge(billing.stripe.fake.charge_of(pi)["id"])
    assert await deliver_all(gateway, billing, refund) == ["refunded", "already_refunded"]
    assert billing.balance(user.user_id) == 0


async def test_tax_is_not_credit_and_a_free_session_credits_nothing(gateway: Any, billing: Billing,
                                                                   make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    taxed = await checkout(gateway, user.api_key, credits="20")
    session = fs.checkout_session(session_id=taxed["id"], customer=billing.customer(user.user_id),
                                  user_id=str(user.user_id), amount_cents=2000, tax_cents=400,
                                  payment_intent="pi_" + uuid.uuid4().hex)
    assert await _send(gateway, billing, fs.event("checkout.session.completed", session)) == "credited"
    assert billing.balance(user.user_id) == D("20")
    _pi, outcomes = await _buy(gateway, billing, user, "10", discount_percent=100)
    assert outcomes == ["recorded"] and billing.balance(user.user_id) == D("20")


async def test_non_usd_session_is_not_credited_and_alarms(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    ours = await checkout(gateway, user.api_key, credits="20")
    session = fs.checkout_session(session_id=ours["id"], customer=billing.customer(user.user_id),
                                  user_id=str(user.user_id), amount_cents=2000, currency="eur",
                                  payment_intent="pi_" + uuid.uuid4().hex)
    assert await _send(gateway, billing, fs.event("checkout.session.completed", session)) == "unmatched"
    assert billing.balance(user.user_id) == 0
    assert metric("NonUsdPayment") == 1


# --------------------------------------------------------------------------- 2. disputes, failed refunds
async def test_lost_dispute_takes_credit_back_and_blocks_requests_until_closed(
        gateway: Any, billing: Billing, make_user: Any, fake_upstream: Any) -> None:
    user = await make_user(balance="0", tier="free")
    pi, _ = await _buy(gateway, billing, user, "20")
    await ledger.credit(user.user_id, D("-15"), "usage", "spent-" + uuid.uuid4().hex)   # 5 left
    [opened] = billing.stripe.fake.dispute_charge(billing.stripe.fake.charge_of(pi)["id"])
    assert await _send(gateway, billing, opened) == "dispute_opened"
    assert billing.balance(user.user_id) == D("-15"), "the disputed 20 are taken back, below zero"
    assert metric("StripeDisputes") == 1

    chat = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    await ledger.credit(user.user_id, D("100"), "grant", "topup-" + uuid.uuid4().hex)   # money is not the issue
    r = await gateway.post("/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {user.api_key}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "payment_disputed", r.text
    with pytest.raises(Forbidden):
        await ledger.reserve(user.user_id, "req-" + uuid.uuid4().hex, D("0.01"))
    assert billing.scalar("SELECT count(*) FROM reservations") == 0

    [lost] = billing.stripe.fake.close_dispute(opened["data"]["object"]["id"], "lost")
    assert [await _send(gateway, billing, lost) for _ in range(2)] == ["dispute_closed", "duplicate"]
    assert billing.balance(user.user_id) == D("85"), "lost: the credit stays taken"
    r = await gateway.post("/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {user.api_key}"})
    assert r.status_code == 200, "closed: no longer blocked"
    assert [a for _k, a, ref in billing.ledger(user.user_id) if ref.startswith("stripe:dispute:")] == [D("-20")]


async def test_won_dispute_gives_the_credit_back(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    pi, _ = await _buy(gateway, billing, user, "20")
    [opened] = billing.stripe.fake.dispute_charge(billing.stripe.fake.charge_of(pi)["id"], amount=500)
    assert await _send(gateway, billing, opened) == "dispute_opened"
    assert billing.balance(user.user_id) == D("15"), "a partial dispute takes its share"
    with pytest.raises(Forbidden):
        await ledger.reserve(user.user_id, "req-" + uuid.uuid4().hex, D("0.01"))
    [won] = billing.stripe.fake.close_dispute(opened["data"]["object"]["id"], "won")
    assert await _send(gateway, billing, won) == "dispute_closed"
    assert billing.balance(user.user_id) == D("20")
    await ledger.reserve(user.user_id, "req-" + uuid.uuid4().hex, D("0.01"))
    refs = [(a, ref) for _k, a, ref in billing.ledger(user.user_id) if ref.startswith("stripe:dispute:")]
    dp = opened["data"]["object"]["id"]
    assert refs == [(D("-5"), f"stripe:dispute:{dp}:1"), (D("5"), f"stripe:dispute:{dp}:2")]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("result,taken", [("lost", D("20")), ("won", D("0"))])
async def test_dispute_events_shuffled_and_repeated(gateway: Any, billing: Billing, make_user: Any, seed: int,
                                                    result: str, taken: Decimal) -> None:
    """The purchase, the dispute's creation and its closing, each delivered three times in a
    shuffled order: the same end state every time, every movement a unique ledger reference."""
    user = await make_user(balance="0", tier="free")
    session = await checkout(gateway, user.api_key, credits="20")
    events = billing.stripe.fake.complete(session["id"])
    pi = events[-1]["data"]["object"]["payment_intent"]
    opened = billing.stripe.fake.dispute_charge(billing.stripe.fake.charge_of(pi)["id"])
    closed = billing.stripe.fake.close_dispute(opened[0]["data"]["object"]["id"], result)
    deliveries = [e for e in events + opened + closed for _ in range(3)]
    random.Random(seed).shuffle(deliveries)
    for e in deliveries:
        await _send(gateway, billing, e)
    assert billing.balance(user.user_id) == D("20") - taken
    assert billing.scalar("SELECT count(*) FROM ledger_entries GROUP BY reference HAVING count(*) > 1") is None
    assert billing.scalar("SELECT closed FROM stripe_disputes") is True
    await ledger.credit(user.user_id, D("1"), "grant", "topup-" + uuid.uuid4().hex)
    await ledger.reserve(user.user_id, "req-" + uuid.uuid4().hex, D("0.01"))   # not blocked once closed


async def test_a_failed_refund_gives_its_share_back(gateway: Any, billing: Billing, make_user: Any) -> None:
    """Refund 5 of 20 (5 taken back), the refund fails (5 given back), refund 8 (8 taken back):
    12 left whatever Stripe's charge.amount_refunded says after the failure."""
    user = await make_user(balance="0", tier="free")
    pi, _ = await _buy(gateway, billing, user, "20")
    charge_id = billing.stripe.fake.charge_of(pi)["id"]
    first = billing.stripe.fake.refund_charge(charge_id, 500)
    assert await deliver_all(gateway, billing, first) == ["refunded", "already_refunded"]
    assert billing.balance(user.user_id) == D("15")
    refund_id = first[1]["data"]["object"]["id"]
    failed = billing.stripe.fake.fail_refund(refund_id)
    assert await deliver_all(gateway, billing, failed) == ["restored", "already_refunded"]
    assert billing.balance(user.user_id) == D("20")
    assert metric("RefundFailedRestored") == 1
    # The fake words the failure as Stripe's balance does: amount_refunded 500 -> 0, now 800. charge.refunded
    # alone cannot tell 800 from "the failed 500 still counted" (3 taken), refund.created settles it (5 more).
    again = billing.stripe.fake.refund_charge(charge_id, 800)
    assert await deliver_all(gateway, billing, again) == ["refunded", "refunded"]
    assert billing.balance(user.user_id) == D("12")
    assert billing.scalar("SELECT count(*) FROM ledger_entries GROUP BY reference HAVING count(*) > 1") is None


@pytest.mark.parametrize("seed", range(4))
async def test_failed_refund_when_stripe_keeps_amount_refunded(gateway: Any, billing: Billing, make_user: Any,
                                                               seed: int) -> None:
    """The other way Stripe could word it: charge.amount_refunded still counts the failed refund.
    Every event three times, shuffled: 20 - 5 (failed, back) - 8 = 12."""
    user = await make_user(balance="0", tier="free")
    pi, _ = await _buy(gateway, billing, user, "20")
    ch = billing.stripe.fake.charge_of(pi)
    t0 = int(time.time()) - 100
    a = fs.refund(charge_id=ch["id"], payment_intent=pi, amount=500, created=t0)
    b = fs.refund(charge_id=ch["id"], payment_intent=pi, amount=800, created=t0 + 20)
    events = [fs.event("charge.refunded", dict(ch, amount_refunded=500), created=t0),
              fs.event("refund.created", a, created=t0),
              fs.event("refund.failed", dict(a, status="failed"), created=t0 + 10),
              fs.event("charge.refund.updated", dict(a, status="failed"), created=t0 + 10),
              fs.event("charge.refunded", dict(ch, amount_refunded=1300), created=t0 + 20),
              fs.event("refund.created", b, created=t0 + 20)]
    deliveries = [e for e in events for _ in range(3)]
    random.Random(seed).shuffle(deliveries)
    for e in deliveries:
        await _send(gateway, billing, e)
    assert billing.balance(user.user_id) == D("12")
    assert billing.scalar("SELECT count(*) FROM ledger_entries GROUP BY reference HAVING count(*) > 1") is None


# --------------------------------------------------------------------------- 3. current API shapes
async def test_basil_invoice_refund_claws_back_the_included_credit(gateway: Any, billing: Billing,
                                                                  make_user: Any) -> None:
    """invoice.paid of the current API version carries no payment_intent and no payments: the
    webhook asks the invoice payments API, so the refund (and a dispute) of that payment takes
    the included credit back."""
    user = await make_user(balance="0", tier="free")
    invoice, outcomes = await _subscribe(gateway, billing, user, "team")
    assert outcomes == ["applied", "credited", "already_credited", "linked"]
    assert not {"payment_intent", "payments", "charge", "subscription"} & set(invoice)
    assert billing.balance(user.user_id) == D("50")
    asked = billing.stripe.requests("/v1/invoice_payments", "GET")
    assert asked and asked[0]["params"] == {"invoice": invoice["id"], "status": "paid", "limit": "100"}
    charge = _charge_paying(billing, invoice)
    assert await deliver_all(gateway, billing, billing.stripe.fake.refund_charge(charge["id"], 4950)) == [
        "refunded", "already_refunded"]
    assert billing.balance(user.user_id) == D("25"), "half the invoice refunded: half the included credit"
    [dispute] = billing.stripe.fake.dispute_charge(charge["id"])   # the other half, disputed
    assert await _send(gateway, billing, dispute) == "dispute_opened"
    assert billing.balance(user.user_id) == 0


async def test_invoice_credited_before_its_payment_was_listed_is_matched_by_the_refund(
        gateway: Any, billing: Billing, make_user: Any) -> None:
    """The invoice payments API had nothing yet when invoice.paid was processed (the credit was
    granted anyway): the refund's PaymentIntent finds the invoice through the same API."""
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    inv = fs.invoice(customer=customer, subscription_id="sub_" + uuid.uuid4().hex[:10], price_id=PRICES["pro"])
    assert await _send(gateway, billing, fs.event("invoice.paid", inv)) == "credited"
    assert billing.balance(user.user_id) == D("5")
    pi = "pi_" + uuid.uuid4().hex
    billing.stripe.fake.add_invoice(inv, pi)   # now Stripe lists it
    refund = billing.stripe.fake.refund_charge(billing.stripe.fake.charge_of(pi)["id"])
    assert await deliver_all(gateway, billing, refund) == ["refunded", "already_refunded"]
    assert billing.balance(user.user_id) == 0


async def test_stripe_unreachable_while_resolving_an_invoice_is_5xx_then_applies_once(
        gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    inv = billing.stripe.fake.add_invoice(fs.invoice(customer=customer, subscription_id="sub_x" + uuid.uuid4().hex[:6],
                                                     price_id=PRICES["pro"]), "pi_" + uuid.uuid4().hex)
    ev = fs.event("invoice.paid", inv)
    before = billing.counts()
    billing.stripe.fake.failures.append(fs.Failure(status=500, times=1, path_prefix="/v1/invoice_payments"))
    r = await deliver(gateway, ev, billing.webhook_secret)
    assert r.status_code == 500 and r.json()["error"]["code"] == "webhook_processing_failed"
    assert billing.counts() == before, "nothing written: Stripe will retry the event"
    assert [await _send(gateway, billing, ev) for _ in range(2)] == ["credited", "duplicate"]
    assert billing.balance(user.user_id) == D("5")
    assert billing.scalar("SELECT count(*) FROM stripe_payments") == 1


# --------------------------------------------------------------------------- 4. included credit, currency
async def test_included_credit_is_pro_rata_to_what_was_paid(gateway: Any, billing: Billing, make_user: Any) -> None:
    """A 99 %-off coupon on pro (20.00 → 0.20 paid) grants 1 % of its 5.00 included credit."""
    user = await make_user(balance="0", tier="free")
    invoice, outcomes = await _subscribe(gateway, billing, user, "pro", discount_percent=99)
    assert invoice["amount_paid"] == 20 and invoice["subtotal"] == 2000
    assert outcomes[1] == "credited" and billing.balance(user.user_id) == D("0.05")
    assert billing.scalar("SELECT credit FROM stripe_invoices WHERE id = %s", (invoice["id"],)) == D("0.05")
    renewal = fs.invoice(customer=billing.customer(user.user_id), subscription_id=invoice["parent"][
        "subscription_details"]["subscription"], price_id=PRICES["pro"], amount=2000, tax=400,
        billing_reason="subscription_cycle", payment_intent="pi_" + uuid.uuid4().hex, expand_payments=True)
    assert await _send(gateway, billing, fs.event("invoice.paid", renewal)) == "credited"
    assert billing.balance(user.user_id) == D("5.05"), "full price paid (plus tax): the full 5.00, no more"


async def test_non_usd_invoice_is_not_credited_and_alarms(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    customer = billing.link_customer(user.user_id)
    inv = fs.invoice(customer=customer, subscription_id="sub_" + uuid.uuid4().hex[:10], price_id=PRICES["pro"],
                     currency="eur")
    assert await _send(gateway, billing, fs.event("invoice.paid", inv)) == "recorded"
    assert billing.balance(user.user_id) == 0 and metric("NonUsdPayment") == 1


# --------------------------------------------------------------------------- 5. same-second updates
@pytest.mark.parametrize("stale_first", [True, False])
async def test_same_second_subscription_updates_store_stripes_state(gateway: Any, billing: Billing,
                                                                   make_user: Any, stale_first: bool) -> None:
    """Two customer.subscription.updated of the same second (pro → team → premium in the
    portal): their order is unknowable from ``created``, so the state is read from Stripe."""
    user = await make_user(balance="0", tier="free")
    invoice, _ = await _subscribe(gateway, billing, user, "pro")
    sub_id = invoice["parent"]["subscription_details"]["subscription"]
    live = billing.stripe.fake.subscriptions[sub_id]
    live["items"]["data"][0]["price"] = fs.price(PRICES["premium"], 4900)   # where Stripe ended up
    t = int(time.time()) + 5
    team = fs.event("customer.subscription.updated", dict(live, items={"object": "list", "data": [
        dict(live["items"]["data"][0], price=fs.price(PRICES["team"], 9900))]}), created=t)
    premium = fs.event("customer.subscription.updated", live, created=t)
    for ev in ([team, premium] if stale_first else [premium, team]):
        assert await _send(gateway, billing, ev) == "applied"
    assert billing.tier(user.user_id) == "premium"
    assert billing.scalar("SELECT price_id FROM subscriptions WHERE stripe_subscription_id = %s", (sub_id,)) \
        == PRICES["premium"]
    assert billing.stripe.requests(f"/v1/subscriptions/{sub_id}", "GET"), "read from Stripe on the tie"


async def test_reserve_refusal_wording_is_unchanged_without_disputes(billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    with pytest.raises(InsufficientCredits):
        await ledger.reserve(user.user_id, "req-" + uuid.uuid4().hex, D("0.01"))
