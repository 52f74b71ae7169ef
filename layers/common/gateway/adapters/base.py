"""Provider adapter contract plus the pieces every adapter shares.

An adapter turns the client's OpenAI ``chat.completions`` request (a plain dict) into one upstream
call and the upstream answer back into OpenAI shapes:

* ``complete`` → an OpenAI ``chat.completion`` dict and the :class:`Usage` to bill;
* ``stream`` → an :class:`UpstreamStream`: ``open()`` sends the request and fails *before any
  output* with :class:`~gateway.errors.UpstreamError` (so the caller may fall back to another
  model); iterating yields OpenAI ``chat.completion.chunk`` dicts; ``usage`` is kept up to date.

Shared here: the SSE parser (incremental, byte level), the mapping of upstream HTTP statuses and
transport failures to our typed errors, and the streaming base class.

Error table (``UpstreamError`` unless noted; ``retryable`` drives model fallback):

=========================================  ======  =========  =====================================
upstream                                   status  retryable  message
=========================================  ======  =========  =====================================
429                                        429     yes        generic (+ ``retry-after`` header)
5xx, 529, ``overloaded``                   502     yes        provider message
408, 504, timeouts (``UpstreamTimeout``)   504     yes        generic
402 (provider account out of credit)       502     yes        generic
connect error / reset / protocol error     502     yes        generic
400/404/422/other 4xx                      400     no         provider message (keys scrubbed)
401/403, Gemini ``API_KEY_INVALID``        502     no         "provider rejected the credentials"
OpenRouter 403 moderation flag             400     no         provider message
=========================================  ======  =========  =====================================
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import httpx

from gateway.adapters.tokens import CHARS_PER_TOKEN, estimate_prompt_tokens
from gateway.errors import UpstreamError, UpstreamTimeout

try:  # the aiohttp transport re-raises some aiohttp errors unmapped
    import aiohttp as _aiohttp
except ImportError:  # pragma: no cover - aiohttp is a runtime dependency
    _aiohttp = None  # type: ignore[assignment]

PROVIDERS = ("openai", "openrouter", "anthropic", "gemini", "compat")

# Seconds we keep reading after the terminal event so the connection ends cleanly and goes back
# to the pool (a half-read body makes aiohttp drop the connection).
DRAIN_TIMEOUT_S = 0.2
MAX_ERROR_BODY = 64 * 1024
MAX_MESSAGE_CHARS = 500


# --------------------------------------------------------------------------------------------
# Contract
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # part of prompt_tokens written to the provider's prompt cache
    cache_write_1h_tokens: int = 0  # part of cache_write_tokens written with the 1-hour TTL (Anthropic)
    reported: bool = True  # False when we had to estimate (provider reported none)
    cost: Decimal | None = None  # what the provider says it billed (OpenRouter ``usage.cost``), USD

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self, *, reasoning_tokens: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }
        if reasoning_tokens is not None:
            out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return out


@dataclass(slots=True, frozen=True)
class Target:
    provider: str  # "openai" | "openrouter" | "anthropic" | "gemini" | "compat"
    upstream_model: str  # the provider's own model name
    public_id: str  # our id: the ``model`` of every response/chunk we emit
    base_url: str
    api_key: str

    def __repr__(self) -> str:  # never print the key
        return (f"Target(provider={self.provider!r}, upstream_model={self.upstream_model!r}, "
                f"public_id={self.public_id!r}, base_url={self.base_url!r}, api_key='***')")


class UpstreamStream(Protocol):
    usage: Usage | None

    async def open(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class Adapter(Protocol):
    provider: str

    async def complete(self, client: httpx.AsyncClient, target: Target, body: dict[str, Any], *,
                       read_timeout: float | None = None) -> tuple[dict[str, Any], Usage]: ...

    def stream(self, client: httpx.AsyncClient, target: Target, body: dict[str, Any]) -> UpstreamStream: ...


_ADAPTERS: dict[str, Adapter] = {}


def get_adapter(provider: str) -> Adapter:
    """The (stateless, shared) adapter for ``provider``; ``ValueError`` if unknown."""
    if not _ADAPTERS:
        from gateway.adapters.anthropic import AnthropicAdapter
        from gateway.adapters.gemini import GeminiAdapter
        from gateway.adapters.openai_compat import OpenAICompatAdapter

        _ADAPTERS.update({
            "openai": OpenAICompatAdapter("openai"),
            "openrouter": OpenAICompatAdapter("openrouter"),
            "compat": OpenAICompatAdapter("compat"),
            "anthropic": AnthropicAdapter(),
            "gemini": GeminiAdapter(),
        })
    try:
        return _ADAPTERS[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}") from None


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex[:24]


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def as_int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                texts.append(str(part.get("text") or ""))
        return "".join(texts)
    return str(content)


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$",
                       re.DOTALL)


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` → ``("image/png", "AAAA")``; None if not a base64 data URL."""
    m = _DATA_URL.match(url)
    if not m:
        return None
    return (m.group("mime") or "application/octet-stream"), m.group("data")


_MIME_BY_EXT = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
    "webp": "image/webp", "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf",
}


def guess_mime(url: str, default: str = "image/jpeg") -> str:
    path = url.split("?", 1)[0].split("#", 1)[0]
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _MIME_BY_EXT.get(ext, default)


# Gemini's thought signatures ride in the tool-call ids we hand out (see gemini.py); other
# providers must not see them (OpenAI caps ids at 40 chars, Anthropic allows [a-zA-Z0-9_-] only).
THOUGHT_SEP = "__thought__"


def plain_call_id(call_id: Any) -> Any:
    """A tool-call id without a Gemini thought signature (other values returned unchanged)."""
    if isinstance(call_id, str) and THOUGHT_SEP in call_id:
        return call_id.split(THOUGHT_SEP, 1)[0]
    return call_id


def parse_tool_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI tool-call ``arguments`` (a JSON string) → dict; non-objects wrapped, junk kept raw."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return {"_raw": str(arguments)}
    return value if isinstance(value, dict) else {"value": value}


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop] if stop else None
    out = [s for s in stop if isinstance(s, str) and s]
    return out or None


def json_instruction(response_format: Any) -> str | None:
    """A system instruction asking for JSON, for providers without a native JSON mode."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "Respond only with a single valid JSON object and nothing else."
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        text = "Respond only with a single valid JSON value and nothing else"
        if schema is not None:
            text += " that conforms to this JSON Schema:\n" + json.dumps(schema, separators=(",", ":"))
        return text + "."
    return None


def bad_response(provider: str, problem: str) -> UpstreamError:
    """A 200 answer we cannot use (retryable: another model may do better)."""
    return UpstreamError(f"The upstream provider ({provider}) {problem}.", provider=provider, retryable=True,
                         status=502, code="upstream_bad_response")


def _chars_to_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)  # ceil


def estimated_usage(body: dict[str, Any], out_chars: int, model_id: str) -> Usage:
    """Usage when the provider reported none: the prompt estimate and ~4 output chars per token."""
    return Usage(prompt_tokens=estimate_prompt_tokens(body, model_id), completion_tokens=_chars_to_tokens(out_chars),
                 reported=False)


def billed(err: UpstreamError, usage: Usage | None) -> UpstreamError:
    """Mark an error that came with a 200 answer the provider billed: the usage is charged and the
    request is not retried on another model (that would pay twice for one answer)."""
    if usage is not None:
        err.billed_usage = usage
        err.retryable = False
    return err


def completion_dict(*, id: str, created: int, model: str, choices: list[dict[str, Any]],
                    usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage}


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------

_SECRET_PATTERNS = re.compile(
    r"(sk-(?:ant-|or-|proj-)?[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+\S+|gsk_[A-Za-z0-9]{10,})"
)
CREDENTIALS_MESSAGE = "provider rejected the credentials"


def scrub(message: str, *secrets: str) -> str:
    """Remove anything that looks like an API key (and the given secrets) from ``message``."""
    for s in secrets:
        if s and len(s) >= 4:
            message = message.replace(s, "***")
    message = _SECRET_PATTERNS.sub("***", message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return message


def _parse_json(body: bytes | str | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (TypeError, ValueError):
        return None


def extract_error(payload: Any) -> tuple[str | None, str | None]:
    """``(message, type_or_code)`` from any provider's error object (already parsed JSON).

    OpenAI/OpenRouter ``{"error": {"message", "type", "code"}}``, Anthropic ``{"type": "error",
    "error": {"type", "message"}}``, Gemini ``{"error": {"code", "message", "status"}}`` (sometimes
    wrapped in a list), vLLM ``{"object": "error", "message", "type"}``, Ollama ``{"error": "..."}``.
    """
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if not isinstance(payload, dict):
        return None, None
    err = payload.get("error")
    if isinstance(err, str):
        return err, None
    if isinstance(err, dict):
        msg = err.get("message")
        kind = err.get("type") or err.get("status") or err.get("code")
        return (str(msg) if msg is not None else None), (str(kind) if kind is not None else None)
    if payload.get("object") == "error" or "message" in payload:
        msg = payload.get("message")
        kind = payload.get("type") or payload.get("code")
        return (str(msg) if msg is not None else None), (str(kind) if kind is not None else None)
    return None, None


_CONTEXT_HINTS = ("context_length_exceeded", "context length", "context window", "prompt is too long",
                  "maximum context", "input token count", "too many tokens",
                  "exceeds the maximum number of tokens")


def _is_bad_credentials(payload: Any, message: str) -> bool:
    """Gemini answers an invalid key with 400 INVALID_ARGUMENT + reason API_KEY_INVALID."""
    if payload is not None and "API_KEY_INVALID" in json.dumps(payload):
        return True
    low = message.lower()
    return "api key not valid" in low or "api key expired" in low


def _is_moderation_flag(payload: Any) -> bool:
    """OpenRouter's 403 for flagged input carries ``error.metadata.reasons``."""
    err = payload.get("error") if isinstance(payload, dict) else None
    meta = err.get("metadata") if isinstance(err, dict) else None
    return isinstance(meta, dict) and "reasons" in meta


def error_from_status(provider: str, status: int, body: bytes | str | None,
                      headers: Mapping[str, str] | None = None, *, api_key: str = "") -> UpstreamError:
    """Map a non-200 upstream answer to our typed error (the table in the module docstring)."""
    payload = _parse_json(body)
    msg, kind = extract_error(payload)
    if msg is None and isinstance(body, (bytes, str)) and body and payload is None:
        msg = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        msg = msg.strip()[:MAX_MESSAGE_CHARS] or None
    upstream_message = scrub(msg or "", api_key)
    kind_low = (kind or "").lower()
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}

    def make(cls: type[UpstreamError], message: str, **kw: Any) -> UpstreamError:
        exc = cls(message, upstream_status=status, provider=provider, **kw)
        exc.upstream_message = upstream_message  # type: ignore[attr-defined]  # for logs only
        return exc

    if status == 403 and provider == "openrouter" and _is_moderation_flag(payload):
        exc = make(UpstreamError, "The request was flagged by the provider's moderation: "
                                  f"{upstream_message or 'flagged'}",
                   retryable=False, status=400, code="content_flagged")
        exc.type = "invalid_request_error"
        return exc
    if status in (401, 403) or (status == 400 and _is_bad_credentials(payload, upstream_message)):
        return make(UpstreamError, CREDENTIALS_MESSAGE, retryable=False, status=502,
                    code="upstream_auth_failed")
    if status == 429:
        out_headers = {}
        if "retry-after" in hdrs:
            out_headers["retry-after"] = hdrs["retry-after"]
        exc = make(UpstreamError,
                   f"The upstream provider ({provider}) is rate limiting requests; retry later.",
                   retryable=True, status=429, code="upstream_rate_limited", headers=out_headers)
        exc.type = "rate_limit_error"
        return exc
    if status in (408, 504) or kind_low in ("deadline_exceeded", "timeout_error"):
        return make(UpstreamTimeout, f"The upstream provider ({provider}) timed out.", retryable=True)
    if status == 402:
        return make(UpstreamError, f"The upstream provider ({provider}) account cannot serve this request "
                                   "(insufficient provider credit).", retryable=True, status=502,
                    code="upstream_payment_required")
    if status >= 500 or status == 529 or "overloaded" in kind_low:
        detail = f": {upstream_message}" if upstream_message else ""
        return make(UpstreamError, f"The upstream provider ({provider}) returned HTTP {status}{detail}",
                    retryable=True, status=502, code="upstream_unavailable" if status in (503, 529)
                    or "overloaded" in kind_low else "upstream_error")
    if 400 <= status < 500:
        low = upstream_message.lower()
        code = "context_length_exceeded" if any(h in low or h in kind_low for h in _CONTEXT_HINTS) \
            else "upstream_bad_request"
        exc = make(UpstreamError, upstream_message or f"The upstream provider ({provider}) rejected the "
                                                      f"request (HTTP {status}).",
                   retryable=False, status=400, code=code)
        exc.type = "invalid_request_error"
        return exc
    return make(UpstreamError, f"Unexpected HTTP {status} from the upstream provider ({provider}).",
                retryable=False, status=502)


def error_from_event(provider: str, payload: Any, *, api_key: str = "") -> UpstreamError:
    """An error object that arrived *inside* a 200 response (SSE error event / error body).

    Status, code and retryability follow the same table as HTTP errors, using the status the
    error object names (``code``) or its type (``overloaded_error``, ``RESOURCE_EXHAUSTED``...).
    """
    msg, kind = extract_error(payload)
    status: int | None = None
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
            status = int(code)
    kind_low = (kind or "").lower()
    if status is None:
        status = _EVENT_STATUS.get(kind_low, 500)
    mapped = error_from_status(provider, status,
                               json.dumps({"error": {"message": msg or "", "type": kind}}), api_key=api_key)
    if mapped.status >= 500 or mapped.status == 429:
        detail = scrub(msg or "", api_key) if mapped.status != 429 else ""
        mapped.message = (f"The upstream provider ({provider}) reported an error while generating"
                          + (f": {detail}" if detail else "."))
        mapped.args = (mapped.message,)
    return mapped


_EVENT_STATUS = {
    "overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "server_error": 500,
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "timeout_error": 504, "timeout": 504,
    "resource_exhausted": 429, "unavailable": 503, "internal": 500, "invalid_argument": 400,
    "deadline_exceeded": 504, "permission_denied": 403, "unauthenticated": 401,
}


def load_json_event(provider: str, data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise bad_response(provider, "sent malformed stream data") from None


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.TransportError, asyncio.TimeoutError, ConnectionError)):
        return True
    return _aiohttp is not None and isinstance(exc, _aiohttp.ClientError)


def is_stale_connection_error(exc: BaseException) -> bool:
    """The pooled keep-alive connection was closed by the server before it answered."""
    for e in _chain(exc):
        if _aiohttp is not None and isinstance(e, (_aiohttp.ServerDisconnectedError,
                                                   _aiohttp.ClientConnectionResetError)):
            return True
        if isinstance(e, (httpx.RemoteProtocolError, ConnectionResetError)):
            return True
    return False


def error_from_transport(provider: str, exc: BaseException, *, mid_stream: bool = False) -> UpstreamError:
    """Map a connect error / timeout / reset (httpx or raw aiohttp) to our typed error.

    The aiohttp transport maps some aiohttp errors to the wrong httpx class (a refused connection
    or a server disconnect surfaces as ``httpx.ConnectTimeout``), so the original cause decides.
    """
    where = "while answering" if mid_stream else "before answering"
    chain = list(_chain(exc))
    timeout = connect = False
    root = next((e for e in chain if _aiohttp is not None and isinstance(e, _aiohttp.ClientError)), None)
    if root is not None:  # the original aiohttp error decides
        timeout = isinstance(root, _aiohttp.ServerTimeoutError)
        connect = isinstance(root, _aiohttp.ClientConnectorError) and not timeout
    else:
        for e in chain:
            if isinstance(e, httpx.ConnectError):
                connect = True
                break
            if isinstance(e, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
                timeout = True
                break
    if timeout:
        return UpstreamTimeout(f"The upstream provider ({provider}) did not answer in time ({where}).",
                               provider=provider, retryable=True)
    if connect:
        return UpstreamError(f"Could not connect to the upstream provider ({provider}).",
                             provider=provider, retryable=True, status=502, code="upstream_unreachable")
    return UpstreamError(f"The connection to the upstream provider ({provider}) failed {where}.",
                         provider=provider, retryable=True, status=502, code="upstream_connection_error")


# --------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------


async def send(client: httpx.AsyncClient, request_factory: Callable[[], httpx.Request],
               provider: str) -> httpx.Response:
    """Send and return once the response headers arrived (the body is not read yet).

    Retries once when a pooled keep-alive connection turns out to be dead before any response
    (the classic stale-connection race). Transport failures raise mapped errors; non-200
    answers are returned as they are.
    """
    for attempt in (1, 2):
        request = request_factory()
        try:
            return await client.send(request, stream=True)
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            if attempt == 1 and is_stale_connection_error(exc):
                continue
            raise error_from_transport(provider, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def post_json(client: httpx.AsyncClient, request_factory: Callable[[], httpx.Request],
                    provider: str, api_key: str) -> Any:
    """Non-streaming call: the parsed JSON of a 200 answer, else the mapped error."""
    response = await send(client, request_factory, provider)
    if response.status_code != 200:
        body = await read_error(response)
        raise error_from_status(provider, response.status_code, body, response.headers, api_key=api_key)
    try:
        raw = await response.aread()
    except Exception as exc:
        if not is_transport_error(exc):
            raise
        raise error_from_transport(provider, exc, mid_stream=True) from exc
    finally:
        await response.aclose()
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_response(provider, "returned invalid JSON") from None


async def read_error(response: httpx.Response) -> bytes:
    try:
        data = b""
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) >= MAX_ERROR_BODY:
                break
        return data
    except Exception:
        return b""
    finally:
        await response.aclose()


# --------------------------------------------------------------------------------------------
# Server-sent events
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


_EOL = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Incremental SSE parser (spec framing: CRLF/LF/CR, ``:`` comments, multi-line ``data``)."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        events: list[SSEEvent] = []
        pos = 0
        buf = self._buf
        while True:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf):
                break  # maybe the first half of CRLF: wait for more
            self._line(buf[pos:m.start()], events)
            pos = m.end()
        self._buf = buf[pos:]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event that was not followed by a blank line still counts."""
        events: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf.rstrip(b"\r"), events)
            self._buf = b""
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event = None
            self._data = []
            return
        if raw[:1] == b":":
            return  # comment / keep-alive (": OPENROUTER PROCESSING")
        line = raw.decode("utf-8", "replace")
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value


async def iter_sse(response: httpx.Response) -> AsyncGenerator[SSEEvent, None]:
    decoder = SSEDecoder()
    async for chunk in response.aiter_bytes():
        for ev in decoder.feed(chunk):
            yield ev
    for ev in decoder.close():
        yield ev


# --------------------------------------------------------------------------------------------
# Streaming base
# --------------------------------------------------------------------------------------------


class SSEUpstreamStream:
    """Shared machinery; subclasses build the request and translate events.

    Subclass hooks: ``_build_request()`` and ``_on_event(event) -> list[chunk]``. A subclass sets
    ``self._done`` on the terminal event, ``self._final_usage`` once the provider reported the
    final usage, and adds generated characters to ``self._out_chars`` (used for estimates).
    ``_on_eof()`` runs when the body ended before ``_done`` (it may accept that as the end).
    """

    provider = "?"

    def __init__(self, client: httpx.AsyncClient, target: Target, body: dict[str, Any]) -> None:
        self.usage: Usage | None = None
        self._client = client
        self._target = target
        self._body = body
        self._response: httpx.Response | None = None
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
    def _build_request(self) -> httpx.Request:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_event(self, event: SSEEvent) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_eof(self) -> None:
        return None

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
        events = iter_sse(response)
        try:
            try:
                async for event in events:
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
            await _drain(events)
        finally:
            await events.aclose()
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


async def _drain(events: AsyncIterator[SSEEvent]) -> None:
    """After the terminal event read to EOF (briefly) so the connection can be reused."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in events:
                pass
    except Exception:  # noqa: S110 - best effort only
        pass


def usage_from_openai(u: Any) -> Usage | None:
    """OpenAI-style ``usage`` → Usage: ``prompt_tokens_details.cached_tokens`` → cached,
    ``prompt_tokens_details.cache_write_tokens`` (OpenRouter) → cache writes, ``cost`` (OpenRouter:
    the USD it billed for the call) → cost."""
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details") or {}
    if not isinstance(details, dict):
        details = {}
    cached = as_int(details.get("cached_tokens"))
    if not cached:
        cached = as_int(u.get("prompt_cache_hit_tokens"))  # DeepSeek-style compat servers
    return Usage(prompt_tokens=as_int(u.get("prompt_tokens")),
                 completion_tokens=as_int(u.get("completion_tokens")),
                 cached_tokens=cached, cache_write_tokens=as_int(details.get("cache_write_tokens")),
                 reported=True, cost=as_cost(u.get("cost")))


def as_cost(value: Any) -> Decimal | None:
    """A cost a provider reported in JSON (a number) as an exact Decimal of its decimal text;
    None when absent or not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        cost = Decimal(str(value))
    except ArithmeticError:
        return None
    return cost if cost.is_finite() and cost >= 0 else None


class TranslatingAdapter:
    """One provider call = ``build_request`` → ``post_json`` → ``translate_response``; a stream is
    ``stream_class``. Subclasses supply the two translations (methods, or a module's functions
    as staticmethods), ``usage_of`` (the usage a raw 200 answer reports, or None) and the stream
    class."""

    provider = "?"
    stream_class: type[SSEUpstreamStream] = SSEUpstreamStream

    def build_request(self, client: httpx.AsyncClient, target: Target, body: dict[str, Any], *,
                      stream: bool) -> httpx.Request:  # pragma: no cover - abstract
        raise NotImplementedError

    def translate_response(self, target: Target, body: dict[str, Any],
                           data: Any) -> tuple[dict[str, Any], Usage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def usage_of(self, data: Any) -> Usage | None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def complete(self, client: httpx.AsyncClient, target: Target, body: dict[str, Any], *,
                       read_timeout: float | None = None) -> tuple[dict[str, Any], Usage]:
        """``read_timeout`` overrides the client's for this call: a non-streaming answer only
        arrives when the whole generation is done, so the caller bounds it by its deadline."""
        def request() -> httpx.Request:
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

    def stream(self, client: httpx.AsyncClient, target: Target, body: dict[str, Any]) -> SSEUpstreamStream:
        return self.stream_class(client, target, body)


def _lenient(usage_of: Callable[[Any], Usage | None], data: Any) -> Usage | None:
    try:
        return usage_of(data)
    except Exception:
        return None
