"""The console's sign-in path end to end below the browser: the local identity provider
(infra/local/idp.py, Cognito-shaped) issues tokens that the gateway's JWT path verifies and
provisions from; its OAuth rules (PKCE, single-use codes, exact redirect URIs, verified users
only); and the console's usage breakdown (grouping, scoping, window limits)."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from gateway import db
from infra.local.idp import Client, LocalIdP, create_app, pkce_challenge
from infra.local.servers import RunningServer, free_port, start_in_thread
from tests.support import secret_log
from tests.support.account import api, bearer, gateway_router, set_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

CLIENT = "console-test-client"
REDIRECT = "http://console.test/console/callback"
LOGOUT = "http://console.test/console/signed-out"
PASSWORD = "a long enough password"


@pytest.fixture
def idp(set_env: Any) -> Iterator[tuple[LocalIdP, RunningServer]]:
    port = free_port()
    provider = LocalIdP(f"http://127.0.0.1:{port}", [Client(CLIENT, frozenset({REDIRECT}), frozenset({LOGOUT}))])
    server = start_in_thread(create_app(provider), port=port)
    set_env(JWT_JWKS_URL=f"{provider.issuer}/.well-known/jwks.json", JWT_ISSUER=provider.issuer,
            JWT_AUDIENCE=CLIENT, JWT_HS256_SECRET=None)
    yield provider, server
    server.stop()


def _authorize(c: httpx.Client, verifier: str, state: str = "st-1", redirect: str = REDIRECT) -> httpx.Response:
    return c.get("/oauth2/authorize", params={
        "response_type": "code", "client_id": CLIENT, "redirect_uri": redirect, "scope": "openid email profile",
        "state": state, "nonce": "n-1", "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"})


def _flow(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)["flow"][0]


def _code(response: httpx.Response) -> str:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["st-1"]
    return query["code"][0]


def _exchange(c: httpx.Client, code: str, verifier: str, redirect: str = REDIRECT) -> httpx.Response:
    return c.post("/oauth2/token", data={"grant_type": "authorization_code", "client_id": CLIENT, "code": code,
                                         "redirect_uri": redirect, "code_verifier": verifier})


def sign_up(provider: LocalIdP, server: RunningServer, email: str) -> tuple[httpx.Client, str, str]:
    """(client with the IdP session, authorization code, its verifier) for a new, confirmed user."""
    c = httpx.Client(base_url=server.url, follow_redirects=False, timeout=10)
    verifier = secrets.token_urlsafe(48)
    flow = _flow(_authorize(c, verifier))
    page = c.post("/signup", data={"flow": flow, "email": email, "password": PASSWORD})
    assert page.status_code == 200 and "Confirm your account" in page.text
    mail = [m for m in provider.mailbox if m["to"] == email][-1]
    return c, _code(c.post("/confirm", data={"flow": flow, "email": email, "code": mail["code"]})), verifier


def _tokens(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    tokens = dict(response.json())
    for name in ("id_token", "access_token", "refresh_token"):
        secret_log.register(tokens[name])
    return tokens


async def test_a_signed_up_user_is_provisioned_from_the_id_token(api: Any, idp: Any) -> None:
    provider, server = idp
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    c, code, verifier = sign_up(provider, server, email)
    tokens = _tokens(_exchange(c, code, verifier))
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert claims["token_use"] == "id" and claims["aud"] == CLIENT and claims["iss"] == provider.issuer
    assert claims["email"] == email and claims["email_verified"] is True
    assert claims["cognito:username"] == claims["sub"] and claims["nonce"] == "n-1"
    assert jwt.get_unverified_header(tokens["id_token"])["kid"] == provider.kid

    r = await api.get("/v1/balance", headers=bearer(tokens["id_token"]))
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == "10.00000000" and r.json()["tier"] == "free"
    row = await db.fetchone("SELECT email, external_sub FROM users WHERE external_sub = %s", (claims["sub"],))
    assert row == {"email": email, "external_sub": claims["sub"]}
    r = await api.get("/console/api/usage/breakdown", headers=bearer(tokens["id_token"]))
    assert r.status_code == 200 and r.json()["data"] == []

    # the access token has no audience (Cognito's shape): refused where an audience is required
    r = await api.get("/v1/balance", headers=bearer(tokens["access_token"]))
    assert r.status_code == 401
    # a second sign-in of the same browser session skips the form and yields the same subject
    verifier2 = secrets.token_urlsafe(48)
    again = _tokens(_exchange(c, _code(_authorize(c, verifier2)), verifier2))
    assert jwt.decode(again["id_token"], options={"verify_signature": False})["sub"] == claims["sub"]


def test_pkce_single_use_codes_and_exact_redirects(idp: Any) -> None:
    provider, server = idp
    c, code, verifier = sign_up(provider, server, f"p-{uuid.uuid4().hex[:8]}@example.com")
    wrong = _exchange(c, code, secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    replay = _exchange(c, code, verifier)  # the code died with the failed attempt
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert replay.headers["access-control-allow-origin"] == "*"  # browser clients read the error

    verifier = secrets.token_urlsafe(48)
    code = _code(_authorize(c, verifier))
    assert _exchange(c, code, verifier, redirect="http://evil.test/cb").json()["error"] == "invalid_grant"

    bad = _authorize(c, verifier, redirect="http://evil.test/console/callback")
    assert bad.status_code == 400 and "redirect_uri is not registered" in bad.text
    no_pkce = c.get("/oauth2/authorize", params={"response_type": "code", "client_id": CLIENT,
                                                 "redirect_uri": REDIRECT, "scope": "openid"})
    assert no_pkce.status_code == 400 and "PKCE is required" in no_pkce.text
    assert c.get("/logout", params={"client_id": CLIENT, "logout_uri": "http://evil.test/"}).status_code == 400
    out = c.get("/logout", params={"client_id": CLIENT, "logout_uri": LOGOUT})
    assert out.status_code == 302 and out.headers["location"] == LOGOUT
    # the IdP session is gone: the next authorize shows the sign-in form again
    assert _authorize(c, verifier).headers["location"].startswith("/login?flow=")


def test_unconfirmed_users_get_a_new_code_and_no_tokens(idp: Any) -> None:
    provider, server = idp
    email = f"u-{uuid.uuid4().hex[:8]}@example.com"
    c = httpx.Client(base_url=server.url, follow_redirects=False, timeout=10)
    verifier = secrets.token_urlsafe(48)
    flow = _flow(_authorize(c, verifier))
    assert c.post("/signup", data={"flow": flow, "email": email, "password": "short"}).status_code == 400
    assert c.post("/signup", data={"flow": flow, "email": email, "password": PASSWORD}).status_code == 200
    dup = c.post("/signup", data={"flow": flow, "email": email.upper(), "password": PASSWORD})
    assert dup.status_code == 400 and "already exists" in dup.text
    page = c.post("/login", data={"flow": flow, "email": email, "password": PASSWORD})
    assert page.status_code == 200 and "not confirmed" in page.text  # a form, not a redirect with a code
    assert len([m for m in provider.mailbox if m["to"] == email]) == 2
    wrong = c.post("/confirm", data={"flow": flow, "email": email, "code": "not-it"})
    assert wrong.status_code == 400 and "Invalid verification code" in wrong.text
    bad_password = c.post("/login", data={"flow": flow, "email": email, "password": "wrong password!!"})
    assert bad_password.status_code == 400 and "Incorrect username or password" in bad_password.text


async def _usage(user_id: Any, key_id: Any, model: str, day: dt.datetime, charge: str, tokens: tuple[int, int],
                 status: str = "ok") -> None:
    await db.execute(
        "INSERT INTO usage_records (request_id, user_id, api_key_id, model_requested, model_served, status, "
        "prompt_tokens, completion_tokens, charge, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        ("req_" + uuid.uuid4().hex, user_id, key_id, model, model, status, tokens[0], tokens[1], charge, day))


async def test_usage_breakdown_by_day_model_and_key_is_scoped_to_the_caller(api: Any, make_user: Any) -> None:
    me, other = await make_user(), await make_user()
    # in the past (the breakdown ends now by default): a fixed hour such as 12:00 is in the future before noon
    today = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    yesterday = today - dt.timedelta(days=1)
    await _usage(me.user_id, me.key_id, "openai/gpt-4o-mini", today, "0.00000300", (10, 5))
    await _usage(me.user_id, me.key_id, "openai/gpt-4o-mini", today, "0.00000200", (4, 1), status="failed")
    await _usage(me.user_id, None, "anthropic/claude-sonnet-4", today, "0.00100000", (100, 50))
    await _usage(me.user_id, me.key_id, "openai/gpt-4o-mini", yesterday, "0.00000100", (1, 1))
    await _usage(me.user_id, me.key_id, "openai/gpt-4o-mini", today - dt.timedelta(days=40), "1.00000000", (1, 1))
    await _usage(other.user_id, other.key_id, "openai/gpt-4o-mini", today, "5.00000000", (9, 9))

    r = await api.get("/console/api/usage/breakdown", headers=bearer(me.api_key))
    assert r.status_code == 200, r.text
    body = r.json()
    rows = {(d["day"], d["model"], d["api_key_id"]): d for d in body["data"]}
    assert set(rows) == {(today.date().isoformat(), "openai/gpt-4o-mini", str(me.key_id)),
                         (today.date().isoformat(), "anthropic/claude-sonnet-4", None),
                         (yesterday.date().isoformat(), "openai/gpt-4o-mini", str(me.key_id))}
    mini = rows[(today.date().isoformat(), "openai/gpt-4o-mini", str(me.key_id))]
    assert mini == {"day": today.date().isoformat(), "model": "openai/gpt-4o-mini", "api_key_id": str(me.key_id),
                    "requests": 2, "failed_requests": 1, "prompt_tokens": 14, "completion_tokens": 6,
                    "total_tokens": 20, "charge": "0.00000500"}
    assert body["total_charge"] == "0.00100600" and body["truncated"] is False
    assert Decimal(body["total_charge"]) == sum(Decimal(d["charge"]) for d in body["data"])

    wide = await api.get("/console/api/usage/breakdown", params={"from": (today - dt.timedelta(days=45)).date()
                                                                 .isoformat()}, headers=bearer(me.api_key))
    assert Decimal(wide.json()["total_charge"]) == Decimal("1.00100600")
    too_wide = await api.get("/console/api/usage/breakdown", params={"from": "2020-01-01"}, headers=bearer(me.api_key))
    assert too_wide.status_code == 400 and too_wide.json()["error"]["param"] == "from"
    backwards = await api.get("/console/api/usage/breakdown", params={"from": "2026-02-01", "to": "2026-01-01"},
                              headers=bearer(me.api_key))
    assert backwards.status_code == 400
    assert (await api.get("/console/api/usage/breakdown")).status_code == 401
