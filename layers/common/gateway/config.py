"""Settings: validated once per cold start (pydantic-settings).

Locally values come from the environment / ``.env``. In AWS (``SECRETS_SSM_PATH`` set) every
SecureString under that path is loaded through Powertools parameters (cached, decrypted) and
overrides the environment, e.g. ``/mlp/prod/database_url`` → ``database_url``.
A deployed stage refuses empty or placeholder secrets at cold start instead of failing later.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOCAL_STAGES = frozenset({"local", "test"})
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "placeholder", "todo", "xxx", "secret", "none", "null"})


class Tier(BaseModel):
    """One row of the tier table. ``monthly_quota`` None = unlimited."""

    name: str
    rpm: int = Field(gt=0)
    monthly_quota: int | None = Field(default=None, ge=0)
    markup: Decimal = Field(default=Decimal("0.10"), ge=0)
    # Model access: "all", or "free_or_cap" = models marked free or whose prompt AND completion
    # price per token are at or below ``max_price_per_token``.
    models: Literal["all", "free_or_cap"] = "all"
    max_price_per_token: Decimal | None = None
    stripe_price_id: str | None = None
    included_credit: Decimal = Decimal("0")


DEFAULT_TIERS: dict[str, dict[str, Any]] = {
    "free": {"rpm": 10, "monthly_quota": 50, "models": "free_or_cap",
             "max_price_per_token": "0.000001"},
    "pro": {"rpm": 60, "monthly_quota": 1000, "included_credit": "5"},
    "premium": {"rpm": 120, "monthly_quota": 2500, "included_credit": "15"},
    "team": {"rpm": 300, "monthly_quota": 5000, "included_credit": "50"},
    "enterprise": {"rpm": 1000, "monthly_quota": None, "markup": "0.05"},
}
TIER_ALIASES = {"hobby": "free"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      case_sensitive=False,
                                      # a failed validation must not print secrets (they are inputs)
                                      hide_input_in_errors=True)

    stage: str = "local"
    service_name: str = Field(default="multi-llm", validation_alias="POWERTOOLS_SERVICE_NAME")
    secrets_ssm_path: str | None = None

    # Postgres
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_pool_max: int = 10
    db_connect_timeout_s: float = 5.0
    db_statement_timeout_ms: int = 5000

    # Upstash Redis (REST)
    upstash_redis_rest_url: str = "http://127.0.0.1:8079"
    upstash_redis_rest_token: str = "local-upstash-token"
    upstash_timeout_s: float = 0.5
    ratelimit_fail_open: bool = True
    ratelimit_prefix: str = "mlp"

    # HTTP surface
    admin_api_key: str = "local-admin-key"
    api_key_prefix: str = "sk-mlp-"
    auth_cache_ttl_s: float = 5.0
    cors_allow_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = 5_000_000

    # Providers
    openrouter_api_key: str = ""
    openai_api_key: str = ""
    anthropic_api_key: str = ""
    gemini_api_key: str = ""
    compat_api_key: str = ""
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_base_url: str = "https://api.anthropic.com/v1"
    gemini_base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    compat_base_url: str = "http://127.0.0.1:11434/v1"
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 60.0
    # JSON object: model id -> list of fallback model ids tried in order.
    model_fallbacks: dict[str, list[str]] = {}
    catalog_ttl_s: float = 60.0  # how long a warm container trusts its copy of model_pricing

    # Models catalogue: GET /v1/models and discovery (docs/models.md)
    models_auth: Literal["public", "key"] = "public"  # "key": listing needs an API key or the admin key
    catalog_cache_ttl_s: int = Field(default=3600, ge=60)     # rendered catalogue in Upstash
    catalog_local_ttl_s: float = Field(default=30.0, ge=0)    # ... and in each warm container
    catalog_cache_prefix: str = ""  # Redis key prefix; empty = "<RATELIMIT_PREFIX>:catalog"
    catalog_fetch_timeout_s: float = Field(default=20.0, gt=0)  # per provider model-list request
    # A source whose list shrinks below this share of its last good list is treated as failed
    # (a truncated answer must not deactivate half the catalogue); `refresh-models --force` overrides.
    catalog_min_source_ratio: float = Field(default=0.5, ge=0, le=1)

    # Billing
    default_markup: Decimal = Decimal("0.10")
    byok_platform_fee: Decimal = Decimal("0.05")
    welcome_credit: Decimal = Decimal("10")
    tiers_json: str | None = None  # JSON object overriding/adding tiers; see DEFAULT_TIERS
    # Money safety on the query path (docs/money.md). An open reservation older than this is an
    # orphan (longer than any request lives: QueryStreamFunction's timeout is 15 minutes).
    reservation_orphan_minutes: int = Field(default=20, ge=16)
    max_in_flight_per_user: int = Field(default=32, ge=1)  # a user's requests holding credit at once
    request_deadline_s: float = Field(default=840.0, gt=0)  # upstream budget of a request (Web Adapter, local)
    buffered_deadline_s: float = Field(default=27.0, gt=0)  # ... behind API Gateway, which gives up at 30 s
    deadline_margin_s: float = Field(default=10.0, ge=0)  # kept before the Lambda timeout to settle
    settle_retry_s: float = Field(default=5.0, ge=0)  # transient database errors on settle are retried this long

    # Identity (JWT sign-in), BYOK master keys, API keys
    jwt_hs256_secret: str = ""
    jwt_jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    byok_master_keys: str = ""  # "v1:<64 hex>,v2:<64 hex>" — last is current
    jwt_leeway_s: int = Field(default=30, ge=0, le=600)   # clock skew allowed on exp/nbf/iat
    jwt_jwks_cache_s: int = Field(default=600, ge=0)      # how long a fetched JWKS is trusted
    key_create_per_hour: int = Field(default=20, ge=1)    # API keys a user may create per hour
    max_keys_per_user: int = Field(default=100, ge=1)     # active (unrevoked) API keys per user
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""

    # Stripe billing (docs/billing.md). Tier prices: ``stripe_price_id`` in TIERS_JSON.
    billing_min_credit_purchase: Decimal = Field(default=Decimal("5"), gt=0)      # USD
    billing_max_credit_purchase: Decimal = Field(default=Decimal("1000"), gt=0)   # USD
    billing_success_url: str = "http://127.0.0.1:8080/billing/success?session_id={CHECKOUT_SESSION_ID}"
    billing_cancel_url: str = "http://127.0.0.1:8080/billing/cancelled"
    billing_portal_return_url: str = "http://127.0.0.1:8080/billing"
    # past_due subscriptions: "keep" the paid tier while Stripe retries the payment, or
    # "restrict" them to the free tier until the invoice is paid.
    billing_past_due_policy: Literal["keep", "restrict"] = "keep"
    stripe_portal_configuration_id: str = ""   # bpc_…; empty = the account's default portal
    stripe_timeout_s: float = 5.0             # per attempt; the billing function has 20 s
    stripe_max_network_retries: int = 2
    stripe_webhook_tolerance_s: int = 300
    stripe_webhook_lock_timeout_ms: int = 3000  # a webhook waits this long for a row lock, then 5xx

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @property
    def deployed(self) -> bool:
        return self.stage not in LOCAL_STAGES

    @model_validator(mode="after")
    def _refuse_placeholders_when_deployed(self) -> Settings:
        if not self.deployed:
            return self
        required = {
            "database_url": self.database_url,
            "upstash_redis_rest_url": self.upstash_redis_rest_url,
            "upstash_redis_rest_token": self.upstash_redis_rest_token,
            "admin_api_key": self.admin_api_key,
        }
        bad = [name for name, value in required.items() if _is_placeholder(value)]
        if self.admin_api_key.startswith("local-") or self.upstash_redis_rest_token.startswith("local-"):
            bad.append("admin_api_key/upstash_redis_rest_token (local default)")
        fields = type(self).model_fields
        bad += [f"{name} (local default)" for name in ("database_url", "upstash_redis_rest_url")
                if name not in bad and getattr(self, name) == fields[name].default]
        if len(self.admin_api_key) < 24:
            bad.append("admin_api_key (shorter than 24 characters)")
        if bad:
            raise ValueError(f"stage {self.stage!r} refuses empty or placeholder secrets: {', '.join(bad)}")
        return self

    @field_validator("byok_master_keys")
    @classmethod
    def _check_master_keys(cls, v: str) -> str:
        """Format only ("name:<64 hex>", comma-separated, unique names); never echoes key material."""
        if v.strip():
            names = []
            for item in v.split(","):
                name, sep, key = item.strip().partition(":")
                if not sep or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name) or not re.fullmatch(
                        r"[0-9a-fA-F]{64}", key.strip()):
                    raise ValueError("BYOK_MASTER_KEYS must be 'version:<64 hex chars>' items separated by commas")
                names.append(name)
            if len(set(names)) != len(names):
                raise ValueError("BYOK_MASTER_KEYS has a duplicate version name")
        return v

    @model_validator(mode="after")
    def _validate_tiers(self) -> Settings:
        """A bad TIERS_JSON fails at cold start, not on the first request that reads the tier table."""
        try:
            _tiers(self.tiers_json, str(self.default_markup))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"TIERS_JSON is invalid: {exc}") from None
        return self

    @property
    def tiers(self) -> dict[str, Tier]:
        return _tiers(self.tiers_json, str(self.default_markup))

    def tier(self, name: str) -> Tier:
        tiers = self.tiers
        name = TIER_ALIASES.get(name, name)
        return tiers.get(name) or tiers["free"]


def _is_placeholder(value: str | None) -> bool:
    if value is None:
        return True
    v = value.strip().lower()
    return v in PLACEHOLDERS or (v.startswith("<") and v.endswith(">")) or v.startswith("your-")


@lru_cache(maxsize=8)
def _tiers(tiers_json: str | None, default_markup: str) -> dict[str, Tier]:
    table: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_TIERS.items()}
    if tiers_json:
        for name, row in json.loads(tiers_json).items():
            table[name] = {**table.get(name, {}), **row}
    out: dict[str, Tier] = {}
    for name, row in table.items():
        row.setdefault("markup", default_markup)
        out[name] = Tier(name=name, **row)
    if "free" not in out:
        raise ValueError("the tier table must define a 'free' tier")
    return out


def _load_ssm_secrets(path: str) -> dict[str, str]:
    """All parameters under ``path`` (decrypted, cached by Powertools for 5 minutes)."""
    from aws_lambda_powertools.utilities import parameters  # imports boto3: AWS path only

    values = parameters.get_parameters(path, decrypt=True, recursive=False, max_age=300)
    out: dict[str, str] = {}
    for name, value in values.items():
        key = name.rsplit("/", 1)[-1].lower().replace("-", "_")
        out[key] = str(value)
    return out


def load_settings(**overrides: Any) -> Settings:
    path = overrides.pop("secrets_ssm_path", None) or os.environ.get("SECRETS_SSM_PATH")
    secrets: dict[str, Any] = {}
    if path:
        secrets = {k: v for k, v in _load_ssm_secrets(path).items() if k in Settings.model_fields}
        secrets["secrets_ssm_path"] = path
    return Settings(**{**secrets, **overrides})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated on first use (cold start)."""
    return load_settings()


def reset_settings() -> None:
    get_settings.cache_clear()
