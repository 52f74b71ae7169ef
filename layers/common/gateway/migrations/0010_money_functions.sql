-- The two hot money statements as PL/pgSQL functions (issue 15, docs/money.md "The statements").
--
-- Through a transaction-mode pooler (Neon -pooler, Supabase 6543, PgBouncer) the gateway uses no
-- server-side prepared statements, so Postgres parsed and PLANNED the reserve and settle
-- statements on every request: about half their database time. A PL/pgSQL function caches the
-- plans of its statements per server backend, which survives any pooler (no client-named
-- prepared statement is involved): ``SELECT ... FROM mlp_reserve(...)`` / ``mlp_settle(...)``
-- plan only a one-line call. The statements inside are exactly the ones the gateway sent before
-- (same locking order: the capped key's row, then the balance row; same idempotency by the
-- reservation's request id), so each money movement is still ONE atomic statement.
--
-- * Plans: ``plan_cache_mode = force_generic_plan`` (every statement here is a primary-key or
--   unique-index lookup, which a generic plan does as well as a custom one; "auto" would plan the
--   first five calls of every backend and could flip back to planning every call).
-- * Every relation is schema-qualified (public, where every migration creates them), so the
--   caller's search_path does not matter (built-in functions and operators resolve in pg_catalog,
--   which is searched first unless a search_path names it later). Not a ``SET search_path``
--   clause: measured, it cost 0.1-0.3 ms per reserve+settle pair (BENCHMARKS.md, issue 15 fifth
--   pass), a good part of what the functions save.
-- * mlp_settle takes the usage record as jsonb (``ledger.RECORD_COLUMNS``, Decimals as JSON
--   strings: numeric end to end, never a float) and types it with jsonb_populate_record on
--   usage_records. A record whose keys are not exactly the columns written here is refused
--   (SQLSTATE 22023), so a field added to ``ledger.UsageRecord`` can never be dropped silently: a
--   new usage_records column comes with a migration that replaces mlp_settle
--   (tests/integration/test_ledger_functions.py fails until it does).

CREATE FUNCTION mlp_reserve(p_user_id uuid, p_request_id text, p_hold numeric, p_period date, p_quotas jsonb,
                            p_default_quota integer, p_api_key_id uuid, p_model text, p_max_in_flight integer)
RETURNS TABLE (request_id text, tier text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH kl AS MATERIALIZED (
        SELECT id, spend_cap - spent - reserved AS headroom FROM public.api_keys
        WHERE id = p_api_key_id AND user_id = p_user_id AND spend_cap IS NOT NULL
        FOR UPDATE
    ), q AS (
        SELECT u.id AS user_id, u.tier,
               COALESCE((p_quotas ->> u.tier)::integer, p_default_quota) AS quota
        FROM public.users u WHERE u.id = p_user_id
          -- an open Stripe dispute blocks new reservations until it closes (docs/billing.md)
          AND NOT EXISTS (SELECT 1 FROM public.stripe_disputes d WHERE d.user_id = u.id AND NOT d.closed)
    ), b AS (
        UPDATE public.balances SET
            reserved = reserved + p_hold,
            in_flight = in_flight + 1,
            period_requests = CASE WHEN period_start < p_period THEN 1 ELSE period_requests + 1 END,
            period_start = GREATEST(period_start, p_period),
            updated_at = now()
        FROM q LEFT JOIN kl ON true
        WHERE balances.user_id = q.user_id
          AND balances.balance - balances.reserved >= p_hold
          AND (kl.id IS NULL OR kl.headroom >= p_hold)
          AND (p_max_in_flight IS NULL OR balances.in_flight < p_max_in_flight)
          AND (q.quota < 0
               OR (CASE WHEN balances.period_start < p_period THEN 0 ELSE balances.period_requests END) < q.quota)
        RETURNING balances.user_id, q.tier, kl.id AS capped_key_id
    ), k AS (
        UPDATE public.api_keys SET reserved = api_keys.reserved + p_hold FROM b WHERE api_keys.id = b.capped_key_id
    ), r AS (
        INSERT INTO public.reservations (request_id, user_id, api_key_id, model, amount)
        SELECT p_request_id, b.user_id, p_api_key_id, p_model, p_hold FROM b
        RETURNING reservations.request_id
    )
    SELECT r.request_id, b.tier FROM r, b;
END
$fn$;


CREATE FUNCTION mlp_settle(p_record jsonb, p_period date, p_uncount boolean, p_description text)
RETURNS TABLE (balance numeric, reserved numeric, hold numeric, ledger_rows bigint)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    x public.usage_records;
BEGIN
    -- exactly the columns written below (ledger.RECORD_COLUMNS): never drop a field silently
    IF NOT (p_record ?& ARRAY[
            'prompt_tokens', 'completion_tokens', 'cached_tokens', 'cache_write_tokens', 'cache_write_1h_tokens',
            'audio_tokens', 'request_id', 'model_requested', 'status', 'api_key_id', 'model_served', 'provider',
            'prompt_price', 'completion_price', 'cache_read_price', 'cache_write_price', 'cache_write_1h_price',
            'audio_price', 'request_price', 'markup', 'byok', 'provider_cost', 'reported_cost', 'charge',
            'latency_ms', 'ttfb_ms', 'error_code', 'estimated', 'stream'])
       OR (p_record - ARRAY[
            'prompt_tokens', 'completion_tokens', 'cached_tokens', 'cache_write_tokens', 'cache_write_1h_tokens',
            'audio_tokens', 'request_id', 'model_requested', 'status', 'api_key_id', 'model_served', 'provider',
            'prompt_price', 'completion_price', 'cache_read_price', 'cache_write_price', 'cache_write_1h_price',
            'audio_price', 'request_price', 'markup', 'byok', 'provider_cost', 'reported_cost', 'charge',
            'latency_ms', 'ttfb_ms', 'error_code', 'estimated', 'stream']) <> '{}'::jsonb THEN
        RAISE EXCEPTION 'mlp_settle: the usage record''s fields are not the columns it writes (a migration must '
                        'replace mlp_settle when usage_records gains a column)'
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'fields: ' || (
                SELECT string_agg(key, ', ' ORDER BY key) FROM jsonb_object_keys(p_record) AS key);
    END IF;
    x := jsonb_populate_record(NULL::public.usage_records, p_record);
    RETURN QUERY
    WITH r AS (
        DELETE FROM public.reservations WHERE request_id = x.request_id RETURNING user_id, amount, api_key_id
    ), k AS (
        -- a capped key: the hold leaves its ``reserved``, the charge joins its ``spent`` (key row first)
        UPDATE public.api_keys SET reserved = GREATEST(api_keys.reserved - r.amount, 0), spent = api_keys.spent + x.charge
        FROM r WHERE api_keys.id = r.api_key_id AND api_keys.user_id = r.user_id AND api_keys.spend_cap IS NOT NULL
        RETURNING api_keys.id
    ), b AS (
        UPDATE public.balances SET
            balance = balances.balance - x.charge,
            reserved = balances.reserved - r.amount,
            in_flight = GREATEST(balances.in_flight - 1, 0),
            period_requests = CASE WHEN p_uncount AND balances.period_start = p_period
                                   THEN GREATEST(balances.period_requests - 1, 0) ELSE balances.period_requests END,
            updated_at = now()
        FROM r LEFT JOIN k ON true WHERE balances.user_id = r.user_id
        RETURNING balances.balance, balances.reserved, r.amount AS hold
    ), l AS (
        INSERT INTO public.ledger_entries (user_id, amount, kind, reference, description)
        SELECT r.user_id, -x.charge, 'usage', x.request_id, p_description FROM r
        WHERE x.charge > 0
        RETURNING ledger_entries.id
    ), u AS (
        INSERT INTO public.usage_records (user_id, hold,
            prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, cache_write_1h_tokens,
            audio_tokens, request_id, model_requested, status, api_key_id, model_served, provider,
            prompt_price, completion_price, cache_read_price, cache_write_price, cache_write_1h_price,
            audio_price, request_price, markup, byok, provider_cost, reported_cost, charge,
            latency_ms, ttfb_ms, error_code, estimated, stream)
        SELECT r.user_id, r.amount,
            x.prompt_tokens, x.completion_tokens, x.cached_tokens, x.cache_write_tokens, x.cache_write_1h_tokens,
            x.audio_tokens, x.request_id, x.model_requested, x.status, x.api_key_id, x.model_served, x.provider,
            x.prompt_price, x.completion_price, x.cache_read_price, x.cache_write_price, x.cache_write_1h_price,
            x.audio_price, x.request_price, x.markup, x.byok, x.provider_cost, x.reported_cost, x.charge,
            x.latency_ms, x.ttfb_ms, x.error_code, x.estimated, x.stream
        FROM r
        RETURNING usage_records.id
    )
    SELECT b.balance, b.reserved, b.hold, (SELECT count(*) FROM l) FROM b;
END
$fn$;
