"""``POST /v1/chat/completions``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from ..auth import ApiKeyPrincipal
from ..http import server_request_id
from . import service
from .schema import ChatRequest

router = APIRouter()

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(req: ChatRequest, request: Request, principal: ApiKeyPrincipal) -> Any:
    call = await service.plan(server_request_id(request), principal, req)
    await service.admit(call)
    if req.stream:
        body = await service.open_stream(call)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={**STREAM_HEADERS, **call.rate_headers})
    response, settle = await service.complete(call)
    return JSONResponse(response, headers=call.rate_headers, background=BackgroundTask(settle))
