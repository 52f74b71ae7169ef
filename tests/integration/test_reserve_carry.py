"""A reserve that also opens a carried hold (migration 0016, ``mlp_reserve_carry``; docs/money.md
"Carried holds"): the hold is opened in the reserve's transaction under exactly a settle's carry
rules, counted as any reservation, and given back unbilled by the sweeper, a refused reserve, a
graceful stop, or a caller that leaves. Real Postgres; the books are checked after every scenario."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway import db
from gateway.account.keys import key_reservation_drift
from gateway.chat import service
from gateway.errors import InsufficientCredits, RateLimited
from gateway.money import combine, ledger
from tests.integration.test_carried_holds import _stop, backdate, books_balance, standing
from tests.integration.test_chat_money import ask, balance, direct, records
from tests.integration.test_ledger_locks import blocked_by, locked
from tests.integration.test_money_combine import queued, waits_on
from tests.support.apps import function_fixtures

pytestmark = pytest.mark.integration
app, api = function_fixtures("functions/query/app.py", app="app", client="api")
D = Decimal
MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def carrying(setting: Any) -> Iterator[Any]:
    """Carried holds on, a fresh store, settled before the response (test_carried_holds' fixture)."""
    setting(carry_holds="true", aws_lambda_function_name="QueryStreamFunction")
    service._carried_holds = None
    yield setting
    service._carried_holds = None


def rid() -> str:
    return "req_" + uuid.uuid4().hex


def carry(hold: str = "0.5", seconds: int = 30) -> ledger.Carry:
    return ledger.Carry(request_id="hold_" + uuid.uuid4().hex, hold=D(hold), seconds=seconds)


def record(user: Any, request_id: str, charge: str) -> ledger.UsageRecord:
    return ledger.UsageRecord(request_id=request_id, user_id=user.user_id, api_key_id=user.key_id,
                              model_requested=MODEL, status="ok", charge=D(charge))


async def test_a_reserve_opens_a_carried_hold_counted_as_any_reservation(make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    request_id, c = rid(), carry("0.5")
    r = await ledger.reserve(user.user_id, request_id, D("0.4"), api_key_id=user.key_id, model=MODEL, carry=c)
    assert (r.request_id, r.amount, r.tier, r.carried_tier) == (request_id, D("0.4"), "pro", "pro")
    [held] = standing(database_url, user.user_id)
    assert (held["request_id"], held["amount"], held["api_key_id"], held["model"]) == (
        c.request_id, D("0.5"), user.key_id, MODEL)
    assert held["upstream_at"] is None and held["used_by"] is None
    b = balance(database_url, user.user_id)
    assert (b["balance"], b["reserved"], b["in_flight"], b["period_requests"]) == (D("5"), D("0.9"), 2, 2)
    await books_balance(user.user_id)
    # the request is settled as always; the next one uses the hold and is charged once, under its own id
    assert (await ledger.settle(record(user, request_id, "0.1"))).settled
    nxt = rid()
    result = await ledger.settle(record(user, nxt, "0.2"), reservation=c.request_id)
    assert result.settled and result.hold == D("0.5") and not result.overrun
    assert [(x["request_id"], x["hold"], x["charge"]) for x in records(database_url, user.user_id)] == [
        (request_id, D("0.4"), D("0.1")), (nxt, D("0.5"), D("0.2"))]
    b = balance(database_url, user.user_id)
    assert (b["balance"], b["reserved"], b["in_flight"], b["period_requests"]) == (D("4.7"), 0, 0, 2)
    await books_balance(user.user_id)


async def test_a_refused_reserve_opens_nothing(make_user: Any, database_url: str) -> None:
    user = await make_user("0.3")
    with pytest.raises(InsufficientCredits):
        await ledger.reserve(user.user_id, rid(), D("0.4"), api_key_id=user.key_id, model=MODEL, carry=carry("0.01"))
    assert standing(database_url, user.user_id) == []
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"], b["period_requests"]) == (0, 0, 0)
    await books_balance(user.user_id)


@pytest.mark.parametrize("credit, opened", [("2.4", True), ("2.39999999", False)])
async def test_the_hold_needs_credit_for_four_after_the_reserve(
        make_user: Any, database_url: str, credit: str, opened: bool) -> None:
    user = await make_user(credit)
    r = await ledger.reserve(user.user_id, rid(), D("0.4"), api_key_id=user.key_id, model=MODEL, carry=carry("0.5"))
    assert (r.carried_tier is not None) is opened  # 2.4 - 0.4 = 2.0 = 4 x 0.5
    assert len(standing(database_url, user.user_id)) == int(opened)
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"], b["period_requests"]) == (
        (D("0.9"), 2, 2) if opened else (D("0.4"), 1, 1))
    await books_balance(user.user_id)


async def test_the_hold_is_opened_only_under_the_in_flight_and_quota_rules(make_user: Any, database_url: str) -> None:
    user = await make_user("50")
    # in flight: with the hold at most three quarters of the cap (8: 6)
    opened = []
    for _ in range(4):
        r = await ledger.reserve(user.user_id, rid(), D("0.1"), api_key_id=user.key_id, model=MODEL,
                                 max_in_flight=8, carry=carry("0.1"))
        opened.append(r.carried_tier is not None)
    # 1+1, 3+1, 5+1 = 6 fit; the fourth reserve makes 7: no hold
    assert opened == [True, True, True, False]
    assert balance(database_url, user.user_id)["in_flight"] == 7
    # the in-flight cap counts the idle holds: the eighth request is in, the ninth refused (retryable)
    await ledger.reserve(user.user_id, rid(), D("0.1"), api_key_id=user.key_id, model=MODEL, max_in_flight=8)
    with pytest.raises(RateLimited) as refused:
        await ledger.reserve(user.user_id, rid(), D("0.1"), api_key_id=user.key_id, model=MODEL, max_in_flight=8,
                             carry=carry("0.1"))
    assert getattr(refused.value, "code", None) == "concurrency_limit_exceeded"
    # once past their time, the idle holds are given back to the reserve that needs their room
    for held in standing(database_url, user.user_id):
        backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                               "WHERE request_id = %s", held["request_id"])
    await ledger.reserve(user.user_id, rid(), D("0.1"), api_key_id=user.key_id, model=MODEL, max_in_flight=8)
    assert standing(database_url, user.user_id) == []
    assert balance(database_url, user.user_id)["in_flight"] == 6
    await books_balance(user.user_id)

    # the quota: 4 requests of it left after the reserve (quota 6: the first reserve carries, 2 + 4 = 6)
    other = await make_user("50")
    quotas = {"pro": 6}
    got = [(await ledger.reserve(other.user_id, rid(), D("0.1"), api_key_id=other.key_id, model=MODEL,
                                 quotas=quotas, carry=carry("0.1"))).carried_tier is not None for _ in range(2)]
    assert got == [True, False]  # 1 + 1 counted, then 3 + 4 > 6
    assert balance(database_url, other.user_id)["period_requests"] == 3
    await books_balance(other.user_id)


async def test_a_capped_key_needs_headroom_for_four_and_the_hold_joins_its_reserved(
        make_user: Any, database_url: str) -> None:
    user = await make_user("50")
    await db.execute("UPDATE api_keys SET spend_cap = 2.5, scope = 'inference' WHERE id = %s", (user.key_id,))
    first = await ledger.reserve(user.user_id, rid(), D("0.5"), api_key_id=user.key_id, model=MODEL, carry=carry())
    assert first.carried_tier == "pro"  # 2.5 - 0.5 = 2.0 = 4 x 0.5
    [key] = direct(database_url, "SELECT reserved FROM api_keys WHERE id = %s", user.key_id)
    assert key["reserved"] == D("1.0")
    second = await ledger.reserve(user.user_id, rid(), D("0.5"), api_key_id=user.key_id, model=MODEL, carry=carry())
    assert second.carried_tier is None  # 1.0 of the cap left after it: no room for 4 holds
    [key] = direct(database_url, "SELECT reserved FROM api_keys WHERE id = %s", user.key_id)
    assert key["reserved"] == D("1.5")
    assert [d for d in await key_reservation_drift() if d["id"] == user.key_id] == []
    await books_balance(user.user_id)


async def test_a_reserve_that_carries_locks_the_capped_key_before_the_balance_row(
        make_user: Any, conns: Any, database_url: str) -> None:
    """Waiting for the capped key's row, it holds no lock on the balance row; waiting for the
    balance row, it holds the key: the order of every money function (no deadlock)."""
    user = await make_user("50")
    await db.execute("UPDATE api_keys SET spend_cap = 10, scope = 'inference' WHERE id = %s", (user.key_id,))
    holder, probe = await conns(), await conns(autocommit=True)
    await holder.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (user.key_id,))
    c = carry("0.5")
    task = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("1"), api_key_id=user.key_id, model=MODEL,
                                              carry=c))
    await blocked_by(probe, holder, task)
    assert not await locked(probe, "SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE NOWAIT", user.user_id)
    await holder.execute("UPDATE balances SET updated_at = now() WHERE user_id = %s", (user.user_id,))
    await holder.commit()
    assert (await task).carried_tier == "pro"
    # and the other way round: waiting for the balance row, it holds the key
    holder = await conns()
    await holder.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
    task = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("1"), api_key_id=user.key_id, model=MODEL,
                                              carry=carry("0.5")))
    await blocked_by(probe, holder, task)
    assert await locked(probe, "SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE NOWAIT", user.key_id)
    await holder.rollback()
    await task
    [key] = direct(database_url, "SELECT reserved FROM api_keys WHERE id = %s", user.key_id)
    b = balance(database_url, user.user_id)
    assert key["reserved"] == b["reserved"]  # every reservation of the user is on this key
    assert [d for d in await key_reservation_drift() if d["id"] == user.key_id] == []
    await books_balance(user.user_id)


async def test_idle_holds_a_reserve_opened_are_given_back_by_the_sweeper(make_user: Any, database_url: str) -> None:
    user = await make_user("5")
    request_id, c = rid(), carry("0.5")
    await ledger.reserve(user.user_id, request_id, D("0.4"), api_key_id=user.key_id, model=MODEL, carry=c)
    assert (await ledger.settle(record(user, request_id, "0.1"))).settled
    backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                           "WHERE request_id = %s", c.request_id)
    assert await ledger.release_idle_standing() >= 1
    assert standing(database_url, user.user_id) == []
    b = balance(database_url, user.user_id)  # unbilled: nothing held, nothing in flight, the quota request back
    assert (b["balance"], b["reserved"], b["in_flight"], b["period_requests"]) == (D("4.9"), 0, 0, 1)
    assert len(records(database_url, user.user_id)) == 1
    await books_balance(user.user_id)


async def test_a_crashed_request_on_a_hold_a_reserve_opened_is_charged_by_the_sweeper_once(
        make_user: Any, database_url: str) -> None:
    """The process died after the request on the hold reached the provider (marked): the sweeper
    charges its hold under the request's id; a late settle of it changes nothing."""
    user = await make_user("5")
    first, c = rid(), carry("0.5")
    await ledger.reserve(user.user_id, first, D("0.4"), api_key_id=user.key_id, model=MODEL, carry=c)
    assert (await ledger.settle(record(user, first, "0.1"))).settled
    used_by = rid()
    await ledger.mark_upstream(c.request_id, used_by, MODEL)
    backdate(database_url, "UPDATE reservations SET created_at = now() - interval '30 minutes' "
                           "WHERE request_id = %s", c.request_id)
    closed = [o for o in await ledger.settle_orphans(20) if o.request_id == used_by]
    assert [(o.request_id, o.charged) for o in closed] == [(used_by, D("0.5"))]
    assert not (await ledger.settle(record(user, used_by, "0.2"), reservation=c.request_id)).settled
    rows = records(database_url, user.user_id)
    assert [(x["request_id"], x["status"], x["charge"]) for x in rows] == [
        (first, "ok", D("0.1")), (used_by, "orphaned", D("0.5"))]
    assert balance(database_url, user.user_id)["balance"] == D("4.4")
    await books_balance(user.user_id)


async def test_combined_reserves_that_carry_each_get_their_own_answer(make_user: Any, conns: Any,
                                                                      database_url: str) -> None:
    """Reserves that carry, queued behind a statement of their key in flight, go in one mlp_batch
    ('q' operations) with a plain reserve and a refused one: each gets what it would alone."""
    user = await make_user("4")
    holder, probe = await conns(), await conns(autocommit=True)
    await holder.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
    before = combine.batches
    first = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("0.1"), api_key_id=user.key_id, model=MODEL))
    await waits_on(holder, probe)
    carries = [carry("0.25") for _ in range(3)]
    tasks = [asyncio.create_task(ledger.reserve(user.user_id, rid(), D("0.5"), api_key_id=user.key_id, model=MODEL,
                                                carry=c)) for c in carries]
    plain = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("0.1"), api_key_id=user.key_id, model=MODEL))
    refused = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("9"), api_key_id=user.key_id, model=MODEL,
                                                 carry=carry("0.25")))
    await queued(6)
    await holder.rollback()
    await first
    got = [await t for t in tasks]
    assert (await plain).carried_tier is None
    with pytest.raises(InsufficientCredits):
        await refused
    assert combine.batches == before + 1
    # 4 - 0.1 = 3.9; after each reserve + hold: 3.4 >= 1 (opened, 3.15), 2.65 (opened, 2.4), 1.9 (opened, 1.65)
    assert [r.carried_tier for r in got] == ["pro", "pro", "pro"]
    held = {r["request_id"] for r in standing(database_url, user.user_id)}
    assert held == {c.request_id for c in carries}
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"]) == (D("2.45"), 8)
    await books_balance(user.user_id)


async def test_a_caller_that_leaves_leaves_neither_its_reservation_nor_the_hold_it_carried(
        make_user: Any, conns: Any, database_url: str) -> None:
    """A reserve that carries, cancelled while its combined batch waits in Postgres: once the batch
    has committed, its reservation is cancelled and the hold it opened given back (no one knows it)."""
    user = await make_user("5")
    old = rid()
    await ledger.reserve(user.user_id, old, D("1"), api_key_id=user.key_id, model=MODEL)
    balance_lock, reservation_lock, probe = await conns(), await conns(), await conns(autocommit=True)
    await balance_lock.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
    first = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("0.5"), api_key_id=user.key_id, model=MODEL))
    await waits_on(balance_lock, probe)
    await reservation_lock.execute("SELECT 1 FROM reservations WHERE request_id = %s FOR UPDATE", (old,))
    left_id, c = rid(), carry("0.25")
    settle = asyncio.create_task(ledger.settle(record(user, old, "0.3")))
    left = asyncio.create_task(ledger.reserve(user.user_id, left_id, D("0.2"), api_key_id=user.key_id, model=MODEL,
                                              carry=c))
    await queued(2)
    await balance_lock.rollback()
    await first
    await waits_on(reservation_lock, probe)  # the batch (settle, left) is in flight, waiting for `old`'s row
    left.cancel()
    await reservation_lock.rollback()
    assert (await settle).settled
    with pytest.raises(asyncio.CancelledError):
        await left
    rows: list[dict[str, Any]] = []
    for _ in range(300):  # undone once its batch has answered
        rows = direct(database_url, "SELECT request_id FROM reservations WHERE request_id IN (%s, %s)",
                      left_id, c.request_id)
        if not rows:
            break
        await asyncio.sleep(0.01)
    assert rows == []
    rows = await db.fetchall("SELECT request_id FROM reservations WHERE user_id = %s", (user.user_id,))
    assert {r["request_id"] for r in rows} == {(await first).request_id}
    b = balance(database_url, user.user_id)
    assert (b["balance"], b["reserved"], b["in_flight"], b["period_requests"]) == (D("4.7"), D("0.5"), 1, 2)
    await books_balance(user.user_id)


async def test_many_parallel_reserves_that_carry_against_small_credit_keep_the_books(
        make_user: Any, database_url: str, big_pool: None) -> None:
    """One user and capped key, little credit: 120 requests in waves of 30 at once, each on a carried
    hold when one is free, else a reserve that carries, each settle dropping or carrying one, the
    sweeper releasing idle ones meanwhile; sampled all along: available credit never below zero,
    the key never reserved past its cap, never more in flight than the cap; at the end every
    request is charged exactly once and the books are exact."""
    user = await make_user("3")
    await db.execute("UPDATE api_keys SET spend_cap = 2.5, scope = 'inference' WHERE id = %s", (user.key_id,))
    cap = 12
    free: list[str] = []
    charged: dict[str, Decimal] = {}
    refused = 0
    done = False

    async def one(i: int) -> None:
        nonlocal refused
        request_id = f"req-{i}-{uuid.uuid4().hex[:8]}"
        await asyncio.sleep(0.001 * (i % 7))
        held = free.pop() if free else None
        if held is None:
            c = carry("0.15")
            try:
                r = await ledger.reserve(user.user_id, request_id, D("0.12"), api_key_id=user.key_id, model=MODEL,
                                         max_in_flight=cap, carry=c)
            except (InsufficientCredits, RateLimited):
                refused += 1
                return
            if r.carried_tier is not None:
                free.append(c.request_id)
        await asyncio.sleep(0.001 * (i % 5))
        charge = D("0.01") * (i % 4)
        nxt = carry("0.15") if i % 3 else None
        drop = [free.pop()] if len(free) > 5 else []
        result = await ledger.settle(record(user, request_id, str(charge)), reservation=held, release=drop,
                                     carry=nxt)
        assert result.settled and not result.overrun  # a hold is an upper bound
        charged[request_id] = charge
        if nxt is not None and result.carried_tier is not None:
            free.append(nxt.request_id)

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            while not done:
                cur = await conn.execute(
                    "SELECT b.balance - b.reserved, b.in_flight, k.spend_cap - k.spent - k.reserved FROM balances b "
                    "JOIN api_keys k ON k.user_id = b.user_id WHERE b.user_id = %s AND k.id = %s",
                    (user.user_id, user.key_id))
                available, in_flight, headroom = await cur.fetchone()  # type: ignore[misc]
                assert available >= 0 and headroom >= 0 and in_flight <= cap
                await asyncio.sleep(0.002)

    async def sweep() -> None:
        """A process that forgets a hold (it died) and the sweeper releasing it, meanwhile."""
        for _ in range(8):
            if free:
                backdate(database_url, "UPDATE reservations SET standing_until = now() - interval '1 second' "
                                       "WHERE request_id = %s", free.pop(0))
                await ledger.release_idle_standing()  # (or a concurrent settle or reserve released it first)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        for wave in range(4):
            await asyncio.gather(*[one(wave * 30 + i) for i in range(30)], sweep())
    finally:
        done = True
        await watcher
    assert refused > 0 and len(charged) > 30  # both limits were met, and many requests ran
    rows = records(database_url, user.user_id)
    assert {r["request_id"]: r["charge"] for r in rows} == charged  # each charged once, exactly
    assert balance(database_url, user.user_id)["balance"] == D("3") - sum(charged.values())
    await ledger.release_standing(str(user.user_id), str(user.key_id), free)
    assert standing(database_url, user.user_id) == []
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"]) == (0, 0)
    assert [d for d in await key_reservation_drift() if d["id"] == user.key_id] == []
    await books_balance(user.user_id)


async def test_a_burst_of_one_key_refills_its_holds_from_the_reserves_and_a_stop_gives_them_back(
        app: Any, api: Any, carrying: Any, make_user: Any, database_url: str, big_pool: None) -> None:
    """Through the app (combined statements on; concurrency as on a plain server): the reserves of a
    burst open the key's holds (at most CARRY_PER_KEY) before any of its settles, the next wave runs
    on them, every request is charged once, and a graceful stop gives back every idle hold."""
    user = await make_user("5")
    responses = await asyncio.gather(*[ask(api, user, MODEL, f"burst {i} [[ttfb:0.05]]") for i in range(10)])
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses if r.status_code != 200]
    first_settle = min(r["created_at"] for r in records(database_url, user.user_id))
    held = standing(database_url, user.user_id)
    assert len(held) == 4 and all(h["created_at"] < first_settle for h in held)  # opened by the reserves
    for _ in range(2):
        responses = await asyncio.gather(*[ask(api, user, MODEL, f"burst {i} [[ttfb:0.05]]") for i in range(10)])
        assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses if r.status_code != 200]
    rows = records(database_url, user.user_id)
    assert len(rows) == 30 and {r["status"] for r in rows} == {"ok"}
    reserved_hold = min(r["hold"] for r in rows)
    on_holds = [sum(r["hold"] != reserved_hold for r in rows[10 * w:10 * w + 10]) for w in range(3)]
    assert on_holds == [0, 4, 4], on_holds
    b = balance(database_url, user.user_id)
    assert b["balance"] == D("5") - sum(r["charge"] for r in rows)
    held = standing(database_url, user.user_id)
    assert len(held) == len(service._carried()) and 1 <= len(held) <= 4  # CARRY_PER_KEY
    assert (b["reserved"], b["in_flight"]) == (sum(h["amount"] for h in held), len(held))
    await books_balance(user.user_id)

    assert await _stop(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert standing(database_url, user.user_id) == []
    b = balance(database_url, user.user_id)
    assert (b["reserved"], b["in_flight"], b["period_requests"]) == (0, 0, 30)
    await books_balance(user.user_id)
