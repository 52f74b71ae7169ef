-- mlp_settle_carry with the settle inline (issue 15, Postgres time per request; BENCHMARKS.md "the
-- carried settle in one function").
--
-- Every warm request runs one mlp_settle_carry. Measured inside Postgres (pg_stat_statements with
-- track = all, perf of the backend), 0012's version spent a third of its time on work that only
-- served to reuse mlp_settle: it renamed the used standing reservation to the request's id
-- (an UPDATE of a row deleted a moment later: a new row version and three index entries), then
-- called mlp_settle through a nested SELECT (function scan, tuplestore, its SET clause, its own
-- executor start and end) which deleted it again. Here the reservation is taken by its own id
-- (DELETE ... RETURNING, the same row lock: a duplicate or retried settle waits, then finds
-- nothing), and mlp_settle's statements follow in the same function: the capped key's hold and
-- spend, the ledger entry, the usage record, the balance row last. Everything else is as in 0012:
--
-- * the same checks (the record's fields are exactly the columns written; credit, key headroom,
--   in-flight and quota rules of a carried hold), the same rows (ledger entry when charge > 0,
--   usage record with the reservation's amount as its hold), the same results;
-- * the same lock order: reservation row(s), capped key, balance row (the carried hold's
--   reservation is still written before the key and the balance are locked);
-- * a standing reservation given back under the request (its mark never came) is charged as in
--   0012: hold 0, in flight unchanged, the quota request counted (0012 opened a reservation of 0
--   and counted it, then mlp_settle closed it: the net effect is written directly);
-- * mlp_settle itself is unchanged (the plain settle, and mlp_batch, call it).
-- Signature and result columns are unchanged (prepared statements of running containers).

CREATE OR REPLACE FUNCTION mlp_settle_carry(p_record jsonb, p_period date, p_uncount boolean, p_description text,
                                            p_user_id uuid, p_reservation text, p_release text[], p_carry_id text,
                                            p_carry_hold numeric, p_carry_s integer, p_quotas jsonb,
                                            p_default_quota integer, p_max_in_flight integer)
RETURNS TABLE (balance numeric, reserved numeric, hold numeric, ledger_rows bigint, carried_tier text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    x public.usage_records;
    v_user uuid;
    v_key uuid;
    v_amount numeric;
    v_orphan boolean := false;
    v_capped boolean := false;
    v_tier text;
    v_quota integer;
    v_room boolean := true;
    v_carrying boolean := false;
    v_settled boolean;
BEGIN
    -- exactly the columns written below (ledger.RECORD_COLUMNS): never drop a field silently (as mlp_settle)
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
    -- the reservation's row first (every money function's order): the standing one the request used,
    -- or its own. None (settled, released, cancelled, or a concurrent settle of it that committed
    -- while this one waited on its row) is a no-op.
    DELETE FROM public.reservations r WHERE r.request_id = COALESCE(p_reservation, x.request_id)
    RETURNING r.user_id, r.amount, r.api_key_id INTO v_user, v_amount, v_key;
    IF NOT FOUND THEN
        IF p_reservation IS NULL OR p_reservation = x.request_id
           OR EXISTS (SELECT 1 FROM public.usage_records u WHERE u.request_id = x.request_id) THEN
            RETURN;  -- settled, released or cancelled already: a no-op, as mlp_settle
        END IF;
        -- The standing reservation this request used was released as idle under it (its mark never
        -- came: a database outage; docs/money.md): the request is charged all the same, beyond a
        -- hold of 0 (an overrun, recorded), and counted as a request again (its release gave the
        -- quota request and the in-flight slot back; the request is over: in flight is unchanged).
        v_user := p_user_id;
        v_key := x.api_key_id;
        v_amount := 0;
        v_orphan := true;
        -- the capped key before the balance row, as everywhere
        PERFORM 1 FROM public.api_keys k WHERE k.id = v_key AND k.user_id = v_user AND k.spend_cap IS NOT NULL
        FOR UPDATE;
    END IF;
    IF p_carry_id IS NOT NULL THEN
        -- the carried hold's reservation is written BEFORE the key and the balance row are locked
        -- (the user's other requests wait on that lock: the less done under it, the better); the
        -- balance UPDATE below decides, and deletes it again when it refuses
        SELECT u.tier, COALESCE((p_quotas ->> u.tier)::integer, p_default_quota) INTO v_tier, v_quota
        FROM public.users u
        WHERE u.id = v_user
          AND NOT EXISTS (SELECT 1 FROM public.stripe_disputes d WHERE d.user_id = u.id AND NOT d.closed);
        IF FOUND THEN
            INSERT INTO public.reservations (request_id, user_id, api_key_id, model, amount, standing_until)
            VALUES (p_carry_id, v_user, v_key, x.model_requested, p_carry_hold,
                    now() + make_interval(secs => p_carry_s));
            v_carrying := true;
        END IF;
    END IF;
    -- this user's standing reservations the container drops (released if still idle), before the
    -- key and the balance row are locked (reservation rows, then the key, then the balance row) and
    -- before the carried hold is decided on what is left
    IF p_release IS NOT NULL AND cardinality(p_release) > 0 THEN
        PERFORM public.mlp_release_standing(v_user, v_key, p_release, p_period);
    END IF;
    -- the settle (mlp_settle's statements): a capped key's hold leaves its ``reserved``, the charge
    -- joins its ``spent`` (key row first)
    IF v_key IS NOT NULL THEN
        UPDATE public.api_keys SET reserved = GREATEST(api_keys.reserved - v_amount, 0),
                                   spent = api_keys.spent + x.charge
        WHERE api_keys.id = v_key AND api_keys.user_id = v_user AND api_keys.spend_cap IS NOT NULL
        -- the carried hold's check of a capped key's headroom, on the row as the settle leaves it
        RETURNING api_keys.spend_cap - api_keys.spent - api_keys.reserved >= 4 * p_carry_hold INTO v_room;
        v_capped := FOUND;
    END IF;
    IF x.charge > 0 THEN
        INSERT INTO public.ledger_entries (user_id, amount, kind, reference, description)
        VALUES (v_user, -x.charge, 'usage', x.request_id, p_description);
        ledger_rows := 1;
    ELSE
        ledger_rows := 0;
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
    -- the balance row last, whose lock the user's other requests wait for until this commits: ONE
    -- update for the settle and the carried hold when the hold fits after the settle (the common
    -- case); otherwise the settle's update alone (and the carried hold's reservation is deleted)
    IF v_carrying AND v_room IS NOT FALSE THEN
        UPDATE public.balances SET
            balance = balances.balance - x.charge,
            reserved = balances.reserved - v_amount + p_carry_hold,
            in_flight = CASE WHEN v_orphan THEN balances.in_flight ELSE GREATEST(balances.in_flight - 1, 0) END + 1,
            period_requests = CASE WHEN balances.period_start < p_period THEN 1
                                   ELSE CASE WHEN balances.period_start <> p_period OR v_orphan = COALESCE(p_uncount, false)
                                             THEN balances.period_requests
                                             WHEN v_orphan THEN balances.period_requests + 1
                                             ELSE GREATEST(balances.period_requests - 1, 0) END + 1 END,
            period_start = GREATEST(balances.period_start, p_period),
            updated_at = now()
        WHERE balances.user_id = v_user
          AND balances.reserved - v_amount >= 0  -- (else the settle's update alone: its CHECK decides)
          -- the carried hold's checks, on the row as the settle leaves it
          AND (balances.balance - x.charge) - (balances.reserved - v_amount) >= 4 * p_carry_hold
          AND (p_max_in_flight IS NULL
               OR 4 * (CASE WHEN v_orphan THEN balances.in_flight ELSE GREATEST(balances.in_flight - 1, 0) END + 1)
                  <= 3 * p_max_in_flight)
          AND (v_quota < 0
               OR (CASE WHEN balances.period_start < p_period THEN 0
                        WHEN balances.period_start <> p_period OR v_orphan = COALESCE(p_uncount, false)
                        THEN balances.period_requests
                        WHEN v_orphan THEN balances.period_requests + 1
                        ELSE GREATEST(balances.period_requests - 1, 0) END) + 4 <= v_quota)
        RETURNING balances.balance, balances.reserved INTO balance, reserved;
        IF FOUND THEN
            IF v_capped THEN
                UPDATE public.api_keys SET reserved = api_keys.reserved + p_carry_hold WHERE api_keys.id = v_key;
            END IF;
            hold := v_amount;
            carried_tier := v_tier;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    UPDATE public.balances SET
        balance = balances.balance - x.charge,
        reserved = balances.reserved - v_amount,
        in_flight = CASE WHEN v_orphan THEN balances.in_flight ELSE GREATEST(balances.in_flight - 1, 0) END,
        period_requests = CASE WHEN balances.period_start <> p_period OR v_orphan = COALESCE(p_uncount, false)
                               THEN balances.period_requests
                               WHEN v_orphan THEN balances.period_requests + 1
                               ELSE GREATEST(balances.period_requests - 1, 0) END,
        updated_at = now()
    WHERE balances.user_id = v_user
    RETURNING balances.balance, balances.reserved INTO balance, reserved;
    v_settled := FOUND;
    IF v_carrying THEN
        DELETE FROM public.reservations WHERE request_id = p_carry_id;  -- refused: this transaction's own row
    END IF;
    IF NOT v_settled THEN  -- (no balance row: not reached) nothing is returned
        RETURN;
    END IF;
    hold := v_amount;
    RETURN NEXT;
END
$fn$;
