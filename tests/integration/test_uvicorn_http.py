"""``gateway.uvicorn_http.HttpToolsProtocol`` (what run.sh serves the streaming function with):
uvicorn's httptools protocol whose buffered responses go out in one write. Real uvicorn servers on
real sockets, on asyncio's loop and on uvloop (run.sh's): every answer is byte for byte what
uvicorn's own protocol sends (the ``date`` header aside), a buffered response is one write to the
socket's transport instead of two, and a streamed response's head still leaves before its first
chunk is produced."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as StockProtocol

from gateway.uvicorn_http import HttpToolsProtocol

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
JSON_BODY = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"Hello"}}]}'


class _Recorder:
    """Under the protocol's transport: counts the writes that reach the socket's transport."""

    def __init__(self, transport: asyncio.Transport, log: list[int]) -> None:
        self._transport = transport
        self._log = log

    def write(self, data: bytes) -> None:
        self._log.append(1)
        self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self._log.append(len(list(data)) and 1)
        self._transport.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _recording(base: type[Any], log: list[int]) -> type[Any]:
    class Recording(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Recorder(transport, log))

    return Recording


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/gated":  # the first chunk only once the client has seen the head
        gate = GATES[scope["query_string"].decode()]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await gate.wait()
        await send({"type": "http.response.body", "body": b"after the head"})
        return
    payload = body or JSON_BODY
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"x-request-id", b"req_1")]})
    await send({"type": "http.response.body", "body": payload})


GATES: dict[str, asyncio.Event] = {}


async def _serve(protocol: type[Any], test: Callable[[int], Awaitable[Any]]) -> Any:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, loop="none", lifespan="off",
                            log_level="critical", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        return await asyncio.wait_for(test(port), 10)
    finally:
        server.should_exit = True
        await task


def _run(loop: str, protocol: type[Any], test: Callable[[int], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(_serve(protocol, test))


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on one connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def _normalised(data: bytes) -> bytes:
    return re.sub(rb"date: [^\r]*\r\n", b"date: X\r\n", data)


CLOSE = b"Connection: close\r\n"
EXCHANGES = {
    "json": b"GET / HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "post echo": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n" + CLOSE + b"\r\nhello world",
    "head": b"HEAD / HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "204": b"GET /empty HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "chunked stream": b"GET /stream HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "keep-alive then close": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                              + b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + CLOSE + b"\r\nok"),
    "http/1.0": b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    "expect 100-continue": (b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n" + CLOSE
                            + b"\r\nabc"),
    "malformed (400)": b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "app error (500)": b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("case", sorted(EXCHANGES))
def test_every_answer_is_uvicorns_own(loop: str, case: str) -> None:
    raw = EXCHANGES[case]
    stock = _run(loop, StockProtocol, lambda port: _exchange(port, raw))
    ours = _run(loop, HttpToolsProtocol, lambda port: _exchange(port, raw))
    assert stock.startswith(b"HTTP/1.1 ")
    assert _normalised(ours) == _normalised(stock)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_buffered_response_is_one_write(loop: str) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET / HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n"
    stock_writes: list[int] = []
    our_writes: list[int] = []
    stock = _run(loop, _recording(StockProtocol, stock_writes), lambda port: _exchange(port, raw))
    ours = _run(loop, _recording(HttpToolsProtocol, our_writes), lambda port: _exchange(port, raw))
    assert _normalised(ours) == _normalised(stock)
    assert stock.count(JSON_BODY) == 4
    assert len(stock_writes) == 8  # head, body; four times
    assert len(our_writes) == 4    # head + body in one writelines


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_streamed_head_leaves_before_the_first_chunk(loop: str) -> None:
    async def test(port: int) -> tuple[bytes, bytes]:
        gate = GATES[loop] = asyncio.Event()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /gated?" + loop.encode() + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")  # would time out if the head waited for the body
        gate.set()
        rest = await reader.read()
        writer.close()
        return head, rest

    head, rest = _run(loop, HttpToolsProtocol, test)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
    assert rest == b"e\r\nafter the head\r\n0\r\n\r\n"
