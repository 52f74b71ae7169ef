"""Carried holds (docs/money.md "Carried holds", migration 0012): a settle opens a standing
reservation for the next request of the same key, which uses it instead of a reserve. Against real
Postgres, the Upstash bridge and the fake providers; the books are checked after every scenario."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway import db
from gateway.account.keys import key_reservation_drift
from gateway.chat import service
from gateway.config import get_settings, reset_settings
from gateway.money import ledger, sweeper
from gateway.money.pricing import to_credit
from infra.local.servers import free_port
from tests.integration.test_chat_money import ask, balance, direct, records, wait_for
from tests.support.apps import function_fixtures

pytestmark = pytest.mark.integration
app, api = function_fixtures("functions/query/app.py", app="app", client="api")
D = Decimal
MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def carrying(setting: Any) -> Iterator[Any]:
    """Carried holds on (the product's default; the suite runs with them off), a fresh store, and
    settled before the response as in Lambda (a settle that fails is then the request's 500, not a
    background task's log line)."""
    setting(carry_holds="true", aws_lambda_function_name="QueryStreamFunction")
    service._carried_holds = None
    yield setting
    service._carried_holds = None


def backdate(database_url: str, sql: str, request_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute(sql, (request_id,)).rowcount == 1


def standing(database_url: str, user_id: Any) -> list[dict[str, Any]]:
    return direct(database_url, "SELECT * FROM reservations WHERE user_id = %s AND standing_until IS NOT NULL",
                  user_id)


async def books_balance(user_id: Any) -> None:
    """mlp doctor's invariants: balance = ledger, reserved = open reservations, in flight = their count."""
    assert [v for v in await ledger.invariant_violations() if v["user_id"] == user_id] == []


async def test_the_next_request_of_the_key_uses_the_hold_its_predecessor_carried(
        api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "one [[words:3]]")).status_code == 200
    first = records(database_url, user.user_id)[0]
    [held] = standing(database_url, user.user_id)
    assert held["amount"] == to_credit(first["hold"] * D("1.25")) and held["api_key_id"] == user.key_id
    b = balance(database_url, user.user_id)
    # counted as a reservation: credit held, one in flight, one more request of the monthly quota
    assert (b["reserved"], b["in_flight"], b["period_requests"]) == (held["amount"], 1, 2)
    await books_balance(user.user_id)

    assert (await ask(api, user, MODEL, "one [[words:3]]")).status_code == 200
    second = records(database_url, user.user_id)[1]
    assert second["hold"] == held["amount"]  # held by the carried reservation, not a reserve of its own
    assert second["status"] == "ok" and second["charge"] == first["charge"]
    [carried] = standing(database_url, user.user_id)
    assert carried["request_id"] != held["request_id"]  # used, closed, and a new one carried
    b = balance(database_url, user.user_id)
    assert b["balance"] == D("5") - first["charge"] - second["charge"]
    assert (b["reserved"], b["in_flight"], b["period_requests"]) == (carried["amount"], 1, 3)
    await books_balance(user.user_id)


async def test_a_bigger_request_reserves_for_itself_and_the_small_hold_is_given_back(
        api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "small", max_tokens=10)).status_code == 200
    [small] = standing(database_url, user.user_id)
    assert (await ask(api, user, MODEL, "big", max_tokens=4000)).status_code == 200
    big = records(database_url, user.user_id)[1]
    assert big["hold"] > small["amount"]  # its own reserve: the carried one did not cover it
    [carried] = standing(database_url, user.user_id)
    assert carried["amount"] == to_credit(big["hold"] * D("1.25"))  # the small one is gone, given back
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"], b["period_requests"]) == (carried["amount"], 1, 3)
    await books_balance(user.user_id)


async def test_a_hold_past_its_usable_time_is_not_used_and_is_given_back(
        api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    carrying(carry_hold_s=5, carry_margin_s=4)  # usable for 1 s here
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "one")).status_code == 200
    [old] = standing(database_url, user.user_id)
    await asyncio.sleep(1.1)
    assert (await ask(api, user, MODEL, "one")).status_code == 200
    second = records(database_url, user.user_id)[1]
    assert second["hold"] == records(database_url, user.user_id)[0]["hold"]  # reserved for itself
    assert [r["request_id"] for r in standing(database_url, user.user_id)] != [old["request_id"]]
    assert len(standing(database_url, user.user_id)) == 1
    await books_balance(user.user_id)


async def test_a_reserve_refused_for_credit_takes_back_idle_holds_past_their_time(
        api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "one", max_tokens=1000)).status_code == 200
    [held] = standing(database_url, user.user_id)
    # another container's view: it does not have the hold, and the user has just enough credit left
    # for one request if the idle hold is given back
    service._carried_holds = None
    hold = records(database_url, user.user_id)[0]["hold"]
    spend = balance(database_url, user.user_id)["balance"] - held["amount"] - hold + D("0.00000001")
    await ledger.credit(user.user_id, -spend, "adjustment", f"test-spend-{user.user_id}")
    assert (await ask(api, user, MODEL, "one", max_tokens=1000)).status_code == 402  # the idle hold counts
    backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                         "WHERE request_id = %s", held["request_id"])
    r = await ask(api, user, MODEL, "one", max_tokens=1000)
    assert r.status_code == 200, r.text  # past its time, it was given back to this reserve
    assert held["request_id"] not in [x["request_id"] for x in direct(
        database_url, "SELECT request_id FROM reservations WHERE user_id = %s", user.user_id)]
    await books_balance(user.user_id)


async def test_concurrent_requests_never_share_a_carried_hold(
        api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "one")).status_code == 200
    [held] = standing(database_url, user.user_id)
    responses = await asyncio.gather(*[ask(api, user, MODEL, "one [[ttfb:0.2]]") for _ in range(3)])
    assert [r.status_code for r in responses] == [200, 200, 200]
    later = records(database_url, user.user_id)[1:]
    assert len(later) == 3
    assert sorted(r["hold"] == held["amount"] for r in later) == [False, False, True]  # one used it
    await books_balance(user.user_id)


async def test_no_hold_is_carried_without_the_credit_for_it(
        api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "one", max_tokens=1000)).status_code == 200
    hold = records(database_url, user.user_id)[0]["hold"]
    service._carried_holds = None
    for r in standing(database_url, user.user_id):
        await ledger.cancel(r["request_id"])
    left = balance(database_url, user.user_id)["balance"]
    await ledger.credit(user.user_id, -(left - to_credit(hold * D("1.1"))), "adjustment", f"test-spend-{user.user_id}")
    assert (await ask(api, user, MODEL, "one", max_tokens=1000)).status_code == 200
    assert standing(database_url, user.user_id) == []  # 1.25 x the hold did not fit: nothing carried
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"]) == (0, 0)
    await books_balance(user.user_id)


async def test_a_long_request_marks_the_carried_hold_it_uses(
        api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "one")).status_code == 200
    [held] = standing(database_url, user.user_id)
    slow = asyncio.ensure_future(ask(api, user, MODEL, "one [[ttfb:2]]"))
    marked = await wait_for(lambda: direct(
        database_url, "SELECT * FROM reservations WHERE request_id = %s AND upstream_at IS NOT NULL",
        held["request_id"]))
    # no longer idle (never given back as such), and it names the request that uses it
    assert marked[0]["standing_until"] is None and marked[0]["used_by"]
    assert (await slow).status_code == 200
    assert records(database_url, user.user_id)[1]["request_id"] == marked[0]["used_by"]
    await books_balance(user.user_id)


# ------------------------------------------------------------------ the ledger's statements directly
def _record(user: Any, request_id: str, charge: str) -> ledger.UsageRecord:
    return ledger.UsageRecord(request_id=request_id, user_id=user.user_id, api_key_id=user.key_id,
                              model_requested=MODEL, status="ok", charge=D(charge))


async def _carry_one(user: Any, database_url: str) -> str:
    await ledger.reserve(user.user_id, f"req-a-{user.user_id}", D("0.5"), api_key_id=user.key_id, model=MODEL)
    carry = ledger.Carry(request_id=f"hold_{user.user_id.hex}", hold=D("0.5"), seconds=30)
    result = await ledger.settle(_record(user, f"req-a-{user.user_id}", "0.1"), carry=carry)
    assert result.settled and result.carried_tier == "pro"
    b = balance(database_url, user.user_id)  # the settle returns the balance row as it left it
    assert (result.balance, result.reserved) == (b["balance"], b["reserved"]) == (D("4.9"), D("0.5"))
    return carry.request_id


async def test_a_settle_whose_carry_is_refused_returns_the_balance_row_as_it_left_it(
        make_user: Any, database_url: str) -> None:
    user = await make_user("1")
    await ledger.reserve(user.user_id, f"req-r-{user.user_id}", D("0.1"), api_key_id=user.key_id, model=MODEL)
    carry = ledger.Carry(request_id=f"hold_{user.user_id.hex}", hold=D("0.3"), seconds=30)  # 4 x 0.3 > 0.9 left
    result = await ledger.settle(_record(user, f"req-r-{user.user_id}", "0.1"), carry=carry)
    assert result.settled and result.carried_tier is None
    assert (result.balance, result.reserved) == (D("0.9"), D("0"))
    assert standing(database_url, user.user_id) == []
    await books_balance(user.user_id)


@pytest.mark.parametrize(("quota", "max_in_flight", "carried"), [
    (5, None, True), (4, None, False),    # 4 requests of the monthly quota left after the settle, with it
    (None, 2, True), (None, 1, False),    # in flight at most three quarters of the cap, with it
])
async def test_a_carried_hold_is_opened_only_under_the_quota_and_in_flight_rules(
        make_user: Any, database_url: str, quota: int | None, max_in_flight: int | None, carried: bool) -> None:
    user = await make_user("5")
    request_id = f"req-q-{user.user_id}"
    await ledger.reserve(user.user_id, request_id, D("0.1"), api_key_id=user.key_id, model=MODEL)
    carry = ledger.Carry(request_id=f"hold_{user.user_id.hex}", hold=D("0.1"), seconds=30,
                         quotas={"pro": quota}, max_in_flight=max_in_flight)
    result = await ledger.settle(_record(user, request_id, "0.05"), carry=carry)
    assert result.settled and (result.carried_tier == "pro") is carried
    b = balance(database_url, user.user_id)
    assert (result.balance, result.reserved) == (b["balance"], b["reserved"])
    assert (b["balance"], b["reserved"], b["in_flight"], b["period_requests"]) \
        == (D("4.95"), D("0.1") if carried else 0, int(carried), 1 + carried)
    assert len(standing(database_url, user.user_id)) == int(carried)
    await books_balance(user.user_id)


@pytest.mark.parametrize(("cap", "carried"), [("1.0", True), ("0.84", False)])  # 4 x 0.2 in 0.95 / 0.79 left
async def test_a_carried_hold_on_a_capped_key_needs_the_keys_headroom_and_joins_its_reserved(
        make_user: Any, database_url: str, cap: str, carried: bool) -> None:
    user = await make_user("5")
    await db.execute("UPDATE api_keys SET spend_cap = %s, scope = 'inference' WHERE id = %s", (D(cap), user.key_id))
    request_id = f"req-k-{user.user_id}"
    await ledger.reserve(user.user_id, request_id, D("0.1"), api_key_id=user.key_id, model=MODEL)
    carry = ledger.Carry(request_id=f"hold_{user.user_id.hex}", hold=D("0.2"), seconds=30)
    result = await ledger.settle(_record(user, request_id, "0.05"), carry=carry)
    assert result.settled and (result.carried_tier is not None) is carried
    [key] = direct(database_url, "SELECT spent, reserved FROM api_keys WHERE id = %s", user.key_id)
    assert (key["spent"], key["reserved"]) == (D("0.05"), D("0.2") if carried else 0)
    b = balance(database_url, user.user_id)
    assert (result.balance, result.reserved) == (b["balance"], b["reserved"]) == (D("4.95"), key["reserved"])
    assert [d for d in await key_reservation_drift() if d["id"] == user.key_id] == []
    await books_balance(user.user_id)


async def test_a_request_whose_idle_hold_was_given_back_under_it_is_still_charged_once(
        make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    hold_id = await _carry_one(user, database_url)
    # its mark was lost (a database outage) and the hold went past its time: given back as idle
    backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                         "WHERE request_id = %s", hold_id)
    assert await ledger.release_idle_standing() >= 1
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"]) == (0, 0)
    result = await ledger.settle(_record(user, f"req-b-{user.user_id}", "0.2"), reservation=hold_id)
    assert result.settled and result.overrun  # charged all the same, beyond a hold of 0
    assert balance(database_url, user.user_id)["balance"] == D("5") - D("0.1") - D("0.2")
    again = await ledger.settle(_record(user, f"req-b-{user.user_id}", "0.2"), reservation=hold_id)
    assert not again.settled  # a retried settle changes nothing
    assert balance(database_url, user.user_id)["balance"] == D("4.7")
    await books_balance(user.user_id)


@pytest.mark.parametrize(("status", "charge", "requests"), [("ok", "0.2", 2), ("failed", "0", 1)])
async def test_a_request_whose_idle_hold_was_given_back_under_it_counts_as_one_finished_request(
        make_user: Any, database_url: str, status: str, charge: str, requests: int) -> None:
    user = await make_user("5")
    hold_id = await _carry_one(user, database_url)  # reserve + carry: 2 requests of the quota, 1 in flight
    backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                         "WHERE request_id = %s", hold_id)
    assert await ledger.release_idle_standing() >= 1  # gives its quota request and in-flight slot back
    assert (balance(database_url, user.user_id)["period_requests"], balance(database_url, user.user_id)["in_flight"]) \
        == (1, 0)
    record = _record(user, f"req-c-{user.user_id}", charge)
    record.status = status
    result = await ledger.settle(record, reservation=hold_id)
    assert result.settled and result.hold == 0
    b = balance(database_url, user.user_id)
    # the request is over (in flight unchanged) and counted again unless failed (a failed one never counts)
    assert (b["balance"], b["reserved"], b["in_flight"], b["period_requests"]) \
        == (D("4.9") - D(charge), 0, 0, requests)
    assert (result.balance, result.reserved) == (b["balance"], b["reserved"])
    [rec] = [r for r in records(database_url, user.user_id) if r["request_id"] == record.request_id]
    assert (rec["status"], rec["hold"], rec["charge"]) == (status, 0, D(charge))
    assert direct(database_url, "SELECT count(*) AS n FROM ledger_entries WHERE reference = %s",
                  record.request_id)[0]["n"] == (1 if D(charge) > 0 else 0)
    assert direct(database_url, "SELECT * FROM reservations WHERE user_id = %s", user.user_id) == []
    await books_balance(user.user_id)


async def test_a_used_carried_hold_is_closed_under_its_own_id_and_nothing_is_left_open(
        make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    hold_id = await _carry_one(user, database_url)
    carry = ledger.Carry(request_id=f"hold2_{user.user_id.hex}", hold=D("0.5"), seconds=30)
    result = await ledger.settle(_record(user, f"req-d-{user.user_id}", "0.3"), reservation=hold_id, carry=carry)
    assert result.settled and result.hold == D("0.5") and result.carried_tier == "pro"
    rows = direct(database_url, "SELECT request_id, amount FROM reservations WHERE user_id = %s", user.user_id)
    assert rows == [{"request_id": carry.request_id, "amount": D("0.5")}]  # only the new carried hold
    [rec] = [r for r in records(database_url, user.user_id) if r["request_id"] == f"req-d-{user.user_id}"]
    assert (rec["hold"], rec["charge"]) == (D("0.5"), D("0.3"))
    b = balance(database_url, user.user_id)
    assert (result.balance, result.reserved) == (b["balance"], b["reserved"]) == (D("4.6"), D("0.5"))
    assert (b["in_flight"], b["period_requests"]) == (1, 3)
    await books_balance(user.user_id)


async def test_the_sweeper_gives_back_idle_holds_and_charges_used_orphans_under_the_request_id(
        make_user: Any, database_url: str, setting: Any) -> None:
    idle_user, used_user = await make_user("5"), await make_user("5")
    idle = await _carry_one(idle_user, database_url)
    used = await _carry_one(used_user, database_url)
    await ledger.mark_upstream(used, "req-used-1", MODEL)  # a request took it, then its container died
    backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                         "WHERE request_id = %s", idle)
    backdate(database_url, "UPDATE reservations SET created_at = now() - interval '1 hour' WHERE request_id = %s",
           used)
    summary = await sweeper.run({})
    assert summary["idle_holds_released"] >= 1 and "req-used-1" in summary["charged"]
    assert records(database_url, idle_user.user_id)[1:] == []  # given back: no usage record, no charge
    b = balance(database_url, idle_user.user_id)
    assert (b["balance"], b["reserved"], b["in_flight"], b["period_requests"]) == (D("4.9"), 0, 0, 1)
    orphan = records(database_url, used_user.user_id)[1]
    assert (orphan["request_id"], orphan["status"], orphan["charge"]) == ("req-used-1", "orphaned", D("0.5"))
    await books_balance(idle_user.user_id)
    await books_balance(used_user.user_id)


async def test_waves_of_concurrent_requests_on_carried_holds_keep_the_books_exact(
        api: Any, carrying: Any, make_user: Any, database_url: str, big_pool: None) -> None:
    user = await make_user("5")
    for _ in range(3):
        responses = await asyncio.gather(*[ask(api, user, MODEL, f"wave {i} [[words:2]]") for i in range(12)])
        assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    rows = records(database_url, user.user_id)
    assert len(rows) == 36 and {r["status"] for r in rows} == {"ok"}
    carried = standing(database_url, user.user_id)
    assert any(r["hold"] != rows[0]["hold"] for r in rows)  # some used carried holds
    b = balance(database_url, user.user_id)
    assert b["balance"] == D("5") - sum(r["charge"] for r in rows)
    assert (b["reserved"], b["in_flight"]) == (sum(c["amount"] for c in carried), len(carried))
    assert len(carried) <= get_settings().carry_per_key  # CARRY_PER_KEY idle ones at most in this container
    await books_balance(user.user_id)


async def test_settles_that_carry_use_and_give_back_holds_under_contention_keep_the_books(
        make_user: Any, database_url: str, big_pool: None) -> None:
    """One user and capped key; 60 requests at once, each on a carried hold when one is free (else a
    reserve), each settle dropping one and carrying one, while idle ones are swept: no deadlock,
    no error, and the books, the key's reserved amount and the counts exact at the end."""
    user = await make_user("50")
    await db.execute("UPDATE api_keys SET spend_cap = 40, scope = 'inference' WHERE id = %s", (user.key_id,))
    free: list[str] = []
    used: list[str] = []

    async def one(i: int) -> None:
        request_id = f"req-{i}-{uuid.uuid4().hex[:8]}"
        await asyncio.sleep(0.002 * (i % 20))  # staggered: later ones find holds the earlier ones carried
        held = free.pop() if free else None
        if held is not None:
            used.append(held)
        if held is None:
            await ledger.reserve(user.user_id, request_id, D("0.2"), api_key_id=user.key_id, model=MODEL,
                                 max_in_flight=200)
        drop = [free.pop()] if len(free) > 2 else []
        carry = ledger.Carry(request_id=f"hold_{uuid.uuid4().hex}", hold=D("0.2"), seconds=30, max_in_flight=200)
        result = await ledger.settle(_record(user, request_id, "0.01"), reservation=held, release=drop, carry=carry)
        assert result.settled
        if result.carried_tier is not None:
            free.append(carry.request_id)

    async def sweep() -> None:
        for _ in range(10):
            await db.execute("UPDATE reservations SET standing_until = now() - interval '1 second' "
                             "WHERE request_id IN (SELECT request_id FROM reservations WHERE user_id = %s "
                             "AND standing_until IS NOT NULL LIMIT 1)", (user.user_id,))
            await ledger.release_idle_standing()
            await asyncio.sleep(0.01)

    for wave in range(3):
        await asyncio.gather(*[one(wave * 20 + i) for i in range(20)], sweep())
    assert len(used) >= 10  # many ran on carried holds
    rows = records(database_url, user.user_id)
    assert len(rows) == 60 and sum(r["charge"] for r in rows) == D("0.6")
    assert balance(database_url, user.user_id)["balance"] == D("49.4")
    await books_balance(user.user_id)
    assert [d for d in await key_reservation_drift() if d["id"] == user.key_id] == []


@pytest.mark.parametrize("capped", [True, False])
async def test_settles_charge_a_capped_keys_row_and_never_write_an_uncapped_one(
        make_user: Any, database_url: str, capped: bool) -> None:
    """Migration 0015: the settles read whether the key is capped with the reservation they close;
    a capped key's ``spent``/``reserved`` move as before, an uncapped key's row is never written."""
    user = await make_user("5")
    if capped:
        await db.execute("UPDATE api_keys SET spend_cap = 100, scope = 'inference' WHERE id = %s", (user.key_id,))
    [before] = direct(database_url, "SELECT xmin::text AS xmin FROM api_keys WHERE id = %s", user.key_id)
    hold_id = await _carry_one(user, database_url)  # reserve, then a settle that carries a hold
    result = await ledger.settle(_record(user, f"req-b-{user.user_id}", "0.2"), reservation=hold_id)  # uses it
    assert result.settled and result.hold == D("0.5")
    plain = f"req-c-{user.user_id}"
    await ledger.reserve(user.user_id, plain, D("0.25"), api_key_id=user.key_id, model=MODEL)
    assert (await ledger.settle(_record(user, plain, "0.05"))).settled  # the plain settle (mlp_settle)
    [key] = direct(database_url, "SELECT xmin::text AS xmin, spent, reserved FROM api_keys WHERE id = %s",
                   user.key_id)
    if capped:
        assert (key["spent"], key["reserved"]) == (D("0.35"), 0) and key["xmin"] != before["xmin"]
    else:
        assert (key["spent"], key["reserved"], key["xmin"]) == (0, 0, before["xmin"])
    assert balance(database_url, user.user_id)["balance"] == D("4.65")
    assert [d for d in await key_reservation_drift() if d["id"] == user.key_id] == []
    await books_balance(user.user_id)


async def test_a_request_on_a_capped_key_whose_idle_hold_was_given_back_is_charged_on_the_key(
        make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    await db.execute("UPDATE api_keys SET spend_cap = 100, scope = 'inference' WHERE id = %s", (user.key_id,))
    hold_id = await _carry_one(user, database_url)
    backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                         "WHERE request_id = %s", hold_id)
    assert await ledger.release_idle_standing() >= 1
    result = await ledger.settle(_record(user, f"req-b-{user.user_id}", "0.2"), reservation=hold_id)
    assert result.settled and result.overrun
    [key] = direct(database_url, "SELECT spent, reserved FROM api_keys WHERE id = %s", user.key_id)
    assert (key["spent"], key["reserved"]) == (D("0.3"), 0)
    assert [d for d in await key_reservation_drift() if d["id"] == user.key_id] == []
    await books_balance(user.user_id)


async def _stop(app: Any) -> list[str]:
    """The ASGI lifespan as uvicorn drives it when the process is stopped gracefully."""
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


async def test_a_process_that_stops_gives_back_the_holds_it_carried(
        app: Any, api: Any, carrying: Any, make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    other = await make_user("5")
    for who in (user, user, other):
        assert (await ask(api, who, MODEL, "one [[words:3]]")).status_code == 200
    assert len(standing(database_url, user.user_id)) == 1 and len(standing(database_url, other.user_id)) == 1
    assert balance(database_url, user.user_id)["period_requests"] == 3  # two requests and the idle hold

    assert await _stop(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    for who, requests in ((user, 2), (other, 1)):
        assert standing(database_url, who.user_id) == []
        b = balance(database_url, who.user_id)
        # released unbilled: no credit held, nothing in flight, the quota request given back
        assert (b["reserved"], b["in_flight"], b["period_requests"]) == (0, 0, requests)
        assert b["balance"] == D("5") - sum(r["charge"] for r in records(database_url, who.user_id))
        await books_balance(who.user_id)
    assert len(service._carried()) == 0


async def test_a_stop_that_cannot_reach_the_database_leaves_the_holds_to_the_sweeper(
        app: Any, api: Any, carrying: Any, make_user: Any, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user("5")
    assert (await ask(api, user, MODEL, "one [[words:3]]")).status_code == 200
    [held] = standing(database_url, user.user_id)

    reachable = os.environ["DATABASE_URL"]
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nope")  # the database gone
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "1")
    reset_settings()
    await db.close_pool()
    try:
        assert await _stop(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]  # the stop goes on
    finally:
        monkeypatch.setenv("DATABASE_URL", reachable)
        monkeypatch.delenv("DB_CONNECT_TIMEOUT_S")
        reset_settings()
        await db.close_pool()
    assert [r["request_id"] for r in standing(database_url, user.user_id)] == [held["request_id"]]
    backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                           "WHERE request_id = %s", held["request_id"])
    assert await ledger.release_idle_standing() >= 1  # the sweeper's pass
    assert standing(database_url, user.user_id) == []
    await books_balance(user.user_id)
