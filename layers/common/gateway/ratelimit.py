"""Per-tier request rate limits (upstash-ratelimit, sliding window of one minute).

One Upstash call per request in the common case (the per-user limit from the tier table); a key
with its own ``rpm`` adds a second, concurrent call. If Upstash does not answer within its
timeout (or its circuit breaker is open, gateway.upstash) the request is allowed (fail open,
logged and counted as ``RateLimiterUnavailable``, which raises an alarm) unless
``RATELIMIT_FAIL_OPEN`` is false, in which case it is refused with 503 and ``Retry-After``.
A degraded decision carries no ``X-RateLimit-*`` headers: nothing was counted, so it cannot
claim what remains.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from upstash_ratelimit.asyncio import Ratelimit, SlidingWindow

from .config import get_settings
from .errors import RateLimited, ServiceUnavailable
from .observability import count, logger
from .upstash import UpstashUnavailable, get_redis

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Decision:
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


async def limit(identifier: str, max_requests: int, *, window_s: int = WINDOW_SECONDS, name: str = "req") -> Decision:
    """One sliding-window decision (one Upstash call), with the fail-open/closed policy applied
    when Upstash does not answer in time. ``name`` separates independent limits."""
    settings = get_settings()
    try:
        # bounded by the Upstash client's own total timeout (UPSTASH_TIMEOUT_S, gateway.upstash);
        # no asyncio.wait_for here: its timer bookkeeping costs ~0.1 ms per call on this path
        r = await _limiter(name, max_requests, window_s).limit(identifier)
        return Decision(allowed=r.allowed, limit=r.limit, remaining=r.remaining, reset=r.reset)
    except Exception as exc:  # network, timeout, protocol: Upstash is unavailable
        count("RateLimiterUnavailable")
        logger.warning("rate limiter unavailable", extra={"error": type(exc).__name__, "limit": name,
                                                          "reason": getattr(exc, "reason", None),
                                                          "fail_open": settings.ratelimit_fail_open})
        retry_after = exc.retry_after if isinstance(exc, UpstashUnavailable) else 1
        return Decision(allowed=settings.ratelimit_fail_open, limit=max_requests, remaining=max_requests,
                        reset=time.time() + window_s, degraded=True, retry_after=retry_after)


async def check(user_id: str, rpm: int, *, key_id: str | None = None, key_rpm: int | None = None) -> Decision:
    """Apply the user's tier limit (and the key's own limit, if it has one)."""
    if key_id is not None and key_rpm:
        user_d, key_d = await asyncio.gather(limit(f"user:{user_id}", rpm), limit(f"key:{key_id}", key_rpm))
        return user_d if not user_d.allowed or (key_d.allowed and user_d.remaining <= key_d.remaining) else key_d
    return await limit(f"user:{user_id}", rpm)


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
