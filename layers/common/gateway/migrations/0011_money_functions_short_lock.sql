-- The money functions with the balance row locked last (issue 15, sixth pass; BENCHMARKS.md lever 30).
--
-- Every request writes its user's ``balances`` row twice (mlp_reserve, mlp_settle). A row lock is
-- held until the transaction's commit record is flushed, and the same user's other requests queue
-- on it. Migration 0010's functions were each ONE data-modifying statement that updated the
-- balance row before their inserts: mlp_settle held the lock through the ledger entry, the usage
-- record (a wide row, four indexes) and, at the end of the statement, the foreign-key checks of
-- both; mlp_reserve through the reservation's insert and its foreign-key check. Here each function
-- is a short sequence of statements in ONE transaction (the caller's autocommitted call), so
-- nothing changes for atomicity, and the balance row is the last row written:
--
-- * mlp_settle: take the reservation (DELETE ... RETURNING: its row lock makes a duplicate or
--   retried settle wait, then find nothing and change nothing), release the capped key's hold
--   (key row), write the ledger entry and the usage record (their FK checks run at the end of each
--   statement), and only then update the balance. Same locking order as before and as
--   mlp_reserve / ledger.cancel: reservation, key, balance.
-- * mlp_reserve: lock the capped key (FOR UPDATE, first, as before) and check its headroom; read
--   the user's tier, dispute and balance (no lock: a pre-check that refuses without writing or
--   waiting when the committed state already refuses); insert the reservation; then the balance
--   UPDATE, whose WHERE repeats every check on the latest row version under its lock: it alone
--   decides, so the hold check stays atomic. When it refuses (a concurrent request took the room
--   between the pre-check and the lock), the reservation is deleted again and the call returns no
--   row, as before. The capped key's ``reserved`` is updated after the balance (the key row is
--   already ours: nothing waits on it there that would not have waited on its FOR UPDATE).
-- * Lock order everywhere: (reservation,) capped key, then balance. A users row is only read or
--   KEY SHARE locked by the FK checks, now before the balance row, which is the order of anything
--   that locks both (deleting a user cascades users -> balances).
-- * Signatures, result columns and their types are unchanged (``db.call`` prepares
--   ``SELECT ... FROM mlp_reserve/mlp_settle(...)`` per connection); CREATE OR REPLACE keeps the
--   functions' identity. Same options as 0010: generic plans, every relation schema-qualified.

CREATE OR REPLACE FUNCTION mlp_reserve(p_user_id uuid, p_request_id text, p_hold numeric, p_period date,
                                       p_quotas jsonb, p_default_quota integer, p_api_key_id uuid, p_model text,
                                       p_max_in_flight integer)
RETURNS TABLE (request_id text, tier text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_key uuid;
    v_headroom numeric;
    v_tier text;
    v_quota integer;
    v_room boolean;
BEGIN
    IF p_api_key_id IS NOT NULL THEN
        -- a capped key's row first (its latest committed state), as settle and cancel lock it
        SELECT k.id, k.spend_cap - k.spent - k.reserved INTO v_key, v_headroom FROM public.api_keys k
        WHERE k.id = p_api_key_id AND k.user_id = p_user_id AND k.spend_cap IS NOT NULL
        FOR UPDATE;
        IF v_key IS NOT NULL AND v_headroom < p_hold THEN
            RETURN;
        END IF;
    END IF;
    -- the tier (fresh), an open Stripe dispute (blocks new reservations: docs/billing.md), and a
    -- pre-check of the balance row without its lock (the UPDATE below decides)
    SELECT u.tier, COALESCE((p_quotas ->> u.tier)::integer, p_default_quota),
           b.balance - b.reserved >= p_hold
           AND (p_max_in_flight IS NULL OR b.in_flight < p_max_in_flight)
           AND (COALESCE((p_quotas ->> u.tier)::integer, p_default_quota) < 0
                OR (CASE WHEN b.period_start < p_period THEN 0 ELSE b.period_requests END)
                   < COALESCE((p_quotas ->> u.tier)::integer, p_default_quota))
      INTO v_tier, v_quota, v_room
    FROM public.users u JOIN public.balances b ON b.user_id = u.id
    WHERE u.id = p_user_id
      AND NOT EXISTS (SELECT 1 FROM public.stripe_disputes d WHERE d.user_id = u.id AND NOT d.closed);
    IF NOT FOUND OR v_room IS NOT TRUE THEN
        RETURN;
    END IF;
    INSERT INTO public.reservations (request_id, user_id, api_key_id, model, amount)
    VALUES (p_request_id, p_user_id, p_api_key_id, p_model, p_hold);
    UPDATE public.balances SET
        reserved = balances.reserved + p_hold,
        in_flight = balances.in_flight + 1,
        period_requests = CASE WHEN balances.period_start < p_period THEN 1 ELSE balances.period_requests + 1 END,
        period_start = GREATEST(balances.period_start, p_period),
        updated_at = now()
    WHERE balances.user_id = p_user_id
      AND balances.balance - balances.reserved >= p_hold
      AND (p_max_in_flight IS NULL OR balances.in_flight < p_max_in_flight)
      AND (v_quota < 0
           OR (CASE WHEN balances.period_start < p_period THEN 0 ELSE balances.period_requests END) < v_quota);
    IF NOT FOUND THEN
        -- refused under the lock: undo the reservation (this transaction's own row, never seen)
        DELETE FROM public.reservations WHERE request_id = p_request_id;
        RETURN;
    END IF;
    IF v_key IS NOT NULL THEN
        UPDATE public.api_keys SET reserved = api_keys.reserved + p_hold WHERE api_keys.id = v_key;
    END IF;
    request_id := p_request_id;
    tier := v_tier;
    RETURN NEXT;
END
$fn$;


CREATE OR REPLACE FUNCTION mlp_settle(p_record jsonb, p_period date, p_uncount boolean, p_description text)
RETURNS TABLE (balance numeric, reserved numeric, hold numeric, ledger_rows bigint)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    x public.usage_records;
    v_user uuid;
    v_amount numeric;
    v_key uuid;
    v_ledger_rows bigint := 0;
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
    -- the reservation: none (settled, released, cancelled, or a concurrent settle of it that
    -- committed while this one waited on its row) is a no-op
    DELETE FROM public.reservations r WHERE r.request_id = x.request_id
    RETURNING r.user_id, r.amount, r.api_key_id INTO v_user, v_amount, v_key;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_key IS NOT NULL THEN
        -- a capped key: the hold leaves its ``reserved``, the charge joins its ``spent`` (key row first)
        UPDATE public.api_keys SET reserved = GREATEST(api_keys.reserved - v_amount, 0),
                                   spent = api_keys.spent + x.charge
        WHERE api_keys.id = v_key AND api_keys.user_id = v_user AND api_keys.spend_cap IS NOT NULL;
    END IF;
    IF x.charge > 0 THEN
        INSERT INTO public.ledger_entries (user_id, amount, kind, reference, description)
        VALUES (v_user, -x.charge, 'usage', x.request_id, p_description);
        v_ledger_rows := 1;
    END IF;
    INSERT INTO public.usage_records (user_id, hold,
        prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, cache_write_1h_tokens,
        audio_tokens, request_id, model_requested, status, api_key_id, model_served, provider,
        prompt_price, completion_price, cache_read_price, cache_write_price, cache_write_1h_price,
        audio_price, request_price, markup, byok, provider_cost, reported_cost, charge,
        latency_ms, ttfb_ms, error_code, estimated, stream)
    VALUES (v_user, v_amount,
        x.prompt_tokens, x.completion_tokens, x.cached_tokens, x.cache_write_tokens, x.cache_write_1h_tokens,
        x.audio_tokens, x.request_id, x.model_requested, x.status, x.api_key_id, x.model_served, x.provider,
        x.prompt_price, x.completion_price, x.cache_read_price, x.cache_write_price, x.cache_write_1h_price,
        x.audio_price, x.request_price, x.markup, x.byok, x.provider_cost, x.reported_cost, x.charge,
        x.latency_ms, x.ttfb_ms, x.error_code, x.estimated, x.stream);
    -- last: the balance row, whose lock the user's other requests wait for until this commits
    RETURN QUERY
    UPDATE public.balances SET
        balance = balances.balance - x.charge,
        reserved = balances.reserved - v_amount,
        in_flight = GREATEST(balances.in_flight - 1, 0),
        period_requests = CASE WHEN p_uncount AND balances.period_start = p_period
                               THEN GREATEST(balances.period_requests - 1, 0) ELSE balances.period_requests END,
        updated_at = now()
    WHERE balances.user_id = v_user
    RETURNING balances.balance, balances.reserved, v_amount, v_ledger_rows;
END
$fn$;
