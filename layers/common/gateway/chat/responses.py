"""What the chat route sends back: the SSE relay response that keeps reading after the client
left, and the assembly of a ``chat.completion`` from the chunks of an upstream stream (the
buffered API Gateway path reads every upstream as a stream, so a deadline can stop it and charge
exactly what was produced)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ..adapters.contract import END_OF_BODY
from ..adapters.shapes import new_id, now


class ClientState(Protocol):
    client_gone: bool


class RelayResponse(StreamingResponse):
    """An SSE response that does NOT cancel its body when the client disconnects.

    Starlette's StreamingResponse cancels the body iterator on ``http.disconnect``, which would
    close the upstream before its final usage (reasoning tokens are most of a bill and arrive
    last). Here a watcher only sets ``call.client_gone``: the relay keeps reading the upstream
    (bounded by the request deadline) until the provider's usage arrives, and settles. What it
    still sends goes nowhere (the server drops it, or the send fails with OSError under ASGI 2.4,
    which counts as a disconnect too); the response still ends with its final body message.

    That final message (``more_body`` false: the client's end of the response) is sent when the
    body yields :data:`END_OF_BODY`, else when it is exhausted. After the marker the body is still
    drained to its end, within this ASGI call: on a plain server the relay settles there, so the
    settle no longer delays the client's last byte but still ends before the call returns (as a
    non-streaming response's ``BackgroundTask`` does); in Lambda the relay yields no marker and the
    final message waits for the settle (the environment is frozen once the response completes).
    Once the final message is on its way a disconnect no longer marks the client as gone (the
    server reports one as soon as the response completed: the answer was delivered).
    """

    def __init__(self, call: ClientState, content: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.call = call
        self.ended = False  # the final body message is (being) sent

    async def _watch(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cannot tell: a failing send (OSError) still does
            return
        if not self.ended:
            self.call.client_gone = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The first chunk goes out at once (time to first byte); after it, chunks the relay yields
        without waiting (the events of one upstream read) go out as ONE body message: the flush is
        started by a loop callback, so it runs only when the relay waits for the upstream again
        (the callback then starts it as an eager task: sent in that same loop turn). A provider
        that bursts events costs one socket write per burst instead of one per event; a provider
        that sends them spaced out still gets each one forwarded at once. A burst that reaches the
        end of the stream without waiting (a fast provider's last events) goes out with the final
        body message, and no task is made for it."""
        watcher = asyncio.ensure_future(self._watch(receive))
        unreachable = False
        pending: list[bytes] = []
        flusher: asyncio.Task[None] | None = None  # started when the relay waits with chunks pending
        kicked = False  # a ``kick`` is scheduled
        over = False  # this call returned (or raised): a late ``kick`` sends nothing

        async def emit(message: Message) -> None:
            nonlocal unreachable
            if unreachable:
                return
            try:
                await send(message)
            except OSError:
                unreachable = True
                if not self.ended:
                    self.call.client_gone = True

        async def flush() -> None:
            while pending:
                data = b"".join(pending)
                pending.clear()
                await emit({"type": "http.response.body", "body": data, "more_body": True})

        def kick() -> None:
            # The relay waits (or has ended): what it yielded meanwhile goes out now, unless the end
            # already took it (the usual burst of a fast provider's last events: what is pending
            # goes out with the final body message, one write instead of two, and no task).
            nonlocal flusher, kicked
            kicked = False
            if not pending or self.ended or over:
                return
            if flusher is not None and (not flusher.done() or flusher.exception() is not None):
                return  # a send in progress takes what is pending; a failed one surfaces in the relay's loop
            flusher = asyncio.Task(flush(), loop=loop, eager_start=True)

        async def end() -> None:
            if flusher is not None and not flusher.done():  # a send in progress keeps its order
                await flusher
            self.ended = True
            data = b"".join(pending)
            pending.clear()
            await emit({"type": "http.response.body", "body": data, "more_body": False})

        try:
            await emit({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            loop = asyncio.get_running_loop()
            first = True
            async for chunk in self.body_iterator:
                if self.ended:  # after the end marker: the relay's settle, nothing more to send
                    continue
                if not chunk:
                    if chunk is END_OF_BODY:
                        await end()
                    continue
                if first:
                    first = False
                    await emit({"type": "http.response.body", "body": chunk, "more_body": True})
                    continue
                pending.append(chunk if isinstance(chunk, bytes) else bytes(chunk, "utf-8") if isinstance(chunk, str)
                               else bytes(chunk))
                if flusher is None or flusher.done():
                    if flusher is not None:
                        flusher.result()  # a failed send surfaces here
                    if not kicked:
                        kicked = True
                        loop.call_soon(kick)
            if not self.ended:
                await end()
        finally:
            over = True
            if flusher is not None and not flusher.done():
                flusher.cancel()
            watcher.cancel()


_TEXT_FIELDS = ("content", "refusal", "reasoning")


def assemble(chunks: list[dict[str, Any]], model: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    """One ``chat.completion`` from OpenAI ``chat.completion.chunk`` dicts (content, refusal and
    reasoning text concatenated, tool calls merged by index, the last finish reason, logprobs).

    Text arrives one token per chunk: the pieces are collected and joined once at the end (adding
    each to a growing string would copy the answer once per chunk: quadratic in its length)."""
    choices: dict[int, dict[str, Any]] = {}
    pieces: dict[int, _Pieces] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index") or 0
            slot = choices.get(index)
            if slot is None:
                slot = choices[index] = {"index": index, "message": {"role": "assistant", "content": None,
                                                                     "refusal": None},
                                         "finish_reason": None, "logprobs": None}
                pieces[index] = _Pieces()
            pieces[index].add(choice.get("delta") or {})
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict) and logprobs.get("content"):
                slot["logprobs"] = slot["logprobs"] or {"content": []}
                slot["logprobs"]["content"].extend(logprobs["content"])
    if not choices:
        choices[0] = {"index": 0, "message": {"role": "assistant", "content": None, "refusal": None},
                      "finish_reason": "stop", "logprobs": None}
    for index, slot in choices.items():
        message = slot["message"]
        if index in pieces:
            pieces[index].into(message)
        if message["content"] is None and not message.get("tool_calls"):
            message["content"] = ""
        slot["finish_reason"] = slot["finish_reason"] or "stop"
    first = chunks[0] if chunks else {}
    out: dict[str, Any] = {"id": first.get("id") or new_id(), "object": "chat.completion",
                           "created": first.get("created") or now(), "model": model,
                           "choices": [choices[i] for i in sorted(choices)]}
    if first.get("system_fingerprint"):
        out["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        out["usage"] = usage
    return out


class _Pieces:
    """One choice's deltas: its text fields and tool calls (by index) as lists of pieces."""

    __slots__ = ("calls", "text")

    def __init__(self) -> None:
        self.text: dict[str, list[str]] = {}
        self.calls: list[dict[str, Any]] = []

    def add(self, delta: dict[str, Any]) -> None:
        if len(delta) == 1:  # the usual token: {"content": "..."} (else the general case below)
            piece = delta.get("content")
            if isinstance(piece, str):
                text = self.text.get("content")
                if text is None:
                    self.text["content"] = [piece]
                else:
                    text.append(piece)
                return
        for key in _TEXT_FIELDS:
            piece = delta.get(key)
            if isinstance(piece, str):
                self.text.setdefault(key, []).append(piece)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            calls = self.calls
            index = call.get("index")
            index = len(calls) if not isinstance(index, int) else index
            while len(calls) <= index:
                calls.append({"id": None, "name": [], "arguments": []})
            slot = calls[index]
            if call.get("id"):
                slot["id"] = call["id"]
            fn = call.get("function") or {}
            slot["name"].append(fn.get("name") or "")
            slot["arguments"].append(fn.get("arguments") or "")

    def into(self, message: dict[str, Any]) -> None:
        for key, parts in self.text.items():
            message[key] = "".join(parts)
        if self.calls:
            message["tool_calls"] = [{"id": c["id"], "type": "function",
                                      "function": {"name": "".join(c["name"]), "arguments": "".join(c["arguments"])}}
                                     for c in self.calls]
