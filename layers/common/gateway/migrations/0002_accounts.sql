-- Account: sign-in identities (JWT `sub`), per-key limits, bring-your-own provider keys.
--
-- Per-key spend cap: `spend_cap` is a lifetime limit of credit the key may spend (NULL = none).
-- Only capped keys are metered on the hot path: the reserve statement adds the hold to
-- `reserved` (and refuses when spent + reserved + hold > spend_cap), settle moves it into
-- `spent`; both lock the key row before the user's balance row, so the check is atomic and
-- the lock order is the same everywhere (no deadlocks).

ALTER TABLE users ADD COLUMN external_sub text;
ALTER TABLE users ADD CONSTRAINT users_external_sub_key UNIQUE (external_sub);

ALTER TABLE api_keys
    ADD COLUMN rpm       integer        CHECK (rpm IS NULL OR rpm > 0),
    ADD COLUMN spend_cap numeric(20, 8) CHECK (spend_cap IS NULL OR spend_cap >= 0),
    ADD COLUMN spent     numeric(20, 8) NOT NULL DEFAULT 0,                       -- settled charges (capped keys)
    ADD COLUMN reserved  numeric(20, 8) NOT NULL DEFAULT 0 CHECK (reserved >= 0); -- open holds (capped keys)

-- A user's keys, newest first (GET /v1/keys) and the active-key count on creation.
CREATE INDEX api_keys_user_created_idx ON api_keys (user_id, created_at DESC);

-- BYOK provider keys: AES-256-GCM ciphertext (tag included) under the master key `key_version`;
-- the associated data binds each ciphertext to its user and provider. Only `last4` is ever shown.
CREATE TABLE provider_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider    text NOT NULL,
    ciphertext  bytea NOT NULL,
    nonce       bytea NOT NULL CHECK (octet_length(nonce) = 12),
    key_version text NOT NULL,
    last4       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provider_keys_user_provider_key UNIQUE (user_id, provider)
);
-- Master-key rotation finds the rows still under an old version.
CREATE INDEX provider_keys_key_version_idx ON provider_keys (key_version);

-- GET /v1/usage?api_key_id=… and per-key summaries.
CREATE INDEX usage_records_api_key_created_idx ON usage_records (api_key_id, created_at DESC)
    WHERE api_key_id IS NOT NULL;
