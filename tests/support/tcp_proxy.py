"""A loopback TCP proxy whose behaviour a test switches at run time, to stage outages of a real
server (Postgres, the Upstash bridge) without touching the shared server itself:

- ``forward``: a transparent proxy;
- ``refuse``:  the port stops listening (connection refused) and open connections are cut (a
  database that is down);
- ``stall``:   new connections are accepted and nothing is forwarded either way, on open ones too
  (a hung server or a black-holed network: only a client-side timer ends the wait);
- ``drop_idle()``: the open connections are closed at the next request they carry, before it is
  forwarded (a keep-alive connection that went stale while the client was frozen).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Mode = Literal["forward", "refuse", "stall"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "forward"
        self.accepted = 0          # client connections accepted
        self.dropped = 0           # connections closed by drop_idle()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._links: set[_Link] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self.port = 0
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode: Mode) -> None:
        async def apply() -> None:
            self.mode = mode
            if mode == "refuse":
                for link in list(self._links):
                    link.close()
                if self._server is not None:
                    self._server.close()
                    await self._server.wait_closed()
                    self._server = None
            elif self._server is None:
                self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def drop_idle(self) -> None:
        """Every open connection is closed when its next request arrives (a stale keep-alive)."""
        def apply() -> None:
            for link in self._links:
                link.drop_on_next = True
        self._loop.call_soon_threadsafe(apply)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(5)

    @contextmanager
    def mode_as(self, mode: Mode) -> Iterator[None]:
        self.set_mode(mode)
        try:
            yield
        finally:
            self.set_mode("forward")

    def close(self) -> None:
        async def stop() -> None:
            for link in list(self._links):
                link.close()
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        link = _Link(self, reader, writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)


class _Link:
    def __init__(self, proxy: TcpProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.drop_on_next = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for _, writer in (self.client, self.upstream) if self.upstream else (self.client,):
            writer.transport.abort()

    async def run(self) -> None:
        while self.proxy.mode == "stall" and not self.closed:
            await asyncio.sleep(0.05)  # accepted, never answered
        if self.closed:
            return
        try:
            self.upstream = await asyncio.open_connection(*self.proxy.target)
        except OSError:
            self.close()
            return
        await asyncio.gather(self._pipe(self.client[0], self.upstream[1], from_client=True),
                             self._pipe(self.upstream[0], self.client[1], from_client=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool) -> None:
        try:
            while not self.closed:
                data = await reader.read(65536)
                if not data:
                    break
                if from_client and self.drop_on_next:
                    self.proxy.dropped += 1
                    self.close()
                    return
                while self.proxy.mode == "stall" and not self.closed:
                    await asyncio.sleep(0.05)
                if self.closed:
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()
