"""The pool's first connection opened beside the imports (``db.open_first_connection``, called by the
query streaming function's serve.py before the app's imports), against the real Postgres (or, with
``TEST_DB_VIA=pgbouncer``, through PgBouncer in transaction mode): the first request uses that very
connection; a database refused or hung at start still costs one bounded wait and the fast 503
(``DatabaseUnavailable`` with its Retry-After); a connection that went stale before the first
request is replaced by the retry as any pooled one; a connection asked with other parameters is not
the early one; and the thread never holds up the process's exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway import db
from gateway.config import reset_settings
from tests.support import pgbouncer, services
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RETRY_AFTER_S = 2


@pytest.fixture
async def fresh() -> AsyncIterator[None]:
    """No pool in this loop and no early connection before and after the test."""
    await db.close_pool()
    db.forget_first_connection()
    db.reset_breaker()
    yield
    await db.close_pool()
    db.forget_first_connection()
    db.reset_breaker()


@pytest.fixture
def proxied(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """DATABASE_URL through a TCP proxy in front of the database the tests use."""
    proxy = TcpProxy("127.0.0.1", int(psycopg.conninfo.conninfo_to_dict(os.environ["DATABASE_URL"])["port"]))
    url = os.environ["DATABASE_URL"]
    port = psycopg.conninfo.conninfo_to_dict(url)["port"]
    monkeypatch.setenv("DATABASE_URL", url.replace(f"127.0.0.1:{port}", proxy.url_host))
    monkeypatch.setenv("DB_RETRY_AFTER_S", str(RETRY_AFTER_S))
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "2")
    reset_settings()
    yield proxy
    proxy.close()
    monkeypatch.undo()
    reset_settings()


async def _last_statement(database_url: str, pid: int) -> tuple[str, str]:
    """The last statement a backend ran, and its state (from another connection)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        cur = await other.execute("SELECT query, state FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


async def _last_statements(database_url: str) -> list[tuple[str, str]]:
    """The last statement and state of every other backend of the database."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        cur = await other.execute("SELECT query, state FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return [(row[0], row[1]) for row in await cur.fetchall()]


def _early() -> Any:
    """The attempt ``open_first_connection`` started (db's own record of it, until the pool takes it)."""
    early = db._early
    assert early is not None
    return early


async def test_the_first_request_uses_the_connection_opened_beside_the_imports(database_url: str, fresh: None) -> None:
    thread = db.open_first_connection()
    assert thread is not None and thread.daemon and thread.name == "db-connect"
    assert db.open_first_connection() is None  # once per process
    early = _early()
    thread.join(10)
    opened = early.outcome.result()
    assert not opened.closed
    # made in the thread's own loop (closed since): its asyncio lock is bound to no loop yet
    assert getattr(opened.lock, "_loop", "missing") is None
    # its backend ran the schema's warm-up, and is idle (nothing left open or in flight); through
    # PgBouncer the pid is the pooler's own, and the server connection that ran it is any of its pool
    if pgbouncer.via_pgbouncer():
        assert (db.WARM_UP_SQL, "idle") in await _last_statements(database_url)
    else:
        assert await _last_statement(database_url, opened.info.backend_pid) == (db.WARM_UP_SQL, "idle")
    async with db.connection() as conn:
        assert conn is opened  # the pool's first connection is the early one, in this test's loop
        row = await db.fetchone_in(conn, "SELECT 1 AS one")
        # two statements at once wait on the connection's lock: it binds to this loop (a lock bound to
        # another loop would raise RuntimeError here)
        await asyncio.gather(conn.execute("SELECT pg_sleep(0.01)"), conn.execute("SELECT 2"))
    assert row == {"one": 1}
    # hot statements (``call``) and cursors go on on it; the pool connected no second time meanwhile
    assert await db.fetchone("SELECT current_setting('application_name') AS name") is not None
    pool = await db.get_pool()
    assert pool.get_stats()["connections_num"] == 1
    assert db._early is None  # handed out: nothing left for a second pool


async def test_a_database_refused_at_start_is_the_fast_503(proxied: TcpProxy, fresh: None) -> None:
    proxied.set_mode("refuse")
    thread = db.open_first_connection()
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()  # refused at once
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailable) as failed:
        await db.fetchone("SELECT 1")
    assert time.monotonic() - started < 1.0
    assert failed.value.reason == "connection refused" and failed.value.retry_after == RETRY_AFTER_S
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailable):  # the breaker: at once, no attempt
        await db.fetchone("SELECT 1")
    assert time.monotonic() - started < 0.1
    proxied.set_mode("forward")
    db.reset_breaker()
    assert await db.fetchone("SELECT 1 AS one") == {"one": 1}  # recovers without a restart


async def test_a_database_back_by_the_first_request_answers_it(proxied: TcpProxy, fresh: None) -> None:
    """An early attempt that failed before anyone asked (a container started during a blip, its
    first request later) is forgotten: the first request connects afresh, and is answered."""
    proxied.set_mode("refuse")
    thread = db.open_first_connection()
    assert thread is not None
    thread.join(5)
    proxied.set_mode("forward")
    assert await db.fetchone("SELECT 5 AS five") == {"five": 5}


async def test_a_database_hung_at_start_costs_one_bounded_wait(proxied: TcpProxy, fresh: None) -> None:
    proxied.set_mode("stall")
    thread = db.open_first_connection()
    assert thread is not None
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailable) as failed:
        await db.fetchone("SELECT 1")
    waited = time.monotonic() - started
    assert waited < 2 + 0.5, waited  # one DB_CONNECT_TIMEOUT_S (the early attempt's), not two of them
    assert failed.value.reason in ("connect timeout", "no connection within the timeout")
    proxied.set_mode("forward")
    thread.join(5)
    assert not thread.is_alive()  # bounded by the connect timeout too
    db.reset_breaker()
    assert await db.fetchone("SELECT 1 AS one") == {"one": 1}


async def test_an_early_connection_gone_stale_is_replaced_by_the_retry(proxied: TcpProxy, fresh: None) -> None:
    """A container frozen between its start and its first request: the early connection is dead when
    first used, found so like any pooled one, and the statement is retried once on a fresh one."""
    thread = db.open_first_connection()
    assert thread is not None
    early = _early()
    thread.join(10)
    opened = early.outcome.result()
    proxied.drop_idle()  # closed by the proxy at its next request
    assert await db.fetchone("SELECT 2 AS two") == {"two": 2}
    assert proxied.dropped == 1 and opened.closed
    pool = await db.get_pool()
    # the early one (handed out, found dead on the first statement) and a replacement, at least
    assert pool.get_stats()["connections_num"] >= 2
    assert await db.call(db.Statement("s6_probe", "SELECT 3::int AS three"), []) == [b"3"]


async def test_a_pool_asking_other_parameters_does_not_get_it(database_url: str, fresh: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    thread = db.open_first_connection()
    assert thread is not None
    early = _early()
    thread.join(10)
    opened = early.outcome.result()
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "another-service")  # another application_name
    reset_settings()
    try:
        async with db.connection() as conn:
            assert conn is not opened
            row = await db.fetchone_in(conn, "SELECT current_setting('application_name') AS name")
    finally:
        monkeypatch.undo()
        reset_settings()
    assert row == {"name": "another-service"}
    assert opened.closed  # closed, not left open beside the pool


def test_the_thread_never_holds_up_the_exit(database_url: str) -> None:
    """A process whose early connection hangs (a black-holed database) exits at once all the same."""
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.set_mode("stall")
    try:
        env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@{proxy.url_host}/postgres",
               "DB_CONNECT_TIMEOUT_S": "10", "PYTHONPATH": f"{ROOT / 'layers' / 'common'}"}
        code = ("import time\nfrom gateway import db\nthread = db.open_first_connection()\n"
                "time.sleep(0.3)\nprint(thread.is_alive(), thread.daemon)")
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]  # still connecting when the process ended
    assert took < 5, took


async def test_outcome_waits_without_blocking_the_loop(database_url: str, fresh: None) -> None:
    """While the early attempt is under way the pool's first connect awaits it: the loop runs on."""
    thread = db.open_first_connection()
    assert thread is not None
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(tick())
    try:
        assert await db.fetchone("SELECT 4 AS four") == {"four": 4}
    finally:
        ticker.cancel()
    assert ticks > 0


async def test_the_warm_up_changes_nothing_and_reaches_the_money_functions(database_url: str, make_user: Any) -> None:
    """mlp_warm_up (migration 0016) writes, locks and counts nothing: after it, its transaction has no
    transaction id (any row written or locked takes one) and no sequence moved; and it calls the
    two money functions a first request calls, so that they are compiled before it."""
    await make_user("5")  # a user, a key, a balance: rows it could touch
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("SET track_functions = 'pl'")
        sequences = await (await conn.execute("SELECT sequencename, last_value FROM pg_sequences")).fetchall()
        await conn.execute(db.WARM_UP_SQL)
        cur = await conn.execute("SELECT txid_current_if_assigned()")
        assert await cur.fetchone() == (None,)
        cur = await conn.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                                 "AND locktype IN ('tuple', 'transactionid')")
        assert await cur.fetchone() == (0,)
        cur = await conn.execute("SELECT funcname, calls FROM pg_stat_xact_user_functions "
                                 "WHERE funcname IN ('mlp_reserve', 'mlp_settle_carry', 'mlp_warm_up') ORDER BY 1")
        assert await cur.fetchall() == [("mlp_reserve", 1), ("mlp_settle_carry", 1), ("mlp_warm_up", 1)]
        await conn.rollback()
        assert await (await conn.execute("SELECT sequencename, last_value FROM pg_sequences")).fetchall() == sequences


@pytest.fixture
def unmigrated(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """DATABASE_URL naming a new, empty database: a schema older than the code (no mlp_warm_up)."""
    url = services.create_database("mlp_warm")
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings()
    try:
        yield url
    finally:
        monkeypatch.undo()
        reset_settings()
        services.drop_database(url)


async def test_a_schema_without_the_warm_up_still_gets_its_early_connection(unmigrated: str, fresh: None) -> None:
    """Code deployed before its migration: the warm-up fails, the connection is handed over all the
    same, idle, and the first request uses it."""
    thread = db.open_first_connection()
    assert thread is not None
    early = _early()
    thread.join(10)
    opened = early.outcome.result()
    assert not opened.closed and opened.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await _last_statement(unmigrated, opened.info.backend_pid) == (db.WARM_UP_SQL, "idle")
    async with db.connection() as conn:
        assert conn is opened
    assert await db.fetchone("SELECT 6 AS six") == {"six": 6}
    pool = await db.get_pool()
    assert pool.get_stats()["connections_num"] == 1


async def test_a_warm_up_without_an_answer_is_one_bounded_wait(database_url: str, fresh: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that stops answering once connected (here: the warm-up waits for a lock another
    session holds) costs the first request one DB_TIMEOUT_S, then the fast 503, as a statement of its
    own would; the warm-up's connection is closed, not handed over."""
    monkeypatch.setenv("DB_TIMEOUT_S", "1")
    monkeypatch.setenv("DB_RETRY_AFTER_S", str(RETRY_AFTER_S))
    reset_settings()
    holder = await psycopg.AsyncConnection.connect(database_url)
    try:
        await holder.execute("LOCK TABLE balances IN ACCESS EXCLUSIVE MODE")
        thread = db.open_first_connection()
        assert thread is not None
        early = _early()
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailable) as failed:
            await db.fetchone("SELECT 1")
        waited = time.monotonic() - started
        assert waited < 1 + 0.5, waited
        assert failed.value.reason == "no answer within 1 s" and failed.value.retry_after == RETRY_AFTER_S
        thread.join(5)
        assert not thread.is_alive() and isinstance(early.outcome.exception(), db.DatabaseUnavailable)
    finally:
        await holder.rollback()
        await holder.close()
        monkeypatch.undo()
        reset_settings()
    db.reset_breaker()
    assert await db.fetchone("SELECT 7 AS seven") == {"seven": 7}
