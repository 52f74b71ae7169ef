"""Settings: validated once per cold start (pydantic-settings).

Locally values come from the environment / ``.env``. In AWS (``SECRETS_SSM_PATH`` set) the
secrets are split by audience into ONE SecureString each, a JSON object of settings:
``<path>core`` (database, Upstash, admin key, sign-in), ``<path>providers`` (provider API keys),
``<path>billing`` (Stripe), ``<path>byok`` (the BYOK master keys) and ``identity`` (the sign-in
settings the stack writes: issuer, JWKS, audience, console URLs; a String named by
``IDENTITY_SSM_PARAMETER``, not secret, read after ``core`` so it wins). A function reads only the
audiences in its ``SECRETS_AUDIENCES`` (and its IAM policy allows only those), in ONE
``GetParameters`` call per cold start; the values override the environment.
A deployed stage refuses empty or placeholder secrets, and a database URL without TLS, at cold
start instead of failing later.
"""

# No ``from __future__ import annotations`` here: with it pydantic compiles and evaluates each of
# the Settings' ~100 annotation strings at class creation (-8 M instructions of a cold start without
# it; issue 15, spawn4). A validator returning ``Settings`` names it in quotes.

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

LOCAL_STAGES = frozenset({"local", "test"})
# The SSM SecureStrings a function may read (docs/deploy.md "Secrets"); template.yaml grants
# each function exactly the ones in its SECRETS_AUDIENCES (tests/infrastructure checks it).
SECRET_AUDIENCES = ("core", "providers", "billing", "byok", "identity")
# sslmode values that allow a plaintext connection.
NON_TLS_SSLMODES = frozenset({"disable", "allow", "prefer"})
PLACEHOLDERS = frozenset({"", "changeme", "change-me", "placeholder", "todo", "xxx", "secret", "none", "null"})


class Tier(BaseModel):
    """One row of the tier table. ``monthly_quota`` None = unlimited. ``rank`` orders the tiers
    (higher = better plan: with several live subscriptions the highest rank wins); a tier added
    through TIERS_JSON without a ``rank`` ranks with ``free``, never above ``enterprise``."""

    name: str
    rank: int = 0
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
    "free": {"rank": 0, "rpm": 10, "monthly_quota": 50, "models": "free_or_cap",
             "max_price_per_token": "0.000001"},
    "pro": {"rank": 10, "rpm": 60, "monthly_quota": 1000, "included_credit": "5"},
    "premium": {"rank": 20, "rpm": 120, "monthly_quota": 2500, "included_credit": "15"},
    "team": {"rank": 30, "rpm": 300, "monthly_quota": 5000, "included_credit": "50"},
    "enterprise": {"rank": 40, "rpm": 1000, "monthly_quota": None, "markup": "0.05"},
}
TIER_ALIASES = {"hobby": "free"}
FREE_TIER = "free"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      case_sensitive=False,
                                      # a failed validation must not print secrets (they are inputs)
                                      hide_input_in_errors=True)

    stage: str = "local"
    service_name: str = Field(default="multi-llm", validation_alias="POWERTOOLS_SERVICE_NAME")
    secrets_ssm_path: str | None = None

    # Postgres (docs/deploy.md, "Which URL goes where"). DATABASE_URL is what the functions use:
    # a transaction-mode pooler endpoint is fine and recommended (Neon "-pooler" host, Supabase
    # port 6543, PgBouncer). DATABASE_DIRECT_URL is the direct (non-pooled) endpoint that
    # `mlp migrate` uses; empty = DATABASE_URL.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    database_direct_url: str = ""
    # Is DATABASE_URL a transaction-mode pooler? Unset = detected from the URL (is_pooled_url).
    # Through a pooler: no startup options, no server-side prepared statements.
    database_pooled: bool | None = None
    db_pool_max: int = Field(default=2, ge=1)      # a Lambda container serves one request at a time
    # money statements of one user and key that arrive while one is in flight in this process are
    # sent together, one transaction (gateway.money.combine, migration 0013); none under Lambda
    db_combine: bool = True
    db_connect_timeout_s: float = 3.0               # libpq connect_timeout (at least 2 s)
    db_statement_timeout_ms: int = 5000             # server side, see gateway.db
    db_timeout_s: float = Field(default=6.0, gt=0)  # client side: one statement or transaction block
    db_prepare_threshold: int | None = 5            # psycopg's; only used on direct (non-pooled) URLs
    db_retry_after_s: int = Field(default=2, ge=1)  # after a connection failure: 503 at once this long

    # Upstash Redis (REST)
    upstash_redis_rest_url: str = "http://127.0.0.1:8079"
    upstash_redis_rest_token: str = "local-upstash-token"
    upstash_timeout_s: float = 0.5
    # After Upstash timed out or refused, skip it for this long (per container): one timeout per
    # interval instead of +UPSTASH_TIMEOUT_S on every request.
    upstash_breaker_s: float = Field(default=10.0, ge=0)
    ratelimit_fail_open: bool = True
    # Token leases (gateway.ratelimit): a warm container takes up to this many request tokens per
    # Upstash call for the per-minute request limits, never more than rpm // 50 (so at most 2% of a
    # user's limit sits unused in one container); 1 = one Upstash call per request, exact.
    ratelimit_lease_max: int = Field(default=10, ge=1)
    ratelimit_lease_ttl_s: float = Field(default=10.0, gt=0)  # an unused lease is dropped after this
    # Prefix of every Redis key (rate limits, the catalogue cache). Empty = "mlp-" + a short hash
    # of the database (host, port, name), so stacks with different databases sharing one Upstash
    # database (two stages, two local stacks) never serve each other's catalogue or limits.
    ratelimit_prefix: str = ""

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
    # OpenRouter app attribution (https://openrouter.ai/docs/app-attribution): sent on every
    # OpenRouter call as HTTP-Referer and X-Title when set.
    openrouter_http_referer: str = ""
    openrouter_app_title: str = ""
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
    # How long Google's countTokens for a Gemini embeddings batch may still take once every batch has
    # answered (never past the deadline): it runs only the tokenizer and is asked at the same time as
    # the batches, so it is normally back first; a slower one is dropped and the batch's bound billed.
    embeddings_count_grace_s: float = Field(default=0.2, ge=0, le=5)
    # Carried holds (docs/money.md): a settle opens a standing hold for the next request of the same
    # key in this container, idle in the database at most carry_hold_s, used here only during the
    # first carry_hold_s - carry_margin_s (the margin covers the upstream mark that makes it "used"),
    # of carry_hold_factor x the settled request's hold; at most carry_per_key idle ones per key (8:
    # a plain server's concurrent requests of one key keep theirs while settles queue behind a slow
    # commit; under Lambda a container keeps one. BENCHMARKS.md, "eleventh pass (lead)").
    carry_holds: bool = True
    carry_hold_s: int = Field(default=30, ge=5, le=300)
    carry_margin_s: int = Field(default=10, ge=3)
    carry_hold_factor: Decimal = Field(default=Decimal("1.25"), ge=1, le=10)
    carry_per_key: int = Field(default=8, ge=1, le=64)

    # Identity (JWT sign-in), BYOK master keys, API keys
    jwt_hs256_secret: str = ""
    jwt_jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    byok_master_keys: str = ""  # "v1:<64 hex>,v2:<64 hex>" — last is current
    jwt_leeway_s: int = Field(default=30, ge=0, le=600)   # clock skew allowed on exp/nbf/iat
    jwt_jwks_cache_s: int = Field(default=600, ge=0)      # how long a fetched JWKS is trusted
    key_create_per_hour: int = Field(default=20, ge=1)    # API keys a user may create per hour
    # Sign-up with a JWT (docs/account.md): the welcome credit of a new identity with a verified,
    # new email (separate from WELCOME_CREDIT of admin/CLI users), and new identities per source
    # address per hour.
    jwt_welcome_credit: Decimal = Field(default=Decimal("10"), ge=0)
    jwt_provision_per_hour: int = Field(default=20, ge=1)
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

    # Customer console (docs/console.md): the OIDC app client its pages sign in with (Cognito's
    # hosted UI or another provider); template.yaml writes these to SSM. Empty = sign-in not set up.
    console_client_id: str = ""
    console_authorize_url: str = ""
    console_token_url: str = ""
    console_signup_url: str = ""    # optional (Cognito: <domain>/signup); empty = the authorize URL
    console_logout_url: str = ""    # optional (Cognito: <domain>/logout)
    console_stream_url: str = ""    # optional: QueryStreamUrl, so the playground streams through the Function URL
    console_low_balance: Decimal = Field(default=Decimal("2"), ge=0)  # USD; below it the console warns

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' sources in its order, the ``.env`` source only when it read a variable:
        without a ``.env`` file (every deployed function) it adds nothing, and asking it anyway walks
        every field a second time (~1 ms of a cold start; BENCHMARKS.md, issue 15, spawn third pass)."""
        dotenv = (dotenv_settings,) if getattr(dotenv_settings, "env_vars", True) else ()
        return (init_settings, env_settings, *dotenv, file_secret_settings)

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("db_prepare_threshold", mode="before")
    @classmethod
    def _prepare_off(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("", "none", "null", "off"):
            return None
        return v

    @property
    def deployed(self) -> bool:
        return self.stage not in LOCAL_STAGES

    @property
    def pooled(self) -> bool:
        """DATABASE_URL goes through a transaction-mode pooler."""
        return self.database_pooled if self.database_pooled is not None else is_pooled_url(self.database_url)

    @property
    def migrations_url(self) -> str:
        return self.database_direct_url or self.database_url

    @model_validator(mode="after")
    def _refuse_placeholders_when_deployed(self) -> "Settings":
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
        insecure = [f"{name} ({problem})" for name, url in (("database_url", self.database_url),
                                                             ("database_direct_url", self.database_direct_url))
                    if url and (problem := tls_problem(url))]
        upstash = urlsplit(self.upstash_redis_rest_url)
        if upstash.scheme != "https" and not is_loopback(upstash.hostname or ""):
            insecure.append("upstash_redis_rest_url (not https://)")
        if insecure:
            raise ValueError(f"stage {self.stage!r} refuses connections without TLS: {', '.join(insecure)}")
        return self

    @model_validator(mode="after")
    def _refuse_open_jwks_when_deployed(self) -> "Settings":
        """A JWKS verifies every token the identity provider signs, for any of its applications:
        a deployed stage must pin the issuer and the audience."""
        if self.deployed and self.jwt_jwks_url and not (self.jwt_issuer.strip() and self.jwt_audience.strip()):
            raise ValueError(f"stage {self.stage!r} refuses JWT_JWKS_URL without JWT_ISSUER and JWT_AUDIENCE")
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
    def _check_carry(self) -> "Settings":
        if self.carry_margin_s >= self.carry_hold_s:
            raise ValueError("CARRY_MARGIN_S must be below CARRY_HOLD_S (a carried hold would never be usable)")
        return self

    @model_validator(mode="after")
    def _default_redis_prefix(self) -> "Settings":
        if not self.ratelimit_prefix:
            info = _conninfo(self.database_url)
            ident = "|".join(info.get(k, "") for k in ("host", "port", "dbname"))
            self.ratelimit_prefix = "mlp-" + hashlib.sha256(ident.encode()).hexdigest()[:10]
        return self

    @model_validator(mode="after")
    def _validate_tiers(self) -> "Settings":
        """A bad TIERS_JSON fails at cold start, not on the first request that reads the tier table."""
        try:
            _tiers(self.tiers_json, str(self.default_markup))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"TIERS_JSON is invalid: {exc}") from None
        return self

    @property
    def tiers(self) -> dict[str, Tier]:
        # The table of the last (tiers_json, default_markup) pair read, by identity: ``tier()`` runs
        # a few times per request, and ``str(Decimal)`` plus the lru_cache key cost ~1 us a call.
        global _last_tiers
        tiers_json, markup = self.tiers_json, self.default_markup
        last = _last_tiers  # one tuple: a consistent snapshot
        if last[0] is tiers_json and last[1] is markup:
            return last[2]
        table = _tiers(tiers_json, str(markup))
        _last_tiers = (tiers_json, markup, table)
        return table

    # The tier table's one home: every lookup goes through these four.
    def tier(self, name: str) -> Tier:
        """The tier a stored name stands for; an unknown name is the safest tier (``free``)."""
        tiers = self.tiers
        return tiers.get(TIER_ALIASES.get(name, name)) or tiers[FREE_TIER]

    def known_tier(self, name: str) -> Tier:
        """The tier a client or operator named (aliases allowed); 400 ``unknown_tier`` otherwise."""
        tiers = self.tiers
        tier = tiers.get(TIER_ALIASES.get(name, name))
        if tier is None:
            from .errors import BadRequest

            raise BadRequest(f"Unknown tier `{name}`. Known tiers: {', '.join(self.tier_ranking())}.",
                             param="tier", code="unknown_tier")
        return tier

    def tier_ranking(self) -> list[str]:
        """Tier names, lowest first: by ``rank``, then table order."""
        tiers = list(self.tiers.values())
        return [t.name for _, t in sorted(enumerate(tiers), key=lambda it: (it[1].rank, it[0]))]

    def quotas(self) -> dict[str, int | None]:
        """Monthly request quota of every tier name the database may hold (aliases included). Built
        once per tier table (``tiers`` is the same dict while its inputs are; every reserve and
        settle asks): the map is shared, never modify it."""
        global _last_quotas
        tiers = self.tiers
        last = _last_quotas
        if last[0] is tiers:
            return last[1]
        out: dict[str, int | None] = {name: t.monthly_quota for name, t in tiers.items()}
        out.update({alias: out[target] for alias, target in TIER_ALIASES.items() if target in out})
        _last_quotas = (tiers, out)
        return out


def _is_placeholder(value: str | None) -> bool:
    if value is None:
        return True
    v = value.strip().lower()
    return v in PLACEHOLDERS or (v.startswith("<") and v.endswith(">")) or v.startswith("your-")


# Settings.tiers: the last (tiers_json, default_markup, table) read
_last_tiers: tuple[object, object, dict[str, Tier]] = (object(), object(), {})
_last_quotas: tuple[object, dict[str, int | None]] = (object(), {})  # (the tier table, its quota map)


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
    if FREE_TIER not in out:
        raise ValueError("the tier table must define a 'free' tier")
    return out


# ----------------------------------------------------------------------------- database URLs
def _conninfo(url: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict  # psycopg is on every path that has a database

    try:
        return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except Exception:  # an unparsable URL is reported by the connection itself
        return {}


def is_pooled_url(url: str) -> bool:
    """A transaction-mode pooler endpoint, recognised by its host or port: Neon's ``-pooler``
    hosts, Supabase's pooler (port 6543 is its transaction mode), PgBouncer (``pgbouncer`` in
    the host name, or its default port 6432). Set DATABASE_POOLED where this guesses wrong."""
    info = _conninfo(url)
    hosts = info.get("host", "").lower()
    ports = info.get("port", "")
    return ("-pooler." in hosts or "pooler.supabase.com" in hosts or "pgbouncer" in hosts
            or any(p.strip() in ("6432", "6543") for p in ports.split(",")))


def is_loopback(host: str) -> bool:
    """Traffic to these hosts never leaves the machine: TLS adds nothing there."""
    host = host.strip().strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def tls_problem(url: str) -> str | None:
    """Why ``url`` would allow a connection without TLS, or None. An absent sslmode (libpq's
    default ``prefer``) is fine here: gateway.db connects with verify-full on deployed stages."""
    info = _conninfo(url)
    if info.get("host") and all(is_loopback(h) for h in info["host"].split(",")):
        return None
    sslmode = info.get("sslmode", "").lower()
    if sslmode in NON_TLS_SSLMODES:
        return f"sslmode={sslmode} allows an unencrypted connection; use sslmode=verify-full"
    if info.get("host", "").startswith("/"):
        return "a Unix-socket host has no TLS"
    return None


# ----------------------------------------------------------------------------- loading
def secret_parameter_names(path: str, audiences: Sequence[str], identity_name: str | None = None) -> list[str]:
    """``<path><audience>``; the ``identity`` audience is the stack's own parameter when
    ``identity_name`` (``IDENTITY_SSM_PARAMETER``, set by template.yaml) names it, so two stacks of
    one stage share the operator's secrets but not the sign-in settings each stack writes."""
    base = path if path.endswith("/") else path + "/"
    return [identity_name if audience == "identity" and identity_name else base + audience for audience in audiences]


def _audiences(value: str | None) -> list[str]:
    """``SECRETS_AUDIENCES`` ("core,providers"); unset = all of them (the operator's CLI)."""
    names = [a.strip().lower() for a in (value or "").split(",") if a.strip()] or list(SECRET_AUDIENCES)
    unknown = sorted(set(names) - set(SECRET_AUDIENCES))
    if unknown:
        raise ValueError(f"SECRETS_AUDIENCES: unknown audience(s) {unknown}; known: {', '.join(SECRET_AUDIENCES)}")
    return names


def _load_ssm_secrets(path: str, audiences: Sequence[str]) -> dict[str, Any]:
    """The audiences' SecureStrings (JSON objects of settings) in ONE GetParameters call,
    decrypted. A missing audience is logged by name and skipped: the settings validation then
    names whatever required value is missing.

    Called through botocore's own client (the SSM client Powertools' ``get_parameters_by_name``
    made, with the same defaults: region, credentials and retries from the environment), once per
    cold start: importing Powertools' parameters utility imports boto3, s3transfer and its other
    providers' modules besides botocore, ~30 ms of CPU of every deployed cold start that nothing
    else uses (BENCHMARKS.md, issue 15, import lane)."""
    import botocore.session  # the Lambda runtime's botocore: AWS path only

    names = secret_parameter_names(path, audiences, os.environ.get("IDENTITY_SSM_PARAMETER"))
    client = botocore.session.get_session().create_client("ssm")
    values: dict[str, Any] = {}
    missing: list[str] = []
    for start in range(0, len(names), _SSM_BATCH):  # GetParameters takes 10 names at most
        response = client.get_parameters(Names=names[start:start + _SSM_BATCH], WithDecryption=True)
        values.update({p["Name"]: p["Value"] for p in response.get("Parameters") or []})
        missing += response.get("InvalidParameters") or []
    if missing:
        logging.getLogger(__name__).warning("secrets not found in SSM (skipped): %s", ", ".join(missing))
    out: dict[str, Any] = {}
    for name in names:
        if name not in values:
            continue
        try:
            data = json.loads(str(values[name]))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ValueError(f"SSM parameter {name} must be a JSON object of settings, e.g. "
                             '{"database_url": "postgresql://..."}') from None
        out.update({str(k).lower().replace("-", "_"): v for k, v in data.items()})
    return out


_SSM_BATCH = 10  # names per GetParameters call (the API's limit; there are 5 audiences)


def load_settings(**overrides: Any) -> Settings:
    path = overrides.pop("secrets_ssm_path", None) or os.environ.get("SECRETS_SSM_PATH")
    secrets: dict[str, Any] = {}
    if path:
        audiences = _audiences(overrides.pop("secrets_audiences", None) or os.environ.get("SECRETS_AUDIENCES"))
        secrets = {k: v for k, v in _load_ssm_secrets(path, audiences).items() if k in Settings.model_fields}
        secrets["secrets_ssm_path"] = path
    return Settings(**{**secrets, **overrides})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated on first use (cold start)."""
    return load_settings()


def reset_settings() -> None:
    get_settings.cache_clear()
