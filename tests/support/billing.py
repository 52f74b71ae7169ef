"""Billing test support: Stripe's webhook signature scheme (computed here independently of the
stripe library and of the fake), the fake Stripe server, and fixtures wiring the gateway to it.

Import the fixtures into a test module with ``from tests.support.billing import *  # noqa``
or by name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from gateway.config import reset_settings
from gateway.observability import metrics
from infra.local import fake_stripe
from infra.local.servers import RunningServer, start_in_thread
from tests.support.services import template_router

PRICES = {"pro": "price_test_pro", "premium": "price_test_premium", "team": "price_test_team"}
PRICE_CENTS = {"pro": 2000, "premium": 4900, "team": 9900}   # monthly USD list prices in the fake
TIERS_JSON = json.dumps({name: {"stripe_price_id": price} for name, price in PRICES.items()})
STRIPE_KEY = "sk_test_" + "x" * 24


def signature_header(payload: str, secret: str, timestamp: int | None = None) -> str:
    """``Stripe-Signature``: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode("utf-8"), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


async def deliver(client: httpx.AsyncClient, event: dict[str, Any], secret: str, *, timestamp: int | None = None,
                  path: str = "/webhooks/stripe") -> httpx.Response:
    body = json.dumps(event)
    headers = {"content-type": "application/json", "stripe-signature": signature_header(body, secret, timestamp)}
    return await client.post(path, content=body, headers=headers)


def metric(name: str) -> float:
    """What the code added to the metric ``name`` since the billing fixture started (the set
    Powertools flushes as EMF at the end of a Lambda invocation)."""
    return float(sum(metrics.metric_set.get(name, {}).get("Value", [])))


@dataclass
class FakeStripeServer:
    server: RunningServer
    fake: fake_stripe.FakeStripe

    @property
    def url(self) -> str:
        return self.server.url

    def requests(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.fake.requests
                if (path is None or r["path"] == path) and (method is None or r["method"] == method)]


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripeServer]:
    app = fake_stripe.create_app()
    server = start_in_thread(app)
    yield FakeStripeServer(server=server, fake=app.state.fake)
    server.stop()


@dataclass
class Billing:
    stripe: FakeStripeServer
    webhook_secret: str
    database_url: str

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, params: Any = None) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def balance(self, user_id: Any) -> Decimal:
        return Decimal(self.scalar("SELECT balance FROM balances WHERE user_id = %s", (user_id,)))

    def tier(self, user_id: Any) -> str:
        return str(self.scalar("SELECT tier FROM users WHERE id = %s", (user_id,)))

    def link_customer(self, user_id: Any) -> str:
        """What our checkout route does before any webhook: the user's Stripe customer id."""
        customer = "cus_" + uuid.uuid4().hex[:14]
        self.sql("UPDATE users SET stripe_customer_id = %s WHERE id = %s", (customer, user_id))
        return customer

    def customer(self, user_id: Any) -> str | None:
        value = self.scalar("SELECT stripe_customer_id FROM users WHERE id = %s", (user_id,))
        return str(value) if value else None

    def ledger(self, user_id: Any, kind: str | None = None) -> list[tuple[Any, ...]]:
        return self.sql("SELECT kind, amount, reference FROM ledger_entries WHERE user_id = %s "
                        "AND (%s::text IS NULL OR kind = %s) ORDER BY id", (user_id, kind, kind))

    def counts(self) -> dict[str, int]:
        """Rows of every table a webhook writes (to prove a refused request wrote nothing)."""
        tables = ("stripe_events", "ledger_entries", "subscriptions", "stripe_payments", "stripe_refunds",
                  "stripe_invoices", "checkout_sessions", "stripe_disputes", "stripe_refund_items")
        return {t: int(self.scalar(f"SELECT count(*) FROM {t}")) for t in tables} | {
            "customers_linked": int(self.scalar("SELECT count(*) FROM users WHERE stripe_customer_id IS NOT NULL")),
            "balance_sum": self.scalar("SELECT COALESCE(sum(balance), 0) FROM balances")}


@pytest.fixture
def billing(database_url: str, upstash_bridge: RunningServer, fake_stripe_server: FakeStripeServer,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Billing]:
    """The gateway configured for Stripe: secret key + API base → the fake, a webhook secret,
    tier prices in TIERS_JSON."""
    from gateway.billing import stripe_api, webhooks

    secret = "whsec_" + secrets.token_hex(16)
    fake_stripe_server.fake.reset()
    for tier, price_id in PRICES.items():
        fake_stripe_server.fake.add_price(price_id, PRICE_CENTS[tier])
    for name, value in {"STRIPE_SECRET_KEY": STRIPE_KEY, "STRIPE_API_BASE": fake_stripe_server.url,
                        "STRIPE_WEBHOOK_SECRET": secret, "TIERS_JSON": TIERS_JSON,
                        "STRIPE_MAX_NETWORK_RETRIES": "0"}.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    stripe_api.reset_client()
    webhooks.STATS.clear()
    metrics.clear_metrics()
    yield Billing(stripe=fake_stripe_server, webhook_secret=secret, database_url=database_url)
    stripe_api.reset_client()


@pytest.fixture
async def gateway(billing: Billing) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=template_router())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as client:
        yield client


async def checkout(gateway: httpx.AsyncClient, api_key: str, **body: Any) -> dict[str, Any]:
    """``POST /v1/billing/checkout`` as the customer: our session row, the fake's session."""
    r = await gateway.post("/v1/billing/checkout", json=body, headers={"authorization": f"Bearer {api_key}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def deliver_all(gateway: httpx.AsyncClient, billing: Billing, events: list[dict[str, Any]]) -> list[str]:
    """Deliver the events our endpoint subscribes to (signed) in order, as Stripe would; their outcomes."""
    outcomes = []
    for ev in events:
        if ev["type"] not in billing.stripe.fake.enabled_events:
            continue
        r = await deliver(gateway, ev, billing.webhook_secret)
        assert r.status_code == 200, r.text
        outcomes.append(str(r.json()["outcome"]))
    return outcomes
