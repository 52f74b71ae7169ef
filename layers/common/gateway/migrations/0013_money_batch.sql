-- Several money statements of ONE user and key in one transaction (issue 15, db lane;
-- gateway/money/combine.py; BENCHMARKS.md "combined money statements").
--
-- Every reserve and settle writes the user's ``balances`` row and holds its lock until the commit
-- record is flushed (a WAL flush, ~1 ms on the benchmark machine). The requests of one user in one
-- process therefore queue on that row one commit at a time. When a money statement of a user and
-- key is already in flight in a process, the ones that arrive meanwhile are sent together, as ONE
-- call of mlp_batch: each operation runs as before (the same functions, in arrival order), each in
-- its own subtransaction, so an operation that fails rolls back alone and its error is returned for
-- its request only; all of them commit together, with one flush. Nothing changes for a statement
-- sent alone (Lambda: one request per container).
--
-- p_ops: a JSON array, one element per operation:
--   ["r", user_id, request_id, hold, period, quotas (jsonb), default_quota, api_key_id, model, max_in_flight]
--       mlp_reserve's parameters, as text (quotas as JSON); r = [request_id, tier], NULL when refused
--   ["s", record (jsonb), period, uncount, description]
--       mlp_settle's; r = [balance, reserved, hold, ledger_rows], NULL when nothing was settled
--   ["c", record (jsonb), period, uncount, description, user_id, reservation, release (a text[]
--    literal), carry_id, carry_hold, carry_s, quotas (jsonb), default_quota, max_in_flight]
--       mlp_settle_carry's (migration 0012); r = [balance, reserved, hold, ledger_rows, carried_tier]
-- One row per operation, in order: op (0-based), r (the function's row as a JSON array of text,
-- NULL when it returned none), err_state / err_message (the SQLSTATE and message of an operation that raised;
-- its changes are rolled back, the others' are kept).
--
-- Lock order, as everywhere (reservation rows, capped key, balance): the reservations the settles
-- close (a carried hold's: the one it used) are locked first, in request-id order, before any
-- operation runs; every operation is of the
-- same user and key (the caller groups them so), so the capped key's row is locked by the first
-- operation, before its balance UPDATE, and every later one already holds both.

CREATE FUNCTION mlp_batch(p_ops jsonb)
RETURNS TABLE (op integer, r jsonb, err_state text, err_message text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_op jsonb;
BEGIN
    PERFORM 1 FROM public.reservations x
    WHERE x.request_id IN (SELECT e -> 1 ->> 'request_id' FROM jsonb_array_elements(p_ops) AS e
                           WHERE e ->> 0 IN ('s', 'c')
                           UNION ALL
                           SELECT e ->> 6 FROM jsonb_array_elements(p_ops) AS e WHERE e ->> 0 = 'c')
    ORDER BY x.request_id
    FOR UPDATE;
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
