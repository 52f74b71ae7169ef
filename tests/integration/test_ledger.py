"""The credit ledger against a real Postgres: idempotent credits, reserve / settle / release, quota,
overruns, orphans, and the concurrency guarantees (no request ever served on credit the user
does not have; every cent explainable from rows)."""

from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway import db
from gateway.errors import BadRequest, InsufficientCredits, NotFound, QuotaExceeded, RateLimited
from gateway.money import ledger
from gateway.money.ledger import UsageRecord
from gateway.money.pricing import CREDIT_QUANTUM, ModelPrice, charge_for

pytestmark = pytest.mark.integration

D = Decimal
GPT4O = ModelPrice(prompt=D("0.0000025"), completion=D("0.00001"), cache_read=D("0.00000125"))


def rid() -> str:
    return "req_" + uuid.uuid4().hex


async def balance_of(user_id: Any) -> dict[str, Any]:
    row = await ledger.get_balance(user_id)
    assert row is not None
    return row


async def ledger_sum(user_id: Any) -> Decimal:
    row = await db.fetchone("SELECT COALESCE(sum(amount), 0) AS s FROM ledger_entries WHERE user_id = %s",
                            (user_id,))
    assert row is not None
    return Decimal(row["s"])


async def count(sql: str, *params: Any) -> int:
    row = await db.fetchone(sql, params)
    assert row is not None
    return int(row["n"])


def usage(request_id: str, user_id: Any, status: str = "ok", charge: Decimal = D(0), **kw: Any) -> UsageRecord:
    return UsageRecord(request_id=request_id, user_id=user_id, model_requested="openai/gpt-4o", status=status,
                       charge=charge, **kw)


async def assert_books_balance() -> None:
    assert await ledger.invariant_violations() == []
    row = await db.fetchone("SELECT count(*) AS n FROM balances WHERE balance - reserved < 0 AND reserved > 0")
    assert row is not None and row["n"] == 0


# ----------------------------------------------------------------------------------- credit
async def test_credit_is_idempotent_by_reference(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="0")
    first = await ledger.credit(user.user_id, D("5.25"), "grant", "grant:abc", description="hello")
    assert first.applied and first.balance == D("5.25") and first.available == D("5.25")
    again = await ledger.credit(user.user_id, D("5.25"), "grant", "grant:abc")
    assert not again.applied and again.balance == D("5.25")
    different_amount = await ledger.credit(user.user_id, D("99"), "grant", "grant:abc")
    assert not different_amount.applied
    assert (await balance_of(user.user_id))["balance"] == D("5.25")
    assert await count("SELECT count(*) AS n FROM ledger_entries WHERE reference = %s", "grant:abc") == 1
    assert await ledger_sum(user.user_id) == D("5.25")
    await assert_books_balance()


async def test_concurrent_credit_with_one_reference_applies_once(make_user, big_pool) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="0")
    results = await asyncio.gather(*[ledger.credit(user.user_id, D("1.5"), "purchase", "cs_test_123")
                                     for _ in range(20)])
    assert sum(r.applied for r in results) == 1
    assert (await balance_of(user.user_id))["balance"] == D("1.5")
    await assert_books_balance()


async def test_welcome_credit_is_a_ledger_row(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    rows = await db.fetchall("SELECT amount, kind, reference FROM ledger_entries WHERE user_id = %s",
                             (user.user_id,))
    assert rows == [{"amount": D("10"), "kind": "welcome", "reference": f"welcome:{user.user_id}"}]


async def test_credit_validation(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="1")
    with pytest.raises(TypeError):
        await ledger.credit(user.user_id, 1.5, "grant", "r1")  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        await ledger.credit(user.user_id, D("1"), "gift", "r2")
    with pytest.raises(BadRequest):
        await ledger.credit(user.user_id, D("1"), "grant", "")
    with pytest.raises(BadRequest, match="8 decimal places"):
        await ledger.credit(user.user_id, D("0.000000001"), "grant", "r3")
    with pytest.raises(NotFound):
        await ledger.credit(uuid.uuid4(), D("1"), "grant", "r4")
    assert await count("SELECT count(*) AS n FROM ledger_entries WHERE reference LIKE 'r_'") == 0
    await assert_books_balance()


async def test_deduction_below_available_is_refused(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    await ledger.reserve(user.user_id, rid(), D("4"))  # available 6
    with pytest.raises(InsufficientCredits) as info:
        await ledger.credit(user.user_id, D("-7"), "adjustment", "adj:1")
    assert info.value.status == 402
    assert D(info.value.extra["balance"]) == D("6")
    assert D(info.value.extra["required"]) == D("7")
    # refused = rolled back: no row, same balance; the reference is still free
    assert await count("SELECT count(*) AS n FROM ledger_entries WHERE reference = 'adj:1'") == 0
    assert (await balance_of(user.user_id))["balance"] == D("10")

    ok = await ledger.credit(user.user_id, D("-6"), "adjustment", "adj:1")
    assert ok.applied and ok.balance == D("4") and ok.available == D("0")

    forced = await ledger.credit(user.user_id, D("-3"), "refund", "re_123", allow_negative=True)
    assert forced.applied and forced.balance == D("1") and forced.available == D("-3")
    assert await ledger_sum(user.user_id) == D("1")
    assert await ledger.invariant_violations() == []


# ----------------------------------------------------------------------------------- reserve / settle
async def test_reserve_then_settle_charges_exactly(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    request_id = rid()
    hold = D("1.50000000")
    r = await ledger.reserve(user.user_id, request_id, hold, api_key_id=user.key_id, model="openai/gpt-4o")
    assert (r.request_id, r.amount, r.tier) == (request_id, hold, "pro")
    state = await balance_of(user.user_id)
    assert (state["balance"], state["reserved"], state["available"]) == (D("10"), hold, D("8.5"))
    assert state["period_requests"] == 1
    res_row = await db.fetchone("SELECT user_id, api_key_id, model, amount FROM reservations WHERE request_id = %s",
                                (request_id,))
    assert res_row == {"user_id": user.user_id, "api_key_id": user.key_id, "model": "openai/gpt-4o",
                       "amount": hold}

    prompt, completion, cached = 1200, 333, 200
    cost = GPT4O.provider_cost(prompt, completion, cached)
    charge = charge_for(cost, D("0.10"))
    record = usage(request_id, user.user_id, charge=charge, api_key_id=user.key_id, model_served="openai/gpt-4o",
                   provider="openai", prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                   prompt_price=GPT4O.prompt, completion_price=GPT4O.completion, cache_read_price=GPT4O.cache_read,
                   markup=D("0.10"), provider_cost=cost, latency_ms=123, ttfb_ms=45, stream=True)
    s = await ledger.settle(record)
    assert s.settled and not s.overrun
    assert s.hold == hold and s.charge == charge
    assert s.balance == D("10") - charge and s.reserved == 0

    state = await balance_of(user.user_id)
    assert (state["balance"], state["reserved"]) == (D("10") - charge, D("0"))
    assert await count("SELECT count(*) AS n FROM reservations WHERE user_id = %s", user.user_id) == 0

    entries = await db.fetchall("SELECT amount, kind, reference FROM ledger_entries WHERE user_id = %s "
                                "AND kind = 'usage'", (user.user_id,))
    assert entries == [{"amount": -charge, "kind": "usage", "reference": request_id}]
    rows = await db.fetchall("SELECT * FROM usage_records WHERE request_id = %s", (request_id,))
    assert len(rows) == 1
    u = rows[0]
    assert (u["status"], u["charge"], u["hold"], u["provider_cost"]) == ("ok", charge, hold, cost)
    assert (u["prompt_tokens"], u["completion_tokens"], u["cached_tokens"]) == (prompt, completion, cached)
    assert u["api_key_id"] == user.key_id and u["stream"] is True and u["latency_ms"] == 123
    # every usage record recomputes from its own columns
    recomputed = ModelPrice(prompt=u["prompt_price"], completion=u["completion_price"],
                            request=u["request_price"], cache_read=u["cache_read_price"])
    re_cost = recomputed.provider_cost(u["prompt_tokens"], u["completion_tokens"], u["cached_tokens"])
    assert re_cost == u["provider_cost"]
    assert charge_for(re_cost, u["markup"], byok=u["byok"]) == u["charge"]
    assert await ledger_sum(user.user_id) == state["balance"]
    await assert_books_balance()


async def test_settle_twice_is_a_noop(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("1"))
    first = await ledger.settle(usage(request_id, user.user_id, charge=D("0.4")))
    second = await ledger.settle(usage(request_id, user.user_id, charge=D("0.4")))
    third = await ledger.release(usage(request_id, user.user_id, status="failed"))
    assert first.settled and not second.settled and not third.settled
    assert not second.overrun
    assert (await balance_of(user.user_id))["balance"] == D("9.6")
    assert await count("SELECT count(*) AS n FROM usage_records WHERE request_id = %s", request_id) == 1
    assert await count("SELECT count(*) AS n FROM ledger_entries WHERE reference = %s", request_id) == 1
    await assert_books_balance()


async def test_concurrent_double_settle_charges_once(make_user, big_pool) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("1"))
    results = await asyncio.gather(*[ledger.settle(usage(request_id, user.user_id, charge=D("0.3")))
                                     for _ in range(10)])
    assert sum(r.settled for r in results) == 1
    assert (await balance_of(user.user_id))["balance"] == D("9.7")
    await assert_books_balance()


async def test_settle_without_reservation_is_a_noop(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    s = await ledger.settle(usage(rid(), user.user_id, charge=D("1")))
    assert not s.settled
    assert (await balance_of(user.user_id))["balance"] == D("10")
    assert await count("SELECT count(*) AS n FROM usage_records") == 0


async def test_zero_charge_settle_writes_no_ledger_row(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("0"), model="meta-llama/llama-3.3-70b-instruct:free")
    s = await ledger.settle(usage(request_id, user.user_id, charge=D("0"), prompt_tokens=10, completion_tokens=5))
    assert s.settled
    assert await count("SELECT count(*) AS n FROM ledger_entries WHERE reference = %s", request_id) == 0
    assert await count("SELECT count(*) AS n FROM usage_records WHERE request_id = %s", request_id) == 1
    assert (await balance_of(user.user_id))["period_requests"] == 1  # a served request counts


async def test_negative_amounts_refused(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    with pytest.raises(ValueError):
        await ledger.reserve(user.user_id, rid(), D("-1"))
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("1"))
    with pytest.raises(ValueError):
        await ledger.settle(usage(request_id, user.user_id, charge=D("-0.5")))
    await assert_books_balance()


async def test_release_charges_nothing_and_gives_the_quota_back(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    a, b = rid(), rid()
    await ledger.reserve(user.user_id, a, D("2"))
    await ledger.reserve(user.user_id, b, D("3"))
    assert (await balance_of(user.user_id))["period_requests"] == 2
    record = usage(a, user.user_id, status="failed", charge=D("1"), error_code="upstream_error")
    s = await ledger.release(record)
    assert s.settled and s.charge == 0 and s.hold == D("2")
    state = await balance_of(user.user_id)
    assert (state["balance"], state["reserved"], state["period_requests"]) == (D("10"), D("3"), 1)
    assert await count("SELECT count(*) AS n FROM ledger_entries WHERE reference = %s", a) == 0
    rows = await db.fetchall("SELECT status, charge, hold, error_code FROM usage_records WHERE request_id = %s",
                             (a,))
    assert rows == [{"status": "failed", "charge": D("0"), "hold": D("2"), "error_code": "upstream_error"}]

    await ledger.settle(usage(b, user.user_id, charge=D("1.25")))
    state = await balance_of(user.user_id)
    assert (state["balance"], state["reserved"], state["period_requests"]) == (D("8.75"), D("0"), 1)
    await assert_books_balance()


async def test_cancel_undoes_a_reservation(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("2"))
    assert await ledger.cancel(request_id)
    assert not await ledger.cancel(request_id)
    state = await balance_of(user.user_id)
    assert (state["balance"], state["reserved"], state["period_requests"]) == (D("10"), D("0"), 0)
    assert await count("SELECT count(*) AS n FROM usage_records") == 0
    await assert_books_balance()


# ----------------------------------------------------------------------------------- refusals
async def test_insufficient_credits_is_402_with_balance_and_required(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="1")
    await ledger.reserve(user.user_id, rid(), D("0.4"))
    request_id = rid()
    with pytest.raises(InsufficientCredits) as info:
        await ledger.reserve(user.user_id, request_id, D("0.60000001"))
    err = info.value
    assert err.status == 402 and err.code == "insufficient_credits"
    assert D(err.extra["balance"]) == D("0.6")
    assert D(err.extra["required"]) == D("0.60000001")
    assert "0.60000001" in err.message
    body = err.body()["error"]
    assert body["type"] == "insufficient_quota" and "balance" in body and "required" in body
    # nothing was held or counted by the refused attempt
    state = await balance_of(user.user_id)
    assert (state["reserved"], state["period_requests"]) == (D("0.4"), 1)
    assert await count("SELECT count(*) AS n FROM reservations WHERE request_id = %s", request_id) == 0
    # exactly the available amount is fine
    await ledger.reserve(user.user_id, rid(), D("0.6"))
    assert (await balance_of(user.user_id))["available"] == 0


async def test_unknown_user_is_not_found() -> None:
    with pytest.raises(NotFound):
        await ledger.reserve(uuid.uuid4(), rid(), D("1"))


async def test_monthly_quota(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    for _ in range(3):
        request_id = rid()
        await ledger.reserve(user.user_id, request_id, D("0.01"), quotas={"free": 3})
        await ledger.settle(usage(request_id, user.user_id, charge=D("0.01")))
    with pytest.raises(QuotaExceeded) as info:
        await ledger.reserve(user.user_id, rid(), D("0.01"), quotas={"free": 3})
    err = info.value
    assert err.status == 429 and err.code == "quota_exceeded"
    assert (err.extra["quota"], err.extra["used"]) == (3, 3)
    assert err.extra["resets_at"] == ledger.next_period_start().isoformat()
    assert (await balance_of(user.user_id))["reserved"] == 0

    # a failed request gives its quota slot back
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("0.01"), quotas={"free": 4})
    await ledger.release(usage(request_id, user.user_id, status="failed"))
    await ledger.reserve(user.user_id, rid(), D("0.01"), quotas={"free": 4})
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(user.user_id, rid(), D("0.01"), quotas={"free": 4})

    # a new month resets the count
    await db.execute("UPDATE balances SET period_start = period_start - interval '1 month' WHERE user_id = %s",
                     (user.user_id,))
    await ledger.reserve(user.user_id, rid(), D("0.01"), quotas={"free": 4})
    state = await balance_of(user.user_id)
    assert state["period_requests"] == 1
    assert state["period_start"] == ledger.period_start()
    await assert_books_balance()


async def test_quota_from_the_current_tier(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10", tier="free")
    quotas = {"free": 2, "pro": 1000, "enterprise": None}
    await ledger.reserve(user.user_id, rid(), D("0"), quotas=quotas)
    await ledger.reserve(user.user_id, rid(), D("0"), quotas=quotas)
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(user.user_id, rid(), D("0"), quotas=quotas)
    await db.execute("UPDATE users SET tier = 'enterprise' WHERE id = %s", (user.user_id,))
    r = await ledger.reserve(user.user_id, rid(), D("0"), quotas=quotas)  # unlimited, read fresh
    assert r.tier == "enterprise"


async def test_quota_wins_over_credit_in_the_message(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="0.01")
    await ledger.reserve(user.user_id, rid(), D("0.01"), quotas={"free": 1})
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(user.user_id, rid(), D("5"), quotas={"free": 1})


# ----------------------------------------------------------------------------------- overrun
async def test_overrun_is_charged_and_reported(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="1")
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("0.1"))
    s = await ledger.settle(usage(request_id, user.user_id, charge=D("0.35")))
    assert s.settled and s.overrun
    assert (s.hold, s.charge) == (D("0.1"), D("0.35"))
    assert (await balance_of(user.user_id))["balance"] == D("0.65")
    row = await db.fetchone("SELECT charge, hold FROM usage_records WHERE request_id = %s", (request_id,))
    assert row == {"charge": D("0.35"), "hold": D("0.1")}
    await assert_books_balance()


async def test_overrun_past_zero_is_recorded_and_blocks_further_requests(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="0.2")
    request_id = rid()
    await ledger.reserve(user.user_id, request_id, D("0.2"))
    s = await ledger.settle(usage(request_id, user.user_id, charge=D("0.5")))
    assert s.overrun and s.balance == D("-0.3") and s.available == D("-0.3")
    assert await ledger_sum(user.user_id) == D("-0.3")
    assert await ledger.invariant_violations() == []
    # the only way below zero is a recorded overrun: charge > hold on the usage record
    overruns = await db.fetchall("SELECT request_id FROM usage_records WHERE user_id = %s AND charge > hold",
                                 (user.user_id,))
    assert overruns == [{"request_id": request_id}]
    with pytest.raises(InsufficientCredits):
        await ledger.reserve(user.user_id, rid(), D("0"))


# ----------------------------------------------------------------------------------- orphans
async def test_release_orphans_releases_only_old_reservations(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    old, fresh = rid(), rid()
    await ledger.reserve(user.user_id, old, D("1"), api_key_id=user.key_id, model="openai/gpt-4o")
    await ledger.reserve(user.user_id, fresh, D("2"))
    await db.execute("UPDATE reservations SET created_at = now() - interval '20 minutes' WHERE request_id = %s",
                     (old,))
    assert await ledger.release_orphans(15) == [old]
    assert await ledger.release_orphans(15) == []
    state = await balance_of(user.user_id)
    assert (state["balance"], state["reserved"], state["period_requests"]) == (D("10"), D("2"), 1)
    row = await db.fetchone("SELECT status, error_code, charge, model_requested, api_key_id FROM usage_records "
                            "WHERE request_id = %s", (old,))
    assert row == {"status": "orphaned", "error_code": "orphaned_reservation", "charge": D("0"),
                   "model_requested": "openai/gpt-4o", "api_key_id": user.key_id}
    assert await count("SELECT count(*) AS n FROM reservations WHERE request_id = %s", fresh) == 1
    # the late settle of the orphaned request is a no-op
    assert not (await ledger.settle(usage(old, user.user_id, charge=D("0.5")))).settled
    await assert_books_balance()


# ----------------------------------------------------------------------------------- concurrency
async def test_concurrent_reserves_never_overdraw(make_user, big_pool) -> None:  # type: ignore[no-untyped-def]
    hold = D("0.12345678")
    user = await make_user(balance=str(hold * 10))  # affords exactly 10 holds
    ids = [rid() for _ in range(200)]
    results = await asyncio.gather(*[ledger.reserve(user.user_id, i, hold) for i in ids],
                                   return_exceptions=True)
    ok = [r for r in results if isinstance(r, ledger.Reservation)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 10
    assert len(refused) == 190
    assert all(isinstance(e, InsufficientCredits) and e.status == 402 for e in refused), \
        {type(e).__name__ for e in refused}
    state = await balance_of(user.user_id)
    assert state["reserved"] == hold * 10 and state["available"] == 0
    assert state["period_requests"] == 10
    assert await count("SELECT count(*) AS n FROM reservations WHERE user_id = %s", user.user_id) == 10

    rng = random.Random(20240601)
    expected_charges = D(0)
    calls = []
    for r in ok:
        if rng.random() < 0.3:
            calls.append(ledger.release(usage(r.request_id, user.user_id, status="failed")))
        else:
            charge = CREDIT_QUANTUM * rng.randint(0, int(hold / CREDIT_QUANTUM))
            expected_charges += charge
            calls.append(ledger.settle(usage(r.request_id, user.user_id, charge=charge)))
    settled = await asyncio.gather(*calls)
    assert all(s.settled and not s.overrun for s in settled)

    await assert_books_balance()
    state = await balance_of(user.user_id)
    assert state["reserved"] == 0
    assert state["balance"] == hold * 10 - expected_charges
    assert state["available"] >= 0
    assert await ledger_sum(user.user_id) == state["balance"]
    assert await count("SELECT count(*) AS n FROM usage_records WHERE user_id = %s", user.user_id) == 10


async def test_mixed_concurrent_reserve_settle_release(make_user, big_pool) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    users = [await make_user(balance=b) for b in ("3", "0.5", "12.34567891")]
    initial = {u.user_id: D(b) for u, b in zip(users, ("3", "0.5", "12.34567891"), strict=True)}
    charged: dict[Any, Decimal] = {u.user_id: D(0) for u in users}
    outcomes: list[str] = []
    stop = asyncio.Event()
    min_available: list[Decimal] = []

    async def monitor() -> None:
        while not stop.is_set():
            row = await db.fetchone("SELECT min(balance - reserved) AS m FROM balances")
            assert row is not None
            min_available.append(row["m"])
            await asyncio.sleep(0.005)

    async def one(i: int) -> None:
        user = users[i % len(users)]
        hold = CREDIT_QUANTUM * rng.randint(1, 40_000_000)  # up to 0.4
        plan = rng.random()
        await asyncio.sleep(rng.random() * 0.05)
        request_id = f"mixed-{i}-{uuid.uuid4().hex[:8]}"
        try:
            await ledger.reserve(user.user_id, request_id, hold)
        except InsufficientCredits:
            outcomes.append("402")
            return
        except RateLimited as err:  # refused for credit that a concurrent request gave back before the wording read
            assert err.code == "concurrency_limit_exceeded" and err.headers == {"retry-after": "1"}
            outcomes.append("429")
            return
        await asyncio.sleep(rng.random() * 0.05)
        if plan < 0.25:
            s = await ledger.release(usage(request_id, user.user_id, status="failed"))
            outcomes.append("released")
        else:
            charge = CREDIT_QUANTUM * rng.randint(0, int(hold / CREDIT_QUANTUM))
            s = await ledger.settle(usage(request_id, user.user_id, charge=charge))
            charged[user.user_id] += charge
            outcomes.append("settled")
        assert s.settled

    watcher = asyncio.create_task(monitor())
    await asyncio.gather(*[one(i) for i in range(200)])
    stop.set()
    await watcher

    assert len(outcomes) == 200
    assert outcomes.count("settled") > 0 and outcomes.count("released") > 0 and outcomes.count("402") > 0
    assert min_available and min(min_available) >= 0
    await assert_books_balance()
    for u in users:
        state = await balance_of(u.user_id)
        assert state["reserved"] == 0
        assert state["balance"] == initial[u.user_id] - charged[u.user_id]
        assert state["balance"] >= 0
        assert await ledger_sum(u.user_id) == state["balance"]
    served = outcomes.count("settled") + outcomes.count("released")
    assert await count("SELECT count(*) AS n FROM usage_records") == served
    assert await count("SELECT count(*) AS n FROM reservations") == 0


# ----------------------------------------------------------------------------------- in flight
async def test_requests_in_flight_are_counted_and_capped_atomically(make_user, big_pool) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    results = await asyncio.gather(*[ledger.reserve(user.user_id, rid(), D("0.01"), max_in_flight=5)
                                     for _ in range(50)], return_exceptions=True)
    held = [r for r in results if isinstance(r, ledger.Reservation)]
    refused = [r for r in results if not isinstance(r, ledger.Reservation)]
    assert len(held) == 5 and all(getattr(r, "code", None) == "concurrency_limit_exceeded" for r in refused)
    assert (await balance_of(user.user_id))["in_flight"] == 5
    await ledger.settle(usage(held[0].request_id, user.user_id, charge=D("0.01")))
    await ledger.cancel(held[1].request_id)
    assert (await balance_of(user.user_id))["in_flight"] == 3
    await ledger.reserve(user.user_id, rid(), D("0.01"), max_in_flight=5)  # room again
    await assert_books_balance()


async def test_refusals_are_worded_plan_quota_in_flight_then_credit(make_user) -> None:  # type: ignore[no-untyped-def]
    from gateway.errors import Forbidden, RateLimited

    user = await make_user(balance="0.01", tier="free")
    await ledger.reserve(user.user_id, rid(), D("0.01"), quotas={"free": 1}, max_in_flight=1)

    def refuse_free(tier: str) -> None:
        if tier == "free":
            raise Forbidden("not on your plan", code="model_not_allowed")

    for kwargs, error in (({"check_tier": refuse_free, "quotas": {"free": 1}, "max_in_flight": 1}, Forbidden),
                          ({"quotas": {"free": 1}, "max_in_flight": 1}, QuotaExceeded),
                          ({"max_in_flight": 1}, RateLimited),
                          ({}, InsufficientCredits)):
        with pytest.raises(error):
            await ledger.reserve(user.user_id, rid(), D("5"), **kwargs)
    with pytest.raises(InsufficientCredits) as exc:
        await ledger.reserve(user.user_id, rid(), D("5"))
    body = exc.value.body()["error"]
    assert body["balance"] == "0.00000000" and body["required"] == "5.00000000"  # never "0E-8"
