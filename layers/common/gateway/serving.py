"""The HTTP protocol QueryStreamFunction's uvicorn serves with (functions/query/serve.py): uvicorn's
own httptools protocol, writing to ``HeldHead``.

uvicorn writes a response's head alone, on ``http.response.start``, and its body on each
``http.response.body``: two sends per buffered response, and the client is woken by the head only to
wait for the body. ``HeldHead`` holds a head until the next write and sends both in one
``writelines`` (one ``writev``); a head with nothing after it in the same loop iteration (a stream
waiting for its first chunk) goes out at the end of that iteration. Nothing else changes: bytes
and their order are uvicorn's (BENCHMARKS.md, issue 15, eleventh pass (lead): held heads)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeldHead:
    """The transport uvicorn writes one connection's responses to (see the module docstring): a head
    is held until the next write or the end of the loop iteration; everything else is the real
    transport's."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif data[:9] == b"HTTP/1.1 ":  # uvicorn's status line: a head
            self._head = data
            self._loop.call_soon(self._release)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on ``HeldHead``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeldHead(transport, self.loop))  # type: ignore[arg-type]
