"""A fake of the Stripe API endpoints the gateway calls, plus the webhook events Stripe sends.

Used by the integration/e2e tests and the local stack (``STRIPE_API_BASE`` points the stripe
library here). Start it with::

    python -m infra.local.fake_stripe --port 12111 [--webhook-url URL --webhook-secret whsec_…]

or in-process with ``infra.local.servers.start_in_thread(create_app())``.

API (form-encoded bodies with Stripe's bracket notation, JSON answers in Stripe's shapes;
``Authorization: Bearer sk_…`` required, else 401 as the real API)::

    POST /v1/customers                          GET /v1/customers/{id}
    POST /v1/checkout/sessions                  GET /v1/checkout/sessions/{id}
    POST /v1/billing_portal/sessions
    GET  /v1/subscriptions/{id}                 GET /v1/subscriptions?customer=…
    POST /v1/subscriptions/{id}  (cancel_at_period_end, metadata)
    DELETE /v1/subscriptions/{id}  (cancel now)

Idempotency as Stripe: a repeated ``Idempotency-Key`` with the same method, path and parameters
replays the first answer (``Idempotent-Replayed: true``); with different ones → 400
``idempotency_error``. Unknown ids → 404 ``resource_missing``.

Test controls::

    GET    /__fake/requests             every API request: method, path, params (decoded),
                                        idempotency_key, stripe_version, api_key
    DELETE /__fake/requests             clear the log
    POST   /__fake/reset                forget everything
    POST   /__fake/fail                 {"status": 500, "times": 1, "path_prefix": "/v1/checkout"}:
                                        the next matching requests fail (type api_error)
    POST   /__fake/config               {"webhook_url": …, "webhook_secret": …}
    POST   /__fake/checkout/sessions/{id}/complete   {"deliver": true}: completes the session as a
        customer paying would, creating the PaymentIntent or the Subscription + first Invoice, and
        returns the events Stripe would send (``{"events": [...]}``); with ``deliver`` and a
        configured webhook URL each is POSTed there signed with the real scheme
        (``Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "{t}.{body}")``) and the answers returned.

The event/object builders below (``event``, ``checkout_session``, ``subscription``, ``invoice``,
``charge``, ``sign``) produce the JSON shapes of API version ``API_VERSION`` (2025-03-31.basil
and later: subscription periods on the items, ``invoice.parent.subscription_details``,
``line.pricing.price_details``); ``legacy=True`` gives the pre-basil shapes.
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

API_VERSION = "2025-03-31.basil"
MONTH_S = 30 * 24 * 3600


def _rid(prefix: str) -> str:
    return f"{prefix}_{'test_' if prefix == 'cs' else ''}{secrets.token_hex(12)}"


# --------------------------------------------------------------------------- signing
def sign(payload: str | bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value for ``payload`` (Stripe's v1 scheme)."""
    body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    t = int(time.time()) if timestamp is None else timestamp
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
        "created": int(time.time()) if created is None else created, "data": data, "livemode": livemode,
        "pending_webhooks": 1, "request": {"id": _rid("req"), "idempotency_key": None}, "type": event_type,
    }


def checkout_session(*, session_id: str | None = None, mode: str = "payment", customer: str | None = None,
                     user_id: str | None = None, amount_cents: int = 0, payment_intent: str | None = None,
                     subscription: str | None = None, invoice: str | None = None, payment_status: str = "paid",
                     metadata: dict[str, Any] | None = None, status: str = "complete",
                     created: int | None = None) -> dict[str, Any]:
    created = int(time.time()) if created is None else created
    sid = session_id or _rid("cs")
    return {
        "id": sid, "object": "checkout.session", "amount_subtotal": amount_cents, "amount_total": amount_cents,
        "cancel_url": "https://example.com/cancel", "client_reference_id": user_id, "created": created,
        "currency": "usd", "customer": customer, "customer_creation": None,
        "customer_details": {"email": "customer@example.com", "name": None, "tax_exempt": "none"},
        "expires_at": created + 86400, "invoice": invoice, "livemode": False, "metadata": metadata or {},
        "mode": mode, "payment_intent": payment_intent, "payment_method_types": ["card"],
        "payment_status": payment_status, "status": status, "subscription": subscription,
        "success_url": "https://example.com/success", "total_details": {"amount_discount": 0, "amount_tax": 0},
        "url": None if status == "complete" else f"https://checkout.stripe.com/c/pay/{sid}",
    }


def price(price_id: str, unit_amount: int = 2000, *, recurring: bool = True) -> dict[str, Any]:
    return {
        "id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit", "created": 1700000000,
        "currency": "usd", "livemode": False, "lookup_key": None, "metadata": {}, "nickname": None,
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
    start = int(time.time()) if period_start is None else period_start
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


def invoice(*, invoice_id: str | None = None, customer: str, subscription_id: str | None, price_id: str,
            amount_paid: int = 2000, billing_reason: str = "subscription_create", status: str = "paid",
            period_start: int | None = None, period_end: int | None = None, attempt_count: int = 1,
            next_payment_attempt: int | None = None, subscription_metadata: dict[str, Any] | None = None,
            payment_intent: str | None = None, legacy: bool = False, created: int | None = None) -> dict[str, Any]:
    inv_id = invoice_id or _rid("in")
    created = int(time.time()) if created is None else created
    start = created if period_start is None else period_start
    end = start + MONTH_S if period_end is None else period_end
    amount_due = amount_paid if status == "paid" else (amount_paid or 2000)
    line: dict[str, Any] = {
        "id": "il_" + secrets.token_hex(10), "object": "line_item", "amount": amount_due, "currency": "usd",
        "description": f"1 x plan (at ${amount_due / 100:.2f} / month)", "discount_amounts": [],
        "discountable": True, "discounts": [], "invoice": inv_id, "livemode": False, "metadata": {},
        "period": {"end": end, "start": start}, "quantity": 1,
    }
    obj: dict[str, Any] = {
        "id": inv_id, "object": "invoice", "account_country": "US", "account_name": "Multi-LLM",
        "amount_due": amount_due, "amount_paid": amount_paid if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else amount_due, "attempt_count": attempt_count,
        "attempted": True, "billing_reason": billing_reason, "collection_method": "charge_automatically",
        "created": created, "currency": "usd", "customer": customer, "customer_email": "customer@example.com",
        "lines": {"object": "list", "data": [line], "has_more": False, "url": f"/v1/invoices/{inv_id}/lines"},
        "livemode": False, "metadata": {}, "next_payment_attempt": next_payment_attempt,
        "number": "MLP-" + secrets.token_hex(3).upper(), "period_end": created, "period_start": created,
        "status": status, "status_transitions": {"finalized_at": created, "paid_at": created if status == "paid"
                                                 else None, "voided_at": None, "marked_uncollectible_at": None},
        "subtotal": amount_due, "total": amount_due,
    }
    if legacy:
        obj["subscription"] = subscription_id
        obj["subscription_details"] = {"metadata": subscription_metadata or {}}
        obj["payment_intent"] = payment_intent
        obj["paid"] = status == "paid"
        line.update({"type": "subscription", "subscription": subscription_id, "proration": False,
                     "price": price(price_id, amount_due)})
    else:
        obj["parent"] = {"type": "subscription_details", "quote_details": None, "subscription_details": {
            "metadata": subscription_metadata or {}, "subscription": subscription_id}}
        line["parent"] = {"type": "subscription_item_details", "invoice_item_details": None,
                          "subscription_item_details": {"invoice_item": None, "proration": False,
                                                        "proration_details": {"credited_items": None},
                                                        "subscription": subscription_id,
                                                        "subscription_item": "si_" + secrets.token_hex(7)}}
        line["pricing"] = {"type": "price_details", "price_details": {"price": price_id, "product": "prod_x"},
                           "unit_amount_decimal": str(amount_due)}
        if payment_intent:
            obj["payments"] = {"object": "list", "has_more": False, "data": [{
                "id": "inpay_" + secrets.token_hex(8), "object": "invoice_payment", "amount_paid": amount_paid,
                "amount_requested": amount_due, "currency": "usd", "invoice": inv_id, "is_default": True,
                "payment": {"type": "payment_intent", "payment_intent": payment_intent}, "status": "paid"}]}
    return obj


def charge(*, charge_id: str | None = None, payment_intent: str | None, customer: str | None, amount: int,
           amount_refunded: int = 0, created: int | None = None) -> dict[str, Any]:
    created = int(time.time()) if created is None else created
    return {
        "id": charge_id or _rid("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": amount_refunded, "balance_transaction": _rid("txn"), "captured": True,
        "created": created, "currency": "usd", "customer": customer, "description": None, "disputed": False,
        "livemode": False, "metadata": {}, "paid": True, "payment_intent": payment_intent,
        "payment_method": _rid("pm"), "receipt_url": None, "refunded": amount_refunded >= amount,
        "status": "succeeded",
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
    requests: list[dict[str, Any]] = field(default_factory=list)
    idempotency: dict[str, tuple[str, dict[str, Any], int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    webhook_url: str | None = None
    webhook_secret: str | None = None

    def reset(self) -> None:
        """Forget every object, request and failure (the webhook configuration stays)."""
        for store in (self.customers, self.sessions, self.portal_sessions, self.subscriptions, self.idempotency):
            store.clear()
        self.requests.clear()
        self.failures.clear()

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
        try:
            if parts[:2] == ["v1", "customers"]:
                if method == "POST" and len(parts) == 2:
                    return self.create_customer(params)
                if method == "GET" and len(parts) == 3:
                    return self.get(self.customers, parts[2], "customer")
            if parts[:3] == ["v1", "checkout", "sessions"]:
                if method == "POST" and len(parts) == 3:
                    return self.create_session(params)
                if method == "GET" and len(parts) == 4:
                    return self.get(self.sessions, parts[3], "checkout.session")
            if parts[:3] == ["v1", "billing_portal", "sessions"] and method == "POST" and len(parts) == 3:
                return self.create_portal_session(params)
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
            return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "id",
                                   "message": f"No such {kind}: '{object_id}'"}}
        return 200, store[object_id]

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
            return 400, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                   "param": "customer", "message": f"No such customer: '{customer}'"}}
        item = params["line_items"][0]
        if mode == "payment":
            amount = int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
        else:
            amount = 2000
        session = checkout_session(mode=mode, customer=customer, user_id=params.get("client_reference_id"),
                                   amount_cents=amount, payment_status="unpaid", status="open",
                                   metadata=params.get("metadata") or {})
        session["success_url"], session["cancel_url"] = params["success_url"], params.get("cancel_url")
        session["_line_items"] = params["line_items"]
        session["_subscription_data"] = params.get("subscription_data") or {}
        self.sessions[session["id"]] = session
        return 200, self.public(session)

    @staticmethod
    def public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def create_portal_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        customer = params.get("customer")
        if not customer:
            raise ValueError("Missing required param: customer.")
        if customer not in self.customers:
            return 400, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                   "param": "customer", "message": f"No such customer: '{customer}'"}}
        sid = _rid("bps")
        self.portal_sessions[sid] = {
            "id": sid, "object": "billing_portal.session", "configuration": params.get("configuration") or
            "bpc_default", "created": int(time.time()), "customer": customer, "livemode": False,
            "return_url": params.get("return_url"), "url": f"https://billing.stripe.com/p/session/test_{sid}"}
        return 200, self.portal_sessions[sid]

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

    # ------------------------------------------------------------- completing a checkout
    def complete(self, session_id: str) -> list[dict[str, Any]]:
        """The customer pays: the events Stripe would send, in Stripe's usual order."""
        session = self.sessions[session_id]
        now = int(time.time())
        session.update(status="complete", payment_status="paid", url=None)
        customer = session["customer"]
        if session["mode"] == "payment":
            session["payment_intent"] = _rid("pi")
            return [event("checkout.session.completed", self.public(session), created=now)]
        price_id = session["_line_items"][0]["price"]
        metadata = (session["_subscription_data"].get("metadata")) or {}
        sub = subscription(customer=customer, price_id=price_id, metadata=metadata, period_start=now)
        inv = invoice(customer=customer, subscription_id=sub["id"], price_id=price_id, created=now,
                      subscription_metadata=metadata, payment_intent=_rid("pi"))
        sub["latest_invoice"] = inv["id"]
        self.subscriptions[sub["id"]] = sub
        session.update(subscription=sub["id"], invoice=inv["id"], amount_subtotal=inv["amount_paid"],
                       amount_total=inv["amount_paid"])
        return [event("customer.subscription.created", sub, created=now),
                event("invoice.paid", inv, created=now),
                event("invoice.payment_succeeded", inv, created=now),
                event("checkout.session.completed", self.public(session), created=now)]

    async def deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not (self.webhook_url and self.webhook_secret):
            return []
        results = []
        async with httpx.AsyncClient(timeout=10) as client:
            for ev in events:
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
            return JSONResponse({"ok": True})
        return JSONResponse({"error": "unknown control route"}, status_code=404)

    async def complete_route(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        if session_id not in self.sessions:
            return stripe_error(404, f"No such checkout.session: '{session_id}'", code="resource_missing")
        body = await request.json() if (await request.body()) else {}
        events = self.complete(session_id)
        delivered = await self.deliver(events) if body.get("deliver") else []
        return JSONResponse({"events": events, "delivered": delivered})

    def routes(self) -> list[Route]:
        return [
            Route("/__fake/checkout/sessions/{session_id}/complete", self.complete_route, methods=["POST"]),
            Route("/__fake/{rest:path}", self.control, methods=["GET", "POST", "DELETE"]),
            Route("/v1/{rest:path}", self.api, methods=["GET", "POST", "DELETE"]),
        ]


def create_app(webhook_url: str | None = None, webhook_secret: str | None = None) -> Starlette:
    """A fresh fake (its state is ``app.state.fake``, a :class:`FakeStripe`)."""
    fake = FakeStripe(webhook_url=webhook_url, webhook_secret=webhook_secret)
    app = Starlette(routes=fake.routes())
    app.state.fake = fake
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake Stripe API (customers, checkout, portal, subscriptions)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url")
    parser.add_argument("--webhook-secret")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.webhook_url, args.webhook_secret), host=args.host, port=args.port,
                log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
