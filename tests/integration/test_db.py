"""The Postgres access layer against a real server: dead connections are retried once (a Lambda
container thawed after its connections were closed server-side), transactions roll back, the
statement timeout applies, and one pool per event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from gateway import db
from gateway.config import get_settings, reset_settings
from infra.local.servers import free_port

pytestmark = pytest.mark.integration


def kill_our_backends(url: str) -> int:
    """Terminate every server connection our pool holds (what a long freeze or a failover does)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND pid <> pg_backend_pid()", (get_settings().service_name[:60],)).fetchall()
    return len(rows)


@pytest.fixture
async def fresh_pool(database_url: str) -> AsyncIterator[None]:
    await db.close_pool()
    yield
    await db.close_pool()


async def test_run_fetch_modes(fresh_pool: None) -> None:
    assert await db.fetchone("SELECT 1 AS x") == {"x": 1}
    assert await db.fetchone("SELECT 1 AS x WHERE false") is None
    assert await db.fetchall("SELECT g AS n FROM generate_series(1, 3) g") == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert await db.execute("SELECT 1 FROM generate_series(1, 4)") == 4
    assert await db.run("SELECT 1") is None


async def test_dead_connection_is_retried_once(fresh_pool: None, database_url: str) -> None:
    before = await db.fetchone("SELECT pg_backend_pid() AS pid")
    assert before is not None
    assert kill_our_backends(database_url) >= 1
    after = await db.fetchone("SELECT pg_backend_pid() AS pid")  # no error reaches the caller
    assert after is not None and after["pid"] != before["pid"]


async def test_all_pooled_connections_dead(fresh_pool: None, database_url: str) -> None:
    # Several idle connections, all killed at once: the retry must not pick another dead one.
    async def hold() -> None:
        async with db.connection() as conn:
            await conn.execute("SELECT pg_sleep(0.05)")

    await asyncio.gather(*[hold() for _ in range(4)])
    assert kill_our_backends(database_url) >= 2
    assert await db.fetchone("SELECT 42 AS x") == {"x": 42}
    assert await db.fetchone("SELECT 43 AS x") == {"x": 43}


async def test_sql_errors_are_not_retried(fresh_pool: None) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable):
        await db.fetchone("SELECT * FROM no_such_table")
    assert await db.fetchone("SELECT 1 AS x") == {"x": 1}  # the connection is still usable


async def test_transaction_rolls_back_on_error(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="1")
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await conn.execute("UPDATE balances SET balance = balance + 100 WHERE user_id = %s", (user.user_id,))
            raise RuntimeError("boom")
    row = await db.fetchone("SELECT balance FROM balances WHERE user_id = %s", (user.user_id,))
    assert row is not None and row["balance"] == 1


async def test_statement_timeout(fresh_pool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "200")
    reset_settings()
    await db.close_pool()
    with pytest.raises(psycopg.errors.QueryCanceled):
        await db.fetchone("SELECT pg_sleep(3)")  # cancelled by the 200 ms statement timeout


async def test_unreachable_database_fails_fast_without_retry(fresh_pool: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nope")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "1")
    reset_settings()
    await db.close_pool()
    started = time.perf_counter()
    with pytest.raises(psycopg.OperationalError):
        await db.fetchone("SELECT 1")
    assert time.perf_counter() - started < 1.9  # one connect timeout, not two
    monkeypatch.undo()
    reset_settings()
    assert await db.fetchone("SELECT 1 AS x") == {"x": 1}  # a failed open leaves nothing behind


async def test_a_fresh_pool_opens_one_connection_for_its_first_statement_then_grows(fresh_pool: None) -> None:
    """A cold start's first statement waits for the pool's first connection; it does not open a
    second one meanwhile (the pool grew by one when it found none idle). Afterwards concurrent
    blocks get up to DB_POOL_MAX connections, as before."""
    assert await db.fetchone("SELECT 1 AS x") == {"x": 1}
    await asyncio.sleep(0.3)  # a second connect, if one was started, is over by now
    pool = await db.get_pool()
    assert pool.get_stats()["connections_num"] == 1
    assert pool.max_size == get_settings().db_pool_max == 2

    async def hold() -> int:
        async with db.connection() as conn:
            cur = await conn.execute("SELECT pg_backend_pid(), pg_sleep(0.2)")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    pids = await asyncio.gather(hold(), hold(), hold())
    assert len(set(pids)) == 2 and pool.get_stats()["pool_size"] == 2


async def test_pool_is_per_event_loop(fresh_pool: None) -> None:
    pool = await db.get_pool()
    assert await db.get_pool() is pool

    def other_loop() -> int:
        async def go() -> int:
            try:
                other = await db.get_pool()
                assert other is not pool
                row = await db.fetchone("SELECT 7 AS x")
                assert row is not None
                return int(row["x"])
            finally:
                await db.close_pool()

        return asyncio.run(go())

    await db.close_pool()
    assert await asyncio.to_thread(other_loop) == 7
    assert await db.fetchone("SELECT 8 AS x") == {"x": 8}  # back on this loop: a new pool
