"""A fake of the Stripe API endpoints the gateway calls, plus the webhook events Stripe sends.

Used by the integration/e2e tests and the local stack (``STRIPE_API_BASE`` points the stripe
library here). Start it with::

    python -m infra.local.fake_stripe --port 12111 [--webhook-url URL --webhook-secret whsec_…]
                                      [--price price_local_pro=2000:usd ...]

or in-process with ``infra.local.servers.start_in_thread(create_app())``.

API (form-encoded bodies with Stripe's bracket notation, JSON answers in Stripe's shapes;
``Authorization: Bearer sk_…`` required, else 401 as the real API)::

    POST /v1/customers                          GET /v1/customers/{id}
    POST /v1/checkout/sessions                  GET /v1/checkout/sessions/{id}
    POST /v1/billing_portal/sessions
    GET  /v1/prices/{id}
    GET  /v1/subscriptions/{id}                 GET /v1/subscriptions?customer=…
    POST /v1/subscriptions/{id}  (cancel_at_period_end, metadata)
    DELETE /v1/subscriptions/{id}  (cancel now)
    GET  /v1/invoices/{id}
    GET  /v1/invoice_payments?invoice=… | ?payment[type]=payment_intent&payment[payment_intent]=pi_…
    GET  /v1/charges/{id}   GET /v1/refunds/{id}   GET /v1/disputes/{id}

Idempotency as Stripe: a repeated ``Idempotency-Key`` with the same method, path and parameters
replays the first answer (``Idempotent-Replayed: true``); with different ones → 400
``idempotency_error``. Unknown ids → 404 ``resource_missing``.

Test controls (each returns the events Stripe would send, ``{"events": [...], "delivered": [...]}``;
with ``"deliver": true`` and a configured webhook URL the events our endpoint subscribes to
(``ENABLED_EVENTS``) are POSTed there signed with the real scheme
(``Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "{t}.{body}")``) and the answers returned)::

    GET    /__fake/requests             every API request: method, path, params (decoded),
                                        idempotency_key, stripe_version, api_key
    DELETE /__fake/requests             clear the log
    POST   /__fake/reset                forget everything (webhook configuration and prices stay)
    POST   /__fake/fail                 {"status": 500, "times": 1, "path_prefix": "/v1/checkout"}:
                                        the next matching requests fail (type api_error)
    POST   /__fake/config               {"webhook_url": …, "webhook_secret": …, "enabled_events": [...]}
    POST   /__fake/prices               {"id": "price_…", "unit_amount": 2000, "currency": "usd"}
    POST   /__fake/checkout/sessions/{id}/complete   {"deliver": true, "discount_percent": 0}: the
        customer pays (with an optional coupon): the PaymentIntent + Charge, or the Subscription +
        first Invoice + its InvoicePayment
    POST   /__fake/charges/{id}/refund  {"amount": 500}: a refund (succeeded), charge.amount_refunded += amount
    POST   /__fake/refunds/{id}/fail    {"reason": "expired_or_canceled_card"}: the refund fails; its amount
                                        leaves charge.amount_refunded again
    POST   /__fake/charges/{id}/dispute {"amount": …}: the cardholder disputes the charge
    POST   /__fake/disputes/{id}/close  {"status": "won" | "lost"}

Payload shapes are those of API version ``API_VERSION``, the version the installed stripe library
pins (``stripe.api_version``; tests/unit/test_billing.py checks both that and that every object
built here only has fields the library declares for that version). From 2025-03-31 (basil) on:
subscription periods are on the items, an invoice names its subscription in
``parent.subscription_details`` and carries no ``payment_intent``/``charge``/``subscription``
(``payments`` only when expanded, never in a webhook), line prices are in
``pricing.price_details``; from 2025-12-15 lines have a ``subtotal``. ``legacy=True`` gives the
pre-basil shapes.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_VERSION = "2026-10-28.endive"
MONTH_S = 30 * 24 * 3600
# The webhook endpoint's enabled events (docs/billing.md "Wiring Stripe"): only these are delivered.
ENABLED_EVENTS = (
    "checkout.session.completed", "checkout.session.async_payment_succeeded",
    "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
    "invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed",
    "charge.refunded", "refund.created", "charge.refund.updated", "refund.failed",
    "charge.dispute.created", "charge.dispute.closed",
)


def _rid(prefix: str) -> str:
    return f"{prefix}_{'test_' if prefix == 'cs' else ''}{secrets.token_hex(12)}"


def _now(value: int | None) -> int:
    return int(time.time()) if value is None else value


# --------------------------------------------------------------------------- signing
def sign(payload: str | bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value for ``payload`` (Stripe's v1 scheme)."""
    body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    t = _now(timestamp)
    mac = hmac.new(secret.encode("utf-8"), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


# --------------------------------------------------------------------------- object builders
def event(event_type: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None,
          previous_attributes: dict[str, Any] | None = None, livemode: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or _rid("evt"), "object": "event", "api_version": API_VERSION,
        "created": _now(created), "data": data, "livemode": livemode,
        "pending_webhooks": 1, "request": {"id": _rid("req"), "idempotency_key": None}, "type": event_type,
    }


def checkout_session(*, session_id: str | None = None, mode: str = "payment", customer: str | None = None,
                     user_id: str | None = None, amount_cents: int = 0, payment_intent: str | None = None,
                     subscription: str | None = None, invoice: str | None = None, payment_status: str = "paid",
                     metadata: dict[str, Any] | None = None, status: str = "complete", created: int | None = None,
                     currency: str = "usd", discount_cents: int = 0, tax_cents: int = 0,
                     payment_link: str | None = None) -> dict[str, Any]:
    """``amount_cents`` is the subtotal (before discounts and tax); ``amount_total`` what is paid."""
    created = _now(created)
    sid = session_id or _rid("cs")
    return {
        "id": sid, "object": "checkout.session", "adaptive_pricing": {"enabled": False},
        "allow_promotion_codes": None, "amount_subtotal": amount_cents,
        "amount_total": amount_cents - discount_cents + tax_cents,
        "cancel_url": "https://example.com/cancel", "client_reference_id": user_id, "created": created,
        "currency": currency, "customer": customer, "customer_creation": None,
        "customer_details": {"email": "customer@example.com", "name": None, "tax_exempt": "none"},
        "expires_at": created + 86400, "invoice": invoice, "livemode": False, "metadata": metadata or {},
        "mode": mode, "payment_intent": payment_intent, "payment_link": payment_link,
        "payment_method_types": ["card"], "payment_status": payment_status, "status": status,
        "subscription": subscription, "success_url": "https://example.com/success",
        "total_details": {"amount_discount": discount_cents, "amount_shipping": 0, "amount_tax": tax_cents},
        "url": None if status == "complete" else f"https://checkout.stripe.com/c/pay/{sid}",
    }


def price(price_id: str, unit_amount: int = 2000, *, recurring: bool = True, currency: str = "usd"
          ) -> dict[str, Any]:
    return {
        "id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit", "created": 1700000000,
        "currency": currency, "livemode": False, "lookup_key": None, "metadata": {}, "nickname": None,
        "product": "prod_" + hashlib.sha1(price_id.encode()).hexdigest()[:14],  # noqa: S324 (an id, not security)
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"} if recurring else None,
        "tax_behavior": "unspecified", "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount, "unit_amount_decimal": str(unit_amount),
    }


def subscription(*, subscription_id: str | None = None, customer: str, price_id: str, status: str = "active",
                 period_start: int | None = None, period_end: int | None = None, cancel_at_period_end: bool = False,
                 metadata: dict[str, Any] | None = None, unit_amount: int = 2000, legacy: bool = False,
                 canceled_at: int | None = None, ended_at: int | None = None) -> dict[str, Any]:
    sub_id = subscription_id or _rid("sub")
    start = _now(period_start)
    end = start + MONTH_S if period_end is None else period_end
    item: dict[str, Any] = {
        "id": "si_" + hashlib.sha1(sub_id.encode()).hexdigest()[:14], "object": "subscription_item",  # noqa: S324
        "created": start, "metadata": {}, "price": price(price_id, unit_amount), "quantity": 1,
        "subscription": sub_id, "tax_rates": [],
    }
    obj: dict[str, Any] = {
        "id": sub_id, "object": "subscription", "billing_cycle_anchor": start, "cancel_at": end if
        cancel_at_period_end else None, "cancel_at_period_end": cancel_at_period_end, "canceled_at": canceled_at,
        "collection_method": "charge_automatically", "created": start, "currency": "usd", "customer": customer,
        "ended_at": ended_at, "items": {"object": "list", "data": [item], "has_more": False,
                                        "url": f"/v1/subscription_items?subscription={sub_id}"},
        "latest_invoice": None, "livemode": False, "metadata": metadata or {}, "start_date": start,
        "status": status, "trial_end": None, "trial_start": None,
    }
    if legacy:  # before 2025-03-31.basil the period was on the subscription
        obj["current_period_start"], obj["current_period_end"] = start, end
        obj["plan"] = {"id": price_id, "object": "plan", "amount": unit_amount, "currency": "usd",
                       "interval": "month"}
    else:
        item["current_period_start"], item["current_period_end"] = start, end
    return obj


def invoice_payment(*, invoice_id: str, payment_intent: str, amount_paid: int, currency: str = "usd",
                    status: str = "paid", created: int | None = None) -> dict[str, Any]:
    created = _now(created)
    return {"id": "inpay_" + secrets.token_hex(12), "object": "invoice_payment",
            "amount_paid": amount_paid if status == "paid" else None, "amount_requested": amount_paid,
            "created": created, "currency": currency, "invoice": invoice_id, "is_default": True, "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": payment_intent}, "status": status,
            "status_transitions": {"canceled_at": None, "paid_at": created if status == "paid" else None}}


def invoice(*, invoice_id: str | None = None, customer: str, subscription_id: str | None, price_id: str,
            amount: int = 2000, discount: int = 0, tax: int = 0, billing_reason: str = "subscription_create",
            status: str = "paid", period_start: int | None = None, period_end: int | None = None,
            attempt_count: int = 1, next_payment_attempt: int | None = None,
            subscription_metadata: dict[str, Any] | None = None, payment_intent: str | None = None,
            expand_payments: bool = False, legacy: bool = False, created: int | None = None,
            currency: str = "usd") -> dict[str, Any]:
    """An invoice for one subscription line of ``amount`` (the price, before ``discount``; ``tax`` on
    top). A paid invoice has ``amount_paid = amount - discount + tax``.

    ``payment_intent`` only appears in the legacy shape (``invoice.payment_intent``) or, with
    ``expand_payments``, as ``payments`` (what ``expand[]=payments`` returns): events never expand,
    so a current-version webhook has neither; the webhook asks the invoice payments API."""
    inv_id = invoice_id or _rid("in")
    created = _now(created)
    start = created if period_start is None else period_start
    end = start + MONTH_S if period_end is None else period_end
    excl_tax = amount - discount
    total = excl_tax + tax
    paid = total if status == "paid" else 0
    line: dict[str, Any] = {
        "id": "il_" + secrets.token_hex(10), "object": "line_item", "amount": amount, "currency": currency,
        "description": f"1 x plan (at ${amount / 100:.2f} / month)",
        "discount_amounts": [{"amount": discount, "discount": "di_x"}] if discount else [],
        "discountable": True, "discounts": [], "invoice": inv_id, "livemode": False, "metadata": {},
        "period": {"end": end, "start": start}, "quantity": 1,
    }
    obj: dict[str, Any] = {
        "id": inv_id, "object": "invoice", "account_country": "US", "account_name": "Multi-LLM",
        "amount_due": total, "amount_overpaid": 0, "amount_paid": paid, "amount_remaining": total - paid,
        "attempt_count": attempt_count, "attempted": True, "billing_reason": billing_reason,
        "collection_method": "charge_automatically", "created": created, "currency": currency,
        "customer": customer, "customer_email": "customer@example.com",
        "lines": {"object": "list", "data": [line], "has_more": False, "url": f"/v1/invoices/{inv_id}/lines"},
        "livemode": False, "metadata": {}, "next_payment_attempt": next_payment_attempt,
        "number": "MLP-" + secrets.token_hex(3).upper(), "period_end": created, "period_start": created,
        "status": status, "status_transitions": {"finalized_at": created, "paid_at": created if status == "paid"
                                                 else None, "voided_at": None, "marked_uncollectible_at": None},
        "subtotal": amount, "subtotal_excluding_tax": amount, "total": total, "total_excluding_tax": excl_tax,
        "total_discount_amounts": [{"amount": discount, "discount": "di_x"}] if discount else [],
        "total_taxes": [{"amount": tax, "tax_behavior": "exclusive", "taxable_amount": excl_tax,
                         "type": "tax_rate_details", "taxability_reason": "standard_rated",
                         "tax_rate_details": {"tax_rate": "txr_x"}}] if tax else [],
    }
    if legacy:
        obj["subscription"] = subscription_id
        obj["subscription_details"] = {"metadata": subscription_metadata or {}}
        obj["payment_intent"] = payment_intent
        obj["paid"] = status == "paid"
        line.update({"type": "subscription", "subscription": subscription_id, "proration": False,
                     "price": price(price_id, amount)})
        return obj
    obj["parent"] = {"type": "subscription_details", "quote_details": None, "subscription_details": {
        "metadata": subscription_metadata or {}, "subscription": subscription_id}}
    line["parent"] = {"type": "subscription_item_details", "invoice_item_details": None,
                      "subscription_item_details": {"invoice_item": None, "proration": False,
                                                    "proration_details": {"credited_items": None},
                                                    "subscription": subscription_id,
                                                    "subscription_item": "si_" + secrets.token_hex(7)}}
    line["pricing"] = {"type": "price_details", "price_details": {"price": price_id, "product": "prod_x"},
                       "unit_amount_decimal": str(amount)}
    line["subtotal"] = amount
    line["taxes"] = []
    if expand_payments and payment_intent:
        obj["payments"] = {"object": "list", "has_more": False, "url": f"/v1/invoices/{inv_id}/payments",
                           "data": [invoice_payment(invoice_id=inv_id, payment_intent=payment_intent,
                                                    amount_paid=paid, currency=currency, created=created)]}
    return obj


def charge(*, charge_id: str | None = None, payment_intent: str | None, customer: str | None, amount: int,
           amount_refunded: int = 0, created: int | None = None, currency: str = "usd",
           disputed: bool = False) -> dict[str, Any]:
    return {
        "id": charge_id or _rid("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": amount_refunded, "balance_transaction": _rid("txn"), "captured": True,
        "created": _now(created), "currency": currency, "customer": customer, "description": None,
        "disputed": disputed, "livemode": False, "metadata": {}, "paid": True, "payment_intent": payment_intent,
        "payment_method": _rid("pm"), "receipt_url": None, "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }


def refund(*, refund_id: str | None = None, charge_id: str, payment_intent: str | None, amount: int,
           status: str = "succeeded", currency: str = "usd", created: int | None = None,
           failure_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": refund_id or _rid("re"), "object": "refund", "amount": amount, "balance_transaction": _rid("txn"),
        "charge": charge_id, "created": _now(created), "currency": currency, "destination_details": None,
        "failure_balance_transaction": _rid("txn") if status == "failed" else None,
        "failure_reason": failure_reason, "metadata": {}, "payment_intent": payment_intent, "reason": None,
        "receipt_number": None, "source_transfer_reversal": None, "status": status, "transfer_reversal": None,
    }


def dispute(*, dispute_id: str | None = None, charge_id: str, payment_intent: str | None, amount: int,
            status: str = "needs_response", currency: str = "usd", created: int | None = None,
            reason: str = "fraudulent") -> dict[str, Any]:
    created = _now(created)
    return {
        "id": dispute_id or _rid("dp"), "object": "dispute", "amount": amount, "balance_transactions": [],
        "charge": charge_id, "created": created, "currency": currency, "enhanced_eligibility_types": [],
        "evidence_details": {"due_by": created + 7 * 86400, "has_evidence": False, "past_due": False,
                             "submission_count": 0},
        "is_charge_refundable": False, "livemode": False, "metadata": {}, "payment_intent": payment_intent,
        "reason": reason, "status": status,
    }


# --------------------------------------------------------------------------- form decoding
def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket encoding (``a[b][0][c]=v``) → nested dicts/lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt_is_index = not last and parts[i + 1].isdigit()
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if last:
                    node[idx] = value
                else:
                    if node[idx] is None:
                        node[idx] = [] if nxt_is_index else {}
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if nxt_is_index else {})
    return root


def stripe_error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> JSONResponse:
    err: dict[str, Any] = {"type": type_, "message": message}
    if code:
        err["code"] = code
    if param:
        err["param"] = param
    return JSONResponse({"error": err}, status_code=status, headers={"request-id": _rid("req")})


def _missing(kind: str, object_id: str, param: str = "id") -> tuple[int, dict[str, Any]]:
    return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing", "param": param,
                           "message": f"No such {kind}: '{object_id}'"}}


# --------------------------------------------------------------------------- the fake
@dataclass
class Failure:
    status: int
    times: int
    path_prefix: str


@dataclass
class FakeStripe:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    portal_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoice_payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    idempotency: dict[str, tuple[str, dict[str, Any], int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    enabled_events: tuple[str, ...] = ENABLED_EVENTS

    def reset(self) -> None:
        """Forget every object, request and failure (the webhook configuration and prices stay)."""
        for store in (self.customers, self.sessions, self.portal_sessions, self.subscriptions, self.invoices,
                      self.invoice_payments, self.charges, self.refunds, self.disputes, self.idempotency):
            store.clear()
        self.requests.clear()
        self.failures.clear()

    def add_price(self, price_id: str, unit_amount: int, currency: str = "usd") -> dict[str, Any]:
        self.prices[price_id] = price(price_id, unit_amount, currency=currency)
        return self.prices[price_id]

    def add_invoice(self, inv: dict[str, Any], payment_intent: str | None = None) -> dict[str, Any]:
        """Know an invoice built with ``invoice()`` (and, paid, the InvoicePayment and Charge of
        ``payment_intent``), as if Stripe had created it."""
        self.invoices[inv["id"]] = inv
        if payment_intent and inv["amount_paid"] > 0:
            ip = invoice_payment(invoice_id=inv["id"], payment_intent=payment_intent, amount_paid=inv["amount_paid"],
                                 currency=inv["currency"], created=inv["created"])
            self.invoice_payments[ip["id"]] = ip
            ch = charge(payment_intent=payment_intent, customer=inv["customer"], amount=inv["amount_paid"],
                        currency=inv["currency"])
            self.charges[ch["id"]] = ch
        return inv

    def charge_of(self, payment_intent: str) -> dict[str, Any]:
        return next(c for c in self.charges.values() if c["payment_intent"] == payment_intent)

    # ------------------------------------------------------------- plumbing
    async def api(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        api_key = auth[7:] if auth.lower().startswith("bearer ") else ""
        if request.method in ("POST", "DELETE"):
            params = decode_form(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        else:
            params = decode_form(list(request.query_params.multi_items()))
        path = request.url.path
        idem = request.headers.get("idempotency-key")
        self.requests.append({"method": request.method, "path": path, "params": params, "idempotency_key": idem,
                              "stripe_version": request.headers.get("stripe-version"), "api_key": api_key,
                              "at": time.time()})
        if not api_key.startswith(("sk_", "rk_")):
            return stripe_error(401, "Invalid API Key provided.", code="api_key_invalid")
        for f in self.failures:
            if f.times > 0 and path.startswith(f.path_prefix):
                f.times -= 1
                return stripe_error(f.status, "Simulated failure.", type_="api_error")
        signature = f"{request.method} {path} {json.dumps(params, sort_keys=True)}"
        if idem and request.method == "POST":
            seen = self.idempotency.get(idem)
            if seen is not None:
                if seen[0] != signature:
                    return stripe_error(400, "Keys for idempotent requests can only be used with the same "
                                             "parameters they were first used with.", type_="idempotency_error")
                return JSONResponse(seen[1], status_code=seen[2], headers={"idempotent-replayed": "true"})
        status, body = self.dispatch(request.method, path, params)
        if idem and request.method == "POST" and status < 500:
            self.idempotency[idem] = (signature, body, status)
        return JSONResponse(body, status_code=status, headers={"request-id": _rid("req")})

    def dispatch(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        readable = {"customers": (self.customers, "customer"), "prices": (self.prices, "price"),
                    "invoices": (self.invoices, "invoice"), "charges": (self.charges, "charge"),
                    "refunds": (self.refunds, "refund"), "disputes": (self.disputes, "dispute")}
        try:
            if method == "GET" and len(parts) == 3 and parts[0] == "v1" and parts[1] in readable:
                store, kind = readable[parts[1]]
                return self.get(store, parts[2], kind)
            if parts == ["v1", "customers"] and method == "POST":
                return self.create_customer(params)
            if parts[:3] == ["v1", "checkout", "sessions"]:
                if method == "POST" and len(parts) == 3:
                    return self.create_session(params)
                if method == "GET" and len(parts) == 4:
                    return self.get(self.sessions, parts[3], "checkout.session")
            if parts[:3] == ["v1", "billing_portal", "sessions"] and method == "POST" and len(parts) == 3:
                return self.create_portal_session(params)
            if parts == ["v1", "invoice_payments"] and method == "GET":
                return self.list_invoice_payments(params)
            if parts[:2] == ["v1", "subscriptions"]:
                if method == "GET" and len(parts) == 2:
                    data = [s for s in self.subscriptions.values()
                            if not params.get("customer") or s["customer"] == params["customer"]]
                    return 200, {"object": "list", "data": data, "has_more": False, "url": "/v1/subscriptions"}
                if len(parts) == 3:
                    if method == "GET":
                        return self.get(self.subscriptions, parts[2], "subscription")
                    if method == "POST":
                        return self.update_subscription(parts[2], params)
                    if method == "DELETE":
                        return self.cancel_subscription(parts[2])
        except ValueError as exc:
            return 400, {"error": {"type": "invalid_request_error", "message": str(exc)}}
        return 404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized request URL ({method}: "
                                                                           f"{path})."}}

    @staticmethod
    def get(store: dict[str, dict[str, Any]], object_id: str, kind: str) -> tuple[int, dict[str, Any]]:
        if object_id not in store:
            return _missing(kind, object_id)
        return 200, FakeStripe.public(store[object_id])

    @staticmethod
    def public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    # ------------------------------------------------------------- resources
    def create_customer(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        cid = _rid("cus")
        self.customers[cid] = {"id": cid, "object": "customer", "created": int(time.time()),
                               "email": params.get("email"), "metadata": params.get("metadata") or {},
                               "livemode": False, "name": params.get("name")}
        return 200, self.customers[cid]

    def create_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        mode = params.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            raise ValueError("Missing required param: mode.")
        for name in ("success_url", "line_items"):
            if not params.get(name):
                raise ValueError(f"Missing required param: {name}.")
        customer = params.get("customer")
        if customer and customer not in self.customers:
            return 400, _missing("customer", customer, "customer")[1]
        item = params["line_items"][0]
        if "price" in item:
            if item["price"] not in self.prices:
                return 400, _missing("price", item["price"], "line_items[0][price]")[1]
            amount, currency = self.prices[item["price"]]["unit_amount"], self.prices[item["price"]]["currency"]
        else:
            amount, currency = int(item["price_data"]["unit_amount"]), item["price_data"]["currency"]
        amount *= int(item.get("quantity", 1))
        session = checkout_session(mode=mode, customer=customer, user_id=params.get("client_reference_id"),
                                   amount_cents=amount, payment_status="unpaid", status="open",
                                   metadata=params.get("metadata") or {}, currency=currency)
        session["adaptive_pricing"] = {"enabled": (params.get("adaptive_pricing") or {}).get("enabled") != "false"}
        session["success_url"], session["cancel_url"] = params["success_url"], params.get("cancel_url")
        session["_line_items"] = params["line_items"]
        session["_subscription_data"] = params.get("subscription_data") or {}
        self.sessions[session["id"]] = session
        return 200, self.public(session)

    def create_portal_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        customer = params.get("customer")
        if not customer:
            raise ValueError("Missing required param: customer.")
        if customer not in self.customers:
            return 400, _missing("customer", customer, "customer")[1]
        sid = _rid("bps")
        self.portal_sessions[sid] = {
            "id": sid, "object": "billing_portal.session", "configuration": params.get("configuration") or
            "bpc_default", "created": int(time.time()), "customer": customer, "livemode": False,
            "return_url": params.get("return_url"), "url": f"https://billing.stripe.com/p/session/test_{sid}"}
        return 200, self.portal_sessions[sid]

    def list_invoice_payments(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payment = params.get("payment") or {}
        if payment and payment.get("type") != "payment_intent":
            raise ValueError("payment[type] must be payment_intent or payment_record.")
        data = [p for p in self.invoice_payments.values()
                if (not params.get("invoice") or p["invoice"] == params["invoice"])
                and (not payment.get("payment_intent") or p["payment"]["payment_intent"] == payment["payment_intent"])
                and (not params.get("status") or p["status"] == params["status"])]
        data.sort(key=lambda p: p["created"], reverse=True)
        limit = int(params.get("limit", 10))
        return 200, {"object": "list", "data": data[:limit], "has_more": len(data) > limit,
                     "url": "/v1/invoice_payments"}

    def update_subscription(self, sub_id: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if sub_id not in self.subscriptions:
            return self.get(self.subscriptions, sub_id, "subscription")
        sub = self.subscriptions[sub_id]
        if "cancel_at_period_end" in params:
            sub["cancel_at_period_end"] = params["cancel_at_period_end"] == "true"
        if "metadata" in params:
            sub["metadata"].update(params["metadata"])
        return 200, sub

    def cancel_subscription(self, sub_id: str) -> tuple[int, dict[str, Any]]:
        if sub_id not in self.subscriptions:
            return self.get(self.subscriptions, sub_id, "subscription")
        sub = self.subscriptions[sub_id]
        now = int(time.time())
        sub.update(status="canceled", canceled_at=now, ended_at=now)
        return 200, sub

    # ------------------------------------------------------------- what customers and banks do
    def _paid(self, customer: str | None, amount: int, currency: str) -> tuple[str, dict[str, Any]]:
        """A succeeded PaymentIntent and its Charge."""
        pi = _rid("pi")
        ch = charge(payment_intent=pi, customer=customer, amount=amount, currency=currency)
        self.charges[ch["id"]] = ch
        return pi, ch

    def complete(self, session_id: str, discount_percent: int = 0) -> list[dict[str, Any]]:
        """The customer pays (with an optional coupon): the events Stripe would send, in its usual order."""
        session = self.sessions[session_id]
        now = int(time.time())
        customer, currency = session["customer"], session["currency"]
        subtotal = session["amount_subtotal"]
        discount = subtotal * discount_percent // 100
        session.update(status="complete", url=None, amount_total=subtotal - discount,
                       total_details={"amount_discount": discount, "amount_shipping": 0, "amount_tax": 0},
                       payment_status="paid" if subtotal - discount > 0 else "no_payment_required")
        if session["mode"] == "payment":
            if subtotal - discount > 0:
                session["payment_intent"], _ = self._paid(customer, subtotal - discount, currency)
            return [event("checkout.session.completed", self.public(session), created=now)]
        price_id = session["_line_items"][0]["price"]
        metadata = (session["_subscription_data"].get("metadata")) or {}
        unit = self.prices[price_id]["unit_amount"]
        sub = subscription(customer=customer, price_id=price_id, metadata=metadata, period_start=now,
                           unit_amount=unit)
        inv = invoice(customer=customer, subscription_id=sub["id"], price_id=price_id, created=now, amount=unit,
                      discount=discount, subscription_metadata=metadata, currency=currency)
        if inv["amount_paid"] > 0:
            pi, _ = self._paid(customer, inv["amount_paid"], currency)
            ip = invoice_payment(invoice_id=inv["id"], payment_intent=pi, amount_paid=inv["amount_paid"],
                                 currency=currency, created=now)
            self.invoice_payments[ip["id"]] = ip
        self.invoices[inv["id"]] = inv
        sub["latest_invoice"] = inv["id"]
        self.subscriptions[sub["id"]] = sub
        session.update(subscription=sub["id"], invoice=inv["id"])
        return [event("customer.subscription.created", sub, created=now),
                event("invoice.paid", inv, created=now),
                event("invoice.payment_succeeded", inv, created=now),
                event("checkout.session.completed", self.public(session), created=now)]

    def refund_charge(self, charge_id: str, amount: int | None = None) -> list[dict[str, Any]]:
        ch = self.charges[charge_id]
        amount = ch["amount"] - ch["amount_refunded"] if amount is None else amount
        if amount <= 0 or ch["amount_refunded"] + amount > ch["amount"]:
            raise ValueError("Refund amount is greater than the unrefunded amount of the charge.")
        re = refund(charge_id=charge_id, payment_intent=ch["payment_intent"], amount=amount,
                    currency=ch["currency"])
        self.refunds[re["id"]] = re
        ch["amount_refunded"] += amount
        ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
        now = int(time.time())
        return [event("charge.refunded", dict(ch), created=now), event("refund.created", dict(re), created=now)]

    def fail_refund(self, refund_id: str, reason: str = "expired_or_canceled_card") -> list[dict[str, Any]]:
        re = self.refunds[refund_id]
        re.update(status="failed", failure_reason=reason, failure_balance_transaction=_rid("txn"))
        ch = self.charges[re["charge"]]
        ch["amount_refunded"] -= re["amount"]   # the money is back in our Stripe balance
        ch["refunded"] = False
        now = int(time.time())
        return [event("charge.refund.updated", dict(re), created=now), event("refund.updated", dict(re), created=now),
                event("refund.failed", dict(re), created=now)]

    def dispute_charge(self, charge_id: str, amount: int | None = None) -> list[dict[str, Any]]:
        ch = self.charges[charge_id]
        dp = dispute(charge_id=charge_id, payment_intent=ch["payment_intent"],
                     amount=ch["amount"] - ch["amount_refunded"] if amount is None else amount,
                     currency=ch["currency"])
        self.disputes[dp["id"]] = dp
        ch["disputed"] = True
        return [event("charge.dispute.created", dict(dp))]

    def close_dispute(self, dispute_id: str, status: str) -> list[dict[str, Any]]:
        if status not in ("won", "lost", "warning_closed", "prevented"):
            raise ValueError(f"a dispute closes as won, lost, warning_closed or prevented, not {status!r}")
        dp = self.disputes[dispute_id]
        dp["status"] = status
        return [event("charge.dispute.closed", dict(dp))]

    async def deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST the events the endpoint subscribes to, signed, in order."""
        if not (self.webhook_url and self.webhook_secret):
            return []
        results = []
        async with httpx.AsyncClient(timeout=10) as client:
            for ev in events:
                if ev["type"] not in self.enabled_events:
                    continue
                body = json.dumps(ev)
                r = await client.post(self.webhook_url, content=body, headers={
                    "content-type": "application/json", "stripe-signature": sign(body, self.webhook_secret)})
                results.append({"event": ev["id"], "type": ev["type"], "status": r.status_code,
                                "body": r.json() if r.headers.get("content-type", "").startswith("application/json")
                                else r.text})
        return results

    # ------------------------------------------------------------- control routes
    async def control(self, request: Request) -> Response:
        path = request.url.path
        if path == "/__fake/requests":
            if request.method == "DELETE":
                self.requests.clear()
                return JSONResponse({"ok": True})
            return JSONResponse(self.requests)
        if path == "/__fake/reset":
            self.reset()
            return JSONResponse({"ok": True})
        if path == "/__fake/health":
            return JSONResponse({"ok": True})
        body = await request.json() if (await request.body()) else {}
        if path == "/__fake/fail":
            self.failures.append(Failure(int(body.get("status", 500)), int(body.get("times", 1)),
                                         str(body.get("path_prefix", "/v1/"))))
            return JSONResponse({"ok": True})
        if path == "/__fake/config":
            self.webhook_url = body.get("webhook_url", self.webhook_url)
            self.webhook_secret = body.get("webhook_secret", self.webhook_secret)
            self.enabled_events = tuple(body.get("enabled_events", self.enabled_events))
            return JSONResponse({"ok": True})
        if path == "/__fake/prices":
            return JSONResponse(self.add_price(str(body["id"]), int(body["unit_amount"]),
                                               str(body.get("currency", "usd"))))
        return JSONResponse({"error": "unknown control route"}, status_code=404)

    async def action_route(self, request: Request) -> Response:
        """``/__fake/{kind}/{id}/{action}``: a customer or bank action; answers the events."""
        kind, object_id, action = (request.path_params[k] for k in ("kind", "object_id", "action"))
        body = await request.json() if (await request.body()) else {}
        actions = {
            ("checkout/sessions", "complete"): (self.sessions, lambda: self.complete(
                object_id, int(body.get("discount_percent", 0)))),
            ("charges", "refund"): (self.charges, lambda: self.refund_charge(object_id, body.get("amount"))),
            ("refunds", "fail"): (self.refunds, lambda: self.fail_refund(
                object_id, str(body.get("reason", "expired_or_canceled_card")))),
            ("charges", "dispute"): (self.charges, lambda: self.dispute_charge(object_id, body.get("amount"))),
            ("disputes", "close"): (self.disputes, lambda: self.close_dispute(object_id, str(body.get("status")))),
        }
        if (kind, action) not in actions:
            return JSONResponse({"error": "unknown control route"}, status_code=404)
        store, run = actions[(kind, action)]
        if object_id not in store:
            return stripe_error(404, f"No such object: '{object_id}'", code="resource_missing")
        try:
            events = run()
        except ValueError as exc:
            return stripe_error(400, str(exc))
        delivered = await self.deliver(events) if body.get("deliver") else []
        return JSONResponse({"events": events, "delivered": delivered})

    def routes(self) -> list[Route]:
        return [
            Route("/__fake/{kind:path}/{object_id}/{action}", self.action_route, methods=["POST"]),
            Route("/__fake/{rest:path}", self.control, methods=["GET", "POST", "DELETE"]),
            Route("/v1/{rest:path}", self.api, methods=["GET", "POST", "DELETE"]),
        ]


def create_app(webhook_url: str | None = None, webhook_secret: str | None = None,
               prices: dict[str, tuple[int, str]] | None = None) -> Starlette:
    """A fresh fake (its state is ``app.state.fake``, a :class:`FakeStripe`)."""
    fake = FakeStripe(webhook_url=webhook_url, webhook_secret=webhook_secret)
    for price_id, (unit_amount, currency) in (prices or {}).items():
        fake.add_price(price_id, unit_amount, currency)
    app = Starlette(routes=fake.routes())
    app.state.fake = fake
    return app


def price_arg(value: str) -> tuple[str, tuple[int, str]]:
    price_id, _, rest = value.partition("=")
    amount, _, currency = rest.partition(":")
    return price_id, (int(amount), currency or "usd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this server and of ``fake_stripe_pages`` (which serves the same API)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url")
    parser.add_argument("--webhook-secret")
    parser.add_argument("--price", action="append", default=[], type=price_arg,
                        help="a recurring price: price_id=unit_amount[:currency] (repeatable)")
    parser.add_argument("--log-level", default="warning")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake Stripe API (customers, checkout, portal, subscriptions)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.webhook_url, args.webhook_secret, dict(args.price)), host=args.host,
                port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
