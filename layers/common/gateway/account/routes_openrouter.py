"""OpenRouter-compatible account views for tools written against OpenRouter:
``GET /v1/key`` (this API key's label, limit, usage, rate limit; an API key is required) and
``GET /v1/credits`` (the account's total credits and usage; API key or sign-in token).

Both answer OpenRouter's ``{"data": {...}}`` shape with amounts as JSON numbers, as OpenRouter
does (its SDKs read numbers, a string would break them): the numbers are written from the Decimal
exactly (``money.dumps_exact``), never through a float. Every other route of ours keeps exact
decimal strings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..auth import require_api_key
from ..http import error_responses
from ..money.format import dumps_exact
from . import usage
from .identity import UserPrincipal
from .schema import CreditsResponse, KeyInfoResponse

router = APIRouter(responses=error_responses(401, 404))


class ExactJSONResponse(JSONResponse):
    """A response model as JSON with its Decimals as exact numbers. (FastAPI's own serialization
    would write them as strings, so these routes return the rendered response; ``response_model``
    documents it.)"""

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump()
        return dumps_exact(content).encode("utf-8")


@router.get("/v1/key", response_class=ExactJSONResponse, response_model=KeyInfoResponse)
async def current_key(request: Request) -> ExactJSONResponse:
    principal = await require_api_key(request)
    return ExactJSONResponse(KeyInfoResponse(data=await usage.key_info(principal)))


@router.get("/v1/credits", response_class=ExactJSONResponse, response_model=CreditsResponse)
async def credits(principal: UserPrincipal) -> ExactJSONResponse:
    return ExactJSONResponse(CreditsResponse(data=await usage.credits(principal.user_id)))
