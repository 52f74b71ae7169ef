"""Upstream failures → our typed errors (``UpstreamError``; ``retryable`` drives model fallback).

Error table (``UpstreamError`` unless noted):

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
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import upstream_http as _http
from ..errors import UpstreamError, UpstreamTimeout
from .contract import Usage

MAX_MESSAGE_CHARS = 500


def bad_response(provider: str, problem: str) -> UpstreamError:
    """A 200 answer we cannot use (retryable: another model may do better)."""
    return UpstreamError(f"The upstream provider ({provider}) {problem}.", provider=provider, retryable=True,
                         status=502, code="upstream_bad_response")



def billed(err: UpstreamError, usage: Usage | None) -> UpstreamError:
    """Mark an error that came with a 200 answer the provider billed: the usage is charged and the
    request is not retried on another model (that would pay twice for one answer)."""
    if usage is not None:
        err.billed_usage = usage
        err.retryable = False
    return err



# Compiled by ``re`` on the first error message it scrubs (its cache), not at every cold start.
_SECRET_PATTERNS = (
    r"(sk-(?:ant-|or-|proj-)?[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+\S+|gsk_[A-Za-z0-9]{10,})"
)
CREDENTIALS_MESSAGE = "provider rejected the credentials"


def scrub(message: str, *secrets: str) -> str:
    """Remove anything that looks like an API key (and the given secrets) from ``message``."""
    for s in secrets:
        if s and len(s) >= 4:
            message = message.replace(s, "***")
    message = re.sub(_SECRET_PATTERNS, "***", message)
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


# ``json.loads`` without its wrappers, for the one JSON value of every stream event: the C scanner
# on the text as it is (its str/BOM checks and the whitespace regex around the value skipped;
# ~1 of ~4 us per event). Anything it does not take whole (surrounding whitespace, a BOM, malformed
# data) goes through ``json.loads``, which parses or raises exactly as before.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def load_json_event(provider: str, data: str) -> Any:
    try:
        obj, end = _scan_json(data, 0)
        if end == len(data):
            return obj
    except Exception:  # noqa: S110 - json.loads below decides (and raises its own error)
        pass
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


def _httpx() -> Any:
    """httpx when something imported it (the catalog's client, tests driving the adapters with an
    httpx client), else None: without the module there is no httpx error to map, and the query
    path does not import it for this."""
    return sys.modules.get("httpx")


def _client_errors(*names: str) -> tuple[type[BaseException], ...]:
    """The upstream client's error classes of these names, and aiohttp's of the same names when
    something imported aiohttp (the catalog's httpx transport runs on it): the upstream calls raise
    the client's own errors (``gateway.upstream_http``, with aiohttp's names and meaning), and the
    query path never imports aiohttp."""
    modules = (_http, sys.modules.get("aiohttp"))
    return tuple(cls for module in modules if module is not None
                 for name in names if (cls := getattr(module, name, None)) is not None)


def is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, (*_client_errors("ClientError"), asyncio.TimeoutError, ConnectionError)):
        return True
    httpx = _httpx()
    return httpx is not None and isinstance(exc, httpx.TransportError)


def is_stale_connection_error(exc: BaseException) -> bool:
    """The pooled keep-alive connection was closed by the server before it answered."""
    httpx = _httpx()
    stale = (*_client_errors("ServerDisconnectedError", "ClientConnectionResetError"), ConnectionResetError)
    if httpx is not None:
        stale += (httpx.RemoteProtocolError,)
    return any(isinstance(e, stale) for e in _chain(exc))


def error_from_transport(provider: str, exc: BaseException, *, mid_stream: bool = False) -> UpstreamError:
    """Map a connect error / timeout / reset (the upstream client's, aiohttp's, or httpx's) to our
    typed error.

    The client's error (or an aiohttp error) in the chain decides (httpx's aiohttp transport, still
    used by the catalog, maps some to the wrong httpx class: a refused connection or a server
    disconnect surfaces as ``httpx.ConnectTimeout``).
    """
    where = "while answering" if mid_stream else "before answering"
    chain = list(_chain(exc))
    timeout = connect = False
    client = _client_errors("ClientError")
    root = next((e for e in chain if isinstance(e, client)), None)
    if root is not None:  # the original client error decides
        timeout = isinstance(root, _client_errors("ServerTimeoutError"))
        connect = not timeout and isinstance(root, _client_errors("ClientConnectorError"))
    else:
        httpx = _httpx()
        for e in chain:
            if httpx is not None and isinstance(e, httpx.ConnectError):
                connect = True
                break
            if isinstance(e, (asyncio.TimeoutError, TimeoutError)) or (
                    httpx is not None and isinstance(e, httpx.TimeoutException)):
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
