"""``RelayResponse``'s body messages: the first chunk at once, a burst as one message, and what is
still pending when the end comes sent with the final body message (one write, not two)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.chat.responses import RelayResponse
from gateway.translation import END_OF_BODY


class _Call:
    client_gone = False


async def _run(body: AsyncIterator[bytes], *, send_delay: float = 0.0, messages: list[dict[str, Any]] | None = None,
               on_send: Callable[[], None] | None = None) -> tuple[list[dict[str, Any]], _Call]:
    """The relay's ASGI call with a client that never leaves; ``messages`` (if given) collects what
    is sent even when the call raises, ``on_send`` runs at each send."""
    call = _Call()
    messages = [] if messages is None else messages
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, Any]:
        await never
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if send_delay and message["type"] == "http.response.body":
            await asyncio.sleep(send_delay)  # a client that reads slowly: the send waits
        messages.append(message)
        if on_send is not None:
            on_send()

    await RelayResponse(call, body, {}).__call__({"type": "http"}, receive, send)
    return messages, call


def _bodies(messages: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    return [(m["body"], m.get("more_body", False)) for m in messages if m["type"] == "http.response.body"]


async def test_a_burst_then_the_end_is_one_final_message() -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(5):
            yield b"c%d;" % i
        yield b"tail;"
        yield END_OF_BODY

    messages, call = await _run(body())
    assert messages[0]["type"] == "http.response.start"
    assert _bodies(messages) == [(b"c0;", True), (b"c1;c2;c3;c4;tail;", False)]
    assert not call.client_gone


async def test_a_burst_then_the_body_ends_without_marker() -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"c%d;" % i

    messages, _ = await _run(body())
    assert _bodies(messages) == [(b"c0;", True), (b"c1;c2;", False)]


async def test_chunks_that_wait_are_sent_as_they_come() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a;"
        yield b"b;"
        await asyncio.sleep(0.01)  # the relay waits for the upstream: what is pending goes out now
        yield b"c;"
        yield b"d;"
        await asyncio.sleep(0.01)
        yield END_OF_BODY

    messages, _ = await _run(body())
    assert _bodies(messages) == [(b"a;", True), (b"b;", True), (b"c;d;", True), (b"", False)]


async def test_a_flush_in_progress_keeps_the_order() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a;"
        yield b"b;"
        await asyncio.sleep(0)  # the flusher starts and its send waits (slow client)
        yield b"c;"
        yield b"d;"
        yield END_OF_BODY
        await asyncio.sleep(0.02)  # the relay's settle after the end: nothing more is sent

    messages, _ = await _run(body(), send_delay=0.005)
    bodies = _bodies(messages)
    assert b"".join(b for b, _ in bodies) == b"a;b;c;d;"
    assert [more for _, more in bodies] == [True] * (len(bodies) - 1) + [False]


async def test_chunks_after_the_end_marker_are_not_sent() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a;"
        yield b"b;"
        yield END_OF_BODY
        yield b"late;"

    messages, _ = await _run(body())
    assert _bodies(messages) == [(b"a;", True), (b"b;", False)]


def test_the_surfaces_and_the_chat_path_share_one_end_of_body_marker() -> None:
    """``END_OF_BODY`` is told apart by identity: the chat path takes it (and ``dropped_header``)
    from ``adapters.contract``, the other surfaces through ``gateway.translation``'s re-export —
    the same objects (issue 15, import lane: the chat path no longer imports ``translation``)."""
    from gateway import translation
    from gateway.adapters import contract
    from gateway.chat import responses, service

    assert translation.END_OF_BODY is contract.END_OF_BODY is responses.END_OF_BODY is service.END_OF_BODY
    assert translation.dropped_header is contract.dropped_header is service.dropped_header
    assert translation.DROPPED_PARAMS_HEADER == "x-dropped-params" and repr(END_OF_BODY) == "END_OF_BODY"
    assert contract.dropped_header(["top_k", "top_k", "thinking"]) == {"x-dropped-params": "top_k, thinking"}


async def test_nothing_is_sent_after_the_relay_failed_with_chunks_pending() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a;"
        yield b"b;"  # pending (the relay has not waited yet)
        raise RuntimeError("relay broke")

    messages: list[dict[str, Any]] = []
    try:
        await _run(body(), messages=messages)
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the relay's error did not propagate")
    sent = len(messages)
    for _ in range(3):
        await asyncio.sleep(0)  # a flush still scheduled would run now
    assert len(messages) == sent
    assert _bodies(messages) == [(b"a;", True)]


async def test_a_burst_is_sent_in_the_loop_turn_the_relay_waits() -> None:
    turns: list[str] = []
    sent_at: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"a;"
        yield b"b;"
        yield b"c;"
        turns.append("wait")
        await asyncio.sleep(0)  # one loop turn: the burst goes out within it
        turns.append("back")
        yield END_OF_BODY

    messages, _ = await _run(body(), on_send=lambda: sent_at.append(len(turns)))
    assert _bodies(messages) == [(b"a;", True), (b"b;c;", True), (b"", False)]
    assert sent_at[2] == 1  # the burst: sent after the relay started waiting, before it came back
