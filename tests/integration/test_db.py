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
from tests.support.services import kill_our_backends

pytestmark = pytest.mark.integration


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


# ----------------------------------------------------------------------------- db.call (hot statements)
ECHO = db.Statement("test_echo", "SELECT $1::int + 1 AS n, $2::text AS t, $3::numeric AS d")
NONE = db.Statement("test_none", "SELECT 1 WHERE $1::boolean")
SLEEP = db.Statement("test_sleep", "SELECT pg_sleep($1::float8), 'done'")


@pytest.fixture
def one_connection(fresh_pool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool of one connection: every call and ``db.connection()`` use the same server backend."""
    monkeypatch.setenv("DB_POOL_MAX", "1")
    reset_settings()


async def prepared_names() -> set[str]:
    rows = await db.fetchall("SELECT name FROM pg_prepared_statements")
    return {r["name"] for r in rows}


async def test_call_returns_the_first_row_as_text(fresh_pool: None) -> None:
    assert await db.call(ECHO, (b"41", "é".encode(), b"0.00000001")) == [b"42", "é".encode(), b"0.00000001"]
    assert await db.call(ECHO, (b"1", None, None)) == [b"2", None, None]
    assert await db.call(NONE, (b"f",)) is None
    assert await db.call(NONE, (b"t",)) == [b"1"]


async def test_call_text_in_another_client_encoding(fresh_pool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")  # libpq's; the parameters are still given as UTF-8
    await db.close_pool()
    assert await db.call(ECHO, (b"1", "é".encode(), b"1")) == [b"2", "é".encode("latin-1"), b"1"]
    monkeypatch.undo()
    await db.close_pool()
    assert await db.call(ECHO, (b"1", "é".encode(), b"1")) == [b"2", "é".encode(), b"1"]


async def test_call_prepares_once_per_connection_directly_and_nothing_through_a_pooler(
        one_connection: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        assert await db.call(ECHO, (str(i).encode(), b"x", b"1")) == [str(i + 1).encode(), b"x", b"1"]
    assert "test_echo" in await prepared_names()  # direct: psycopg's rule (prepare_threshold set)

    monkeypatch.setenv("DATABASE_POOLED", "true")  # what a transaction-mode pooler gets: nothing named
    reset_settings()
    await db.close_pool()
    for i in range(10):
        assert await db.call(ECHO, (str(i).encode(), b"x", b"1")) == [str(i + 1).encode(), b"x", b"1"]
    assert await prepared_names() == set()


async def test_call_prepares_again_after_the_server_forgot(one_connection: None) -> None:
    assert await db.call(ECHO, (b"1", b"a", b"1")) == [b"2", b"a", b"1"]
    async with db.connection() as conn:  # the same connection (a pool of one)
        await conn.execute("DEALLOCATE ALL")
    assert await db.call(ECHO, (b"2", b"b", b"1")) == [b"3", b"b", b"1"]
    assert "test_echo" in await prepared_names()
    pool = await db.get_pool()
    async with pool.connection() as conn:  # a call cancelled after the server had prepared it
        conn.prepared_here.discard(b"test_echo")  # type: ignore[attr-defined]
    assert await db.call(ECHO, (b"3", b"c", b"1")) == [b"4", b"c", b"1"]


async def test_call_raises_sql_errors_as_psycopg_does_and_the_connection_stays_usable(fresh_pool: None) -> None:
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        await db.call(ECHO, (b"not a number", b"x", b"1"))
    with pytest.raises(psycopg.DataError, match="NUL"):  # as psycopg's str dumper: never truncated at the NUL
        await db.call(ECHO, (b"1", b"a\x00b", b"1"))
    with pytest.raises(psycopg.errors.UndefinedFunction):
        await db.call(db.Statement("test_missing", "SELECT no_such_function($1::int)"), (b"1",))
    assert await db.call(ECHO, (b"1", b"x", b"1")) == [b"2", b"x", b"1"]


async def test_call_retries_a_dead_connection_once(fresh_pool: None, database_url: str) -> None:
    pid = db.Statement("test_pid", "SELECT pg_backend_pid() WHERE $1::boolean")
    before = await db.call(pid, (b"t",))
    assert before is not None
    assert kill_our_backends(database_url) >= 1
    after = await db.call(pid, (b"t",))  # no error reaches the caller
    assert after is not None and after != before


async def test_call_statement_timeout(fresh_pool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "200")
    reset_settings()
    await db.close_pool()
    with pytest.raises(psycopg.errors.QueryCanceled):
        await db.call(SLEEP, (b"3",))
    assert await db.call(SLEEP, (b"0",)) == [b"", b"done"]


async def test_a_cancelled_call_never_returns_a_busy_connection_to_the_pool(one_connection: None,
                                                                             database_url: str) -> None:
    task = asyncio.ensure_future(db.call(SLEEP, (b"5",)))
    await asyncio.sleep(0.3)  # the statement is running on the server
    task.cancel()
    started = time.perf_counter()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 2  # psycopg cancelled it on the server, not waited 5 s
    pool = await db.get_pool()
    async with pool.connection() as conn:  # back in the pool idle, or replaced
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await db.call(SLEEP, (b"0",)) == [b"", b"done"]
    with psycopg.connect(database_url, autocommit=True) as other:
        running = other.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                "AND query LIKE 'SELECT pg_sleep($1::float8)%%'").fetchone()
    assert running == (0,)
