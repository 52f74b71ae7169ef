"""Sign-in with a JWT on the dashboard routes: HS256 (shared secret) and RS256/ES256 through a
local JWKS server, with issuer/audience/expiry/leeway checks; first sight of a `sub` provisions
the user with the welcome credit exactly once, even under 50 concurrent first requests."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from base64 import urlsafe_b64encode
from decimal import Decimal
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import db
from gateway.account import identity
from gateway.billing import ledger
from gateway.config import get_settings
from tests.support.account import (  # noqa: F401  (fixtures)
    HS_SECRET,
    JwksServer,
    api,
    bearer,
    chat_body,
    claims,
    create_key,
    gateway_router,
    hs256,
    hs256_env,
    jwks_env,
    jwks_server,
    set_env,
    sign,
)

pytestmark = pytest.mark.integration


async def _users_with_sub(sub: str) -> list[dict[str, Any]]:
    return await db.fetchall("SELECT id, email, tier FROM users WHERE external_sub = %s", (sub,))


async def _welcome_rows(user_id: Any) -> list[dict[str, Any]]:
    return await db.fetchall("SELECT amount, reference FROM ledger_entries WHERE user_id = %s AND kind = 'welcome'",
                             (user_id,))


async def test_hs256_sign_in_provisions_once_with_welcome_credit(api: Any, hs256_env: Any) -> None:
    sub = f"supabase|{uuid.uuid4()}"
    r = await api.get("/v1/balance", headers=bearer(hs256(sub, email="New.Person@example.com")))
    assert r.status_code == 200, r.text
    body = r.json()
    welcome = get_settings().welcome_credit
    assert Decimal(body["balance"]) == welcome and body["tier"] == "free" and "api_key" not in body
    (user,) = await _users_with_sub(sub)
    assert user["email"] == "New.Person@example.com"
    assert await _welcome_rows(user["id"]) == [{"amount": welcome, "reference": f"welcome:{user['id']}"}]

    identity.reset_caches()  # a cold container sees the same user, no second credit
    r = await api.get("/v1/balance", headers=bearer(hs256(sub)))
    assert r.status_code == 200 and Decimal(r.json()["balance"]) == welcome
    assert len(await _users_with_sub(sub)) == 1 and len(await _welcome_rows(user["id"])) == 1
    assert await ledger.invariant_violations() == []


async def test_welcome_credit_once_under_50_concurrent_first_requests(api: Any, jwks_env: JwksServer) -> None:
    sub = f"auth0|{uuid.uuid4().hex}"
    tokens = [jwks_env.rs256(sub) if i % 2 else jwks_env.es256(sub) for i in range(50)]
    responses = await asyncio.gather(*(api.get("/v1/balance", headers=bearer(t)) for t in tokens))
    assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
    (user,) = await _users_with_sub(sub)
    assert len(await _welcome_rows(user["id"])) == 1
    bal = await ledger.get_balance(user["id"])
    assert bal is not None and bal["balance"] == get_settings().welcome_credit
    assert {r.json()["balance"] for r in responses} == {f"{get_settings().welcome_credit:.8f}"}
    assert await ledger.invariant_violations() == []


async def test_welcome_credit_is_configurable(api: Any, hs256_env: Any) -> None:
    hs256_env(WELCOME_CREDIT="2.5")
    r = await api.get("/v1/balance", headers=bearer(hs256()))
    assert r.status_code == 200 and r.json()["balance"] == "2.50000000"
    hs256_env(WELCOME_CREDIT="0")
    sub = f"zero-{uuid.uuid4().hex}"
    r = await api.get("/v1/balance", headers=bearer(hs256(sub)))
    assert r.status_code == 200 and r.json()["balance"] == "0.00000000"
    (user,) = await _users_with_sub(sub)
    assert await _welcome_rows(user["id"]) == []


async def test_leeway_and_expiry(api: Any, hs256_env: Any) -> None:
    hs256_env(JWT_LEEWAY_S="30")
    assert (await api.get("/v1/balance", headers=bearer(hs256(exp_in=-10)))).status_code == 200
    r = await api.get("/v1/balance", headers=bearer(hs256(exp_in=-60)))
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    r = await api.get("/v1/balance", headers=bearer(hs256(nbf=int(time.time()) + 300)))
    assert r.status_code == 401


@pytest.mark.parametrize("case", ["wrong_audience", "wrong_issuer", "no_audience", "no_issuer", "no_exp", "no_sub",
                                  "bad_signature", "alg_none", "garbage", "empty_sub", "long_sub"])
async def test_invalid_tokens_are_401_and_provision_nothing(api: Any, hs256_env: Any, case: str) -> None:
    sub = f"bad-{uuid.uuid4().hex}"
    token = {
        "wrong_audience": lambda: hs256(sub, aud="someone-else"),
        "wrong_issuer": lambda: hs256(sub, iss="https://evil.example/"),
        "no_audience": lambda: hs256(sub, aud=None),
        "no_issuer": lambda: hs256(sub, iss=None),
        "no_exp": lambda: sign({k: v for k, v in claims(sub).items() if k != "exp"}, HS_SECRET, "HS256"),
        "no_sub": lambda: sign({k: v for k, v in claims(sub).items() if k != "sub"}, HS_SECRET, "HS256"),
        "bad_signature": lambda: hs256(sub, secret="not-the-secret-" + "x" * 32),
        "alg_none": lambda: jwt.encode(claims(sub), None, algorithm="none"),
        "garbage": lambda: "eyJhbGciOiJIUzI1NiJ9.bm90LWpzb24.c2ln",
        "empty_sub": lambda: hs256(" "),
        "long_sub": lambda: hs256("s" * 300),
    }[case]()
    r = await api.get("/v1/balance", headers=bearer(token))
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["type"] == "authentication_error"
    assert token not in r.text
    assert await _users_with_sub(sub) == []


async def test_rs256_and_es256_via_jwks(api: Any, jwks_env: JwksServer) -> None:
    sub = f"cognito-{uuid.uuid4()}"
    assert (await api.get("/v1/balance", headers=bearer(jwks_env.rs256(sub)))).status_code == 200
    assert (await api.get("/v1/usage", headers=bearer(jwks_env.es256(sub)))).status_code == 200
    assert len(await _users_with_sub(sub)) == 1
    fetches = jwks_env.fetches
    for _ in range(3):
        assert (await api.get("/v1/balance", headers=bearer(jwks_env.rs256(sub)))).status_code == 200
    assert jwks_env.fetches == fetches, "the JWKS is cached"

    # a key that is not in the JWKS (same kid, different key) fails the signature check
    stranger = rsa.generate_private_key(65537, 2048)
    forged = sign(claims(sub), stranger, "RS256", jwks_env.keys.rsa_kid)
    r = await api.get("/v1/balance", headers=bearer(forged))
    assert r.status_code == 401 and "signature" in r.json()["error"]["message"]
    # an unknown kid
    r = await api.get("/v1/balance", headers=bearer(sign(claims(sub), stranger, "RS256", "unknown-kid")))
    assert r.status_code == 401
    # HS256 is refused when only a JWKS is configured: no algorithm confusion with the public key
    pem = jwks_env.keys.rsa_private.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    def b64(b: bytes) -> str:
        return urlsafe_b64encode(b).decode().rstrip("=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": jwks_env.keys.rsa_kid}).encode())
    payload = b64(json.dumps(claims(sub)).encode())
    mac = hmac.new(pem, f"{head}.{payload}".encode(), "sha256").digest()
    r = await api.get("/v1/balance", headers=bearer(f"{head}.{payload}.{b64(mac)}"))
    assert r.status_code == 401
    # RS256 header on the EC key (alg/key mismatch)
    r = await api.get("/v1/balance", headers=bearer(sign(claims(sub), jwks_env.keys.rsa_private, "RS256",
                                                         jwks_env.keys.ec_kid)))
    assert r.status_code == 401


async def test_jwks_key_rotation_and_outage(api: Any, jwks_env: JwksServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "JWKS_MIN_REFRESH_S", 0.0)
    sub = f"rot-{uuid.uuid4()}"
    assert (await api.get("/v1/balance", headers=bearer(jwks_env.rs256(sub)))).status_code == 200
    new_key = rsa.generate_private_key(65537, 2048)
    new_jwk = _json_jwk(new_key, "rotated-kid")
    jwks_env.extra = [new_jwk]  # the identity provider publishes a new key
    r = await api.get("/v1/balance", headers=bearer(sign(claims(sub), new_key, "RS256", "rotated-kid")))
    assert r.status_code == 200, r.text

    identity.reset_caches()
    jwks_env.fail = True
    r = await api.get("/v1/balance", headers=bearer(jwks_env.rs256(sub)))
    assert r.status_code == 503 and r.json()["error"]["code"] == "jwks_unavailable"
    jwks_env.fail = False


def _json_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig",
            "alg": "RS256"}


async def test_jwt_users_use_every_dashboard_route_but_not_the_query_route(api: Any, hs256_env: Any) -> None:
    token = hs256()
    h = bearer(token)
    assert (await api.get("/v1/balance", headers=h)).status_code == 200
    assert (await api.get("/v1/usage", headers=h)).status_code == 200
    assert (await api.get("/v1/usage/summary", headers=h)).status_code == 200
    key = await create_key(api, token, name="made from the dashboard")
    assert (await api.get("/v1/keys", headers=h)).json()["data"][0]["id"] == key["id"]
    assert (await api.put("/v1/provider-keys/openai", json={"api_key": "sk-dashboard-key-1234"},
                          headers=h)).status_code == 201
    assert (await api.delete(f"/v1/keys/{key['id']}", headers=h)).status_code == 200
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=h)
    assert r.status_code == 401, "the query path takes API keys only"
    assert (await api.post("/v1/admin/credits", json={}, headers=h)).status_code == 403


async def test_api_key_and_jwt_of_the_same_user_see_the_same_account(api: Any, hs256_env: Any) -> None:
    sub = f"same-{uuid.uuid4()}"
    token = hs256(sub)
    key = await create_key(api, token, name="k")
    a = (await api.get("/v1/balance", headers=bearer(token))).json()
    b = (await api.get("/v1/balance", headers=bearer(key["key"]))).json()
    assert a["balance"] == b["balance"] and b["api_key"]["id"] == key["id"]


async def test_email_taken_by_another_user_is_not_linked(api: Any, hs256_env: Any, make_user: Any) -> None:
    existing = await make_user(email="taken@example.com")
    sub = f"dup-{uuid.uuid4()}"
    r = await api.get("/v1/balance", headers=bearer(hs256(sub, email="TAKEN@example.com")))
    assert r.status_code == 200
    (user,) = await _users_with_sub(sub)
    assert user["id"] != existing.user_id and user["email"] is None
    unverified = f"unv-{uuid.uuid4()}"
    await api.get("/v1/balance", headers=bearer(hs256(unverified, email="x@example.com", email_verified=False)))
    assert (await _users_with_sub(unverified))[0]["email"] is None


async def test_tokens_are_refused_when_sign_in_is_not_configured(api: Any, set_env: Any) -> None:
    set_env(JWT_HS256_SECRET=None, JWT_JWKS_URL=None)
    r = await api.get("/v1/balance", headers=bearer(hs256()))
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("Invalid credentials")

