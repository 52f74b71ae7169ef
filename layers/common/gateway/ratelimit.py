"""Per-tier request rate limits (upstash-ratelimit, sliding window of one minute).

One Upstash call per request in the common case (the per-user limit from the tier table); a key
with its own ``rpm`` adds a second, concurrent call. If Upstash does not answer within its
timeout (or its circuit breaker is open, gateway.upstash) the request is allowed (fail open,
logged and counted as ``RateLimiterUnavailable``, which raises an alarm) unless
``RATELIMIT_FAIL_OPEN`` is false, in which case it is refused with 503 and ``Retry-After``.
A degraded decision carries no ``X-RateLimit-*`` headers: nothing was counted, so it cannot
claim what remains.

Token leases (``check``, the per-minute request limits): a warm container takes a small batch
of tokens in one Upstash call (upstash-ratelimit's ``limit(id, rate=n)``: the sliding window
counts all ``n`` at once) and hands them out to its next requests without calling Upstash, so
under steady load a container calls Upstash once per ``n`` requests. The accuracy cost, bounded:
- ``n = min(RATELIMIT_LEASE_MAX, rpm // 50)``: a limit under 100 rpm is never leased (exact), and a
  container holds at most ``n - 1 ≤ 2%`` of the limit unused; tokens it never hands out count
  against the user until the window slides past them. So with ``k`` warm containers serving one
  user, that user can be refused up to ``k·(n - 1)`` requests before reaching ``rpm`` (never
  allowed more than ``rpm``: every token was counted in Upstash before it was used).
- a lease is taken only while Upstash reported at least ``4n`` remaining for the key; closer to
  the limit every request asks Upstash for exactly one token. A lease asked for when fewer than
  ``n`` remain (another container took them meanwhile) is refused by Upstash as a whole, yet its
  ``n`` tokens stay counted (upstash-ratelimit's sliding-window script checks the count BEFORE its
  INCRBY, not count + rate): that request is refused up to ``n - 1`` tokens early and the window
  holds up to ``n`` extra counted tokens (more refusals, never more allowed; the 429 carries the
  window's real reset).
- a lease expires at the end of the Upstash window it was counted in and after
  ``RATELIMIT_LEASE_TTL_S`` (a container frozen for a while never spends old tokens).
- one lease call in flight per key and container: concurrent requests wait for it instead of
  each taking a batch.
``X-RateLimit-Remaining`` on a leased answer is Upstash's remaining plus the lease's unspent
tokens. Degraded (fail-open/closed) decisions and the breaker are unchanged: a lease is only
ever filled from an answer of Upstash.

Refills ahead of need (``check(..., prefetch=True)``, as the chat surfaces' admission asks; the
response then waits for :func:`drain` before its last byte, on every path: registered with
``gateway.loops.BEFORE_LAST_BYTE``, which every lean-path response awaits): the request that takes
a lease's LAST token starts the next lease call concurrently, for ``n - 1`` tokens (it already has
its own), so the request that would have found the lease empty finds it filled, and no request
waits on Upstash in the steady state.
The bounds above are unchanged: a container still holds at most ``n - 1`` unspent tokens (the
refill is asked for only once the lease is spent, and takes ``n - 1``); only while Upstash reports
at least ``4n`` remaining (closer to the limit every request asks Upstash itself, as above); one
lease call in flight per key and container (a request finding the lease empty meanwhile waits for
that call, as for any lease call). Upstash calls per request: ``1 / (n - 1)`` instead of ``1 / n``
(no refill ahead for ``n <= 2``). In Lambda the refill is a task of this container that must end
inside the request that started it (behind the Web Adapter the environment is frozen once the
response completes; under Mangum the invocation ends): :func:`drain` waits for every refill in
flight. A plain server (run.sh without Lambda's environment) keeps running after a response, so
there the last byte does not wait: the refill ends on its own (within Upstash's timeout), and one
cut short by a stop leaves only tokens counted in Upstash and never spent (stricter, never looser).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

from . import upstash  # noqa: F401  (first: upstash-redis with httpx deferred, then upstash-ratelimit)
from .records import frozen, record

# isort: split
from upstash_ratelimit.asyncio import Ratelimit, SlidingWindow

from .config import get_settings
from .errors import RateLimited, ServiceUnavailable
from .loops import BEFORE_LAST_BYTE
from .observability import count, in_lambda, logger
from .upstash import UpstashUnavailable, get_redis

WINDOW_SECONDS = 60
LEASE_FRACTION = 50  # a lease is at most rpm // LEASE_FRACTION tokens
LEASE_MARGIN = 4     # ... and only taken while Upstash reports >= LEASE_MARGIN * n remaining


@frozen
class Decision:
    """A rate-limit decision, and the headers it is answered with."""

    allowed: bool
    limit: int
    remaining: int
    reset: float          # epoch seconds when the current window ends
    degraded: bool = False  # Upstash unreachable; decision made by the fail-open policy
    retry_after: int = 1    # degraded: seconds until Upstash is tried again

    def headers(self) -> dict[str, str]:
        if self.degraded:
            return {} if self.allowed else {"Retry-After": str(self.retry_after)}
        h = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(max(0, self.remaining)),
             "X-RateLimit-Reset": str(math.ceil(self.reset))}
        if not self.allowed:
            h["Retry-After"] = str(max(1, math.ceil(self.reset - time.time())))
        return h


_limiters: dict[tuple[int, str, int, int], Ratelimit] = {}


def _limiter(name: str, max_requests: int, window_s: int) -> Ratelimit:
    redis = get_redis()
    key = (id(redis), name, max_requests, window_s)
    rl = _limiters.get(key)
    if rl is None:
        if len(_limiters) > 64:
            _limiters.clear()
        rl = Ratelimit(redis=redis, limiter=SlidingWindow(max_requests=max_requests, window=window_s, unit="s"),
                       prefix=f"{get_settings().ratelimit_prefix}:rl:{name}:{max_requests}")
        _limiters[key] = rl
    return rl


async def limit(identifier: str, max_requests: int, *, window_s: int = WINDOW_SECONDS, name: str = "req",
                rate: int = 1) -> Decision:
    """One sliding-window decision (one Upstash call counting ``rate`` tokens), with the
    fail-open/closed policy applied when Upstash does not answer in time. ``name`` separates
    independent limits."""
    settings = get_settings()
    try:
        # bounded by the Upstash client's own total timeout (UPSTASH_TIMEOUT_S, gateway.upstash);
        # no asyncio.wait_for here: its timer bookkeeping costs ~0.1 ms per call on this path
        r = await _limiter(name, max_requests, window_s).limit(identifier, rate)
        return Decision(allowed=r.allowed, limit=r.limit, remaining=r.remaining, reset=r.reset)
    except Exception as exc:  # network, timeout, protocol: Upstash is unavailable
        count("RateLimiterUnavailable")
        logger.warning("rate limiter unavailable", extra={"error": type(exc).__name__, "limit": name,
                                                          "reason": getattr(exc, "reason", None),
                                                          "fail_open": settings.ratelimit_fail_open})
        retry_after = exc.retry_after if isinstance(exc, UpstashUnavailable) else 1
        return Decision(allowed=settings.ratelimit_fail_open, limit=max_requests, remaining=max_requests,
                        reset=time.time() + window_s, degraded=True, retry_after=retry_after)


@record(eq=False)
class _Lease:
    """Rate-limit tokens this container counted in Upstash ahead of need, for one key and window."""

    tokens: int        # counted in Upstash, not handed out yet
    remaining: int     # Upstash's remaining after the last lease call
    limit: int
    reset: float       # epoch seconds: end of the window the tokens were counted in
    expires: float     # monotonic seconds: RATELIMIT_LEASE_TTL_S after the lease call


_leases: dict[tuple[Any, ...], _Lease] = {}
_in_flight: dict[tuple[Any, ...], asyncio.Future[None]] = {}


def lease_size(rpm: int) -> int:
    """Tokens one lease call takes for a per-minute limit of ``rpm`` (1 = no leasing)."""
    return max(1, min(get_settings().ratelimit_lease_max, rpm // LEASE_FRACTION))


def _take(lease: _Lease | None) -> Decision | None:
    if lease is None or lease.tokens <= 0 or time.monotonic() >= lease.expires or time.time() >= lease.reset:
        return None
    lease.tokens -= 1
    return Decision(allowed=True, limit=lease.limit, remaining=lease.remaining + lease.tokens, reset=lease.reset)


async def leased(identifier: str, max_requests: int, *, prefetch: bool = False) -> Decision:
    """A per-minute request-limit decision served from this container's lease when it has a token
    left, else from one Upstash call that takes a new lease (module docstring: the bounds).
    ``prefetch``: taking the lease's last token starts the next lease call concurrently (the caller
    awaits :func:`drain` before its response)."""
    n = lease_size(max_requests)
    if n <= 1:
        return await limit(identifier, max_requests)
    key = (id(get_redis()), identifier, max_requests)
    while True:
        lease = _leases.get(key)
        decision = _take(lease)
        if decision is not None:
            if prefetch and n > 2 and lease is not None and lease.tokens == 0 and key not in _in_flight \
                    and lease.remaining >= LEASE_MARGIN * n:
                _start_refill(key, identifier, max_requests, n - 1)
            return decision
        pending = _in_flight.get(key)
        if pending is None:
            break
        await asyncio.shield(pending)  # another request is taking a lease: share it
    previous = _leases.get(key)
    size = n if previous is None or previous.remaining >= LEASE_MARGIN * n or time.time() >= previous.reset else 1
    decision = await _lease_call(key, identifier, max_requests, size, kept=size - 1)
    if decision.degraded:
        return decision
    tokens = size - 1 if decision.allowed else 0
    if decision.allowed and tokens:
        return Decision(allowed=True, limit=decision.limit, remaining=decision.remaining + tokens,
                        reset=decision.reset)
    return decision


def _store(key: tuple[Any, ...], tokens: int, decision: Decision) -> None:
    if len(_leases) > 4096:
        _leases.clear()
    _leases[key] = _Lease(tokens=tokens, remaining=decision.remaining, limit=decision.limit, reset=decision.reset,
                          expires=time.monotonic() + get_settings().ratelimit_lease_ttl_s)


def _lease_call(key: tuple[Any, ...], identifier: str, max_requests: int, size: int,
                kept: int) -> Coroutine[Any, Any, Decision]:
    """One lease call of ``key`` for ``size`` tokens, ``kept`` of them stored in the lease when it is
    allowed (none when refused: an empty lease that says how many remain; nothing when degraded).
    Registered as the key's lease call in flight NOW, before it is awaited or scheduled, so that
    requests finding the lease empty meanwhile wait for it instead of calling Upstash too."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _in_flight[key] = done

    async def call() -> Decision:
        try:
            decision = await limit(identifier, max_requests, rate=size)
        finally:
            if _in_flight.get(key) is done:
                del _in_flight[key]
            done.set_result(None)
        if not decision.degraded:
            _store(key, kept if decision.allowed else 0, decision)
        return decision

    return call()


_refills: set[asyncio.Task[Decision]] = set()


def _start_refill(key: tuple[Any, ...], identifier: str, max_requests: int, size: int) -> None:
    """The next lease call of ``key`` (``size`` tokens, all for the lease), as a task, in
    ``_refills`` (:func:`drain`)."""
    task = asyncio.get_running_loop().create_task(_lease_call(key, identifier, max_requests, size, kept=size))
    _refills.add(task)
    task.add_done_callback(_refills.discard)


def _pending_refills() -> Awaitable[None] | None:
    """``gateway.loops.BEFORE_LAST_BYTE``'s waiter: :func:`drain` while a refill is in flight, in
    Lambda (a plain server's refill may end after the response: module docstring)."""
    return drain() if _refills and in_lambda() else None


async def drain() -> None:
    """Wait for the lease refills in flight in this container (started by ``check(...,
    prefetch=True)``): a request that may have started one awaits this before its response, so
    none is left running when the environment is frozen. Nothing to wait for: returns at once. A
    cancelled wait leaves the refills running (each ends on its own, within Upstash's timeout)."""
    while _refills:
        await asyncio.wait(tuple(_refills))


def reset_leases() -> None:
    """Forget every lease (tests; the tokens stay counted in Upstash)."""
    _leases.clear()


async def check(user_id: str, rpm: int, *, key_id: str | None = None, key_rpm: int | None = None,
                prefetch: bool = False) -> Decision:
    """Apply the user's tier limit (and the key's own limit, if it has one), from leases.
    ``prefetch``: refill a spent lease ahead of need; the caller MUST then ``await drain()``
    before its response, whatever the request's outcome (module docstring)."""
    if key_id is not None and key_rpm:
        user_d, key_d = await asyncio.gather(leased(f"user:{user_id}", rpm, prefetch=prefetch),
                                             leased(f"key:{key_id}", key_rpm, prefetch=prefetch))
        return user_d if not user_d.allowed or (key_d.allowed and user_d.remaining <= key_d.remaining) else key_d
    return await leased(f"user:{user_id}", rpm, prefetch=prefetch)


def enforce(decision: Decision, *, message: str | None = None, code: str | None = None,
            metric: str = "RateLimited", fail_closed: bool = False,
            unavailable_message: str | None = None) -> None:
    """THE refusal of a rate-limit decision (every limit goes through here): 429 with the
    ``X-RateLimit-*`` / ``Retry-After`` headers and ``metric`` counted, or 503
    ``ratelimiter_unavailable`` when Upstash did not answer and the decision refuses (or the
    caller's limit fails closed: ``fail_closed``)."""
    if decision.degraded and (fail_closed or not decision.allowed):
        raise unavailable(decision, unavailable_message)
    if decision.allowed:
        return
    count(metric)
    raise RateLimited(message or f"Rate limit of {decision.limit} requests per minute exceeded.",
                      code=code, headers=decision.headers())


def unavailable(decision: Decision, message: str | None = None) -> ServiceUnavailable:
    """The 503 for a request refused because Upstash is unavailable (RATELIMIT_FAIL_OPEN=false,
    or a limit that fails closed)."""
    headers = {"Retry-After": str(decision.retry_after)} if decision.allowed else decision.headers()
    return ServiceUnavailable(message or "Rate limiter unavailable; try again shortly.",
                              code="ratelimiter_unavailable", headers=headers)


BEFORE_LAST_BYTE.append(_pending_refills)  # a refill this container started ends before the response
