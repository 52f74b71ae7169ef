"""The Upstash Redis REST client: one per container, created lazily.

upstash-redis ships with no HTTP timeout and a 3 s sleep before its retry, and sends every
command through httpx's default transport. On the request path all three are wrong, so the
client keeps upstash-redis's command formatting and reply decoding but executes each REST call
on the gateway's lean HTTP/1.1 client (``gateway.upstream_http``, the one the provider calls use;
one client of its own, keep-alive connections) with an explicit short total timeout. Until issue
15's tail pass the calls went through an aiohttp session (itself about a third of the CPU of the
default httpx path); the lean client spares ~80 µs of CPU per call (BENCHMARKS.md, "tail"). It
relies on two private helpers of upstash-redis (``_format_command`` and the ``_http`` attribute),
hence the upper bound on that dependency.

Failures:
- a keep-alive connection that went stale while the container was frozen (the server or a NAT
  dropped it; the reused socket is reset or closed on first use) is retried ONCE on a new
  connection; a refused or timed-out connection is not;
- a circuit breaker: after a timeout or connection failure, every call fails at once with
  ``UpstashUnavailable`` for ``UPSTASH_BREAKER_S`` seconds, so a hanging Upstash costs one
  timeout per container per interval instead of ``UPSTASH_TIMEOUT_S`` on every request; the first
  call after the interval tries again.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import sys
import time
import types
from typing import Any


class _DeferredHttpx(types.ModuleType):
    """httpx as upstash-redis's module sees it: upstash-redis uses httpx only to build its own HTTP
    clients, which the gateway never builds (``make_client`` replaces the executor), so httpx
    (~10 ms of a cold start) is imported on the first use of one of its attributes, if ever."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def _import_upstash_redis() -> None:
    """Import upstash-redis with httpx deferred in its namespace only: ``import httpx`` anywhere
    else (now or later) is the real module."""
    if "upstash_redis.http" in sys.modules or "httpx" in sys.modules:
        return  # imported already (or httpx is): nothing to defer
    placeholder = sys.modules["httpx"] = _DeferredHttpx("httpx")
    try:
        importlib.import_module("upstash_redis.asyncio.client")
    finally:
        if sys.modules.get("httpx") is placeholder:
            del sys.modules["httpx"]


_import_upstash_redis()

# isort: split
import upstash_redis.asyncio.client as _upstash_client  # noqa: E402
from upstash_redis.asyncio import Redis as AsyncRedis  # noqa: E402
from upstash_redis.errors import UpstashError  # noqa: E402
from upstash_redis.http import _format_command, format_response  # noqa: E402

from .config import Settings, get_settings  # noqa: E402
from .loops import PerLoop  # noqa: E402
from .upstream_http import (  # noqa: E402
    ClientConnectorError,
    ClientError,
    ClientOSError,
    Limits,
    ServerDisconnectedError,
    Timeouts,
    UpstreamClient,
    UpstreamRequest,
)

# As the aiohttp connector this client replaced: at most 64 connections, idle ones kept 60 s
LIMITS = Limits(max_connections=64, keepalive_expiry=60.0)
# No per-phase timeout: the whole call (a connection if needed, the request, the reply) is bounded
# by one total timeout (UPSTASH_TIMEOUT_S), as aiohttp's ClientTimeout(total=...) bounded it.
NO_PHASE_TIMEOUTS = Timeouts(connect=None, read=None, write=None, pool=None)


class UpstashUnavailable(UpstashError):
    """Upstash did not answer (or failed less than ``retry_after`` seconds ago)."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(f"Upstash unavailable: {reason}")
        self.reason = reason
        self.retry_after = retry_after


def _stale(exc: BaseException) -> bool:
    """A reused keep-alive connection the other side had dropped (not a refused new one)."""
    return isinstance(exc, ServerDisconnectedError) or (
        isinstance(exc, ClientOSError) and not isinstance(exc, ClientConnectorError))


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ClientConnectorError):
        return "connection refused or unreachable"
    return type(exc).__name__


class UpstashExecutor:
    """Drop-in for ``upstash_redis.http.AsyncHttpClient``: same ``execute`` contract."""

    def __init__(self, encoding: str | None, timeout: float, breaker_s: float = 0.0) -> None:
        self._encoding = encoding
        self._timeout_s = timeout
        self._client: UpstreamClient | None = None
        self._breaker_s = breaker_s
        self._open_until = 0.0
        self._open_reason = ""

    def _get_client(self) -> UpstreamClient:
        client = self._client
        if client is None or client.is_closed:
            client = self._client = UpstreamClient(NO_PHASE_TIMEOUTS, LIMITS)
        return client

    async def execute(self, url: str, headers: dict[str, str], command: list[Any],
                      from_pipeline: bool = False) -> Any:
        response, status = await self._send(url, headers, _format_command(command, from_pipeline=from_pipeline))
        if isinstance(response, dict) and "result" not in response and "error" not in response:
            raise UpstashError(f"unexpected reply from Upstash (HTTP {status})")
        if not from_pipeline:
            return format_response(response, self._encoding)  # type: ignore[arg-type]
        return [format_response(sub, self._encoding) for sub in response]  # type: ignore[arg-type]

    async def _send(self, url: str, headers: dict[str, str], payload: Any) -> tuple[Any, int]:
        remaining = self._open_until - time.monotonic()
        if remaining > 0:
            raise UpstashUnavailable(self._open_reason, max(1, math.ceil(remaining)))
        # the request as the aiohttp session sent it (``json=payload``: json.dumps, its Content-Type)
        request = UpstreamRequest("POST", url, json.dumps(payload).encode(),
                                  {**headers, "Content-Type": "application/json"})
        retried = False
        while True:
            try:
                async with asyncio.timeout(self._timeout_s):
                    r = await self._get_client().send(request, stream=True)
                    try:
                        raw = await r.aread()
                    finally:
                        await r.aclose()
            except (TimeoutError, ClientError) as exc:
                if not retried and _stale(exc):
                    retried = True  # once, on a new connection
                    continue
                reason = _reason(exc, self._timeout_s)
                if self._breaker_s > 0:
                    self._open_until = time.monotonic() + self._breaker_s
                    self._open_reason = reason
                raise UpstashUnavailable(reason, max(1, math.ceil(self._breaker_s))) from exc
            try:
                return json.loads(raw), r.status_code
            except ValueError as exc:
                raise UpstashError(f"invalid reply from Upstash (HTTP {r.status_code})") from exc

    def discard(self) -> None:
        """Close its connections now (no await: its loop may be gone)."""
        if self._client is not None:
            self._client.discard()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _NoExecutor:
    """Stands in for upstash-redis's executor while ``make_client`` builds the client."""

    def __init__(self, **_: Any) -> None:
        pass


def make_client(settings: Settings | None = None) -> AsyncRedis:
    settings = settings or get_settings()
    # upstash-redis has no timeout/transport option: its own executor (an httpx client, which loads
    # a CA bundle: ~20-80 ms and ~1-2.5 MiB of a cold start) is never built; ours replaces it.
    saved = _upstash_client.AsyncHttpClient
    _upstash_client.AsyncHttpClient = _NoExecutor  # type: ignore[misc,assignment]
    try:
        redis = AsyncRedis(url=settings.upstash_redis_rest_url, token=settings.upstash_redis_rest_token,
                           rest_encoding=None, rest_retries=0, rest_retry_interval=0, allow_telemetry=False,
                           read_your_writes=False)
    finally:
        _upstash_client.AsyncHttpClient = saved  # type: ignore[misc]
    redis._http = UpstashExecutor(None, settings.upstash_timeout_s,  # type: ignore[assignment]
                                  settings.upstash_breaker_s)
    return redis


def _discard(redis: AsyncRedis) -> None:
    executor = getattr(redis, "_http", None)
    if isinstance(executor, UpstashExecutor):
        executor.discard()


_client: PerLoop[AsyncRedis] = PerLoop(make_client, discard=_discard)


def get_redis() -> AsyncRedis:
    """The container's client, bound to the running event loop."""
    return _client.get()


def reset_redis() -> None:
    """Forget the client (tests, settings changes); its connections are closed."""
    old, _ = _client.take()
    if old is not None:
        _discard(old)
