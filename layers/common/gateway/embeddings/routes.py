"""``POST /v1/embeddings`` (OpenAI's embeddings API): thin — authenticate, parse, plan, admit,
call, respond. The logic is ``service``; the money path is chat's (``chat.service``)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from ..auth import require_api_key
from ..chat import service as chat
from ..http import BodyOpenAPI, Routes, error_responses, invalid_request, server_request_id
from . import service
from .schema import EmbeddingsRequest

# Declared without FastAPI: functions/embeddings serves it with create_lean_app (gateway.http.Routes).
router = Routes(responses=error_responses(401, 402, 403, 404, 429, 502, 504))

_OPENAPI = BodyOpenAPI(EmbeddingsRequest)


@router.post("/v1/embeddings", response_model=None, openapi_extra=_OPENAPI)
async def create_embeddings(request: Request) -> Any:
    principal = await require_api_key(request)  # before the body is read
    try:
        req = EmbeddingsRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise invalid_request(exc.errors(include_url=False, include_context=False)) from None
    budget_s, _ = chat.budget_for(request.scope)
    call = await service.plan(server_request_id(request), principal, req, budget_s=budget_s)
    await chat.admit(call)
    response, record = await service.embed(call, req)
    return await chat.respond(call, response, record)
