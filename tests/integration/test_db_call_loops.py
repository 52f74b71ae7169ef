"""``db.call`` (the hot statements) against a real server on both event loops it runs on: the
default loop (Mangum, Lambda) and uvloop (run.sh's uvicorn). Many calls on one connection with
psycopg's own waits (cursors, a transaction, the pool's check) in between; a cancelled call is
cancelled on the server and its connection goes back idle; an idle connection the server closed
costs no busy loop and the next call is retried once on a fresh one; a silent server has its
socket shut at DB_TIMEOUT_S; closing the pool leaves no file descriptor behind. (Written for the
dbcpu lane's standing socket watch, BENCHMARKS.md; kept as the uvloop coverage of ``db.call``.)"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import Any

import psycopg
import pytest
import uvloop

from gateway import db
from gateway.config import reset_settings
from tests.support.services import kill_our_backends

pytestmark = pytest.mark.integration

ECHO = db.Statement("test_loops_echo", "SELECT $1::int + 1, $2::text")
SLEEP = db.Statement("test_loops_sleep", "SELECT pg_sleep($1::float8), 'done'")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def bounded(call: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(call, 5)  # a lost wake-up fails the test instead of hanging it


async def the_connection() -> Any:
    """The pool's one connection (DB_POOL_MAX=1), looked at without using it."""
    pool = await db.get_pool()
    async with pool.connection() as conn:
        return conn


async def scenario(database_url: str) -> None:
    await db.close_pool()
    fds = open_fds()

    for i in range(50):
        assert await bounded(db.call(ECHO, (str(i).encode(), b"x"))) == [str(i + 1).encode(), b"x"]
    assert open_fds() <= fds + 2  # the connection's socket (+ at most one more), whatever the number of calls

    # psycopg's own waits on the same connection, between calls
    pool = await db.get_pool()
    for i in range(3):
        assert await db.fetchone("SELECT %s::int AS x", (i,)) == {"x": i}
        assert await bounded(db.call(ECHO, (b"1", b"y"))) == [b"2", b"y"]
        async with db.transaction() as tx:
            await db.query(tx, "SELECT 1")
        assert await bounded(db.call(ECHO, (b"2", b"z"))) == [b"3", b"z"]
        await pool.check()
        assert await bounded(db.call(ECHO, (b"3", None))) == [b"4", None]
    assert open_fds() <= fds + 2

    # a cancelled call: psycopg cancels it on the server; the connection goes back idle
    task = asyncio.ensure_future(db.call(SLEEP, (b"5",)))
    await asyncio.sleep(0.3)
    task.cancel()
    started = time.perf_counter()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 2
    conn = await the_connection()
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await bounded(db.call(SLEEP, (b"0",))) == [b"", b"done"]
    with psycopg.connect(database_url, autocommit=True) as other:
        running = other.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                "AND query LIKE 'SELECT pg_sleep($1::float8)%%'").fetchone()
    assert running == (0,)
    assert open_fds() <= fds + 2

    # the server closes the idle connection: nothing spins the loop meanwhile
    assert kill_our_backends(database_url) == 1
    cpu = time.process_time()
    await asyncio.sleep(0.5)
    assert time.process_time() - cpu < 0.25
    assert await bounded(db.call(ECHO, (b"7", b"w"))) == [b"8", b"w"]  # retried once on a fresh connection

    await db.close_pool()
    # nothing of ours left open; "<=": the process may close an fd of an earlier test meanwhile (a
    # collected client's socket), as seen once in CI (93 open against 94 at the start)
    assert open_fds() <= fds


async def silent_server() -> None:
    """DB_TIMEOUT_S still shuts the socket of a statement the server does not answer."""
    await db.close_pool()
    assert await bounded(db.call(ECHO, (b"1", b"a"))) == [b"2", b"a"]
    started = time.perf_counter()
    with pytest.raises(db.DatabaseUnavailable) as info:
        await db.call(SLEEP, (b"3",))
    took = time.perf_counter() - started
    assert 0.5 <= took < 2
    assert info.value.reason == "no answer within 0.5 s"
    db.reset_breaker()
    assert await bounded(db.call(ECHO, (b"2", b"b"))) == [b"3", b"b"]
    await db.close_pool()


@pytest.fixture
def one_connection(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DB_POOL_MAX", "1")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


async def test_call_on_the_default_loop(one_connection: None, database_url: str) -> None:
    await scenario(database_url)


def test_call_on_uvloop(one_connection: None, database_url: str) -> None:
    uvloop.run(scenario(database_url))


@pytest.fixture
def short_timeout(one_connection: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DB_TIMEOUT_S", "0.5")
    reset_settings()
    yield
    db.reset_breaker()


async def test_a_silent_server_is_shut_at_db_timeout_on_the_default_loop(short_timeout: None) -> None:
    await silent_server()


def test_a_silent_server_is_shut_at_db_timeout_on_uvloop(short_timeout: None) -> None:
    uvloop.run(silent_server())
