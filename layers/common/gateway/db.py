"""Postgres access (psycopg 3, async).

One small connection pool per warm container, opened lazily on first use and bound to the
running event loop (Mangum keeps one loop across warm invocations). Connections run in
autocommit mode: every money statement is a single atomic statement; ``transaction()`` gives
a short explicit transaction where several statements must commit together.

A connection that died while the container was frozen is detected on use: ``run`` retries
exactly once on a fresh connection, which is safe because every write we issue is idempotent
by its unique reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .config import Settings, get_settings
from .observability import logger

# The newest migration the code expects (``infra/migrations/NNNN_*.sql``); /health compares.
# tests/unit/test_migrations.py keeps this in step with the files.
EXPECTED_SCHEMA_VERSION = "0006"

_pool: AsyncConnectionPool | None = None
_pool_loop: asyncio.AbstractEventLoop | None = None
_pool_lock: asyncio.Lock | None = None


def _conninfo(settings: Settings) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, int(settings.db_connect_timeout_s)),
        "options": f"-c statement_timeout={int(settings.db_statement_timeout_ms)}",
        "application_name": settings.service_name[:60],
    }
    return settings.database_url, kwargs


async def get_pool() -> AsyncConnectionPool:
    """The container's pool, created on first use in the current loop."""
    global _pool, _pool_loop, _pool_lock
    loop = asyncio.get_running_loop()
    if _pool is not None and _pool_loop is loop and not _pool.closed:
        return _pool
    if _pool_lock is None or _pool_loop is not loop:
        _pool_lock = asyncio.Lock()
        _pool_loop = loop
        _pool = None
    async with _pool_lock:
        if _pool is None or _pool.closed:
            settings = get_settings()
            dsn, kwargs = _conninfo(settings)
            pool = AsyncConnectionPool(dsn, kwargs=kwargs, min_size=1, max_size=max(1, settings.db_pool_max),
                                       open=False, name="gateway", timeout=settings.db_connect_timeout_s,
                                       max_idle=300, reconnect_timeout=30)
            try:
                await pool.open(wait=True, timeout=settings.db_connect_timeout_s)
            except BaseException:
                await pool.close()  # stop its workers; the next call tries again with a new pool
                raise
            _pool = pool
    assert _pool is not None
    return _pool


async def close_pool() -> None:
    global _pool
    if _pool is not None:
        pool, _pool = _pool, None
        await pool.close()


@asynccontextmanager
async def connection() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    pool = await get_pool()
    async with pool.connection() as conn:
        yield conn


@asynccontextmanager
async def transaction() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A short explicit transaction: commits on success, rolls back on any exception."""
    async with connection() as conn, conn.transaction():
        yield conn


def is_connection_failure(exc: BaseException, conn: psycopg.AsyncConnection[Any] | None) -> bool:
    # A pool timeout (database unreachable or pool exhausted) is not a dead connection: retrying
    # it would only double the wait.
    if isinstance(exc, PoolTimeout):
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


async def run(sql: str, params: Sequence[Any] | dict[str, Any] | None = None, *,
              fetch: str = "none") -> Any:
    """Execute one statement; ``fetch`` is "none", "one" (dict|None), "all" (list[dict]) or "rowcount".

    Retries once on a connection that turned out to be dead (e.g. after a frozen container).
    """
    for attempt in (1, 2):
        conn_used: psycopg.AsyncConnection[Any] | None = None
        try:
            async with connection() as conn:
                conn_used = conn
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(sql, params)  # type: ignore[arg-type]
                    if fetch == "one":
                        return await cur.fetchone()
                    if fetch == "all":
                        return await cur.fetchall()
                    if fetch == "rowcount":
                        return cur.rowcount
                    return None
        except psycopg.OperationalError as exc:
            if attempt == 1 and is_connection_failure(exc, conn_used):
                logger.warning("database connection lost; retrying once", extra={"error": type(exc).__name__})
                await drop_dead_connections()
                continue
            raise
    raise AssertionError("unreachable")


async def fetchone(sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> dict[str, Any] | None:
    return await run(sql, params, fetch="one")  # type: ignore[no-any-return]


async def fetchall(sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return await run(sql, params, fetch="all")  # type: ignore[no-any-return]


async def execute(sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> int:
    return await run(sql, params, fetch="rowcount")  # type: ignore[no-any-return]
