-- Models catalogue (issue 5): discovery columns on model_pricing, the price history that keeps
-- past usage explainable, and the bookkeeping of discovery runs and sources.
--
-- Prices stay NUMERIC(30,18) USD per token (exact). The *_price columns hold what we are billed
-- per token AFTER the provider's `discount` and at the most expensive context-length tier the
-- model can reach (never under-charge); the listed prices as received are kept in list_pricing
-- and the tiers themselves in price_tiers.

ALTER TABLE model_pricing
    ADD COLUMN web_search_price         numeric(30, 18) CHECK (web_search_price >= 0),
    ADD COLUMN internal_reasoning_price numeric(30, 18) CHECK (internal_reasoning_price >= 0),
    ADD COLUMN pricing_extra            jsonb,           -- other per-unit prices {"audio": "0.00004", ...}
    ADD COLUMN discount                 numeric(12, 10), -- provider discount applied to the list prices
    ADD COLUMN price_tiers              jsonb,           -- [{"min_prompt_tokens": 200000, "prompt": "...", ...}]
    ADD COLUMN list_pricing             jsonb,           -- the pricing object exactly as the source sent it
    ADD COLUMN openrouter_id            text,
    ADD COLUMN canonical_slug           text,
    ADD COLUMN description              text,
    ADD COLUMN architecture             jsonb,           -- {"modality", "input_modalities", "output_modalities", "tokenizer", ...}
    ADD COLUMN supported_parameters     text[],
    ADD COLUMN upstream_created_at      timestamptz,     -- the source's `created`
    ADD COLUMN seen_in                  text[] NOT NULL DEFAULT ARRAY[]::text[],  -- sources that listed it last run
    ADD COLUMN last_seen_at             timestamptz,
    ADD COLUMN deactivated_at           timestamptz,
    ADD COLUMN deactivated_reason       text,            -- 'vanished' (discovery may reactivate) or anything else
    ADD COLUMN price_changed_at         timestamptz;

UPDATE model_pricing SET price_changed_at = created_at WHERE price_changed_at IS NULL;
ALTER TABLE model_pricing
    ALTER COLUMN price_changed_at SET DEFAULT now(),
    ALTER COLUMN price_changed_at SET NOT NULL,
    ADD CONSTRAINT model_pricing_discount_check CHECK (discount IS NULL OR discount <= 1);

-- One row per superseded price: the old prices and the interval they were in force.
-- Models are never deleted, but history outlives them anyway (no foreign key).
CREATE TABLE model_price_history (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id                 text NOT NULL,
    prompt_price             numeric(30, 18) NOT NULL,
    completion_price         numeric(30, 18) NOT NULL,
    request_price            numeric(30, 18) NOT NULL,
    input_cache_read_price   numeric(30, 18),
    input_cache_write_price  numeric(30, 18),
    image_price              numeric(30, 18),
    web_search_price         numeric(30, 18),
    internal_reasoning_price numeric(30, 18),
    pricing_extra            jsonb,
    discount                 numeric(12, 10),
    price_tiers              jsonb,
    valid_from               timestamptz NOT NULL,
    valid_to                 timestamptz NOT NULL DEFAULT now(),
    changed_by               text NOT NULL
);
CREATE INDEX model_price_history_model_idx ON model_price_history (model_id, valid_to DESC);

-- Any change of a price column (discovery, the ops CLI or hand-written SQL) archives the old
-- prices. Writers may say who they are with SET LOCAL mlp.price_change_source = '...'.
CREATE FUNCTION model_pricing_archive_price() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO model_price_history (model_id, prompt_price, completion_price, request_price,
                                     input_cache_read_price, input_cache_write_price, image_price,
                                     web_search_price, internal_reasoning_price, pricing_extra, discount,
                                     price_tiers, valid_from, valid_to, changed_by)
    VALUES (OLD.id, OLD.prompt_price, OLD.completion_price, OLD.request_price, OLD.input_cache_read_price,
            OLD.input_cache_write_price, OLD.image_price, OLD.web_search_price, OLD.internal_reasoning_price,
            OLD.pricing_extra, OLD.discount, OLD.price_tiers, OLD.price_changed_at, now(),
            coalesce(nullif(current_setting('mlp.price_change_source', true), ''), 'sql'));
    NEW.price_changed_at := now();
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER model_pricing_price_history
    BEFORE UPDATE ON model_pricing
    FOR EACH ROW
    WHEN ((OLD.prompt_price, OLD.completion_price, OLD.request_price, OLD.input_cache_read_price,
           OLD.input_cache_write_price, OLD.image_price, OLD.web_search_price, OLD.internal_reasoning_price,
           OLD.pricing_extra, OLD.discount, OLD.price_tiers)
          IS DISTINCT FROM
          (NEW.prompt_price, NEW.completion_price, NEW.request_price, NEW.input_cache_read_price,
           NEW.input_cache_write_price, NEW.image_price, NEW.web_search_price, NEW.internal_reasoning_price,
           NEW.pricing_extra, NEW.discount, NEW.price_tiers))
    EXECUTE FUNCTION model_pricing_archive_price();

-- One row per discovery run (scheduled warm, ops CLI, ?refresh=true).
CREATE TABLE catalog_syncs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger       text NOT NULL,              -- schedule | cli | api | ...
    trigger_id    text,                       -- schedule ARN + scheduled time: duplicate deliveries run once
    status        text NOT NULL CHECK (status IN ('running', 'ok', 'partial', 'failed')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    sources       jsonb NOT NULL DEFAULT '{}'::jsonb,
    added         integer NOT NULL DEFAULT 0,
    updated       integer NOT NULL DEFAULT 0,
    price_changed integer NOT NULL DEFAULT 0,
    deactivated   integer NOT NULL DEFAULT 0,
    reactivated   integer NOT NULL DEFAULT 0,
    skipped       integer NOT NULL DEFAULT 0,
    error         text
);
CREATE INDEX catalog_syncs_trigger_id_idx ON catalog_syncs (trigger_id) WHERE trigger_id IS NOT NULL;
CREATE INDEX catalog_syncs_started_at_idx ON catalog_syncs (started_at DESC);

-- Per source: the last good fetch (its size guards against a truncated answer) and failures.
CREATE TABLE catalog_sources (
    source               text PRIMARY KEY,      -- openrouter | openai | anthropic | gemini
    last_attempt_at      timestamptz,
    last_success_at      timestamptz,
    last_count           integer,
    last_error           text,
    last_error_at        timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0
);
