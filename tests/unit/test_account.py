"""Account building blocks without services: BYOK sealing and master keys, config validation of
BYOK_MASTER_KEYS (never echoing key material), time/cursor parsing, JWT shape detection, money
strings, and the three function apps' routes."""

from __future__ import annotations

import datetime as dt
import importlib.util
import secrets
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.account import byok, identity, usage
from gateway.auth import SealedProviderKey
from gateway.config import Settings, reset_settings
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.money.format import money
from tests.support import secret_log

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def _set(value: str | None, stage: str = "test") -> None:
        if stage not in ("local", "test"):  # a deployed stage needs its other required secrets
            from tests.unit.test_config import PROD_SECRETS

            for name, setting in PROD_SECRETS.items():
                monkeypatch.setenv(name, setting)
        if value is None:
            monkeypatch.delenv("BYOK_MASTER_KEYS", raising=False)
        else:
            secret_log.register(value)
            monkeypatch.setenv("BYOK_MASTER_KEYS", value)
        monkeypatch.setenv("STAGE", stage)
        reset_settings()
        byok.clear_cache()

    yield _set
    reset_settings()
    byok.clear_cache()


def test_seal_and_unseal_round_trip(keys_env: Any) -> None:
    keys_env(f"a:{secrets.token_hex(32)},b:{secrets.token_hex(32)}")
    user = uuid.uuid4()
    sealed = byok.seal(user, "openai", "sk-live-1234567890")
    assert sealed.key_version == "b" and len(sealed.nonce) == 12
    assert b"sk-live" not in sealed.ciphertext
    assert byok.unseal(user, sealed) == "sk-live-1234567890"
    assert byok.seal(user, "openai", "sk-live-1234567890").nonce != sealed.nonce, "a fresh nonce every time"
    tampered = SealedProviderKey(sealed.provider, sealed.key_version, sealed.nonce,
                                 sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1]))
    with pytest.raises(byok.ByokDecryptError):
        byok.unseal(user, tampered)
    with pytest.raises(byok.ByokDecryptError):
        byok.unseal(uuid.uuid4(), sealed)


def test_lazy_mapping_decrypts_on_access_only(keys_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    keys_env(f"v1:{secrets.token_hex(32)}")
    user = uuid.uuid4()
    sealed = [byok.seal(user, "openai", "sk-one-1234567890"), byok.seal(user, "gemini", "gm-two-1234567890")]
    opened: list[str] = []
    real = byok.unseal

    def counting(u: Any, s: SealedProviderKey) -> str:
        opened.append(s.provider)
        return real(u, s)

    monkeypatch.setattr(byok, "unseal", counting)
    mapping = byok.keys_for(user, sealed)
    assert "openai" in mapping and "anthropic" not in mapping and len(mapping) == 2 and opened == []
    assert mapping["openai"] == "sk-one-1234567890" and opened == ["openai"]
    assert byok.keys_for(user, sealed)["openai"] == "sk-one-1234567890" and opened == ["openai"], "cached"
    with pytest.raises(KeyError):
        mapping["anthropic"]


def test_local_stage_falls_back_to_the_public_dev_key_but_a_deployed_stage_does_not(keys_env: Any) -> None:
    keys_env(None)
    assert byok.master_keys().current == "local-dev"
    keys_env(None, stage="prod")
    with pytest.raises(ServiceUnavailable) as exc:
        byok.master_keys()
    assert exc.value.code == "byok_not_configured"


@pytest.mark.parametrize("value", ["v1:abcd", "v1", ":" + "a" * 64, "v1:" + "g" * 64,
                                   "v1:" + "a" * 64 + ",v1:" + "b" * 64, "bad name:" + "a" * 64])
def test_invalid_master_keys_fail_at_cold_start_without_echoing_them(value: str) -> None:
    secret_log.register(value)
    with pytest.raises(ValidationError) as exc:
        Settings(byok_master_keys=value)
    assert "BYOK_MASTER_KEYS" in str(exc.value)
    assert value not in str(exc.value) and "a" * 32 not in str(exc.value)


def test_provider_and_secret_validation() -> None:
    assert byok.validate_provider(" OpenAI ") == "openai"
    with pytest.raises(BadRequest):
        byok.validate_provider("azure")
    assert byok.validate_secret("  sk-abc-12345  ") == "sk-abc-12345"
    for bad in ("short", "with space 12345", "tab\tseparated-key", "x" * 513, "ключ-ключ-ключ"):
        with pytest.raises(BadRequest) as exc:
            byok.validate_secret(bad)
        assert bad not in exc.value.message


@pytest.mark.parametrize("value, end, expected", [
    ("2025-01-31", False, dt.datetime(2025, 1, 31, tzinfo=dt.UTC)),
    ("2025-01-31", True, dt.datetime(2025, 2, 1, tzinfo=dt.UTC)),
    ("2025-01-31T10:00:00Z", True, dt.datetime(2025, 1, 31, 10, tzinfo=dt.UTC)),
    ("2025-01-31T10:00:00", False, dt.datetime(2025, 1, 31, 10, tzinfo=dt.UTC)),
    ("2025-01-31T12:00:00+02:00", False, dt.datetime(2025, 1, 31, 10, tzinfo=dt.UTC)),
    ("2025-01-31T12:00:00 02:00", False, dt.datetime(2025, 1, 31, 10, tzinfo=dt.UTC)),
    ("1738317600", False, dt.datetime(2025, 1, 31, 10, tzinfo=dt.UTC)),
    ("", False, None),
])
def test_parse_time(value: str, end: bool, expected: dt.datetime | None) -> None:
    assert usage.parse_time(value, "from", end_of_day=end) == expected


@pytest.mark.parametrize("value", ["yesterday", "2025-02-30", "2025-01-31T25:00", "12", "1e9"])
def test_parse_time_rejects(value: str) -> None:
    with pytest.raises(BadRequest) as exc:
        usage.parse_time(value, "to")
    assert exc.value.param == "to"


def test_cursor_round_trip_and_garbage() -> None:
    ts = dt.datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    assert usage.decode_cursor(usage.encode_cursor(ts, 42)) == (ts, 42)
    for bad in ("", "!!!", "bm8", usage.encode_cursor(ts, 1)[:-3] + "AAA"):
        with pytest.raises(BadRequest):
            usage.decode_cursor(bad)


def test_jwt_shape_and_money() -> None:
    assert identity.looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_")
    assert identity.looks_like_jwt("a.b.")
    assert not identity.looks_like_jwt("sk-mlp-abc") and not identity.looks_like_jwt("a.b")
    assert not identity.looks_like_jwt("a.b.c.d") and not identity.looks_like_jwt("a.b c.d")
    assert money(Decimal("1.5")) == "1.50000000" and money(None) is None and money(0) == "0.00000000"
    assert money(Decimal("-0.00000001")) == "-0.00000001"


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("fn_unit_" + path.replace("/", "_").removesuffix(".py"),
                                                  ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path, routes", [
    ("functions/balance/app.py", {("GET", "/v1/balance"), ("GET", "/v1/usage"), ("GET", "/v1/usage/summary"),
                                  ("GET", "/v1/key"), ("GET", "/v1/credits")}),
    ("functions/keys/app.py", {("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/{key_id}"),
                               ("GET", "/v1/provider-keys"), ("PUT", "/v1/provider-keys/{provider}"),
                               ("GET", "/v1/provider-keys/{provider}"), ("DELETE", "/v1/provider-keys/{provider}")}),
    ("functions/admin/app.py", {("POST", "/v1/admin/users"), ("POST", "/v1/admin/credits"),
                                ("GET", "/v1/admin/users/{user_id}")}),
])
def test_function_apps(path: str, routes: set[tuple[str, str]]) -> None:
    module = _load(path)
    assert callable(module.handler)
    paths = module.app.openapi()["paths"]
    found = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert found == routes
