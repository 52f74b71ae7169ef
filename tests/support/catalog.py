"""Fixtures and helpers for the catalogue tests (tests/integration/test_catalog_*.py).

``catalog_env`` gives a test the real Postgres (with ``model_pricing`` reset to the seed of
0001_init.sql, and whatever it held before restored afterwards -- ``clean_state`` does not touch
it), its own Redis key prefix for the cached catalogue, and the fake providers reset to their
default catalogues (~300 OpenRouter models).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis as redis_sync

from gateway.catalog import cache, registry
from gateway.config import reset_settings
from gateway.migrate import default_directory
from infra.local.servers import RunningServer
from tests.support import services

ROOT = Path(__file__).resolve().parents[2]
CATALOG_TABLES = ("model_pricing", "model_price_history", "catalog_syncs", "catalog_sources")


def seed_sql() -> str:
    """The seed INSERT of model_pricing, exactly as the first migration has it."""
    text = (default_directory() / "0001_init.sql").read_text(encoding="utf-8")
    match = re.search(r"INSERT INTO model_pricing.*?;\s*$", text, re.S | re.M)
    assert match, "seed INSERT not found in 0001_init.sql"
    return match.group(0)


def reset_catalog(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(CATALOG_TABLES) + " RESTART IDENTITY")
        conn.execute(seed_sql())  # type: ignore[arg-type]


@dataclass
class CatalogEnv:
    database_url: str
    fake: str                  # base URL of the fake provider server
    prefix: str                # Redis key prefix of the cached catalogue

    def fake_put(self, provider: str, models: list[Any]) -> None:
        httpx.put(f"{self.fake}/__fake/catalog/{provider}", json=models, timeout=10).raise_for_status()

    def fake_get(self, provider: str) -> list[Any]:
        r = httpx.get(f"{self.fake}/__fake/catalog/{provider}", timeout=10)
        r.raise_for_status()
        return list(r.json())

    def fake_fail(self, provider: str, status: int = 500) -> None:
        httpx.post(f"{self.fake}/__fake/catalog/{provider}/fail", json={"status": status},
                   timeout=10).raise_for_status()

    def fake_recover(self, provider: str) -> None:
        httpx.delete(f"{self.fake}/__fake/catalog/{provider}/fail", timeout=10).raise_for_status()

    def fake_requests(self, provider: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.fake}/__fake/requests", params={"provider": provider}, timeout=10)
        r.raise_for_status()
        return list(r.json())

    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            cur.execute(query, params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def redis(self) -> redis_sync.Redis:
        return redis_sync.Redis.from_url(services.REDIS_URL)

    def redis_get(self, key: str) -> str | None:
        value = self.redis().get(key)
        return value.decode() if isinstance(value, bytes) else value  # type: ignore[return-value]

    def drop_cache(self) -> None:
        """Forget the cached catalogue everywhere (Redis and this process)."""
        r = self.redis()
        keys = list(r.scan_iter(f"{self.prefix}:*"))
        if keys:
            r.delete(*keys)
        cache.reset_local()


@pytest.fixture
def catalog_env(stack: str, fake_upstream: RunningServer) -> Iterator[CatalogEnv]:
    url = stack
    backup = "_catalog_backup_" + uuid.uuid4().hex[:8]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {backup} AS SELECT * FROM model_pricing")  # type: ignore[arg-type]
    reset_catalog(url)
    prefix = "mlp-test-catalog-" + uuid.uuid4().hex[:10]
    os.environ["CATALOG_CACHE_PREFIX"] = prefix
    reset_settings()
    httpx.post(f"{fake_upstream.url}/__fake/reset", timeout=10).raise_for_status()
    cache.reset_local()
    cache.STATS.reset()
    registry.invalidate()
    env = CatalogEnv(database_url=url, fake=fake_upstream.url, prefix=prefix)
    try:
        yield env
    finally:
        env.drop_cache()
        os.environ.pop("CATALOG_CACHE_PREFIX", None)
        reset_settings()
        httpx.post(f"{fake_upstream.url}/__fake/reset", timeout=10).raise_for_status()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE " + ", ".join(CATALOG_TABLES) + " RESTART IDENTITY")  # type: ignore[arg-type]
            conn.execute(f"INSERT INTO model_pricing SELECT * FROM {backup}")  # type: ignore[arg-type]
            conn.execute(f"DROP TABLE {backup}")  # type: ignore[arg-type]
        registry.invalidate()
        cache.reset_local()
