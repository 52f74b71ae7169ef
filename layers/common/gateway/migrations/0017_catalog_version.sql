-- catalog_version: one number that changes with every write to what the query path reads of
-- model_pricing (issue 15; BENCHMARKS.md "sixteenth pass").
--
-- A warm container trusts its copy of the active models (gateway/catalog/registry.py) for
-- CATALOG_TTL_S seconds. It then re-read every active model and rebuilt them, inside a request:
-- with a discovered catalogue of ~530 models, ~8 ms to fetch and convert the rows and ~6 ms to
-- build them here, once a minute in every warm container and in every cold start. Now the expired
-- copy first reads this number (one row) and keeps the models while it has not changed.
--
-- The number is bumped by a statement-level trigger, in the writer's own transaction, for every
-- statement that inserts or deletes rows of model_pricing, truncates it, or sets one of the
-- columns registry.SELECT_ACTIVE reads or filters on (tests/integration/test_catalog_registry.py
-- compares the trigger's columns with that statement's). A reader sees the new number exactly when
-- it sees the rows that bumped it, so a copy is never kept past a change it has not loaded. Other
-- writes (discovery's last_seen_at and seen_in, every 30 minutes) do not bump it. A statement
-- that changes no row still bumps it: one full reload too many, never one too few.

CREATE TABLE catalog_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO catalog_version (singleton, version) VALUES (true, 1);

CREATE FUNCTION catalog_version_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER model_pricing_catalog_version
    AFTER INSERT OR DELETE OR TRUNCATE
       OR UPDATE OF id, name, provider, upstream_model, owned_by, context_length, max_completion_tokens,
                    prompt_price, completion_price, request_price, input_cache_read_price,
                    input_cache_write_price, image_price, is_free, markup, input_modalities,
                    output_modalities, pricing_extra, price_tiers, active
    ON model_pricing
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_version_bump();
