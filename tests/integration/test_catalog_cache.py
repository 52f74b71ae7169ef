"""The cached catalogue: warm container -> Upstash (the bridge on the real Redis) -> Postgres.

Each ``CatalogCache()`` stands for one Lambda container (its own in-process copy); they share the
Redis cache, so "many containers missing at once" is many instances asked concurrently.
"""

# ruff: noqa: F811  (test arguments named after the catalog_env fixture imported below)

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from gateway import upstash
from gateway.catalog import cache, discovery, render
from gateway.catalog.cache import STATS, CatalogCache
from gateway.config import reset_settings
from tests.support.catalog import CatalogEnv, catalog_env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


async def test_miss_rebuilds_from_postgres_then_hits(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    requests_before = len(env.fake_requests("openrouter"))
    one = CatalogCache()
    catalogue, source = await one.get()
    assert source == "postgres" and len(catalogue) == 26 and STATS.rebuilds == 1
    assert len(env.fake_requests("openrouter")) == requests_before, "a miss never asks a provider"

    snapshot_key, version_key, lock_key = cache.keys()
    r = env.redis()
    assert env.redis_get(version_key) == catalogue.version
    assert 3500 < r.ttl(snapshot_key) <= 3600 and 3500 < r.ttl(version_key) <= 3600  # 1 h TTL
    assert r.get(lock_key) is None, "the rebuild lock is released"
    assert render.decode_snapshot(env.redis_get(snapshot_key) or "")["version"] == catalogue.version

    again, source = await one.get()
    assert source == "local" and again is catalogue
    other, source = await CatalogCache().get()  # another container
    assert source == "redis" and other.version == catalogue.version and STATS.rebuilds == 1


async def test_concurrent_misses_rebuild_once(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    env.drop_cache()
    containers = [CatalogCache() for _ in range(25)]
    results = await asyncio.gather(*(c.get() for c in containers for _ in range(4)))  # 100 callers
    assert STATS.rebuilds == 1, f"{STATS}"
    assert len({cat.version for cat, _ in results}) == 1
    sources = [s for _, s in results]
    assert sources.count("postgres") == 1
    # at most one wait per other container (its other callers share it); a container whose first
    # read comes after the rebuild was published reads Redis and does not wait at all
    assert STATS.lock_waits <= 24
    assert set(sources) <= {"postgres", "redis", "local"}


async def test_concurrent_misses_in_one_container_share_one_load(catalog_env: CatalogEnv) -> None:
    catalog_env.drop_cache()
    one = CatalogCache()
    results = await asyncio.gather(*(one.get() for _ in range(50)))
    assert STATS.rebuilds == 1 and STATS.lock_waits == 0
    assert len({id(cat) for cat, _ in results}) == 1


async def test_expired_local_copy_rereads_only_the_version(catalog_env: CatalogEnv,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    one = CatalogCache()
    first, _ = await one.get()
    one.expire_local()
    same, source = await one.get()
    assert source == "redis" and same is first and STATS.redis_unchanged == 1
    # discovery publishes a new catalogue: the next check picks it up
    await discovery.discover(trigger="test")
    one.expire_local()
    newer, source = await one.get()
    assert source == "redis" and newer.version != first.version and len(newer) == 305


async def test_redis_down_falls_back_to_postgres(catalog_env: CatalogEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")  # nothing listens there
    reset_settings()
    upstash.reset_redis()
    try:
        catalogue, source = await CatalogCache().get()
        assert source == "postgres" and len(catalogue) == 26 and STATS.redis_errors >= 1
    finally:
        monkeypatch.undo()
        reset_settings()
        upstash.reset_redis()


async def test_stale_copy_is_served_when_everything_fails(catalog_env: CatalogEnv,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken() -> dict:  # type: ignore[type-arg]
        raise RuntimeError("postgres down")

    one = CatalogCache()
    good, _ = await one.get()
    one._loader = broken  # type: ignore[assignment]
    catalog_env.drop_cache()
    one._current = good  # drop_cache reset the default cache only; keep this container's copy
    one.expire_local()
    stale, source = await one.get()
    assert source == "stale" and stale is good
    with pytest.raises(Exception) as exc_info:
        await CatalogCache(loader=broken).get()
    assert getattr(exc_info.value, "status", None) == 503


async def test_corrupt_cache_entry_is_rebuilt(catalog_env: CatalogEnv) -> None:
    snapshot_key, _, _ = cache.keys()
    catalog_env.redis().set(snapshot_key, "garbage")
    catalogue, source = await CatalogCache().get()
    assert source == "postgres" and len(catalogue) == 26
    assert (catalog_env.redis_get(snapshot_key) or "").startswith("z1:")


async def test_published_catalogue_prices(catalog_env: CatalogEnv) -> None:
    await discovery.discover(trigger="test")
    catalogue, source = await CatalogCache().get()
    assert source == "redis"  # discovery published it
    body = json.loads(catalogue.list_body(Decimal("0.10"))[0])
    by_id = {m["id"]: m for m in body["data"]}
    assert len(by_id) == 305
    assert by_id["openai/gpt-4o"]["pricing"]["prompt"] == "0.00000275"
    assert by_id["perplexity/sonar"]["pricing"]["request"] == "0.0055"
    assert by_id["meta-llama/llama-3.3-70b-instruct:free"]["pricing"]["prompt"] == "0"
