"""QueryStreamFunction's process (run.sh execs ``python -m serve``): uvicorn serving ``app.stream_app``
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
is built, what the imports built frozen, uvicorn's modules included). Run as the script, two things
then start before the app's imports (BENCHMARKS.md, issue 15, spawn6):

- **The port listens.** ``$PORT``'s socket is bound and listening before the imports and handed to
  uvicorn (``Server.run(sockets=...)``, as a Gunicorn worker hands its own): a client connecting
  meanwhile — the benchmarks' poll, the Web Adapter's HTTP readiness check — is queued by the kernel
  and answered as soon as uvicorn serves, instead of being refused and polling again (every 10 ms),
  and uvicorn's startup no longer resolves the address (``encodings.idna``, libuv's getaddrinfo).
  Not behind a TCP readiness check (``AWS_LWA_READINESS_CHECK_PROTOCOL=tcp``, template.yaml's): that
  check takes an accepted connection for an app that answers, so there the socket is only bound
  early and listens when uvicorn serves, as before (its address not resolved either). A port taken
  is uvicorn's startup failure (its message, exit 3); an import that fails ends the process (status
  1) and the kernel resets the queued connections.
- **The database's first connection opens** in a thread (``gateway.db.open_first_connection``):
  the pool's first connection, made (or under way) when the first request needs it, its backend
  warmed up for that request's statements (``mlp_warm_up``, migration 0016).
"""

from gateway import coldstart  # noqa: F401  first: the collector paused until app's coldstart.done()

# isort: split
import os
import socket
import sys
import types
from typing import Any

STARTUP_FAILURE = 3  # uvicorn's exit status when the server did not start (uvicorn.run's)
HOST = "0.0.0.0"
BACKLOG = 2048  # uvicorn's Config().backlog, which its create_server listens with (test_serve compares)


def _early_listener() -> socket.socket | None:
    """``$PORT``'s socket, bound before the app's imports (see the module docstring) and listening
    unless a TCP readiness check (``AWS_LWA_READINESS_CHECK_PROTOCOL=tcp``) would take it for an app
    that answers: then uvicorn's ``create_server`` listens on it when it serves, as it did on the
    socket it made (without resolving the address). None when imported as a module (tests). A port
    that cannot be bound is uvicorn's startup failure: its message, exit status 3."""
    if __name__ != "__main__":
        return None
    protocol = os.environ.get("AWS_LWA_READINESS_CHECK_PROTOCOL") or os.environ.get("READINESS_CHECK_PROTOCOL") or ""
    port = int(os.environ.get("PORT") or "8080")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's and uvloop's create_server
        sock.bind((HOST, port))
        if protocol.lower() != "tcp":
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        print(f"ERROR:    [Errno {exc.errno}] error while attempting to bind on address {(HOST, port)!r}: "
              f"{(exc.strerror or str(exc)).lower()}", file=sys.stderr, flush=True)
        os._exit(STARTUP_FAILURE)  # at once: see _exit_at_once
    sock.setblocking(False)
    return sock


def _exit_at_once(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
    """``sys.excepthook`` during the imports of the process serve.py starts: the error printed as
    always, then the process ends at once with Python's status for it (1), without the interpreter's
    finalization, which would run while a thread of the cold start is still inside OpenSSL (the CA
    store's, ``gateway.coldstart``; the database connection's TLS handshake): exiting then crashes
    the process (SIGSEGV) instead. The kernel resets the connections queued on the early socket."""
    sys.__excepthook__(kind, value, traceback)
    for stream in (sys.stdout, sys.stderr):  # what the imports wrote, as the interpreter's exit would
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(1)


_listener = _early_listener()
if __name__ == "__main__":  # the pool's first database connection opens in a thread meanwhile
    sys.excepthook = _exit_at_once
    from gateway import db

    db.open_first_connection()


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


class _LoggingConfig(types.ModuleType):
    """``logging.config`` while uvicorn's package imports, and ``logging``'s ``config`` attribute until
    something uses it: the real module is imported on the first attribute used (and ``import
    logging.config`` is the real module at any time after uvicorn's import). ``uvicorn.config`` imports
    it at the top for ``dictConfig`` of its default ``log_config``; ``config()`` passes none and sets
    uvicorn's loggers itself (``configure_logging``), so this process never needs it (~4 ms of the
    spawn: ``logging.handlers``, ``pickle``, ``socketserver``, ``queue``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        import importlib

        if sys.modules.get("logging.config") is self:
            del sys.modules["logging.config"]
        real = importlib.import_module("logging.config")  # which sets ``logging.config`` to it
        return getattr(real, name)


def _import_uvicorn() -> None:
    if "uvicorn" in sys.modules:
        return
    import logging

    stand_ins: dict[str, types.ModuleType] = {"uvicorn.main": _CommandLine("uvicorn.main")}
    if "logging.config" not in sys.modules:
        stand_ins["logging.config"] = _LoggingConfig("logging.config")
    sys.modules.update(stand_ins)
    try:
        import uvicorn  # noqa: F401
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
        if "logging.config" in stand_ins and "logging.config" not in sys.modules and not hasattr(logging, "config"):
            logging.config = stand_ins["logging.config"]  # type: ignore[attr-defined]


_import_uvicorn()

# isort: split
import app  # noqa: E402  (its import ends with coldstart.done())
from uvicorn.config import Config  # noqa: E402
from uvicorn.server import Server  # noqa: E402

from gateway.serving import Protocol  # noqa: E402

if sys.excepthook is _exit_at_once:  # imported: from here on errors end the process as always
    sys.excepthook = sys.__excepthook__


def configure_logging() -> None:
    """uvicorn's loggers as ``logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)`` sets them (its
    default ``log_config``), without ``logging.config`` (~4 ms of the spawn: ``logging.handlers``,
    ``pickle``, ``socketserver``)."""
    import logging

    from uvicorn.logging import AccessFormatter, DefaultFormatter

    for name, stream, formatter, logger in (
            ("default", sys.stderr, DefaultFormatter(fmt="%(levelprefix)s %(message)s", use_colors=None), "uvicorn"),
            ("access", sys.stdout, AccessFormatter(fmt='%(levelprefix)s %(client_addr)s - "%(request_line)s" '
                                                       "%(status_code)s"), "uvicorn.access")):
        handler = logging.StreamHandler(stream)
        handler.set_name(name)
        handler.setFormatter(formatter)
        target = logging.getLogger(logger)
        target.setLevel(logging.INFO)
        target.handlers = [handler]
        target.propagate = False
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)


def config() -> Config:
    """What ``python -m uvicorn app:stream_app --host 0.0.0.0 --port $PORT --no-access-log --loop
    uvloop --http httptools`` built (its logging set by ``configure_logging``)."""
    configure_logging()
    return Config(app.stream_app, host=HOST, port=int(os.environ.get("PORT") or "8080"), access_log=False,
                  loop="uvloop", http=Protocol, log_config=None)


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
        if self.started and sockets:  # uvicorn logs "Uvicorn running on ..." only for a socket it bound
            self._log_started_message(sockets)
        if self.started and "AWS_LAMBDA_FUNCTION_NAME" in os.environ and "anyio._backends._asyncio" not in sys.modules:
            import threading

            self.loader = threading.Thread(target=_load_anyio_backend, name="anyio-backend", daemon=True)
            self.loader.start()


def main() -> None:
    server = _Server(config())
    try:
        server.run(sockets=[_listener] if _listener is not None else None)
    except KeyboardInterrupt:  # as uvicorn.run
        pass
    if not server.started:  # as uvicorn.run: a failed startup (port taken, lifespan error) exits 3
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
