"""The Upstash Redis REST client: one per container, created lazily.

upstash-redis ships with no HTTP timeout and a 3 s sleep before its retry; on the request path
both are wrong, so the client gets an explicit short timeout, no retry, and the aiohttp-backed
httpx transport (much cheaper per call than httpx's default transport).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from upstash_redis.asyncio import Redis as AsyncRedis

from .config import Settings, get_settings

_client: AsyncRedis | None = None
_client_loop: asyncio.AbstractEventLoop | None = None


def _http_client(timeout: float) -> httpx.AsyncClient:
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=timeout), transport=AiohttpTransport(),
                             limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=60))


def make_client(settings: Settings | None = None) -> AsyncRedis:
    settings = settings or get_settings()
    redis = AsyncRedis(url=settings.upstash_redis_rest_url, token=settings.upstash_redis_rest_token,
                       rest_retries=0, rest_retry_interval=0, allow_telemetry=False, read_your_writes=False)
    # upstash-redis exposes no timeout/transport option; swap the httpx client it created.
    http: Any = redis._http
    http._client = _http_client(settings.upstash_timeout_s)
    return redis


def get_redis() -> AsyncRedis:
    """The container's client, bound to the running event loop."""
    global _client, _client_loop
    loop = asyncio.get_running_loop()
    if _client is None or _client_loop is not loop:
        _client = make_client()
        _client_loop = loop
    return _client


def reset_redis() -> None:
    global _client, _client_loop
    _client = None
    _client_loop = None
