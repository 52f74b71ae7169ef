"""Billing pieces that need no database: signature verification, Stripe object parsing, the
checkout body, idempotency keys and the fake's form decoding."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import stripe

from gateway.billing import stripe_api, webhooks
from gateway.billing.routes import CheckoutRequest
from gateway.config import Settings
from gateway.errors import BadRequest
from infra.local import fake_stripe as fs

SECRET = "whsec_unit_test_secret"


def _settings(**kw: object) -> Settings:
    return Settings(stripe_webhook_secret=SECRET, **kw)  # type: ignore[arg-type]


def test_our_signature_scheme_is_stripes() -> None:
    body = json.dumps(fs.event("invoice.paid", {"id": "in_1", "object": "invoice"}))
    t = int(time.time())
    assert fs.sign(body, SECRET, t) == stripe.WebhookSignature.generate_signature_header(body, SECRET, t)
    event = webhooks.verify(body.encode(), fs.sign(body, SECRET), _settings())
    assert event["type"] == "invoice.paid"


@pytest.mark.parametrize("mutate,code", [
    (lambda body, sig: (body, sig.replace("v1=", "v1=0")), "invalid_signature"),
    (lambda body, sig: (body + " ", sig), "invalid_signature"),
    (lambda body, sig: (body, None), "invalid_signature"),
    (lambda body, sig: (body, fs.sign(body, SECRET, int(time.time()) - 301)), "signature_expired"),
    (lambda body, sig: ("[]", fs.sign("[]", SECRET)), "malformed_event"),
    (lambda body, sig: ('{"object": "event", "id": "evt_1", "type": "x", "created": "1", "data": {"object": {}}}',
                        fs.sign('{"object": "event", "id": "evt_1", "type": "x", "created": "1", "data": '
                                '{"object": {}}}', SECRET)), "malformed_event"),
])
def test_verify_refuses(mutate: object, code: str) -> None:
    body = json.dumps(fs.event("invoice.paid", {"id": "in_1", "object": "invoice"}))
    payload, sig = mutate(body, fs.sign(body, SECRET))  # type: ignore[operator]
    with pytest.raises(BadRequest) as err:
        webhooks.verify(payload.encode(), sig, _settings())
    assert err.value.code == code and err.value.status == 400


def test_subscription_item_both_api_shapes() -> None:
    new = fs.subscription(customer="cus_1", price_id="price_a", period_start=100, period_end=200)
    old = fs.subscription(customer="cus_1", price_id="price_a", period_start=100, period_end=200, legacy=True)
    assert "current_period_end" not in new and "current_period_end" in old
    assert webhooks._subscription_item(new) == ("price_a", 100, 200)
    assert webhooks._subscription_item(old) == ("price_a", 100, 200)


def test_invoice_fields_both_api_shapes() -> None:
    for legacy in (False, True):
        inv = fs.invoice(customer="cus_1", subscription_id="sub_1", price_id="price_a", payment_intent="pi_1",
                         subscription_metadata={"user_id": "u"}, legacy=legacy)
        assert webhooks._invoice_subscription(inv) == ("sub_1", {"user_id": "u"})
        assert webhooks._line_price(inv["lines"]["data"][0]) == "price_a"
        # basil+: an event's invoice names no payment (the webhook asks the invoice payments API)
        assert webhooks._invoice_payment_intent(inv) == ("pi_1" if legacy else None)
    expanded = fs.invoice(customer="cus_1", subscription_id="sub_1", price_id="price_a", payment_intent="pi_1",
                          expand_payments=True)
    assert webhooks._invoice_payment_intent(expanded) == "pi_1"


def _declared(cls: type) -> set[str]:
    """The fields the stripe library declares for an object of its pinned API version."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names |= {n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_")}
    return names - {"OBJECT_NAME"}


def test_fake_stripe_speaks_the_api_version_the_library_pins() -> None:
    """The fake's objects have only fields the installed stripe library declares for the version it
    pins (generated from Stripe's OpenAPI spec of that version), and none of the removed ones."""
    assert fs.API_VERSION == stripe.api_version
    inv = fs.invoice(customer="cus_1", subscription_id="sub_1", price_id="price_a", discount=100, tax=50,
                     payment_intent="pi_1", expand_payments=True)
    line = inv["lines"]["data"][0]
    sub = fs.subscription(customer="cus_1", price_id="price_a")
    session = fs.checkout_session(customer="cus_1", amount_cents=100, payment_intent="pi_1", tax_cents=5)
    fake = fs.FakeStripe()
    fake.add_price("price_a", 2000)
    ch = fs.charge(payment_intent="pi_1", customer="cus_1", amount=2000)
    fake.charges[ch["id"]] = ch
    [_refunded, created] = fake.refund_charge(ch["id"], 500)
    [dispute] = fake.dispute_charge(ch["id"])
    contract: list[tuple[dict[str, object], type]] = [
        (inv, stripe.Invoice), (inv["parent"], stripe.Invoice.Parent),
        (inv["parent"]["subscription_details"], stripe.Invoice.Parent.SubscriptionDetails),
        (inv["status_transitions"], stripe.Invoice.StatusTransitions), (line, stripe.InvoiceLineItem),
        (line["parent"], stripe.InvoiceLineItem.Parent), (line["pricing"], stripe.InvoiceLineItem.Pricing),
        (inv["payments"]["data"][0], stripe.InvoicePayment),
        (inv["payments"]["data"][0]["payment"], stripe.InvoicePayment.Payment),
        (sub, stripe.Subscription), (sub["items"]["data"][0], stripe.SubscriptionItem),
        (session, stripe.checkout.Session), (session["total_details"], stripe.checkout.Session.TotalDetails),
        (ch, stripe.Charge), (created["data"]["object"], stripe.Refund), (dispute["data"]["object"], stripe.Dispute),
        (fake.prices["price_a"], stripe.Price), (dispute, stripe.Event),
        (fake.create_customer({})[1], stripe.Customer),
    ]
    for obj, cls in contract:
        assert set(obj) <= _declared(cls), (cls.__name__, set(obj) - _declared(cls))
    assert not {"payment_intent", "charge", "subscription", "paid", "subscription_details"} & set(inv)
    assert not {"current_period_start", "current_period_end", "plan"} & set(sub)
    assert not {"price", "plan", "type", "proration"} & set(line)


def test_expandable_ids_and_cents() -> None:
    assert webhooks._id("pi_1") == "pi_1" and webhooks._id({"id": "pi_2", "object": "payment_intent"}) == "pi_2"
    assert webhooks._id(None) is None and webhooks._id("") is None
    assert webhooks._usd(2550) == Decimal("25.50") and webhooks._usd(1) == Decimal("0.01")
    with pytest.raises(webhooks.MalformedEvent):
        webhooks._int(25.5, "amount")
    with pytest.raises(webhooks.MalformedEvent):
        webhooks._int(True, "amount")


@pytest.mark.parametrize("body,ok", [
    ({"credits": "25.50"}, True), ({"credits": 10}, True), ({"plan": "pro"}, True),
    ({"credits": "1.001"}, False), ({"credits": 0}, False), ({"credits": "Infinity"}, False),
    ({}, False), ({"credits": 5, "plan": "pro"}, False), ({"plan": ""}, False), ({"credits": 5, "x": 1}, False),
])
def test_checkout_body(body: dict[str, object], ok: bool) -> None:
    if ok:
        CheckoutRequest.model_validate(body)
    else:
        with pytest.raises(ValueError):
            CheckoutRequest.model_validate(body)


def test_idempotency_keys_are_stable_and_short() -> None:
    a = stripe_api.idempotency_key("checkout", "user-1", "client:abc")
    assert a == stripe_api.idempotency_key("checkout", "user-1", "client:abc")
    assert a != stripe_api.idempotency_key("checkout", "user-2", "client:abc")
    assert a.startswith("mlp-checkout-") and len(a) < 64


def test_fake_form_decoding() -> None:
    pairs = [("mode", "payment"), ("line_items[0][price_data][unit_amount]", "2550"),
             ("line_items[0][price_data][product_data][name]", "API credit"), ("line_items[0][quantity]", "1"),
             ("line_items[1][price]", "price_x"), ("metadata[user_id]", "u1"), ("expand[0]", "customer")]
    assert fs.decode_form(pairs) == {
        "mode": "payment", "metadata": {"user_id": "u1"}, "expand": ["customer"],
        "line_items": [{"price_data": {"unit_amount": "2550", "product_data": {"name": "API credit"}},
                        "quantity": "1"}, {"price": "price_x"}]}


def test_subscribed_events_are_the_handled_ones_everywhere() -> None:
    """The endpoint's events in docs/billing.md (the curl that creates it), the fake Stripe's
    enabled events and the webhook's handlers are one list."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "billing.md").read_text()
    documented = set(re.findall(r'enabled_events\[\]=([a-z_.]+)"', docs))
    assert documented == set(webhooks.HANDLERS) == set(fs.ENABLED_EVENTS)
