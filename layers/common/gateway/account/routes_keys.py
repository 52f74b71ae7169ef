"""``/v1/keys`` (the caller's API keys) and ``/v1/provider-keys/{provider}`` (BYOK), with an API key
or a sign-in token. Every statement is scoped to the caller's user id; another user's key id
answers 404, exactly like an unknown one."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..auth import require_full_scope
from ..errors import NotFound
from ..http import error_responses
from . import byok, keys
from .identity import UserPrincipal
from .schema import ApiKey, ApiKeyList, CreatedApiKey, ProviderKey, ProviderKeyDeleted, ProviderKeyList

router = APIRouter(responses=error_responses(401, 403, 404, 409, 429))


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("default", min_length=1, max_length=100)
    rpm: int | None = Field(None, ge=1, le=100_000, description="requests per minute for this key")
    spend_cap: Decimal | None = Field(None, ge=0, le=1_000_000, decimal_places=8,
                                      description="USD this key may spend in total")
    scope: Literal["full", "inference"] | None = Field(
        None, description="'inference': query routes and its own usage only; default 'inference' for a key "
                          "with rpm or spend_cap (which cannot be 'full'), else 'full'")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        if not v or not v.isprintable():
            raise ValueError("name must be printable text")
        return v


class PutProviderKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr = Field(description="the provider's API key; stored encrypted, shown only as last 4")


@router.get("/v1/keys")
async def list_keys(principal: UserPrincipal, include_revoked: bool = Query(True)) -> ApiKeyList:
    """All the account's keys; a restricted key sees only itself (not its siblings' spending)."""
    only = principal.key_id if principal.scope != "full" else None
    return ApiKeyList(data=await keys.list_keys(principal.user_id, include_revoked=include_revoked, only_key=only))


@router.post("/v1/keys", status_code=201)
async def create_key(body: CreateKey, principal: UserPrincipal) -> CreatedApiKey:
    require_full_scope(principal, "create keys")
    return await keys.create_key(principal.user_id, body.name, rpm=body.rpm, spend_cap=body.spend_cap,
                                 scope=body.scope)


@router.delete("/v1/keys/{key_id}")
async def revoke_key(key_id: UUID, principal: UserPrincipal) -> ApiKey:
    require_full_scope(principal, "revoke keys")
    revoked = await keys.revoke_key(principal.user_id, key_id)
    if revoked is None:
        raise NotFound("No such API key.", code="key_not_found", param="key_id")
    return revoked


@router.get("/v1/provider-keys")
async def list_provider_keys(principal: UserPrincipal) -> ProviderKeyList:
    return ProviderKeyList(data=await byok.list_for(principal.user_id), providers=list(byok.PROVIDERS))


@router.put("/v1/provider-keys/{provider}", response_description="Replaced the stored key",
            responses={201: {"model": ProviderKey, "description": "Stored (there was none)"}})
async def put_provider_key(provider: str, body: PutProviderKey, principal: UserPrincipal,
                           response: Response) -> ProviderKey:
    provider = byok.validate_provider(provider)
    require_full_scope(principal, "change provider keys")
    existed = await byok.get(principal.user_id, provider) is not None
    stored = await byok.put(principal.user_id, provider, body.api_key.get_secret_value())
    if stored is None:
        raise NotFound("Account not found.", code="user_not_found")
    response.status_code = 200 if existed else 201
    return stored


@router.get("/v1/provider-keys/{provider}")
async def get_provider_key(provider: str, principal: UserPrincipal) -> ProviderKey:
    stored = await byok.get(principal.user_id, provider)
    if stored is None:
        raise NotFound(f"No {byok.validate_provider(provider)} key is stored.", code="provider_key_not_found",
                       param="provider")
    return stored


@router.delete("/v1/provider-keys/{provider}")
async def delete_provider_key(provider: str, principal: UserPrincipal) -> ProviderKeyDeleted:
    provider = byok.validate_provider(provider)
    require_full_scope(principal, "change provider keys")
    if not await byok.delete(principal.user_id, provider):
        raise NotFound(f"No {provider} key is stored.", code="provider_key_not_found", param="provider")
    return ProviderKeyDeleted(provider=provider)
