"""The response bodies of the account routes (balance, usage, keys, provider keys, admin, the
OpenRouter-compatible views), so each function's OpenAPI documents what it really answers.

Amounts are :data:`~gateway.money.format.MoneyStr` (exact decimal strings, ``money.format.money``)
except in the OpenRouter-compatible views (``KeyInfo``, ``Credits``), whose Decimals are written
as exact JSON numbers (:data:`~gateway.money.format.ExactAmount`, ``routes_openrouter``).
Timestamps are RFC 3339 (``...Z``); ``quota`` dates are ``YYYY-MM-DD``. :class:`Body` also serves
the billing and console responses.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ..money.format import ExactAmount, MoneyStr

_KEY = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
_USER = "2f1c4b8e-3d5a-4e6f-9a7b-8c9d0e1f2a3b"
_AT = "2025-03-01T12:00:00.123456Z"


def example(*examples: dict[str, Any]) -> ConfigDict:
    """A response model's config with its documented examples (checked against its schema)."""
    return ConfigDict(json_schema_extra={"examples": list(examples)})


# A timestamp some routes have always written with ``isoformat()`` (``+00:00``, not ``Z``).
IsoTimestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2025-04-01T00:00:00+00:00"])]


class Body(BaseModel):
    """A JSON response body: exactly the fields declared (an unknown one is an error, never a
    silently dropped key), every one present on the wire unless it says otherwise."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


# --------------------------------------------------------------------------- balance
class RateLimit(Body):
    requests_per_minute: int


class Quota(Body):
    period_start: dt.date = Field(description="first day (UTC) of the current monthly quota period")
    resets_at: dt.date
    requests_used: int
    requests_limit: int | None = Field(description="null: unlimited")
    requests_remaining: int | None


class BalanceKey(Body):
    """The calling API key and its own limits (amounts null when the key has no spend cap)."""

    id: UUID
    name: str
    rpm: int | None
    spend_cap: MoneyStr | None
    spent: MoneyStr | None
    remaining: MoneyStr | None


_BALANCE = {"object": "balance", "balance": "11.25000000", "reserved": "1.25000000", "carried": "0.25000000",
            "total": "12.50000000",
            "currency": "USD", "tier": "pro", "rate_limit": {"requests_per_minute": 60},
            "quota": {"period_start": "2025-03-01", "resets_at": "2025-04-01", "requests_used": 4,
                      "requests_limit": 1000, "requests_remaining": 996}}


class Balance(Body):
    model_config = example({**_BALANCE, "api_key": {"id": _KEY, "name": "default", "rpm": None, "spend_cap": None,
                                                    "spent": None, "remaining": None}}, _BALANCE)

    object: Literal["balance"] = "balance"
    balance: MoneyStr = Field(description="available to spend now (total - reserved)")
    reserved: MoneyStr = Field(description="held by requests in flight, and `carried`")
    carried: MoneyStr = Field(description="part of `reserved`: held for the next request of a key used in the last "
                                          "30 s (a carried hold, given back unused after that; docs/money.md)")
    total: MoneyStr = Field(description="the ledger balance (balance + reserved)")
    currency: Literal["USD"] = "USD"
    tier: str
    rate_limit: RateLimit
    quota: Quota
    api_key: BalanceKey | None = Field(None, exclude_if=lambda v: v is None,
                                       description="only when called with an API key")


# --------------------------------------------------------------------------- usage
_RECORD = {"object": "usage_record", "id": "req_8f14e45fceea167a5a36dedd", "created_at": _AT, "api_key_id": _KEY,
           "model": "openai/gpt-4o-mini", "model_served": "openai/gpt-4o-mini", "provider": "openai",
           "status": "ok", "stream": False, "byok": False, "prompt_tokens": 10, "completion_tokens": 5,
           "cached_tokens": 0, "total_tokens": 15, "charge": "0.00100000", "estimated": False, "latency_ms": 412,
           "error_code": None}


class UsageRecord(Body):
    object: Literal["usage_record"] = "usage_record"
    id: str = Field(description="the request id")
    created_at: dt.datetime
    api_key_id: UUID | None
    model: str = Field(description="the model requested")
    model_served: str | None
    provider: str | None
    status: str = Field(description="ok | failed | partial | cancelled")
    stream: bool
    byok: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int
    charge: MoneyStr
    estimated: bool = Field(description="usage estimated (the provider did not report it)")
    latency_ms: int | None
    error_code: str | None


class UsagePage(Body):
    model_config = example({"object": "list", "data": [_RECORD], "has_more": True,
                            "next_cursor": "MjAyNS0wMy0wMVQxMjowMDowMCswMDowMHw0Mg"})

    object: Literal["list"] = "list"
    data: list[UsageRecord] = Field(description="newest first")
    has_more: bool
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class UsageTotals(Body):
    requests: int
    failed_requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int
    charge: MoneyStr


class _Day(Body):
    day: dt.date


class _Model(Body):
    model: str = Field(description="the model served (else requested)")


class UsageByDay(UsageTotals, _Day):
    """One UTC day's totals (``day`` first)."""


class UsageByModel(UsageTotals, _Model):
    """One model's totals (``model`` first)."""


_TOTALS = {"requests": 3, "failed_requests": 0, "prompt_tokens": 30, "completion_tokens": 15, "cached_tokens": 0,
           "total_tokens": 45, "charge": "0.00300000"}


class UsageSummary(Body):
    model_config = example({"object": "usage_summary", "group_by": "day", "from": "2025-03-01T00:00:00Z", "to": None,
                            "data": [{"day": "2025-03-01", **_TOTALS}], "total": _TOTALS})

    object: Literal["usage_summary"] = "usage_summary"
    group_by: Literal["day", "model"]
    from_: dt.datetime | None = Field(serialization_alias="from", validation_alias=AliasChoices("from_", "from"))
    to: dt.datetime | None
    data: list[UsageByDay] | list[UsageByModel]
    total: UsageTotals


# --------------------------------------------------------------------------- API keys
_API_KEY = {"object": "api_key", "id": _KEY, "name": "ci", "prefix": "sk-mlp-AbC1", "status": "active",
            "created_at": _AT, "last_used_at": None, "revoked_at": None, "scope": "inference", "rpm": 10,
            "spend_cap": "5.00000000", "spent": "0.00000000", "reserved": "0.00000000"}


class ApiKey(Body):
    """A key as its owner may see it: never the secret or its hash."""

    model_config = example(_API_KEY)

    object: Literal["api_key"] = "api_key"
    id: UUID
    name: str
    prefix: str = Field(description="the visible start of the key")
    status: Literal["active", "revoked"]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    scope: Literal["full", "inference"]
    rpm: int | None
    spend_cap: MoneyStr | None = Field(description="null: no cap (then spent and reserved are null too)")
    spent: MoneyStr | None
    reserved: MoneyStr | None


class CreatedApiKey(ApiKey):
    """A new key, with its secret: the only time it is ever returned."""

    model_config = example({**_API_KEY, "key": "sk-mlp-AbC1dEf2gHi3jKl4mNo5pQr6sTu7vWx8"})

    key: str


class ApiKeyList(Body):
    model_config = example({"object": "list", "data": [_API_KEY]})

    object: Literal["list"] = "list"
    data: list[ApiKey]


# --------------------------------------------------------------------------- provider keys (BYOK)
_PROVIDER_KEY = {"object": "provider_key", "provider": "openai", "last4": "x9Qz", "key_version": "v2",
                 "created_at": _AT, "updated_at": _AT}


class ProviderKey(Body):
    """A stored provider key as its owner may see it: never the key, only its last 4 characters."""

    model_config = example(_PROVIDER_KEY)

    object: Literal["provider_key"] = "provider_key"
    provider: str = Field(description="one of the `providers` GET /v1/provider-keys lists")
    last4: str = Field(description="the key's last 4 characters")
    key_version: str = Field(description="the master key version it is encrypted under")
    created_at: dt.datetime
    updated_at: dt.datetime


class ProviderKeyList(Body):
    model_config = example({"object": "list", "data": [_PROVIDER_KEY],
                            "providers": ["openai", "openrouter", "anthropic", "gemini"]})

    object: Literal["list"] = "list"
    data: list[ProviderKey]
    providers: list[str] = Field(description="the providers a key can be stored for")


class ProviderKeyDeleted(Body):
    model_config = example({"object": "provider_key", "provider": "openai", "deleted": True})

    object: Literal["provider_key"] = "provider_key"
    provider: str
    deleted: Literal[True] = True


# --------------------------------------------------------------------------- admin
_USER_BODY = {"object": "user", "id": _USER, "email": "ada@example.com", "tier": "pro", "external_iss": None,
              "external_sub": None, "stripe_customer_id": "cus_Q1w2E3r4T5y6U7", "created_at": _AT,
              "balance": "12.50000000", "reserved": "0.00000000", "total": "12.50000000", "currency": "USD"}


class User(Body):
    model_config = example(_USER_BODY)

    object: Literal["user"] = "user"
    id: UUID
    email: str | None
    tier: str
    external_iss: str | None = Field(description="identity provider (sign-in users)")
    external_sub: str | None
    stripe_customer_id: str | None
    created_at: dt.datetime
    balance: MoneyStr = Field(description="available to spend now (total - reserved)")
    reserved: MoneyStr
    total: MoneyStr
    currency: Literal["USD"] = "USD"


class LedgerEntry(Body):
    amount: MoneyStr
    kind: str = Field(description="grant | purchase | usage | refund | adjustment | subscription_credit | welcome")
    reference: str
    description: str | None
    created_at: dt.datetime


class UserDetail(User):
    model_config = example({**_USER_BODY, "api_keys": [_API_KEY], "provider_keys": [_PROVIDER_KEY],
                            "usage_this_month": _TOTALS, "recent_ledger_entries": [
                                {"amount": "12.50000000", "kind": "welcome", "reference": f"welcome:{_USER}",
                                 "description": "welcome credit", "created_at": _AT}]})

    api_keys: list[ApiKey]
    provider_keys: list[ProviderKey]
    usage_this_month: UsageTotals
    recent_ledger_entries: list[LedgerEntry] = Field(description="the latest 20, newest first")


class CreatedUser(Body):
    model_config = example({"user": _USER_BODY, "api_key": {**_API_KEY, "key": "sk-mlp-AbC1dEf2gHi3jKl4mNo5pQr6"}},
                           {"user": _USER_BODY, "api_key": None})

    user: User
    api_key: CreatedApiKey | None = Field(description="null with create_key: false")


class CreditGrant(Body):
    model_config = example({"object": "credit", "user_id": _USER, "amount": "2.50000000", "kind": "grant",
                            "reference": "admin:order-1234", "reason": "goodwill", "applied": True,
                            "balance": "15.00000000", "reserved": "0.00000000", "total": "15.00000000"})

    object: Literal["credit"] = "credit"
    user_id: UUID
    amount: MoneyStr
    kind: Literal["grant", "adjustment"]
    reference: str
    reason: str
    applied: bool = Field(description="false: this reference was already applied (a replay changes nothing)")
    balance: MoneyStr
    reserved: MoneyStr
    total: MoneyStr


# --------------------------------------------------------------------------- OpenRouter-compatible views
class KeyRateLimit(Body):
    requests: int
    interval: Literal["1m"] = "1m"


class KeyInfo(Body):
    """OpenRouter's ``GET /api/v1/key`` data (amounts: exact JSON numbers, USD)."""

    label: str
    limit: ExactAmount | None = Field(description="the key's spend cap (lifetime); null: none")
    limit_remaining: ExactAmount | None
    limit_reset: None = None
    include_byok_in_limit: Literal[False] = False
    usage: ExactAmount
    usage_daily: ExactAmount
    usage_weekly: ExactAmount
    usage_monthly: ExactAmount
    byok_usage: ExactAmount = Field(description="provider cost of this key's BYOK requests (paid by the customer)")
    byok_usage_daily: ExactAmount
    byok_usage_weekly: ExactAmount
    byok_usage_monthly: ExactAmount
    is_free_tier: bool
    is_provisioning_key: Literal[False] = False
    is_management_key: Literal[False] = False
    creator_user_id: str
    expires_at: None = None
    rate_limit: KeyRateLimit


class KeyInfoResponse(Body):
    model_config = example({"data": {
        "label": "default", "limit": 5, "limit_remaining": 4.997, "limit_reset": None, "include_byok_in_limit": False,
        "usage": 0.003, "usage_daily": 0.001, "usage_weekly": 0.003, "usage_monthly": 0.003, "byok_usage": 0,
        "byok_usage_daily": 0, "byok_usage_weekly": 0, "byok_usage_monthly": 0, "is_free_tier": False,
        "is_provisioning_key": False, "is_management_key": False, "creator_user_id": _USER, "expires_at": None,
        "rate_limit": {"requests": 60, "interval": "1m"}}})

    data: KeyInfo


class Credits(Body):
    total_credits: ExactAmount = Field(description="balance + total_usage")
    total_usage: ExactAmount = Field(description="every usage charge in the ledger")


class CreditsResponse(Body):
    model_config = example({"data": {"total_credits": 12.5, "total_usage": 0.003}})

    data: Credits
