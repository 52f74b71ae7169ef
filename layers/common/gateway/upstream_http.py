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
(``{"read": s}``, as with httpx). The client's exceptions (aiohttp's classes until issue 15's spawn
pass, now classes of this module with their names and bases) reach the adapters unmapped
(``upstream_errors`` maps them). Nothing here imports aiohttp (BENCHMARKS.md, "Issue 15, spawn:
the query function without aiohttp"); the catalog's client below does, when it is built.

The Upstash REST client (``gateway.upstash``) executes its calls on an :class:`UpstreamClient` of its
own: this module lives outside ``gateway.adapters`` so that importing it does not import every
adapter (the health function uses Upstash and no provider).

The catalog's discovery reads provider model lists with httpx's API (``client.get``, httpx
errors): :func:`get_catalog_http_client` keeps an httpx client on the aiohttp transport for it
(aiohttp imported then, by :func:`import_aiohttp`).
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
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode

import aiohappyeyeballs
import httptools

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


# ------------------------------------------------------------------------------ the errors
# The client's failures: aiohttp's exception classes until issue 15's spawn pass, now a hierarchy of
# our own with the same names, bases and meaning (``upstream_errors`` maps them as it mapped
# aiohttp's; an aiohttp error, from the catalog's client, is still mapped too). Importing aiohttp
# (with yarl, multidict, attrs, ...) was ~20 % of the query function's import.
class ClientError(Exception):
    """Any failure of an upstream call (aiohttp's ``ClientError``)."""


class ClientResponseError(ClientError):
    """A malformed answer (aiohttp's ``ClientResponseError`` with status 400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(f"{status}, message={message!r}")
        self.status = status
        self.message = message


class ClientPayloadError(ClientError):
    """The body was cut short or does not decode."""


class InvalidUrlClientError(ClientError, ValueError):
    """Not an http(s) URL with a host."""


class ClientConnectionError(ClientError):
    """The connection failed (or was closed while a read was in progress)."""


class ClientOSError(ClientConnectionError, OSError):
    """An OS error on the connection (aiohttp's ``ClientOSError``)."""


class ClientConnectorError(ClientOSError):
    """No connection could be made (refused, unreachable, DNS, TLS)."""

    def __init__(self, host: str, port: int, tls: bool, os_error: OSError) -> None:
        super().__init__(os_error.errno, os_error.strerror)
        self.host, self.port, self.tls, self.os_error = host, port, tls, os_error

    def __str__(self) -> str:
        return (f"Cannot connect to host {self.host}:{self.port} ssl:{'default' if self.tls else False} "
                f"[{self.strerror or self.os_error}]")


class ClientConnectorDNSError(ClientConnectorError):
    """The host name did not resolve."""


class ClientConnectorSSLError(ClientConnectorError):
    """The TLS handshake failed."""


class ClientConnectorCertificateError(ClientConnectorError):
    """The server's certificate was refused."""


class ServerDisconnectedError(ClientConnectionError):
    """The server closed the connection before answering."""

    def __init__(self, message: str = "Server disconnected") -> None:
        super().__init__(message)


class ServerTimeoutError(ClientConnectionError, TimeoutError):
    """A phase timed out (aiohttp's ``ServerTimeoutError``, an ``asyncio.TimeoutError`` too)."""


class ConnectionTimeoutError(ServerTimeoutError):
    """No connection within the pool/connect timeout."""


class SocketTimeoutError(ServerTimeoutError):
    """No bytes within the read timeout."""


class _ContentEncodingError(Exception):
    """A body that does not decode (aiohttp's ``ContentEncodingError``): a payload error."""


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


def make_ssl_context() -> ssl.SSLContext:
    """The verified TLS context aiohttp built (``ssl.create_default_context()``: the system CA
    store, hostname checked; HTTP/1.1 offered by ALPN)."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(("http/1.1",))
    return ctx


@functools.lru_cache(maxsize=1)
def _own_ssl_context() -> ssl.SSLContext:
    return make_ssl_context()


def shared_ssl_context() -> ssl.SSLContext:
    """The verified TLS context every upstream connection uses (the Upstash client's too): the one
    ``gateway.coldstart`` built, its CA store loaded in a thread during the function's import, or
    (in a process that did not import it: tests) one built here once. Loading a CA bundle again
    (httpx's default: certifi's) costs ~20-80 ms and ~1-2.5 MiB per copy on a cold start
    (BENCHMARKS.md, issue 15 lever 8)."""
    coldstart = sys.modules.get("gateway.coldstart")
    if coldstart is not None:
        return coldstart.verified_ssl_context()  # type: ignore[no-any-return]
    return _own_ssl_context()


def import_aiohttp() -> None:
    """Import aiohttp (the catalog's httpx transport needs it; the upstream calls do not) without
    loading the CA store into its unverified (``ssl=False``, CERT_NONE) context, which the gateway
    never uses: a store load (15-60 ms) spared, ``ssl`` as before afterwards."""
    if "aiohttp.connector" in sys.modules or "set_default_verify_paths" in vars(ssl.SSLContext):
        return
    load = ssl.SSLContext.set_default_verify_paths

    def unless_unverified(context: ssl.SSLContext) -> None:
        if context.verify_mode != ssl.CERT_NONE:
            load(context)

    ssl.SSLContext.set_default_verify_paths = unless_unverified  # type: ignore[method-assign,assignment]
    try:
        import aiohttp.connector  # noqa: F401
    finally:
        del ssl.SSLContext.set_default_verify_paths


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
# uvicorn's server side), its body decoded as aiohttp's ``DeflateBuffer`` decoded it (gzip and
# deflate with zlib, br with the Brotli module, zstd with ``backports.zstd``/``compression.zstd``,
# each imported when a body needs it), Set-Cookie kept as aiohttp's ``CookieJar`` kept it;
# keep-alive connections per host (the most recently used first, none older than
# ``keepalive_expiry``, at most ``max_connections`` in use), the same timeouts and the same
# exceptions (the classes above), which ``upstream_errors`` maps. Since issue 15's spawn pass none
# of it imports aiohttp (nor yarl, multidict, attrs...): ~20 % of the query function's import.
def _importable(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _brotli() -> Any:
    """The Brotli module aiohttp uses (brotlicffi first, else Brotli), imported on the first br body."""
    try:
        import brotlicffi as brotli  # type: ignore[import-not-found]
    except ImportError:
        import brotli  # type: ignore[import-not-found,no-redef]
    return brotli


def _zstd_decompressor() -> Any:
    if sys.version_info >= (3, 14):
        from compression.zstd import ZstdDecompressor  # type: ignore[import-not-found]
    else:
        from backports.zstd import ZstdDecompressor  # type: ignore[import-not-found]
    return ZstdDecompressor()


def _accept_encoding() -> str:
    """aiohttp's default Accept-Encoding: br and zstd only when their module is there."""
    encodings = ["gzip", "deflate"]
    if _importable("brotlicffi") or _importable("brotli"):
        encodings.append("br")
    if _importable("compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd"):
        encodings.append("zstd")
    return ", ".join(encodings)


_ACCEPT_ENCODING = _accept_encoding()
_EMPTY_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # aiohttp's GET_METHODS
_CONTENT_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
_FORBIDDEN_HEADER_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # aiohttp's http_writer._safe_header
# A streamed body is buffered up to this much before reading from the socket pauses (aiohttp's
# StreamReader with its default read_bufsize of 64 KiB: high water at twice that, resumed below it).
_HIGH_WATER = 2 * 2**16
_LOW_WATER = 2**16
_KEEPALIVE_SWEEP_S = 1.0
_DNS_TTL_S = 10.0
# A timer may run up to its loop's clock resolution early (uvloop: 1 ms): less than this left of a
# read timeout's silence when its timer runs counts as the timeout.
_TIMER_SLACK_S = 0.001
_MAX_MEMBERS = 1024  # aiohttp's MAX_DECOMPRESS_MEMBERS: concatenated gzip/deflate/zstd members in a body


class _Key(NamedTuple):
    """The pool's key (and what a connector error names)."""

    host: str
    port: int
    tls: bool


class _Target(NamedTuple):
    """A URL as a call needs it (parsed once per distinct URL)."""

    key: _Key                    # the pool's key
    host: str                    # connected to (IDNA-encoded, lower case)
    port: int
    tls: bool
    server_hostname: str | None  # SNI
    request_line: str            # "POST /path?query HTTP/1.1" without the method
    host_header: str
    path: str                    # the decoded path (the cookies' paths are matched against it)
    is_ip: bool                  # an IP address: no cookie is kept or sent (aiohttp's unsafe=False jar)


# A URL yarl would keep as it is: lower-case http(s) scheme, an ASCII host name or IPv4 address,
# an optional port, a path and query of characters it never quotes, no dot segment, no fragment.
# Anything else is parsed by yarl (imported then), exactly as before.
_PLAIN_URL = re.compile(r"(https?)://([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::([0-9]{1,5}))?"
                        r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*)?(\?[A-Za-z0-9\-._~!$&'()*,;=:@/?]*)?")
_IPV4 = re.compile(r"[0-9]+(?:\.[0-9]+){3}")


def _is_ip(host: str) -> bool:
    return ":" in host or _IPV4.fullmatch(host) is not None


@functools.lru_cache(maxsize=64)
def _address_infos(host: str, port: int) -> list[tuple[Any, ...]] | None:
    """What ``getaddrinfo`` answers for an IP address, without a resolver's thread (the loop's
    executor) or the IDNA codec it imports: a self-hosted OpenAI-compatible server at
    ``http://10.0.0.5:8000``, a local stack. None for an address ``inet_pton`` does not take (a
    scoped IPv6 address): ``getaddrinfo`` answers those, as before."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (host, port) if family == socket.AF_INET else (host, port, 0, 0))]
    return None


@functools.lru_cache(maxsize=256)
def _target(url: str) -> _Target:
    m = _PLAIN_URL.fullmatch(url)
    if m is not None and ".." not in m[2] and "/." not in (m[4] or "") and int(m[3] or 0) <= 65535:
        scheme, host, path = m[1], m[2].lower(), m[4] or "/"
        tls = scheme == "https"
        default = 443 if tls else 80
        port = int(m[3]) if m[3] else default
        host_header = host if port == default else f"{host}:{port}"
        path_qs = path + (m[5] or "")
    else:
        from yarl import URL

        u = URL(url)
        if u.scheme not in ("http", "https") or not u.raw_host:
            raise InvalidUrlClientError(url)
        host, tls = u.raw_host, u.scheme == "https"
        port = u.port or (443 if tls else 80)
        host_header, path_qs, path = u.host_port_subcomponent or host, u.raw_path_qs, u.path
    return _Target(_Key(host, port, tls), host, port, tls, host.rstrip(".") if tls else None,
                   f" {path_qs} HTTP/1.1", host_header, path, _is_ip(host))


class Headers(Mapping[str, str]):
    """An answer's headers, case-insensitive (``get``/``[]``: the first value of a name), every
    field kept in order (``items``, ``getall``), as aiohttp's ``CIMultiDictProxy`` gave them."""

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._first = {name.lower(): value for name, value in reversed(fields)}

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._first.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def getall(self, name: str, default: Any = ...) -> list[str]:
        lower = name.lower()
        values = [v for k, v in self._fields if k.lower() == lower]
        if not values and default is not ...:
            return default  # type: ignore[no-any-return]
        if not values:
            raise KeyError(name)
        return values

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return list(self._fields)

    def keys(self) -> list[str]:  # type: ignore[override]
        return [name for name, _ in self._fields]

    def values(self) -> list[str]:  # type: ignore[override]
        return [value for _, value in self._fields]

    def __repr__(self) -> str:
        return f"<Headers({self._fields!r})>"


_NO_HEADERS = Headers([])


class _Decoder:
    """A Content-Encoding decoded as aiohttp's ``DeflateBuffer`` decoded it into the response:
    gzip and deflate with zlib (a deflate body without its zlib header, as some servers send, is
    decoded raw), br with the Brotli module, zstd with its module (each imported on the first
    body that needs it; a missing module fails the body as aiohttp did), concatenated members
    decoded in turn (at most ``_MAX_MEMBERS`` per chunk received), a deflate body that ends early
    refused."""

    __slots__ = ("_encoding", "_obj", "_out", "_started", "size")

    def __init__(self, out: UpstreamResponse, encoding: str) -> None:
        self._out = out
        self._encoding = encoding
        self._started = False
        self.size = 0
        try:
            if encoding == "br":
                self._obj = _brotli().Decompressor()
            else:
                self._obj = self._new()
        except ImportError:
            raise _ContentEncodingError(f"Can not decode content-encoding: {encoding}") from None

    def _new(self) -> Any:
        encoding = self._encoding
        if encoding == "zstd":
            return _zstd_decompressor()
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS if encoding == "gzip"
                                  else -zlib.MAX_WBITS if encoding == "deflate-raw" else zlib.MAX_WBITS)

    def feed_data(self, chunk: bytes, size: int = 0) -> None:
        self.size += len(chunk)
        self._out.total_compressed_bytes = self.size
        if not chunk:
            return
        try:
            if not self._started:
                self._started = True
                if self._encoding == "deflate" and chunk[0] & 0xF != 8:  # no zlib header (RFC 1950)
                    self._encoding = "deflate-raw"
                    self._obj = self._new()
            out = self._decode(chunk)
        except Exception as exc:
            name = "deflate" if self._encoding == "deflate-raw" else self._encoding
            raise _ContentEncodingError(f"Can not decode content-encoding: {name}") from exc
        if out:
            self._out.feed_data(out)

    def _decode(self, data: bytes) -> bytes:
        obj = self._obj
        if self._encoding == "br":
            return obj.decompress(data) if hasattr(obj, "decompress") else obj.process(data)  # type: ignore[no-any-return]
        parts = [obj.decompress(data)]
        members = 1
        while obj.eof and obj.unused_data:  # a member ended inside the chunk: the next one follows
            members += 1
            if members > _MAX_MEMBERS:
                raise ValueError(f"Compressed stream has more than {_MAX_MEMBERS} members")
            rest = obj.unused_data
            obj = self._obj = self._new()
            parts.append(obj.decompress(rest))
        if obj.eof and self._encoding in ("gzip", "zstd"):  # ended with the chunk: ready for another
            self._obj = self._new()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def feed_eof(self) -> None:
        """The body ended: a deflate stream must have ended too (aiohttp checked deflate only)."""
        if self.size > 0 and self._encoding in ("deflate", "deflate-raw") and not self._obj.eof:
            raise _ContentEncodingError("Can not decode content-encoding: deflate")


# ------------------------------------------------------------------------------ the cookie jar
# The cookie patterns are compiled by ``re`` on the first Set-Cookie (its cache), not at every cold start.
_DATE_TOKENS = r"[\x09\x20-\x2F\x3B-\x40\x5B-\x60\x7B-\x7E]*(?P<token>[\x00-\x08\x0A-\x1F\d:a-zA-Z\x7F-\xFF]+)"
_DATE_HMS = r"(\d{1,2}):(\d{1,2}):(\d{1,2})"
_DATE_DAY = r"(\d{1,2})"
_DATE_MONTH = "(?i)(jan)|(feb)|(mar)|(apr)|(may)|(jun)|(jul)|(aug)|(sep)|(oct)|(nov)|(dec)"
_DATE_YEAR = r"(\d{2,4})"
_MAX_TIME = 253402300798.0  # aiohttp's cap on a cookie's deadline (datetime.max, minus one second)


def _cookie_date(text: str) -> float | None:
    """RFC 6265's cookie-date (aiohttp's ``CookieJar._parse_date``): a timestamp, or None."""
    hms = day = month = year = None
    for m in re.finditer(_DATE_TOKENS, text):
        token = m.group("token")
        if hms is None and (t := re.match(_DATE_HMS, token)):
            hms = tuple(int(x) for x in t.groups())
        elif day is None and (t := re.match(_DATE_DAY, token)):
            day = int(t.group())
        elif month is None and (t := re.match(_DATE_MONTH, token)):
            month = t.lastindex
        elif year is None and (t := re.match(_DATE_YEAR, token)):
            year = int(t.group())
    if hms is None or day is None or month is None or year is None:
        return None
    if 70 <= year <= 99:
        year += 1900
    elif 0 <= year <= 69:
        year += 2000
    hour, minute, second = hms
    if not 1 <= day <= 31 or year < 1601 or hour > 23 or minute > 59 or second > 59:
        return None
    import calendar

    return float(calendar.timegm((year, month, day, hour, minute, second, -1, -1, -1)))


_COOKIE_NAME = r"[!#$%&'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]+"  # aiohttp's allowed names
_COOKIE_FORBIDDEN_CTL = _FORBIDDEN_HEADER_CHARS  # aiohttp's: the same characters
_MAX_COOKIES_PER_ANSWER = 50


class _Cookie(NamedTuple):
    name: str
    value: str
    domain: str
    path: str        # without its trailing "/"
    host_only: bool
    secure: bool
    deadline: float | None


class CookieJar:
    """Cookies the providers set (Cloudflare's ``__cf_bm``...), sent back to them as aiohttp's
    ``CookieJar`` (unsafe=False) did: none from or to an IP address, a ``Domain`` that does not
    match the answering host refused (a leading dot ignored, a trailing dot making it host-only),
    the default path of RFC 6265, ``Max-Age`` before ``Expires``, ``Secure`` ones over https only,
    the most specific of a name sent, in the order of their names."""

    def __init__(self) -> None:
        self._cookies: dict[tuple[str, str, str], _Cookie] = {}

    def __len__(self) -> int:
        return len(self._cookies)

    def update(self, set_cookies: Iterable[str], target: _Target) -> None:
        if target.is_ip:
            return
        from http.cookies import _quote  # type: ignore[attr-defined]  # (imported by starlette already)

        hostname = target.host
        now = time.time()
        for header in list(set_cookies)[:_MAX_COOKIES_PER_ANSWER]:
            if _COOKIE_FORBIDDEN_CTL.search(header) is not None:
                continue
            pair, *attributes = header.split(";")
            name, eq, value = pair.partition("=")
            name, value = name.strip(" \t"), value.strip(" \t")
            if not eq or re.fullmatch(_COOKIE_NAME, name) is None or len(name) + len(value) > 4096:
                continue
            # sent back as aiohttp's jar sent it: a quoted value as it came, any other quoted if needed
            value = value if value.startswith('"') else _quote(value)
            attrs: dict[str, str] = {}
            for attribute in attributes:
                key, _, val = attribute.partition("=")
                attrs[key.strip().lower()] = val.strip()
            domain = attrs.get("domain", "").lower()
            if domain.endswith("."):
                domain = ""
            domain = domain.lstrip(".") if domain.startswith(".") else domain
            if domain and not (hostname == domain or (hostname.endswith("." + domain))):
                continue  # a cookie for another domain: refused
            path = attrs.get("path", "")
            if not path.startswith("/"):
                request_path = target.path
                path = "/" + request_path[1:request_path.rfind("/")] if request_path.startswith("/") else "/"
            path = path.rstrip("/")
            host_only = not domain
            domain = domain or hostname
            deadline: float | None = None
            if max_age := attrs.get("max-age"):
                try:
                    seconds = int(max_age)
                except ValueError:
                    seconds = None  # an invalid Max-Age is ignored (and so is Expires, as aiohttp)
                if seconds is not None:
                    deadline = 0.0 if seconds <= 0 else min(now + seconds, _MAX_TIME)
            elif expires := attrs.get("expires"):
                when = _cookie_date(expires)
                if when:  # (as aiohttp's: a date at the epoch itself is no date)
                    deadline = min(when, _MAX_TIME)
            stored = (domain, path, name)
            if deadline is not None and deadline <= now:
                self._cookies.pop(stored, None)  # expired: forgotten
                continue
            self._cookies[stored] = _Cookie(name, value, domain, path, host_only, "secure" in attrs, deadline)

    def header(self, target: _Target) -> str:
        """The ``Cookie`` header for a call to the target ("" when none is due)."""
        if target.is_ip or not self._cookies:
            return ""
        now = time.time()
        hostname, path, secure_ok = target.host, target.path, target.tls
        due: list[_Cookie] = []
        for key, cookie in list(self._cookies.items()):
            if cookie.deadline is not None and cookie.deadline <= now:
                del self._cookies[key]
                continue
            if cookie.host_only:
                if cookie.domain != hostname:
                    continue
            elif hostname != cookie.domain and not hostname.endswith("." + cookie.domain):
                continue
            if cookie.path and path != cookie.path and not path.startswith(cookie.path + "/"):
                continue
            if cookie.secure and not secure_ok:
                continue
            due.append(cookie)
        selected: dict[str, _Cookie] = {}
        for cookie in sorted(due, key=lambda c: (len(c.domain), len(c.path))):  # the most specific last
            selected.pop(cookie.name, None)
            selected[cookie.name] = cookie
        return "; ".join(f"{name}={selected[name].value}" for name in sorted(selected))  # (BaseCookie's order)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the response in progress gets what arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.lost = False
        self.key: _Key | None = None

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


def _malformed(message: str) -> ClientResponseError:
    """A malformed answer, as the session raised it (a 400 ``ClientResponseError``)."""
    return ClientResponseError(message, status=400)


class UpstreamResponse:
    """The answer once its headers arrived; the body is read with ``aread`` or ``aiter_bytes``
    (aiohttp's errors), ``aclose`` releases the connection (back to the pool when the body was
    read to its end and the server keeps it alive, else closed)."""

    __slots__ = ("_buffered", "_chunks", "_client", "_conn", "_done", "_error", "_head", "_head_bytes", "_header_list",
                 "_keep_alive",
                 "_loop", "_parser", "_paused", "_quiet_since", "_read_timeout", "_sink", "_timer", "_until_eof",
                 "_waiter", "headers", "is_closed", "status_code", "total_compressed_bytes")

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
        self._quiet_since = 0.0  # (loop time) the read timeout's silence counts from here
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
        chunks = len(self._chunks)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ or exc)
        except httptools.HttpParserError as exc:
            self._fail(_malformed(str(exc)))
        else:
            if len(self._chunks) != chunks:  # body pieces (``on_body``): the reader woken once per read
                self._buffered_more()
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
            failure: BaseException = (ServerDisconnectedError() if exc is None
                                      else ClientOSError(*exc.args))
        else:
            failure = ClientPayloadError("Response payload is not completed")
        if exc is not None:
            failure.__cause__ = exc
        self._fail(failure)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, _ContentEncodingError):  # a body that does not decode (aiohttp's payload error)
            failure = ClientPayloadError(f"Response payload is not completed: {exc!r}")
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
        """(Re)start the read timeout's clock: it fails the answer ``_read_timeout`` after the last
        call without one in between. ONE loop timer per response: armed on the first call, and when
        it comes due after bytes arrived meanwhile, armed again for what is left of the new silence
        (a stream's reads each cost a float, not a timer cancelled and another armed)."""
        now = self._quiet_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._read_timeout, self._timed_out)  # type: ignore[operator]

    def _drop_timeout(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._done or self._error is not None:
            return
        due = self._quiet_since + self._read_timeout  # type: ignore[operator]
        if self._loop.time() + _TIMER_SLACK_S < due:  # bytes arrived since the timer was armed
            self._timer = self._loop.call_at(due, self._timed_out)
            return
        self._fail(SocketTimeoutError("Timeout on reading data from socket"))

    # httptools' callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers = Headers([(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                           for name, value in self._header_list])
        self.status_code = status
        self.headers = headers
        self._until_eof = status not in (204, 304) and "content-length" not in headers and \
            "transfer-encoding" not in headers
        encoding = headers.get("content-encoding", "")
        if encoding.isascii() and encoding.lower() in _CONTENT_ENCODINGS:
            self._sink = _Decoder(self, encoding.lower())
        self._head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head:
            if self._sink is self and body:
                # A stream's read holds one piece per event (chunked encoding): each is buffered
                # here, the high-water mark checked and the reader woken once the read is parsed
                # (``_received``), not once per piece.
                self._chunks.append(body)
                self._buffered += len(body)
            else:
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
                self._sink.feed_eof()  # _Decoder: checks the compressed stream's end
        except Exception as exc:
            self._fail(exc)
            return
        self._done = True
        self._drop_timeout()
        self._wake()

    # _Decoder's output (``self`` without a content encoding) ---------------------------------------
    def feed_data(self, chunk: bytes, size: int = 0) -> None:
        if not chunk:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._buffered_more()

    def _buffered_more(self) -> None:
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
        if self._buffered <= n:  # all that is buffered (a stream's read: one piece per event): joined once
            chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            if self._paused:
                self._resume()
            return chunk
        chunk = chunks.popleft()
        if len(chunk) > n:
            chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        elif chunks and len(chunk) + len(chunks[0]) <= n:  # the pieces of a read, joined once
            parts = [chunk]
            size = len(chunk)
            while chunks and size + len(chunks[0]) <= n:
                piece = chunks.popleft()
                parts.append(piece)
                size += len(piece)
            chunk = b"".join(parts)
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

    @property
    def body_read(self) -> bool:
        """The whole body arrived and was read (nothing left to drain before the connection can be
        reused)."""
        return self._done and not self._chunks and self._error is None

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, at most ``CHUNK_SIZE`` bytes a piece (an iterator object, not an
        async generator: a stream reads its body through it, and a generator costs a hook on its
        first step and a close at its end)."""
        return _Pieces(self)

    async def aclose(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self._drop_timeout()
        if not self._done and self._error is None:
            # a read in progress (a deadline closing the stream) ends as with aiohttp's response.close()
            self._error = ClientConnectionError("Connection closed")
            self._wake()
        conn = self._conn
        conn.response = None
        reusable = self._done and self._error is None and self._keep_alive and not self._paused
        self._client._release(conn, reusable)
        # Nothing feeds the parser once the connection no longer names this response; it and the
        # sink (``self`` without a content encoding) point back here: dropped, a response is freed by
        # its reference count instead of leaving ~20 objects a call to the cycle collector.
        self._parser = self._sink = None  # type: ignore[assignment]


class UpstreamClient:
    """The upstream calls of one event loop (keep-alive connections per host, opened on demand)."""

    def __init__(self, timeout: Timeouts | httpx.Timeout, limits: Limits | httpx.Limits) -> None:
        self.timeout = timeout
        self.limits = limits
        self.max_connections = limits.max_connections or 0   # 0: no limit (as aiohttp's connector)
        self.keepalive_expiry = limits.keepalive_expiry
        self.ssl_context = shared_ssl_context()
        self._idle: dict[_Key, list[tuple[_Connection, float]]] = {}
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._jar: CookieJar | None = None
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
    def cookie_jar(self) -> CookieJar:
        """Cookies the providers set, sent back to them (as the aiohttp session's jar did)."""
        if self._jar is None:
            self._jar = CookieJar()
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
            lines.append("User-Agent: " + USER_AGENT)  # (aiohttp sent its own: "Python/3.x aiohttp/3.x")
        jar = self._jar
        if jar is not None and len(jar) and "cookie" not in given:
            cookies = jar.header(target)
            if cookies:
                lines.append("Cookie: " + cookies)
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
        if "set-cookie" in response.headers and not target.is_ip:
            self.cookie_jar.update(response.headers.getall("set-cookie"), target)  # type: ignore[attr-defined]
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
            raise ConnectionTimeoutError(f"Connection timeout to host {target.key.host}:{target.key.port}") from exc

    async def _open(self, target: _Target) -> _Connection:
        loop = self._loop
        cached = self._dns.get((target.host, target.port))
        if cached is not None and loop.time() - cached[0] < _DNS_TTL_S:
            infos = cached[1]
        elif target.is_ip and (literal := _address_infos(target.host, target.port)) is not None:
            infos = literal  # an IP address: nothing to resolve (aiohttp's connector does not ask either)
        else:  # as aiohttp's resolver, its answers cached 10 s (aiohttp's ttl_dns_cache)
            try:
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM,
                                               flags=socket.AI_ADDRCONFIG)
            except OSError as exc:
                raise ClientConnectorDNSError(*target.key, exc) from exc
            self._dns[(target.host, target.port)] = (loop.time(), infos)
        try:  # as aiohttp's connector: happy eyeballs (0.25 s) over the resolved addresses, then TLS
            sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=0.25, loop=loop)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as aiohttp's connections
            _, conn = await loop.create_connection(_Connection, sock=sock, ssl=self.ssl_context if target.tls else None,
                                                   server_hostname=target.server_hostname)
        except ssl.CertificateError as exc:
            raise ClientConnectorCertificateError(*target.key, exc) from exc
        except ssl.SSLError as exc:
            raise ClientConnectorSSLError(*target.key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise ClientConnectorError(*target.key, exc) from exc
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


class _Pieces:
    """``UpstreamResponse.aiter_bytes``: each step is a read of up to ``CHUNK_SIZE`` bytes, the end
    of the body stops the iteration."""

    __slots__ = ("_response",)

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._response._read(CHUNK_SIZE)
        if not chunk:
            raise StopAsyncIteration
        return chunk


def _key_of(conn: _Connection) -> _Key:
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

    import_aiohttp()
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
