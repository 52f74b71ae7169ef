"""``POST /v1/chat/completions``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from ..auth import require_api_key
from ..http import BodyOpenAPI, Routes, error_responses, invalid_request, server_request_id
from . import service
from .responses import RelayResponse
from .schema import ChatRequest

# Declared without FastAPI: the query function serves it with create_lean_app, the streaming one
# (and the local stack) through FastAPI (create_app includes it as an APIRouter).
router = Routes(responses=error_responses(401, 402, 403, 404, 429, 502, 504))

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # every surface's relayed stream


_OPENAPI = BodyOpenAPI(ChatRequest)


@router.post("/v1/chat/completions", response_model=None, openapi_extra=_OPENAPI)
async def chat_completions(request: Request) -> Any:
    # The key is checked before the body is parsed, and the body is validated straight from
    # bytes (one pass in pydantic-core) rather than through FastAPI's dict-then-model path.
    principal = await require_api_key(request)
    try:
        req = ChatRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise invalid_request(exc.errors(include_url=False, include_context=False)) from None
    budget_s, buffered = service.budget_for(request.scope)
    call = await service.plan(server_request_id(request), principal, req, budget_s=budget_s, buffered=buffered)
    await service.admit(call)
    if req.stream:
        body = await service.open_stream(call)
        return RelayResponse(call, body, {**STREAM_HEADERS, **call.rate_headers})
    response, record = await service.complete(call)
    return await service.respond(call, response, record)
