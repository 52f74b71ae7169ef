-- Holds carried from one request to the next (issue 15, seventh pass; docs/money.md "Carried holds").
--
-- A settled request's statement may open, in the same transaction, a STANDING reservation: a hold
-- for the next request of the same user and key in the same container, under exactly the checks
-- mlp_reserve makes (credit, capped key's headroom, requests in flight, monthly quota, no open
-- dispute; the quota and in-flight counts taken now). The container keeps its id, amount and the
-- user's tier, and a request whose hold fits in it uses it without a reserve round trip; its
-- settle renames the reservation to the request's id and closes it as any other (mlp_settle).
--
-- * A standing reservation is unused while ``standing_until`` is set. The container uses it only
--   well before that time (docs/money.md: the margin covers the mark below); the mark of a request
--   still running after a second (ledger.mark_upstream) clears it, so a used reservation is never
--   taken for unused, and the sweeper treats it as any other reservation (charged if sent upstream
--   and never settled).
-- * Unused ones past their time are released (no charge, no usage record, the quota request and
--   the in-flight slot given back) by mlp_release_standing: from the settle of the same user and
--   key (expired ones, and the ones the container drops), from mlp_reserve when it would refuse
--   for room (so an idle hold in another container never causes a refusal once past its time),
--   and by the sweeper.
-- * Lock order stays: reservation rows, capped key, balance. Releases never wait on a reservation
--   row (SKIP LOCKED: one being renamed, marked or settled is not idle) and only touch the capped
--   key the caller already holds (standings on another capped key are left to the sweeper).
-- * ``used_by``: the request id of the request that used a standing reservation (set by the mark),
--   so an orphan closed by the sweeper is recorded under the request's own id.

ALTER TABLE reservations ADD COLUMN standing_until timestamptz;
ALTER TABLE reservations ADD COLUMN used_by text;
CREATE INDEX reservations_standing_idx ON reservations (user_id) WHERE standing_until IS NOT NULL;


CREATE FUNCTION mlp_release_standing(p_user_id uuid, p_api_key_id uuid, p_ids text[], p_period date)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_n integer;
    v_total numeric;
    v_key_total numeric;
BEGIN
    WITH gone AS (
        DELETE FROM public.reservations r
        USING (SELECT s.request_id FROM public.reservations s
               WHERE s.user_id = p_user_id AND s.standing_until IS NOT NULL
                 AND (s.standing_until < now() OR s.request_id = ANY (p_ids))
                 AND (s.api_key_id IS NULL OR s.api_key_id = p_api_key_id
                      OR NOT EXISTS (SELECT 1 FROM public.api_keys k
                                     WHERE k.id = s.api_key_id AND k.spend_cap IS NOT NULL))
               FOR UPDATE OF s SKIP LOCKED) idle
        WHERE r.request_id = idle.request_id AND r.standing_until IS NOT NULL
        RETURNING r.amount, r.api_key_id)
    SELECT count(*), COALESCE(sum(gone.amount), 0),
           COALESCE(sum(gone.amount) FILTER (WHERE gone.api_key_id = p_api_key_id), 0)
      INTO v_n, v_total, v_key_total
    FROM gone;
    IF v_n = 0 THEN
        RETURN 0;
    END IF;
    IF v_key_total > 0 THEN
        UPDATE public.api_keys SET reserved = GREATEST(api_keys.reserved - v_key_total, 0)
        WHERE api_keys.id = p_api_key_id AND api_keys.user_id = p_user_id AND api_keys.spend_cap IS NOT NULL;
    END IF;
    UPDATE public.balances SET
        reserved = balances.reserved - v_total,
        in_flight = GREATEST(balances.in_flight - v_n, 0),
        period_requests = CASE WHEN balances.period_start = p_period
                               THEN GREATEST(balances.period_requests - v_n, 0) ELSE balances.period_requests END,
        updated_at = now()
    WHERE balances.user_id = p_user_id;
    RETURN v_n;
END
$fn$;


-- mlp_reserve as in 0011, plus: refused for room (credit, in flight, quota), it releases the
-- user's standing reservations past their time (mlp_release_standing) and decides again.
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
    v_reclaimed boolean := false;
BEGIN
    IF p_api_key_id IS NOT NULL THEN
        SELECT k.id, k.spend_cap - k.spent - k.reserved INTO v_key, v_headroom FROM public.api_keys k
        WHERE k.id = p_api_key_id AND k.user_id = p_user_id AND k.spend_cap IS NOT NULL
        FOR UPDATE;
        IF v_key IS NOT NULL AND v_headroom < p_hold THEN
            -- idle standing holds on this key past their time give their headroom back first
            IF public.mlp_release_standing(p_user_id, p_api_key_id, NULL, p_period) = 0 THEN
                RETURN;
            END IF;
            v_reclaimed := true;
            SELECT k.spend_cap - k.spent - k.reserved INTO v_headroom FROM public.api_keys k WHERE k.id = v_key;
            IF v_headroom < p_hold THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    LOOP
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
        IF NOT FOUND THEN
            RETURN;
        END IF;
        EXIT WHEN v_room;
        -- no room: idle standing holds past their time are given back, once, and it decides again
        IF v_reclaimed OR public.mlp_release_standing(p_user_id, p_api_key_id, NULL, p_period) = 0 THEN
            RETURN;
        END IF;
        v_reclaimed := true;
    END LOOP;
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


-- Settle (mlp_settle, unchanged) a reservation that may be a used standing one, release the
-- container's idle standing holds of the same user and key, and carry a new one. A hold is carried
-- only far from every limit, so that an idle one (in another container, for up to p_carry_s) is
-- never what refuses a request: credit and the capped key's headroom for 4 such holds, requests in
-- flight at most three quarters of the cap with it, and 4 requests of the monthly quota left.
--   p_user_id:     the request's user (used only when its standing reservation is gone, below)
--   p_reservation: the reservation the request used (NULL or the record's request_id: its own)
--   p_release:     this user's standing reservations the container drops (released if still idle)
--   p_carry_id:    the id of the standing reservation to open (NULL: none), of p_carry_hold, idle
--                  for at most p_carry_s seconds; p_quotas / p_default_quota / p_max_in_flight as
--                  mlp_reserve's
-- Returns mlp_settle's row (balance and reserved as after everything) and the user's tier when a
-- standing reservation was opened (NULL otherwise); no row when there was nothing to settle.
CREATE FUNCTION mlp_settle_carry(p_record jsonb, p_period date, p_uncount boolean, p_description text,
                                 p_user_id uuid, p_reservation text, p_release text[], p_carry_id text,
                                 p_carry_hold numeric, p_carry_s integer, p_quotas jsonb, p_default_quota integer,
                                 p_max_in_flight integer)
RETURNS TABLE (balance numeric, reserved numeric, hold numeric, ledger_rows bigint, carried_tier text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_request text := p_record ->> 'request_id';
    v_user uuid;
    v_key uuid;
    v_settled record;
    v_capped boolean := false;
    v_tier text;
    v_quota integer;
    v_room boolean := true;
    v_carrying boolean := false;
    v_balance numeric;
    v_reserved numeric;
    v_changed boolean := false;
BEGIN
    -- the reservation's row first (every money function's order): renamed to the request's id
    -- when the request used a standing one, so that mlp_settle closes it as its own
    IF p_reservation IS NOT NULL AND p_reservation <> v_request THEN
        UPDATE public.reservations r SET request_id = v_request, standing_until = NULL
        WHERE r.request_id = p_reservation
        RETURNING r.user_id, r.api_key_id INTO v_user, v_key;
    ELSE
        SELECT r.user_id, r.api_key_id INTO v_user, v_key FROM public.reservations r
        WHERE r.request_id = v_request FOR UPDATE;
    END IF;
    IF v_user IS NULL THEN
        IF p_reservation IS NULL OR p_reservation = v_request
           OR EXISTS (SELECT 1 FROM public.usage_records u WHERE u.request_id = v_request) THEN
            RETURN;  -- settled, released or cancelled already: a no-op, as mlp_settle
        END IF;
        -- The standing reservation this request used was released as idle under it (its mark never
        -- came: a database outage; docs/money.md): the request is charged all the same, beyond a
        -- hold of 0 (an overrun, recorded), through a reservation of 0 opened here for mlp_settle.
        v_user := p_user_id;
        v_key := (p_record ->> 'api_key_id')::uuid;
        INSERT INTO public.reservations (request_id, user_id, api_key_id, model, amount)
        VALUES (v_request, v_user, v_key, p_record ->> 'model_requested', 0);
        -- the capped key before the balance row, as everywhere (mlp_settle updates both next)
        PERFORM 1 FROM public.api_keys k WHERE k.id = v_key AND k.user_id = v_user AND k.spend_cap IS NOT NULL
        FOR UPDATE;
        UPDATE public.balances SET in_flight = balances.in_flight + 1,
            period_requests = CASE WHEN balances.period_start = p_period THEN balances.period_requests + 1
                                   ELSE balances.period_requests END
        WHERE balances.user_id = v_user;
    END IF;
    IF p_carry_id IS NOT NULL THEN
        -- the carried hold's reservation is written BEFORE mlp_settle locks the key and the balance row
        -- (the user's other requests wait on that lock: the less done under it, the better); the
        -- balance UPDATE below decides, and deletes it again when it refuses
        SELECT u.tier, COALESCE((p_quotas ->> u.tier)::integer, p_default_quota) INTO v_tier, v_quota
        FROM public.users u
        WHERE u.id = v_user
          AND NOT EXISTS (SELECT 1 FROM public.stripe_disputes d WHERE d.user_id = u.id AND NOT d.closed);
        IF FOUND THEN
            INSERT INTO public.reservations (request_id, user_id, api_key_id, model, amount, standing_until)
            VALUES (p_carry_id, v_user, v_key, p_record ->> 'model_requested', p_carry_hold,
                    now() + make_interval(secs => p_carry_s));
            v_carrying := true;
        END IF;
    END IF;
    SELECT * INTO v_settled FROM public.mlp_settle(p_record, p_period, p_uncount, p_description);
    IF NOT FOUND THEN  -- (the reservation is this transaction's: not reached) nothing is left behind
        IF v_carrying THEN
            DELETE FROM public.reservations WHERE request_id = p_carry_id;
        END IF;
        RETURN;
    END IF;
    balance := v_settled.balance;
    reserved := v_settled.reserved;
    hold := v_settled.hold;
    ledger_rows := v_settled.ledger_rows;
    IF p_release IS NOT NULL AND cardinality(p_release) > 0 THEN
        v_changed := public.mlp_release_standing(v_user, v_key, p_release, p_period) > 0;
    END IF;
    IF v_carrying THEN
        -- the checks of mlp_reserve, on rows this transaction already holds (key, balance)
        IF v_key IS NOT NULL THEN
            SELECT k.spend_cap IS NOT NULL, COALESCE(k.spend_cap - k.spent - k.reserved >= 4 * p_carry_hold, true)
              INTO v_capped, v_room
            FROM public.api_keys k WHERE k.id = v_key AND k.user_id = v_user;
        END IF;
        IF v_room IS NOT FALSE THEN
            UPDATE public.balances SET
                reserved = balances.reserved + p_carry_hold,
                in_flight = balances.in_flight + 1,
                period_requests = CASE WHEN balances.period_start < p_period THEN 1
                                       ELSE balances.period_requests + 1 END,
                period_start = GREATEST(balances.period_start, p_period),
                updated_at = now()
            WHERE balances.user_id = v_user
              AND balances.balance - balances.reserved >= 4 * p_carry_hold
              AND (p_max_in_flight IS NULL OR 4 * (balances.in_flight + 1) <= 3 * p_max_in_flight)
              AND (v_quota < 0
                   OR (CASE WHEN balances.period_start < p_period THEN 0 ELSE balances.period_requests END)
                      + 4 <= v_quota)
            RETURNING balances.balance, balances.reserved INTO v_balance, v_reserved;
            v_room := FOUND;
        END IF;
        IF v_room IS NOT FALSE THEN
            IF v_capped THEN
                UPDATE public.api_keys SET reserved = api_keys.reserved + p_carry_hold WHERE api_keys.id = v_key;
            END IF;
            carried_tier := v_tier;
            balance := v_balance;  -- the row's latest
            reserved := v_reserved;
            v_changed := false;
        ELSE
            DELETE FROM public.reservations WHERE request_id = p_carry_id;  -- refused: this transaction's own row
        END IF;
    END IF;
    IF v_changed THEN
        SELECT b.balance, b.reserved INTO balance, reserved FROM public.balances b WHERE b.user_id = v_user;
    END IF;
    RETURN NEXT;
END
$fn$;
