"""Rate-limit token leases against the real Upstash REST bridge (gateway.ratelimit): one Upstash
call per lease of n tokens, never more than the limit allowed, exact near the limit, leases
expire, concurrent requests share one lease call, small limits are never leased."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis as redis_lib

from gateway import ratelimit
from gateway.config import get_settings, reset_settings
from infra.local.servers import RunningServer
from tests.support import services

pytestmark = pytest.mark.integration


@pytest.fixture
def counted(stack: str, upstash_bridge: RunningServer) -> Iterator[redis_lib.Redis]:
    """The real Redis behind the bridge: each sliding-window bucket holds the tokens counted."""
    ratelimit.reset_leases()
    client = redis_lib.Redis.from_url(services.REDIS_URL)
    # the sliding window's bucket is the minute: keep a test inside one bucket
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.1)
    yield client
    client.close()
    ratelimit.reset_leases()


def _counted(client: redis_lib.Redis, identifier: str, rpm: int) -> int:
    """Tokens Upstash has counted for ``identifier`` in the current and previous buckets."""
    prefix = f"{get_settings().ratelimit_prefix}:rl:req:{rpm}:{identifier}:"
    return sum(int(client.get(k) or 0) for k in client.scan_iter(prefix + "*"))


def _ident() -> str:
    return f"user:{uuid.uuid4()}"


async def test_a_lease_serves_n_requests_with_one_upstash_call(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 1000
    n = ratelimit.lease_size(rpm)
    assert n == min(get_settings().ratelimit_lease_max, rpm // ratelimit.LEASE_FRACTION) == 10
    remaining = []
    for i in range(n):
        d = await ratelimit.leased(ident, rpm)
        assert d.allowed and not d.degraded
        remaining.append(d.remaining)
        assert _counted(counted, ident, rpm) == n, i  # counted once, up front
    assert remaining == list(range(rpm - 1, rpm - 1 - n, -1))  # the client sees one fewer each time
    d = await ratelimit.leased(ident, rpm)  # the lease is spent: a new one
    assert d.allowed and d.remaining == rpm - n - 1
    assert _counted(counted, ident, rpm) == 2 * n


async def test_never_more_than_the_limit_and_exact_near_it(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 200
    n = ratelimit.lease_size(rpm)
    assert n == 4
    allowed = 0
    for _ in range(rpm + 30):
        d = await ratelimit.leased(ident, rpm)
        allowed += d.allowed
        if not d.allowed:
            assert d.remaining == 0 and 1 <= int(d.headers()["Retry-After"]) <= 60
    # one container: every token it leased was handed out (leases stop 4n before the limit)
    assert allowed == rpm
    assert _counted(counted, ident, rpm) == rpm


async def test_small_limits_are_not_leased(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 60  # the pro tier
    assert ratelimit.lease_size(rpm) == 1
    for i in range(3):
        assert (await ratelimit.leased(ident, rpm)).remaining == rpm - 1 - i
        assert _counted(counted, ident, rpm) == i + 1


async def test_a_lease_expires(counted: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATELIMIT_LEASE_TTL_S", "0.2")
    reset_settings()
    ident, rpm = _ident(), 1000
    await ratelimit.leased(ident, rpm)
    await ratelimit.leased(ident, rpm)
    assert _counted(counted, ident, rpm) == 10
    await asyncio.sleep(0.25)  # e.g. a frozen container: the leftover 8 tokens are not spent
    await ratelimit.leased(ident, rpm)
    assert _counted(counted, ident, rpm) == 20


async def test_concurrent_requests_share_one_lease_call(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 1000
    decisions = await asyncio.gather(*[ratelimit.leased(ident, rpm) for _ in range(10)])
    assert all(d.allowed for d in decisions)
    assert _counted(counted, ident, rpm) == 10  # one lease of 10, not ten
    assert sorted(d.remaining for d in decisions) == list(range(rpm - 10, rpm))


async def test_lease_max_one_is_exact(counted: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATELIMIT_LEASE_MAX", "1")
    reset_settings()
    ident, rpm = _ident(), 1000
    for i in range(3):
        await ratelimit.check(ident.removeprefix("user:"), rpm)
        assert _counted(counted, ident, rpm) == i + 1


# ---------------------------------------------------------------- refills ahead of need (prefetch)
async def test_the_last_token_refills_the_lease_ahead_of_need(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 1000
    n = ratelimit.lease_size(rpm)
    for _ in range(n - 1):  # one lease call of n, n - 1 tokens handed out from it
        await ratelimit.leased(ident, rpm, prefetch=True)
    assert _counted(counted, ident, rpm) == n and not ratelimit._refills
    last = await ratelimit.leased(ident, rpm, prefetch=True)  # the lease's last token ...
    assert last.allowed and last.remaining == rpm - n
    assert len(ratelimit._refills) == 1  # ... starts the next lease call, which this request does not wait for
    await ratelimit.drain()
    assert not ratelimit._refills
    assert _counted(counted, ident, rpm) == 2 * n - 1  # n - 1 more: never more than n - 1 unspent
    before = _counted(counted, ident, rpm)
    for i in range(n - 2):  # served from the refilled lease, without Upstash
        d = await ratelimit.leased(ident, rpm, prefetch=True)
        assert d.allowed and d.remaining == rpm - n - 1 - i
        assert not ratelimit._refills
    assert _counted(counted, ident, rpm) == before
    await ratelimit.drain()  # nothing in flight: returns at once


async def test_refilled_leases_never_allow_more_than_the_limit(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 500
    n = ratelimit.lease_size(rpm)
    assert n == 10
    allowed = refused = 0
    for _ in range(rpm + 30):
        d = await ratelimit.leased(ident, rpm, prefetch=True)
        await ratelimit.drain()  # as each request does before its response
        allowed += d.allowed
        refused += not d.allowed
    assert allowed == rpm and refused == 30  # near the limit every request asked Upstash itself
    assert _counted(counted, ident, rpm) == rpm


async def test_requests_finding_the_lease_empty_wait_for_the_refill(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 1000
    n = ratelimit.lease_size(rpm)
    for _ in range(n):
        await ratelimit.leased(ident, rpm, prefetch=True)
    assert len(ratelimit._refills) == 1
    # while the refill is in flight, the lease is empty: these share it instead of each taking a lease
    decisions = await asyncio.gather(*[ratelimit.leased(ident, rpm, prefetch=True) for _ in range(n - 2)])
    assert all(d.allowed for d in decisions)
    assert not ratelimit._refills
    assert _counted(counted, ident, rpm) == 2 * n - 1  # the one refill, nothing else
    await ratelimit.leased(ident, rpm, prefetch=True)  # the refilled lease's last token: the next refill
    await ratelimit.drain()
    assert _counted(counted, ident, rpm) == 3 * n - 2


async def test_without_prefetch_nothing_is_refilled_ahead(counted: redis_lib.Redis) -> None:
    ident, rpm = _ident(), 1000
    for _ in range(ratelimit.lease_size(rpm)):
        await ratelimit.leased(ident, rpm)
    assert not ratelimit._refills


async def test_a_failed_refill_leaves_the_next_request_to_the_fail_open_policy(
        counted: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    ident, rpm = _ident(), 1000
    n = ratelimit.lease_size(rpm)
    for _ in range(n - 1):
        await ratelimit.leased(ident, rpm, prefetch=True)
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("UPSTASH_BREAKER_S", "0")
    reset_settings()
    from gateway import upstash

    upstash.reset_redis()
    ratelimit.reset_leases()
    try:
        for _ in range(n):  # a lease of n on the unreachable Upstash: degraded, nothing leased
            d = await ratelimit.leased(ident, rpm, prefetch=True)
            assert d.allowed and d.degraded
        assert not ratelimit._refills  # only a leased token starts a refill
    finally:
        upstash.reset_redis()
