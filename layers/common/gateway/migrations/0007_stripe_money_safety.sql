-- Stripe and account money safety (docs/billing.md, docs/account.md):
-- disputes, failed refunds, scoped API keys, sign-in identities keyed by (issuer, subject) and
-- the one-welcome-credit-per-email record.

-- Disputes (charge.dispute.created / .closed). ``taken`` is the credit currently taken back for
-- the dispute (its share of the disputed payment's credit); ``movements`` numbers its ledger rows
-- (stripe:dispute:<dp>:<n>). An open dispute of a user blocks new reservations (ledger.RESERVE_SQL).
CREATE TABLE stripe_disputes (
    dispute_id         text PRIMARY KEY,             -- dp_… / du_…
    charge_id          text,
    payment_intent     text,
    user_id            uuid REFERENCES users (id) ON DELETE CASCADE,   -- known once its payment is
    amount_cents       bigint NOT NULL CHECK (amount_cents >= 0),
    currency           text NOT NULL,
    status             text NOT NULL,
    closed             boolean NOT NULL DEFAULT false,
    taken              numeric(20, 8) NOT NULL DEFAULT 0 CHECK (taken >= 0),
    movements          integer NOT NULL DEFAULT 0,
    last_event_created bigint NOT NULL DEFAULT 0,
    last_event_order   smallint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_disputes_payment_intent_idx ON stripe_disputes (payment_intent);
-- The reserve statement's "no open dispute" probe.
CREATE INDEX stripe_disputes_open_user_idx ON stripe_disputes (user_id) WHERE NOT closed;

-- Refund objects (refund.created / .updated / .failed, charge.refund.updated). A refund that
-- failed or was canceled gives its share of credit back; ``status`` failed/canceled is terminal.
CREATE TABLE stripe_refund_items (
    refund_id          text PRIMARY KEY,             -- re_… / pyr_…
    charge_id          text NOT NULL,
    payment_intent     text,
    user_id            uuid REFERENCES users (id) ON DELETE CASCADE,   -- known once its payment is
    amount_cents       bigint NOT NULL CHECK (amount_cents >= 0),
    currency           text NOT NULL,
    status             text NOT NULL,
    failure_reason     text,
    last_event_created bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_refund_items_charge_idx ON stripe_refund_items (charge_id);
CREATE INDEX stripe_refund_items_payment_intent_idx ON stripe_refund_items (payment_intent);

-- What a completed credit purchase actually credited: min(credits sold, amount paid without tax).
-- (Sessions we did not create are never credited: stripe_events outcome 'unmatched'.)
ALTER TABLE checkout_sessions ADD COLUMN credited numeric(20, 8);

-- Scoped API keys: 'full' (everything the account can do) or 'inference' (query routes and
-- read-only views of its own usage). A key with its own rpm or spend cap is always 'inference'.
ALTER TABLE api_keys ADD COLUMN scope text NOT NULL DEFAULT 'full';
UPDATE api_keys SET scope = 'inference' WHERE rpm IS NOT NULL OR spend_cap IS NOT NULL;
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_scope_check CHECK (scope IN ('full', 'inference')),
    ADD CONSTRAINT api_keys_limited_keys_are_restricted
        CHECK (scope = 'inference' OR (rpm IS NULL AND spend_cap IS NULL));

-- Sign-in identities are (issuer, subject): the same `sub` from two identity providers is two
-- people. Rows provisioned before this migration have external_iss NULL and are adopted by the
-- first verified token with their `sub` (identity.user_for_identity).
ALTER TABLE users ADD COLUMN external_iss text;
ALTER TABLE users DROP CONSTRAINT users_external_sub_key;
CREATE UNIQUE INDEX users_external_identity_key ON users (external_iss, external_sub)
    WHERE external_iss IS NOT NULL;
CREATE UNIQUE INDEX users_legacy_external_sub_key ON users (external_sub)
    WHERE external_iss IS NULL AND external_sub IS NOT NULL;

-- One JWT welcome credit per (normalised) email address: the SHA-256 of the normalised address,
-- inserted in the provisioning statement; a conflict means "not new to us", no credit. Kept when
-- the user is deleted, so deleting and signing up again does not grant a second credit.
CREATE TABLE welcome_grants (
    email_hash bytea PRIMARY KEY CHECK (octet_length(email_hash) = 32),
    user_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    granted_at timestamptz NOT NULL DEFAULT now()
);
