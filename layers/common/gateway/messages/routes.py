"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` (Anthropic Messages API).

Thin: authenticate (``x-api-key`` or Bearer), parse, plan (``messages.service``), admit, call and
settle through the chat pipeline, answer. Every error is answered in Anthropic's shape
(``{"type": "error", "error": {...}}``, ``request-id`` header); in a stream, as an ``error`` event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import db, ratelimit
from gateway.auth import Principal, require_api_key
from gateway.chat import service
from gateway.chat.responses import RelayResponse
from gateway.chat.routes import STREAM_HEADERS
from gateway.config import get_settings
from gateway.errors import GatewayError
from gateway.http import BodyOpenAPI, Routes, error_responses, register_error_shape, server_request_id
from gateway.observability import logger
from gateway.translation import parse, translated_stream, with_dropped

from . import service as messages
from .schema import CountTokensRequest, MessagesRequest
from .translate import error_body, error_response, to_events, to_message

# Declared without FastAPI: functions/messages serves it with create_lean_app (gateway.http.Routes).
router = Routes(responses=error_responses(401, 402, 403, 404, 429, 502, 504))
# the errors answered before a route runs (413, NUL, 404/405, 500) take Anthropic's shape here too
register_error_shape("/v1/messages", error_body)

_OPENAPI = BodyOpenAPI(MessagesRequest)
_COUNT_OPENAPI = BodyOpenAPI(CountTokensRequest)


async def _answer[M: BaseModel](request: Request, model: type[M],
                                 run: Callable[[str, Principal, M], Awaitable[Response]]) -> Response:
    """Authenticate, parse the body as ``model`` and ``run(request_id, principal, req)``; every
    error (a database outage as a 503) in Anthropic's shape."""
    request_id = server_request_id(request)
    try:
        principal = await require_api_key(request)
        return await run(request_id, principal, parse(model, await request.body()))
    except (GatewayError, psycopg.OperationalError) as exc:
        if isinstance(exc, psycopg.OperationalError):
            logger.warning("request failed: database unavailable", extra={
                "request_id": request_id, "reason": db.describe(exc), "error": type(exc).__name__})
            exc = db.as_service_unavailable(exc)
        assert isinstance(exc, GatewayError)
        return error_response(exc, request_id)


@router.post("/v1/messages", response_model=None, openapi_extra=_OPENAPI)
async def create_message(request: Request) -> Response:
    async def run(request_id: str, principal: Principal, req: MessagesRequest) -> Response:
        budget_s, buffered = service.budget_for(request.scope)
        plan = await messages.plan(request_id, principal, req, request.headers, budget_s=budget_s,
                                   buffered=buffered)
        call = plan.call
        await service.admit(call)
        if plan.dropped:
            logger.info("parameters not forwarded", extra={"request_id": request_id, "model": plan.model,
                                                           "dropped": plan.dropped})
        if req.stream:
            relay = await service.open_stream(call)
            if plan.native:
                body = relay
            else:
                estimate = call.size.estimate(call.candidates[0].model.id)
                body = await translated_stream(relay, lambda chunks: to_events(
                    chunks, model=plan.model, input_tokens=estimate, final_usage=lambda: call.usage))
            headers = with_dropped({**STREAM_HEADERS, **call.rate_headers, "request-id": request_id}, plan.dropped)
            return RelayResponse(call, body, headers)
        response, record = await service.complete(call)
        build = None if plan.native else (lambda completion: to_message(completion, usage=call.usage))
        headers = with_dropped({**call.rate_headers, "request-id": request_id}, plan.dropped)
        return await service.respond(call, response, record, headers=headers, build=build)

    return await _answer(request, MessagesRequest, run)


@router.post("/v1/messages/count_tokens", response_model=None, openapi_extra=_COUNT_OPENAPI)
async def count_tokens(request: Request) -> Response:
    """Free (no credit moves), rate limited like every request of the key."""
    async def run(request_id: str, principal: Principal, req: CountTokensRequest) -> Response:
        decision = await ratelimit.check(str(principal.user_id), get_settings().tier(principal.tier).rpm,
                                         key_id=str(principal.key_id), key_rpm=principal.key_rpm)
        ratelimit.enforce(decision)
        counted = await messages.count_tokens(principal, req, request.headers)
        return JSONResponse(counted, headers={"request-id": request_id, **decision.headers()})

    return await _answer(request, CountTokensRequest, run)
