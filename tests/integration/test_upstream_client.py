"""The upstream client (``gateway/upstream_http.py``; ``adapters/http_client.py`` re-exports it)
against real sockets: what it sends is what aiohttp's ``ClientSession`` sent for the same call, and
what it does with the answers (keep-alive, chunked and encoded bodies, cookies, a stale connection,
timeouts, a cut body, a full pool) is what the adapters relied on with the session (aiohttp's
exceptions, mapped by ``upstream_errors``)."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from gateway.adapters import transport, upstream_errors
from gateway.adapters.http_client import Limits, Timeouts, UpstreamClient, create_http_client
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream_http import MAX_HEAD_BYTES

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Server:
    """A raw HTTP/1.1 server: ``handler(head, reader, writer)`` answers each request (True: keep
    the connection for the next one)."""

    handler: Handler
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length) if length else b"")
                if not await self.handler(head, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test ended
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        s = Server(handler)
        s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


def answer(body: bytes = b'{"ok":true}', *, status: str = "200 OK", headers: tuple[str, ...] = (),
           keep: bool = True) -> Handler:
    async def handler(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return keep

    return handler


def _headers_of(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode().split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
    return out


async def _call(client: UpstreamClient, url: str, body: bytes | None = b'{"a":1}', method: str = "POST",
                headers: dict[str, str] | None = None) -> bytes:
    request = client.build_request(method, url, content=body, headers=headers or {
        "content-type": "application/json", "authorization": "Bearer sk-test"})
    response = await client.send(request, stream=True)
    try:
        return await response.aread()
    finally:
        await response.aclose()


async def test_the_request_is_what_aiohttps_session_sent(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer())
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions?alt=sse"
    client = create_http_client()
    async with aiohttp.ClientSession(trust_env=False) as session:
        for method, body in (("POST", b'{"a":1}'), ("POST", None), ("GET", None)):
            await _call(client, url, body, method)
            async with session.request(method, url, data=body, allow_redirects=False, headers={
                    "user-agent": client.build_request("GET", url).headers["user-agent"],
                    "content-type": "application/json", "authorization": "Bearer sk-test"}) as r:
                await r.read()
            ours, theirs = server.heads[-2], server.heads[-1]
            assert ours.split(b"\r\n")[0] == theirs.split(b"\r\n")[0] == \
                f"{method} /v1/chat/completions?alt=sse HTTP/1.1".encode()
            assert _headers_of(ours) == _headers_of(theirs), method
            assert server.bodies[-2] == server.bodies[-1] == (body or b"")
        # a body without a content type: aiohttp's application/octet-stream
        await _call(client, url, b"raw", headers={"x-test": "1"})
        await session.post(url, data=b"raw", headers={"x-test": "1"})
        assert _headers_of(server.heads[-2])["content-type"] == _headers_of(server.heads[-1])["content-type"] \
            == "application/octet-stream"
    await client.aclose()


async def test_connections_are_kept_alive_and_reused(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer())
    client = create_http_client()
    url = f"http://127.0.0.1:{server.port}/x"
    for _ in range(5):
        assert await _call(client, url) == b'{"ok":true}'
    assert server.connections == 1
    await client.aclose()


async def test_a_connection_the_server_closes_is_not_reused(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer(headers=("Connection: close",), keep=False))
    client = create_http_client()
    url = f"http://127.0.0.1:{server.port}/x"
    for _ in range(3):
        assert await _call(client, url) == b'{"ok":true}'
    assert server.connections == 3
    await client.aclose()


async def test_chunked_and_until_close_bodies(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def chunked(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        return True

    async def until_close(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        return False

    s1, s2 = await serve(chunked), await serve(until_close)
    client = create_http_client()
    response = await client.send(client.build_request("POST", f"http://127.0.0.1:{s1.port}/s", content=b"{}"),
                                 stream=True)
    pieces = [piece async for piece in response.aiter_bytes()]
    await response.aclose()
    assert b"".join(pieces) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n" and len(pieces) >= 2
    assert await _call(client, f"http://127.0.0.1:{s1.port}/s") == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert s1.connections == 1
    for _ in range(2):
        assert await _call(client, f"http://127.0.0.1:{s2.port}/c") == b"all of it"
    assert s2.connections == 2
    await client.aclose()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
async def test_encoded_bodies_are_decoded(serve: Callable[[Handler], Awaitable[Server]], encoding: str) -> None:
    payload = json.dumps({"choices": [{"message": {"content": "hé" * 500}}]}).encode()
    if encoding == "gzip":
        data = gzip.compress(payload)
    elif encoding == "deflate":
        data = zlib.compress(payload)
    else:
        c = zlib.compressobj(wbits=-15)
        data = c.compress(payload) + c.flush()
    server = await serve(answer(data, headers=(f"Content-Encoding: {encoding.split('-')[0]}",)))
    client = create_http_client()
    assert await _call(client, f"http://127.0.0.1:{server.port}/x") == payload
    await client.aclose()


async def test_a_body_that_does_not_decode_is_a_payload_error(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer(b"not gzip at all", headers=("Content-Encoding: gzip",)))
    client = create_http_client()
    with pytest.raises(aiohttp.ClientPayloadError):
        await _call(client, f"http://127.0.0.1:{server.port}/x")
    await client.aclose()


async def test_cookies_go_back_as_with_the_session(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer(headers=("Set-Cookie: __cf_bm=abc; Path=/; HttpOnly",)))
    client = create_http_client()
    async with aiohttp.ClientSession(trust_env=False) as session:
        for call in range(2):
            await _call(client, f"http://localhost:{server.port}/x")
            async with session.post(f"http://localhost:{server.port}/x", data=b'{"a":1}') as r:
                await r.read()
            ours, theirs = _headers_of(server.heads[-2]), _headers_of(server.heads[-1])
            assert ours.get("cookie") == theirs.get("cookie") == (None if call == 0 else "__cf_bm=abc")
    await client.aclose()


async def test_a_stale_pooled_connection_is_retried_once(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """The server drops the kept-alive connection between two calls: the second call's send fails
    with aiohttp's ServerDisconnectedError, which ``transport.send`` retries on a new connection."""
    server = await serve(answer(keep=False))  # answers as if keep-alive, then closes
    client = create_http_client()
    url = f"http://127.0.0.1:{server.port}/x"
    assert await _call(client, url) == b'{"ok":true}'
    await asyncio.sleep(0.05)
    # pooled, but closed by the server: never handed out again
    response = await transport.send(client, lambda: client.build_request("POST", url, content=b"{}"), "openai")
    assert await response.aread() == b'{"ok":true}'
    await response.aclose()
    assert server.connections == 2

    # the server closing after the request was written: ServerDisconnectedError (stale), as aiohttp's
    async def drop(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        return False

    dropping = await serve(drop)
    with pytest.raises(aiohttp.ServerDisconnectedError) as caught:
        await _call(client, f"http://127.0.0.1:{dropping.port}/x")
    assert upstream_errors.is_stale_connection_error(caught.value)
    with pytest.raises(UpstreamError) as mapped:
        await transport.post_json(client, lambda: client.build_request(
            "POST", f"http://127.0.0.1:{dropping.port}/x", content=b"{}"), "openai", "k")
    assert mapped.value.code == "upstream_connection_error" and dropping.connections == 3  # 1 + retried 2
    await client.aclose()


async def test_read_timeout_and_a_cut_body(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def silent(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(2)
        return False

    async def cut(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")
        await writer.drain()
        return False

    s1, s2 = await serve(silent), await serve(cut)
    client = UpstreamClient(Timeouts(connect=1.0, read=0.2, write=1.0, pool=1.0), Limits())
    with pytest.raises(aiohttp.SocketTimeoutError):
        await _call(client, f"http://127.0.0.1:{s1.port}/x")
    # a call's own read timeout (extensions["timeout"]), mapped as before
    request = client.build_request("POST", f"http://127.0.0.1:{s1.port}/x", content=b"{}")
    request.extensions["timeout"] = {"read": 0.1}
    with pytest.raises(UpstreamTimeout):
        await transport.post_json(client, lambda: request, "openai", "k")
    with pytest.raises(aiohttp.ClientPayloadError):
        await _call(client, f"http://127.0.0.1:{s2.port}/x")
    with pytest.raises(UpstreamError) as mapped:
        await transport.post_json(client, lambda: client.build_request(
            "POST", f"http://127.0.0.1:{s2.port}/x", content=b"{}"), "openai", "k")
    assert mapped.value.code == "upstream_connection_error"
    await client.aclose()


async def test_an_unreachable_upstream() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    client = create_http_client()
    with pytest.raises(aiohttp.ClientConnectorError):
        await _call(client, f"http://127.0.0.1:{port}/x")
    with pytest.raises(UpstreamError) as mapped:
        await transport.post_json(client, lambda: client.build_request(
            "POST", f"http://127.0.0.1:{port}/x", content=b"{}"), "openai", "k")
    assert mapped.value.code == "upstream_unreachable"
    await client.aclose()


async def test_a_header_with_a_control_character_is_refused(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(answer())
    client = create_http_client()
    with pytest.raises(ValueError, match="Forbidden control character"):
        await _call(client, f"http://127.0.0.1:{server.port}/x", headers={"authorization": "Bearer a\r\nx-evil: 1"})
    assert server.heads == []
    await client.aclose()


async def test_the_pool_limit_queues_calls(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    async def slow(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        return await answer()(head, reader, writer)

    server = await serve(slow)
    client = UpstreamClient(Timeouts(connect=1.0, read=5.0, write=1.0, pool=2.0), Limits(max_connections=1))
    url = f"http://127.0.0.1:{server.port}/x"
    assert await asyncio.gather(*(_call(client, url) for _ in range(4))) == [b'{"ok":true}'] * 4
    assert server.connections == 1
    # waiting longer than the pool timeout for a connection: aiohttp's ConnectionTimeoutError
    client = UpstreamClient(Timeouts(connect=1.0, read=5.0, write=1.0, pool=0.02), Limits(max_connections=1))
    results = await asyncio.gather(*(_call(client, url) for _ in range(2)), return_exceptions=True)
    assert results[0] == b'{"ok":true}' and isinstance(results[1], aiohttp.ConnectionTimeoutError)
    assert isinstance(upstream_errors.error_from_transport("openai", results[1]), UpstreamTimeout)
    await client.aclose()


async def test_a_streamed_body_larger_than_the_buffer(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """Reading pauses while more than 128 KiB wait unread, and resumes: every byte arrives, in order."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    server = await serve(answer(payload))
    client = create_http_client()
    response = await client.send(client.build_request("POST", f"http://127.0.0.1:{server.port}/x", content=b"{}"),
                                 stream=True)
    await asyncio.sleep(0.1)  # let it fill the buffer
    received = bytearray()
    async for piece in response.aiter_bytes():
        assert len(piece) <= 16 * 1024
        received += piece
    await response.aclose()
    assert bytes(received) == payload
    assert await _call(client, f"http://127.0.0.1:{server.port}/x") == payload and server.connections == 1
    await client.aclose()


async def test_closing_a_response_ends_a_read_in_progress(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """A deadline closes the upstream stream while it is being read (``service._arm_deadline``):
    the read ends with aiohttp's ClientConnectionError("Connection closed"), as with the session."""
    async def trickle(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    server = await serve(trickle)
    client = create_http_client()
    response = await client.send(client.build_request("POST", f"http://127.0.0.1:{server.port}/x", content=b"{}"),
                                 stream=True)
    pieces = response.aiter_bytes()
    assert await pieces.__anext__() == b"hello"
    asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(response.aclose()))
    with pytest.raises(aiohttp.ClientConnectionError, match="Connection closed"):
        await asyncio.wait_for(pieces.__anext__(), 2)
    await client.aclose()


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for ``localhost`` (and its key), self-signed, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


async def test_tls_verified_with_sni_and_an_unknown_certificate_refused(tmp_path: Any) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    s = Server(answer())
    s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0, ssl=server_ctx)
    try:
        url = f"https://localhost:{s.port}/v1/chat/completions"
        client = create_http_client()  # the shared (system) store: our certificate is unknown
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _call(client, url)
        await client.aclose()
        client = create_http_client()
        client.ssl_context = ssl.create_default_context(cafile=cert)
        for _ in range(3):
            assert await _call(client, url) == b'{"ok":true}'
        assert s.connections == 1 and names[-1] == "localhost"  # the refused handshake never reached it
        assert _headers_of(s.heads[-1])["host"] == f"localhost:{s.port}"
        await client.aclose()
    finally:
        s.server.close()


async def test_an_endless_answer_head_fails_instead_of_growing(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """A server that sends header bytes without end (a broken or hostile OpenAI-compatible server)
    fails the call as a malformed answer once the head passes MAX_HEAD_BYTES, before any read
    timeout; a big body right behind a small head is not a big head."""
    async def endless_header(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Junk: ")
        for _ in range(64):
            writer.write(b"a" * 4096)
            await writer.drain()
            await asyncio.sleep(0)
        await asyncio.sleep(5)
        return False

    server = await serve(endless_header)
    client = create_http_client()
    started = asyncio.get_running_loop().time()
    with pytest.raises(aiohttp.ClientResponseError) as failed:
        await _call(client, f"http://127.0.0.1:{server.port}/x")
    assert failed.value.status == 400 and str(MAX_HEAD_BYTES) in failed.value.message
    assert asyncio.get_running_loop().time() - started < 2

    big = b'{"x":"' + b"b" * 300_000 + b'"}'
    server = await serve(answer(big, headers=("X-Small: 1",)))
    assert await _call(client, f"http://127.0.0.1:{server.port}/x") == big
    await client.aclose()
