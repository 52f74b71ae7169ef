"""The process-wide upstream HTTP client (``gateway.upstream_http``; ``gateway.adapters.http_client``
re-exports it): one per event loop, a lean HTTP/1.1 client that does what
the aiohttp session it replaced did (below, "the upstream calls"; issue 15's http pass).

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
limits (200 connections in use, 30 s keep-alive), no redirects, no proxy from the environment, and
the timeouts with aiohttp's meaning — ``connect`` → aiohttp's ``sock_connect`` (the TCP and TLS
handshakes), ``read`` → ``sock_read`` (max silence between two reads: it bounds time-to-first-byte
and every gap in a stream), ``pool`` → aiohttp's ``connect`` (waiting for a connection *plus*
connecting), no total. A request's ``extensions["timeout"]`` overrides some of them for that call
(``{"read": s}``, as with httpx). aiohttp's exception classes reach the adapters unmapped
(``upstream_errors`` maps them).

The Upstash REST client (``gateway.upstash``) executes its calls on an :class:`UpstreamClient` of its
own: this module lives outside ``gateway.adapters`` so that importing it does not import every
adapter (the health function uses Upstash and no provider).

The catalog's discovery reads provider model lists with httpx's API (``client.get``, httpx
errors): :func:`get_catalog_http_client` keeps an httpx client on the aiohttp transport for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import socket
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode

import aiohappyeyeballs
import aiohttp
import aiohttp.connector
import httptools
from aiohttp.client_reqrep import ConnectionKey, _gen_default_accept_encoding
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import DeflateBuffer
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

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
# The most bytes an answer's status line and headers may take (a provider's are ~1-4 KiB): past it
# the call fails as a malformed answer instead of buffering a head without end (aiohttp bounded
# each header line at 8190 bytes; httptools buffers a header until it is complete).
MAX_HEAD_BYTES = 64 * 1024


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
    imported (the system CA store; the Upstash client's connections use it too). Loading a CA
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


# ------------------------------------------------------------------------------ the upstream calls
# Until issue 15's http pass every call went through ``aiohttp.ClientSession.request`` (~0.18 ms of
# CPU per call, against ~0.05 ms for the same exchange on a bare protocol: BENCHMARKS.md, "http-1").
# The calls now run on a lean HTTP/1.1 client of our own, which keeps what that session did for us:
# the request's headers (``Host``, ``Accept``, aiohttp's ``Accept-Encoding``, ``User-Agent``,
# ``Content-Length``, ``Content-Type`` of a body without one, the cookie jar's ``Cookie``, the same
# refusal of control characters in a header), the response parsed by llhttp (``httptools``, as
# uvicorn's server side), decoded by aiohttp's own ``DeflateBuffer`` (gzip, deflate, br, zstd),
# Set-Cookie kept in an aiohttp ``CookieJar``; keep-alive connections per host (the most recently
# used first, none older than ``keepalive_expiry``, at most ``max_connections`` in use), the same
# timeouts and the same aiohttp exceptions, which ``upstream_errors`` maps.
_ACCEPT_ENCODING = _gen_default_accept_encoding()
_EMPTY_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # aiohttp's GET_METHODS
_CONTENT_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
_FORBIDDEN_HEADER_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # aiohttp's http_writer._safe_header
# A streamed body is buffered up to this much before reading from the socket pauses (aiohttp's
# StreamReader with its default read_bufsize of 64 KiB: high water at twice that, resumed below it).
_HIGH_WATER = 2 * 2**16
_LOW_WATER = 2**16
_KEEPALIVE_SWEEP_S = 1.0
_DNS_TTL_S = 10.0


class _Target(NamedTuple):
    """A URL as a call needs it (parsed once per distinct URL)."""

    url: URL
    key: ConnectionKey           # the pool's key, and aiohttp's for its connector errors
    host: str                    # connected to (IDNA-encoded)
    port: int
    tls: bool
    server_hostname: str | None  # SNI
    request_line: str            # "POST /path?query HTTP/1.1" without the method
    host_header: str


@functools.lru_cache(maxsize=256)
def _target(url: str) -> _Target:
    u = URL(url)
    if u.scheme not in ("http", "https") or not u.raw_host:
        raise aiohttp.InvalidUrlClientError(u)
    host, port, tls = u.raw_host, u.port or (443 if u.scheme == "https" else 80), u.scheme == "https"
    key = ConnectionKey(host, port, tls, True, None, None, None)
    return _Target(u, key, host, port, tls, host.rstrip(".") if tls else None, f" {u.raw_path_qs} HTTP/1.1",
                   u.host_port_subcomponent or host)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the response in progress gets what arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.lost = False
        self.key: ConnectionKey | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be reused
            self.close()
            return
        response._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        response = self.response
        if response is not None:
            response._lost(exc)

    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()


def _malformed(message: str) -> aiohttp.ClientResponseError:
    """A malformed answer, as the session raised it (a 400 ``ClientResponseError``)."""
    url = URL()
    info = aiohttp.RequestInfo(url, "", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=400, message=message)


class UpstreamResponse:
    """The answer once its headers arrived; the body is read with ``aread`` or ``aiter_bytes``
    (aiohttp's errors), ``aclose`` releases the connection (back to the pool when the body was
    read to its end and the server keeps it alive, else closed)."""

    __slots__ = ("_buffered", "_chunks", "_client", "_conn", "_done", "_error", "_head", "_head_bytes", "_header_list",
                 "_keep_alive",
                 "_loop", "_parser", "_paused", "_read_timeout", "_sink", "_timer", "_until_eof", "_waiter",
                 "headers", "is_closed", "status_code", "total_compressed_bytes")
    _low_water = sys.maxsize  # read by DeflateBuffer as its output's: decompress without a chunk limit

    def __init__(self, client: UpstreamClient, conn: _Connection, read_timeout: float | None) -> None:
        self._client = client
        self._conn = conn
        self._loop = client._loop
        self._parser = httptools.HttpResponseParser(self)
        self._header_list: list[tuple[bytes, bytes]] = []
        self._head = False
        self._head_bytes = 0
        self._done = False
        self._keep_alive = False
        self._until_eof = False
        self._error: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout = read_timeout
        self._sink: Any = self
        self.status_code = 0
        self.headers: Mapping[str, str] = _NO_HEADERS
        self.is_closed = False
        self.total_compressed_bytes = 0

    # the connection's events ---------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        if self._done or self._error is not None:
            self._conn.close()  # bytes past the answer: the connection cannot be reused
            return
        if self._read_timeout:
            self._schedule_timeout()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ or exc)
        except httptools.HttpParserError as exc:
            self._fail(_malformed(str(exc)))
        else:
            if not self._head and self._error is None:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._fail(_malformed(f"Got more than {MAX_HEAD_BYTES} bytes when reading the response head"))

    def _lost(self, exc: Exception | None) -> None:
        if self._done or self._error is not None:
            return
        if self._head and self._until_eof and exc is None:
            self._complete()  # a body delimited by the end of the connection
            return
        if not self._head:  # as aiohttp's ResponseHandler.connection_lost
            failure: BaseException = (aiohttp.ServerDisconnectedError() if exc is None
                                      else aiohttp.ClientOSError(*exc.args))
        else:
            failure = aiohttp.ClientPayloadError("Response payload is not completed")
        if exc is not None:
            failure.__cause__ = exc
        self._fail(failure)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, HttpProcessingError):  # a body that does not decode (aiohttp's payload error)
            failure = aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}")
            failure.__cause__ = exc
            exc = failure
        self._error = exc
        self._drop_timeout()
        self._conn.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _schedule_timeout(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._read_timeout, self._timed_out)  # type: ignore[arg-type]

    def _drop_timeout(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self._done and self._error is None:
            self._fail(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))

    # httptools' callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self._header_list)
        self.status_code = status
        self.headers = CIMultiDictProxy(headers)
        self._until_eof = status not in (204, 304) and "content-length" not in headers and \
            "transfer-encoding" not in headers
        encoding = headers.get("content-encoding", "")
        if encoding.isascii() and encoding.lower() in _CONTENT_ENCODINGS:
            self._sink = DeflateBuffer(self, encoding.lower())  # type: ignore[arg-type]
        self._head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head:
            self._sink.feed_data(body, len(body))

    def on_message_complete(self) -> None:
        if not self._head:  # the end of an interim answer
            self._header_list = []
            return
        self._keep_alive = self._parser.should_keep_alive()  # (llhttp answers it inside its callbacks only)
        self._complete()

    def _complete(self) -> None:
        try:
            if self._sink is not self:
                self._sink.feed_eof()  # DeflateBuffer: checks the compressed stream's end
        except Exception as exc:
            self._fail(exc)
            return
        self._done = True
        self._drop_timeout()
        self._wake()

    # DeflateBuffer's output (``self`` without a content encoding) -----------------------------------
    def feed_data(self, chunk: bytes, size: int = 0) -> None:
        if not chunk:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
            self._drop_timeout()
        self._wake()

    def feed_eof(self) -> None:
        pass

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self._fail(exc)

    # the caller's ------------------------------------------------------------------------
    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _started(self) -> None:
        while not self._head:
            if self._error is not None:
                raise self._error
            await self._wait()

    def _take(self, n: int) -> bytes:
        chunks = self._chunks
        chunk = chunks.popleft()
        if len(chunk) > n:
            chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        else:
            while chunks and len(chunk) + len(chunks[0]) <= n:
                chunk += chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _LOW_WATER:
            self._resume()
        return chunk

    def _resume(self) -> None:
        self._paused = False
        transport = self._conn.transport
        if transport is not None and not self._conn.lost:
            transport.resume_reading()
            if self._read_timeout and not self._done:
                self._schedule_timeout()

    async def _read(self, n: int) -> bytes:
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                return self._take(n)
            if self._done:
                return b""
            await self._wait()

    async def aread(self) -> bytes:
        parts: list[bytes] = []
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:  # taken as they come: a large body never pauses the reading
                parts += self._chunks
                self._chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._resume()
            if self._done:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await self._wait()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._read(CHUNK_SIZE)
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self._drop_timeout()
        if not self._done and self._error is None:
            # a read in progress (a deadline closing the stream) ends as with aiohttp's response.close()
            self._error = aiohttp.ClientConnectionError("Connection closed")
            self._wake()
        conn = self._conn
        conn.response = None
        reusable = self._done and self._error is None and self._keep_alive and not self._paused
        self._client._release(conn, reusable)


_NO_HEADERS: Mapping[str, str] = CIMultiDictProxy(CIMultiDict())


class UpstreamClient:
    """The upstream calls of one event loop (keep-alive connections per host, opened on demand)."""

    def __init__(self, timeout: Timeouts | httpx.Timeout, limits: Limits | httpx.Limits) -> None:
        self.timeout = timeout
        self.limits = limits
        self.max_connections = limits.max_connections or 0   # 0: no limit (as aiohttp's connector)
        self.keepalive_expiry = limits.keepalive_expiry
        self.ssl_context = shared_ssl_context()
        self._idle: dict[ConnectionKey, list[tuple[_Connection, float]]] = {}
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._jar: aiohttp.CookieJar | None = None
        self._dns: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._loop_: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_
        if loop is None:
            loop = self._loop_ = asyncio.get_running_loop()
        return loop

    @property
    def cookie_jar(self) -> aiohttp.CookieJar:
        """Cookies the providers set, sent back to them (as the aiohttp session's jar did)."""
        if self._jar is None:
            self._jar = aiohttp.CookieJar(loop=self._loop)
        return self._jar

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

    def _head(self, request: UpstreamRequest, target: _Target) -> bytes:
        """The request's head as aiohttp's ``ClientRequest`` wrote it (its header names and order)."""
        lines = [request.method + target.request_line, "Host: " + target.host_header]
        given = set()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower == "host":
                lines[1] = f"{name}: {value}"  # aiohttp replaces its Host with the caller's, in place
                continue
            given.add(lower)
            lines.append(f"{name}: {value}")
        if "accept" not in given:
            lines.append("Accept: */*")
        if "accept-encoding" not in given:
            lines.append("Accept-Encoding: " + _ACCEPT_ENCODING)
        if "user-agent" not in given:
            lines.append("User-Agent: " + aiohttp.http.SERVER_SOFTWARE)
        jar = self._jar
        if jar is not None and len(jar):
            cookies = jar.filter_cookies(target.url)
            if cookies and "cookie" not in given:
                lines.append("Cookie: " + cookies.output(header="", sep=";").strip())
        body = request.content
        if body is not None:
            if "content-length" not in given:
                lines.append(f"Content-Length: {len(body)}")
            if "content-type" not in given:
                lines.append("Content-Type: application/octet-stream")
        elif request.method not in _EMPTY_BODY_METHODS and "content-length" not in given:
            lines.append("Content-Length: 0")
        if _FORBIDDEN_HEADER_CHARS.search("\t".join(lines)) is not None:
            raise ValueError("Forbidden control character detected in headers. Potential header injection attack.")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    async def send(self, request: UpstreamRequest, *, stream: bool = False) -> UpstreamResponse:
        """The response once its headers arrived (``stream=False``: its body read too)."""
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        t = self.timeout
        override = request.extensions.get("timeout")
        read_timeout = override.get("read", t.read) if override else t.read
        target = _target(request.url)
        head = self._head(request, target)
        conn = self._pooled(target)
        if conn is None:
            conn = await self._connect(target, override or {})
        response = UpstreamResponse(self, conn, read_timeout)
        conn.response = response
        try:
            transport = conn.transport
            assert transport is not None
            if request.content is None:
                transport.write(head)
            else:
                transport.writelines((head, request.content))
            if read_timeout:
                response._schedule_timeout()
            await response._started()
        except BaseException:  # a timeout, a failure or a cancellation before the answer: not reused
            conn.close()
            response._close()
            raise
        set_cookies = response.headers.getall("Set-Cookie", ())  # type: ignore[attr-defined]
        if set_cookies:
            self.cookie_jar.update_cookies_from_headers(set_cookies, target.url)
        if not stream:
            try:
                await response.aread()
            finally:
                response._close()
        return response

    # the pool ------------------------------------------------------------------------------
    def _pooled(self, target: _Target) -> _Connection | None:
        """An idle connection to the target, the most recently used first (none past its expiry),
        when one may be used now."""
        if self.max_connections and self._in_use >= self.max_connections:
            return None
        idle = self._idle.get(target.key)
        if not idle:
            return None
        expiry = self.keepalive_expiry
        now = self._loop.time()
        while idle:
            conn, since = idle.pop()
            if conn.usable() and (expiry is None or now - since <= expiry):
                self._in_use += 1
                return conn
            conn.close()
        return None

    async def _connect(self, target: _Target, override: Mapping[str, float | None]) -> _Connection:
        """A connection once one may be used (``pool``: waiting for it plus connecting), a pooled
        one or a new one (``connect``: the TCP and TLS handshakes)."""
        t = self.timeout
        try:
            async with asyncio.timeout(override.get("pool", t.pool)):
                while self.max_connections and self._in_use >= self.max_connections:
                    waiter = self._loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                    conn = self._pooled(target)
                    if conn is not None:
                        return conn
                self._in_use += 1
                try:
                    async with asyncio.timeout(override.get("connect", t.connect)):
                        return await self._open(target)
                except BaseException:
                    self._in_use -= 1
                    self._wake_waiter()
                    raise
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {target.url}") from exc

    async def _open(self, target: _Target) -> _Connection:
        loop = self._loop
        cached = self._dns.get((target.host, target.port))
        if cached is not None and loop.time() - cached[0] < _DNS_TTL_S:
            infos = cached[1]
        else:  # as aiohttp's resolver, its answers cached 10 s (aiohttp's ttl_dns_cache)
            try:
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM,
                                               flags=socket.AI_ADDRCONFIG)
            except OSError as exc:
                raise aiohttp.ClientConnectorDNSError(target.key, exc) from exc
            self._dns[(target.host, target.port)] = (loop.time(), infos)
        try:  # as aiohttp's connector: happy eyeballs (0.25 s) over the resolved addresses, then TLS
            sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=0.25, loop=loop)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as aiohttp's connections
            _, conn = await loop.create_connection(_Connection, sock=sock, ssl=self.ssl_context if target.tls else None,
                                                   server_hostname=target.server_hostname)
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(target.key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(target.key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise aiohttp.ClientConnectorError(target.key, exc) from exc
        conn.key = target.key
        return conn

    def _release(self, conn: _Connection, reusable: bool) -> None:
        self._in_use -= 1
        if reusable and not self._closed and conn.usable():
            self._idle.setdefault(_key_of(conn), []).append((conn, self._loop.time()))
            if self._sweep is None and self.keepalive_expiry is not None:
                self._sweep = self._loop.call_later(self.keepalive_expiry + _KEEPALIVE_SWEEP_S, self._expire)
        else:
            conn.close()
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        """Close the idle connections past their expiry (as aiohttp's connector's cleanup)."""
        self._sweep = None
        expiry = self.keepalive_expiry
        if expiry is None:
            return
        now = self._loop.time()
        for key, idle in list(self._idle.items()):
            alive = []
            for conn, since in idle:
                if conn.usable() and now - since <= expiry:
                    alive.append((conn, since))
                else:
                    conn.close()
            if alive:
                self._idle[key] = alive
            else:
                del self._idle[key]
        if self._idle:
            self._sweep = self._loop.call_later(expiry, self._expire)

    def _close_idle(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn, _ in conns:
                with contextlib.suppress(Exception):
                    conn.close()

    async def aclose(self) -> None:
        self._closed = True
        self._close_idle()

    def discard(self) -> None:
        """Drop a client bound to another (possibly closed) loop without awaiting on it."""
        self._closed = True
        self._close_idle()


def _key_of(conn: _Connection) -> ConnectionKey:
    assert conn.key is not None
    return conn.key


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
