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

from gateway import upstream_http
from gateway.adapters import transport, upstream_errors
from gateway.adapters.http_client import Limits, Timeouts, UpstreamClient, create_http_client
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream_http import MAX_HEAD_BYTES
from tests.support.apps import FRESH_CHAT, in_fresh_function

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
    with pytest.raises(upstream_http.ClientPayloadError):
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
    with pytest.raises(upstream_http.ServerDisconnectedError) as caught:
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
    with pytest.raises(upstream_http.SocketTimeoutError):
        await _call(client, f"http://127.0.0.1:{s1.port}/x")
    # a call's own read timeout (extensions["timeout"]), mapped as before
    request = client.build_request("POST", f"http://127.0.0.1:{s1.port}/x", content=b"{}")
    request.extensions["timeout"] = {"read": 0.1}
    with pytest.raises(UpstreamTimeout):
        await transport.post_json(client, lambda: request, "openai", "k")
    with pytest.raises(upstream_http.ClientPayloadError):
        await _call(client, f"http://127.0.0.1:{s2.port}/x")
    with pytest.raises(UpstreamError) as mapped:
        await transport.post_json(client, lambda: client.build_request(
            "POST", f"http://127.0.0.1:{s2.port}/x", content=b"{}"), "openai", "k")
    assert mapped.value.code == "upstream_connection_error"
    await client.aclose()


async def test_the_read_timeout_is_the_silence_since_the_last_bytes(serve: Callable[[Handler], Awaitable[Server]],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The read timeout bounds each silence, not the whole body: pieces that each come within it go
    on past it, and the silence after the last one fails the read once it lasts as long. One loop
    timer per response for that (pushed back when it comes due after bytes arrived), not one
    cancelled and armed again per read."""
    async def trickle(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            writer.write(b"2\r\nok\r\n")
            await writer.drain()
            await asyncio.sleep(0.06)
        await asyncio.sleep(2)  # then silent
        return False

    server = await serve(trickle)
    client = UpstreamClient(Timeouts(connect=1.0, read=0.15, write=1.0, pool=1.0), Limits())
    loop = asyncio.get_running_loop()
    armed: list[Any] = []
    for name in ("call_at", "call_later"):
        def arming(*args: Any, _real: Any = getattr(loop, name), **kwargs: Any) -> Any:
            if getattr(args[1], "__name__", "") == "_timed_out":
                armed.append(args[1])
            return _real(*args, **kwargs)
        monkeypatch.setattr(loop, name, arming)
    response = await client.send(client.build_request("POST", f"http://127.0.0.1:{server.port}/x", content=b"{}"),
                                 stream=True)
    received = b""
    started = loop.time()
    with pytest.raises(upstream_http.SocketTimeoutError):
        async for piece in response.aiter_bytes():
            received += piece
    assert received == b"ok" * 6  # 0.36 s of pieces, each within the 0.15 s read timeout
    assert loop.time() - started >= 0.3 + 0.15 - 0.02  # failed after the last piece's silence, not before
    await response.aclose()
    # one armed for the call, again only when it came due with bytes arrived since: at most one per
    # read timeout of the body's time (~0.5 s / 0.15 s), not one per read (7: the head, 6 pieces)
    assert 1 <= len(armed) <= 5
    await client.aclose()


@pytest.mark.parametrize("open_after_done", [False, True], ids=["ended", "open-after-done"])
async def test_a_stream_read_to_its_end_goes_back_to_the_pool_drained_only_if_needed(
        serve: Callable[[Handler], Awaitable[Server]], monkeypatch: pytest.MonkeyPatch, open_after_done: bool) -> None:
    """After the terminal event an adapter's stream reads the rest of the body (``adapters.stream._drain``)
    so that the connection is reused; a body whose end came with the last event (a fast provider's
    last read) has nothing left: no drain (its timer) then. Either way the connection is reused."""
    from gateway.adapters import get_adapter
    from gateway.adapters import stream as stream_module
    from gateway.adapters.contract import Target

    events = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
              b'"delta":{"content":"hi"},"logprobs":null,"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')

    async def sse(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(events) + events + b"\r\n" + (b"" if open_after_done else b"0\r\n\r\n"))
        await writer.drain()
        if open_after_done:
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return True

    server = await serve(sse)
    drained: list[bool] = []
    real_drain = stream_module._drain

    async def counting(body: Any) -> None:
        drained.append(True)
        await real_drain(body)

    monkeypatch.setattr(stream_module, "_drain", counting)
    client = create_http_client()
    target = Target("openai", "m", "openai/m", f"http://127.0.0.1:{server.port}/v1", "sk-test")
    for _ in range(2):
        stream = get_adapter("openai").stream(client, target, {"model": "openai/m", "messages": [], "stream": True})
        stream.on_done = lambda: None
        await stream.open()
        chunks = [chunk async for chunk in stream]
        assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["hi"]
    assert server.connections == 1  # reused
    assert drained == ([True, True] if open_after_done else [])
    await client.aclose()


async def test_an_ip_address_is_not_resolved_and_a_name_is_resolved_once(
        serve: Callable[[Handler], Awaitable[Server]], monkeypatch: pytest.MonkeyPatch) -> None:
    """As aiohttp's connector: an IP address is connected to as it is (no resolver thread, no IDNA
    codec); a host name goes through ``getaddrinfo``, its answer kept 10 s."""
    server = await serve(answer(headers=("Connection: close",), keep=False))
    loop = asyncio.get_running_loop()
    asked: list[str] = []
    resolve = loop.getaddrinfo

    async def counted(host: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        return await resolve(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counted)
    client = create_http_client()
    for _ in range(2):  # a new connection each time: the server closes each
        assert await _call(client, f"http://127.0.0.1:{server.port}/x") == b'{"ok":true}'
    assert asked == [] and server.connections == 2 and server.heads[-1].startswith(b"POST /x ")
    client2 = create_http_client()
    assert await _call(client2, f"http://localhost:{server.port}/x") == b'{"ok":true}'
    assert await _call(client2, f"http://localhost:{server.port}/y") == b'{"ok":true}'
    assert asked == ["localhost"] and server.connections == 4  # resolved once, its answer kept
    await client.aclose()
    await client2.aclose()


def test_the_address_of_an_ip_host_is_what_getaddrinfo_gives() -> None:
    import socket

    for host in ("127.0.0.1", "10.0.0.5", "::1", "2001:db8::1"):
        assert upstream_http._address_infos(host, 8000) == socket.getaddrinfo(
            host, 8000, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[:1], host
    assert upstream_http._address_infos("999.1.1.1", 80) is None  # not an address: the resolver's to refuse
    assert upstream_http._address_infos("fe80::1%eth0", 80) is None  # scoped: getaddrinfo's


async def test_an_unreachable_upstream() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    client = create_http_client()
    with pytest.raises(upstream_http.ClientConnectorError):
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
    assert results[0] == b'{"ok":true}' and isinstance(results[1], upstream_http.ConnectionTimeoutError)
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


async def test_a_read_of_many_chunks_is_read_whole_and_in_order(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """A stream's events in one write (one chunk each, as a fast provider bursts them): the reader gets
    them joined, at most 16 KiB a piece, every byte in order; past 128 KiB unread the reading pauses
    and resumes (the pieces of a read are buffered, the mark checked once per read)."""
    events = [b"data: {\"n\":%d}\n\n" % i for i in range(20)]
    big = [bytes([65 + i % 26]) * 1000 for i in range(1200)]  # 1.2 MB in 1,200 chunks

    async def chunked(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        pieces = big if head.startswith(b"POST /big") else events
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n")
        await writer.drain()
        return True

    server = await serve(chunked)
    client = create_http_client()
    for path, expected in (("/small", events), ("/big", big)):
        response = await client.send(client.build_request("POST", f"http://127.0.0.1:{server.port}{path}",
                                                          content=b"{}"), stream=True)
        await asyncio.sleep(0.05)  # the whole answer arrives (and, for the big one, fills the buffer)
        pieces = [piece async for piece in response.aiter_bytes()]
        await response.aclose()
        assert b"".join(pieces) == b"".join(expected)
        assert all(0 < len(piece) <= 16 * 1024 for piece in pieces)
        if path == "/small":
            assert len(pieces) == 1  # one read's events: one piece
    assert server.connections == 1  # read to its end: the connection was reused
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
    with pytest.raises(upstream_http.ClientConnectionError, match="Connection closed"):
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
        with pytest.raises(upstream_http.ClientConnectorCertificateError):
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
    with pytest.raises(upstream_http.ClientResponseError) as failed:
        await _call(client, f"http://127.0.0.1:{server.port}/x")
    assert failed.value.status == 400 and str(MAX_HEAD_BYTES) in failed.value.message
    assert asyncio.get_running_loop().time() - started < 2

    big = b'{"x":"' + b"b" * 300_000 + b'"}'
    server = await serve(answer(big, headers=("X-Small: 1",)))
    assert await _call(client, f"http://127.0.0.1:{server.port}/x") == big
    await client.aclose()


# ------------------------------------------------------------------ without aiohttp (issue 15, spawn)
# The client decodes, keeps cookies and fails with errors of its own since it no longer imports
# aiohttp; aiohttp stays the reference for what it did.
async def test_gzip_and_deflate_bodies_streamed_in_pieces_are_decoded(
        serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """Encoded bodies arriving chunked in small pieces (a streamed answer), concatenated gzip
    members included (and br when Brotli is installed), decode to the very bytes aiohttp's
    session read."""
    payload = b"data: " + json.dumps({"choices": [{"delta": {"content": "x\u00e9" * 3000}}]}).encode() + b"\n\n"
    bodies = {
        "gzip": gzip.compress(payload[:5000]) + gzip.compress(payload[5000:]),  # two members
        "deflate": zlib.compress(payload),
    }
    try:
        import brotli  # the layer does not install it: br is neither advertised nor decoded then
    except ImportError:
        pass
    else:
        bodies["br"] = brotli.compress(payload)
    for encoding, data in bodies.items():
        async def chunked(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          data: bytes = data, encoding: str = encoding) -> bool:
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n"
                         .encode())
            for i in range(0, len(data), 97):
                piece = data[i:i + 97]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True

        server = await serve(chunked)
        url = f"http://127.0.0.1:{server.port}/x"
        client = create_http_client()
        response = await client.send(client.build_request("POST", url, content=b"{}"), stream=True)
        ours = b"".join([chunk async for chunk in response.aiter_bytes()])
        await response.aclose()
        await client.aclose()
        async with aiohttp.ClientSession(trust_env=False) as session, session.post(url, data=b"{}") as r:
            theirs = await r.read()
        assert ours == theirs == payload, encoding


async def test_a_br_body_is_decoded(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    brotli = pytest.importorskip("brotli")
    payload = json.dumps({"choices": [{"message": {"content": "h\u00e9" * 500}}]}).encode()
    server = await serve(answer(brotli.compress(payload), headers=("Content-Encoding: br",)))
    client = create_http_client()
    assert await _call(client, f"http://127.0.0.1:{server.port}/x") == payload
    assert "br" in _headers_of(server.heads[-1])["accept-encoding"]
    await client.aclose()


async def test_accept_encoding_is_aiohttps(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """br and zstd are advertised exactly when aiohttp advertised them (their module installed)."""
    from aiohttp.client_reqrep import _gen_default_accept_encoding

    server = await serve(answer())
    client = create_http_client()
    await _call(client, f"http://127.0.0.1:{server.port}/x")
    assert _headers_of(server.heads[-1])["accept-encoding"] == _gen_default_accept_encoding()
    await client.aclose()


async def test_a_br_body_without_the_module_is_a_payload_error(serve: Callable[[Handler], Awaitable[Server]],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("no brotli")

    monkeypatch.setattr(upstream_http, "_brotli", missing)
    server = await serve(answer(b"\x0b\x02\x80ok\x03", headers=("Content-Encoding: br",)))
    client = create_http_client()
    with pytest.raises(upstream_http.ClientPayloadError):
        await _call(client, f"http://127.0.0.1:{server.port}/x")
    await client.aclose()


async def test_a_deflate_body_cut_short_is_a_payload_error(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    data = zlib.compress(b'{"ok":true}' * 100)[:-6]
    server = await serve(answer(data, headers=("Content-Encoding: deflate",)))
    client = create_http_client()
    with pytest.raises(upstream_http.ClientPayloadError):
        await _call(client, f"http://127.0.0.1:{server.port}/x")
    await client.aclose()


async def test_a_cookie_goes_back_to_its_host_only(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    """A Set-Cookie (Cloudflare's, host-only) is sent on the next call to the same host, not to
    another host; none is kept from an IP address (aiohttp's jar refused those)."""
    setting = await serve(answer(headers=("Set-Cookie: __cf_bm=abc.def-1; path=/; HttpOnly; SameSite=None",)))
    other = await serve(answer())
    client = create_http_client()
    await _call(client, f"http://localhost:{setting.port}/v1/chat/completions")
    await _call(client, f"http://localhost:{setting.port}/v1/chat/completions")
    assert _headers_of(setting.heads[-1]).get("cookie") == "__cf_bm=abc.def-1"
    await _call(client, f"http://127.0.0.1:{other.port}/x")  # another host (an IP address)
    assert "cookie" not in _headers_of(other.heads[-1])
    await _call(client, f"http://127.0.0.1:{setting.port}/x")  # the same server by another name
    assert "cookie" not in _headers_of(setting.heads[-1])
    fresh = create_http_client()
    await _call(fresh, f"http://127.0.0.1:{setting.port}/x")
    await _call(fresh, f"http://127.0.0.1:{setting.port}/x")
    assert "cookie" not in _headers_of(setting.heads[-1]) and len(fresh.cookie_jar) == 0
    await client.aclose()
    await fresh.aclose()


_COOKIE_CASES = [
    # (Set-Cookie headers, the answering URL, the URLs called next)
    (["a=1; Path=/; HttpOnly", "b=2"], "https://api.example.com/v1/chat/completions",
     ["https://api.example.com/v1/chat/completions", "https://api.example.com/", "https://other.example.com/v1/x",
      "https://sub.api.example.com/v1/x", "http://api.example.com/v1/models"]),
    (["__cf_bm=Xy.z-1_2=; path=/; expires=Sat, 05-Dec-37 14:30:00 GMT; domain=.example.com; HttpOnly; Secure; "
      "SameSite=None", "_cfuvid=q.w-e; path=/; domain=.example.com; HttpOnly; Secure; SameSite=None"],
     "https://api.example.com/v1/x",
     ["https://api.example.com/v1/x", "http://api.example.com/v1/x", "https://www.example.com/",
      "https://example.com/", "https://example.org/"]),
    (["gone=1; Max-Age=0", "old=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT", "kept=1; Max-Age=3600",
      "bad=1; Max-Age=soon", "evil=1; Domain=other.com", "dotted=1; Domain=example.com."],
     "https://api.example.com/a/b/c", ["https://api.example.com/a/b/c", "https://api.example.com/a/b", "https://api.example.com/a",
                                      "https://api.example.com/z"]),
    (["p=1; Path=/v1", "p=2; Path=/v1/chat", "q=1; Path=/v2"], "https://api.example.com/v1/chat/x",
     ["https://api.example.com/v1/chat/completions", "https://api.example.com/v1/models", "https://api.example.com/v2",
      "https://api.example.com/v10"]),
    (["a=1", "a=2", "n", "sp=x y", 'q="x=1"', "h= spaced ", "e=\u00e9", "k=a,b", 'z="', "bad name=1", "t=a\x01"],
     "https://h.example.com/", ["https://h.example.com/"]),
]


@pytest.mark.parametrize(("set_cookies", "origin", "calls"), _COOKIE_CASES)
async def test_the_cookie_jar_sends_what_aiohttps_sent(set_cookies: list[str], origin: str, calls: list[str]) -> None:
    from yarl import URL

    ours = upstream_http.CookieJar()
    ours.update(set_cookies, upstream_http._target(origin))
    theirs = aiohttp.CookieJar()
    theirs.update_cookies_from_headers(set_cookies, URL(origin))
    for url in calls:
        expected = theirs.filter_cookies(URL(url)).output(header="", sep=";").strip()
        assert ours.header(upstream_http._target(url)) == expected, url


@pytest.mark.parametrize("url", [
    "https://api.openai.com/v1/chat/completions", "http://127.0.0.1:8080/v1/x?alt=sse", "https://Api.X.com:443/a/b",
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
    "https://h.com", "https://h.com/a/./b", "https://h.com/a b", "https://h.com/a?b=c+d", "https://h.com/%7e",
    "http://h.com:80/x", "http://h:8080/", "https://x.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
    "?api-version=2024-10-21", "https://h.com/a/b:c@d!$&'()*+,;=?a=b&c=d:e/f?g,h", "http://[::1]:8080/x",
    "https://h\u00e9.com/x", "https://h.com/x#frag", "https://h.com./x",
])
def test_a_url_is_parsed_as_yarl_parsed_it(url: str) -> None:
    from yarl import URL

    u = URL(url)
    t = upstream_http._target.__wrapped__(url)
    assert (t.host, t.port, t.tls, t.host_header, t.request_line, t.path) == (
        u.raw_host, u.port, u.scheme == "https", u.host_port_subcomponent, f" {u.raw_path_qs} HTTP/1.1", u.path)


async def test_the_errors_keep_their_meaning() -> None:
    """The client's own errors have aiohttp's bases: what the adapters and the Upstash client test
    (OSError, TimeoutError, ValueError) still holds."""
    refused = upstream_http.ClientConnectorError("h", 443, True, ConnectionRefusedError(111, "Connection refused"))
    assert isinstance(refused, OSError) and refused.errno == 111 and "h:443" in str(refused)
    assert isinstance(upstream_http.SocketTimeoutError("x"), TimeoutError)
    assert isinstance(upstream_http.ConnectionTimeoutError("x"), asyncio.TimeoutError)
    assert isinstance(upstream_http.InvalidUrlClientError("x"), ValueError)
    for exc, code in ((refused, "upstream_unreachable"),
                      (upstream_http.ServerDisconnectedError(), "upstream_connection_error"),
                      (upstream_http.ClientPayloadError("cut"), "upstream_connection_error"),
                      (upstream_http.SocketTimeoutError("x"), "upstream_timeout"),
                      (upstream_http.ConnectionTimeoutError("x"), "upstream_timeout")):
        assert upstream_errors.is_transport_error(exc)
        assert upstream_errors.error_from_transport("openai", exc).code == code
    assert upstream_errors.is_stale_connection_error(upstream_http.ServerDisconnectedError())
    assert not upstream_errors.is_stale_connection_error(refused)


async def test_an_invalid_url_is_a_connection_error() -> None:
    client = create_http_client()
    with pytest.raises(upstream_http.InvalidUrlClientError):
        await _call(client, "ftp://example.com/x")
    with pytest.raises(UpstreamError) as mapped:
        await transport.post_json(client, lambda: client.build_request("POST", "ftp://h/x", content=b"{}"),
                                  "openai", "k")
    assert mapped.value.code == "upstream_connection_error"
    await client.aclose()


_ONE_REQUEST = """
import os, sys
os.environ["GATEWAY_COLD_START"] = "serve"
import app
imported = "aiohttp" in sys.modules
""" + FRESH_CHAT + """
status, answer = chat(False)
status2, streamed = chat(True)
print(json.dumps([imported, status, status2, b"choices" in answer, b"[DONE]" in streamed,
                  "aiohttp" in sys.modules, sorted(m for m in ("yarl", "multidict", "attr") if m in sys.modules)]))
"""


async def test_the_query_function_imports_and_answers_without_aiohttp(
        stack: str, fake_upstream: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh interpreter imports the query function as run.sh does and answers a chat completion
    and a streamed one through it (Postgres, the Upstash bridge, the fake provider): aiohttp (nor
    yarl, multidict, attrs) is never imported."""
    user = await make_user()
    monkeypatch.setenv("TEST_API_KEY", user.api_key)
    imported, status, status2, answered, streamed, after, others = json.loads(
        in_fresh_function("query", _ONE_REQUEST))
    assert (status, status2, answered, streamed) == (200, 200, True, True)
    assert not imported and not after and others == []
