"""``/v1/admin/*``: operator routes, admin key only (403 for any other credential)."""

from __future__ import annotations

import re
from decimal import Decimal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..auth import require_admin
from ..errors import BadRequest
from ..http import error_responses
from . import admin
from .schema import CreatedUser, CreditGrant, UserDetail

router = APIRouter(dependencies=[Depends(require_admin)], responses=error_responses(403, 404, 409))

_REFERENCE = re.compile(r"^[A-Za-z0-9:_.\-]{1,200}$")
MAX_AMOUNT = Decimal(1_000_000)


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(None, max_length=320)
    tier: str = Field("free", min_length=1, max_length=50)
    welcome_credit: Decimal | None = Field(None, ge=0, le=MAX_AMOUNT, decimal_places=8,
                                           description="USD; default WELCOME_CREDIT")
    create_key: bool = True
    key_name: str = Field("default", min_length=1, max_length=100)
    rpm: int | None = Field(None, ge=1, le=100_000)
    spend_cap: Decimal | None = Field(None, ge=0, le=MAX_AMOUNT, decimal_places=8)


class GrantCredits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UUID
    amount: Decimal = Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, decimal_places=8,
                            description="USD; negative deducts")
    reason: str = Field(min_length=1, max_length=500)
    reference: str | None = Field(None, description="idempotency reference (or the Idempotency-Key header)")
    allow_negative: bool = False

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None and not _REFERENCE.match(v):
            raise ValueError("reference must be 1-200 characters of letters, digits and : _ . -")
        return v

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("reason must not be blank")
        return v.strip()


@router.post("/v1/admin/users", status_code=201)
async def create_user(body: CreateUser) -> CreatedUser:
    return await admin.create_user(email=body.email, tier=body.tier, welcome_credit=body.welcome_credit,
                                   create_key=body.create_key, key_name=body.key_name, rpm=body.rpm,
                                   spend_cap=body.spend_cap)


@router.post("/v1/admin/credits", response_description="Already applied: a replay of this reference",
             responses={201: {"model": CreditGrant, "description": "Applied"}})
async def grant_credits(body: GrantCredits, response: Response,
                        idempotency_key: str | None = Header(None, max_length=200)) -> CreditGrant:
    reference = body.reference
    if reference is None and idempotency_key is not None:
        if not _REFERENCE.match(idempotency_key):
            raise BadRequest("Idempotency-Key must be 1-200 characters of letters, digits and : _ . -",
                             param="Idempotency-Key")
        reference = idempotency_key
    result = await admin.grant(body.user_id, body.amount, body.reason, reference,
                               allow_negative=body.allow_negative)
    response.status_code = 201 if result.applied else 200
    return result


@router.get("/v1/admin/users/{user_id}")
async def get_user(user_id: UUID) -> UserDetail:
    return await admin.inspect(user_id)
