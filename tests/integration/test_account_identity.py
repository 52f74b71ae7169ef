"""Sign-in with a JWT on the dashboard routes: HS256 (shared secret) and RS256/ES256 through a
local JWKS server, with issuer/audience/expiry/leeway checks; first sight of an (issuer, subject)
provisions the user exactly once, even under 50 concurrent first requests, with the welcome
credit only for a verified email new to us, throttled per source address."""

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

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import db, upstash
from gateway.account import identity
from gateway.config import get_settings
from gateway.money import ledger
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


def _new_email() -> str:
    return f"New.Person.{uuid.uuid4().hex[:10]}@example.com"


async def test_hs256_sign_in_provisions_once_with_welcome_credit(api: Any, hs256_env: Any) -> None:
    sub, email = f"supabase|{uuid.uuid4()}", _new_email()
    r = await api.get("/v1/balance", headers=bearer(hs256(sub, email=email, email_verified=True)))
    assert r.status_code == 200, r.text
    body = r.json()
    welcome = get_settings().jwt_welcome_credit
    assert Decimal(body["balance"]) == welcome and body["tier"] == "free" and "api_key" not in body
    (user,) = await _users_with_sub(sub)
    assert user["email"] == email
    assert await _welcome_rows(user["id"]) == [{"amount": welcome, "reference": f"welcome:{user['id']}"}]

    identity.reset_caches()  # a cold container sees the same user, no second credit
    r = await api.get("/v1/balance", headers=bearer(hs256(sub)))
    assert r.status_code == 200 and Decimal(r.json()["balance"]) == welcome
    assert len(await _users_with_sub(sub)) == 1 and len(await _welcome_rows(user["id"])) == 1
    assert await ledger.invariant_violations() == []


async def test_welcome_credit_once_under_50_concurrent_first_requests(api: Any, jwks_env: JwksServer) -> None:
    sub, email = f"auth0|{uuid.uuid4().hex}", _new_email()
    tokens = [jwks_env.rs256(sub, email=email, email_verified=True) if i % 2
              else jwks_env.es256(sub, email=email, email_verified=True) for i in range(50)]
    responses = await asyncio.gather(*(api.get("/v1/balance", headers=bearer(t)) for t in tokens))
    assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
    (user,) = await _users_with_sub(sub)
    assert len(await _welcome_rows(user["id"])) == 1
    bal = await ledger.get_balance(user["id"])
    assert bal is not None and bal["balance"] == get_settings().jwt_welcome_credit
    assert {r.json()["balance"] for r in responses} == {f"{get_settings().jwt_welcome_credit:.8f}"}
    assert await ledger.invariant_violations() == []


async def test_welcome_credit_is_configurable(api: Any, hs256_env: Any) -> None:
    hs256_env(JWT_WELCOME_CREDIT="2.5", WELCOME_CREDIT="99")   # admin/CLI users' amount does not apply
    r = await api.get("/v1/balance", headers=bearer(hs256(email=_new_email(), email_verified=True)))
    assert r.status_code == 200 and r.json()["balance"] == "2.50000000"
    hs256_env(JWT_WELCOME_CREDIT="0")
    sub = f"zero-{uuid.uuid4().hex}"
    r = await api.get("/v1/balance", headers=bearer(hs256(sub, email=_new_email(), email_verified=True)))
    assert r.status_code == 200 and r.json()["balance"] == "0.00000000"
    (user,) = await _users_with_sub(sub)
    assert await _welcome_rows(user["id"]) == []


async def test_welcome_credit_only_for_a_verified_email_new_to_us(api: Any, hs256_env: Any, make_user: Any) -> None:
    """No email, an unverified one, or a mailbox that already had a credit or an account (the same
    Gmail with dots, a +tag, other case): the user is created, without the welcome credit."""
    welcome = f"{get_settings().jwt_welcome_credit:.8f}"

    async def balance_of(token: str) -> str:
        r = await api.get("/v1/balance", headers=bearer(token))
        assert r.status_code == 200, r.text
        return str(r.json()["balance"])

    local = f"jane.doe.{uuid.uuid4().hex[:8]}"
    assert await balance_of(hs256()) == "0.00000000", "no email"
    assert await balance_of(hs256(email=f"{local}@gmail.com")) == "0.00000000", "email_verified missing"
    assert await balance_of(hs256(email=f"{local}@gmail.com", email_verified=False)) == "0.00000000"
    assert await balance_of(hs256(email=f"{local}@gmail.com", email_verified=True)) == welcome
    for variant in (f"{local.replace('.', '')}@gmail.com", f"{local}+farm1@gmail.com",
                    f"{local.upper()}@googlemail.com"):
        assert await balance_of(hs256(email=variant, email_verified=True)) == "0.00000000", variant
    admin_made = await make_user(email=f"ops-{uuid.uuid4().hex[:8]}@example.com")
    email = (await db.fetchone("SELECT email FROM users WHERE id = %s", (admin_made.user_id,)) or {})["email"]
    assert await balance_of(hs256(email=email.upper(), email_verified=True)) == "0.00000000"
    rows = await db.fetchall("SELECT count(*) AS n FROM ledger_entries WHERE kind = 'welcome'")
    assert rows[0]["n"] == 2, "the verified new email, and the make_user fixture's own balance"


async def test_identities_are_issuer_and_subject(api: Any, set_env: Any) -> None:
    """Two issuers may use the same `sub` for two people; a user provisioned before identities
    had an issuer is adopted by its subject's first token."""
    set_env(JWT_HS256_SECRET=HS_SECRET, JWT_ISSUER=None, JWT_AUDIENCE=None, JWT_JWKS_URL=None)
    sub = f"shared-{uuid.uuid4().hex}"
    a = (await api.get("/v1/balance", headers=bearer(hs256(sub, iss="https://a.example/", aud=None)))).status_code
    b = (await api.get("/v1/balance", headers=bearer(hs256(sub, iss="https://b.example/", aud=None)))).status_code
    assert a == b == 200
    users = await db.fetchall("SELECT external_iss FROM users WHERE external_sub = %s ORDER BY external_iss", (sub,))
    assert [u["external_iss"] for u in users] == ["https://a.example/", "https://b.example/"]

    legacy_sub = f"legacy-{uuid.uuid4().hex}"
    legacy = await db.fetchone("INSERT INTO users (external_sub) VALUES (%s) RETURNING id", (legacy_sub,))
    assert legacy is not None
    await db.execute("INSERT INTO balances (user_id, balance) VALUES (%s, 3)", (legacy["id"],))
    r = await api.get("/v1/balance", headers=bearer(hs256(legacy_sub, iss="https://a.example/", aud=None)))
    assert r.status_code == 200 and r.json()["balance"] == "3.00000000", "the same account as before"
    assert (await db.fetchone("SELECT external_iss FROM users WHERE id = %s", (legacy["id"],)) or {})[
        "external_iss"] == "https://a.example/"
    identity.reset_caches()
    r = await api.get("/v1/balance", headers=bearer(hs256(legacy_sub, iss="https://b.example/", aud=None)))
    assert r.status_code == 200 and r.json()["balance"] == "0.00000000", "another issuer: another person"


async def test_sign_ups_are_throttled_per_source(api: Any, hs256_env: Any, gateway_router: Any) -> None:
    """JWT_PROVISION_PER_HOUR new identities per source address and hour; concurrent first
    requests of one identity are one sign-up; known users and other addresses are not affected."""
    hs256_env(JWT_PROVISION_PER_HOUR="2")
    first = [hs256(email=_new_email(), email_verified=True) for _ in range(2)]
    burst = await asyncio.gather(*(api.get("/v1/usage", headers=bearer(first[0])) for _ in range(10)))
    assert [r.status_code for r in burst] == [200] * 10
    assert (await api.get("/v1/balance", headers=bearer(first[1]))).status_code == 200
    third_sub = f"third-{uuid.uuid4().hex}"
    r = await api.get("/v1/balance", headers=bearer(hs256(third_sub, email=_new_email(), email_verified=True)))
    assert r.status_code == 429 and r.json()["error"]["code"] == "provisioning_rate_limited", r.text
    assert int(r.headers["retry-after"]) > 0
    assert await _users_with_sub(third_sub) == [], "the refused sign-up left nothing behind"
    identity.reset_caches()
    assert (await api.get("/v1/balance", headers=bearer(first[0]))).status_code == 200, "known users sign in"
    elsewhere = httpx.ASGITransport(app=gateway_router, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=elsewhere, base_url="http://gateway.test") as other:
        r = await other.get("/v1/balance", headers=bearer(hs256(third_sub, email=_new_email(), email_verified=True)))
        assert r.status_code == 200, r.text


async def test_sign_up_waits_when_the_rate_limiter_is_down(api: Any, hs256_env: Any) -> None:
    known = hs256(email=_new_email(), email_verified=True)
    assert (await api.get("/v1/balance", headers=bearer(known))).status_code == 200
    identity.reset_caches()
    hs256_env(UPSTASH_REDIS_REST_URL="http://127.0.0.1:9", UPSTASH_TIMEOUT_S="0.2")
    upstash.reset_redis()
    try:
        sub = f"down-{uuid.uuid4().hex}"
        r = await api.get("/v1/balance", headers=bearer(hs256(sub, email=_new_email(), email_verified=True)))
        assert r.status_code == 503 and r.json()["error"]["code"] == "ratelimiter_unavailable"
        assert r.headers["retry-after"] and await _users_with_sub(sub) == []
        assert (await api.get("/v1/balance", headers=bearer(known))).status_code == 200
    finally:
        upstash.reset_redis()


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
    r = await api.get("/v1/balance", headers=bearer(hs256(sub, email="TAKEN@example.com", email_verified=True)))
    assert r.status_code == 200
    (user,) = await _users_with_sub(sub)
    assert user["id"] != existing.user_id and user["email"] is None
    for unverified, claims_ in ((f"unv-{uuid.uuid4()}", {"email_verified": False}), (f"unv-{uuid.uuid4()}", {})):
        await api.get("/v1/balance", headers=bearer(hs256(unverified, email="x@example.com", **claims_)))
        assert (await _users_with_sub(unverified))[0]["email"] is None, "an unverified email is not stored"


async def test_tokens_are_refused_when_sign_in_is_not_configured(api: Any, set_env: Any) -> None:
    set_env(JWT_HS256_SECRET=None, JWT_JWKS_URL=None)
    r = await api.get("/v1/balance", headers=bearer(hs256()))
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("Invalid credentials")

