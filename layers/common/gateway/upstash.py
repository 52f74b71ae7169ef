"""The Upstash Redis REST client: one per container, created lazily.

upstash-redis ships with no HTTP timeout and a 3 s sleep before its retry, and sends every
command through httpx's default transport. On the request path all three are wrong, so the
client keeps upstash-redis's command formatting and reply decoding but executes each REST call
on one shared aiohttp session with an explicit short timeout and no retry (about a third of the
CPU of the default httpx path, measured in BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from upstash_redis.asyncio import Redis as AsyncRedis
from upstash_redis.errors import UpstashError
from upstash_redis.http import _format_command, format_response

from .config import Settings, get_settings

_client: AsyncRedis | None = None
_client_loop: asyncio.AbstractEventLoop | None = None


class AiohttpExecutor:
    """Drop-in for ``upstash_redis.http.AsyncHttpClient``: same ``execute`` contract."""

    def __init__(self, encoding: str | None, timeout: float) -> None:
        self._encoding = encoding
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  json_serialize=json.dumps)
        return self._session

    async def execute(self, url: str, headers: dict[str, str], command: list[Any],
                      from_pipeline: bool = False) -> Any:
        payload = _format_command(command, from_pipeline=from_pipeline)
        async with self._get_session().post(url, headers=headers, json=payload) as r:
            try:
                response = await r.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError) as exc:
                raise UpstashError(f"invalid reply from Upstash (HTTP {r.status})") from exc
        if isinstance(response, dict) and "result" not in response and "error" not in response:
            raise UpstashError(f"unexpected reply from Upstash (HTTP {r.status})")
        if not from_pipeline:
            return format_response(response, self._encoding)  # type: ignore[arg-type]
        return [format_response(sub, self._encoding) for sub in response]  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def make_client(settings: Settings | None = None) -> AsyncRedis:
    settings = settings or get_settings()
    redis = AsyncRedis(url=settings.upstash_redis_rest_url, token=settings.upstash_redis_rest_token,
                       rest_encoding=None, rest_retries=0, rest_retry_interval=0, allow_telemetry=False,
                       read_your_writes=False)
    # upstash-redis has no timeout/transport option: replace the executor it created.
    redis._http = AiohttpExecutor(None, settings.upstash_timeout_s)  # type: ignore[assignment]
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
    """Forget the client (tests, settings changes); its HTTP session is closed in the background."""
    global _client, _client_loop
    old, _client, _client_loop = _client, None, None
    executor = getattr(old, "_http", None)
    if isinstance(executor, AiohttpExecutor):
        try:
            task = asyncio.get_running_loop().create_task(executor.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        except RuntimeError:  # no running loop: nothing can own the session any more
            pass


_closing: set[asyncio.Task[None]] = set()
