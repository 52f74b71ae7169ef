"""The process-wide upstream HTTP client: httpx API on top of aiohttp's transport.

``httpx_aiohttp.AiohttpTransport`` costs much less CPU per call than httpx's default transport
and streams incrementally (each read returns as soon as bytes arrive). One client per process,
created lazily on first use and bound to the running event loop; if that loop is gone (a new
loop per invocation, tests), a fresh client is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import aiohttp.connector
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway import __version__
from gateway.loops import PerLoop

USER_AGENT = f"multi-llm-gateway/{__version__}"
WRITE_TIMEOUT_S = 10.0
POOL_TIMEOUT_S = 5.0
# Short enough that a connection idle across a frozen Lambda is not reused after the provider
# (or a NAT) dropped it; adapters also retry once on a dead pooled connection.
KEEPALIVE_EXPIRY_S = 30.0
DEFAULT_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50,
                              keepalive_expiry=KEEPALIVE_EXPIRY_S)



def default_timeout(settings: Any = None) -> httpx.Timeout:
    if settings is None:
        from gateway.config import get_settings

        settings = get_settings()
    return httpx.Timeout(connect=settings.upstream_connect_timeout_s, read=settings.upstream_read_timeout_s,
                         write=WRITE_TIMEOUT_S, pool=POOL_TIMEOUT_S)


def shared_ssl_context() -> ssl.SSLContext:
    """The verified TLS context every upstream connection uses: the one aiohttp built when it was
    imported (the system CA store, as our Upstash client's aiohttp sessions use). Loading a CA
    bundle again (httpx's default: certifi's) costs ~20-80 ms and ~1-2.5 MiB per copy on a cold
    start (BENCHMARKS.md, issue 15 lever 8)."""
    ctx = getattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", None)
    return ctx if isinstance(ctx, ssl.SSLContext) else httpx.create_ssl_context()


def create_http_client(settings: Any = None, *, timeout: httpx.Timeout | None = None,
                       limits: httpx.Limits | None = None) -> httpx.AsyncClient:
    """A new client with the aiohttp transport (the caller owns it; ``await client.aclose()``).

    Note on timeouts with this transport: ``connect`` → aiohttp ``sock_connect``, ``read`` →
    ``sock_read`` (max silence between two reads, so it bounds time-to-first-byte and every gap in
    a stream), ``pool`` → aiohttp ``connect`` (waiting for a pooled connection *plus* connecting).
    """
    limits = limits or DEFAULT_LIMITS
    transport = AiohttpTransport(verify=shared_ssl_context(), limits=limits)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout or default_timeout(settings),
        limits=limits,
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
        trust_env=False,
    )


def get_http_client() -> httpx.AsyncClient:
    """The shared client for the running loop (must be called from inside a coroutine)."""
    return _client.get()


async def aclose_http_client() -> None:
    """Close the shared client (shutdown / tests). Safe to call when none exists."""
    client, loop = _client.take()
    if client is None:
        return
    if loop is asyncio.get_running_loop():
        await client.aclose()
    else:
        _discard(client)


def _discard(client: httpx.AsyncClient) -> None:
    """Drop a client bound to another (possibly closed) loop without awaiting on it."""
    transport = getattr(client, "_transport", None)
    session = getattr(transport, "client", None)
    connector = getattr(session, "connector", None)
    with contextlib.suppress(Exception):
        if session is not None and hasattr(session, "detach"):
            session.detach()
        if connector is not None and hasattr(connector, "_close"):
            connector._close()  # synchronous part of close(): closes the sockets


_client: PerLoop[httpx.AsyncClient] = PerLoop(create_http_client, alive=lambda c: not c.is_closed, discard=_discard)
