"""Where a stream's response ends relative to its settle, on every streaming surface of the
streaming function (``functions/query/app.py`` ``stream_app``: chat completions, Messages, Responses),
against real Postgres and the fake providers.

On a plain server the client gets the whole stream, its final body message included, while the
settle still runs: the settle no longer delays the last byte, but it still ends inside the same
ASGI call (never detached from the request) and charges exactly once. In Lambda (the Web Adapter
freezes the environment once the response completes) the final body message waits for the settle.

The settle is held up by a row lock another connection takes on the user's balance row (the settle
locks it; the reserve took it and committed before the response started): the lock is taken while
the response sends its start, when the relay has not read the upstream's end yet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway import db
from gateway.catalog import registry
from gateway.money.pricing import charge_for
from tests.support.apps import load_module, post_scope
from tests.support.money import one_record

pytestmark = pytest.mark.integration
MARKUP = Decimal("0.10")
WORDS = 5


@pytest.fixture(scope="module")
def stream_app(stack: str, fake_upstream: Any) -> Any:
    return load_module("functions/query/app.py", "mlp_query_stream_end_under_test").stream_app


def _request(surface: str) -> tuple[str, dict[str, Any], bytes]:
    """(path, body, the bytes the stream ends with) for a surface."""
    text = f"Hello [[words:{WORDS}]]"
    if surface == "chat":
        return "/v1/chat/completions", {"model": "openai/gpt-4o-mini", "stream": True,
                                        "messages": [{"role": "user", "content": text}]}, b"data: [DONE]\n\n"
    if surface in ("messages", "messages-native"):
        model = "anthropic/claude-3.5-haiku" if surface == "messages-native" else "openai/gpt-4o-mini"
        return "/v1/messages", {"model": model, "max_tokens": 64, "stream": True,
                                "messages": [{"role": "user", "content": text}]}, b"event: message_stop"
    assert surface in ("responses", "responses-native")
    model = "openai/gpt-4o-mini" if surface == "responses-native" else "anthropic/claude-3.5-haiku"
    return "/v1/responses", {"model": model, "stream": True, "input": text}, b"event: response.completed"


class Exchange:
    """One request driven as uvicorn does: ``receive`` gives the body, then (like uvicorn once the
    response completed, or the client left) ``http.disconnect`` after the final body message;
    ``send`` records the messages and awaits ``on_start`` on the response's start."""

    def __init__(self, app: Any, path: str, body: dict[str, Any], api_key: str,
                 on_start: Callable[[], Awaitable[None]]) -> None:
        self.messages: list[dict[str, Any]] = []
        self.started = asyncio.Event()  # the response started (the lock taken)
        self.ended = asyncio.Event()
        self._raw = json.dumps(body).encode()
        self._delivered = False
        self._on_start = on_start
        scope = post_scope(path, {"authorization": f"Bearer {api_key}"})
        self.call = asyncio.ensure_future(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._delivered:
            self._delivered = True
            return {"type": "http.request", "body": self._raw, "more_body": False}
        await self.ended.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            await self._on_start()
            self.started.set()
        self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended.set()
            for _ in range(3):  # a write that yields (uvicorn's, under back-pressure): receive runs first
                await asyncio.sleep(0)

    async def until(self, event: asyncio.Event, timeout: float) -> bool:
        """Whether ``event`` came (within ``timeout``; a call that failed before it raises)."""
        waiting = asyncio.ensure_future(event.wait())
        await asyncio.wait({waiting, self.call}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if self.call.done() and not event.is_set():
            self.call.result()
        return event.is_set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


class BalanceLock:
    """A row lock on the user's balance row, held by another connection until ``release``."""

    def __init__(self, database_url: str, user_id: Any) -> None:
        self._url, self._user_id = database_url, user_id
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def take(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(self._url)
        await self._conn.execute("SELECT 1 FROM balances WHERE user_id = %s FOR UPDATE", (self._user_id,))

    async def release(self) -> None:
        if self._conn is not None:
            await self._conn.rollback()
            await self._conn.close()
            self._conn = None


async def _lock_waiters(database_url: str) -> int:
    """Sessions of this database waiting for a row lock (here: the settle, behind BalanceLock)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).fetchone()
    assert row is not None
    return int(row[0])


async def _charged_once(user_id: Any, model: str) -> None:
    """One usage record, status ok at the provider's counts, charged exactly its price, one usage
    ledger row of that amount, nothing left reserved."""
    rec = await one_record(user_id)
    assert rec["stream"] is True and rec["estimated"] is False and rec["completion_tokens"] == WORDS
    price = (await registry.models())[model].price
    cost = price.provider_cost(rec["prompt_tokens"], rec["completion_tokens"])
    assert rec["charge"] == charge_for(cost, MARKUP) > 0
    entries = await db.fetchall("SELECT amount FROM ledger_entries WHERE user_id = %s AND kind = 'usage'",
                                (user_id,))
    assert [e["amount"] for e in entries] == [-rec["charge"]]
    balance = await db.fetchone("SELECT balance, reserved FROM balances WHERE user_id = %s", (user_id,))
    assert balance is not None and balance["reserved"] == 0
    assert balance["balance"] == Decimal("5") - rec["charge"]


async def _held_settle(stream_app: Any, make_user: Any, database_url: str,
                       surface: str) -> tuple[Any, dict[str, Any], bytes, BalanceLock, Exchange]:
    """A new user's stream on ``surface`` whose settle will wait for a lock on the user's balance
    row (taken as the request starts; ``lock.release()`` lets it go): the user, the request body,
    the surface's last event, the lock and the exchange."""
    registry.invalidate()
    user = await make_user("5")
    path, body, last_event = _request(surface)
    lock = BalanceLock(database_url, user.user_id)
    return user, body, last_event, lock, Exchange(stream_app, path, body, user.api_key, lock.take)


@pytest.mark.parametrize("surface", ["chat", "messages", "messages-native", "responses", "responses-native"])
async def test_on_a_plain_server_a_stream_ends_while_its_settle_still_waits(
        stream_app: Any, make_user: Any, database_url: str, surface: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    user, body, last_event, lock, exchange = await _held_settle(stream_app, make_user, database_url, surface)
    try:
        assert await exchange.until(exchange.started, timeout=30.0)  # (a first request may be cold)
        # the whole stream and its final body message, while the settle waits for the lock (it
        # would wait up to the statement timeout, 5 s, then be retried: the final message comes long before)
        assert await exchange.until(exchange.ended, timeout=4.0), exchange.body
        assert exchange.messages[0]["status"] == 200
        assert last_event in exchange.body
        assert exchange.messages[-1]["type"] == "http.response.body"
        assert exchange.messages[-1].get("more_body", False) is False
        assert await _lock_waiters(database_url) >= 1  # the settle, blocked
        assert not exchange.call.done()  # the ASGI call awaits it: not detached from the request
        assert await db.fetchall("SELECT 1 FROM usage_records WHERE user_id = %s", (user.user_id,)) == []
    finally:
        await lock.release()
    await asyncio.wait_for(exchange.call, timeout=30)
    assert exchange.messages[-1].get("more_body", False) is False  # nothing sent after the end
    await _charged_once(user.user_id, body["model"])


@pytest.mark.parametrize("surface", ["chat", "messages"])
async def test_in_lambda_the_final_body_message_waits_for_the_settle(
        stream_app: Any, make_user: Any, database_url: str, surface: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "mlp-test-QueryStreamFunction")
    user, body, last_event, lock, exchange = await _held_settle(stream_app, make_user, database_url, surface)
    try:
        assert await exchange.until(exchange.started, timeout=30.0)
        for _ in range(100):  # until the settle waits for the lock (a bound, not a timing)
            if await _lock_waiters(database_url) >= 1 or exchange.call.done():
                break
            await asyncio.sleep(0.02)
        assert await _lock_waiters(database_url) >= 1, exchange.call
        assert not exchange.ended.is_set()  # the settle is blocked: no final body message yet
        assert not any(m["type"] == "http.response.body" and not m.get("more_body", False)
                       for m in exchange.messages)
    finally:
        await lock.release()
    await asyncio.wait_for(exchange.call, timeout=30)
    assert exchange.ended.is_set() and last_event in exchange.body
    assert exchange.messages[-1]["type"] == "http.response.body"
    assert exchange.messages[-1].get("more_body", False) is False
    await _charged_once(user.user_id, body["model"])


async def test_a_stream_that_fails_mid_way_is_charged_what_it_produced_not_as_if_its_client_left(
        stream_app: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream error mid-stream without the provider's count: the client gets the error frame
    and the end of the body, then the relay settles ``partial`` at the estimate of what was
    produced. The server reports a disconnect as soon as the response completed (uvicorn does):
    that is not a client that left, which would be charged the whole output limit."""
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    registry.invalidate()
    user = await make_user("5")

    async def nothing() -> None:
        return None

    exchange = Exchange(stream_app, "/v1/chat/completions", {
        "model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 500,
        "messages": [{"role": "user", "content": "Hello [[words:40]] [[stream_error:3]] [[nousage]]"}]},
        user.api_key, nothing)
    await asyncio.wait_for(exchange.call, timeout=30)
    assert exchange.ended.is_set() and b'"error"' in exchange.body
    rec = await one_record(user.user_id, status="partial")
    assert rec["estimated"] is True and 0 < rec["completion_tokens"] < 40
