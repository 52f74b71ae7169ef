"""``chat.service._both``: the admission's rate limit ‖ reserve (``admit``) gives what
``asyncio.gather(reserve, limit, return_exceptions=True)`` gave, and costs no loop turn when the rate
limit decides at once (a leased token; issue 15 fifth pass)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.chat.service import _both
from gateway.errors import BadRequest
from gateway.ratelimit import Decision

DECISION = Decision(allowed=True, limit=60, remaining=59, reset=0.0)


async def _now(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


async def _later(value: Any, turns: int = 1) -> Any:
    for _ in range(turns):
        await asyncio.sleep(0)
    return await _now(value)


async def test_a_limit_decided_at_once_costs_no_loop_turn() -> None:
    coro = _both(_now("reserved"), _now(DECISION))
    with pytest.raises(StopIteration) as done:
        coro.send(None)  # finished without suspending once: no task, no loop turn
    assert done.value.value == ("reserved", DECISION)


@pytest.mark.parametrize("limit_waits", [False, True])
async def test_results_and_failures_as_gather_returned_them(limit_waits: bool) -> None:
    limit = _later if limit_waits else _now
    refused = BadRequest("no")
    assert await _both(_later("reserved"), limit(DECISION)) == ("reserved", DECISION)
    assert await _both(_later(refused), limit(DECISION)) == (refused, DECISION)
    broken = RuntimeError("limiter")
    reserved, decision = await _both(_later("reserved"), limit(broken))
    assert reserved == "reserved" and decision is broken
    gathered = await asyncio.gather(_later(refused), limit(broken), return_exceptions=True)
    assert list(await _both(_later(refused), limit(broken))) == gathered


async def test_a_limit_that_waits_still_runs_alongside_the_reserve() -> None:
    """An Upstash call (the limit waits) and the reserve overlap: each here waits for the other."""
    limit_started, reserve_started = asyncio.Event(), asyncio.Event()

    async def limit() -> Decision:
        limit_started.set()
        await reserve_started.wait()
        return DECISION

    async def reserve() -> str:
        reserve_started.set()
        await limit_started.wait()
        return "reserved"

    assert await asyncio.wait_for(_both(reserve(), limit()), 1) == ("reserved", DECISION)


async def test_cancelling_the_admission_cancels_the_reserve() -> None:
    reserving = asyncio.Event()
    cancelled = []

    async def reserve() -> str:
        reserving.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "reserved"

    task = asyncio.ensure_future(_both(reserve(), _now(DECISION)))
    await reserving.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True]
