"""Run ASGI apps on loopback ports inside the current process (local stack and tests).

Each server runs uvicorn in its own thread with its own event loop, so a test or the
dev stack can start the Upstash bridge, the fake providers and the gateway side by side.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(app: Any, port: int | None = None, host: str = "127.0.0.1",
                    startup_timeout: float = 10.0, **uvicorn_kwargs: Any) -> RunningServer:
    """Start ``app`` with uvicorn in a daemon thread and wait until it accepts connections."""
    port = port or free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            access_log=False, **uvicorn_kwargs)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on port {port} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"server on port {port} did not start in {startup_timeout}s")
        time.sleep(0.01)
    return RunningServer(server=server, thread=thread, host=host, port=port)
