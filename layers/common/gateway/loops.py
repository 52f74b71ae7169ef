"""Event-loop-bound state, the one idiom for it.

Mangum (and uvicorn) keep one event loop across warm invocations, but tests and the scheduled
handlers may run a new loop per call, and asyncio objects (locks, pools, HTTP sessions) must not
cross loops. :class:`PerLoop` holds one value for the running loop and makes a fresh one when the
loop changed (or the old one is no longer alive); :func:`run_in_container_loop` is the scheduled
handlers' one loop per container. :data:`BEFORE_LAST_BYTE` is the work a request started that its
response must wait for; :data:`AT_SHUTDOWN` the work a serving process does when it is stopped
gracefully.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``factory()`` value per running event loop (only the latest loop's is kept).

    ``alive(value)`` false makes ``get`` replace it in the same loop (a closed client); a replaced
    value is handed to ``discard`` (which must not await: its loop may be gone)."""

    def __init__(self, factory: Callable[[], T], *, alive: Callable[[T], bool] | None = None,
                 discard: Callable[[T], None] | None = None) -> None:
        self._factory = factory
        self._alive = alive
        self._discard = discard
        self._value: T | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> T:
        """The value of the running loop (call from inside a coroutine)."""
        loop = asyncio.get_running_loop()
        value = self._value
        if value is not None and self._loop is loop and (self._alive is None or self._alive(value)):
            return value
        if value is not None and self._discard is not None:
            self._discard(value)
        self._value, self._loop = self._factory(), loop
        return self._value

    def peek(self, loop: asyncio.AbstractEventLoop | None = None) -> T | None:
        """The current value without creating one (only ``loop``'s when given)."""
        return self._value if loop is None or self._loop is loop else None

    def take(self) -> tuple[T | None, asyncio.AbstractEventLoop | None]:
        """Forget the value; returns it and the loop it belongs to (for the caller to close)."""
        value, loop = self._value, self._loop
        self._value = self._loop = None
        return value, loop


def loop_lock() -> PerLoop[asyncio.Lock]:
    """An ``asyncio.Lock`` per event loop: ``async with lock.get(): ...``."""
    return PerLoop(asyncio.Lock)


_container_loop: asyncio.AbstractEventLoop | None = None


def container_loop() -> asyncio.AbstractEventLoop:
    """The loop a scheduled (non-HTTP) handler runs in, kept across warm invocations: the
    database pool and the HTTP clients are bound to it."""
    global _container_loop
    if _container_loop is None or _container_loop.is_closed():
        _container_loop = asyncio.new_event_loop()
    return _container_loop


def run_in_container_loop(coro: Coroutine[Any, Any, T]) -> T:
    return container_loop().run_until_complete(coro)


def close_container_loop(cleanup: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
    """Run ``cleanup()`` in the container loop and close it (tests, local runs)."""
    global _container_loop
    loop, _container_loop = _container_loop, None
    if loop is None or loop.is_closed():
        return
    if cleanup is not None:
        loop.run_until_complete(cleanup())
    loop.close()


# Work a request started that must end before its response completes (behind the Web Adapter the
# environment is frozen then; under Mangum the invocation ends): a room registers a function that
# returns an awaitable while it has such work in flight, else None (``ratelimit``: lease refills
# ahead of need). ``gateway.http`` awaits :func:`before_last_byte` before the last body message of
# every lean-path response, the error answers included.
BEFORE_LAST_BYTE: list[Callable[[], Awaitable[None] | None]] = []


async def before_last_byte() -> None:
    for pending in BEFORE_LAST_BYTE:
        waiting = pending()
        if waiting is not None:
            await waiting


# Work a serving process does when it is stopped gracefully: uvicorn's lifespan shutdown (SIGTERM on
# a plain server; behind the Web Adapter, when Lambda shuts the environment down), after the last
# request ended. Coroutine functions, each run within AT_SHUTDOWN_TIMEOUT_S; each logs its own
# failures, and what one leaves undone must be safe to leave (a sweeper's job later).
AT_SHUTDOWN: list[Callable[[], Awaitable[None]]] = []
AT_SHUTDOWN_TIMEOUT_S = 1.0


async def at_shutdown() -> None:
    """Run :data:`AT_SHUTDOWN`, each bounded; a failure or a timeout never stops the shutdown."""
    for work in list(AT_SHUTDOWN):
        try:
            await asyncio.wait_for(work(), AT_SHUTDOWN_TIMEOUT_S)
        except Exception:  # (TimeoutError too) the rest still runs (stdlib logging: observability is a sibling room)
            logging.getLogger(__name__).warning("shutdown work %s did not finish", work.__qualname__, exc_info=True)
