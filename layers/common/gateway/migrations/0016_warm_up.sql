-- mlp_warm_up(): a new backend readied for a request's first statements, changing nothing (issue 15,
-- cold start; BENCHMARKS.md "fifteenth pass").
--
-- A new Postgres backend (every container's first connection, direct or through a session pooler)
-- starts with empty caches: the first statements of its first request pay for loading the
-- catalogue entries of every relation, index and function they touch and for compiling the PL/pgSQL
-- money functions, ~6-10 ms here on top of the statements themselves (the API-key lookup's parse
-- and bind 3 ms instead of 0.2; mlp_reserve's first call 3-4.6 ms instead of 0.3). The container's
-- early connection (gateway/db.py ``open_first_connection``) runs this once, in its thread, while
-- the process is still importing: the work is done beside the import instead of inside the first
-- request. Through a transaction pooler the backend that runs it is any of the pool's (usually warm
-- already): one cheap statement, no harm.
--
-- It changes nothing: every statement below finds no row (a key hash no key has, the nil uuid, an
-- empty request id or reference; no row has a null request id), so nothing is written, locked or
-- counted and no transaction id is taken (tests/integration/test_db_first_connection.py asserts
-- ``txid_current_if_assigned()`` is NULL after it):
-- * the API-key lookup's relations (gateway/auth.py LOOKUP_SQL: api_keys by key_hash, users,
--   provider_keys);
-- * mlp_reserve compiled: no key and a user that does not exist return at its first read;
-- * mlp_settle_carry compiled: a usage record of every column, all null, closes no reservation (its
--   first statement) and returns. The record is built from usage_records itself, so a column added
--   later (whose migration replaces the settles: docs/money.md) keeps it valid;
-- * the relations the money functions write, with their indexes: reservations, balances,
--   ledger_entries, usage_records.
-- A schema without this function (code deployed before its migration) is no error for the caller:
-- db.py logs it and hands the connection over as before.

CREATE FUNCTION mlp_warm_up() RETURNS void
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    nil CONSTANT uuid := '00000000-0000-0000-0000-000000000000';
BEGIN
    PERFORM 1 FROM public.api_keys k JOIN public.users u ON u.id = k.user_id
        LEFT JOIN public.provider_keys p ON p.user_id = k.user_id
    WHERE k.key_hash = '';
    PERFORM public.mlp_reserve(nil, '', 0, current_date, '{}'::jsonb, 0, NULL, '', NULL);
    PERFORM public.mlp_settle_carry(
        to_jsonb(jsonb_populate_record(NULL::public.usage_records, '{}'))
            - ARRAY['id', 'user_id', 'hold', 'created_at'],
        current_date, NULL, NULL, nil, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    PERFORM 1 FROM public.reservations WHERE request_id = '';
    PERFORM 1 FROM public.balances WHERE user_id = nil;
    PERFORM 1 FROM public.ledger_entries WHERE reference = '';
    PERFORM 1 FROM public.usage_records WHERE request_id = '';
END
$fn$;
