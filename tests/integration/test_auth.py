"""API keys against a real Postgres: format and storage (hash only), authentication, revocation
(cache TTL and immediate in-process), last_used_at, the admin key and the FastAPI dependencies."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import uuid
from decimal import Decimal
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends

from gateway import auth, db
from gateway.account import users
from gateway.auth import Principal, require_admin, require_api_key
from gateway.config import get_settings, reset_settings
from gateway.errors import BadRequest, Conflict, NotFound, Unauthorized
from gateway.http import create_app
from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.integration

KEY_RE = re.compile(r"^sk-mlp-[A-Za-z0-9_-]{43}$")


async def key_row(key_id: uuid.UUID) -> dict:  # type: ignore[type-arg]
    row = await db.fetchone("SELECT * FROM api_keys WHERE id = %s", (key_id,))
    assert row is not None
    return row


# ----------------------------------------------------------------------------------- accounts
async def test_create_user_and_key(database_url: str) -> None:
    user_id = await users.create_user("Alice@Example.com", tier="pro", welcome_credit=Decimal("2.5"))
    user = await users.get_user(user_id)
    assert user is not None
    assert (user["email"], user["tier"], user["balance"], user["reserved"]) == (
        "Alice@Example.com", "pro", Decimal("2.5"), Decimal("0"))
    key = await users.create_api_key(user_id, "laptop")
    assert key.name == "laptop"
    assert KEY_RE.match(key.secret)
    row = await key_row(key.key_id)
    assert (row["user_id"], row["name"], row["revoked_at"], row["last_used_at"]) == (user_id, "laptop", None, None)


async def test_user_validation(database_url: str) -> None:
    await users.create_user("bob@example.com")
    with pytest.raises(Conflict):
        await users.create_user("BOB@example.com")  # emails are unique case-insensitively
    with pytest.raises(BadRequest):
        await users.create_user("not-an-email")
    with pytest.raises(NotFound):
        await users.create_api_key(uuid.uuid4())
    anonymous = await users.create_user(None)
    assert (await users.get_user(anonymous))["balance"] == 0  # type: ignore[index]


# ----------------------------------------------------------------------------------- format / storage
def test_key_format_and_entropy() -> None:
    prefix = get_settings().api_key_prefix
    assert prefix == "sk-mlp-"
    assert auth.KEY_RANDOM_BYTES * 8 >= 256
    secrets_seen = set()
    for _ in range(500):
        secret, key_hash, visible = auth.generate_api_key()
        assert KEY_RE.match(secret), secret
        random_part = secret[len(prefix):]
        assert len(random_part) * 6 >= 256  # 43 url-safe base64 characters carry 258 bits
        assert key_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert visible == secret[: len(prefix) + auth.VISIBLE_PREFIX_CHARS]
        secrets_seen.add(secret)
    assert len(secrets_seen) == 500
    # the alphabet is used fully (not e.g. hex): ~log2(64) bits per character
    alphabet = set("".join(s[len(prefix):] for s in secrets_seen))
    assert math.log2(len(alphabet)) > 5.9


async def test_only_the_hash_is_stored(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    secret = user.api_key
    random_part = secret[len("sk-mlp-"):]
    row = await key_row(user.key_id)
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["prefix"] == secret[:15]
    # no column of any row of any table holds the key (or its secret part) in plain text
    for table in ("api_keys", "users", "balances", "ledger_entries"):
        rows = await db.fetchall(f"SELECT t::text AS r FROM {table} t")
        for r in rows:
            assert secret not in r["r"], table
            assert random_part not in r["r"], table
            assert random_part[8:] not in r["r"], table  # beyond the visible prefix


# ----------------------------------------------------------------------------------- authenticate
async def test_authenticate(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(tier="premium")
    principal = await auth.authenticate_key(user.api_key)
    assert principal.user_id == user.user_id
    assert principal.key_id == user.key_id
    assert principal.tier == "premium"


@pytest.mark.parametrize("bad", [
    "",
    "not-a-key",
    "Bearer sk-mlp-abc",
    "sk-live-" + "a" * 43,
    "sk-mlp-" + "A" * 43,                  # well-formed, unknown
    "sk-mlp-" + "x" * 300,                 # absurdly long
])
async def test_unknown_or_malformed_keys_are_rejected(database_url: str, bad: str) -> None:
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate_key(bad)
    assert info.value.status == 401
    assert info.value.type == "authentication_error"


async def test_wrong_key_variants_are_rejected(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    secret = user.api_key
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (flipped, secret[:-1], secret + "x", secret.upper(), " " + secret, secret + " "):
        with pytest.raises(Unauthorized):
            await auth.authenticate_key(bad)
    assert (await auth.authenticate_key(secret)).key_id == user.key_id


async def test_revoked_key_rejected_after_cache_ttl(make_user, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTH_CACHE_TTL_S", "0.2")
    reset_settings()
    user = await make_user()
    assert (await auth.authenticate_key(user.api_key)).user_id == user.user_id
    # revoked by another container: this one does not know yet
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (user.key_id,))
    assert (await auth.authenticate_key(user.api_key)).user_id == user.user_id  # cached
    await asyncio.sleep(0.3)
    with pytest.raises(Unauthorized):
        await auth.authenticate_key(user.api_key)


async def test_unknown_key_is_negatively_cached_only_for_the_ttl(make_user, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTH_CACHE_TTL_S", "0.2")
    reset_settings()
    user = await make_user()
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (user.key_id,))
    with pytest.raises(Unauthorized):
        await auth.authenticate_key(user.api_key)
    await db.execute("UPDATE api_keys SET revoked_at = NULL WHERE id = %s", (user.key_id,))
    await asyncio.sleep(0.3)
    assert (await auth.authenticate_key(user.api_key)).key_id == user.key_id


async def test_revoke_is_immediate_in_process(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    other = await make_user()
    assert get_settings().auth_cache_ttl_s >= 1  # the default TTL: only forget_key makes this immediate
    await auth.authenticate_key(user.api_key)
    # only the owner can revoke when a user id is given
    assert not await users.revoke_api_key(user.key_id, user_id=other.user_id)
    assert (await auth.authenticate_key(user.api_key)).key_id == user.key_id
    assert await users.revoke_api_key(user.key_id, user_id=user.user_id)
    with pytest.raises(Unauthorized):
        await auth.authenticate_key(user.api_key)
    assert not await users.revoke_api_key(user.key_id)  # already revoked
    assert (await key_row(user.key_id))["revoked_at"] is not None
    # other keys are unaffected
    assert (await auth.authenticate_key(other.api_key)).user_id == other.user_id


async def test_last_used_at_is_bumped_at_most_once_a_minute(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    assert (await key_row(user.key_id))["last_used_at"] is None
    await auth.authenticate_key(user.api_key)
    first = (await key_row(user.key_id))["last_used_at"]
    assert first is not None
    auth.forget_key()
    await auth.authenticate_key(user.api_key)
    assert (await key_row(user.key_id))["last_used_at"] == first  # within the minute: no write
    await db.execute("UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = %s",
                     (user.key_id,))
    stale = (await key_row(user.key_id))["last_used_at"]
    auth.forget_key()
    await auth.authenticate_key(user.api_key)
    assert (await key_row(user.key_id))["last_used_at"] > stale


async def test_revoked_key_use_does_not_bump_last_used(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    await users.revoke_api_key(user.key_id)
    with pytest.raises(Unauthorized):
        await auth.authenticate_key(user.api_key)
    assert (await key_row(user.key_id))["last_used_at"] is None


# ----------------------------------------------------------------------------------- admin key
def test_admin_key_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    reset_settings()
    assert auth.is_admin_key(ADMIN_KEY)
    assert not auth.is_admin_key(ADMIN_KEY + "x")
    assert not auth.is_admin_key(ADMIN_KEY[:-1])
    assert not auth.is_admin_key("")
    assert not auth.is_admin_key(ADMIN_KEY.upper())
    assert not auth.is_admin_key("ünïcode")
    monkeypatch.setenv("ADMIN_API_KEY", "")
    reset_settings()
    try:
        assert not auth.is_admin_key("")  # an unset admin key never matches
    finally:
        monkeypatch.undo()
        reset_settings()


# ----------------------------------------------------------------------------------- dependencies
router = APIRouter()
ApiKeyPrincipal = Annotated[Principal, Depends(require_api_key)]
AdminOnly = Annotated[None, Depends(require_admin)]


@router.get("/me")
async def me(principal: ApiKeyPrincipal) -> dict[str, str]:
    return {"user_id": str(principal.user_id), "key_id": str(principal.key_id)}


@router.get("/admin")
async def admin_only(_: AdminOnly) -> dict[str, bool]:
    return {"admin": True}


async def test_dependencies_over_http(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    app = create_app("auth-test", [router])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        ok = await c.get("/me", headers={"Authorization": f"Bearer {user.api_key}"})
        assert ok.status_code == 200 and ok.json() == {"user_id": str(user.user_id), "key_id": str(user.key_id)}
        ok2 = await c.get("/me", headers={"Authorization": f"bearer   {user.api_key}  "})
        assert ok2.status_code == 200

        for headers, code in [({}, "missing_api_key"), ({"Authorization": "Basic abc"}, "missing_api_key"),
                              ({"Authorization": "Bearer "}, "missing_api_key"),
                              ({"Authorization": "Bearer sk-mlp-nope"}, "invalid_api_key")]:
            r = await c.get("/me", headers=headers)
            assert r.status_code == 401, headers
            err = r.json()["error"]
            assert err["type"] == "authentication_error" and err["code"] == code

        assert (await c.get("/admin", headers={"Authorization": f"Bearer {ADMIN_KEY}"})).json() == {"admin": True}
        denied = await c.get("/admin", headers={"Authorization": f"Bearer {user.api_key}"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_required"
        assert (await c.get("/admin")).status_code == 401
