"""Money statements of one user and key combined into one transaction (``gateway.money.combine``,
migration 0013's ``mlp_batch``): while one is in flight, the others of the group wait in the
process and go together; each caller gets what its own statement would have given (a row, no row,
or its own error), the books stay exact, and a caller that leaves never leaves a hold behind.

To combine deterministically, a test transaction holds the user's balance row (or a reservation
row) so that the first statement waits in Postgres while the next ones queue in the process; the
waits are found through ``pg_blocking_pids`` (no timing)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway import db
from gateway.errors import InsufficientCredits
from gateway.money import combine, ledger
from gateway.money.ledger import UsageRecord

pytestmark = pytest.mark.integration

D = Decimal


def rid() -> str:
    return "req_" + uuid.uuid4().hex


def record(request_id: str, user: Any, charge: str) -> UsageRecord:
    return UsageRecord(request_id=request_id, user_id=user.user_id, api_key_id=user.key_id,
                       model_requested="openai/gpt-4o", status="ok", charge=D(charge))


async def waits_on(holder: psycopg.AsyncConnection[Any], probe: psycopg.AsyncConnection[Any], n: int = 1) -> None:
    """Until ``n`` backends wait for a lock ``holder`` holds."""
    for _ in range(1000):
        cur = await probe.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                  (holder.info.backend_pid,))
        row = await cur.fetchone()
        if row is not None and row[0] >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing waited for the held lock")


async def queued(n: int) -> None:
    """Let ``n`` tasks started just now reach their queue (in-process: a few loop turns)."""
    for _ in range(n + 5):
        await asyncio.sleep(0)


async def test_concurrent_statements_of_one_user_are_combined_and_keep_the_books(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="5")
    before = combine.batches

    async def one(i: int) -> str:
        request_id = rid()
        await ledger.reserve(user.user_id, request_id, D("0.05"), api_key_id=user.key_id, max_in_flight=64)
        await asyncio.sleep(0)
        result = await ledger.settle(record(request_id, user, "0.01" if i % 2 else "0"))
        assert result.settled and result.hold == D("0.05")
        return request_id

    done = await asyncio.gather(*[one(i) for i in range(40)])
    assert len(set(done)) == 40
    assert combine.batches > before  # the default pool of 2: most statements went together
    state = await ledger.get_balance(user.user_id)
    assert state is not None and state["reserved"] == 0 and state["in_flight"] == 0
    assert state["balance"] == D("5") - 20 * D("0.01")
    n = await db.fetchone("SELECT count(*) AS n FROM usage_records WHERE user_id = %s", (user.user_id,))
    assert n == {"n": 40}
    assert await ledger.invariant_violations() == []


async def test_each_combined_statement_gets_its_own_answer(make_user, conns) -> None:  # type: ignore[no-untyped-def]
    """In one batch: a reserve that fits, one refused for credit (no row: worded as alone), one
    whose request id is taken (its own error, rolled back alone) and a settle, each answered as if
    sent alone; the others commit."""
    user = await make_user(balance="3")
    settled_id, dup_id = rid(), rid()
    await ledger.reserve(user.user_id, settled_id, D("1"), api_key_id=user.key_id)
    await ledger.reserve(user.user_id, dup_id, D("0.1"), api_key_id=user.key_id)
    lock, probe = await conns(), await conns(autocommit=True)
    await lock.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
    first = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("0.5"), api_key_id=user.key_id))
    await waits_on(lock, probe)
    before = combine.batches
    fits_id = rid()
    fits = asyncio.create_task(ledger.reserve(user.user_id, fits_id, D("0.2"), api_key_id=user.key_id))
    too_big = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("50"), api_key_id=user.key_id))
    dup = asyncio.create_task(ledger.reserve(user.user_id, dup_id, D("0.1"), api_key_id=user.key_id))
    settle = asyncio.create_task(ledger.settle(record(settled_id, user, "0.4")))
    await queued(4)
    assert not any(t.done() for t in (first, fits, too_big, dup, settle))
    await lock.rollback()
    assert (await first).amount == D("0.5")
    assert (await fits).request_id == fits_id
    with pytest.raises(InsufficientCredits):
        await too_big
    with pytest.raises(psycopg.errors.UniqueViolation):
        await dup
    result = await settle
    assert result.settled and result.hold == D("1") and result.charge == D("0.4")
    assert combine.batches == before + 1
    state = await ledger.get_balance(user.user_id)
    # open: dup_id's 0.1 (its first reserve), 0.5 and 0.2
    assert state is not None and state["balance"] == D("2.6") and state["reserved"] == D("0.8")
    assert state["in_flight"] == 3
    assert await ledger.invariant_violations() == []


async def test_a_caller_that_leaves_leaves_no_hold(make_user, conns) -> None:  # type: ignore[no-untyped-def]
    """A waiting reserve cancelled before it is sent is never sent; one cancelled while its batch
    runs is undone once the batch has committed (nothing would ever settle it)."""
    user = await make_user(balance="3")
    old = rid()
    await ledger.reserve(user.user_id, old, D("1"), api_key_id=user.key_id)
    balance_lock, reservation_lock, probe = await conns(), await conns(), await conns(autocommit=True)
    await balance_lock.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (user.user_id,))
    first = asyncio.create_task(ledger.reserve(user.user_id, rid(), D("0.5"), api_key_id=user.key_id))
    await waits_on(balance_lock, probe)
    # queued behind it: the settle of `old` (whose reservation row the batch locks first) and two reserves
    await reservation_lock.execute("SELECT 1 FROM reservations WHERE request_id = %s FOR UPDATE", (old,))
    never_sent_id, left_id = rid(), rid()
    never_sent = asyncio.create_task(ledger.reserve(user.user_id, never_sent_id, D("0.1"), api_key_id=user.key_id))
    settle = asyncio.create_task(ledger.settle(record(old, user, "0.3")))
    left = asyncio.create_task(ledger.reserve(user.user_id, left_id, D("0.2"), api_key_id=user.key_id))
    await queued(3)
    never_sent.cancel()
    await balance_lock.rollback()
    await first
    await waits_on(reservation_lock, probe)  # the batch (settle, left) is in flight, waiting for `old`'s row
    left.cancel()
    await reservation_lock.rollback()
    assert (await settle).settled
    with pytest.raises(asyncio.CancelledError):
        await left
    with pytest.raises(asyncio.CancelledError):
        await never_sent
    for _ in range(200):  # the undo of `left` runs once its batch has answered
        if await db.fetchone("SELECT 1 AS x FROM reservations WHERE request_id = %s", (left_id,)) is None:
            break
        await asyncio.sleep(0.01)
    rows = await db.fetchall("SELECT request_id FROM reservations WHERE user_id = %s", (user.user_id,))
    assert {r["request_id"] for r in rows} == {(await first).request_id}
    state = await ledger.get_balance(user.user_id)
    assert state is not None and state["reserved"] == D("0.5") and state["in_flight"] == 1
    assert state["balance"] == D("2.7")
    assert await ledger.invariant_violations() == []


async def test_mlp_batch_isolates_an_unknown_operation(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="1")
    request_id = rid()
    op = ledger._reserve_op((str(user.user_id).encode(), request_id.encode(), b"0.25", b"2026-12-01", b"{}", b"-1",
                             str(user.key_id).encode(), b"m", None))
    rows = await db.call_all(combine.BATCH, (f'[["x"],{op}]'.encode(),))
    assert rows[0][0] == b"0" and rows[0][1] is None and rows[0][2] == b"22023"
    assert rows[1][0] == b"1" and rows[1][2] is None and rows[1][1] is not None
    assert (await ledger.get_balance(user.user_id) or {})["reserved"] == D("0.25")
    assert await ledger.cancel(request_id)
    assert await ledger.invariant_violations() == []


async def test_mlp_batch_with_a_failing_operation_applies_every_other_one_exactly_once(make_user) -> None:  # type: ignore[no-untyped-def]
    """Migration 0015 runs a batch in one subtransaction and, when an operation raises, runs it again
    one subtransaction per operation: the operations before and after the failing one take effect
    once, each with its own answer."""
    user = await make_user(balance="1")
    first, second = rid(), rid()

    def reserve_op(request_id: str) -> str:
        return ledger._reserve_op((str(user.user_id).encode(), request_id.encode(), b"0.25",
                                   ledger.period_start().isoformat().encode(), b"{}", b"-1",
                                   str(user.key_id).encode(), b"m", None))

    settle_op = ledger._settle_op((ledger.record_json(record(first, user, "0.1")).encode(),
                                   ledger.period_start().isoformat().encode(), b"f", b"d"))
    ops = f'[{reserve_op(first)},{settle_op},["x"],{reserve_op(second)}]'
    rows = await db.call_all(combine.BATCH, (ops.encode(),))
    assert [r[0] for r in rows] == [b"0", b"1", b"2", b"3"]
    assert rows[0][1] is not None and rows[0][2] is None
    assert rows[1][1] is not None and rows[1][2] is None  # settled: [balance, reserved, hold, ledger_rows]
    assert rows[2][1] is None and rows[2][2] == b"22023"
    assert rows[3][1] is not None and rows[3][2] is None
    state = await ledger.get_balance(user.user_id)
    assert state is not None
    assert (state["balance"], state["reserved"], state["in_flight"], state["period_requests"]) == (
        D("0.9"), D("0.25"), 1, 2)
    ledger_rows = await db.fetchall("SELECT amount FROM ledger_entries WHERE reference = %s", (first,))
    usage_rows = await db.fetchall("SELECT charge FROM usage_records WHERE request_id = %s", (first,))
    assert [r["amount"] for r in ledger_rows] == [D("-0.1")] and [r["charge"] for r in usage_rows] == [D("0.1")]
    assert await ledger.cancel(second)
    assert await ledger.invariant_violations() == []


async def test_mlp_batch_answers_every_operation_in_order(make_user) -> None:  # type: ignore[no-untyped-def]
    """Nothing raises: the batch's one subtransaction returns each operation's own row, a refusal as
    no row, in the operations' order."""
    user = await make_user(balance="0.5")
    ids = [rid() for _ in range(3)]
    ops = ",".join(ledger._reserve_op((str(user.user_id).encode(), i.encode(), b"0.25",
                                       ledger.period_start().isoformat().encode(), b"{}", b"-1",
                                       str(user.key_id).encode(), b"m", None)) for i in ids)
    rows = await db.call_all(combine.BATCH, (f"[{ops}]".encode(),))
    assert [r[0] for r in rows] == [b"0", b"1", b"2"] and all(r[2] is None for r in rows)
    assert rows[0][1] is not None and ids[0] in rows[0][1].decode()
    assert rows[1][1] is not None and ids[1] in rows[1][1].decode()
    assert rows[2][1] is None  # refused for credit: no row, as alone
    state = await ledger.get_balance(user.user_id)
    assert state is not None and (state["reserved"], state["in_flight"]) == (D("0.5"), 2)
    for i in ids[:2]:
        assert await ledger.cancel(i)
    assert await ledger.invariant_violations() == []
