"""``GET /v1/balance``, ``GET /v1/usage``, ``GET /v1/usage/summary`` (API key or sign-in token).

A restricted (``inference``-scope) key reads only its own usage: without ``api_key_id`` the views
are narrowed to it, and another key's id is a 403 ``insufficient_scope``."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Query

from ..auth import Principal, require_full_scope
from ..http import error_responses
from . import usage
from .identity import UserPrincipal
from .schema import Balance, UsagePage, UsageSummary

router = APIRouter(responses=error_responses(401, 403, 404))


@router.get("/v1/balance")
async def get_balance(principal: UserPrincipal) -> Balance:
    return await usage.balance(principal)


def _usage_key(principal: Principal, api_key_id: UUID | None) -> UUID | None:
    """The key filter a caller may use: a restricted key only ever its own."""
    if principal.scope == "full" or api_key_id == principal.key_id:
        return api_key_id
    if api_key_id is not None:
        require_full_scope(principal, "read other keys' usage")
    return principal.key_id


@router.get("/v1/usage")
async def list_usage(
    principal: UserPrincipal,
    limit: int = Query(20, ge=1, le=usage.MAX_PAGE, description="records per page"),
    cursor: str | None = Query(None, max_length=256, description="`next_cursor` of the previous page"),
    from_: str | None = Query(None, alias="from", max_length=64, description="inclusive lower bound"),
    to: str | None = Query(None, max_length=64, description="exclusive upper bound (a bare date: that whole day)"),
    model: str | None = Query(None, min_length=1, max_length=200),
    api_key_id: UUID | None = Query(None),
) -> UsagePage:
    return await usage.list_usage(principal.user_id, limit=limit, cursor=cursor, from_=from_, to=to, model=model,
                                  api_key_id=_usage_key(principal, api_key_id))


@router.get("/v1/usage/summary")
async def usage_summary(
    principal: UserPrincipal,
    group_by: Literal["day", "model"] = Query("day"),
    from_: str | None = Query(None, alias="from", max_length=64, description="default: start of this month"),
    to: str | None = Query(None, max_length=64),
    model: str | None = Query(None, min_length=1, max_length=200),
    api_key_id: UUID | None = Query(None),
) -> UsageSummary:
    return await usage.summary(principal.user_id, group_by=group_by, from_=from_, to=to, model=model,
                               api_key_id=_usage_key(principal, api_key_id))
