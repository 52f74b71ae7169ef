"""POST /v1/billing/checkout, POST /v1/billing/portal and GET /v1/subscription, with the stripe
library talking to the fake Stripe API (infra/local/fake_stripe.py); assertions on the requests
it received (parameters, idempotency keys)."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from infra.local import fake_stripe as fs
from tests.support.billing import PRICES, STRIPE_KEY, Billing, billing, deliver, fake_stripe_server, gateway

__all__ = ["billing", "fake_stripe_server", "gateway"]  # fixtures used by this module

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Use .content=:DeprecationWarning")]


def _auth(user: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {user.api_key}"}


async def test_credit_checkout_creates_customer_once_and_a_payment_session(gateway: Any, billing: Billing,
                                                                          make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    r = await gateway.post("/v1/billing/checkout", json={"credits": "25.50"}, headers=_auth(user))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "checkout.session" and body["mode"] == "payment"
    assert body["id"].startswith("cs_test_") and body["url"].startswith("https://checkout.stripe.com/")

    customers = billing.stripe.requests("/v1/customers", "POST")
    assert len(customers) == 1
    c = customers[0]
    assert c["params"]["metadata"] == {"user_id": str(user.user_id)} and c["params"]["email"].endswith("@example.com")
    assert c["idempotency_key"].startswith("mlp-customer-") and c["api_key"] == STRIPE_KEY
    assert c["stripe_version"]
    customer_id = billing.scalar("SELECT stripe_customer_id FROM users WHERE id = %s", (user.user_id,))
    assert customer_id in billing.stripe.fake.customers

    [s] = billing.stripe.requests("/v1/checkout/sessions", "POST")
    p = s["params"]
    assert p["mode"] == "payment" and p["customer"] == customer_id
    assert p["client_reference_id"] == str(user.user_id)
    assert p["line_items"] == [{"quantity": "1", "price_data": {
        "currency": "usd", "unit_amount": "2550",
        "product_data": {"name": "API credit", "description": "$25.50 of prepaid API credit"}}}]
    assert p["metadata"] == {"user_id": str(user.user_id), "kind": "credits", "credits": "25.50"}
    assert p["payment_intent_data"] == {"metadata": {"user_id": str(user.user_id), "credits": "25.50"}}
    assert p["success_url"].startswith("http") and p["cancel_url"].startswith("http")
    assert s["idempotency_key"].startswith("mlp-checkout-")
    assert billing.sql("SELECT mode, credits, status FROM checkout_sessions WHERE id = %s", (body["id"],)) == [
        ("payment", Decimal("25.50"), "open")]

    # A second checkout reuses the customer.
    r2 = await gateway.post("/v1/billing/checkout", json={"credits": 10}, headers=_auth(user))
    assert r2.status_code == 200 and r2.json()["id"] != body["id"]
    assert len(billing.stripe.requests("/v1/customers", "POST")) == 1
    assert billing.stripe.requests("/v1/checkout/sessions", "POST")[-1]["params"]["customer"] == customer_id
    # No credit moves until Stripe's signed webhook says the payment succeeded.
    assert billing.balance(user.user_id) == 0


async def test_client_idempotency_key_returns_the_same_session(gateway: Any, billing: Billing,
                                                              make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    headers = {**_auth(user), "idempotency-key": "order-" + uuid.uuid4().hex}
    first = await gateway.post("/v1/billing/checkout", json={"credits": 20}, headers=headers)
    again = await gateway.post("/v1/billing/checkout", json={"credits": 20}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    keys = [r["idempotency_key"] for r in billing.stripe.requests("/v1/checkout/sessions", "POST")]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert billing.scalar("SELECT count(*) FROM checkout_sessions WHERE user_id = %s", (user.user_id,)) == 1
    other = await gateway.post("/v1/billing/checkout", json={"credits": 30}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    # Without the header every request is a new session (each with its own key).
    a = await gateway.post("/v1/billing/checkout", json={"credits": 20}, headers=_auth(user))
    b = await gateway.post("/v1/billing/checkout", json={"credits": 20}, headers=_auth(user))
    assert a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize("body,code", [
    ({"credits": "4.99"}, "invalid_amount"), ({"credits": 1000.01}, "invalid_amount"),
    ({"credits": "10.001"}, "invalid_request"), ({"credits": -5}, "invalid_request"),
    ({"credits": "NaN"}, "invalid_request"), ({}, "invalid_request"),
    ({"credits": 10, "plan": "pro"}, "invalid_request"), ({"plan": "free"}, "plan_not_available"),
    ({"plan": "enterprise"}, "plan_not_available"), ({"plan": "gold"}, "plan_not_available"),
    ({"credits": 10, "coupon": "x"}, "invalid_request"),
])
async def test_checkout_validation(gateway: Any, billing: Billing, make_user: Any, body: dict[str, Any],
                                   code: str) -> None:
    user = await make_user(balance="0", tier="free")
    r = await gateway.post("/v1/billing/checkout", json=body, headers=_auth(user))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert billing.stripe.requests() == []


async def test_subscription_checkout(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    r = await gateway.post("/v1/billing/checkout", json={"plan": "pro"}, headers=_auth(user))
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "subscription"
    [s] = billing.stripe.requests("/v1/checkout/sessions", "POST")
    p = s["params"]
    assert p["mode"] == "subscription" and p["line_items"] == [{"price": PRICES["pro"], "quantity": "1"}]
    assert p["subscription_data"] == {"metadata": {"user_id": str(user.user_id), "tier": "pro"}}
    assert p["metadata"]["plan"] == "pro" and p["client_reference_id"] == str(user.user_id)
    assert billing.sql("SELECT mode, plan FROM checkout_sessions WHERE id = %s", (r.json()["id"],)) == [
        ("subscription", "pro")]


async def test_second_subscription_is_refused_while_one_is_live(gateway: Any, billing: Billing,
                                                               make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    r = await gateway.post("/v1/billing/checkout", json={"plan": "pro"}, headers=_auth(user))
    events = billing.stripe.fake.complete(r.json()["id"])   # the customer pays
    for ev in events:
        assert (await deliver(gateway, ev, billing.webhook_secret)).status_code == 200
    assert billing.tier(user.user_id) == "pro"
    again = await gateway.post("/v1/billing/checkout", json={"plan": "team"}, headers=_auth(user))
    assert again.status_code == 409 and again.json()["error"]["code"] == "subscription_exists"
    sub_id = events[0]["data"]["object"]["id"]
    assert billing.stripe.requests(f"/v1/subscriptions/{sub_id}", "GET")
    # Cancelled in Stripe but the deleted event has not arrived yet: Stripe's word wins.
    billing.stripe.fake.cancel_subscription(sub_id)
    allowed = await gateway.post("/v1/billing/checkout", json={"plan": "team"}, headers=_auth(user))
    assert allowed.status_code == 200, allowed.text


async def test_portal_session(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    r = await gateway.post("/v1/billing/portal", headers=_auth(user))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "billing_portal.session" and body["url"].startswith("https://billing.stripe.com/")
    [p] = billing.stripe.requests("/v1/billing_portal/sessions", "POST")
    customer_id = billing.scalar("SELECT stripe_customer_id FROM users WHERE id = %s", (user.user_id,))
    assert p["params"]["customer"] == customer_id and p["params"]["return_url"].startswith("http")
    assert p["idempotency_key"].startswith("mlp-portal-")


async def test_stripe_errors_map_to_gateway_errors(gateway: Any, billing: Billing, make_user: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.billing import stripe_api
    from gateway.config import reset_settings
    from infra.local.servers import free_port

    user = await make_user(balance="0", tier="free")
    billing.stripe.fake.failures.append(fs.Failure(status=500, times=1, path_prefix="/v1/customers"))
    r = await gateway.post("/v1/billing/checkout", json={"credits": 10}, headers=_auth(user))
    assert r.status_code == 502 and r.json()["error"]["code"] == "billing_provider_error"
    assert billing.scalar("SELECT stripe_customer_id FROM users WHERE id = %s", (user.user_id,)) is None

    monkeypatch.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    reset_settings()
    stripe_api.reset_client()
    r = await gateway.post("/v1/billing/checkout", json={"credits": 10}, headers=_auth(user))
    assert r.status_code == 503 and r.json()["error"]["code"] == "billing_unavailable"

    monkeypatch.setenv("STRIPE_SECRET_KEY", "")
    reset_settings()
    r = await gateway.post("/v1/billing/portal", headers=_auth(user))
    assert r.status_code == 503 and r.json()["error"]["code"] == "billing_unconfigured"


async def test_billing_routes_need_credentials(gateway: Any, billing: Billing) -> None:
    for method, path in (("POST", "/v1/billing/checkout"), ("POST", "/v1/billing/portal"), ("GET", "/v1/subscription")):
        r = await gateway.request(method, path, json={"credits": 10} if method == "POST" else None)
        assert r.status_code == 401, path
        r = await gateway.request(method, path, headers={"authorization": "Bearer sk-mlp-wrong"})
        assert r.status_code == 401, path
    assert billing.stripe.requests() == []


async def test_subscription_status_route(gateway: Any, billing: Billing, make_user: Any) -> None:
    user = await make_user(balance="0", tier="free")
    r = await gateway.get("/v1/subscription", headers=_auth(user))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == "free" and body["status"] == "none" and body["subscription_id"] is None
    assert body["cancel_at_period_end"] is False and body["current_period_end"] is None
    assert body["rate_limit"] == {"requests_per_minute": 10}
    assert body["quota"]["limit"] == 50 and body["quota"]["used"] == 0 and body["quota"]["remaining"] == 50
    assert body["quota"]["resets_at"]
    billing.sql("UPDATE balances SET period_requests = 7 WHERE user_id = %s", (user.user_id,))

    customer = billing.link_customer(user.user_id)
    sub = fs.subscription(customer=customer, price_id=PRICES["premium"], period_start=int(time.time()))
    assert (await deliver(gateway, fs.event("customer.subscription.created", sub), billing.webhook_secret)
            ).status_code == 200
    body = (await gateway.get("/v1/subscription", headers=_auth(user))).json()
    assert body["tier"] == "premium" and body["status"] == "active" and body["subscription_id"] == sub["id"]
    assert body["rate_limit"] == {"requests_per_minute": 120} and body["included_credit"] == "15"
    assert body["quota"] == {"limit": 2500, "used": 7, "remaining": 2493, "resets_at": body["quota"]["resets_at"]}
    end = sub["items"]["data"][0]["current_period_end"]
    assert body["current_period_end"].startswith(time.strftime("%Y-%m-%dT%H:%M", time.gmtime(end)))


async def test_deployed_stage_refuses_local_redirect_urls(gateway: Any, billing: Billing, make_user: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import reset_settings

    user = await make_user(balance="0", tier="free")
    monkeypatch.setenv("STAGE", "prod")
    reset_settings()
    r = await gateway.post("/v1/billing/checkout", json={"credits": 10}, headers=_auth(user))
    assert r.status_code == 503 and r.json()["error"]["code"] == "billing_unconfigured"
    assert billing.stripe.requests() == []
    monkeypatch.setenv("BILLING_SUCCESS_URL", "https://app.example.com/billing/done?session_id={CHECKOUT_SESSION_ID}")
    monkeypatch.setenv("BILLING_CANCEL_URL", "https://app.example.com/billing")
    reset_settings()
    r = await gateway.post("/v1/billing/checkout", json={"credits": 10}, headers=_auth(user))
    assert r.status_code == 200, r.text
    p = billing.stripe.requests("/v1/checkout/sessions", "POST")[0]["params"]
    assert p["success_url"] == "https://app.example.com/billing/done?session_id={CHECKOUT_SESSION_ID}"


async def test_restricted_key_gets_403_on_checkout_and_portal(gateway: Any, billing: Billing,
                                                             make_user: Any) -> None:
    """A key with its own rpm or spend cap (or the 'inference' scope) cannot spend the account's
    money on Stripe or change its plan: 403 insufficient_scope, no Stripe request made."""
    from gateway.account import users

    user = await make_user(balance="0", tier="free")
    capped = await users.create_api_key(user.user_id, "capped", spend_cap=Decimal("1"))
    limited = await users.create_api_key(user.user_id, "limited", rpm=5)
    scoped = await users.create_api_key(user.user_id, "ci", scope="inference")
    for key in (capped, limited, scoped):
        h = {"authorization": f"Bearer {key.secret}"}
        for path, body in (("/v1/billing/checkout", {"credits": 10}), ("/v1/billing/checkout", {"plan": "pro"}),
                           ("/v1/billing/portal", None)):
            r = await gateway.post(path, json=body, headers=h)
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", (path, r.text)
        assert (await gateway.get("/v1/subscription", headers=h)).status_code == 200, "reading the plan is fine"
    assert billing.stripe.requests() == []
    assert billing.scalar("SELECT count(*) FROM checkout_sessions") == 0
    r = await gateway.post("/v1/billing/portal", headers=_auth(user))   # the account's full key may
    assert r.status_code == 200, r.text


async def test_sessions_are_usd_only(gateway: Any, billing: Billing, make_user: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session is pinned to USD (currency=usd, Adaptive Pricing off: no local-currency
    presentment), and a plan whose Stripe price is not in USD is refused before a session exists."""
    from gateway.billing import stripe_api
    from gateway.config import reset_settings

    user = await make_user(balance="0", tier="free")
    for body in ({"credits": 10}, {"plan": "pro"}):
        assert (await gateway.post("/v1/billing/checkout", json=body, headers=_auth(user))).status_code == 200
    sent = [r["params"] for r in billing.stripe.requests("/v1/checkout/sessions", "POST")]
    assert [(p["currency"], p["adaptive_pricing"]) for p in sent] == [("usd", {"enabled": "false"})] * 2
    assert [r["path"] for r in billing.stripe.requests(method="GET")] == [f"/v1/prices/{PRICES['pro']}"]

    billing.stripe.fake.add_price("price_test_premium_eur", 4500, currency="eur")
    monkeypatch.setenv("TIERS_JSON", '{"pro": {"stripe_price_id": "price_test_pro"}, '
                                     '"premium": {"stripe_price_id": "price_test_premium_eur"}}')
    reset_settings()
    stripe_api.reset_client()
    billing.stripe.fake.requests.clear()
    r = await gateway.post("/v1/billing/checkout", json={"plan": "premium"}, headers=_auth(user))
    assert r.status_code == 503 and r.json()["error"]["code"] == "billing_unconfigured", r.text
    assert billing.stripe.requests("/v1/checkout/sessions", "POST") == []
    assert billing.scalar("SELECT count(*) FROM checkout_sessions WHERE plan = 'premium'") == 0
