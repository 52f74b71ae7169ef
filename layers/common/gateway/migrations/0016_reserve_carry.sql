-- A reserve that also opens a carried hold (issue 15, settle lane; BENCHMARKS.md "settle lane";
-- docs/money.md "Carried holds").
--
-- On a plain server a settle runs after its response, so at the start of a burst of one key (and
-- in its second wave) the next request of a client arrives before the settle that would open its
-- carried hold: it reserves, and waits in a combined batch (slow16 lane: 10-22% of a 100 ms
-- upstream's requests at c=16, +11 ms each). Here a reserve may open, in the same transaction, a
-- standing reservation for a later request of the same user and key, exactly as a settle does
-- (mlp_settle_carry): the container asks for it when its key has more requests in flight in the
-- process than holds, so the key's standing holds follow its concurrency.
--
-- mlp_reserve_carry(mlp_reserve's nine parameters, p_carry_id, p_carry_hold, p_carry_s):
-- * the reserve is mlp_reserve itself, unchanged: refused, nothing is opened and no row returned;
-- * then the carried hold under exactly mlp_settle_carry's rules, on the rows as the reserve leaves
--   them: no open dispute (the reserve checked it), credit for 4 such holds, a capped key's headroom
--   for 4, requests in flight at most three quarters of the cap with it, 4 requests of the monthly
--   quota left (the quota of the tier the reserve read); counted in reserved, in_flight and the
--   quota as any reservation, idle (standing_until) for at most p_carry_s. A check that fails
--   opens nothing and changes nothing else: the reserve stands alone.
-- * Lock order: mlp_reserve locks the capped key (FOR UPDATE) then the balance row; the carried
--   hold's statements only touch those two rows again (already held) and insert a new row of its
--   own id. No other lock is taken.
-- Returns (request_id, tier, carried_tier): the reserve's row and the user's tier when the carried
-- hold was opened (NULL otherwise); no row when the reserve was refused.
--
-- mlp_batch: the same function as 0015 plus one operation,
--   ["q", mlp_reserve's nine parameters as "r", carry_id, carry_hold, carry_s]
--       mlp_reserve_carry's; r = [request_id, tier, carried_tier], NULL when refused.
--
-- mlp_reserve, mlp_settle, mlp_settle_carry and mlp_release_standing are unchanged; every existing
-- signature and result column is unchanged (prepared statements of running containers).

CREATE FUNCTION mlp_reserve_carry(p_user_id uuid, p_request_id text, p_hold numeric, p_period date,
                                  p_quotas jsonb, p_default_quota integer, p_api_key_id uuid, p_model text,
                                  p_max_in_flight integer, p_carry_id text, p_carry_hold numeric, p_carry_s integer)
RETURNS TABLE (request_id text, tier text, carried_tier text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_tier text;
    v_quota integer;
    v_room boolean := true;
    v_capped boolean := false;
BEGIN
    SELECT f.tier INTO v_tier
    FROM public.mlp_reserve(p_user_id, p_request_id, p_hold, p_period, p_quotas, p_default_quota, p_api_key_id,
                            p_model, p_max_in_flight) f;
    IF NOT FOUND THEN
        RETURN;  -- refused: nothing opened (ledger.reserve words the refusal)
    END IF;
    request_id := p_request_id;
    tier := v_tier;
    IF p_carry_id IS NOT NULL THEN
        v_quota := COALESCE((p_quotas ->> v_tier)::integer, p_default_quota);
        IF p_api_key_id IS NOT NULL THEN
            -- a capped key's headroom for 4 such holds, on its row as the reserve leaves it (the
            -- reserve locked it FOR UPDATE)
            SELECT k.spend_cap - k.spent - k.reserved >= 4 * p_carry_hold INTO v_room FROM public.api_keys k
            WHERE k.id = p_api_key_id AND k.user_id = p_user_id AND k.spend_cap IS NOT NULL;
            v_capped := FOUND;
            v_room := COALESCE(v_room, true);
        END IF;
        IF v_room THEN
            INSERT INTO public.reservations (request_id, user_id, api_key_id, model, amount, standing_until)
            VALUES (p_carry_id, p_user_id, p_api_key_id, p_model, p_carry_hold,
                    now() + make_interval(secs => p_carry_s));
            -- the carried hold's checks (mlp_settle_carry's), on the balance row as the reserve left it
            -- (locked by it); the period is the reserve's (a row already in a later month: no hold)
            UPDATE public.balances SET
                reserved = balances.reserved + p_carry_hold,
                in_flight = balances.in_flight + 1,
                period_requests = balances.period_requests + 1,
                updated_at = now()
            WHERE balances.user_id = p_user_id
              AND balances.period_start = p_period
              AND balances.balance - balances.reserved >= 4 * p_carry_hold
              AND (p_max_in_flight IS NULL OR 4 * (balances.in_flight + 1) <= 3 * p_max_in_flight)
              AND (v_quota < 0 OR balances.period_requests + 4 <= v_quota);
            IF FOUND THEN
                IF v_capped THEN
                    UPDATE public.api_keys SET reserved = api_keys.reserved + p_carry_hold
                    WHERE api_keys.id = p_api_key_id;
                END IF;
                carried_tier := v_tier;
            ELSE
                DELETE FROM public.reservations WHERE request_id = p_carry_id;  -- refused: this transaction's row
            END IF;
        END IF;
    END IF;
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
            ELSIF v_op ->> 0 = 'q' THEN
                SELECT to_jsonb(ARRAY[f.request_id, f.tier, f.carried_tier]) INTO v_r
                FROM public.mlp_reserve_carry((v_op ->> 1)::uuid, v_op ->> 2, (v_op ->> 3)::numeric,
                                              (v_op ->> 4)::date, v_op -> 5, (v_op ->> 6)::integer,
                                              (v_op ->> 7)::uuid, v_op ->> 8, (v_op ->> 9)::integer, v_op ->> 10,
                                              (v_op ->> 11)::numeric, (v_op ->> 12)::integer) f;
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
            ELSIF v_op ->> 0 = 'q' THEN
                SELECT to_jsonb(ARRAY[f.request_id, f.tier, f.carried_tier]) INTO r
                FROM public.mlp_reserve_carry((v_op ->> 1)::uuid, v_op ->> 2, (v_op ->> 3)::numeric,
                                              (v_op ->> 4)::date, v_op -> 5, (v_op ->> 6)::integer,
                                              (v_op ->> 7)::uuid, v_op ->> 8, (v_op ->> 9)::integer, v_op ->> 10,
                                              (v_op ->> 11)::numeric, (v_op ->> 12)::integer) f;
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
