"""``bench.stack.add_user``: the second user ``bench.ab`` gives its other side, so that two gateway
processes measured side by side share no in-flight cap, balance row or rate limit. Each user is on
the unlimited bench tier with the bench credit, granted through the ledger under its own reference
(references are unique: a second grant under one shared reference failed)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bench.stack import BENCH_CREDIT, add_user
from gateway import db

pytestmark = pytest.mark.integration


async def test_two_bench_users_have_their_own_key_tier_and_credit(database_url: str) -> None:
    first = add_user(database_url, "ab-a@bench.invalid")
    second = add_user(database_url, "ab-b@bench.invalid")
    assert first[0] != second[0] and first[1] != second[1]
    for user_id, key in (first, second):
        assert key.startswith("sk-")
        row = await db.fetchone(
            "SELECT u.tier, b.balance, (SELECT sum(amount) FROM ledger_entries WHERE user_id = u.id) AS booked, "
            "(SELECT array_agg(reference) FROM ledger_entries WHERE user_id = u.id AND kind = 'grant') AS grants "
            "FROM users u JOIN balances b ON b.user_id = u.id WHERE u.id = %s", (user_id,))
        assert row is not None
        assert row["tier"] == "enterprise"
        assert row["balance"] == row["booked"] and row["balance"] >= Decimal(BENCH_CREDIT)  # all of it in the ledger
        assert row["grants"] == [f"bench-credit:{user_id}"]
