"""``gateway.serving`` (the protocol functions/query/serve.py gives uvicorn) on a real uvicorn server
(uvloop, httptools) in its own process, read through a real socket: a response's head goes out with
the first bytes of its body in one send, a head whose body is not there yet is not held waiting for
it, and what uvicorn writes and closes at once (a 400) still arrives whole."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
BODY = b'{"ok":true}'

# /buffered: head + body; /stream: head + first chunk at once, the rest after /go; /slow: the head
# alone, the body after /go (sent on another connection). argv: port, protocol ("ours" or uvicorn's
# "httptools", to see this test fail without HeldHead).
SERVER = '''
import asyncio, sys
from uvicorn.config import Config
from uvicorn.server import Server
from gateway.serving import Protocol

go = None

async def app(scope, receive, send):
    global go
    if scope["type"] != "http":
        return
    go = go or asyncio.Event()
    path = scope["path"]
    if path == "/go":
        go.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/buffered":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\\n\\n", "more_body": True})
        await go.wait()
        await send({"type": "http.response.body", "body": b"data: [DONE]\\n\\n"})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await go.wait()
        await send({"type": "http.response.body", "body": b"ok"})

http = Protocol if sys.argv[2] == "ours" else sys.argv[2]
Server(Config(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http=http, lifespan="off",
              log_config=None, access_log=False)).run()
'''


@pytest.fixture
def port() -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "common")}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), os.environ.get("HELD_HEAD_PROTOCOL", "ours")],
                            env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait(10)


def _client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _go(port: int) -> None:
    with _client(port) as s:
        s.sendall(b"GET /go HTTP/1.1\r\nHost: t\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 204 ")


def test_a_buffered_response_arrives_in_one_read(port: int) -> None:
    with _client(port) as s:
        for _ in range(20):  # keep-alive: every response of the connection
            s.sendall(b"GET /buffered HTTP/1.1\r\nHost: t\r\n\r\n")
            first = s.recv(65536)  # waits for the first bytes: the head came with its body, in one send
            assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n" + BODY), first


def test_a_streams_head_goes_out_with_its_first_chunk_and_is_not_held_for_the_rest(port: int) -> None:
    with _client(port) as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n"), first
        _go(port)
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            rest += s.recv(65536)
        assert rest == b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


def test_a_head_whose_body_is_not_there_yet_goes_out_alone(port: int) -> None:
    with _client(port) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        head = s.recv(65536)  # the app sends its body only after /go, below: the head was not held for it
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n"), head
        _go(port)
        assert s.recv(65536) == b"ok"


def test_what_uvicorn_writes_then_closes_arrives_whole(port: int) -> None:
    with _client(port) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn answers 400 and closes: write, then close
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n") and got.endswith(b"Invalid HTTP request received."), got
