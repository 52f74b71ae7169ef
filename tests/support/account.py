"""Fixtures and helpers for the account tests (tests/integration/test_account_*.py).

``api`` is an httpx client on the local stack's router: every route of template.yaml mounted
exactly as declared (infra.local.devserver.build_router), i.e. the same FastAPI apps Mangum wraps.
JWT helpers sign tokens with keys generated here; ``jwks_server`` serves their public halves.
Every secret made here is registered with tests/support/secret_log.py.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import auth
from gateway.account import byok, identity
from gateway.catalog import registry
from gateway.config import reset_settings
from infra.local.servers import RunningServer, start_in_thread
from tests.conftest import ADMIN_KEY
from tests.support import secret_log
from tests.support.services import template_router

ISSUER = "https://id.test.example/"
AUDIENCE = "mlp-dashboard"
HS_SECRET = "hs256-test-secret-" + secrets.token_hex(24)
secret_log.register(HS_SECRET)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_KEY)


def master_key(name: str) -> str:
    key = f"{name}:{secrets.token_hex(32)}"
    secret_log.register(key)
    return key


def provider_secret(prefix: str = "sk-byok-") -> str:
    value = prefix + secrets.token_urlsafe(24)
    secret_log.register(value)
    return value


# --------------------------------------------------------------------------- the app
@pytest.fixture(scope="session")
def gateway_router(stack: str, fake_upstream: RunningServer) -> Any:
    return template_router()


@pytest.fixture
async def api(gateway_router: Any, fake_upstream: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    registry.invalidate()
    identity.reset_caches()
    byok.clear_cache()
    httpx.delete(fake_upstream.url + "/__fake/requests")
    transport = httpx.ASGITransport(app=gateway_router, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as client:
        yield client


def upstream_requests(fake: RunningServer, provider: str | None = None) -> list[dict[str, Any]]:
    params = {"provider": provider} if provider else None
    return list(httpx.get(fake.url + "/__fake/requests", params=params).json())


def chat_body(model: str = "openai/gpt-4o-mini", text: str = "Hello there", max_tokens: int = 16) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``set_env(NAME=value, ...)``: change settings for one test (settings re-read; caches dropped)."""

    def _set(**values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_settings()
        auth.forget_key()
        identity.reset_caches()
        byok.clear_cache()

    yield _set
    reset_settings()
    auth.forget_key()
    identity.reset_caches()
    byok.clear_cache()


# --------------------------------------------------------------------------- JWTs
@dataclass
class SigningKeys:
    rsa_private: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec_private: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    rsa_kid: str = field(default_factory=lambda: "rsa-" + uuid.uuid4().hex[:8])
    ec_kid: str = field(default_factory=lambda: "ec-" + uuid.uuid4().hex[:8])

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_private.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_private.public_key()))
        return {"keys": [{**rsa_jwk, "kid": self.rsa_kid, "use": "sig", "alg": "RS256"},
                         {**ec_jwk, "kid": self.ec_kid, "use": "sig", "alg": "ES256"}]}


def claims(sub: str | None = None, *, exp_in: float = 300, iss: str | None = ISSUER, aud: str | None = AUDIENCE,
           **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub or f"user-{uuid.uuid4().hex[:12]}", "iat": now, "exp": int(now + exp_in)}
    if iss is not None:
        body["iss"] = iss
    if aud is not None:
        body["aud"] = aud
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def sign(payload: dict[str, Any], key: Any, alg: str, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid else None
    token = jwt.encode(payload, key, algorithm=alg, headers=headers)
    secret_log.register(token)
    return token


def hs256(sub: str | None = None, secret: str = HS_SECRET, **kw: Any) -> str:
    return sign(claims(sub, **kw), secret, "HS256")


@pytest.fixture
def hs256_env(set_env: Any) -> Any:
    set_env(JWT_HS256_SECRET=HS_SECRET, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE, JWT_JWKS_URL=None)
    return set_env


class JwksServer:
    def __init__(self, keys: SigningKeys) -> None:
        self.keys = keys
        self.extra: list[dict[str, Any]] = []
        self.fetches = 0
        self.fail = False
        self.running: RunningServer | None = None

    def app(self) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.fetches += 1
            if self.fail:
                return JSONResponse({"error": "down"}, status_code=503)
            body = self.keys.jwks()
            body["keys"] += self.extra
            return JSONResponse(body)

        return Starlette(routes=[Route("/.well-known/jwks.json", jwks)])

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.url + "/.well-known/jwks.json"

    def rs256(self, sub: str | None = None, **kw: Any) -> str:
        return sign(claims(sub, **kw), self.keys.rsa_private, "RS256", self.keys.rsa_kid)

    def es256(self, sub: str | None = None, **kw: Any) -> str:
        return sign(claims(sub, **kw), self.keys.ec_private, "ES256", self.keys.ec_kid)


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer(SigningKeys())
    server.running = start_in_thread(server.app())
    yield server
    server.running.stop()


@pytest.fixture
def jwks_env(set_env: Any, jwks_server: JwksServer) -> JwksServer:
    jwks_server.fail = False
    jwks_server.extra = []
    set_env(JWT_JWKS_URL=jwks_server.url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE, JWT_HS256_SECRET=None)
    return jwks_server


# --------------------------------------------------------------------------- misc
async def create_key(api: httpx.AsyncClient, token: str, **body: Any) -> dict[str, Any]:
    r = await api.post("/v1/keys", json=body, headers=bearer(token))
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    secret_log.register(data["key"])
    return data


def d(value: Any) -> Decimal:
    return Decimal(str(value))


def env_for_subprocess(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
