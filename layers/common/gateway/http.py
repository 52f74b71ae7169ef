"""The app factory every function uses (FastAPI; the query function's without it: ``create_lean_app``).

``create_app`` returns an app with: the one error mapping (typed errors, validation errors,
unknown routes and unhandled exceptions all answer in the OpenAI error shape; a database failure
is a 503 with ``Retry-After``, logged as one line), a request id (``X-Request-Id`` honoured when
well-formed, else the API Gateway request id, else generated; always echoed back), security
headers, the CORS allowlist from config (headers: ``CORS_ALLOW_HEADERS`` / ``CORS_EXPOSE_HEADERS``,
the same lists template.yaml gives API Gateway), the body size limit (413) and the refusal of NUL
characters anywhere in the request (400: Postgres cannot store them, so they must never get as
far as a statement). The middleware is plain ASGI so streamed responses pass through untouched.

FastAPI is imported only when an app is built with it (``create_app``): routes declared with
``Routes`` (the chat route) are served by ``LeanApp`` without it, which keeps ~0.2 s of FastAPI's
import (its OpenAPI models) out of the query function's cold start.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from itertools import chain
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .config import Settings, get_settings
from .errors import BadRequest, GatewayError, InternalError, PayloadTooLarge
from .loops import BEFORE_LAST_BYTE, at_shutdown, before_last_byte
from .observability import logger
from .records import frozen

if TYPE_CHECKING:  # FastAPI is imported by create_app only: the query function runs without it (LeanApp)
    from fastapi import APIRouter, FastAPI

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# API Gateway HTTP API request ids are base64-like ("JKJaXmPLvHcESHA="): allow "=", "+", "/".
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:=+/-]{1,128}$")
# CORS, one list for API Gateway (template.yaml, checked by tests/infrastructure) and the app.
# Allowed: what our clients send - the OpenAI SDKs (with their x-stainless-* headers), OpenRouter
# style attribution (HTTP-Referer, X-Title), our request id and idempotency key.
CORS_ALLOW_HEADERS = (
    "authorization", "x-api-key", "content-type", "idempotency-key", "x-request-id", "http-referer", "x-title",
    "anthropic-version", "anthropic-beta",
    "openai-organization", "openai-project", "x-stainless-arch", "x-stainless-async", "x-stainless-lang",
    "x-stainless-os", "x-stainless-package-version", "x-stainless-read-timeout", "x-stainless-retry-count",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
)
# Exposed: every header we answer with that is not CORS-safelisted.
CORS_EXPOSE_HEADERS = (
    "x-request-id", "x-usage-id", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
    "x-catalog-cache", "x-catalog-sync", "x-catalog-sync-id", "x-catalog-sync-failed",
)
CORS_ALLOW_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CORS_MAX_AGE_S = 600
# A NUL in a JSON string: "\u0000" preceded by an even number of backslashes (an odd number
# would make the first backslash an escaped one).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

# On every response of ours, the API's and the console's (which adds its own: console.pages).
COMMON_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
]
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    *COMMON_SECURITY_HEADERS,
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
]


def new_request_id() -> str:
    """A request id of ours: ``req_`` and a random (version 4) UUID's hex."""
    return "req_" + uuid.uuid4().hex


class CompactJSONResponse(JSONResponse):
    """Starlette's ``JSONResponse`` rendered by one shared encoder with ``json.dumps``' very
    arguments (the same bytes), not an encoder built per response (issue 15 lever 33)."""

    def render(self, content: Any) -> bytes:
        return _COMPACT_JSON.encode(content).encode("utf-8")


_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or "")


def server_request_id(request: Request) -> str:
    """A request id the client did not choose (safe as a billing reference): the API Gateway
    request id or one we generated. When the client supplied ``X-Request-Id`` (echoed as
    ``x-request-id``), a new ``req_…`` id, the same for the whole request, which the response
    carries as ``x-usage-id`` (the ``id`` of its record in ``GET /v1/usage``)."""
    state = request.scope.setdefault("state", {})
    if state.get("request_id_source") in ("aws", "generated"):
        return str(state["request_id"])
    usage_id = state.get("usage_id")
    if usage_id is None:
        usage_id = state["usage_id"] = new_request_id()
    return str(usage_id)


def _pick_request_id(scope: Scope) -> tuple[str, str]:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID_RE.match(candidate):
                return candidate, "client"
            break
    event = scope.get("aws.event") or {}
    aws_id = (event.get("requestContext") or {}).get("requestId")
    if isinstance(aws_id, str) and _REQUEST_ID_RE.match(aws_id):
        return aws_id, "aws"
    return new_request_id(), "generated"


class GatewayMiddleware:
    """Request id, security headers, the request body size limit and the NUL refusal (pure ASGI)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 security_headers: list[tuple[bytes, bytes]] = SECURITY_HEADERS) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.security_headers = security_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, source = _pick_request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["request_id_source"] = source
        rid_header = (b"x-request-id", request_id.encode("latin-1"))
        limit = self.max_body_bytes
        rejected: GatewayError | None = None  # the body failed a check while the app was reading it
        started = False          # a response has started (it can no longer be replaced)
        replaced = False         # the app's response was replaced by our error

        security_headers = self.security_headers

        def with_headers(message: Message) -> Message:
            headers = list(message.get("headers", ()))
            headers.append(rid_header)
            usage_id = state.get("usage_id")  # billed under an id of ours (server_request_id)
            if usage_id is not None:
                headers.append((b"x-usage-id", usage_id.encode("latin-1")))
            headers.extend(security_headers)
            message["headers"] = headers
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                with_headers(message)
            await send(message)

        async def send_checked(message: Message) -> None:
            # the app's messages: one wrapper (send_with_headers inlined), not two (issue 15 lever 34)
            nonlocal started, replaced
            if replaced:
                return  # drop the body of the response we replaced
            if message["type"] == "http.response.start":
                started = True
                if rejected is not None:
                    # The framework may have turned our error into something else (FastAPI maps
                    # any error while parsing a body to a generic 400): answer ours regardless.
                    replaced = True
                    await _send_error(send_with_headers, rejected, scope, request_id)
                    return
                with_headers(message)
            await send(message)

        if _nul_in_head(scope):
            await _send_error(send_with_headers, _nul_error(), scope, request_id)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_error(send_with_headers, _too_large(limit), scope, request_id)
                    return
                break

        received = 0
        parts: list[bytes] = []

        async def checked_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    rejected = _too_large(limit)
                    raise rejected
                if message.get("more_body", False):
                    parts.append(chunk)
                else:
                    body = b"".join((*parts, chunk)) if parts else chunk
                    parts.clear()
                    if _nul_in_body(body):
                        rejected = _nul_error()
                        raise rejected
            return message

        try:
            await self.app(scope, checked_receive, send_checked)
        except Exception as exc:
            if started:
                raise  # e.g. a stream that broke mid-way: the server closes the connection
            if rejected is not None or isinstance(exc, PayloadTooLarge):
                await _send_error(send_with_headers, rejected or _too_large(limit), scope, request_id)
                return
            # Answer here (not only in Starlette's outermost handler) so that the 500 carries the
            # request id and security headers like every other response. Logged once, not re-raised.
            logger.exception("unhandled error", extra={"request_id": request_id})
            await _send_error(send_with_headers, _internal_error(request_id), scope, request_id)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")


def _nul_error() -> BadRequest:
    return BadRequest("The request contains a NUL character (U+0000), which is not accepted.", code="nul_character")


def _nul_in_head(scope: Scope) -> bool:
    """NUL in the path (decoded), the query string (raw or %00) or any header. (``0 in bytes`` is
    one ``memchr``; ``b"\\x00" in bytes`` a substring search, ~10x slower: issue 15 lever 37.)"""
    query = scope.get("query_string", b"")
    return ("\x00" in scope.get("path", "") or 0 in query or b"%00" in query
            or 0 in b"".join(chain.from_iterable(scope.get("headers", ()))))


def _nul_in_body(body: bytes) -> bool:
    """A raw NUL byte, or a JSON "\\u0000" escape (not an escaped backslash followed by "u0000")."""
    return 0 in body or (b"u0000" in body and _JSON_NUL.search(body) is not None)


def _internal_error(request_id: str) -> InternalError:
    return InternalError(f"Internal server error (request id {request_id}).")


# A surface that answers in another API's error shape (Anthropic's on ``/v1/messages``) registers
# its path prefix and body builder when its routes module is imported; every error answered here
# (the middleware's 413 and NUL refusals, 404/405, validation, 503, 500) then takes that shape on
# those paths. Everything else gets the OpenAI shape (``GatewayError.body``).
ErrorShape = Callable[[GatewayError, str | None], dict[str, Any]]
_ERROR_SHAPES: dict[str, ErrorShape] = {}


def register_error_shape(path_prefix: str, shape: ErrorShape) -> None:
    _ERROR_SHAPES[path_prefix] = shape


def shaped_error_body(path: str, err: GatewayError, request_id: str | None) -> dict[str, Any]:
    for prefix, shape in _ERROR_SHAPES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return shape(err, request_id)
    return err.body()


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     extra_headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, err: GatewayError, scope: Scope, request_id: str) -> None:
    await _send_json(send, err.status, shaped_error_body(scope.get("path", ""), err, request_id), err.headers)


def _shaped_response(request: Request, err: GatewayError) -> JSONResponse:
    body = shaped_error_body(request.url.path, err, request_id_of(request))
    return JSONResponse(body, status_code=err.status, headers=err.headers or None)


def error_response(err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers or None)


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    if exc.status >= 500:
        logger.warning("request failed", extra={"request_id": request_id_of(request), "code": exc.code,
                                                 "status": exc.status})
    return _shaped_response(request, exc)


def _loc(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


def invalid_request(errors: Iterable[Any]) -> BadRequest:
    """The 400 for a body that failed validation (pydantic's ``errors()``): what FastAPI's
    ``RequestValidationError`` answers, for a route that validates its own body."""
    details = [{"loc": _loc(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
               for e in errors]
    if details and details[0]["type"] == "json_invalid":
        message = "Request body is not valid JSON."
    else:
        message = "Invalid request: " + "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
    return BadRequest(message, code="invalid_request", param=details[0]["loc"] if details else None, details=details)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's ``RequestValidationError`` (registered by ``create_app``)."""
    return _shaped_response(request, invalid_request(exc.errors()))  # type: ignore[attr-defined]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = {404: f"No route for {request.method} {request.url.path}.",
               405: f"Method {request.method} is not allowed on {request.url.path}."}.get(
        exc.status_code, str(exc.detail))
    return _shaped_response(request, BadRequest(message, code=code, status=exc.status_code,
                                                headers=getattr(exc, "headers", None)))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database failed this request (down, hung, statement or lock timeout): 503 with
    Retry-After, one log line (gateway.db logs the outage itself once per interval)."""
    from . import db

    assert isinstance(exc, psycopg.OperationalError)
    logger.warning("request failed: database unavailable", extra={
        "request_id": request_id_of(request), "reason": db.describe(exc), "error": type(exc).__name__})
    return _shaped_response(request, db.as_service_unavailable(exc))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.exception("unhandled error", extra={"request_id": request_id})
    return _shaped_response(request, _internal_error(request_id))


# ----------------------------------------------------------------------------------- OpenAPI
# Only the OpenAPI reads these two: built on first use (defer_build), not at every cold start.
class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)  # e.g. balance/required on 402, resets_at on quota 429

    message: str
    type: str
    code: str
    param: str | None = None


class ErrorBody(BaseModel):
    """Every error: OpenAI's shape (``{"error": {...}}``)."""

    model_config = ConfigDict(defer_build=True)

    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    400: "Invalid request (unknown field, bad value, malformed JSON)", 401: "Missing, invalid or revoked credentials",
    402: "Not enough credit", 403: "Not allowed (scope, plan, admin key, disputed payment)", 404: "Not found",
    409: "Conflict (already exists, idempotency key reused)", 413: "Body too large",
    429: "Rate limit, quota, in-flight limit or upstream rate limit", 500: "Internal error",
    502: "Upstream or payment provider error", 503: "A dependency is unavailable (Retry-After)",
    504: "Upstream timeout or request deadline",
}
# What every route can answer: a malformed request, a body over the limit, a database or Upstash
# outage, an internal error. Routes declare the rest (``error_responses``).
COMMON_ERRORS = (400, 413, 500, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route really answers (OpenAI error shape)."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def _hoist_defs(node: Any, defs: dict[str, Any]) -> Any:
    """Move JSON Schema ``$defs`` (pydantic schemas embedded with ``openapi_extra``) into
    ``components/schemas`` and point their ``#/$defs/...`` references there."""
    if isinstance(node, dict):
        for name, sub in (node.pop("$defs", None) or {}).items():
            defs.setdefault(name, _hoist_defs(sub, defs))
        out = {k: _hoist_defs(v, defs) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        return out
    if isinstance(node, list):
        return [_hoist_defs(v, defs) for v in node]
    return node


def _response_examples(routers: Iterable[APIRouter]) -> dict[str, list[Any]]:
    """The examples of every response model (and the models in it) by name, as pydantic writes
    them: FastAPI encodes the document with ``exclude_none``, which drops the null fields of an
    example, so an example of a nullable required field would no longer match its own schema."""
    found: dict[str, list[Any]] = {}
    for route in (route for router in routers for route in router.routes):
        model = getattr(route, "response_model", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            schema = model.model_json_schema(mode="serialization")
            for name, sub in {**schema.get("$defs", {}), model.__name__: schema}.items():
                if sub.get("examples"):
                    found.setdefault(name, sub["examples"])
    return found


class BodyOpenAPI(dict[str, Any]):
    """``openapi_extra`` of a route that reads its JSON body itself: the body's schema is ``model``,
    filled in when the OpenAPI is first built (not at import: a JSON schema costs ~20 ms of a cold
    start, and deployed stages serve no OpenAPI)."""

    def __init__(self, model: type[BaseModel]) -> None:
        super().__init__()
        self.model = model

    def fill(self) -> None:
        if not self:
            self["requestBody"] = {"required": True,
                                   "content": {"application/json": {"schema": self.model.model_json_schema()}}}


def openapi_schema(app: FastAPI, routers: Iterable[APIRouter] = ()) -> dict[str, Any]:
    """The app's OpenAPI with the real error statuses: FastAPI's unused 422 removed (validation
    errors are our 400), the common errors on every operation, ``$defs`` hoisted, response
    examples as written (nulls kept)."""
    for route in app.routes:
        if isinstance(getattr(route, "openapi_extra", None), BodyOpenAPI):
            route.openapi_extra.fill()  # type: ignore[attr-defined]
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    defs: dict[str, Any] = {}
    schema = _hoist_defs(schema, defs)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, sub in defs.items():
        components.setdefault(name, sub)
    for name, examples in _response_examples(routers).items():
        if "examples" in components.get(name, {}):
            components[name]["examples"] = examples
    error_schema = _hoist_defs(ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}"), components)
    components.setdefault("ErrorBody", error_schema)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in COMMON_ERRORS:
                responses.setdefault(str(status), {
                    "description": ERROR_DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    if not components:
        schema.pop("components")
    return schema


# ----------------------------------------------------------------------------------- lean path
@frozen
class LeanRoute:
    """A route the lean path serves: ``POST`` to a fixed path, no response model, no dependencies,
    and an endpoint that takes only the ``Request`` (it parses and validates its own body, e.g.
    ``chat_completions``): FastAPI's dependency and validation machinery has nothing to do for it."""

    path: str
    endpoint: Callable[[Request], Awaitable[Any]]
    status_code: int | None = None
    response_class: Any = JSONResponse


def _request_only(endpoint: Any) -> bool:
    if not inspect.iscoroutinefunction(endpoint):
        return False
    params = list(inspect.signature(endpoint).parameters.values())
    return len(params) == 1 and params[0].annotation in (Request, "Request")


def _lean_endpoint(route: Any) -> LeanRoute | None:
    """The lean form of a FastAPI route, or None if it needs FastAPI's machinery."""
    from fastapi.routing import APIRoute

    if not isinstance(route, APIRoute) or "{" in route.path or route.methods != {"POST"}:
        return None
    if (route.dependant.dependencies or route.dependencies or route.response_model not in (None, Any)
            or not _request_only(route.endpoint)):
        return None
    return LeanRoute(route.path, route.endpoint, route.status_code,
                     getattr(route.response_class, "value", route.response_class))


def _as_response(route: LeanRoute, result: Any) -> Response:
    """What FastAPI makes of an endpoint's return value when the route has no response model."""
    if isinstance(result, Response):
        return result
    from fastapi.encoders import jsonable_encoder

    return route.response_class(jsonable_encoder(result), status_code=route.status_code or 200)  # type: ignore[no-any-return]


def _handler_for(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    """The exception handler Starlette would pick for ``exc`` (None: unhandled, answered by
    ``GatewayMiddleware`` as on the full path)."""
    if isinstance(exc, StarletteHTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


async def _serve_lean(route: LeanRoute, handlers: Mapping[Any, Any], scope: Scope, receive: Receive,
                      send: Send) -> None:
    """The endpoint called straight from our middleware, its exceptions mapped by ``handlers``."""
    request = Request(scope, receive)  # type: ignore[arg-type]
    started = False

    async def sender(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        elif BEFORE_LAST_BYTE and message["type"] == "http.response.body" and not message.get("more_body", False):
            await before_last_byte()
        await send(message)

    try:
        response = _as_response(route, await route.endpoint(request))
        await response(scope, receive, sender)  # type: ignore[arg-type]
    except Exception as exc:
        handler = _handler_for(handlers, exc)
        if handler is None or started:
            raise  # GatewayMiddleware: 500 (or the server closes a broken stream)
        error = handler(request, exc)
        if inspect.isawaitable(error):
            error = await error
        await error(scope, receive, sender)


class _LeanPath:
    """FastAPI, plus a lean path for the hot routes (``_lean_endpoint``): ``POST`` to such a route
    goes from our middleware straight to the endpoint, past Starlette's and FastAPI's
    middleware, router and request/response wrappers (~8 ASGI layers), with the same exception
    handlers, the same ``GatewayMiddleware`` (and CORS when configured) and the same response.
    Everything else (other methods and routes, OpenAPI, 404/405) takes FastAPI's full path. The
    lean path switches itself off if middleware was added after ``create_app``. (A mixin of
    ``GatewayApp``, so that this module imports FastAPI only when an app is built with it.)"""

    user_middleware: list[Any]
    router: Any
    exception_handlers: dict[Any, Any]
    _lean_routes: dict[str, LeanRoute] | None = None
    _lean_stack: ASGIApp | None = None
    _lean_middleware_count = 0
    _lean_sources: tuple[APIRouter, ...] = ()  # the routers create_app included

    def _build_lean(self) -> dict[str, LeanRoute]:
        routes: dict[str, LeanRoute] = {}
        if len(self.user_middleware) == self._lean_middleware_count and not self.router.dependencies:
            for router in self._lean_sources:  # the routers create_app included, as they were given
                if router.dependencies or router.prefix:
                    continue
                for route in router.routes:
                    lean = _lean_endpoint(route)
                    if lean is not None:
                        routes.setdefault(lean.path, lean)
        stack: ASGIApp = self._lean_call
        for middleware in reversed(self.user_middleware):  # as Starlette builds it: first added outermost
            stack = middleware.cls(stack, *middleware.args, **middleware.kwargs)
        self._lean_stack = stack
        self._lean_routes = routes
        return routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            routes = self._lean_routes if self._lean_routes is not None else self._build_lean()
            if scope["path"] in routes:
                scope["app"] = self
                assert self._lean_stack is not None
                await self._lean_stack(scope, receive, send)
                return
        await super().__call__(scope, receive, send)  # type: ignore[misc]

    async def _lean_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._lean_routes is not None
        await _serve_lean(self._lean_routes[scope["path"]], self.exception_handlers, scope, receive, send)


@functools.cache
def _gateway_app_class() -> type[FastAPI]:
    from fastapi import FastAPI

    class GatewayApp(_LeanPath, FastAPI):
        __doc__ = _LeanPath.__doc__

    return GatewayApp


def _cors_options(settings: Settings) -> dict[str, Any]:
    return {"allow_origins": settings.cors_allow_origins, "allow_methods": list(CORS_ALLOW_METHODS),
            "allow_headers": list(CORS_ALLOW_HEADERS), "expose_headers": list(CORS_EXPOSE_HEADERS),
            "max_age": CORS_MAX_AGE_S}


def create_app(title: str, routers: Iterable[APIRouter | Routes] = (),
               security_headers: list[tuple[bytes, bytes]] = SECURITY_HEADERS, *, settings: Settings | None = None,
               **fastapi_kwargs: Any) -> FastAPI:
    """``security_headers`` are added to every response (the API's strict defaults; the console
    serves pages and sets its own policy and caching)."""
    from fastapi.exceptions import RequestValidationError

    settings = settings or get_settings()
    fastapi_kwargs.setdefault("docs_url", None if settings.deployed else "/docs")
    fastapi_kwargs.setdefault("redoc_url", None)
    fastapi_kwargs.setdefault("openapi_url", None if settings.deployed else "/openapi.json")
    app: Any = _gateway_app_class()(title=title, **fastapi_kwargs)
    api_routers = [router.api_router() if isinstance(router, Routes) else router for router in routers]
    for router in api_routers:
        app.include_router(router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(psycopg.OperationalError, _database_error)
    app.add_exception_handler(Exception, _unhandled)
    if settings.cors_allow_origins:
        app.add_middleware(CORSMiddleware, **_cors_options(settings))
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_body_bytes, security_headers=security_headers)
    app._lean_middleware_count = len(app.user_middleware)
    app._lean_sources = tuple(api_routers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_schema(app, api_routers)
        return app.openapi_schema  # type: ignore[no-any-return]

    app.openapi = openapi
    return app  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ without FastAPI
_F = TypeVar("_F", bound=Callable[..., Any])
# What a route may declare and still be served without FastAPI: documentation, and the status
# and class of a response built from a plain return value.
_LEAN_OPTIONS = frozenset({"response_model", "openapi_extra", "responses", "summary", "description", "tags",
                           "status_code", "response_class", "name", "operation_id", "include_in_schema",
                           "deprecated", "response_description"})


class Routes:
    """Routes declared as on a FastAPI ``APIRouter`` (``@routes.post(path, **options)``) without
    importing FastAPI: ``create_app`` includes them as an ``APIRouter`` (``api_router()``, built
    once), and ``create_lean_app`` serves the lean ones (``LeanRoute``) without FastAPI."""

    def __init__(self, **router_options: Any) -> None:
        self.router_options = router_options
        self.posts: list[tuple[str, Callable[..., Any], dict[str, Any]]] = []
        self._api_router: APIRouter | None = None

    def post(self, path: str, **options: Any) -> Callable[[_F], _F]:
        def register(endpoint: _F) -> _F:
            assert self._api_router is None, "a route added after the APIRouter was built"
            self.posts.append((path, endpoint, options))
            return endpoint

        return register

    def api_router(self) -> APIRouter:
        if self._api_router is None:
            from fastapi import APIRouter

            router = APIRouter(**self.router_options)
            for path, endpoint, options in self.posts:
                router.post(path, **options)(endpoint)
            self._api_router = router
        return self._api_router

    def lean_routes(self) -> dict[str, LeanRoute]:
        """The routes ``_lean_endpoint`` would accept once built by FastAPI (the same rule, read
        from the declaration): the others are served by the FastAPI app."""
        if self.router_options.get("dependencies") or self.router_options.get("prefix"):
            return {}
        routes: dict[str, LeanRoute] = {}
        for path, endpoint, options in self.posts:
            model = options.get("response_model", inspect.signature(endpoint).return_annotation)
            if ("{" in path or path in routes or not set(options) <= _LEAN_OPTIONS or model not in (None, Any, "Any")
                    or not _request_only(endpoint)):
                routes.setdefault(path, None)  # type: ignore[arg-type]  # first declaration wins, as in FastAPI
                continue
            routes[path] = LeanRoute(path, endpoint, options.get("status_code"),
                                     options.get("response_class", JSONResponse))
        return {path: route for path, route in routes.items() if route is not None}


class LeanApp:
    """The app of a function whose routes all take the lean path (the query function): ``POST`` to
    a lean route runs through the same ``GatewayMiddleware`` (and CORS when configured), endpoint
    and exception handlers as ``GatewayApp``'s lean path, without FastAPI ever imported (~0.2 s of
    a cold start). Anything else — another method or path (404/405), a CORS preflight, the local
    docs and OpenAPI — is served by the very app ``create_app`` builds from the same routes, built
    (and FastAPI imported) on the first such request; ``openapi()`` and any other attribute of a
    FastAPI app come from it too."""

    def __init__(self, title: str, routers: Iterable[Routes],
                 security_headers: list[tuple[bytes, bytes]] = SECURITY_HEADERS, **fastapi_kwargs: Any) -> None:
        self.title = title
        self._routers = tuple(routers)
        self._security_headers = security_headers
        self._fastapi_kwargs = fastapi_kwargs
        self._settings = get_settings()
        self._full: FastAPI | None = None
        self.lean_routes: dict[str, LeanRoute] = {}
        for router in self._routers:
            for path, route in router.lean_routes().items():
                self.lean_routes.setdefault(path, route)
        stack: ASGIApp = self._lean_call
        if self._settings.cors_allow_origins:
            stack = CORSMiddleware(stack, **_cors_options(self._settings))  # type: ignore[arg-type,assignment]
        self._stack: ASGIApp = GatewayMiddleware(stack, max_body_bytes=self._settings.max_body_bytes,
                                                 security_headers=security_headers)
        self._handlers: dict[Any, Any] = {GatewayError: _gateway_error, StarletteHTTPException: _http_error,
                                          psycopg.OperationalError: _database_error}

    @property
    def full(self) -> FastAPI:
        """The FastAPI app ``create_app`` builds from the same routes and settings."""
        if self._full is None:
            self._full = create_app(self.title, self._routers, self._security_headers, settings=self._settings,
                                    **self._fastapi_kwargs)
        return self._full

    def openapi(self) -> dict[str, Any]:
        return self.full.openapi()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.full, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.lean_routes:
            scope["app"] = self
            await self._stack(scope, receive, send)
            return
        if scope["type"] == "lifespan" and not self._fastapi_kwargs:
            # under uvicorn: what Starlette answers for an app without handlers
            await lifespan_without_work(receive, send)
            return
        await self.full(scope, receive, send)  # type: ignore[arg-type]

    async def _lean_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        handlers = self._handlers
        validation = sys.modules.get("fastapi.exceptions")  # raised only where FastAPI is loaded
        if validation is not None and validation.RequestValidationError not in handlers:
            handlers = self._handlers = {**handlers, validation.RequestValidationError: _validation_error}
        await _serve_lean(self.lean_routes[scope["path"]], handlers, scope, receive, send)


async def lifespan_without_work(receive: Receive, send: Send) -> None:
    """The ASGI lifespan of an app with no startup work (Starlette's, for such an app); at shutdown
    it runs ``loops.AT_SHUTDOWN`` (e.g. the carried holds given back: ``chat.service``)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await at_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_lean_app(title: str, routers: Iterable[Routes],
                    security_headers: list[tuple[bytes, bytes]] = SECURITY_HEADERS, **fastapi_kwargs: Any) -> LeanApp:
    """An app that answers its lean routes without FastAPI (``LeanApp``), and everything else
    exactly as ``create_app(title, routers, security_headers, **fastapi_kwargs)`` would."""
    return LeanApp(title, routers, security_headers, **fastapi_kwargs)
