"""Settings: defaults, the tier table, the deployed-stage refusal of placeholder secrets, CORS
parsing and the AWS path (SecureString parameters under SECRETS_SSM_PATH, via moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import DEFAULT_TIERS, Settings, get_settings, load_settings, reset_settings

# Every variable a test here may set; cleared so the process environment (or a session fixture
# of another test module) cannot leak in.
MANAGED_ENV = (
    "STAGE", "SECRETS_SSM_PATH", "DATABASE_URL", "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN",
    "ADMIN_API_KEY", "TIERS_JSON", "DEFAULT_MARKUP", "CORS_ALLOW_ORIGINS", "DB_POOL_MAX", "AUTH_CACHE_TTL_S",
    "MAX_BODY_BYTES", "STRIPE_SECRET_KEY", "RATELIMIT_PREFIX", "MODEL_FALLBACKS", "SECRETS_AUDIENCES",
    "DATABASE_DIRECT_URL", "DATABASE_POOLED", "DB_PREPARE_THRESHOLD",
)

PROD_SECRETS = {
    "DATABASE_URL": "postgresql://gateway:s3cr3t-pw@db.internal.example:5432/gateway",
    "UPSTASH_REDIS_REST_URL": "https://eu1-fine-cat-12345.upstash.io",
    "UPSTASH_REDIS_REST_TOKEN": "AX9kASQgYjM2ZDk0ZDMtOWE1Zi00",
    "ADMIN_API_KEY": "adm-6f1c0b4e9a7d2c5b8e3f0a1d4c7b9e2f",
}


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name in MANAGED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STAGE", "test")
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    reset_settings()
    yield monkeypatch
    reset_settings()


def _prod(monkeypatch: pytest.MonkeyPatch, **overrides: str | None) -> None:
    monkeypatch.setenv("STAGE", "prod")
    for name, value in {**PROD_SECRETS, **overrides}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


# ----------------------------------------------------------------------------------- defaults
def test_defaults() -> None:
    s = get_settings()
    assert s.stage == "test"
    assert not s.deployed
    assert s.secrets_ssm_path is None
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert s.db_pool_max == 2  # a Lambda container serves one request at a time
    assert s.db_prepare_threshold == 5 and not s.pooled
    assert s.migrations_url == s.database_url
    assert s.api_key_prefix == "sk-mlp-"
    assert s.auth_cache_ttl_s == 5.0
    assert s.cors_allow_origins == []
    assert s.max_body_bytes == 5_000_000
    assert s.default_markup == Decimal("0.10")
    assert isinstance(s.default_markup, Decimal)
    assert s.byok_platform_fee == Decimal("0.05")
    assert s.welcome_credit == Decimal("10")
    assert s.ratelimit_fail_open is True
    assert s.model_fallbacks == {}
    assert get_settings() is s  # cached per process ...
    reset_settings()
    assert get_settings() is not s  # ... until reset


def test_environment_overrides_and_types(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_POOL_MAX", "20")
    env.setenv("AUTH_CACHE_TTL_S", "0.25")
    env.setenv("DEFAULT_MARKUP", "0.2")
    env.setenv("MODEL_FALLBACKS", json.dumps({"openai/gpt-4o": ["anthropic/claude-sonnet-4"]}))
    s = get_settings()
    assert s.db_pool_max == 20
    assert s.auth_cache_ttl_s == 0.25
    assert s.default_markup == Decimal("0.2")
    assert s.model_fallbacks == {"openai/gpt-4o": ["anthropic/claude-sonnet-4"]}


def test_load_settings_overrides_beat_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_POOL_MAX", "20")
    assert load_settings(db_pool_max=3).db_pool_max == 3


@pytest.mark.parametrize("stage", ["local", "test"])
def test_local_stages_accept_local_defaults(env: pytest.MonkeyPatch, stage: str) -> None:
    env.setenv("STAGE", stage)
    env.setenv("ADMIN_API_KEY", "")
    s = get_settings()
    assert not s.deployed
    assert s.upstash_redis_rest_token == "local-upstash-token"


# ----------------------------------------------------------------------------------- tiers
def test_default_tier_table() -> None:
    tiers = get_settings().tiers
    assert set(tiers) == set(DEFAULT_TIERS)
    free = tiers["free"]
    assert (free.rpm, free.monthly_quota, free.models) == (10, 50, "free_or_cap")
    assert free.max_price_per_token == Decimal("0.000001")
    assert free.markup == Decimal("0.10")
    pro = tiers["pro"]
    assert (pro.rpm, pro.monthly_quota, pro.included_credit, pro.models) == (60, 1000, Decimal("5"), "all")
    assert tiers["premium"].monthly_quota == 2500
    assert tiers["team"].rpm == 300
    enterprise = tiers["enterprise"]
    assert enterprise.monthly_quota is None  # unlimited
    assert enterprise.markup == Decimal("0.05")  # explicit markup beats the default
    for tier in tiers.values():
        assert isinstance(tier.markup, Decimal)
        assert isinstance(tier.included_credit, Decimal)


def test_tier_lookup_alias_and_unknown() -> None:
    s = get_settings()
    assert s.tier("hobby").name == "free"
    assert s.tier("hobby") == s.tier("free")
    assert s.tier("pro").name == "pro"
    assert s.tier("no-such-tier").name == "free"  # unknown names fall back to the safest tier


def test_tiers_json_overrides_merge_and_add(env: pytest.MonkeyPatch) -> None:
    env.setenv("DEFAULT_MARKUP", "0.15")
    env.setenv("TIERS_JSON", json.dumps({
        "pro": {"rpm": 99},
        "startup": {"rpm": 30, "monthly_quota": 200, "stripe_price_id": "price_123"},
        "free": {"monthly_quota": 10},
    }))
    tiers = get_settings().tiers
    assert tiers["pro"].rpm == 99
    assert tiers["pro"].monthly_quota == 1000  # untouched fields keep their defaults
    assert tiers["pro"].included_credit == Decimal("5")
    assert tiers["startup"].monthly_quota == 200
    assert tiers["startup"].stripe_price_id == "price_123"
    assert tiers["startup"].markup == Decimal("0.15")  # DEFAULT_MARKUP applies where unset
    assert tiers["enterprise"].markup == Decimal("0.05")
    assert tiers["free"].monthly_quota == 10
    assert tiers["free"].rpm == 10
    assert get_settings().tier("hobby").monthly_quota == 10


def test_each_settings_reads_its_own_tier_table(env: pytest.MonkeyPatch) -> None:
    """``Settings.tiers`` keeps the last table read: two settings read in turn, and one whose
    table or markup is assigned anew, still each answer from their own values."""
    one = load_settings()
    env.setenv("DEFAULT_MARKUP", "0.3")
    env.setenv("TIERS_JSON", json.dumps({"pro": {"rpm": 7}}))
    two = load_settings()
    for _ in range(2):
        assert one.tier("pro").rpm == DEFAULT_TIERS["pro"]["rpm"] and one.tier("free").markup == Decimal("0.10")
        assert two.tier("pro").rpm == 7 and two.tier("free").markup == Decimal("0.3")
        assert one.tiers is one.tiers  # the same table while nothing changed
    one.tiers_json = json.dumps({"pro": {"rpm": 8}})
    assert one.tier("pro").rpm == 8 and two.tier("pro").rpm == 7
    one.default_markup = Decimal("0.25")
    assert one.tier("free").markup == Decimal("0.25") and one.tier("pro").rpm == 8
    assert one.quotas() == {**one.quotas(), "pro": DEFAULT_TIERS["pro"]["monthly_quota"]}


def test_tier_rank_is_explicit_not_table_order(env: pytest.MonkeyPatch) -> None:
    """A tier added through TIERS_JSON comes after enterprise in the table, but without a ``rank``
    it ranks with free: it never outranks enterprise (which decides the tier of a user with
    several live subscriptions, billing.subscriptions)."""
    env.setenv("TIERS_JSON", json.dumps({"startup": {"rpm": 30}, "scale": {"rpm": 500, "rank": 35}}))
    s = get_settings()
    assert list(s.tiers)[-2:] == ["startup", "scale"]  # table order: added last
    ranking = s.tier_ranking()
    assert ranking[-1] == "enterprise"
    assert ranking.index("startup") < ranking.index("pro")
    assert ranking.index("team") < ranking.index("scale") < ranking.index("enterprise")
    assert s.quotas()["hobby"] == s.quotas()["free"] == 50


def test_named_tier_lookup_has_one_error(env: pytest.MonkeyPatch) -> None:
    from gateway.errors import BadRequest

    s = get_settings()
    assert s.known_tier("hobby").name == "free" and s.known_tier("pro").name == "pro"
    with pytest.raises(BadRequest) as err:
        s.known_tier("platinum")
    assert err.value.code == "unknown_tier" and err.value.param == "tier"
    assert s.tier("platinum").name == "free"  # a stored unknown name: the safest tier


@pytest.mark.parametrize("bad", [
    '{"pro": {"rpm": 0}}',              # rpm must be > 0
    '{"pro": {"monthly_quota": -1}}',
    '{"pro": {"models": "some"}}',
    '{"pro": 5}',
    "{not json",
])
def test_invalid_tiers_json_fails_at_load(env: pytest.MonkeyPatch, bad: str) -> None:
    env.setenv("TIERS_JSON", bad)
    with pytest.raises(ValidationError, match="TIERS_JSON"):
        get_settings()


# ----------------------------------------------------------------------------------- CORS
@pytest.mark.parametrize(("raw", "expected"), [
    ("", []),
    ("   ", []),
    ("https://app.example.com", ["https://app.example.com"]),
    ("https://a.example.com, https://b.example.com ,", ["https://a.example.com", "https://b.example.com"]),
    ('["https://a.example.com", "http://localhost:3000"]', ["https://a.example.com", "http://localhost:3000"]),
])
def test_cors_origins_parsing(env: pytest.MonkeyPatch, raw: str, expected: list[str]) -> None:
    env.setenv("CORS_ALLOW_ORIGINS", raw)
    assert get_settings().cors_allow_origins == expected


# ----------------------------------------------------------------------------------- deployed stage
def test_deployed_stage_with_real_secrets(env: pytest.MonkeyPatch) -> None:
    _prod(env)
    s = get_settings()
    assert s.deployed
    assert s.stage == "prod"
    assert s.admin_api_key == PROD_SECRETS["ADMIN_API_KEY"]


@pytest.mark.parametrize(("var", "value", "reported"), [
    ("ADMIN_API_KEY", "", "admin_api_key"),
    ("ADMIN_API_KEY", None, "admin_api_key"),                   # unset -> "local-admin-key"
    ("ADMIN_API_KEY", "changeme", "admin_api_key"),
    ("ADMIN_API_KEY", "<your admin key>", "admin_api_key"),
    ("ADMIN_API_KEY", "your-admin-key-goes-here-please", "admin_api_key"),
    ("ADMIN_API_KEY", "too-short-key-123", "admin_api_key (shorter than 24 characters)"),
    ("ADMIN_API_KEY", "local-admin-key-but-it-is-long-enough", "local default"),
    ("UPSTASH_REDIS_REST_TOKEN", "", "upstash_redis_rest_token"),
    ("UPSTASH_REDIS_REST_TOKEN", None, "local default"),
    ("UPSTASH_REDIS_REST_TOKEN", "PLACEHOLDER", "upstash_redis_rest_token"),
    ("UPSTASH_REDIS_REST_URL", "TODO", "upstash_redis_rest_url"),
    ("UPSTASH_REDIS_REST_URL", None, "upstash_redis_rest_url (local default)"),
    ("DATABASE_URL", "", "database_url"),
    ("DATABASE_URL", " none ", "database_url"),
    ("DATABASE_URL", None, "database_url (local default)"),
])
def test_deployed_stage_refuses_placeholder_secrets(env: pytest.MonkeyPatch, var: str, value: str | None,
                                                    reported: str) -> None:
    _prod(env, **{var: value})
    with pytest.raises(ValidationError) as info:
        get_settings()
    message = str(info.value)
    assert "stage 'prod' refuses empty or placeholder secrets" in message
    assert reported in message
    # The message names what is wrong, never the secret values themselves.
    for secret in PROD_SECRETS.values():
        assert secret not in message


def test_refusal_lists_every_bad_secret(env: pytest.MonkeyPatch) -> None:
    env.setenv("STAGE", "staging")
    with pytest.raises(ValidationError) as info:
        get_settings()
    message = str(info.value)
    assert "stage 'staging'" in message
    for name in ("database_url", "upstash_redis_rest_url", "admin_api_key", "upstash_redis_rest_token"):
        assert name in message


# ----------------------------------------------------------------------------------- AWS: SSM
@pytest.fixture
def ssm(env: pytest.MonkeyPatch) -> Iterator[object]:
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    from aws_lambda_powertools.utilities import parameters

    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    parameters.clear_caches()
    with moto.mock_aws():
        yield boto3.client("ssm", region_name="us-east-1")
    parameters.clear_caches()


def _put(client: object, name: str, value: str) -> None:
    client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)  # type: ignore[attr-defined]


def _put_audience(client: object, stage: str, audience: str, values: dict[str, str]) -> None:
    _put(client, f"/mlp/{stage}/{audience}", json.dumps(values))


CORE = {name.lower(): value for name, value in PROD_SECRETS.items()}


def test_ssm_audiences_are_loaded_in_one_call(env: pytest.MonkeyPatch, ssm: object) -> None:
    _put_audience(ssm, "prod", "core", {**CORE, "db_pool_max": "1", "not_a_setting": "ignored"})
    _put_audience(ssm, "prod", "billing", {"STRIPE-SECRET-KEY": "sk_live_abc123"})  # case, dashes normalised
    _put_audience(ssm, "prod", "providers", {"openai_api_key": "sk-openai-prod"})
    _put_audience(ssm, "other", "core", {"admin_api_key": "from-another-stage-000000000000"})
    env.setenv("STAGE", "prod")
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")  # SSM wins over env
    env.setenv("SECRETS_SSM_PATH", "/mlp/prod/")
    env.setenv("SECRETS_AUDIENCES", "core,billing")

    import botocore.client

    calls: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def spy(self: object, operation: str, params: dict[str, object]) -> object:
        calls.append(operation)
        return original(self, operation, params)  # type: ignore[arg-type]

    env.setattr(botocore.client.BaseClient, "_make_api_call", spy)
    s = load_settings()
    assert calls == ["GetParameters"]  # one SSM call per cold start, whatever the audiences
    assert s.deployed
    assert s.secrets_ssm_path == "/mlp/prod/"
    assert s.database_url == PROD_SECRETS["DATABASE_URL"]
    assert s.upstash_redis_rest_token == PROD_SECRETS["UPSTASH_REDIS_REST_TOKEN"]
    assert s.admin_api_key == PROD_SECRETS["ADMIN_API_KEY"]
    assert s.stripe_secret_key == "sk_live_abc123"
    assert s.openai_api_key != "sk-openai-prod"  # providers is not this function's audience
    assert s.db_pool_max == 1
    assert not hasattr(s, "not_a_setting")

    reset_settings()
    assert get_settings().admin_api_key == PROD_SECRETS["ADMIN_API_KEY"]  # the cold-start path too


def test_ssm_every_audience_by_default(env: pytest.MonkeyPatch, ssm: object) -> None:
    # The operator's CLI (no SECRETS_AUDIENCES) reads all of them; missing ones are skipped.
    _put_audience(ssm, "prod", "core", CORE)
    _put_audience(ssm, "prod", "byok", {"byok_master_keys": "v1:" + "ab" * 32})
    env.setenv("STAGE", "prod")
    s = load_settings(secrets_ssm_path="/mlp/prod")
    assert s.secrets_ssm_path == "/mlp/prod"
    assert s.admin_api_key == PROD_SECRETS["ADMIN_API_KEY"]
    assert s.byok_master_keys == "v1:" + "ab" * 32


def test_ssm_unknown_audience_is_refused(env: pytest.MonkeyPatch, ssm: object) -> None:
    env.setenv("SECRETS_SSM_PATH", "/mlp/prod/")
    env.setenv("SECRETS_AUDIENCES", "core,everything")
    with pytest.raises(ValueError, match="unknown audience"):
        load_settings()


def test_ssm_audience_must_be_a_json_object(env: pytest.MonkeyPatch, ssm: object) -> None:
    _put(ssm, "/mlp/prod/core", "postgresql://not-json")
    env.setenv("SECRETS_SSM_PATH", "/mlp/prod/")
    env.setenv("SECRETS_AUDIENCES", "core")
    with pytest.raises(ValueError, match="must be a JSON object") as info:
        load_settings()
    assert "not-json" not in str(info.value)


def test_ssm_missing_secret_is_refused(env: pytest.MonkeyPatch, ssm: object) -> None:
    _put_audience(ssm, "prod", "core", {k: v for k, v in CORE.items() if k != "admin_api_key"})
    env.setenv("STAGE", "prod")
    env.setenv("SECRETS_SSM_PATH", "/mlp/prod")
    with pytest.raises(ValidationError, match=r"stage 'prod' refuses .*admin_api_key"):
        load_settings()


def test_ssm_missing_core_is_refused(env: pytest.MonkeyPatch, ssm: object) -> None:
    env.setenv("STAGE", "prod")
    env.setenv("SECRETS_SSM_PATH", "/mlp/prod")
    env.setenv("SECRETS_AUDIENCES", "core")
    with pytest.raises(ValidationError, match=r"database_url \(local default\)"):
        load_settings()


def test_ssm_placeholder_secret_is_refused(env: pytest.MonkeyPatch, ssm: object) -> None:
    _put_audience(ssm, "prod", "core", {**CORE, "upstash_redis_rest_token": "changeme"})
    env.setenv("STAGE", "prod")
    env.setenv("SECRETS_SSM_PATH", "/mlp/prod")
    with pytest.raises(ValidationError, match="upstash_redis_rest_token"):
        load_settings()


def test_settings_model_has_every_ssm_secret_name() -> None:
    # The keys an operator puts into the audiences' JSON objects are the lower-case field names.
    for name in PROD_SECRETS:
        assert name.lower() in Settings.model_fields


# ----------------------------------------------------------------------------------- database URLs
@pytest.mark.parametrize(("url", "pooled"), [
    ("postgresql://u:p@ep-cool-dawn-123456-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require", True),
    ("postgresql://u:p@ep-cool-dawn-123456.us-east-2.aws.neon.tech/neondb?sslmode=require", False),
    ("postgresql://postgres.abcd:p@aws-0-eu-central-1.pooler.supabase.com:6543/postgres", True),
    ("postgresql://postgres:p@db.abcd.supabase.co:5432/postgres", False),
    ("postgresql://app@pgbouncer.internal/app", True),
    ("host=10.0.0.5 port=6432 dbname=app user=app", True),
    ("postgresql://postgres@127.0.0.1:5432/postgres", False),
])
def test_pooled_url_detection(env: pytest.MonkeyPatch, url: str, pooled: bool) -> None:
    env.setenv("DATABASE_URL", url)
    assert get_settings().pooled is pooled
    env.setenv("DATABASE_POOLED", "false" if pooled else "true")  # the explicit setting wins
    reset_settings()
    assert get_settings().pooled is (not pooled)


def test_prepare_threshold_setting(env: pytest.MonkeyPatch) -> None:
    env.setenv("DB_PREPARE_THRESHOLD", "none")
    assert get_settings().db_prepare_threshold is None
    env.setenv("DB_PREPARE_THRESHOLD", "0")
    reset_settings()
    assert get_settings().db_prepare_threshold == 0


def test_direct_url_for_migrations(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql://u@ep-x-pooler.eu-west-2.aws.neon.tech/db")
    env.setenv("DATABASE_DIRECT_URL", "postgresql://u@ep-x.eu-west-2.aws.neon.tech/db")
    s = get_settings()
    assert s.migrations_url == "postgresql://u@ep-x.eu-west-2.aws.neon.tech/db"
    assert s.pooled


@pytest.mark.parametrize(("var", "url", "accepted"), [
    ("DATABASE_URL", "postgresql://gateway:pw@db.example.com/gateway?sslmode=disable", False),
    ("DATABASE_URL", "postgresql://gateway:pw@db.example.com/gateway?sslmode=prefer", False),
    ("DATABASE_URL", "postgresql://gateway:pw@db.example.com/gateway?sslmode=allow", False),
    ("DATABASE_URL", "host=/var/run/postgresql dbname=gateway", False),
    ("DATABASE_DIRECT_URL", "postgresql://gateway:pw@db.example.com/gateway?sslmode=disable", False),
    ("DATABASE_URL", "postgresql://gateway:pw@db.example.com/gateway?sslmode=require", True),
    ("DATABASE_URL", "postgresql://gateway:pw@db.example.com/gateway?sslmode=verify-full", True),
    ("DATABASE_URL", "postgresql://gateway:pw@db.example.com/gateway", True),  # verify-full is added
    ("UPSTASH_REDIS_REST_URL", "http://eu1-fine-cat-12345.upstash.io", False),
])
def test_deployed_stage_refuses_connections_without_tls(env: pytest.MonkeyPatch, var: str, url: str,
                                                        accepted: bool) -> None:
    _prod(env, **{var: url})
    if accepted:
        assert get_settings().deployed
        return
    with pytest.raises(ValidationError) as info:
        get_settings()
    assert "refuses connections without TLS" in str(info.value)
    assert var.lower() in str(info.value)
    assert "pw@" not in str(info.value)


def test_local_stage_accepts_plain_connections(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable")
    assert get_settings().database_url.endswith("sslmode=disable")


@pytest.mark.parametrize("issuer,audience,ok", [("https://id.example/", "dashboard", True),
                                                ("", "dashboard", False), ("https://id.example/", "", False),
                                                (" ", " ", False)])
def test_deployed_stage_refuses_jwks_without_issuer_and_audience(env: pytest.MonkeyPatch, issuer: str,
                                                                 audience: str, ok: bool) -> None:
    """A JWKS verifies every token its identity provider signs, for any application: a deployed
    stage pins whose tokens (issuer) for what (audience)."""
    _prod(env, JWT_JWKS_URL="https://id.example/.well-known/jwks.json", JWT_ISSUER=issuer, JWT_AUDIENCE=audience)
    if ok:
        assert get_settings().jwt_issuer == issuer
    else:
        with pytest.raises(ValidationError, match="JWT_JWKS_URL without JWT_ISSUER and JWT_AUDIENCE"):
            get_settings()
    env.setenv("STAGE", "test")   # locally a bare JWKS is fine (tests, the dev stack)
    reset_settings()
    assert get_settings().jwt_jwks_url


def test_identity_audience_is_the_stacks_own_parameter() -> None:
    from gateway.config import secret_parameter_names

    assert secret_parameter_names("/mlp/prod/", ["core", "identity"]) == ["/mlp/prod/core", "/mlp/prod/identity"]
    assert secret_parameter_names("/mlp/prod", ["core", "identity"], "/mlp/prod/mlp-prod/identity") == [
        "/mlp/prod/core", "/mlp/prod/mlp-prod/identity"]


def test_redis_prefix_is_derived_from_the_database(env: pytest.MonkeyPatch) -> None:
    """Two stacks on different databases sharing one Upstash database never share keys."""
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/stack_a")
    a = get_settings().ratelimit_prefix
    reset_settings()
    env.setenv("DATABASE_URL", "postgresql://other@127.0.0.1:5432/stack_a?sslmode=disable")
    assert get_settings().ratelimit_prefix == a  # same database, other user/options: same keys
    reset_settings()
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/stack_b")
    b = get_settings().ratelimit_prefix
    assert a.startswith("mlp-") and b.startswith("mlp-") and a != b
    reset_settings()
    env.setenv("RATELIMIT_PREFIX", "explicit")
    assert get_settings().ratelimit_prefix == "explicit"


# ----------------------------------------------------------------------------------- .env file
def test_a_dotenv_file_is_read_below_the_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DB_POOL_MAX=7\nAUTH_CACHE_TTL_S=9\nNOT_A_SETTING=x\n")
    env.setenv("AUTH_CACHE_TTL_S", "3")
    s = get_settings()
    assert s.db_pool_max == 7  # from .env
    assert s.auth_cache_ttl_s == 3.0  # the environment wins over .env, as pydantic-settings orders them
    assert not hasattr(s, "not_a_setting")  # extra="ignore"


def test_without_a_dotenv_file_its_source_is_not_asked(env: pytest.MonkeyPatch) -> None:
    """No ``.env`` (every deployed function): the same settings, one source fewer walking the fields."""
    env.setenv("DB_POOL_MAX", "5")
    asked: list[str] = []
    original = Settings._settings_build_values.__func__  # type: ignore[attr-defined]

    def spy(cls: type[Settings], sources: tuple[object, ...], init_kwargs: dict[str, object]) -> object:
        asked.extend(type(s).__name__ for s in sources)
        return original(cls, sources, init_kwargs)

    env.setattr(Settings, "_settings_build_values", classmethod(spy))
    assert get_settings().db_pool_max == 5
    assert "DotEnvSettingsSource" not in asked and "EnvSettingsSource" in asked


def test_the_quota_map_is_built_once_per_tier_table(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    first = settings.quotas()
    assert first == {**first} and settings.quotas() is first
    monkeypatch.setenv("TIERS_JSON", '{"free": {"rpm": 5, "monthly_quota": 7}}')
    reset_settings()
    try:
        changed = get_settings()
        assert changed.quotas() != first and changed.quotas()["free"] == 7  # a new table: built again
    finally:
        monkeypatch.undo()
        reset_settings()


_SSM_WITHOUT_BOTO3 = """
import json, sys
sys.modules["boto3"] = None  # any import of boto3 (or of Powertools' parameters utility) fails
sys.modules["aws_lambda_powertools.utilities.parameters"] = None
import botocore.session
from botocore.stub import Stubber

create_client = botocore.session.Session.create_client
seen = []

def stubbed(self, service, *args, **kwargs):
    client = create_client(self, service, *args, region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="y")
    stub = Stubber(client)
    names = ["/mlp/prod/core", "/mlp/prod/billing"]
    stub.add_response("get_parameters", {
        "Parameters": [{"Name": "/mlp/prod/core", "Value": json.dumps({"admin_api_key": "from-ssm-" + "k" * 24}),
                        "Type": "SecureString"}],
        "InvalidParameters": ["/mlp/prod/billing"]}, {"Names": names, "WithDecryption": True})
    stub.activate()
    seen.append(service)
    return client

botocore.session.Session.create_client = stubbed
from gateway.config import load_settings
s = load_settings(secrets_ssm_path="/mlp/prod/", secrets_audiences="core,billing")
print(json.dumps([seen, s.admin_api_key, "boto3" in sys.modules and sys.modules["boto3"] is not None]))
"""


def test_ssm_secrets_are_read_with_botocore_alone(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The cold start's one GetParameters call (decrypted, both audiences' names, a missing one
    skipped) goes through botocore's SSM client: neither boto3 nor Powertools' parameters utility is
    imported for it (~30 ms of a deployed cold start; BENCHMARKS.md, issue 15, import lane)."""
    import subprocess
    import sys

    pytest.importorskip("botocore")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _SSM_WITHOUT_BOTO3], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "layers" / "common"),
                              "STAGE": "test", "AWS_DEFAULT_REGION": "us-east-1"}, timeout=60)
    assert out.returncode == 0, out.stderr
    seen, admin_key, boto3_imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == ["ssm"] and admin_key == "from-ssm-" + "k" * 24 and boto3_imported is False
