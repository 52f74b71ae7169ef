-- Foundation schema: users, API keys, the credit ledger with cached balances and open
-- reservations, usage records, model prices, subscriptions and Stripe events.
-- Money: NUMERIC everywhere. Amounts of credit are NUMERIC(20,8) (USD, 1e-8 resolution);
-- per-token prices and provider costs keep full precision (NUMERIC(30,18)).

CREATE TABLE users (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email              text,
    tier               text NOT NULL DEFAULT 'free',
    stripe_customer_id text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX users_stripe_customer_key ON users (stripe_customer_id) WHERE stripe_customer_id IS NOT NULL;

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key_hash     text NOT NULL,            -- hex SHA-256 of the whole key; the key itself is never stored
    prefix       text NOT NULL,            -- visible part, e.g. "sk-mlp-AbC1"
    name         text NOT NULL DEFAULT 'default',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX api_keys_key_hash_key ON api_keys (key_hash);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

-- One row per user: balance = sum(ledger_entries.amount); reserved = sum(open reservations).
-- The monthly request quota counter lives here too so the reserve statement checks it atomically.
CREATE TABLE balances (
    user_id         uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance         numeric(20, 8) NOT NULL DEFAULT 0,
    reserved        numeric(20, 8) NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    period_start    date NOT NULL DEFAULT date_trunc('month', now() AT TIME ZONE 'UTC')::date,
    period_requests integer NOT NULL DEFAULT 0 CHECK (period_requests >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_entries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amount      numeric(20, 8) NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('grant', 'purchase', 'usage', 'refund', 'adjustment',
                                               'subscription_credit', 'welcome')),
    reference   text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ledger_entries_reference_key ON ledger_entries (reference);
CREATE INDEX ledger_entries_user_id_idx ON ledger_entries (user_id, created_at);

-- Credit held for in-flight requests (one row per request id).
CREATE TABLE reservations (
    request_id text PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    api_key_id uuid,
    model      text NOT NULL DEFAULT '',
    amount     numeric(20, 8) NOT NULL CHECK (amount >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_user_id_idx ON reservations (user_id);
CREATE INDEX reservations_created_at_idx ON reservations (created_at);

CREATE TABLE usage_records (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id        text NOT NULL,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    api_key_id        uuid,
    model_requested   text NOT NULL,
    model_served      text,
    provider          text,
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    cached_tokens     integer NOT NULL DEFAULT 0,
    prompt_price      numeric(30, 18) NOT NULL DEFAULT 0,   -- USD per token used for this record
    completion_price  numeric(30, 18) NOT NULL DEFAULT 0,
    cache_read_price  numeric(30, 18),
    request_price     numeric(30, 18) NOT NULL DEFAULT 0,
    markup            numeric(10, 6) NOT NULL DEFAULT 0,
    byok              boolean NOT NULL DEFAULT false,
    provider_cost     numeric(30, 18) NOT NULL DEFAULT 0,
    charge            numeric(20, 8) NOT NULL DEFAULT 0,
    hold              numeric(20, 8) NOT NULL DEFAULT 0,
    latency_ms        integer,
    ttfb_ms           integer,
    status            text NOT NULL,           -- ok | failed | partial | cancelled
    error_code        text,
    estimated         boolean NOT NULL DEFAULT false,
    stream            boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX usage_records_request_id_key ON usage_records (request_id);
CREATE INDEX usage_records_user_created_idx ON usage_records (user_id, created_at DESC);

CREATE TABLE model_pricing (
    id                      text PRIMARY KEY,         -- "provider/model", OpenRouter style
    name                    text NOT NULL,
    provider                text NOT NULL,            -- route: openai | anthropic | gemini | openrouter | compat
    upstream_model          text NOT NULL,            -- the provider's own model name
    owned_by                text NOT NULL,
    context_length          integer NOT NULL,
    max_completion_tokens   integer NOT NULL,
    prompt_price            numeric(30, 18) NOT NULL CHECK (prompt_price >= 0),
    completion_price        numeric(30, 18) NOT NULL CHECK (completion_price >= 0),
    request_price           numeric(30, 18) NOT NULL DEFAULT 0 CHECK (request_price >= 0),
    input_cache_read_price  numeric(30, 18),
    input_cache_write_price numeric(30, 18),
    image_price             numeric(30, 18),
    input_modalities        text[] NOT NULL DEFAULT ARRAY['text'],
    output_modalities       text[] NOT NULL DEFAULT ARRAY['text'],
    is_free                 boolean NOT NULL DEFAULT false,
    markup                  numeric(10, 6),           -- per-model override of the tier markup
    active                  boolean NOT NULL DEFAULT true,
    source                  text NOT NULL DEFAULT 'seed',
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_pricing_provider_idx ON model_pricing (provider) WHERE active;

CREATE TABLE subscriptions (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stripe_subscription_id text NOT NULL,
    stripe_customer_id     text,
    tier                   text NOT NULL,
    status                 text NOT NULL,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    last_event_created     bigint NOT NULL DEFAULT 0,   -- Stripe event.created of the state stored
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX subscriptions_stripe_id_key ON subscriptions (stripe_subscription_id);
CREATE INDEX subscriptions_user_id_idx ON subscriptions (user_id);

CREATE TABLE stripe_events (
    id           text PRIMARY KEY,     -- Stripe event id: redeliveries are no-ops
    type         text NOT NULL,
    created      bigint NOT NULL,
    outcome      text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Seed prices: USD per token at the providers' public list prices (per 1M tokens / 1e6).
INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length, max_completion_tokens,
                           prompt_price, completion_price, input_cache_read_price, input_modalities, is_free) VALUES
 ('openai/gpt-4o',                 'OpenAI: GPT-4o',            'openai',    'gpt-4o',                    'openai',    128000, 16384, 0.0000025,  0.00001,    0.00000125,  ARRAY['text','image'], false),
 ('openai/gpt-4o-mini',            'OpenAI: GPT-4o-mini',       'openai',    'gpt-4o-mini',               'openai',    128000, 16384, 0.00000015, 0.0000006,  0.000000075, ARRAY['text','image'], false),
 ('openai/gpt-4.1',                'OpenAI: GPT-4.1',           'openai',    'gpt-4.1',                   'openai',   1047576, 32768, 0.000002,   0.000008,   0.0000005,   ARRAY['text','image'], false),
 ('openai/gpt-4.1-mini',           'OpenAI: GPT-4.1 Mini',      'openai',    'gpt-4.1-mini',              'openai',   1047576, 32768, 0.0000004,  0.0000016,  0.0000001,   ARRAY['text','image'], false),
 ('openai/gpt-4.1-nano',           'OpenAI: GPT-4.1 Nano',      'openai',    'gpt-4.1-nano',              'openai',   1047576, 32768, 0.0000001,  0.0000004,  0.000000025, ARRAY['text','image'], false),
 ('openai/o3-mini',                'OpenAI: o3 Mini',           'openai',    'o3-mini',                   'openai',    200000, 100000, 0.0000011, 0.0000044,  0.00000055,  ARRAY['text'], false),
 ('openai/o4-mini',                'OpenAI: o4 Mini',           'openai',    'o4-mini',                   'openai',    200000, 100000, 0.0000011, 0.0000044,  0.000000275, ARRAY['text','image'], false),
 ('anthropic/claude-opus-4',       'Anthropic: Claude Opus 4',  'anthropic', 'claude-opus-4-20250514',    'anthropic', 200000, 32000, 0.000015,   0.000075,   0.0000015,   ARRAY['text','image'], false),
 ('anthropic/claude-sonnet-4',     'Anthropic: Claude Sonnet 4','anthropic', 'claude-sonnet-4-20250514',  'anthropic', 200000, 64000, 0.000003,   0.000015,   0.0000003,   ARRAY['text','image'], false),
 ('anthropic/claude-3.7-sonnet',   'Anthropic: Claude 3.7 Sonnet','anthropic','claude-3-7-sonnet-20250219','anthropic', 200000, 64000, 0.000003,   0.000015,   0.0000003,   ARRAY['text','image'], false),
 ('anthropic/claude-3.5-haiku',    'Anthropic: Claude 3.5 Haiku','anthropic','claude-3-5-haiku-20241022', 'anthropic', 200000, 8192,  0.0000008,  0.000004,   0.00000008,  ARRAY['text','image'], false),
 ('google/gemini-2.5-pro',         'Google: Gemini 2.5 Pro',    'gemini',    'gemini-2.5-pro',            'google',   1048576, 65536, 0.00000125, 0.00001,    0.00000031,  ARRAY['text','image'], false),
 ('google/gemini-2.5-flash',       'Google: Gemini 2.5 Flash',  'gemini',    'gemini-2.5-flash',          'google',   1048576, 65536, 0.0000003,  0.0000025,  0.000000075, ARRAY['text','image'], false),
 ('google/gemini-2.5-flash-lite',  'Google: Gemini 2.5 Flash Lite','gemini', 'gemini-2.5-flash-lite',     'google',   1048576, 65536, 0.0000001,  0.0000004,  0.000000025, ARRAY['text','image'], false),
 ('google/gemini-2.0-flash-001',   'Google: Gemini 2.0 Flash',  'gemini',    'gemini-2.0-flash-001',      'google',   1048576, 8192,  0.0000001,  0.0000004,  0.000000025, ARRAY['text','image'], false),
 ('meta-llama/llama-3.3-70b-instruct','Meta: Llama 3.3 70B Instruct','openrouter','meta-llama/llama-3.3-70b-instruct','meta-llama',131072,16384,0.00000013,0.0000004,NULL,ARRAY['text'], false),
 ('meta-llama/llama-3.1-8b-instruct','Meta: Llama 3.1 8B Instruct','openrouter','meta-llama/llama-3.1-8b-instruct','meta-llama',131072,16384,0.00000002,0.00000003,NULL,ARRAY['text'], false),
 ('meta-llama/llama-4-maverick',   'Meta: Llama 4 Maverick',    'openrouter','meta-llama/llama-4-maverick','meta-llama',1048576,16384,0.00000015,0.0000006, NULL,        ARRAY['text','image'], false),
 ('meta-llama/llama-3.3-70b-instruct:free','Meta: Llama 3.3 70B Instruct (free)','openrouter','meta-llama/llama-3.3-70b-instruct:free','meta-llama',65536,8192,0,0,NULL,ARRAY['text'], true),
 ('mistralai/mistral-large',       'Mistral: Mistral Large',    'openrouter','mistralai/mistral-large',   'mistralai', 128000, 32768, 0.000002,   0.000006,   NULL,        ARRAY['text'], false),
 ('mistralai/mistral-small-3.1-24b-instruct','Mistral: Mistral Small 3.1 24B','openrouter','mistralai/mistral-small-3.1-24b-instruct','mistralai',128000,32768,0.0000001,0.0000003,NULL,ARRAY['text','image'], false),
 ('mistralai/mistral-nemo',        'Mistral: Mistral Nemo',     'openrouter','mistralai/mistral-nemo',    'mistralai', 131072, 16384, 0.00000002, 0.00000004, NULL,        ARRAY['text'], false),
 ('mistralai/codestral-2501',      'Mistral: Codestral 2501',   'openrouter','mistralai/codestral-2501',  'mistralai', 262144, 32768, 0.0000003,  0.0000009,  NULL,        ARRAY['text'], false),
 ('deepseek/deepseek-chat',        'DeepSeek: DeepSeek V3',     'openrouter','deepseek/deepseek-chat',    'deepseek',  131072, 16384, 0.00000027, 0.0000011,  0.00000007,  ARRAY['text'], false),
 ('deepseek/deepseek-r1',          'DeepSeek: R1',              'openrouter','deepseek/deepseek-r1',      'deepseek',  163840, 32768, 0.00000055, 0.00000219, 0.00000014,  ARRAY['text'], false),
 ('deepseek/deepseek-chat-v3-0324:free','DeepSeek: DeepSeek V3 0324 (free)','openrouter','deepseek/deepseek-chat-v3-0324:free','deepseek',163840,16384,0,0,NULL,ARRAY['text'], true);
