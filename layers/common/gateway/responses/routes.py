"""``POST /v1/responses`` (the OpenAI Responses API, stateless).

Thin: authenticate, parse, plan (``responses.service``: native for a model OpenAI serves, else
translated by ``translate.to_chat``), then the chat pipeline (admit, call with fallback, settle:
``chat.service``) and the answer — OpenAI's own, or translated back (``to_response`` / the typed
``to_events`` stream). Errors are OpenAI's shape (the app's handlers), as on chat completions;
nothing is stored (``x-response-stored: false``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.auth import require_api_key
from gateway.chat import service
from gateway.chat.responses import RelayResponse
from gateway.chat.routes import STREAM_HEADERS
from gateway.http import BodyOpenAPI, Routes, error_responses, server_request_id
from gateway.observability import logger
from gateway.translation import new_id, parse, translated_stream, with_dropped

from . import service as responses
from .schema import ResponsesRequest
from .translate import STORED_HEADER, to_events, to_response

# Declared without FastAPI: functions/responses serves it with create_lean_app (gateway.http.Routes).
router = Routes(responses=error_responses(401, 402, 403, 404, 429, 502, 504))

_OPENAPI = BodyOpenAPI(ResponsesRequest)


@router.post("/v1/responses", response_model=None, openapi_extra=_OPENAPI)
async def create_response(request: Request) -> Any:
    principal = await require_api_key(request)
    req = parse(ResponsesRequest, await request.body())
    request_id = server_request_id(request)
    budget_s, buffered = service.budget_for(request.scope)
    plan = await responses.plan(request_id, principal, req, budget_s=budget_s, buffered=buffered)
    call = plan.call
    if plan.dropped:
        logger.info("parameters not forwarded", extra={"request_id": request_id, "model": req.model,
                                                       "dropped": plan.dropped})
    await service.admit(call)
    response_id = new_id("resp_")
    if req.stream:
        relay = await service.open_stream(call)
        body = relay if plan.native else await translated_stream(relay, lambda chunks: to_events(
            chunks, req, model=req.model, response_id=response_id, final_usage=lambda: call.usage))
        return RelayResponse(call, body, with_dropped({**STREAM_HEADERS, **call.rate_headers, STORED_HEADER: "false"},
                                                      plan.dropped))
    response, record = await service.complete(call)
    headers = with_dropped({**call.rate_headers, STORED_HEADER: "false"}, plan.dropped)
    build = None if plan.native else (lambda completion: to_response(completion, req, usage=call.usage,
                                                                     response_id=response_id))
    return await service.respond(call, response, record, headers=headers, build=build)
