"""Account routes end to end on the local stack (`make dev` in a subprocess, its own database):
admin-created users, API keys (created, used through the openai SDK, revoked from another
process), BYOK provider keys reaching the fake providers and master-key rotation by the ops CLI
while the stack keeps serving, usage and balance, JWT sign-in, isolation, and no secret in the
stack's log."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import psycopg
import pytest

from tests.e2e.conftest import ROOT, STACK_ENV
from tests.support import secret_log

pytestmark = pytest.mark.e2e

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hi there"}]
JWT_SECRET = "e2e-jwt-" + secrets.token_hex(24)
ISSUER, AUDIENCE = "https://id.e2e.example/", "mlp-dashboard"
KEY_E1, KEY_E2 = secrets.token_hex(32), secrets.token_hex(32)
MASTER_KEYS = f"e1:{KEY_E1},e2:{KEY_E2}"
# The stack is configured before it starts (it is session-scoped and starts at the first e2e test).
# (Sign-ups are throttled per source address in the shared Redis; every e2e run signs up from 127.0.0.1.)
STACK_ENV.update({"JWT_HS256_SECRET": JWT_SECRET, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE,
                  "BYOK_MASTER_KEYS": MASTER_KEYS, "JWT_PROVISION_PER_HOUR": "100000"})
SECRETS: list[str] = [JWT_SECRET, KEY_E1, KEY_E2]
secret_log.register(JWT_SECRET, MASTER_KEYS)


def _secret(value: str) -> str:
    SECRETS.append(value)
    secret_log.register(value)
    return value


def _h(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def http(local_stack: dict[str, Any]) -> Any:
    with httpx.Client(base_url=local_stack["base_url"], timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def admin(local_stack: dict[str, Any]) -> dict[str, str]:
    secret_log.register(local_stack["admin_key"])
    return _h(local_stack["admin_key"])


def _new_user(http: httpx.Client, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    r = http.post("/v1/admin/users", json=body, headers=admin)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    _secret(data["api_key"]["key"])
    return data


def _sql(stack: dict[str, Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack["database_url"], autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _cli(stack: dict[str, Any], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DATABASE_URL": stack["database_url"], "STAGE": "local", **env}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=60)


def _fake_keys(stack: dict[str, Any], provider: str) -> list[str]:
    r = httpx.get(stack["fake_providers_url"] + "/__fake/requests", params={"provider": provider}, timeout=10)
    return [q["key"] for q in r.json()]


def _settled_usage(http: httpx.Client, key: str, n: int, query: str = "") -> list[dict[str, Any]]:
    """The caller's newest usage records once ``n`` exist (settlement runs after the response is sent)."""
    deadline = time.monotonic() + 10
    while True:
        data: list[dict[str, Any]] = http.get(f"/v1/usage?limit={n}{query}", headers=_h(key)).json()["data"]
        if len(data) >= n or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def test_admin_creates_a_user_who_uses_the_sdk(http: httpx.Client, admin: dict[str, str],
                                               local_stack: dict[str, Any]) -> None:
    created = _new_user(http, admin, email=f"e2e-{uuid.uuid4().hex[:8]}@example.com", tier="pro",
                        welcome_credit="4")
    key = created["api_key"]["key"]
    bal = http.get("/v1/balance", headers=_h(key)).json()
    assert bal["balance"] == "4.00000000" and bal["tier"] == "pro" and bal["currency"] == "USD"

    sdk = openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=key, max_retries=0)
    reply = sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content

    usage = _settled_usage(http, key, 1)
    assert len(usage) == 1 and usage[0]["model"] == MODEL and usage[0]["status"] == "ok"
    summary = http.get("/v1/usage/summary?group_by=model", headers=_h(key)).json()
    assert summary["total"]["requests"] == 1 and summary["total"]["charge"] == usage[0]["charge"]
    after = http.get("/v1/balance", headers=_h(key)).json()
    assert Decimal(after["balance"]) == Decimal("4") - Decimal(usage[0]["charge"])
    assert after["quota"]["requests_used"] == 1

    r = http.post("/v1/admin/credits", json={"user_id": created["user"]["id"], "amount": "1.5",
                                             "reason": "e2e goodwill", "reference": f"e2e-{uuid.uuid4().hex}"},
                  headers=admin)
    assert r.status_code == 201 and r.json()["applied"] is True
    info = http.get(f"/v1/admin/users/{created['user']['id']}", headers=admin).json()
    assert info["balance"] == r.json()["balance"] and info["usage_this_month"]["requests"] == 1
    assert key not in json.dumps(info)
    assert http.post("/v1/admin/users", json={}, headers=_h(key)).status_code == 403


def test_keys_created_listed_and_revoked_from_another_process(http: httpx.Client, admin: dict[str, str],
                                                              local_stack: dict[str, Any]) -> None:
    owner = _new_user(http, admin)
    main_key = owner["api_key"]["key"]
    r = http.post("/v1/keys", json={"name": "laptop", "rpm": 30}, headers=_h(main_key))
    assert r.status_code == 201, r.text
    laptop = r.json()
    _secret(laptop["key"])
    listing = http.get("/v1/keys", headers=_h(main_key))
    assert {k["name"] for k in listing.json()["data"]} == {"default", "laptop"}
    assert laptop["key"] not in listing.text

    sdk = openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=laptop["key"], max_retries=0)
    sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]  # now cached

    done = _cli(local_stack, "revoke-key", "--key-id", laptop["id"])  # another container: the ops CLI
    assert done.returncode == 0, done.stderr
    revoked = time.monotonic()
    while True:
        try:
            sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked < 1 + 1.0, "revocation must reach the stack within AUTH_CACHE_TTL_S"
        time.sleep(0.1)

    # and through the route, immediately
    spare = http.post("/v1/keys", json={"name": "spare"}, headers=_h(main_key)).json()
    _secret(spare["key"])
    assert http.get("/v1/balance", headers=_h(spare["key"])).status_code == 200
    assert http.delete(f"/v1/keys/{spare['id']}", headers=_h(main_key)).status_code == 200
    assert http.get("/v1/balance", headers=_h(spare["key"])).status_code == 401


def test_byok_key_reaches_the_provider_and_survives_rotation(http: httpx.Client, admin: dict[str, str],
                                                             local_stack: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    user = _new_user(http, admin)
    key = user["api_key"]["key"]
    mine = _secret("sk-proj-e2e-" + secrets.token_urlsafe(20))

    # a key stored under the OLD master key version (as if saved before the last rotation)
    from gateway.account import byok
    from gateway.config import reset_settings

    monkeypatch.setenv("BYOK_MASTER_KEYS", f"e1:{KEY_E1}")
    reset_settings()
    try:
        sealed = byok.seal(user["user"]["id"], "openai", mine)
    finally:
        monkeypatch.undo()
        reset_settings()
    with psycopg.connect(local_stack["database_url"], autocommit=True) as conn:
        conn.execute("INSERT INTO provider_keys (user_id, provider, ciphertext, nonce, key_version, last4) "
                     "VALUES (%s, 'openai', %s, %s, %s, %s)",
                     (user["user"]["id"], sealed.ciphertext, sealed.nonce, sealed.key_version, mine[-4:]))
    got = http.get("/v1/provider-keys/openai", headers=_h(key)).json()
    assert got["key_version"] == "e1" and got["last4"] == mine[-4:] and mine not in json.dumps(got)

    sdk = openai.OpenAI(base_url=local_stack["openai_base_url"], api_key=key, max_retries=0)
    sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert _fake_keys(local_stack, "openai")[-1] == mine

    done = _cli(local_stack, "rotate-master-key", BYOK_MASTER_KEYS=MASTER_KEYS)
    assert done.returncode == 0, done.stderr
    assert "to master key e2" in done.stdout and mine not in done.stdout + done.stderr
    assert http.get("/v1/provider-keys/openai", headers=_h(key)).json()["key_version"] == "e2"
    time.sleep(1.2)  # the stack's cached key lookup (AUTH_CACHE_TTL_S=1) picks up the new ciphertext
    sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert _fake_keys(local_stack, "openai")[-1] == mine

    usage = _settled_usage(http, key, 2)
    assert [u["byok"] for u in usage] == [True, True]

    # replaced through the route, then deleted: the platform key is used again
    newer = _secret("sk-proj-e2e-" + secrets.token_urlsafe(20))
    assert http.put("/v1/provider-keys/openai", json={"api_key": newer}, headers=_h(key)).status_code == 200
    sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert _fake_keys(local_stack, "openai")[-1] == newer
    assert http.delete("/v1/provider-keys/openai", headers=_h(key)).status_code == 200
    sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert _fake_keys(local_stack, "openai")[-1] not in (mine, newer)


def test_jwt_sign_in_provisions_once_under_concurrency(http: httpx.Client, local_stack: dict[str, Any]) -> None:
    sub = f"e2e|{uuid.uuid4()}"
    now = int(time.time())
    token = _secret(jwt.encode({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300,
                                "email": f"e2e-{uuid.uuid4().hex[:12]}@example.com", "email_verified": True},
                               JWT_SECRET, algorithm="HS256"))
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda _: http.get("/v1/balance", headers=_h(token)).status_code, range(20)))
    assert codes == [200] * 20
    rows = _sql(local_stack, "SELECT u.id, b.balance, (SELECT count(*) FROM ledger_entries l WHERE l.user_id = u.id "
                             "AND l.kind = 'welcome') FROM users u JOIN balances b ON b.user_id = u.id "
                             "WHERE u.external_sub = %s", (sub,))
    assert len(rows) == 1 and rows[0][2] == 1 and rows[0][1] == Decimal("10")

    r = http.post("/v1/keys", json={"name": "from the dashboard"}, headers=_h(token))
    assert r.status_code == 201
    _secret(r.json()["key"])
    bad = http.get("/v1/balance", headers=_h(token[:-4] + "AAAA"))
    assert bad.status_code == 401 and token not in bad.text


def test_isolation(http: httpx.Client, admin: dict[str, str]) -> None:
    a, b = _new_user(http, admin), _new_user(http, admin)
    ka, kb = a["api_key"], b["api_key"]
    assert http.delete(f"/v1/keys/{ka['id']}", headers=_h(kb["key"])).status_code == 404
    assert http.get("/v1/balance", headers=_h(ka["key"])).status_code == 200
    http.put("/v1/provider-keys/gemini", json={"api_key": _secret("gm-" + secrets.token_urlsafe(20))},
             headers=_h(ka["key"]))
    assert http.get("/v1/provider-keys/gemini", headers=_h(kb["key"])).status_code == 404
    assert http.get(f"/v1/usage?api_key_id={ka['id']}", headers=_h(kb["key"])).json()["data"] == []
    assert {k["id"] for k in http.get("/v1/keys", headers=_h(kb["key"])).json()["data"]} == {kb["id"]}


def test_zz_no_secret_in_the_stack_log(local_stack: dict[str, Any]) -> None:
    """Runs last in this module: nothing the tests above created appears in the stack's output."""
    text = Path(local_stack["log_file"]).read_text(errors="replace")
    leaked = [secret_log.mask(s) for s in SECRETS if s and s in text]
    assert leaked == [], f"secrets in the stack log: {leaked}"
