"""The shared base of every adapter: ``SSEUpstreamStream`` (open → iterate → aclose, usage
finalised with estimates where the provider reported none) and ``TranslatingAdapter`` (one call =
build request → post → translate, a billed answer we cannot use charged, never retried)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from gateway.adapters.http_client import UpstreamClient, UpstreamRequest, UpstreamResponse

from ..errors import UpstreamError
from .contract import Target, Usage
from .sse import SSEDecoder, SSEEvent
from .tokens import CHARS_PER_TOKEN, estimate_prompt_tokens
from .transport import post_json, read_error, send
from .upstream_errors import billed, error_from_status, error_from_transport, is_transport_error, load_json_event

# Seconds we keep reading after the terminal event so the connection ends cleanly and goes back
# to the pool (a half-read body makes aiohttp drop the connection).
DRAIN_TIMEOUT_S = 0.2


def _chars_to_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)  # ceil


def estimated_usage(body: dict[str, Any], out_chars: int, model_id: str) -> Usage:
    """Usage when the provider reported none: the prompt estimate and ~4 output chars per token."""
    return Usage(prompt_tokens=estimate_prompt_tokens(body, model_id), completion_tokens=_chars_to_tokens(out_chars),
                 reported=False)



class SSEUpstreamStream:
    """Shared machinery; subclasses build the request and translate events.

    Subclass hooks: ``_build_request()`` and ``_on_event(event) -> list[chunk]``. A subclass sets
    ``self._done`` on the terminal event, ``self._final_usage`` once the provider reported the
    final usage, and adds generated characters to ``self._out_chars`` (used for estimates).
    ``_on_eof()`` runs when the body ended before ``_done`` (it may accept that as the end).
    """

    provider = "?"
    relay = True  # the chunks will be framed and sent (False: assembled into one answer; see contract)
    # Set by a consumer that only frames the chunks with ``chat.service._sse`` (the chat relay): the
    # OpenAI-compatible stream may then give consecutive plain text deltas as one
    # ``adapters.sse.FramedRun`` (their frames, not a dict). False: every chunk is a dict.
    runs = False
    on_done: Callable[[], None] | None = None  # called once at the terminal event, ``usage`` final (see contract)

    def __init__(self, client: UpstreamClient, target: Target, body: dict[str, Any]) -> None:
        self.usage: Usage | None = None
        self._client = client
        self._target = target
        self._body = body
        self._response: UpstreamResponse | None = None
        self._opened = False
        self._done = False
        self._closed = False
        self._started = False
        self._final_usage = False
        self._out_chars = 0
        # True when every usage update covers all output received so far (Gemini's cumulative
        # usageMetadata): then a broken stream still has exact usage, no estimate needed.
        self._usage_is_cumulative = False

    # hooks ---------------------------------------------------------------------------------
    def _build_request(self) -> UpstreamRequest:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_event(self, event: SSEEvent) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_eof(self) -> None:
        return None

    def _chunks_of(self, decoder: SSEDecoder, data: bytes) -> Iterator[Any]:
        """The chunks of one read of the body, in order, up to the terminal event (``_on_event``
        on each event the decoder completes). A subclass may read some events itself."""
        for event in decoder.feed(data):
            yield from self._on_event(event)
            if self._done:
                return

    def _json_object(self, event: SSEEvent) -> dict[str, Any] | None:
        """The event's data as a JSON object, for ``_on_event``: None for an empty event or data
        that is not an object; malformed JSON raises (``upstream_bad_response``)."""
        if not event.data.strip():
            return None
        obj = load_json_event(self.provider, event.data)
        return obj if isinstance(obj, dict) else None

    # API -----------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._opened or self._closed:
            raise RuntimeError("stream already opened or closed")
        response = await send(self._client, self._build_request, self.provider)
        if response.status_code != 200:
            body = await read_error(response)
            raise error_from_status(self.provider, response.status_code, body, response.headers,
                                    api_key=self._target.api_key)
        self._response = response
        self._opened = True

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def aclose(self) -> None:
        """Close the upstream response (idempotent). ``usage`` is final afterwards."""
        self._closed = True
        response, self._response = self._response, None
        if response is not None:
            try:
                await response.aclose()
            except Exception:  # noqa: S110 - closing a broken connection may fail; nothing to do
                pass
        if self._opened:
            self._finalize_usage()

    # internals -----------------------------------------------------------------------------
    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        if self._started:
            raise RuntimeError("an upstream stream can be iterated only once")
        self._started = True
        response = self._response
        if response is None:
            if self._closed:
                return
            raise RuntimeError("call open() before iterating")
        # The SSE parse is done here (no async generator per event): ``_on_event`` runs on each
        # event of a read as the read returns.
        decoder = SSEDecoder()
        body = response.aiter_bytes()
        try:
            try:
                async for data in body:
                    for chunk in self._chunks_of(decoder, data):
                        yield chunk
                    if self._done:
                        break
                else:  # the body ended: an event not followed by a blank line still counts
                    for event in decoder.close():
                        for chunk in self._on_event(event):
                            yield chunk
                        if self._done:
                            break
                if not self._done:
                    self._on_eof()
                if not self._done:
                    raise UpstreamError(
                        f"The upstream provider ({self.provider}) ended the stream before it was complete.",
                        provider=self.provider, retryable=True, status=502, code="upstream_stream_incomplete")
            except UpstreamError:
                raise
            except Exception as exc:
                if self._closed:  # aclose() from another task while we were reading
                    return
                if not is_transport_error(exc):
                    raise
                raise error_from_transport(self.provider, exc, mid_stream=True) from exc
            if self.on_done is not None:  # complete: the usage is final before the body is drained
                self._finalize_usage()
                self.on_done()
            if not getattr(response, "body_read", False):  # (a fast provider's end came with its last event)
                await _drain(body)
        finally:
            close = getattr(body, "aclose", None)  # (an async generator: its own finally runs now)
            if close is not None:
                await close()
            await self.aclose()

    def _finalize_usage(self) -> None:
        """Make ``usage`` final: fill in estimates for what the provider did not report."""
        u = self.usage
        if u is None:
            self.usage = estimated_usage(self._body, self._out_chars, self._target.public_id)
        elif not self._final_usage and not self._usage_is_cumulative:
            u.reported = False
            if u.prompt_tokens <= 0:
                u.prompt_tokens = estimate_prompt_tokens(self._body, self._target.public_id)
            u.completion_tokens = max(u.completion_tokens, _chars_to_tokens(self._out_chars))


async def _drain(body: AsyncIterator[bytes]) -> None:
    """After the terminal event read to EOF (briefly) so the connection can be reused."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in body:
                pass
    except Exception:  # noqa: S110 - best effort only
        pass


class TranslatingAdapter:
    """One provider call = ``build_request`` → ``post_json`` → ``translate_response``; a stream is
    ``stream_class``. Subclasses supply the two translations (methods, or a module's functions
    as staticmethods), ``usage_of`` (the usage a raw 200 answer reports, or None) and the stream
    class."""

    provider = "?"
    stream_class: type[SSEUpstreamStream] = SSEUpstreamStream

    def build_request(self, client: UpstreamClient, target: Target, body: dict[str, Any], *,
                      stream: bool) -> UpstreamRequest:  # pragma: no cover - abstract
        raise NotImplementedError

    def translate_response(self, target: Target, body: dict[str, Any],
                           data: Any) -> tuple[dict[str, Any], Usage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def usage_of(self, data: Any) -> Usage | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def dropped(self, body: dict[str, Any]) -> list[str]:
        """The request parameters this adapter does not carry to its provider (none by default)."""
        return []

    async def complete(self, client: UpstreamClient, target: Target, body: dict[str, Any], *,
                       read_timeout: float | None = None) -> tuple[dict[str, Any], Usage]:
        """``read_timeout`` overrides the client's for this call: a non-streaming answer only
        arrives when the whole generation is done, so the caller bounds it by its deadline."""
        def request() -> UpstreamRequest:
            req = self.build_request(client, target, body, stream=False)
            if read_timeout is not None:
                req.extensions["timeout"] = {**req.extensions.get("timeout", {}), "read": read_timeout}
            return req

        data = await post_json(client, request, self.provider, target.api_key)
        try:
            return self.translate_response(target, body, data)
        except UpstreamError as err:
            raise billed(err, _lenient(self.usage_of, data)) from None
        except Exception as exc:
            # Our translation failed on an answer the provider billed: charge its usage, no retry.
            failure = UpstreamError(f"The answer of the upstream provider ({self.provider}) could not be "
                                    "translated.", provider=self.provider, status=502, code="response_build_failed")
            failure.billed_usage = _lenient(self.usage_of, data)
            raise failure from exc

    def stream(self, client: UpstreamClient, target: Target, body: dict[str, Any]) -> SSEUpstreamStream:
        return self.stream_class(client, target, body)


def _lenient(usage_of: Callable[[Any], Usage | None], data: Any) -> Usage | None:
    try:
        return usage_of(data)
    except Exception:
        return None
