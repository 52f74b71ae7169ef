-- Prompt-cache writes are billed at the model's cache-write price (Anthropic: 1.25 x the prompt
-- price for the 5-minute cache), not at the plain prompt price. Each usage record keeps the
-- tokens and the unit price it was charged with, so its charge still recomputes from its own row.
ALTER TABLE usage_records
    ADD COLUMN cache_write_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_price  numeric(30, 18);

-- The seeded Anthropic models' public cache-write prices (discovery keeps them current).
UPDATE model_pricing SET input_cache_write_price = prompt_price * 1.25, updated_at = now()
WHERE provider = 'anthropic' AND input_cache_write_price IS NULL;
