"""uvicorn's httptools protocol with a response's head and body sent in one write (issue 15).

uvicorn writes a response's head (``http.response.start``) and its body as two ``transport.write``
calls: two ``send()`` system calls, the first of which already wakes the client (or the Lambda Web
Adapter in front of the streaming function) for a partial answer. ASGI has no message carrying
both, so the join is done under uvicorn: ``HttpToolsProtocol`` is uvicorn's own protocol class
whose transport holds a response head (a write starting ``HTTP/``, as every head uvicorn writes
does) until the next write — the body, which is written together with it as one ``writelines``
(one ``send``/``writev``) — or, when no write follows in the same turn of the event loop (a
streamed response waiting for its first chunk), until the loop's next turn. Everything else goes
to the real transport unchanged and in order; ``close()``/``write_eof()`` send a held head first,
``abort()`` drops it with the rest of the buffer.

Served by run.sh (``uvicorn --http gateway.uvicorn_http:HttpToolsProtocol``). The subclass only
overrides ``connection_made`` (a public ``asyncio.Protocol`` method) and relies on uvicorn's
protocol keeping the transport it is given: uvicorn is pinned below 0.56 (pyproject.toml) and
tests/integration/test_uvicorn_http.py serves real sockets through both protocols.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol


class HeadHoldingTransport(asyncio.Transport):
    """A transport whose response heads wait for the write after them (see the module)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            if data:  # (an empty piece would stay in asyncio's buffer and hold up close())
                self._held = None
                self._transport.writelines((held, data))
        elif data[:5] == b"HTTP/":
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines([held, *filter(None, list_of_data)])
        else:
            self._transport.writelines(list_of_data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._flush()
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class HttpToolsProtocol(_HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``HeadHoldingTransport`` (one write per buffered response)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))
