"""What the alternative API surfaces share (``messages`` = Anthropic Messages, ``responses`` = the
OpenAI Responses API, ``embeddings``): the result of translating a request into the internal chat
body, the response header that names what was not forwarded, SSE framing, and reading the
internal stream back as chunk dicts.

The internal request is an OpenAI ``chat.completions`` body (``gateway.chat.schema.ChatRequest``);
the pipeline answers with an OpenAI ``chat.completion`` dict or a stream of
``chat.completion.chunk`` dicts ending with a usage chunk (``choices: []``). Every surface
translates into and out of those shapes with pure functions; nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.adapters.contract import DROPPED_PARAMS_HEADER as DROPPED_PARAMS_HEADER
from gateway.adapters.contract import END_OF_BODY as END_OF_BODY
from gateway.adapters.contract import MAX_DROPPED_HEADER_CHARS as MAX_DROPPED_HEADER_CHARS
from gateway.adapters.contract import dropped_header as dropped_header
from gateway.adapters.shapes import new_id as new_id  # re-exported: one id scheme for every surface
from gateway.errors import BadRequest
from gateway.records import record


class StrictModel(BaseModel):
    """Request fields: an unknown one is a 400 (a typo never silently changes behaviour)."""

    model_config = ConfigDict(extra="forbid")


class OpenModel(BaseModel):
    """Content blocks and items: fields the provider adds over time are kept, not refused."""

    model_config = ConfigDict(extra="allow")


@record(eq=False)
class Translation:
    """A surface request turned into the internal chat body, plus what could not be carried."""

    body: dict[str, Any]
    dropped: list[str] = field(default_factory=list)

    def drop(self, name: str) -> None:
        if name not in self.dropped:
            self.dropped.append(name)

    def headers(self) -> dict[str, str]:
        """``{DROPPED_PARAMS_HEADER: "a, b"}`` when something was dropped, else ``{}``."""
        return dropped_header(self.dropped)


def with_dropped(headers: Mapping[str, str], dropped: Iterable[str]) -> dict[str, str]:
    """``headers`` with ``dropped`` named in :data:`DROPPED_PARAMS_HEADER`, after what it may already
    name (what the serving adapter did not carry, set by the chat pipeline)."""
    existing = [name.strip() for name in headers.get(DROPPED_PARAMS_HEADER, "").split(",") if name.strip()]
    return {**headers, **dropped_header([*dropped, *existing])}


def bad_request(exc: ValidationError) -> BadRequest:
    """A request body that failed its schema as our 400 (``param`` = the first bad field), for the
    surfaces that answer errors in their own shape (Anthropic's on ``/v1/messages``)."""
    errors = exc.errors(include_url=False, include_context=False)
    details = [(".".join(str(p) for p in e.get("loc", ())), str(e.get("msg", ""))) for e in errors]
    if errors and errors[0].get("type") == "json_invalid":
        return BadRequest("Request body is not valid JSON.")
    message = "Invalid request: " + "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in details[:5])
    return BadRequest(message, param=details[0][0] if details and details[0][0] else None)


def parse[M: BaseModel](model: type[M], data: bytes | Mapping[str, Any]) -> M:
    """``data`` (a request's raw body, or a translated body) validated as ``model``; a failure is
    :func:`bad_request`."""
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        raise bad_request(exc) from None


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event (``event: NAME`` + ``data: JSON``)."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(data).encode() + b"\n\n"


async def chat_chunks(stream: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The pipeline's chat SSE bytes (``data: {chunk}`` ... ``data: [DONE]``) back as dicts.

    Lets a surface sit on top of the existing streaming pipeline unchanged: an in-stream error
    comes through as ``{"error": {...}}``; ``[DONE]`` and empty priming bytes are skipped.
    """
    from gateway.adapters.sse import SSEDecoder  # the shared incremental SSE parser

    decoder = SSEDecoder()
    async for piece in stream:
        if not piece:
            continue
        for event in decoder.feed(piece):
            obj = _chunk_of(event.data)
            if obj is not None:
                yield obj
    for event in decoder.close():
        obj = _chunk_of(event.data)
        if obj is not None:
            yield obj


async def translated_stream(stream: AsyncIterator[bytes],
                            events: Callable[[AsyncIterator[dict[str, Any]]], AsyncIterator[bytes]]
                            ) -> AsyncIterator[bytes]:
    """A surface's SSE events (``events``: e.g. ``messages.translate.to_events``) over the pipeline's
    chat stream (``chat.service.open_stream``). Returned started: however it ends (completed, an
    error, closed early, never iterated by a response that failed), closing it closes the pipeline's
    stream, which is what settles the request.

    When the pipeline's stream yields ``END_OF_BODY`` (its last bytes sent, its settle still to
    come: a plain server, not Lambda) the chunks end there: the surface's last frames are yielded,
    then ``END_OF_BODY`` itself (the response sends its final body message on it), and only then is
    the pipeline's stream closed, which awaits its settle. In Lambda it never comes: the chunks end
    when the pipeline's stream has ended, settled, and the surface's last frames follow."""
    out = _translated(stream, events)
    await out.__anext__()  # the priming b"": from here its finally runs whatever happens
    return out


async def _translated(stream: AsyncIterator[bytes],
                      events: Callable[[AsyncIterator[dict[str, Any]]], AsyncIterator[bytes]]
                      ) -> AsyncIterator[bytes]:
    ended = False

    async def until_end() -> AsyncIterator[bytes]:
        nonlocal ended
        async for piece in stream:
            if piece is END_OF_BODY:
                ended = True  # left suspended there: the finally below closes it (its settle)
                return
            yield piece

    try:
        yield b""
        async for frame in events(chat_chunks(until_end())):
            yield frame
        if ended:
            yield END_OF_BODY
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _chunk_of(data: str) -> dict[str, Any] | None:
    data = data.strip()
    if not data or data == "[DONE]":
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return {"error": {"message": "The stream carried malformed data.", "type": "api_error",
                          "code": "upstream_bad_response"}}
    return obj if isinstance(obj, dict) else None


def usage_numbers(usage: Any) -> tuple[int, int, int, int, int]:
    """``(prompt, completion, cached, cache_write, reasoning)`` from an OpenAI ``usage`` dict or a
    ``gateway.adapters.contract.Usage`` (prompt includes cached and cache-write tokens)."""
    if usage is None:
        return 0, 0, 0, 0, 0
    if not isinstance(usage, dict):
        return (int(usage.prompt_tokens), int(usage.completion_tokens), int(usage.cached_tokens),
                int(usage.cache_write_tokens), 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return (_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
            _int(prompt_details.get("cached_tokens")),
            _int(prompt_details.get("cache_write_tokens") or usage.get("cache_write_tokens")),
            _int(completion_details.get("reasoning_tokens")))


def reasoning_tokens(usage: Any) -> int:
    return usage_numbers(usage)[4] if isinstance(usage, dict) else 0


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def message_reasoning(message: dict[str, Any]) -> str:
    """The reasoning text a chat message or delta carries (OpenRouter ``reasoning``, DeepSeek-style
    ``reasoning_content``), or ``""``."""
    for key in ("reasoning", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def first_choice(obj: dict[str, Any]) -> dict[str, Any]:
    choices = obj.get("choices") or []
    return choices[0] if choices and isinstance(choices[0], dict) else {}


class ChunkFolder:
    """Folds the internal chunk stream into a surface's events: keeps the usage chunk and the finish
    reason, hands each delta to :meth:`on_delta` (which returns the frames to send)."""

    def __init__(self) -> None:
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def on_delta(self, delta: dict[str, Any]) -> list[bytes]:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choice = first_choice(chunk)
        if not choice:
            return []
        frames = self.on_delta(choice.get("delta") or {})
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return frames
