"""Calls to the Stripe API (billing routes only; the webhook path makes none).

The ``stripe`` library is imported lazily on first use (it costs ~200 ms of import time, which
no other function should pay at cold start). One ``StripeClient`` per warm container, on the
async httpx client the library ships (``stripe.HTTPXClient``), re-created if the event loop or
the configuration changes. ``STRIPE_API_BASE`` points it somewhere else than
https://api.stripe.com (the local fake in ``infra/local/fake_stripe.py`` for tests and the dev
stack). Every POST carries an idempotency key we choose, so the library's own network retries
(``stripe_max_network_retries``) and client retries can never create a second object.

Stripe errors are mapped to our typed errors: Stripe unreachable → 503, a rejected request
(bad price id, …) → 502 ``billing_provider_error``, an idempotency-key reuse with different
parameters → 409.

The webhook reads a few objects too (the payments of an invoice, a subscription whose events tie
on ``created``): those reads make no network retry of their own (``WEBHOOK_READ``), since a failed
event is redelivered by Stripe, and the webhook function's timeout must cover one attempt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import get_settings
from ..errors import Conflict, ServiceUnavailable, UpstreamError
from ..loops import PerLoop
from ..observability import count, logger

if TYPE_CHECKING:  # pragma: no cover
    import stripe

T = TypeVar("T")

# Per event loop (the library's httpx client is bound to it): one client per (key, API base).
_clients: PerLoop[dict[tuple[str, str], stripe.StripeClient]] = PerLoop(dict)
_price_currency: dict[str, str] = {}   # price id -> currency (a Price's currency never changes)
WEBHOOK_READ: Any = {"max_network_retries": 0}


def _new_client(secret_key: str, api_base: str) -> stripe.StripeClient:
    import stripe  # lazy: only the billing routes pay for this import

    settings = get_settings()
    base_addresses: Any = {"api": api_base.rstrip("/")} if api_base else None
    return stripe.StripeClient(
        secret_key,
        base_addresses=base_addresses,
        http_client=stripe.HTTPXClient(timeout=settings.stripe_timeout_s),
        max_network_retries=settings.stripe_max_network_retries,
    )


def get_client() -> stripe.StripeClient:
    """The container's Stripe client (call from inside a coroutine)."""
    settings = get_settings()
    if not settings.stripe_secret_key:
        raise ServiceUnavailable("Billing is not configured on this deployment.", code="billing_unconfigured")
    key = (settings.stripe_secret_key, settings.stripe_api_base)
    clients = _clients.get()
    client = clients.get(key)
    if client is None:
        clients.clear()  # the configuration changed: the old client is not used again
        client = clients[key] = _new_client(*key)
    return client


def reset_client() -> None:
    _clients.take()
    _price_currency.clear()


def idempotency_key(*parts: str) -> str:
    """A stable Stripe idempotency key (≤ 255 chars) from our own identifiers."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:40]
    return f"mlp-{parts[0]}-{digest}"


async def _call(operation: str, call: Awaitable[T]) -> T:
    import stripe

    try:
        return await call
    except stripe.IdempotencyError as exc:
        raise Conflict("This Idempotency-Key was already used with different parameters.",
                       code="idempotency_key_reused") from exc
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        _failed(operation, exc)
        raise ServiceUnavailable("The payment provider is unavailable; try again shortly.",
                                 code="billing_unavailable") from exc
    except stripe.AuthenticationError as exc:
        _failed(operation, exc)
        raise ServiceUnavailable("Billing is misconfigured on this deployment.",
                                 code="billing_unconfigured") from exc
    except stripe.StripeError as exc:
        _failed(operation, exc)
        raise UpstreamError("The payment provider rejected the request.", code="billing_provider_error",
                            upstream_status=exc.http_status, provider="stripe") from exc


def _failed(operation: str, exc: Exception) -> None:
    count("StripeApiErrors")
    logger.warning("stripe api call failed", extra={
        "operation": operation, "error": type(exc).__name__, "http_status": getattr(exc, "http_status", None),
        "stripe_code": getattr(exc, "code", None), "stripe_request_id": getattr(exc, "request_id", None)})


def _plain(obj: Any) -> dict[str, Any]:
    to_dict = getattr(obj, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dict(obj)


# --------------------------------------------------------------------------- operations
@dataclass(frozen=True, slots=True)
class SessionUrl:
    id: str
    url: str


async def create_customer(user_id: str, email: str | None) -> str:
    """A Stripe Customer for our user. The idempotency key is the user id, so concurrent first
    checkouts of one user get the same customer."""
    client = get_client()
    params: dict[str, Any] = {"metadata": {"user_id": user_id}}
    if email:
        params["email"] = email
    customer = await _call("create_customer", client.v1.customers.create_async(
        params=params, options={"idempotency_key": idempotency_key("customer", user_id)}))  # type: ignore[arg-type]
    return str(customer.id)


async def create_checkout_session(params: dict[str, Any], key: str) -> SessionUrl:
    client = get_client()
    session = await _call("create_checkout_session", client.v1.checkout.sessions.create_async(
        params=params, options={"idempotency_key": key}))  # type: ignore[arg-type]
    return SessionUrl(id=str(session.id), url=str(session.url))


async def create_portal_session(customer_id: str, return_url: str, key: str,
                                configuration: str | None = None) -> SessionUrl:
    client = get_client()
    params: dict[str, Any] = {"customer": customer_id, "return_url": return_url}
    if configuration:
        params["configuration"] = configuration
    session = await _call("create_portal_session", client.v1.billing_portal.sessions.create_async(
        params=params, options={"idempotency_key": key}))  # type: ignore[arg-type]
    return SessionUrl(id=str(session.id), url=str(session.url))


async def retrieve_subscription(subscription_id: str, *, webhook: bool = False) -> dict[str, Any]:
    client = get_client()
    sub = await _call("retrieve_subscription", client.v1.subscriptions.retrieve_async(
        subscription_id, options=WEBHOOK_READ if webhook else None))
    return _plain(sub)


async def price_currency(price_id: str) -> str:
    """The currency of a Price (cached per container: a Price's currency is immutable)."""
    if price_id not in _price_currency:
        client = get_client()
        price = await _call("retrieve_price", client.v1.prices.retrieve_async(price_id))
        _price_currency[price_id] = str(price.currency).lower()
    return _price_currency[price_id]


@dataclass(frozen=True, slots=True)
class InvoicePayment:
    invoice: str
    payment_intent: str
    amount_paid: int     # cents


async def _paid_invoice_payments(params: dict[str, Any]) -> list[InvoicePayment]:
    """Paid invoice payments made with a PaymentIntent (``GET /v1/invoice_payments``, API
    versions 2025-03-31 and later; payment records of payments made outside Stripe are skipped)."""
    client = get_client()
    page = await _call("list_invoice_payments", client.v1.invoice_payments.list_async(
        params={**params, "status": "paid", "limit": 100}, options=WEBHOOK_READ))  # type: ignore[arg-type]
    out = []
    for item in page.data:
        p = _plain(item)
        payment = p.get("payment") or {}
        pi = payment.get("payment_intent")
        pi = pi.get("id") if isinstance(pi, dict) else pi
        invoice = p.get("invoice")
        invoice = invoice.get("id") if isinstance(invoice, dict) else invoice
        if payment.get("type") == "payment_intent" and pi and invoice and isinstance(p.get("amount_paid"), int):
            out.append(InvoicePayment(invoice=str(invoice), payment_intent=str(pi), amount_paid=p["amount_paid"]))
    return out


async def invoice_payments(invoice_id: str) -> list[InvoicePayment]:
    """The PaymentIntents that paid an invoice (an invoice event carries none since basil)."""
    return await _paid_invoice_payments({"invoice": invoice_id})


async def invoices_paid_by(payment_intent: str) -> list[InvoicePayment]:
    """The invoices a PaymentIntent paid (to match a refund or dispute to an invoice's credit)."""
    return await _paid_invoice_payments({"payment": {"type": "payment_intent", "payment_intent": payment_intent}})
