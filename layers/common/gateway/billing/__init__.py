"""The Stripe feature: Checkout and the Billing Portal (``routes``), the signed webhook
(``webhooks``), the Stripe API client (``stripe_api``), subscriptions → tiers
(``subscriptions``) and refunds/disputes (``clawback``). Money moves only through
``gateway.money.ledger``. See docs/billing.md."""
