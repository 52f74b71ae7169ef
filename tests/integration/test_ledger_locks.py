"""The money functions' row locks (migration 0011): the user's balance row, which every request of
the user writes twice, is the LAST row a reserve or a settle writes, so it is locked for as short a
time as possible; every function takes its locks in one order (reservation, capped key, balance),
so none can deadlock with another; and a reserve refused under the balance row's lock (a
concurrent request took the room after its unlocked pre-check) leaves nothing behind.

Each test holds a lock in a transaction of its own connection, starts a money call that must wait
for it, and looks at what that call has (and has not) locked while it waits. No timing: the waits
are found through ``pg_blocking_pids``, and a probe that must find a row locked uses NOWAIT or
``lock_timeout`` (which only bounds how long the test waits)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway import db
from gateway.errors import InsufficientCredits, RateLimited
from gateway.money import ledger
from gateway.money.ledger import UsageRecord

pytestmark = pytest.mark.integration

D = Decimal


def rid() -> str:
    return "req_" + uuid.uuid4().hex


async def blocked_by(probe: psycopg.AsyncConnection[Any], holder: psycopg.AsyncConnection[Any],
                     task: asyncio.Task[Any], n: int = 1) -> list[int]:
    """The pids of the ``n`` backends waiting for a lock of ``holder``'s (once they wait)."""
    for _ in range(1000):
        cur = await probe.execute("SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                  (holder.info.backend_pid,))
        pids = [r[0] for r in await cur.fetchall()]
        if len(pids) >= n:
            return pids
        assert not task.done(), "the call did not wait for the held lock"
        await asyncio.sleep(0.01)
    raise AssertionError("the money call never waited for the held lock")


async def locked(probe: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> bool:
    """Whether ``sql`` (a FOR UPDATE NOWAIT, or a write under a short lock_timeout) finds its row
    locked by another transaction; whatever it did is rolled back."""
    try:
        async with probe.transaction(force_rollback=True):
            await probe.execute("SET LOCAL lock_timeout = '100ms'")
            await probe.execute(sql, params)
    except psycopg.errors.LockNotAvailable:
        return True
    return False


async def capped_user(make_user: Any, balance: str = "10") -> Any:
    user = await make_user(balance=balance)
    await db.execute("UPDATE api_keys SET spend_cap = 5, scope = 'inference' WHERE id = %s", (user.key_id,))
    return user


def record(request_id: str, user: Any, charge: str) -> UsageRecord:
    return UsageRecord(request_id=request_id, user_id=user.user_id, api_key_id=user.key_id,
                       model_requested="openai/gpt-4o", status="ok", charge=D(charge))


async def test_settle_writes_its_rows_before_it_locks_the_balance_row(make_user, conns) -> None:  # type: ignore[no-untyped-def]
    """A settle waiting for the balance row has already closed the reservation, released the key's
    hold and written its ledger entry and usage record: the balance row is its last write."""
    user = await capped_user(make_user)
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("1"), api_key_id=user.key_id, model="openai/gpt-4o")
    holder, probe = await conns(), await conns(autocommit=True)
    await holder.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
    settling = asyncio.create_task(ledger.settle(record(request_id, user, "0.3")))
    await blocked_by(probe, holder, settling)
    # what the settle holds while it waits: the key row, and its (uncommitted) rows' unique keys
    assert await locked(probe, "SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE NOWAIT", user.key_id)
    assert await locked(probe, "INSERT INTO ledger_entries (user_id, amount, kind, reference) "
                               "VALUES (%s, 0, 'adjustment', %s)", user.user_id, request_id)
    assert await locked(probe, "INSERT INTO usage_records (user_id, request_id, model_requested, status) "
                               "VALUES (%s, %s, 'm', 'ok')", user.user_id, request_id)
    assert not settling.done()
    await holder.rollback()
    result = await settling
    assert result.settled and result.hold == D("1") and result.balance == D("9.7") and result.reserved == 0
    key = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (user.key_id,))
    assert key == {"spent": D("0.3"), "reserved": 0}
    assert not (await ledger.settle(record(request_id, user, "0.3"))).settled  # a replay changes nothing
    assert await ledger.invariant_violations() == []


async def test_reserve_writes_its_reservation_before_it_locks_the_balance_row(make_user, conns) -> None:  # type: ignore[no-untyped-def]
    user = await capped_user(make_user)
    request_id = rid()
    holder, probe = await conns(), await conns(autocommit=True)
    await holder.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
    reserving = asyncio.create_task(ledger.reserve(user.user_id, request_id, D("2"), api_key_id=user.key_id))
    await blocked_by(probe, holder, reserving)
    assert await locked(probe, "SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE NOWAIT", user.key_id)
    assert await locked(probe, "INSERT INTO reservations (request_id, user_id, amount) VALUES (%s, %s, 0)",
                        request_id, user.user_id)
    await holder.rollback()
    assert (await reserving).amount == D("2")
    key = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (user.key_id,))
    assert key == {"spent": 0, "reserved": D("2")}
    state = await ledger.get_balance(user.user_id)
    assert state is not None and state["reserved"] == D("2") and state["in_flight"] == 1
    assert await ledger.invariant_violations() == []


@pytest.mark.parametrize("call", ["reserve", "settle", "cancel"])
async def test_money_calls_lock_the_key_before_the_balance_row(make_user, conns, call: str) -> None:  # type: ignore[no-untyped-def]
    """A reserve, settle or cancel waiting for the capped key's row holds no lock on the balance
    row: a transaction that locks the key and then the balance (the order of all of them) never
    deadlocks with it."""
    user = await capped_user(make_user)
    request_id = rid()
    if call != "reserve":
        await ledger.reserve(user.user_id, request_id, D("1"), api_key_id=user.key_id)
    holder, probe = await conns(), await conns(autocommit=True)
    await holder.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (user.key_id,))
    task = asyncio.create_task(
        ledger.reserve(user.user_id, request_id, D("1"), api_key_id=user.key_id) if call == "reserve"
        else ledger.settle(record(request_id, user, "0.5")) if call == "settle" else ledger.cancel(request_id))
    await blocked_by(probe, holder, task)
    assert not await locked(probe, "SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE NOWAIT", user.user_id)
    # the key-then-balance order itself, while the call waits: no deadlock (it would be detected
    # and one side aborted with DeadlockDetected)
    await holder.execute("UPDATE balances SET updated_at = now() WHERE user_id = %s", (user.user_id,))
    await holder.commit()
    await task
    expected = {"reserve": (D("1"), 1), "settle": (0, 0), "cancel": (0, 0)}[call]
    state = await ledger.get_balance(user.user_id)
    assert state is not None and (state["reserved"], state["in_flight"]) == expected
    assert await ledger.invariant_violations() == []


async def test_a_reserve_refused_under_the_lock_leaves_no_reservation(make_user, conns) -> None:  # type: ignore[no-untyped-def]
    """The pre-check (no lock) passes, a concurrent reserve takes the last slot, the balance UPDATE
    (which decides, under the lock) refuses: the reservation written before it is gone, the key's
    and the balance's counters untouched, and the refusal worded as usual."""
    user = await capped_user(make_user)
    first, second = rid(), rid()
    holder, probe = await conns(), await conns(autocommit=True)
    cur = await holder.execute(
        "SELECT request_id FROM mlp_reserve(%s, %s, 1, %s, '{}', -1, %s, 'm', 1)",
        (user.user_id, first, ledger.period_start(), user.key_id))
    assert await cur.fetchone() == (first,)  # holds the key and the balance row, in_flight 1: not committed
    reserving = asyncio.create_task(ledger.reserve(user.user_id, second, D("1"), max_in_flight=1))  # no key
    await blocked_by(probe, holder, reserving)
    assert await locked(probe, "INSERT INTO reservations (request_id, user_id, amount) VALUES (%s, %s, 0)",
                        second, user.user_id)  # its reservation is written, waiting for the decision
    await holder.commit()
    with pytest.raises(RateLimited) as refused:
        await reserving
    assert getattr(refused.value, "code", None) == "concurrency_limit_exceeded"
    assert await db.fetchone("SELECT 1 FROM reservations WHERE request_id = %s", (second,)) is None
    state = await ledger.get_balance(user.user_id)
    assert state is not None and state["reserved"] == D("1") and state["in_flight"] == 1
    assert state["period_requests"] == 1
    key = await db.fetchone("SELECT reserved FROM api_keys WHERE id = %s", (user.key_id,))
    assert key == {"reserved": D("1")}
    assert (await ledger.settle(record(first, user, "0.25"))).settled
    assert await ledger.invariant_violations() == []


async def test_reserve_and_settle_of_one_user_under_contention_keep_the_books(make_user, big_pool) -> None:  # type: ignore[no-untyped-def]
    """Many concurrent reserve + settle pairs of one user and one capped key, with holds that do
    not all fit (the lock refuses some after their pre-check passed): every invariant holds."""
    user = await make_user(balance="3")
    await db.execute("UPDATE api_keys SET spend_cap = 2.5, scope = 'inference' WHERE id = %s", (user.key_id,))
    outcomes: list[str] = []

    async def one(i: int) -> None:
        request_id = rid()
        try:
            await ledger.reserve(user.user_id, request_id, D("0.4"), api_key_id=user.key_id, max_in_flight=6)
        except (RateLimited, InsufficientCredits) as exc:  # a refusal: which one is counted below
            outcomes.append(type(exc).__name__)
            return
        await asyncio.sleep(0)
        result = await ledger.settle(record(request_id, user, "0.01" if i % 3 else "0"))
        assert result.settled and result.hold == D("0.4")
        outcomes.append("settled")

    await asyncio.gather(*[one(i) for i in range(60)])
    assert outcomes.count("settled") >= 1 and set(outcomes) <= {"settled", "RateLimited", "InsufficientCredits"}
    state = await ledger.get_balance(user.user_id)
    assert state is not None and state["reserved"] == 0 and state["in_flight"] == 0
    key = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (user.key_id,))
    assert key is not None and key["reserved"] == 0
    usage_sum = await db.fetchone("SELECT COALESCE(sum(charge), 0) AS s, count(*) AS n FROM usage_records "
                                  "WHERE user_id = %s", (user.user_id,))
    assert usage_sum is not None and usage_sum["n"] == outcomes.count("settled")
    assert key["spent"] == usage_sum["s"] and state["balance"] == D("3") - usage_sum["s"]
    assert await db.fetchone("SELECT count(*) AS n FROM reservations WHERE user_id = %s", (user.user_id,)) == {"n": 0}
    assert await ledger.invariant_violations() == []
