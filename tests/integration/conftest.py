"""Integration fixtures: real Postgres (a fresh database per run, tables reset per test), the
Upstash REST bridge on the real Redis, and the fake provider servers on loopback ports.

With ``TEST_DB_VIA=pgbouncer`` (``make test-pgbouncer``) the gateway reaches that database through
a real PgBouncer in transaction mode (tests/support/pgbouncer.py); ``database_url`` stays the
direct URL for the tests' own bookkeeping connections."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway import auth, db, upstash
from gateway.account import users
from gateway.config import get_settings, reset_settings
from gateway.migrate import migrate
from infra.local.servers import RunningServer, start_in_thread
from tests.support import pgbouncer, services


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    services.ensure_services()
    url = services.create_database()
    bouncer = None
    if pgbouncer.via_pgbouncer():
        bouncer = pgbouncer.start()
        # As `mlp migrate` does: the direct URL, and the database's default statement_timeout
        # (poolers refuse it as a startup option).
        migrate(url, statement_timeout_ms=get_settings().db_statement_timeout_ms)
        os.environ.update({"DATABASE_URL": bouncer.pooled(url), "DATABASE_DIRECT_URL": url,
                           "DATABASE_POOLED": "true"})
    else:
        migrate(url)
        os.environ["DATABASE_URL"] = url
    reset_settings()
    yield url
    if bouncer is not None:
        bouncer.stop()
        for name in ("DATABASE_DIRECT_URL", "DATABASE_POOLED"):
            os.environ.pop(name, None)
    services.drop_database(url)


@pytest.fixture(scope="session")
def upstash_bridge() -> Iterator[RunningServer]:
    from infra.local.upstash_bridge import create_app

    token = "bridge-" + secrets.token_hex(8)
    server = start_in_thread(create_app(redis_url=services.REDIS_URL, token=token))
    os.environ["UPSTASH_REDIS_REST_URL"] = server.url
    os.environ["UPSTASH_REDIS_REST_TOKEN"] = token
    reset_settings()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[RunningServer]:
    from infra.local.fake_providers import create_app

    server = start_in_thread(create_app())
    base = server.url
    env = {
        "OPENAI_BASE_URL": f"{base}/openai/v1", "OPENROUTER_BASE_URL": f"{base}/openrouter/api/v1",
        "ANTHROPIC_BASE_URL": f"{base}/anthropic/v1", "GEMINI_BASE_URL": f"{base}/gemini/v1beta",
        "COMPAT_BASE_URL": f"{base}/compat/v1",
        "OPENAI_API_KEY": "sk-fake-openai", "OPENROUTER_API_KEY": "sk-or-fake", "ANTHROPIC_API_KEY": "sk-ant-fake",
        "GEMINI_API_KEY": "fake-gemini-key", "COMPAT_API_KEY": "fake-compat-key",
    }
    os.environ.update(env)
    reset_settings()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(database_url: str, upstash_bridge: RunningServer) -> str:
    return database_url


@pytest.fixture(autouse=True)
async def clean_state(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Each integration test starts from empty tables and its own rate-limit key space."""
    if "database_url" in request.fixturenames or "stack" in request.fixturenames:
        url = request.getfixturevalue("database_url")
        services.reset_tables(url)
        os.environ["RATELIMIT_PREFIX"] = "mlp-test-" + uuid.uuid4().hex[:10]
        reset_settings()
        auth.forget_key()
        upstash.reset_redis()
    yield
    os.environ.pop("RATELIMIT_PREFIX", None)


@dataclass
class TestUser:
    user_id: uuid.UUID
    api_key: str
    key_id: uuid.UUID


@pytest.fixture
def make_user(database_url: str):  # type: ignore[no-untyped-def]
    async def _make(balance: Decimal | str = "10", tier: str = "pro", email: str | None = None) -> TestUser:
        user_id = await users.create_user(email or f"u-{uuid.uuid4().hex[:10]}@example.com", tier=tier,
                                             welcome_credit=Decimal(balance))
        key = await users.create_api_key(user_id, "test")
        return TestUser(user_id=user_id, api_key=key.secret, key_id=key.key_id)

    return _make


@pytest.fixture(scope="session", autouse=True)
async def _close_pool_at_end() -> AsyncIterator[None]:
    yield
    await db.close_pool()


def settings():  # type: ignore[no-untyped-def]
    return get_settings()


@pytest.fixture
def setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``setting(name=value, ...)``: settings from the environment for this test (undone after)."""
    def set_(**values: Any) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name.upper(), str(value))
        reset_settings()

    yield set_
    monkeypatch.undo()
    reset_settings()


@pytest.fixture
async def conns(database_url: str) -> AsyncIterator[Any]:
    """Direct connections of the test's own: ``conns()`` opens one in a transaction (a lock holder),
    ``conns(autocommit=True)`` a probe; closed after the test."""
    opened: list[psycopg.AsyncConnection[Any]] = []

    async def connect(autocommit: bool = False) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=autocommit)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.close()


@pytest.fixture
async def big_pool(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """A pool wide enough for hundreds of concurrent money statements."""
    monkeypatch.setenv("DB_POOL_MAX", "20")
    reset_settings()
    await db.close_pool()
    yield
    monkeypatch.delenv("DB_POOL_MAX")
    reset_settings()
    await db.close_pool()
