"""Billing end to end on the local stack (`make dev` in a subprocess): with no STRIPE_SECRET_KEY
the stack runs the fake Stripe API (infra/local/fake_stripe.py) and writes its URL and the
webhook signing secret to the credentials file.

- credit checkout → the customer pays → signed checkout.session.completed → balance raised →
  a chat query that was refused with 402 is served;
- subscription to pro (delivered by the fake exactly as Stripe would: signed POSTs to
  /webhooks/stripe) → the very next request sees pro's rate limit and monthly quota.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tests.e2e.conftest import create_user
from tests.support.billing import signature_header

pytestmark = pytest.mark.e2e

MODEL = "openai/gpt-4o-mini"  # allowed on the free tier (under its price cap)
MESSAGES = [{"role": "user", "content": "Hi [[words:3]]"}]


def _sdk(stack: dict[str, Any], user: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["openai_base_url"], api_key=user["api_key"], max_retries=0)


def _auth(user: dict[str, str]) -> dict[str, str]:
    return {"authorization": f"Bearer {user['api_key']}"}


def _sql(stack: dict[str, Any], query: str, params: Any = None) -> Any:
    with psycopg.connect(stack["database_url"], autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def test_stack_runs_the_fake_stripe(local_stack: dict[str, Any]) -> None:
    assert local_stack["fake_stripe_url"] and local_stack["stripe_webhook_secret"].startswith("whsec_")
    assert httpx.get(local_stack["fake_stripe_url"] + "/__fake/health", timeout=5).json() == {"ok": True}


def test_credit_checkout_webhook_raises_balance_and_allows_the_query(local_stack: dict[str, Any]) -> None:
    base, fake = local_stack["base_url"], local_stack["fake_stripe_url"]
    user = create_user(local_stack["database_url"], balance="0", tier="free")
    sdk = _sdk(local_stack, user)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert refused.value.status_code == 402

    r = httpx.post(f"{base}/v1/billing/checkout", json={"credits": 20}, headers=_auth(user), timeout=30)
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["url"].startswith(("https://checkout.stripe.com/", fake + "/c/pay/"))  # the fake's hosted page

    # The customer pays on Stripe's page; Stripe signs checkout.session.completed and sends it.
    [event] = httpx.post(f"{fake}/__fake/checkout/sessions/{session['id']}/complete", json={},
                         timeout=10).json()["events"]
    assert event["type"] == "checkout.session.completed"
    assert event["data"]["object"]["client_reference_id"] == user["user_id"]
    body = json.dumps(event)
    headers = {"content-type": "application/json",
               "stripe-signature": signature_header(body, local_stack["stripe_webhook_secret"])}
    forged = httpx.post(f"{base}/webhooks/stripe", content=body, timeout=10, headers={
        **headers, "stripe-signature": signature_header(body, "whsec_not_the_secret")})
    assert forged.status_code == 400
    assert _sql(local_stack, "SELECT balance FROM balances WHERE user_id = %s", (user["user_id"],)) == 0
    for expected in ("credited", "duplicate"):
        r = httpx.post(f"{base}/webhooks/stripe", content=body, headers=headers, timeout=10)
        assert r.status_code == 200 and r.json()["outcome"] == expected, r.text
    assert _sql(local_stack, "SELECT balance FROM balances WHERE user_id = %s", (user["user_id"],)) == Decimal("20")

    resp = sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert resp.choices[0].message.content


def test_subscription_to_pro_raises_rate_limit_and_quota_on_the_next_request(local_stack: dict[str, Any]) -> None:
    base, fake = local_stack["base_url"], local_stack["fake_stripe_url"]
    user = create_user(local_stack["database_url"], balance="5", tier="free")
    sdk = _sdk(local_stack, user)
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers["x-ratelimit-limit"] == "10"  # free: 10 requests/minute

    # The free monthly quota (50) is used up → 429 quota_exceeded.
    with psycopg.connect(local_stack["database_url"], autocommit=True) as conn:
        conn.execute("UPDATE balances SET period_requests = 50 WHERE user_id = %s", (user["user_id"],))
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert limited.value.body["code"] == "quota_exceeded"  # type: ignore[index]
    status = httpx.get(f"{base}/v1/subscription", headers=_auth(user), timeout=10).json()
    assert status["tier"] == "free" and status["quota"]["remaining"] == 0

    r = httpx.post(f"{base}/v1/billing/checkout", json={"plan": "pro"}, headers=_auth(user), timeout=30)
    assert r.status_code == 200, r.text
    done = httpx.post(f"{fake}/__fake/checkout/sessions/{r.json()['id']}/complete", json={"deliver": True},
                      timeout=30).json()
    assert [d["type"] for d in done["delivered"]] == ["customer.subscription.created", "invoice.paid",
                                                      "invoice.payment_succeeded", "checkout.session.completed"]
    assert all(d["status"] == 200 for d in done["delivered"]), done["delivered"]
    assert [d["body"]["outcome"] for d in done["delivered"]] == ["applied", "credited", "already_credited", "linked"]

    # The very next request runs under pro: quota 1000, 60 requests/minute.
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers["x-ratelimit-limit"] == "60"
    status = httpx.get(f"{base}/v1/subscription", headers=_auth(user), timeout=10).json()
    assert status["tier"] == "pro" and status["status"] == "active"
    assert status["quota"]["limit"] == 1000 and status["quota"]["used"] == 51
    assert status["rate_limit"] == {"requests_per_minute": 60}
    # pro's included monthly credit came with the paid first invoice.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        credited = _sql(local_stack, "SELECT count(*) FROM ledger_entries WHERE user_id = %s "
                                     "AND kind = 'subscription_credit'", (user["user_id"],))
        if credited == 1:
            break
        time.sleep(0.1)
    assert credited == 1

    # Plan changes now go through the portal.
    again = httpx.post(f"{base}/v1/billing/checkout", json={"plan": "team"}, headers=_auth(user), timeout=30)
    assert again.status_code == 409
    portal = httpx.post(f"{base}/v1/billing/portal", headers=_auth(user), timeout=30)
    assert portal.status_code == 200 and portal.json()["url"].startswith(("https://billing.stripe.com/",
                                                                          fake + "/p/session/"))
