"""A real PgBouncer in transaction mode (tests/support/pgbouncer.py), as serverless Postgres is
usually reached: the failures gateway.db avoids reproduce with psycopg's defaults (server-side
prepared statements, startup ``options``), and the gateway's own settings work through it,
migrations and the database-default statement timeout included.

The whole money path through PgBouncer (reserve/settle, webhooks, the e2e chat) is
``make test-pgbouncer`` (TEST_DB_VIA=pgbouncer), part of ``make test``."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from gateway import db
from gateway.config import get_settings, reset_settings
from gateway.migrate import discover, migrate
from tests.support import pgbouncer, services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bouncer() -> Iterator[pgbouncer.PgBouncer]:
    services.ensure_services()
    b = pgbouncer.start(pool_size=3)
    yield b
    b.stop()


@pytest.fixture
def fresh_db(bouncer: pgbouncer.PgBouncer) -> Iterator[str]:
    url = services.create_database("mlp_pgb")
    try:
        yield url
    finally:
        services.drop_database(url)  # WITH (FORCE): PgBouncer's server connections go too


@pytest.fixture
async def gateway_via(bouncer: pgbouncer.PgBouncer, fresh_db: str,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The gateway's pool on the pooled URL of a migrated fresh database, as deployed."""
    migrate(fresh_db, statement_timeout_ms=300)
    monkeypatch.setenv("DATABASE_URL", bouncer.pooled(fresh_db))
    monkeypatch.setenv("DATABASE_POOLED", "true")
    monkeypatch.delenv("DB_STATEMENT_TIMEOUT_MS", raising=False)
    reset_settings()
    await db.close_pool()
    yield bouncer.pooled(fresh_db)
    await db.close_pool()
    monkeypatch.undo()
    reset_settings()


async def _hammer(url: str, **kwargs: object) -> list[str]:
    """4 connections x 100 autocommit statements, interleaved: the errors seen."""
    errors: list[str] = []

    async def worker() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, **kwargs) as conn:  # type: ignore[arg-type]
            for i in range(100):
                try:
                    await conn.execute("SELECT %s::int + 1", (i,))
                except psycopg.Error as exc:
                    errors.append(str(exc).splitlines()[0])
                await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(4)))
    return errors


async def test_psycopg_prepared_statements_break_through_the_pooler(bouncer: pgbouncer.PgBouncer,
                                                                   fresh_db: str) -> None:
    url = bouncer.pooled(fresh_db)
    # Without the fix: psycopg prepares a statement after 5 executions on a connection; the next
    # transaction runs on another server connection that never saw it.
    errors = await _hammer(url, prepare_threshold=5)
    assert errors, "expected prepared-statement failures through PgBouncer in transaction mode"
    assert all("prepared statement" in e for e in errors), Counter(errors)
    # The gateway's parameters for a pooled URL: no server-side prepared statements.
    pooled = db.connect_kwargs(get_settings(), pooled=True)
    assert pooled["prepare_threshold"] is None and "options" not in pooled
    assert await _hammer(url, prepare_threshold=pooled["prepare_threshold"]) == []


def test_startup_options_are_refused_by_the_pooler(bouncer: pgbouncer.PgBouncer, fresh_db: str) -> None:
    url = bouncer.pooled(fresh_db)
    direct = db.connect_kwargs(get_settings(), pooled=False)
    assert direct["options"].startswith("-c statement_timeout=")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(url, **{k: v for k, v in direct.items() if k != "prepare_threshold"}).close()
    assert "unsupported startup parameter" in str(info.value)
    assert db.describe(info.value) == "the pooler rejected a startup parameter"
    psycopg.connect(url, **db.connect_kwargs(get_settings(), pooled=True)).close()  # what we send: accepted


async def test_gateway_queries_through_the_pooler(gateway_via: str) -> None:
    async def batch(n: int) -> list[int]:
        rows = await asyncio.gather(*(db.fetchone("SELECT %s::int AS n", (n * 10 + i,)) for i in range(2)))
        return [r["n"] for r in rows if r]

    seen = [n for k in range(200) for n in await batch(k)]  # 400 statements, the same one repeated
    assert len(seen) == 400
    async with db.transaction() as conn:  # a transaction stays on one server connection
        await conn.execute("CREATE TEMP TABLE t (x int) ON COMMIT DROP")
        await conn.execute("INSERT INTO t VALUES (1), (2)")
        cur = await conn.execute("SELECT count(*) FROM t")
        assert await cur.fetchone() == (2,)


async def test_hot_statements_through_the_pooler(gateway_via: str) -> None:
    """``db.call`` (reserve, settle) sends nothing named through the pooler: 400 calls of one
    statement, two at a time, over server connections that never saw it."""
    statement = db.Statement("test_hot", "SELECT $1::int + 1")

    async def batch(n: int) -> list[bytes | None]:
        rows = await asyncio.gather(*(db.call(statement, (str(n * 10 + i).encode(),)) for i in range(2)))
        return [r[0] for r in rows if r]

    seen = [v for k in range(200) for v in await batch(k)]
    assert seen == [str(k * 10 + i + 1).encode() for k in range(200) for i in range(2)]


async def test_statement_timeout_applies_without_startup_options(gateway_via: str) -> None:
    # `mlp migrate` set the database default (300 ms here); the pooled sessions get it.
    row = await db.fetchone("SELECT current_setting('statement_timeout') AS t, "
                            "current_setting('idle_in_transaction_session_timeout') AS idle")
    assert row == {"t": "300ms", "idle": "1min"}
    with pytest.raises(psycopg.errors.QueryCanceled):
        await db.fetchone("SELECT pg_sleep(2)")
    assert db.describe(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")) == \
        "statement timeout"
    assert await db.fetchone("SELECT 1 AS ok") == {"ok": 1}


def test_migrations_through_the_pooler_are_safe(bouncer: pgbouncer.PgBouncer, fresh_db: str) -> None:
    # Migrations belong on the direct URL, but the transaction-scoped lock keeps them safe even
    # through a pooler: concurrent runs apply each version exactly once.
    url = bouncer.pooled(fresh_db)
    results: list[list[str]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        try:
            barrier.wait(10)
            results.append(migrate(url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert Counter(v for r in results for v in r) == Counter(m.version for m in discover())
