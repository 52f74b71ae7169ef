"""The process-wide upstream HTTP client: aiohttp's own API, one session per event loop.

Every provider call goes through :class:`UpstreamClient`: ``build_request`` (an
:class:`UpstreamRequest`: method, URL, body bytes, headers) and ``send`` (an
:class:`UpstreamResponse` once the headers arrived; the body is read with ``aread`` or
``aiter_bytes``, and ``aclose`` releases the connection). Those few names are the subset of
httpx's API the adapters use, so an ``httpx.AsyncClient`` still drives them (the unit tests'
``httpx.MockTransport``). Until issue 15's third pass the calls went through httpx's API on
``httpx_aiohttp``'s transport: an ``httpx.Request`` (URL parsing, header objects, cookies), a
mapped ``httpx.Response`` and its decoders around the same aiohttp call cost ~0.35 ms of CPU per
call (BENCHMARKS.md, "Issue 15, third pass: the upstream call").

What is kept from that transport: the TLS context (:func:`shared_ssl_context`), the connection
limits (200 connections, 30 s keep-alive), no redirects, no proxy from the environment, and the
timeouts mapped the same way — ``connect`` → aiohttp ``sock_connect``, ``read`` → ``sock_read``
(max silence between two reads: it bounds time-to-first-byte and every gap in a stream), ``pool``
→ aiohttp ``connect`` (waiting for a pooled connection *plus* connecting), no total. A request's
``extensions["timeout"]`` overrides some of them for that call (``{"read": s}``, as with httpx).
aiohttp's own errors reach the adapters unmapped (``upstream_errors`` maps them).

The catalog's discovery reads provider model lists with httpx's API (``client.get``, httpx
errors): :func:`get_catalog_http_client` keeps an httpx client on the aiohttp transport for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode

import aiohttp
import aiohttp.connector

from gateway import __version__
from gateway.loops import PerLoop

if TYPE_CHECKING:
    import httpx

USER_AGENT = f"multi-llm-gateway/{__version__}"
WRITE_TIMEOUT_S = 10.0
POOL_TIMEOUT_S = 5.0
# Short enough that a connection idle across a frozen Lambda is not reused after the provider
# (or a NAT) dropped it; adapters also retry once on a dead pooled connection.
KEEPALIVE_EXPIRY_S = 30.0
MAX_CONNECTIONS = 200
# The size of one read of a streamed body (as httpx_aiohttp read it): a read returns as soon as
# any bytes arrived, at most this many.
CHUNK_SIZE = 16 * 1024


class Timeouts(NamedTuple):
    """Seconds per phase (the names and meaning of ``httpx.Timeout``'s; ``write`` is not enforced
    by aiohttp, as it was not by the aiohttp transport)."""

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None


class Limits(NamedTuple):
    max_connections: int | None = MAX_CONNECTIONS
    keepalive_expiry: float | None = KEEPALIVE_EXPIRY_S


DEFAULT_LIMITS = Limits()

# An upstream request's JSON body: ``json.dumps(payload, separators=(",", ":"))``'s very text from one
# shared encoder, not an encoder built per call as ``json.dumps`` does for non-default arguments.
request_json = json.JSONEncoder(separators=(",", ":")).encode


def default_timeout(settings: Any = None) -> Timeouts:
    if settings is None:
        from gateway.config import get_settings

        settings = get_settings()
    return Timeouts(connect=settings.upstream_connect_timeout_s, read=settings.upstream_read_timeout_s,
                    write=WRITE_TIMEOUT_S, pool=POOL_TIMEOUT_S)


def shared_ssl_context() -> ssl.SSLContext:
    """The verified TLS context every upstream connection uses: the one aiohttp built when it was
    imported (the system CA store, as our Upstash client's aiohttp sessions use). Loading a CA
    bundle again (httpx's default: certifi's) costs ~20-80 ms and ~1-2.5 MiB per copy on a cold
    start (BENCHMARKS.md, issue 15 lever 8)."""
    ctx = getattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", None)
    if isinstance(ctx, ssl.SSLContext):
        return ctx
    return ssl.create_default_context()  # pragma: no cover - aiohttp always builds one


class UpstreamRequest:
    """One call to send: ``extensions["timeout"]`` may override timeouts for it (``{"read": s}``)."""

    __slots__ = ("content", "extensions", "headers", "method", "url")

    def __init__(self, method: str, url: str, content: bytes | None, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.content = content
        self.headers = headers
        self.extensions: dict[str, Any] = {}


class UpstreamResponse:
    """The answer once its headers arrived; the body is read with ``aread`` or ``aiter_bytes``
    (aiohttp errors unmapped), ``aclose`` releases the connection (back to the pool when the body
    was read to its end, else closed)."""

    __slots__ = ("_raw", "headers", "is_closed", "status_code")

    def __init__(self, raw: aiohttp.ClientResponse) -> None:
        self._raw = raw
        self.status_code = raw.status
        self.headers: Mapping[str, str] = raw.headers
        self.is_closed = False

    async def aread(self) -> bytes:
        return await self._raw.read()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        read = self._raw.content.read
        while True:
            chunk = await read(CHUNK_SIZE)
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        raw = self._raw
        raw.release()
        await raw.wait_for_close()


class UpstreamClient:
    """The upstream calls of one event loop (one ``aiohttp.ClientSession``, created on first use)."""

    def __init__(self, timeout: Timeouts | httpx.Timeout, limits: Limits | httpx.Limits) -> None:
        self.timeout = timeout
        self.limits = limits
        self._timeout = aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read,
                                              connect=timeout.pool)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise RuntimeError("the upstream client is closed")
            connector = aiohttp.TCPConnector(limit=self.limits.max_connections or 0,
                                             keepalive_timeout=self.limits.keepalive_expiry,  # type: ignore[arg-type]
                                             ssl=shared_ssl_context())
            session = self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return session

    def build_request(self, method: str, url: str, *, content: bytes | str | None = None,
                      headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str] | None = None) -> UpstreamRequest:
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        hdrs = {"user-agent": USER_AGENT}
        if headers:
            hdrs.update(headers)
        body = content.encode() if isinstance(content, str) else content
        return UpstreamRequest(method, url, body or None, hdrs)

    async def send(self, request: UpstreamRequest, *, stream: bool = False) -> UpstreamResponse:
        """The response once its headers arrived (``stream=False``: its body read too)."""
        timeout = self._timeout
        override = request.extensions.get("timeout")
        if override:
            t = self.timeout
            timeout = aiohttp.ClientTimeout(sock_connect=override.get("connect", t.connect),
                                            sock_read=override.get("read", t.read),
                                            connect=override.get("pool", t.pool))
        raw = await self.session.request(request.method, request.url, data=request.content,
                                         headers=request.headers, allow_redirects=False, timeout=timeout)
        response = UpstreamResponse(raw)
        if not stream:
            try:
                await raw.read()
            finally:
                await response.aclose()
        return response

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def discard(self) -> None:
        """Drop a client bound to another (possibly closed) loop without awaiting on it."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            _discard_session(session)


def _discard_session(session: Any) -> None:
    connector = getattr(session, "connector", None)
    with contextlib.suppress(Exception):
        if hasattr(session, "detach"):
            session.detach()
        if connector is not None and hasattr(connector, "_close"):
            connector._close()  # synchronous part of close(): closes the sockets


def create_http_client(settings: Any = None, *, timeout: Timeouts | httpx.Timeout | None = None,
                       limits: Limits | httpx.Limits | None = None) -> UpstreamClient:
    """A new upstream client (the caller owns it; ``await client.aclose()``). ``timeout`` and
    ``limits`` may be httpx's objects (the same field names)."""
    return UpstreamClient(timeout or default_timeout(settings), limits or DEFAULT_LIMITS)


def get_http_client() -> UpstreamClient:
    """The shared client for the running loop (must be called from inside a coroutine)."""
    return _client.get()


async def aclose_http_client() -> None:
    """Close the shared clients (shutdown / tests). Safe to call when none exists."""
    for holder in (_client, _catalog_client):
        client, loop = holder.take()
        if client is None:
            continue
        if loop is asyncio.get_running_loop():
            await client.aclose()
        elif isinstance(client, UpstreamClient):
            client.discard()
        else:
            _discard_session(getattr(getattr(client, "_transport", None), "client", None))


_client: PerLoop[UpstreamClient] = PerLoop(create_http_client, alive=lambda c: not c.is_closed,
                                           discard=UpstreamClient.discard)


# ------------------------------------------------------------------------------ the catalog's
def create_catalog_http_client(settings: Any = None) -> httpx.AsyncClient:
    """An httpx client on aiohttp's transport (the same TLS context and limits) for the catalog's
    discovery, which uses httpx's API (``get`` with params and per-call timeouts, httpx errors)."""
    import httpx
    from httpx_aiohttp import AiohttpTransport

    t = default_timeout(settings)
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=50,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)
    return httpx.AsyncClient(
        transport=AiohttpTransport(verify=shared_ssl_context(), limits=limits),
        timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
        limits=limits, follow_redirects=False, headers={"user-agent": USER_AGENT}, trust_env=False)


def get_catalog_http_client() -> httpx.AsyncClient:
    """The catalog's shared httpx client for the running loop."""
    return _catalog_client.get()


def _discard_httpx(client: httpx.AsyncClient) -> None:
    _discard_session(getattr(getattr(client, "_transport", None), "client", None))


_catalog_client: PerLoop[httpx.AsyncClient] = PerLoop(create_catalog_http_client,
                                                      alive=lambda c: not c.is_closed, discard=_discard_httpx)
