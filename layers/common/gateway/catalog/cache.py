"""Where ``GET /v1/models`` gets its catalogue: the warm container, then Upstash, then Postgres.

1. In-process: the last :class:`~gateway.catalog.render.Catalogue` is trusted for
   ``catalog_local_ttl_s`` seconds (no I/O at all on a hit).
2. Upstash Redis: the encoded snapshot under ``<prefix>:snapshot`` with a TTL of
   ``catalog_cache_ttl_s`` (1 h), plus its version under ``<prefix>:version`` so a container whose
   local copy expired re-reads the (larger) snapshot only when it changed.
3. A miss rebuilds the snapshot from Postgres -- never from a provider -- and writes it back.

No stampede: inside a container concurrent callers share one load (an asyncio lock); across
containers the rebuild is guarded by a Redis lock (``SET <prefix>:lock <token> NX PX 15000``).
The holder rebuilds and publishes; the others poll the snapshot key for up to ``LOCK_WAIT_S``
and only rebuild themselves if the holder died. If Upstash is unreachable the container builds
from Postgres itself (logged + metric) and a stale local copy is preferred to an error.

Discovery publishes a fresh snapshot (``publish_from_database``) right after it writes
``model_pricing``; other containers see it within ``catalog_local_ttl_s``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ..config import Settings, get_settings
from ..errors import ServiceUnavailable
from ..loops import loop_lock
from ..observability import count, logger
from ..upstash import get_redis
from . import render
from .render import Catalogue

LOCK_TTL_MS = 15_000
LOCK_WAIT_S = 3.0
POLL_INTERVAL_S = 0.05
_UNLOCK_SCRIPT = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"

T = TypeVar("T")
Loader = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class CacheStats:
    """Counters for tests, the CLI and logs (per process)."""

    local_hits: int = 0
    redis_hits: int = 0
    redis_unchanged: int = 0
    misses: int = 0
    rebuilds: int = 0        # snapshots built from Postgres
    lock_waits: int = 0      # callers that waited for another container's rebuild
    redis_errors: int = 0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


STATS = CacheStats()


class _RedisDown(Exception):
    pass


def prefix(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return settings.catalog_cache_prefix or f"{settings.ratelimit_prefix}:catalog"


def keys(settings: Settings | None = None) -> tuple[str, str, str]:
    """(snapshot key, version key, lock key)."""
    p = prefix(settings)
    return f"{p}:snapshot", f"{p}:version", f"{p}:lock"


async def _redis(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except Exception as exc:
        STATS.redis_errors += 1
        raise _RedisDown(f"{type(exc).__name__}: {exc}") from exc


class CatalogCache:
    """The catalogue of one container. ``loader`` builds a snapshot from Postgres."""

    def __init__(self, loader: Loader | None = None) -> None:
        self._loader: Loader = loader or render.load_snapshot
        self._current: Catalogue | None = None
        self._checked_at = float("-inf")  # never (a monotonic clock may start near 0)
        self._lock = loop_lock()

    @property
    def current(self) -> Catalogue | None:
        return self._current

    def reset_local(self) -> None:
        self._current = None
        self._checked_at = float("-inf")

    def expire_local(self) -> None:
        """Keep the local copy but re-check Redis on the next call."""
        self._checked_at = float("-inf")

    def _fresh(self, settings: Settings) -> bool:
        return self._current is not None and time.monotonic() - self._checked_at < settings.catalog_local_ttl_s

    async def get(self) -> tuple[Catalogue, str]:
        """The catalogue and where it came from: ``local``, ``redis`` or ``postgres``."""
        settings = get_settings()
        if self._fresh(settings):
            STATS.local_hits += 1
            return self._current, "local"  # type: ignore[return-value]
        async with self._lock.get():
            if self._fresh(settings):  # another caller loaded it while we waited
                STATS.local_hits += 1
                return self._current, "local"  # type: ignore[return-value]
            catalogue, source = await self._load(settings)
            self._current, self._checked_at = catalogue, time.monotonic()
            return catalogue, source

    async def _load(self, settings: Settings) -> tuple[Catalogue, str]:
        try:
            try:
                return await self._load_via_redis(settings)
            except _RedisDown as exc:
                _cache_unavailable(exc)
                return Catalogue(await self._build()), "postgres"
        except Exception:
            # Redis and/or Postgres failed: the last good copy beats an error.
            if self._current is not None:
                logger.exception("catalogue refresh failed; serving the stale copy")
                return self._current, "stale"
            raise ServiceUnavailable("The model catalogue is temporarily unavailable.", code="catalog_unavailable",
                                     headers={"Retry-After": str(settings.db_retry_after_s)}) from None

    async def _load_via_redis(self, settings: Settings) -> tuple[Catalogue, str]:
        snapshot_key, version_key, lock_key = keys(settings)
        redis = get_redis()
        current = self._current
        if current is not None:
            version = await _redis(redis.get(version_key))
            if version == current.version:
                STATS.redis_unchanged += 1
                return current, "redis"
        text = await _redis(redis.get(snapshot_key))
        if text:
            try:
                catalogue = Catalogue(render.decode_snapshot(text))
                STATS.redis_hits += 1
                return catalogue, "redis"
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("catalogue cache entry unreadable; rebuilding", extra={"error": str(exc)})
        STATS.misses += 1
        return await self._rebuild_locked(settings, redis, snapshot_key, lock_key)

    async def _build(self) -> dict[str, Any]:
        snapshot = await self._loader()
        STATS.rebuilds += 1
        return snapshot

    async def _build_and_store(self, settings: Settings, redis: Any) -> tuple[Catalogue, str]:
        """Build from Postgres and write it back; a failed write still serves what was built
        (rather than building it a second time in the Redis-down fallback)."""
        snapshot = await self._build()
        try:
            await _write(redis, settings, snapshot)
        except _RedisDown as exc:
            _cache_unavailable(exc)
        return Catalogue(snapshot), "postgres"

    async def _rebuild_locked(self, settings: Settings, redis: Any, snapshot_key: str,
                              lock_key: str) -> tuple[Catalogue, str]:
        token = uuid.uuid4().hex
        if await _redis(redis.set(lock_key, token, nx=True, px=LOCK_TTL_MS)):
            try:
                return await self._build_and_store(settings, redis)
            finally:
                try:
                    await _redis(redis.eval(_UNLOCK_SCRIPT, keys=[lock_key], args=[token]))
                except _RedisDown:
                    pass  # the lock expires on its own
        STATS.lock_waits += 1
        deadline = time.monotonic() + LOCK_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL_S)
            text = await _redis(redis.get(snapshot_key))
            if text:
                return Catalogue(render.decode_snapshot(text)), "redis"
        logger.warning("catalogue rebuild by another container did not finish; rebuilding here")
        return await self._build_and_store(settings, redis)

    async def publish(self, snapshot: dict[str, Any]) -> Catalogue:
        """Store a fresh snapshot in Redis (and this container). Raises if Redis fails."""
        settings = get_settings()
        await _write(get_redis(), settings, snapshot)
        catalogue = Catalogue(snapshot)
        self._current, self._checked_at = catalogue, time.monotonic()
        return catalogue


def _cache_unavailable(exc: Exception) -> None:
    logger.warning("catalogue cache unavailable; building from Postgres", extra={"error": str(exc)})
    count("CatalogCacheUnavailable")


async def _write(redis: Any, settings: Settings, snapshot: dict[str, Any]) -> None:
    snapshot_key, version_key, _ = keys(settings)
    ttl = settings.catalog_cache_ttl_s
    await _redis(redis.set(snapshot_key, render.encode_snapshot(snapshot), ex=ttl))
    await _redis(redis.set(version_key, snapshot["version"], ex=ttl))


_default = CatalogCache()


def default_cache() -> CatalogCache:
    return _default


async def get_catalogue() -> tuple[Catalogue, str]:
    return await _default.get()


async def publish_from_database() -> Catalogue:
    """Rebuild the snapshot from Postgres and publish it (after discovery, refresh, warm-up)."""
    snapshot = await render.load_snapshot()
    STATS.rebuilds += 1
    return await _default.publish(snapshot)


def reset_local() -> None:
    _default.reset_local()
