"""QueryStreamFunction's process (run.sh execs ``python serve.py``): uvicorn serving ``app.stream_app``
on ``$PORT``, configured exactly as ``python -m uvicorn app:stream_app --host 0.0.0.0 --port $PORT
--no-access-log --loop uvloop --http httptools`` configured it (tests/unit/test_serve.py compares the
two ``Config``s), without uvicorn's command-line module.

``uvicorn/__init__`` imports ``uvicorn.main`` only to re-export ``main``, ``run`` and ``Server``;
that module imports click, declares the CLI's ~40 options and imports the reload and multi-worker
supervisors (multiprocessing, tempfile, shutil, bz2, lzma), and ``python -m uvicorn`` then parses
the command line through click: ~16 ms of CPU of the spawn here, none of it used by one process
serving one app (BENCHMARKS.md, issue 15, spawn: lever S6). While uvicorn's package imports,
``uvicorn.main`` is a stand-in that gives the real ``Server`` and, for ``main`` / ``run``, functions
that import the real module when called (never, here); the stand-in is removed at once, so an
``import uvicorn.main`` later is the real module.

The process starts as in Lambda (``gateway.coldstart`` first: the collector paused until the app
is built, what the imports built frozen, uvicorn's modules included).
"""

from gateway import coldstart  # noqa: F401  first: the collector paused until app's coldstart.done()

# isort: split
import os
import sys
import types
from typing import Any


class _CommandLine(types.ModuleType):
    """``uvicorn.main`` while uvicorn's package imports (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "Server":
            from uvicorn.server import Server

            return Server

        def when_called(*args: Any, **kwargs: Any) -> Any:
            import importlib

            return getattr(importlib.import_module("uvicorn.main"), name)(*args, **kwargs)

        return when_called


def _import_uvicorn() -> None:
    if "uvicorn" in sys.modules:
        return
    sys.modules["uvicorn.main"] = _CommandLine("uvicorn.main")
    try:
        import uvicorn  # noqa: F401
    finally:
        del sys.modules["uvicorn.main"]


_import_uvicorn()

# isort: split
import app  # noqa: E402  (its import ends with coldstart.done())
from uvicorn.config import Config  # noqa: E402
from uvicorn.server import Server  # noqa: E402

STARTUP_FAILURE = 3  # uvicorn's exit status when the server did not start (uvicorn.run's)


def config() -> Config:
    """What ``python -m uvicorn app:stream_app --host 0.0.0.0 --port $PORT --no-access-log --loop
    uvloop --http httptools`` built."""
    return Config(app.stream_app, host="0.0.0.0", port=int(os.environ.get("PORT") or "8080"), access_log=False,
                  loop="uvloop", http="httptools")


def _load_anyio_backend() -> None:
    try:
        import anyio._backends._asyncio  # noqa: F401
    except BaseException:  # noqa: S110  the request that needs it imports it again, and meets the error
        pass


class _Server(Server):
    """uvicorn's ``Server``; in Lambda, once it listens, a thread imports anyio's asyncio backend.

    In Lambda the first chat completion settles before its response (``chat.service.respond``),
    inside ``anyio.CancelScope(shield=True)``, whose first use imports that backend (~12 ms of CPU
    here). From the moment the server listens until the Web Adapter's first request arrives the
    process is idle, and the first request waits on the database, Upstash and the provider: a
    thread importing the backend then uses that idle time (imports hold the GIL, so the request
    shares the CPU with it meanwhile; a request needing the module before the thread is done waits
    for that import, as it would have imported it itself). Outside Lambda the settle follows the
    response, and the thread would only compete with the first request (measured: BENCHMARKS.md,
    issue 15, spawn, lever S7)."""

    loader: Any = None  # the thread, once started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and "AWS_LAMBDA_FUNCTION_NAME" in os.environ and "anyio._backends._asyncio" not in sys.modules:
            import threading

            self.loader = threading.Thread(target=_load_anyio_backend, name="anyio-backend", daemon=True)
            self.loader.start()


def main() -> None:
    server = _Server(config())
    try:
        server.run()
    except KeyboardInterrupt:  # as uvicorn.run
        pass
    if not server.started:  # as uvicorn.run: a failed startup (port taken, lifespan error) exits 3
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
