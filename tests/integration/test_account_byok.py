"""/v1/provider-keys: bring-your-own provider keys encrypted at rest (AES-256-GCM), shown as last 4
only, used by the query path (charged the platform fee only), isolated per user, and kept
decryptable across master-key rotation."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from gateway import auth, db
from gateway.account import byok
from gateway.auth import SealedProviderKey
from gateway.config import get_settings
from gateway.money import ledger
from gateway.money.pricing import charge_for
from tests.support.account import (  # noqa: F401  (fixtures)
    api,
    bearer,
    chat_body,
    env_for_subprocess,
    gateway_router,
    master_key,
    provider_secret,
    set_env,
    upstream_requests,
)

pytestmark = pytest.mark.integration


async def _rows(user_id: Any) -> list[dict[str, Any]]:
    return await db.fetchall("SELECT * FROM provider_keys WHERE user_id = %s ORDER BY provider", (user_id,))


async def test_put_get_list_delete(api: Any, make_user: Any) -> None:
    a = await make_user()
    h = bearer(a.api_key)
    secret = provider_secret("sk-proj-")
    r = await api.put("/v1/provider-keys/openai", json={"api_key": secret}, headers=h)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["provider"] == "openai" and body["last4"] == secret[-4:]
    assert secret not in r.text

    r = await api.get("/v1/provider-keys/openai", headers=h)
    assert r.status_code == 200 and r.json()["last4"] == secret[-4:] and secret not in r.text
    assert set(r.json()) == {"object", "provider", "last4", "key_version", "created_at", "updated_at"}

    replacement = provider_secret("sk-proj-")
    r = await api.put("/v1/provider-keys/openai", json={"api_key": replacement}, headers=h)
    assert r.status_code == 200 and r.json()["last4"] == replacement[-4:]
    assert len(await _rows(a.user_id)) == 1

    ant = provider_secret("sk-ant-")
    assert (await api.put("/v1/provider-keys/Anthropic", json={"api_key": ant}, headers=h)).status_code == 201
    listing = (await api.get("/v1/provider-keys", headers=h)).json()
    assert [k["provider"] for k in listing["data"]] == ["anthropic", "openai"]
    assert set(listing["providers"]) == set(byok.PROVIDERS)

    r = await api.delete("/v1/provider-keys/openai", headers=h)
    assert r.status_code == 200 and r.json() == {"object": "provider_key", "provider": "openai", "deleted": True}
    assert (await api.get("/v1/provider-keys/openai", headers=h)).status_code == 404
    r = await api.delete("/v1/provider-keys/openai", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "provider_key_not_found"


async def test_stored_encrypted_and_bound_to_user_and_provider(api: Any, make_user: Any) -> None:
    a, b = await make_user(), await make_user()
    secret = provider_secret("sk-or-v1-")
    await api.put("/v1/provider-keys/openrouter", json={"api_key": secret}, headers=bearer(a.api_key))
    (row,) = await _rows(a.user_id)
    assert secret.encode() not in bytes(row["ciphertext"]) and len(bytes(row["nonce"])) == 12
    assert row["key_version"] == byok.master_keys().current and row["last4"] == secret[-4:]
    sealed = SealedProviderKey("openrouter", row["key_version"], bytes(row["nonce"]), bytes(row["ciphertext"]))
    assert byok.unseal(a.user_id, sealed) == secret
    with pytest.raises(byok.ByokDecryptError):
        byok.unseal(b.user_id, sealed)  # copied to another user: does not decrypt
    with pytest.raises(byok.ByokDecryptError):
        byok.unseal(a.user_id, SealedProviderKey("openai", *[getattr(sealed, f) for f in
                                                             ("key_version", "nonce", "ciphertext")]))


@pytest.mark.parametrize("provider, body, code", [
    ("azure", {"api_key": "sk-valid-looking-key"}, "unknown_provider"),
    ("openai", {"api_key": "short"}, "invalid_provider_key"),
    ("openai", {"api_key": "has spaces in the key"}, "invalid_provider_key"),
    ("openai", {"api_key": "x" * 600}, "invalid_provider_key"),
    ("openai", {}, "invalid_request"),
    ("openai", {"api_key": "sk-valid-looking-key", "extra": 1}, "invalid_request"),
])
async def test_bad_input_is_400_and_stores_nothing(api: Any, make_user: Any, provider: str, body: dict[str, Any],
                                                   code: str) -> None:
    a = await make_user()
    r = await api.put(f"/v1/provider-keys/{provider}", json=body, headers=bearer(a.api_key))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    if "api_key" in body:
        assert body["api_key"] not in r.text, "the submitted key is never echoed"
    assert await _rows(a.user_id) == []
    assert (await api.get("/v1/provider-keys/azure", headers=bearer(a.api_key))).status_code == 400


async def test_isolation(api: Any, make_user: Any) -> None:
    a, b = await make_user(), await make_user()
    secret = provider_secret()
    await api.put("/v1/provider-keys/gemini", json={"api_key": secret}, headers=bearer(a.api_key))
    assert (await api.get("/v1/provider-keys/gemini", headers=bearer(b.api_key))).status_code == 404
    assert (await api.delete("/v1/provider-keys/gemini", headers=bearer(b.api_key))).status_code == 404
    assert (await api.get("/v1/provider-keys", headers=bearer(b.api_key))).json()["data"] == []
    other = provider_secret()
    await api.put("/v1/provider-keys/gemini", json={"api_key": other}, headers=bearer(b.api_key))
    assert (await api.get("/v1/provider-keys/gemini", headers=bearer(a.api_key))).json()["last4"] == secret[-4:]
    assert len(await _rows(a.user_id)) == 1 and len(await _rows(b.user_id)) == 1


async def test_query_path_uses_the_users_key_and_charges_only_the_platform_fee(
        api: Any, make_user: Any, fake_upstream: Any) -> None:
    byok_user, platform_user = await make_user(), await make_user()
    mine = provider_secret("sk-proj-")
    r = await api.put("/v1/provider-keys/openai", json={"api_key": mine}, headers=bearer(byok_user.api_key))
    assert r.status_code == 201

    for user in (byok_user, platform_user):
        r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(user.api_key))
        assert r.status_code == 200, r.text
    keys_seen = [q["key"] for q in upstream_requests(fake_upstream, "openai")]
    assert keys_seen == [mine, get_settings().openai_api_key]

    rows = {u.user_id: await db.fetchone("SELECT * FROM usage_records WHERE user_id = %s", (u.user_id,))
            for u in (byok_user, platform_user)}
    mine_row, platform_row = rows[byok_user.user_id], rows[platform_user.user_id]
    assert mine_row is not None and platform_row is not None
    assert mine_row["byok"] is True and platform_row["byok"] is False
    fee = get_settings().byok_platform_fee
    assert mine_row["charge"] == charge_for(mine_row["provider_cost"], mine_row["markup"], byok=True, byok_fee=fee)
    assert platform_row["charge"] == charge_for(platform_row["provider_cost"], platform_row["markup"])
    assert mine_row["charge"] < platform_row["charge"]
    assert await ledger.invariant_violations() == []


async def test_query_path_costs_no_extra_round_trip(api: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    a = await make_user()
    await api.put("/v1/provider-keys/openai", json={"api_key": provider_secret()}, headers=bearer(a.api_key))
    assert (await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(a.api_key))).status_code == 200
    calls: list[str] = []
    real_run, real_call = db.run, db.call

    async def counting_run(sql: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(" ".join(sql.split())[:60])
        return await real_run(sql, *args, **kwargs)

    async def counting_call(statement: db.Statement, *args: Any, **kwargs: Any) -> Any:  # reserve, settle
        calls.append(repr(statement))
        return await real_call(statement, *args, **kwargs)

    monkeypatch.setattr(db, "run", counting_run)
    monkeypatch.setattr(db, "call", counting_call)
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(a.api_key))
    assert r.status_code == 200
    row = await db.fetchone("SELECT count(*) AS n FROM usage_records WHERE user_id = %s AND byok", (a.user_id,))
    calls.pop()  # the count above
    assert row is not None and row["n"] == 2
    assert len(calls) == 2, f"warm BYOK request used {len(calls)} round trips: {calls}"


async def test_provider_key_change_reaches_the_query_path(api: Any, make_user: Any, fake_upstream: Any) -> None:
    a = await make_user()
    h = bearer(a.api_key)
    assert (await api.post("/v1/chat/completions", json=chat_body(), headers=h)).status_code == 200  # cached
    mine = provider_secret()
    await api.put("/v1/provider-keys/openai", json={"api_key": mine}, headers=h)
    assert (await api.post("/v1/chat/completions", json=chat_body(), headers=h)).status_code == 200
    await api.delete("/v1/provider-keys/openai", headers=h)
    assert (await api.post("/v1/chat/completions", json=chat_body(), headers=h)).status_code == 200
    keys_seen = [q["key"] for q in upstream_requests(fake_upstream, "openai")]
    assert keys_seen == [get_settings().openai_api_key, mine, get_settings().openai_api_key]


async def test_undecryptable_key_fails_closed_and_charges_nothing(api: Any, make_user: Any, set_env: Any) -> None:
    set_env(BYOK_MASTER_KEYS=master_key("old"))
    a = await make_user()
    await api.put("/v1/provider-keys/openai", json={"api_key": provider_secret()}, headers=bearer(a.api_key))
    set_env(BYOK_MASTER_KEYS=master_key("new"))  # "old" dropped before rotating: a misconfiguration
    before = await ledger.get_balance(a.user_id)
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(a.api_key))
    assert r.status_code == 503 and r.json()["error"]["code"] == "provider_key_unavailable"
    assert await ledger.get_balance(a.user_id) == before
    # other providers still work for this user
    r = await api.post("/v1/chat/completions", json=chat_body("anthropic/claude-3.5-haiku"), headers=bearer(a.api_key))
    assert r.status_code == 200, r.text


async def test_master_key_rotation_keeps_every_key_decryptable(api: Any, make_user: Any, set_env: Any,
                                                               fake_upstream: Any) -> None:
    v1, v2 = master_key("v1"), master_key("v2")
    set_env(BYOK_MASTER_KEYS=v1)
    users = [await make_user() for _ in range(6)]
    stored: dict[tuple[Any, str], str] = {}
    for i, u in enumerate(users):
        for provider in byok.PROVIDERS[: 1 + i % len(byok.PROVIDERS)]:
            stored[(u.user_id, provider)] = provider_secret(f"{provider}-")
            r = await api.put(f"/v1/provider-keys/{provider}", json={"api_key": stored[(u.user_id, provider)]},
                              headers=bearer(u.api_key))
            assert r.status_code == 201
    # warm this container with the v1 ciphertexts
    assert (await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(users[0].api_key))).status_code \
        == 200

    set_env(BYOK_MASTER_KEYS=f"{v1},{v2}")  # step 1: add v2 (now current); v1 still decrypts
    report = await byok.rotate(batch_size=4)  # small batches: pagination is exercised
    assert report.ok and report.rotated == len(stored) and report.verified == report.total == len(stored)
    rows = await db.fetchall("SELECT user_id, provider, key_version, nonce, ciphertext FROM provider_keys")
    assert {r["key_version"] for r in rows} == {"v2"}
    again = await byok.rotate()
    assert again.ok and again.rotated == 0, "re-running is a no-op"

    set_env(BYOK_MASTER_KEYS=v2)  # step 2: drop v1
    for r in rows:
        sealed = SealedProviderKey(r["provider"], r["key_version"], bytes(r["nonce"]), bytes(r["ciphertext"]))
        assert byok.unseal(r["user_id"], sealed) == stored[(r["user_id"], r["provider"])]
    httpx_requests_before = len(upstream_requests(fake_upstream, "openai"))
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(users[0].api_key))
    assert r.status_code == 200
    assert upstream_requests(fake_upstream, "openai")[httpx_requests_before:][0]["key"] == \
        stored[(users[0].user_id, "openai")]


async def test_rotate_master_key_cli(make_user: Any, set_env: Any) -> None:
    v1, v2 = master_key("k1"), master_key("k2")
    set_env(BYOK_MASTER_KEYS=v1)
    a = await make_user()
    secret = provider_secret()
    await byok.put(a.user_id, "anthropic", secret)

    def cli(keys: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "rotate-master-key"],
                              env=env_for_subprocess(BYOK_MASTER_KEYS=keys), capture_output=True, text=True,
                              timeout=60)

    done = await asyncio.to_thread(cli, f"{v1},{v2}")
    assert done.returncode == 0, done.stderr
    assert "rotated 1 provider key(s) to master key k2; 1/1 decrypt" in done.stdout
    set_env(BYOK_MASTER_KEYS=v2)
    assert byok.unseal(a.user_id, (await byok.sealed_for(a.user_id))[0]) == secret

    # a key under a version that is no longer configured: reported, exit 1, nothing lost
    set_env(BYOK_MASTER_KEYS=master_key("k0"))
    b = await make_user()
    await byok.put(b.user_id, "openai", provider_secret())
    failed = await asyncio.to_thread(cli, v2 + "," + master_key("k3"))
    assert failed.returncode == 1
    assert "cannot decrypt provider key" in failed.stderr and "mlp: error:" in failed.stderr
    for out in (done.stdout + done.stderr, failed.stdout + failed.stderr):
        assert secret not in out and v1.split(":")[1] not in out and v2.split(":")[1] not in out
    assert auth.hash_key(secret) not in failed.stderr
