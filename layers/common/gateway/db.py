"""Postgres access (psycopg 3, async).

One small connection pool per warm container (``DB_POOL_MAX``, default 2: a container serves one
request at a time), opened lazily on first use and bound to the running event loop (Mangum keeps
one loop across warm invocations). Connections run in autocommit mode: every money statement is a
single atomic statement; ``transaction()`` gives a short explicit transaction where several
statements must commit together.

Serverless Postgres is usually reached through a transaction-mode pooler (Neon ``-pooler``,
Supabase port 6543, PgBouncer), which rejects startup ``options`` and hands every transaction to
any server connection. Through a pooler (``Settings.pooled``) we therefore send no startup
options and never use server-side prepared statements (``prepare_threshold=None``); the
statement timeout there is the database default ``mlp migrate`` sets (``gateway.migrate``). On a
direct connection it is a startup option and psycopg prepares repeated statements
(``DB_PREPARE_THRESHOLD``). Deployed stages connect with ``sslmode=verify-full`` and
``sslrootcert=system`` unless the URL names a stricter or explicit setting.

Availability: a connection that died while the container was frozen is detected on use and
``run`` retries exactly once on a fresh connection (safe: every write is idempotent by its unique
reference). A database that is down or hangs costs one bounded wait (``DB_CONNECT_TIMEOUT_S`` for
a connection, ``DB_TIMEOUT_S`` for a statement or transaction block, after which the socket is
shut so nothing hangs); then every call fails at once with ``DatabaseUnavailable`` for
``DB_RETRY_AFTER_S`` seconds (the routes answer 503 with ``Retry-After``) and the next call after
that tries again: recovery needs no restart.

The two statements every chat request runs (``ledger.RESERVE`` / ``ledger.SETTLE``; also
``ledger.CANCEL`` on a refusal and ``ledger.MARK_UPSTREAM`` after 1 s) go through ``call``:
psycopg's lower layer (``pgconn``, ``generators.execute``, ``AsyncConnection.wait``) with text
parameters and a text row, the connection taken from the pool and returned directly; same bounds,
retry, outage and cancellation rules as ``run``, ~0.08 ms less client CPU per statement
(BENCHMARKS.md lever 22). Everything else uses ``run`` / ``connection()`` and cursors.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import generators, pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .config import Settings, get_settings
from .errors import ServiceUnavailable
from .loops import PerLoop
from .observability import count, logger

# The newest migration the code expects (``gateway/migrations/NNNN_*.sql``); /health compares.
# tests/unit/test_migrations.py keeps this in step with the files.
EXPECTED_SCHEMA_VERSION = "0017"

# A connection as the gateway's code receives it (from ``connection()`` / ``transaction()``).
Connection = psycopg.AsyncConnection[Any]
Params = Sequence[Any] | dict[str, Any] | None



class _PoolSlot:
    """The container's pool in one event loop, and the lock that creates it once."""

    def __init__(self) -> None:
        self.pool: AsyncConnectionPool[Any] | None = None
        self.lock = asyncio.Lock()


_pool_slot: PerLoop[_PoolSlot] = PerLoop(_PoolSlot)


class DatabaseUnavailable(psycopg.OperationalError):
    """No connection (or no answer) within the bound, or the last attempt failed less than
    ``retry_after`` seconds ago. ``reason`` is safe to show (no host names or credentials)."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(f"database unavailable: {reason}")
        self.reason = reason
        self.retry_after = retry_after


class _Breaker:
    """After a failure of the database at ``url``, fail fast until ``until``; the first call after
    that tries again. (A changed DATABASE_URL is another database: the record does not apply.)"""

    def __init__(self) -> None:
        self.url = ""
        self.until = 0.0
        self.reason = ""

    def check(self, url: str) -> None:
        remaining = self.until - time.monotonic()
        if remaining > 0 and url == self.url:
            raise DatabaseUnavailable(self.reason, max(1, math.ceil(remaining)))

    def trip(self, url: str, reason: str, seconds: int) -> DatabaseUnavailable:
        self.url, self.until, self.reason = url, time.monotonic() + seconds, reason
        count("DatabaseUnavailable")
        return DatabaseUnavailable(reason, seconds)

    def reset(self) -> None:
        self.until = 0.0


_breaker = _Breaker()
_last_connect_error: BaseException | None = None
_connect_waiters: set[asyncio.Future[BaseException]] = set()  # callers waiting for a connection


# A phrase of libpq's / the pooler's message -> what /health and the logs may say.
_REASONS = (
    ("timeout expired", "connect timeout"),
    ("connection refused", "connection refused"),
    ("password authentication failed", "authentication failed"),
    ("no pg_hba.conf entry", "connection not allowed (pg_hba.conf)"),
    ("certificate verify failed", "TLS certificate verification failed"),
    ("sslrootcert", "TLS root certificates not found"),
    ("ssl", "TLS error"),
    ("unsupported startup parameter", "the pooler rejected a startup parameter"),
    ("too many connections", "too many connections"),
    ("remaining connection slots", "too many connections"),
    ("could not translate host name", "host name not found"),
    ('database "', "database does not exist"),  # FATAL:  database "x" does not exist
    ('role "', "role does not exist"),
    ("server closed the connection", "server closed the connection"),
    ("the database system is starting up", "database starting up"),
    ("the database system is shutting down", "database shutting down"),
    ("canceling statement due to statement timeout", "statement timeout"),
)


def describe(exc: BaseException) -> str:
    """A short, safe reason for a connection failure (never the host, user or password)."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.reason
    text = str(exc).lower()
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    return type(exc).__name__


class _Connection(psycopg.AsyncConnection[Any]):
    """Remembers why the last connection attempt failed: the pool only says it timed out. The pool's
    first connection may have been opened already, beside the imports (``open_first_connection``)."""

    @classmethod
    async def connect(cls, *args: Any, **kwargs: Any) -> Any:
        global _last_connect_error
        early = _take_early(args, kwargs)
        try:
            if early is not None and not (early.outcome.done() and early.outcome.exception() is not None):
                conn = await _early_outcome(early)  # made, or under way: this attempt's outcome
            else:  # (an early attempt that failed before anyone asked tells nothing a new one can't)
                conn = await cls._open(*args, **kwargs)
        except Exception as exc:
            _last_connect_error = exc
            for waiter in list(_connect_waiters):
                if not waiter.done():
                    waiter.set_result(exc)
            raise
        _last_connect_error = None
        return conn

    @classmethod
    async def _open(cls, *args: Any, **kwargs: Any) -> Any:
        conn = await super().connect(*args, **kwargs)
        conn.prepared_here = set()
        conn.utf8 = conn.info.encoding == "utf-8"
        return conn

    prepared_here: set[bytes]  # the names of the ``Statement``s prepared on this connection
    utf8: bool  # the client encoding is UTF-8 (``call``'s parameters are UTF-8 text)


class _Early:
    """The pool's first connection, opened in a thread while the serving process imports, and its
    backend warmed up (``_warmed``)."""

    def __init__(self, conninfo: str, kwargs: dict[str, Any], settings: Settings) -> None:
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.settings = settings
        self.outcome: Future[psycopg.AsyncConnection[Any]] = Future()
        self.thread = threading.Thread(target=self._connect, name="db-connect", daemon=True)

    def _connect(self) -> None:
        self.outcome.set_running_or_notify_cancel()  # running: a consumer's cancellation leaves it be
        try:
            # in this thread's own event loop, closed before the outcome is set: the connection's
            # asyncio lock binds to a loop only when a caller waits on it, never here
            conn = asyncio.run(_warmed(self.conninfo, self.kwargs, self.settings))
        except BaseException as exc:  # the pool's connect records it (and tries again)
            self.outcome.set_exception(exc if isinstance(exc, Exception) else psycopg.OperationalError(repr(exc)))
        else:
            self.outcome.set_result(conn)


# The schema's warm-up (migration 0016): a new backend loads what a request's first statements touch
# (catalogue entries of their relations and indexes, the compiled money functions), changing nothing.
WARM_UP_SQL = "SELECT mlp_warm_up()"


async def _warmed(conninfo: str, kwargs: dict[str, Any], settings: Settings) -> psycopg.AsyncConnection[Any]:
    """A new connection on which ``WARM_UP_SQL`` ran: the early connection's backend does, beside
    the process's imports, the ~6-10 ms of loading its first request's statements would otherwise
    pay (BENCHMARKS.md, issue 15, fifteenth pass). The warm-up is bounded as any statement
    (``DB_TIMEOUT_S``, then the socket is shut): no answer is the attempt's failure, as a database
    that hangs at connect is (one bounded wait, then the fast 503). A warm-up that fails otherwise (a
    schema older than the code: no mlp_warm_up) leaves the connection as it found it, idle: it is
    logged and the connection handed over all the same; one it broke is found on use like any."""
    conn = await _Connection._open(conninfo, **kwargs)
    expiry = _Expiry(conn)
    timer = asyncio.get_running_loop().call_later(settings.db_timeout_s, expiry)
    try:
        await conn.execute(WARM_UP_SQL)
    except psycopg.Error as exc:
        if expiry.fired:
            await conn.close()
            raise DatabaseUnavailable(_no_answer(settings), settings.db_retry_after_s) from None
        logger.warning("database warm-up failed", extra={"error": type(exc).__name__})
    finally:
        timer.cancel()
    return conn


_early: _Early | None = None  # until the pool's first connect takes it
_early_opened = False  # open_first_connection ran (once per process)


def open_first_connection() -> threading.Thread | None:
    """Open the pool's first connection now, in a thread, while the process goes on importing (the
    query streaming function's serve.py calls it before the app's imports): a cold start's first
    request then finds the connection (TCP, TLS, authentication: several round trips to the
    database) made or under way, its backend warmed up (``_warmed``). The pool's first ``connect``
    (``_Connection.connect``, psycopg_pool's ``connection_class``) takes it, once, if it asks for
    exactly the parameters used here (else it is closed). An attempt still under way when the pool
    asks is the pool's attempt: its failure is reported as any (one bounded wait for a hung
    database); one that failed before is forgotten and the pool connects as always (a database
    refused at start: a second refusal, at once). A stale connection (a frozen container) is found
    on use like any pooled one (``run``'s and ``call``'s retry). The thread is a daemon, bounded by
    the connect timeout and DB_TIMEOUT_S: it never holds up the process's exit. Returns the thread,
    or None when there is nothing to do (called before, or no settings: the first request meets
    their error as always)."""
    global _early, _early_opened
    if _early_opened:
        return None
    _early_opened = True
    try:
        settings = get_settings()
        conninfo, kwargs = settings.database_url, _pool_kwargs(settings)
    except Exception:
        return None
    _early = _Early(conninfo, kwargs, settings)
    _early.thread.start()
    return _early.thread


def forget_first_connection() -> None:
    """Let ``open_first_connection`` open one again; an early connection nobody took is closed (tests)."""
    global _early, _early_opened
    early, _early, _early_opened = _early, None, False
    if early is not None:
        early.outcome.add_done_callback(_finish)


def _take_early(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Early | None:
    """The early connection's attempt, handed out once: to the first connect, if it asks for its
    parameters (a connect asking for others closes it)."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    conninfo = args[0] if args else kwargs.get("conninfo", "")
    others = {k: v for k, v in kwargs.items() if k != "conninfo"}
    if len(args) <= 1 and conninfo == early.conninfo and others == early.kwargs:
        return early
    early.outcome.add_done_callback(_finish)
    return None


async def _early_outcome(early: _Early) -> psycopg.AsyncConnection[Any]:
    try:
        return await asyncio.wrap_future(early.outcome)
    except asyncio.CancelledError:  # its consumer gave up (the pool closed): close it once made
        early.outcome.add_done_callback(_finish)
        raise


def _finish(outcome: Future[psycopg.AsyncConnection[Any]]) -> None:
    if not outcome.cancelled() and outcome.exception() is None:
        outcome.result().pgconn.finish()


def connect_kwargs(settings: Settings, *, pooled: bool | None = None) -> dict[str, Any]:
    """psycopg connection parameters for the functions' connections (``DATABASE_URL``) or, with
    ``pooled`` given, for another URL of the same database (``gateway.migrate``)."""
    pooled = settings.pooled if pooled is None else pooled
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(2, math.ceil(settings.db_connect_timeout_s)),  # libpq's minimum is 2
        "application_name": settings.service_name[:60],  # a startup parameter poolers accept
    }
    if pooled:
        kwargs["prepare_threshold"] = None
    else:
        kwargs["prepare_threshold"] = settings.db_prepare_threshold
        kwargs["options"] = f"-c statement_timeout={int(settings.db_statement_timeout_ms)}"
    return kwargs


def tls_kwargs(settings: Settings, url: str) -> dict[str, str]:
    """Deployed stages verify the server certificate (sslmode=verify-full against the system's
    root certificates) unless the URL already asks for verification; ``require`` (TLS without
    verification, the default in many providers' connection strings) is upgraded."""
    if not settings.deployed:
        return {}
    from psycopg.conninfo import conninfo_to_dict

    from .config import is_loopback

    info = conninfo_to_dict(url)
    if all(is_loopback(h) for h in str(info.get("host") or "/").split(",")):
        return {}  # never leaves the machine (a local test of a deployed stage's settings)
    out: dict[str, str] = {}
    if str(info.get("sslmode") or "").lower() not in ("verify-full", "verify-ca"):
        out["sslmode"] = "verify-full"
    if not info.get("sslrootcert"):
        out["sslrootcert"] = "system"
    return out


def _pool_kwargs(settings: Settings) -> dict[str, Any]:
    """The connection parameters of the pool's connections (besides ``DATABASE_URL``)."""
    return {**connect_kwargs(settings), **tls_kwargs(settings, settings.database_url)}


async def get_pool() -> AsyncConnectionPool[Any]:
    """The container's pool, created on first use in the current loop."""
    slot = _pool_slot.get()
    if slot.pool is not None and not slot.pool.closed:
        return slot.pool
    async with slot.lock:
        if slot.pool is None or slot.pool.closed:
            settings = get_settings()
            kwargs = _pool_kwargs(settings)
            wait = _pool_timeout(settings)
            # max_size 1 until the first connection is there (_getconn then sets DB_POOL_MAX):
            # else the first getconn, finding none idle, grows the pool by a second connect
            pool = AsyncConnectionPool(settings.database_url, kwargs=kwargs, connection_class=_Connection,
                                       min_size=1, max_size=1, open=False,
                                       name="gateway", timeout=wait, max_idle=300, reconnect_timeout=30)
            await pool.open(wait=False)  # connection() waits, and gives up on the first failed attempt
            slot.pool = pool
    assert slot.pool is not None
    return slot.pool


async def _getconn(pool: AsyncConnectionPool[Any]) -> psycopg.AsyncConnection[Any]:
    """``pool.getconn()``, but give up as soon as a connection attempt fails (refused, TLS,
    authentication): the pool would keep retrying in the background until its timeout.

    With an idle connection in the pool (the warm path) no connection attempt can be involved:
    take it directly, without the race's future, task and ``asyncio.wait`` (~40 us per statement)."""
    if getattr(pool, "_pool", None):  # psycopg_pool's deque of idle connections
        return await pool.getconn()
    failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    _connect_waiters.add(failed)
    getter = asyncio.ensure_future(pool.getconn())
    try:
        await asyncio.wait({getter, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        _connect_waiters.discard(failed)
    if getter.done():
        conn = getter.result()  # a connection, or PoolTimeout
    else:
        getter.cancel()
        try:
            conn = await getter  # the pool hands a connection that arrived meanwhile back to us
        except (asyncio.CancelledError, psycopg.Error):
            raise failed.result() from None
    wanted = max(1, get_settings().db_pool_max)
    if pool.max_size != wanted:  # the pool's first connection: now it may grow (get_pool)
        # in a task: nothing here may wait (a cancellation would leave `conn` checked out)
        task = asyncio.ensure_future(_open_up(pool, wanted))
        _opening_up.add(task)
        task.add_done_callback(_opening_up.discard)
    return conn


_opening_up: set[asyncio.Future[None]] = set()


async def _open_up(pool: AsyncConnectionPool[Any], max_size: int) -> None:
    await pool.resize(pool.min_size, max_size)
    async with pool._lock:
        if pool._waiting:  # callers queued behind the first connection: grow as getconn would have
            pool._maybe_grow_pool()


def _pool_timeout(settings: Settings) -> float:
    return max(2.0, settings.db_connect_timeout_s) + 0.5


async def close_pool() -> None:
    slot = _pool_slot.peek()
    if slot is not None and slot.pool is not None:
        pool, slot.pool = slot.pool, None
        await pool.close()


def reset_breaker() -> None:
    """Forget a recorded outage (tests; an operator's CLI run)."""
    _breaker.reset()


def _no_answer(settings: Settings) -> str:
    """The outage's reason when a statement (or the early connection's warm-up) got no answer within
    DB_TIMEOUT_S and its socket was shut."""
    return f"no answer within {settings.db_timeout_s:g} s"


async def _unavailable(reason: str) -> DatabaseUnavailable:
    """Record an outage: fail fast for DB_RETRY_AFTER_S, and drop the pool (a fresh one is opened
    by the next attempt, exactly like a cold start)."""
    settings = get_settings()
    logger.warning("database unavailable", extra={"reason": reason, "retry_after_s": settings.db_retry_after_s})
    error = _breaker.trip(settings.database_url, reason, settings.db_retry_after_s)
    await close_pool()
    return error


def _shut(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket: a psycopg call waiting on it fails at once with
    OperationalError (psycopg's own cancellation would wait up to 10 s more on a hung server)."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (psycopg.OperationalError, OSError):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


async def _acquire(settings: Settings) -> tuple[AsyncConnectionPool[Any], psycopg.AsyncConnection[Any]]:
    """The pool and a connection from it; an outage (recorded, or found now) is DatabaseUnavailable."""
    _breaker.check(settings.database_url)
    try:
        pool = await get_pool()
        return pool, await _getconn(pool)
    except PoolTimeout:
        reason = describe(_last_connect_error) if _last_connect_error else "no connection within the timeout"
        raise await _unavailable(reason) from None
    except psycopg.OperationalError as exc:
        raise await _unavailable(describe(exc)) from None


@asynccontextmanager
async def connection() -> AsyncIterator[Connection]:
    """A pooled connection for one statement or one short block, bounded by DB_TIMEOUT_S."""
    settings = get_settings()
    pool, conn = await _acquire(settings)
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        _shut(conn)

    timer = asyncio.get_running_loop().call_later(settings.db_timeout_s, expire)
    try:
        try:
            yield conn
        finally:
            timer.cancel()
            await pool.putconn(conn)  # a broken or mid-transaction connection is discarded
    except psycopg.OperationalError:
        if timed_out:
            raise await _unavailable(_no_answer(settings)) from None
        raise


@asynccontextmanager
async def transaction() -> AsyncIterator[Connection]:
    """A short explicit transaction: commits on success, rolls back on any exception."""
    async with connection() as conn, conn.transaction():
        yield conn


def is_connection_failure(exc: BaseException, conn: psycopg.AsyncConnection[Any] | None) -> bool:
    """A connection that died under us (worth one retry on a fresh one). Not an outage already
    recorded (``DatabaseUnavailable``): retrying that would only double the wait."""
    if isinstance(exc, DatabaseUnavailable | PoolTimeout):
        return False
    return isinstance(exc, psycopg.OperationalError) and (conn is None or conn.closed or conn.broken)


async def drop_dead_connections() -> None:
    """After one dead connection, check the idle ones too: a thawed container's or a failed-over
    database's connections all die together, and the retry must not pick another dead one."""
    try:
        pool = await get_pool()
        await pool.check()
    except Exception as exc:  # the retry reports the real failure
        logger.warning("database pool check failed", extra={"error": type(exc).__name__})


def as_service_unavailable(exc: psycopg.OperationalError) -> ServiceUnavailable:
    """The 503 a route answers when the database failed it (gateway.http maps every
    ``psycopg.OperationalError``: outage, statement timeout, lock timeout, failover)."""
    retry_after = exc.retry_after if isinstance(exc, DatabaseUnavailable) else get_settings().db_retry_after_s
    return ServiceUnavailable("The database is temporarily unavailable; retry shortly.",
                              headers={"Retry-After": str(retry_after)})


async def query(conn: Connection, sql: str, params: Params = None, *, fetch: str = "none") -> Any:
    """One statement on ``conn`` (e.g. inside the caller's transaction); ``fetch`` as in ``run``.
    Rows are dicts."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)  # type: ignore[arg-type]
        if fetch == "one":
            return await cur.fetchone()
        if fetch == "all":
            return await cur.fetchall()
        if fetch == "rowcount":
            return cur.rowcount
        return None


async def fetchone_in(conn: Connection, sql: str, params: Params = None) -> dict[str, Any] | None:
    """``fetchone`` inside the caller's open transaction on ``conn``."""
    return await query(conn, sql, params, fetch="one")  # type: ignore[no-any-return]


async def fetchall_in(conn: Connection, sql: str, params: Params = None) -> list[dict[str, Any]]:
    """``fetchall`` inside the caller's open transaction on ``conn``."""
    return await query(conn, sql, params, fetch="all")  # type: ignore[no-any-return]


async def run(sql: str, params: Params = None, *, fetch: str = "none") -> Any:
    """Execute one statement; ``fetch`` is "none", "one" (dict|None), "all" (list[dict]) or "rowcount".

    Retries once on a connection that turned out to be dead (e.g. after a frozen container).
    """
    for attempt in (1, 2):
        conn_used: psycopg.AsyncConnection[Any] | None = None
        try:
            async with connection() as conn:
                conn_used = conn
                return await query(conn, sql, params, fetch=fetch)
        except psycopg.OperationalError as exc:
            if attempt == 1 and is_connection_failure(exc, conn_used):
                logger.warning("database connection lost; retrying once", extra={"error": type(exc).__name__})
                await drop_dead_connections()
                continue
            raise
    raise AssertionError("unreachable")


async def fetchone(sql: str, params: Params = None) -> dict[str, Any] | None:
    return await run(sql, params, fetch="one")  # type: ignore[no-any-return]


async def fetchall(sql: str, params: Params = None) -> list[dict[str, Any]]:
    return await run(sql, params, fetch="all")  # type: ignore[no-any-return]


async def execute(sql: str, params: Params = None) -> int:
    return await run(sql, params, fetch="rowcount")  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- hot statements
class Statement:
    """A hot statement (the query path's reserve, settle, cancel and mark) sent through psycopg's lower
    layer by ``call``: ``$1``-style placeholders, each parameter typed by a cast in the SQL and
    passed as UTF-8 text (bytes, None for NULL), the first row's values returned as text.

    What the cursor layer does per statement and this skips (BENCHMARKS.md lever 22): converting
    ``%(name)s`` placeholders and choosing a dumper per parameter, its prepared-statement
    bookkeeping, loaders and a row dict. Prepared statements follow the connection's
    ``prepare_threshold`` as psycopg's do: on a direct connection the statement is prepared once per
    connection under ``name``; through a transaction-mode pooler (``prepare_threshold=None``) it is
    sent unnamed every time (Parse, Bind, Execute in one round trip, as psycopg sends any statement
    there).
    """

    __slots__ = ("name", "sql")

    def __init__(self, name: str, sql: str) -> None:
        self.name = name.encode()
        self.sql = sql.encode()

    def __repr__(self) -> str:
        return f"Statement({self.name.decode()!r})"


_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name: e.g. after a DEALLOCATE ALL / DISCARD ALL
_ALREADY_PREPARED = b"42P05"  # duplicate_prepared_statement


def _sqlstate(results: list[pq.abc.PGresult]) -> bytes | None:
    res = results[-1]
    return res.error_field(pq.DiagnosticField.SQLSTATE) if res.status == _FATAL_ERROR else None


def _result(conn: psycopg.AsyncConnection[Any], results: list[pq.abc.PGresult],
            status: int) -> pq.abc.PGresult:
    """The statement's result if it has ``status``, else its error raised as psycopg raises it."""
    res = results[-1]
    if res.status == status:
        return res
    if res.status == _FATAL_ERROR:
        raise psycopg.errors.error_from_result(res, encoding=conn.info.encoding)
    raise psycopg.InternalError(f"unexpected result status: {pq.ExecStatus(res.status).name}")


async def _call_on(conn: psycopg.AsyncConnection[Any], statement: Statement,
                   params: Sequence[bytes | None]) -> pq.abc.PGresult:
    for p in params:  # libpq reads a text parameter up to its first NUL: never truncate one silently
        if p is not None and b"\x00" in p:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    pgconn = conn.pgconn
    if not getattr(conn, "utf8", False):  # another client encoding (psycopg encodes text in it)
        encoding = conn.info.encoding
        params = [None if p is None else bytes(p).decode().encode(encoding) for p in params]
    if conn.prepare_threshold is None:  # through a pooler: nothing named
        pgconn.send_query_params(statement.sql, params)
        return _result(conn, await conn.wait(generators.execute(pgconn)), _TUPLES_OK)
    prepared = getattr(conn, "prepared_here", None)
    if prepared is None:
        prepared = conn.prepared_here = set()  # type: ignore[attr-defined]
    for attempt in (1, 2):
        if statement.name not in prepared:
            pgconn.send_prepare(statement.name, statement.sql)
            results = await conn.wait(generators.execute(pgconn))
            if _sqlstate(results) != _ALREADY_PREPARED:  # e.g. by a call cancelled after its Parse
                _result(conn, results, _COMMAND_OK)
            prepared.add(statement.name)
        pgconn.send_query_prepared(statement.name, params)
        results = await conn.wait(generators.execute(pgconn))
        if attempt == 1 and _sqlstate(results) == _NO_SUCH_STATEMENT:
            prepared.discard(statement.name)  # gone from the server: prepare it again (nothing ran)
            continue
        return _result(conn, results, _TUPLES_OK)
    raise AssertionError("unreachable")


class _Expiry:
    """The DB_TIMEOUT_S timer's callback: shut the connection's socket, and remember it did."""

    __slots__ = ("conn", "fired")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        _shut(self.conn)


async def call(statement: Statement, params: Sequence[bytes | None]) -> list[bytes | None] | None:
    """``fetchone`` of a hot ``Statement``: the first row's values as text (bytes; None for NULL),
    or None when there is no row. The rules of ``call_all``."""
    res = await _execute(statement, params)
    if not res.ntuples:
        return None
    return [res.get_value(0, i) for i in range(res.nfields)]


async def call_all(statement: Statement, params: Sequence[bytes | None]) -> list[list[bytes | None]]:
    """``fetchall`` of a hot ``Statement``: every row's values as text (bytes; None for NULL).

    The rules of ``run``: a recorded outage fails at once, no connection is ``DatabaseUnavailable``,
    no answer within DB_TIMEOUT_S shuts the socket (``DatabaseUnavailable``), a connection that
    turned out to be dead is retried once on a fresh one. The connection is taken from the pool and
    returned to it directly (no context managers, no cursor). A cancelled call is psycopg's
    (``AsyncConnection.wait``): the statement is cancelled on the server and its result drained,
    or the connection closed, before the connection goes back to the pool, which discards one that
    is not idle."""
    res = await _execute(statement, params)
    return [[res.get_value(row, i) for i in range(res.nfields)] for row in range(res.ntuples)]


async def _execute(statement: Statement, params: Sequence[bytes | None]) -> pq.abc.PGresult:
    settings = get_settings()
    for attempt in (1, 2):
        pool, conn = await _acquire(settings)
        expiry = _Expiry(conn)
        timer = asyncio.get_running_loop().call_later(settings.db_timeout_s, expiry)
        try:
            try:
                res = await _call_on(conn, statement, params)
            finally:
                timer.cancel()
                await pool.putconn(conn)  # a broken or busy connection is discarded
        except psycopg.OperationalError as exc:
            if expiry.fired:
                raise await _unavailable(_no_answer(settings)) from None
            if attempt == 1 and is_connection_failure(exc, conn):
                logger.warning("database connection lost; retrying once", extra={"error": type(exc).__name__})
                await drop_dead_connections()
                continue
            raise
        return res
    raise AssertionError("unreachable")
