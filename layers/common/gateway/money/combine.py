"""Money statements of one user and key combined into one transaction (migration 0013,
BENCHMARKS.md "combined money statements").

Every reserve and settle writes the user's balance row and holds its lock until its commit is
flushed, so one user's concurrent requests in one process queue on that row one commit (one WAL
flush) at a time. Here, per event loop and (user, key): a statement with nothing of its group in
flight is sent as it always was (``db.call``: the only path under Lambda, one request per
container). Statements that arrive while one is in flight wait in the process and are then sent
together, as ONE call of ``mlp_batch`` (one statement, one transaction, one flush; each operation in
its own subtransaction: one that fails rolls back alone and its error is raised for its request
only). A single waiting statement is sent alone. What a caller gets back is exactly what
``db.call`` of its own statement would have returned or raised.

A waiting caller that is cancelled before its statement is sent is dropped from the queue; one
cancelled while its statement is in a batch in flight cannot stop it: a reservation made for it is
cancelled (``on_lost``), as nothing will settle it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from .. import db
from ..config import get_settings
from ..loops import PerLoop
from ..observability import logger

Row = list[bytes | None] | None
Group = tuple[str, str | None]  # (user id, API key id)

BATCH_SQL = "SELECT op, r, err_state, err_message FROM mlp_batch($1::jsonb)"
BATCH = db.Statement("ledger_batch", BATCH_SQL)
# At c=16 a batch holds at most 15 (smaller caps measured worse for c=16, better for slow16). Each
# operation is a subtransaction (mlp_batch's EXCEPTION block): Postgres caches 64 per backend
# (PGPROC_MAX_CACHED_SUBXIDS), beyond which every other session's snapshot checks go to pg_subtrans;
# 32 keeps a batch well inside that cache.
MAX_BATCH = 32
batches = 0  # mlp_batch calls sent by this process (tests, benchmarks)

# A str's JSON text as ``json.JSONEncoder(ensure_ascii=False).encode(value)`` writes it (that method
# calls this C function for a str): without the method's Python call per parameter (~11 per batched
# settle).
_json_string: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


class Op:
    """One statement waiting for its group; ``json(params)`` (its mlp_batch element) is only called
    if it is combined."""

    __slots__ = ("future", "json", "on_lost", "params", "statement")

    def __init__(self, statement: db.Statement, params: Sequence[bytes | None],
                 json_of: Callable[[Sequence[bytes | None]], str],
                 on_lost: Callable[[Row], Awaitable[Any]] | None, future: asyncio.Future[Row]) -> None:
        self.statement = statement
        self.params = params
        self.json = json_of
        self.on_lost = on_lost
        self.future = future


class _Queue:
    __slots__ = ("ops", "senders")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.senders = 0  # the group's calls in flight (at most SENDERS)


# One call of a group at a time: measured, a second one in flight (waiting on the row lock) changed
# nothing at c=16 (BENCHMARKS.md); the statements that arrive meanwhile wait here and go together.
SENDERS = 1
_groups: PerLoop[dict[Group, _Queue]] = PerLoop(dict)
_draining: set[asyncio.Future[None]] = set()


def text(value: bytes | None) -> str:
    """A text parameter as a JSON value (mlp_batch casts it as the function's own SQL does)."""
    return "null" if value is None else _json_string(value.decode())


async def call(group: Group, statement: db.Statement, params: Sequence[bytes | None],
               json_of: Callable[[Sequence[bytes | None]], str],
               on_lost: Callable[[Row], Awaitable[Any]] | None = None) -> Row:
    """``db.call(statement, params)``, combined with the group's other statements when one is in
    flight (see the module). ``json_of(params)``: the mlp_batch element of this statement (a
    module-level function: no closure per call)."""
    if not get_settings().db_combine:
        return await db.call(statement, params)
    groups = _groups.get()
    queue = groups.get(group)
    if queue is None:
        queue = groups[group] = _Queue()
    if queue.senders < SENDERS and not queue.ops:
        queue.senders += 1
        try:
            return await db.call(statement, params)
        finally:
            queue.senders -= 1
            _next(groups, group, queue)
    future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
    queue.ops.append(Op(statement, params, json_of, on_lost, future))
    _next(groups, group, queue)
    return await future  # cancelled before it is sent: _send skips it


def _next(groups: dict[Group, _Queue], group: Group, queue: _Queue) -> None:
    """After a call of the group ended or a statement was queued: the waiting statements go in a
    task (as soon as a sender is free), or the group is forgotten when nothing is left."""
    if queue.ops:
        if queue.senders < SENDERS:
            queue.senders += 1
            task = asyncio.ensure_future(_send(groups, group, queue))
            _draining.add(task)
            task.add_done_callback(_draining.discard)
    elif not queue.senders and groups.get(group) is queue:
        del groups[group]


async def _send(groups: dict[Group, _Queue], group: Group, queue: _Queue) -> None:
    """Send the statements waiting now (at most MAX_BATCH) in one call: alone when one is left."""
    ops = [op for op in queue.ops[:MAX_BATCH] if not op.future.done()]
    del queue.ops[:MAX_BATCH]
    try:
        if len(ops) == 1:
            await _alone(ops[0])
        elif ops:
            await _together(ops)
    finally:
        queue.senders -= 1
        for op in ops:  # only if this task itself was cancelled (the loop is closing)
            op.future.cancel()
        _next(groups, group, queue)


async def _alone(op: Op) -> None:
    try:
        row = await db.call(op.statement, op.params)
    except Exception as exc:
        _fail(op, exc)
    else:
        await _deliver(op, row)


async def _together(ops: list[Op]) -> None:
    global batches
    batches += 1
    try:
        payload = "[" + ",".join(op.json(op.params) for op in ops) + "]"
        rows = await db.call_all(BATCH, (payload.encode(),))
        if len(rows) != len(ops):
            raise psycopg.InternalError(f"mlp_batch answered {len(rows)} rows for {len(ops)} operations")
    except Exception as exc:
        for op in ops:
            _fail(op, exc)
        return
    lost: list[tuple[Op, Row]] = []
    for op, (_, r, state, message) in zip(ops, rows, strict=True):
        if state is not None:
            _fail(op, _error(state.decode(), (message or b"").decode()))
            continue
        values = None if r is None else json.loads(r)
        row: Row = None if values is None else [None if v is None else str(v).encode() for v in values]
        if op.future.done():
            lost.append((op, row))
        else:
            op.future.set_result(row)
    for op, row in lost:  # after every other caller has its answer
        await _deliver(op, row)


def _error(sqlstate: str, message: str) -> psycopg.Error:
    """The exception ``db.call`` would have raised for an operation's own error."""
    try:
        cls = psycopg.errors.lookup(sqlstate)
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(message)  # type: ignore[no-any-return]


def _fail(op: Op, exc: BaseException) -> None:
    if not op.future.done():
        op.future.set_exception(exc)


async def _deliver(op: Op, row: Row) -> None:
    if not op.future.done():
        op.future.set_result(row)
    elif op.on_lost is not None and row is not None:  # its caller left while the statement ran
        try:
            await op.on_lost(row)
        except Exception as exc:
            logger.warning("could not undo a combined statement's effect for a cancelled caller",
                           extra={"error": type(exc).__name__})
