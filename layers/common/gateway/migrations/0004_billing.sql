-- Billing (Stripe): checkout sessions we created, payments and invoices that credited the
-- ledger, refunds matched against them, and the order-safe subscription state.
-- Credit movements themselves are ledger_entries rows referenced by the Stripe object id
-- (stripe:payment_intent:pi_…, stripe:invoice:in_…, stripe:refund:ch_…:<cumulative cents>).
-- Every table references users ON DELETE CASCADE.

-- Checkout Sessions created by POST /v1/billing/checkout (audit + user lookup for webhooks).
CREATE TABLE checkout_sessions (
    id              text PRIMARY KEY,                 -- Stripe cs_…
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    mode            text NOT NULL CHECK (mode IN ('payment', 'subscription')),
    credits         numeric(20, 8) CHECK (credits > 0),   -- payment mode: USD of credit bought
    plan            text,                                 -- subscription mode: the tier
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'complete', 'expired')),
    stripe_customer_id text NOT NULL,
    payment_intent  text,
    stripe_subscription_id text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX checkout_sessions_user_idx ON checkout_sessions (user_id, created_at DESC);

-- Payments that granted credit (one-time purchases and subscription invoices), keyed by the
-- PaymentIntent so a later charge.refunded can claw back the matching share of that credit.
CREATE TABLE stripe_payments (
    payment_intent   text PRIMARY KEY,               -- pi_…
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source           text NOT NULL CHECK (source IN ('checkout', 'invoice')),
    source_id        text NOT NULL,                  -- cs_… or in_…
    amount_cents     bigint NOT NULL CHECK (amount_cents > 0),
    currency         text NOT NULL,
    credit           numeric(20, 8) NOT NULL CHECK (credit >= 0),
    ledger_reference text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_payments_user_idx ON stripe_payments (user_id);

-- One row per refunded charge. ``refunded_cents`` is the highest cumulative amount_refunded
-- seen (events may arrive out of order); ``deducted`` the credit taken back so far. A refund
-- that arrives before its payment is recorded unmatched and applied when the payment arrives.
CREATE TABLE stripe_refunds (
    charge_id          text PRIMARY KEY,             -- ch_…
    payment_intent     text,
    user_id            uuid REFERENCES users (id) ON DELETE CASCADE,
    amount_cents       bigint NOT NULL,
    refunded_cents     bigint NOT NULL CHECK (refunded_cents >= 0),
    currency           text NOT NULL,
    deducted           numeric(20, 8) NOT NULL DEFAULT 0 CHECK (deducted >= 0),
    -- part of ``deducted`` that took the user's available credit below zero (spent before the refund)
    shortfall          numeric(20, 8) NOT NULL DEFAULT 0 CHECK (shortfall >= 0),
    last_event_created bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_refunds_payment_intent_idx ON stripe_refunds (payment_intent);
CREATE INDEX stripe_refunds_user_idx ON stripe_refunds (user_id);

-- Subscription invoices: included monthly credit (once per invoice) and payment failures.
-- ``paid_at`` is terminal: a late invoice.payment_failed never marks a paid invoice unpaid.
CREATE TABLE stripe_invoices (
    id                     text PRIMARY KEY,         -- in_…
    user_id                uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stripe_subscription_id text,
    tier                   text,
    billing_reason         text,
    amount_paid_cents      bigint NOT NULL DEFAULT 0,
    currency               text,
    credit                 numeric(20, 8) NOT NULL DEFAULT 0,   -- included credit granted
    period_start           timestamptz,
    period_end             timestamptz,
    paid_at                timestamptz,
    payment_failed_at      timestamptz,
    attempt_count          integer NOT NULL DEFAULT 0,
    next_payment_attempt   timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_invoices_user_idx ON stripe_invoices (user_id, created_at DESC);
CREATE INDEX stripe_invoices_subscription_idx ON stripe_invoices (stripe_subscription_id);

-- Order-safe subscription state: a customer.subscription.* event is applied only if
-- (event.created, last_event_order) is newer than the stored pair; the order breaks ties
-- between events of the same second (created < updated < deleted).
ALTER TABLE subscriptions
    ADD COLUMN last_event_order     smallint NOT NULL DEFAULT 0,
    ADD COLUMN last_event_id        text,
    ADD COLUMN price_id             text,
    ADD COLUMN current_period_start timestamptz,
    ADD COLUMN cancel_at            timestamptz,
    ADD COLUMN canceled_at          timestamptz,
    ADD COLUMN ended_at             timestamptz;

-- What the webhook did with each event (``outcome``) and why (``detail``).
ALTER TABLE stripe_events
    ADD COLUMN detail  text,
    ADD COLUMN user_id uuid;
CREATE INDEX stripe_events_user_idx ON stripe_events (user_id) WHERE user_id IS NOT NULL;
