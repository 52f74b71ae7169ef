-- Fewer index entries and statements per settle (issue 15, sql lane, second pass; BENCHMARKS.md
-- "sql lane, second pass").
--
-- Indexes of ``reservations`` (every request inserts one row and deletes one; a warm request's
-- carried hold is a standing row):
-- * reservations_created_at_idx (created_at) -> reservations_orphan_idx, the same column WHERE
--   standing_until IS NULL. Its only reader is the sweeper's orphan scan (ledger.ORPHANS_SQL: ...
--   WHERE created_at < ... AND standing_until IS NULL ORDER BY created_at), which asks for exactly
--   those rows. A carried hold is no longer entered in it; a standing reservation the upstream
--   mark clears enters it then (that UPDATE is not HOT anyway: standing_until is in an index
--   predicate, so it already writes every index).
-- * reservations_user_id_idx (user_id) and reservations_standing_idx (user_id) WHERE
--   standing_until IS NOT NULL -> ONE index reservations_user_standing_idx (user_id,
--   standing_until): a user's standing holds on both columns (GET /v1/balance's carried sum,
--   account/usage.balance; mlp_release_standing: user_id = $1 AND standing_until IS NOT NULL), a
--   user's reservations on the first (the cascade of a deleted user). The sweeper's scan for users with idle holds
--   (ledger.IDLE_STANDING_SQL, every 5 minutes) reads the table (open reservations only).
-- A carried hold's INSERT writes 2 index entries instead of 4; a plain reserve's 3, as before. The
-- table holds only open reservations (and their dead versions until vacuumed): the builds below
-- are short, under the migration's lock_timeout.
--
-- mlp_settle and mlp_settle_carry: whether the request's key is capped is read by the
-- reservation's own DELETE ... RETURNING (a subquery by primary key) instead of an UPDATE of
-- api_keys that, for an uncapped key (most keys), found no row. An api key's spend_cap is written
-- only when the key is created (account/users.create_api_key; no UPDATE of api_keys sets it), so
-- this read sees what that UPDATE's own WHERE saw. A capped key is locked and written as before,
-- after the reservation row and before the balance row. Everything else is 0011's / 0014's:
-- checks, rows, results, lock order.
--
-- mlp_batch (one user's concurrent statements in one process, 0013): the operations run inside ONE
-- subtransaction (one exception block) instead of one each; each subtransaction that writes takes
-- its own transaction id and costs ~10 us of backend CPU per operation (BENCHMARKS.md). When an
-- operation raises there, that subtransaction is rolled back whole (nothing of the batch is kept
-- or returned yet) and the batch runs again as in 0013, each operation in its own subtransaction,
-- so the one that raises rolls back alone and its error is returned for it only: what each caller
-- gets is what it got from 0013. The reservation rows the batch closes are locked first, outside
-- both, as before.
--
-- Signatures, result columns and types unchanged (prepared statements of running containers).

CREATE INDEX reservations_orphan_idx ON reservations (created_at) WHERE standing_until IS NULL;
DROP INDEX reservations_created_at_idx;
CREATE INDEX reservations_user_standing_idx ON reservations (user_id, standing_until);
DROP INDEX reservations_user_id_idx;
DROP INDEX reservations_standing_idx;


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
    v_key_capped boolean;
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
    -- (0015) and whether its key is capped, read in the same statement (an api key's spend_cap is
    -- set when the key is created and never changed): an uncapped key's row is not touched
    DELETE FROM public.reservations r WHERE r.request_id = x.request_id
    RETURNING r.user_id, r.amount, r.api_key_id,
              r.api_key_id IS NOT NULL
              AND EXISTS (SELECT 1 FROM public.api_keys k
                          WHERE k.id = r.api_key_id AND k.user_id = r.user_id AND k.spend_cap IS NOT NULL)
    INTO v_user, v_amount, v_key, v_key_capped;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_key_capped THEN
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
    v_key_capped boolean;
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
    -- (0015) with whether its key is capped, read by the same statement (by primary key): an api
    -- key's spend_cap is set when the key is created and never changed, so an uncapped key's row,
    -- which the UPDATE below never touched, costs no statement
    RETURNING r.user_id, r.amount, r.api_key_id,
              r.api_key_id IS NOT NULL
              AND EXISTS (SELECT 1 FROM public.api_keys k
                          WHERE k.id = r.api_key_id AND k.user_id = r.user_id AND k.spend_cap IS NOT NULL)
    INTO v_user, v_amount, v_key, v_key_capped;
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
        v_key_capped := FOUND;
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
    IF v_key_capped THEN
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


CREATE OR REPLACE FUNCTION mlp_batch(p_ops jsonb)
RETURNS TABLE (op integer, r jsonb, err_state text, err_message text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_op jsonb;
    v_rs jsonb[] := '{}';
    v_r jsonb;
    v_failed boolean := false;
BEGIN
    PERFORM 1 FROM public.reservations x
    WHERE x.request_id IN (SELECT e -> 1 ->> 'request_id' FROM jsonb_array_elements(p_ops) AS e
                           WHERE e ->> 0 IN ('s', 'c')
                           UNION ALL
                           SELECT e ->> 6 FROM jsonb_array_elements(p_ops) AS e WHERE e ->> 0 = 'c')
    ORDER BY x.request_id
    FOR UPDATE;
    -- every operation in one subtransaction; their rows are returned once all have run
    BEGIN
        FOR v_op IN SELECT e FROM jsonb_array_elements(p_ops) AS e LOOP
            v_r := NULL;
            IF v_op ->> 0 = 'r' THEN
                SELECT to_jsonb(ARRAY[f.request_id, f.tier]) INTO v_r
                FROM public.mlp_reserve((v_op ->> 1)::uuid, v_op ->> 2, (v_op ->> 3)::numeric, (v_op ->> 4)::date,
                                        v_op -> 5, (v_op ->> 6)::integer, (v_op ->> 7)::uuid, v_op ->> 8,
                                        (v_op ->> 9)::integer) f;
            ELSIF v_op ->> 0 = 's' THEN
                SELECT to_jsonb(ARRAY[f.balance::text, f.reserved::text, f.hold::text, f.ledger_rows::text]) INTO v_r
                FROM public.mlp_settle(v_op -> 1, (v_op ->> 2)::date, (v_op ->> 3)::boolean, v_op ->> 4) f;
            ELSIF v_op ->> 0 = 'c' THEN
                SELECT to_jsonb(ARRAY[f.balance::text, f.reserved::text, f.hold::text, f.ledger_rows::text,
                                      f.carried_tier]) INTO v_r
                FROM public.mlp_settle_carry(v_op -> 1, (v_op ->> 2)::date, (v_op ->> 3)::boolean, v_op ->> 4,
                                             (v_op ->> 5)::uuid, v_op ->> 6, (v_op ->> 7)::text[], v_op ->> 8,
                                             (v_op ->> 9)::numeric, (v_op ->> 10)::integer,
                                             NULLIF(v_op -> 11, 'null'::jsonb), (v_op ->> 12)::integer,
                                             (v_op ->> 13)::integer) f;
            ELSE
                RAISE EXCEPTION 'mlp_batch: unknown operation %', v_op ->> 0 USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_rs := array_append(v_rs, v_r);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        v_failed := true;  -- all of it rolled back: run again below, one subtransaction per operation
    END;
    IF NOT v_failed THEN
        FOR i IN 1 .. cardinality(v_rs) LOOP
            op := i - 1;
            r := v_rs[i];
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;
    -- (0013's loop) an operation raised: each in its own subtransaction, its error returned for it only
    op := -1;
    FOR v_op IN SELECT e FROM jsonb_array_elements(p_ops) AS e LOOP
        op := op + 1;
        r := NULL;
        err_state := NULL;
        err_message := NULL;
        BEGIN
            IF v_op ->> 0 = 'r' THEN
                SELECT to_jsonb(ARRAY[f.request_id, f.tier]) INTO r
                FROM public.mlp_reserve((v_op ->> 1)::uuid, v_op ->> 2, (v_op ->> 3)::numeric, (v_op ->> 4)::date,
                                        v_op -> 5, (v_op ->> 6)::integer, (v_op ->> 7)::uuid, v_op ->> 8,
                                        (v_op ->> 9)::integer) f;
            ELSIF v_op ->> 0 = 's' THEN
                SELECT to_jsonb(ARRAY[f.balance::text, f.reserved::text, f.hold::text, f.ledger_rows::text]) INTO r
                FROM public.mlp_settle(v_op -> 1, (v_op ->> 2)::date, (v_op ->> 3)::boolean, v_op ->> 4) f;
            ELSIF v_op ->> 0 = 'c' THEN
                SELECT to_jsonb(ARRAY[f.balance::text, f.reserved::text, f.hold::text, f.ledger_rows::text,
                                      f.carried_tier]) INTO r
                FROM public.mlp_settle_carry(v_op -> 1, (v_op ->> 2)::date, (v_op ->> 3)::boolean, v_op ->> 4,
                                             (v_op ->> 5)::uuid, v_op ->> 6, (v_op ->> 7)::text[], v_op ->> 8,
                                             (v_op ->> 9)::numeric, (v_op ->> 10)::integer,
                                             NULLIF(v_op -> 11, 'null'::jsonb), (v_op ->> 12)::integer,
                                             (v_op ->> 13)::integer) f;
            ELSE
                RAISE EXCEPTION 'mlp_batch: unknown operation %', v_op ->> 0 USING ERRCODE = 'invalid_parameter_value';
            END IF;
        EXCEPTION WHEN OTHERS THEN
            r := NULL;
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END
$fn$;
