"""Stripe's hosted pages for the local stack: Checkout and the Billing Portal.

The fake Stripe API (``fake_stripe.py``) answers the calls the gateway makes; a customer,
though, is sent to Stripe's own pages. This module serves stand-ins for them from the same
fake, so the console's "buy credits" and "change plan" work offline, in a browser:

- ``GET /c/pay/{session}``: the Checkout page (amount or plan, a Pay button, a cancel link).
  Paying completes the session exactly as ``POST /__fake/checkout/sessions/{id}/complete``
  does, delivers the resulting events **signed** to the stack's webhook, then redirects to the
  session's ``success_url`` (``{CHECKOUT_SESSION_ID}`` filled in, as Stripe does).
- ``GET /p/session/{portal session}``: the Billing Portal. Switching plan changes the
  subscription item's price and sends ``customer.subscription.updated`` (with
  ``previous_attributes``); cancelling sets ``cancel_at_period_end`` and sends the same event;
  then back to the portal's ``return_url``.

Session URLs point here (``--public-url``) instead of checkout.stripe.com / billing.stripe.com.
Run it in place of ``fake_stripe``: ``python -m infra.local.fake_stripe_pages --port 12111
--webhook-url … --webhook-secret … --plan pro=price_local_pro``.
"""

from __future__ import annotations

import argparse
import html
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from infra.local.fake_stripe import FakeStripe, add_arguments, event, price
from infra.local.idp import form_fields


@dataclass
class HostedFakeStripe(FakeStripe):
    public_url: str = ""
    plans: dict[str, str] = field(default_factory=dict)  # tier name -> price id

    def create_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body = super().create_session(params)
        if status == 200:
            body["url"] = self.sessions[body["id"]]["url"] = f"{self.public_url}/c/pay/{body['id']}"
        return status, body

    def create_portal_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body = super().create_portal_session(params)
        if status == 200:
            body["url"] = self.portal_sessions[body["id"]]["url"] = f"{self.public_url}/p/session/{body['id']}"
        return status, body

    def plan_of(self, price_id: str) -> str:
        return next((name for name, pid in self.plans.items() if pid == price_id), price_id)

    def change_subscription(self, sub: dict[str, Any], *, price_id: str | None = None,
                            cancel_at_period_end: bool | None = None) -> dict[str, Any]:
        """Apply a portal change and return the ``customer.subscription.updated`` event."""
        item = sub["items"]["data"][0]
        previous: dict[str, Any] = {}
        if price_id is not None and price_id != item["price"]["id"]:
            previous["items"] = {"object": "list", "data": [dict(item)]}
            item["price"] = dict(self.prices.get(price_id) or price(price_id))
            sub["metadata"] = {**sub.get("metadata", {}), "tier": self.plan_of(price_id)}
        if cancel_at_period_end is not None and cancel_at_period_end != sub["cancel_at_period_end"]:
            previous["cancel_at_period_end"] = sub["cancel_at_period_end"]
            sub["cancel_at_period_end"] = cancel_at_period_end
            sub["cancel_at"] = item.get("current_period_end") if cancel_at_period_end else None
        return event("customer.subscription.updated", sub, created=int(time.time()), previous_attributes=previous)


CSS = ("body{font:16px/1.5 system-ui,sans-serif;background:#f6f9fc;color:#1a1f36;margin:0}main{max-width:28rem;"
       "margin:3rem auto;background:#fff;padding:2rem;border-radius:.6rem;box-shadow:0 2px 8px #0001}"
       "button{width:100%;margin-top:1rem;padding:.7rem;border:0;border-radius:.4rem;background:#635bff;color:#fff;"
       "font:inherit;font-weight:600;cursor:pointer}button.alt{background:#fff;color:#635bff;border:1px solid #635bff}"
       ":focus-visible{outline:3px solid #f5a623;outline-offset:2px}.amount{font-size:2rem;font-weight:700}"
       ".note{color:#697386;font-size:.85rem}.err{background:#fde8e8;color:#8a1c1c;padding:.6rem;border-radius:.4rem}")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           '<meta name="viewport" content="width=device-width,initial-scale=1">'
           '<link rel="stylesheet" href="/c/style.css"></head><body><main>'
           f'<p class="note">Local stand-in for the hosted Stripe page (test mode)</p>{body}</main>'
           '</body></html>')
    return HTMLResponse(doc, status_code=status, headers={"cache-control": "no-store", "x-frame-options": "DENY",
                                                          "content-security-policy": "default-src 'none'; "
                                                          "style-src 'self'; frame-ancestors 'none'"})


def _delivery_failed(delivered: list[dict[str, Any]]) -> str | None:
    bad = [d for d in delivered if d["status"] != 200]
    if not bad:
        return None
    return "; ".join(f"{d['type']}: HTTP {d['status']}" for d in bad)


def hosted_routes(fake: HostedFakeStripe) -> list[Route]:
    async def checkout(request: Request) -> Response:
        sid = request.path_params["session_id"]
        session = fake.sessions.get(sid)
        if session is None:
            return _page("Not found", "<h1>This checkout does not exist</h1>", 404)
        if request.method == "POST":
            if session["status"] != "open":
                return _page("Complete", "<h1>This checkout is already complete</h1>", 409)
            delivered = await fake.deliver(fake.complete(sid))
            failure = _delivery_failed(delivered)
            if failure:
                return _page("Webhook failed", f'<h1>Paid, but the webhook failed</h1><p class="err">'
                             f"{html.escape(failure)}</p>", 502)
            return RedirectResponse(str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", sid), status_code=303)
        if session["status"] != "open":
            return _page("Complete", f'<h1>This checkout is already complete</h1><p><a href="'
                         f'{html.escape(str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", sid))}">'
                         "Return to the merchant</a></p>")
        item = session["_line_items"][0]
        if session["mode"] == "payment":
            what = f'<p class="amount">${int(item["price_data"]["unit_amount"]) / 100:,.2f}</p><p>API credit</p>'
            label = "Pay"
        else:
            plan = html.escape(fake.plan_of(item["price"]).title())
            what = f'<p class="amount">{plan} plan</p><p>Monthly subscription</p>'
            label = "Subscribe"
        cancel = html.escape(str(session.get("cancel_url") or "/"))
        return _page("Checkout", f"""<h1>Checkout</h1>{what}
<p class="note">Test mode: no card needed. Paying sends the signed webhook events Stripe would send.</p>
<form method="post"><button type="submit">{label}</button></form>
<p><a href="{cancel}">Cancel and return</a></p>""")

    async def portal(request: Request) -> Response:
        bps = request.path_params["portal_id"]
        ps = fake.portal_sessions.get(bps)
        if ps is None:
            return _page("Not found", "<h1>This portal session does not exist</h1>", 404)
        subs = [s for s in fake.subscriptions.values() if s["customer"] == ps["customer"] and s["status"] != "canceled"]
        back = html.escape(str(ps.get("return_url") or "/"))
        if request.method == "POST":
            form = form_fields(await request.body())
            sub = next((s for s in subs if s["id"] == form.get("subscription")), None)
            if sub is None:
                return _page("Portal", "<h1>No such subscription</h1>", 404)
            action = str(form.get("action", ""))
            if action == "switch" and str(form.get("price", "")) in fake.plans.values():
                ev = fake.change_subscription(sub, price_id=str(form["price"]))
            elif action in ("cancel", "renew"):
                ev = fake.change_subscription(sub, cancel_at_period_end=action == "cancel")
            else:
                return _page("Portal", "<h1>Unknown action</h1>", 400)
            failure = _delivery_failed(await fake.deliver([ev]))
            if failure:
                return _page("Webhook failed", f'<p class="err">{html.escape(failure)}</p>', 502)
            return RedirectResponse(str(ps.get("return_url") or "/"), status_code=303)
        blocks = []
        for sub in subs:
            current = sub["items"]["data"][0]["price"]["id"]
            end = sub["items"]["data"][0].get("current_period_end") or sub.get("current_period_end")
            ends = time.strftime("%Y-%m-%d", time.gmtime(end)) if end else "?"
            forms = "".join(
                f'<form method="post"><input type="hidden" name="subscription" value="{html.escape(sub["id"])}">'
                f'<input type="hidden" name="action" value="switch"><input type="hidden" name="price" '
                f'value="{html.escape(pid)}"><button type="submit">Switch to {html.escape(name.title())}</button>'
                "</form>"
                for name, pid in fake.plans.items() if pid != current)
            toggle = "renew" if sub["cancel_at_period_end"] else "cancel"
            forms += (f'<form method="post"><input type="hidden" name="subscription" value="{html.escape(sub["id"])}">'
                      f'<input type="hidden" name="action" value="{toggle}"><button class="alt" type="submit">'
                      f'{"Keep my plan (undo cancellation)" if toggle == "renew" else "Cancel at period end"}'
                      "</button></form>")
            status = "cancels" if sub["cancel_at_period_end"] else "renews"
            blocks.append(f"<h2>{html.escape(fake.plan_of(current).title())} plan</h2>"
                          f"<p>Status {html.escape(sub['status'])} · {status} on {ends}</p>{forms}")
        body = "".join(blocks) or "<p>No active subscription. Payment methods and invoices would be here.</p>"
        return _page("Billing portal", f'<h1>Billing portal</h1>{body}<p><a href="{back}">Return</a></p>')

    async def style(request: Request) -> Response:
        return Response(CSS, media_type="text/css")

    return [Route("/c/style.css", style, methods=["GET"]),
            Route("/c/pay/{session_id}", checkout, methods=["GET", "POST"]),
            Route("/p/session/{portal_id}", portal, methods=["GET", "POST"])]


def create_app(public_url: str, plans: dict[str, str], webhook_url: str | None = None,
               webhook_secret: str | None = None, prices: dict[str, tuple[int, str]] | None = None) -> Starlette:
    fake = HostedFakeStripe(webhook_url=webhook_url, webhook_secret=webhook_secret, public_url=public_url.rstrip("/"),
                            plans=plans)
    for price_id, (unit_amount, currency) in (prices or {}).items():
        fake.add_price(price_id, unit_amount, currency)
    app = Starlette(routes=hosted_routes(fake) + fake.routes())
    app.state.fake = fake
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake Stripe API plus its hosted Checkout and Billing Portal pages")
    add_arguments(parser)
    parser.add_argument("--plan", action="append", default=[], help="tier=price_id (repeat)")
    args = parser.parse_args(argv)
    plans = dict(p.split("=", 1) for p in args.plan)
    app = create_app(f"http://{args.host}:{args.port}", plans, args.webhook_url, args.webhook_secret,
                     dict(args.price))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
