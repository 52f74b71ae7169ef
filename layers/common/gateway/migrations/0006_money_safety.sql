-- Money safety on the query path (issue 9, docs/money.md).
--
-- * reservations.upstream_at: set (concurrently with the upstream call) once a request has been
--   sent to a provider. The orphan sweeper charges an orphan that reached the upstream its hold
--   (marked estimated) and releases one that did not.
-- * balances.in_flight: the number of the user's open reservations, kept by the reserve, settle
--   and cancel statements under the balance row lock, so the per-user cap on requests in flight
--   is atomic (a count(*) in the reserve statement would read a stale snapshot).
-- * usage_records: 1-hour prompt-cache writes (Anthropic bills them at 2x the input price) with
--   the unit price charged, and the cost the provider itself reported (OpenRouter usage.cost),
--   so every charge still recomputes from its own row.

ALTER TABLE reservations ADD COLUMN upstream_at timestamptz;

ALTER TABLE balances ADD COLUMN in_flight integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0);
UPDATE balances b SET in_flight = r.n
FROM (SELECT user_id, count(*)::integer AS n FROM reservations GROUP BY user_id) r
WHERE r.user_id = b.user_id;

ALTER TABLE usage_records
    ADD COLUMN cache_write_1h_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_1h_price  numeric(30, 18),
    ADD COLUMN reported_cost         numeric(30, 18);
