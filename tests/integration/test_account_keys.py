"""/v1/keys: create (secret shown once), list (never the secret), revoke (immediately here, within
AUTH_CACHE_TTL_S in other warm containers), per-key rpm and spend cap on the query path, the
key-creation rate limit, restricted keys, and isolation between users."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway import auth, db
from gateway.account import users
from gateway.errors import InsufficientCredits
from gateway.money import ledger
from tests.support.account import (  # noqa: F401  (fixtures)
    api,
    bearer,
    chat_body,
    create_key,
    env_for_subprocess,
    gateway_router,
    set_env,
)

pytestmark = pytest.mark.integration


async def _count_keys(user_id: Any) -> int:
    row = await db.fetchone("SELECT count(*) AS n FROM api_keys WHERE user_id = %s", (user_id,))
    assert row is not None
    return int(row["n"])


async def test_create_list_and_use_a_key(api: Any, make_user: Any) -> None:
    a = await make_user()
    created = await create_key(api, a.api_key, name="ci runner")
    assert created["key"].startswith("sk-mlp-") and created["prefix"] == created["key"][:15]
    assert created["name"] == "ci runner" and created["status"] == "active"
    assert created["rpm"] is None and created["spend_cap"] is None

    r = await api.get("/v1/keys", headers=bearer(a.api_key))
    assert r.status_code == 200
    listing = r.json()
    assert listing["object"] == "list"
    ids = [k["id"] for k in listing["data"]]
    assert created["id"] in ids and str(a.key_id) in ids
    assert created["key"] not in r.text, "a listing must never contain a secret"
    assert auth.hash_key(created["key"]) not in r.text, "nor its hash"
    assert all("key" not in k and "key_hash" not in k for k in listing["data"])
    assert ids[0] == created["id"], "newest first"

    r = await api.get("/v1/balance", headers=bearer(created["key"]))
    assert r.status_code == 200, "the new key works at once"


async def test_revoke_takes_effect_immediately_in_this_container(api: Any, make_user: Any) -> None:
    a = await make_user()
    k = await create_key(api, a.api_key, name="temp")
    assert (await api.get("/v1/balance", headers=bearer(k["key"]))).status_code == 200  # now cached

    r = await api.delete(f"/v1/keys/{k['id']}", headers=bearer(a.api_key))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked" and r.json()["revoked_at"]

    r = await api.get("/v1/balance", headers=bearer(k["key"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(k["key"]))
    assert r.status_code == 401

    again = await api.delete(f"/v1/keys/{k['id']}", headers=bearer(a.api_key))
    assert again.status_code == 200 and again.json()["status"] == "revoked", "revoking twice is idempotent"
    listed = (await api.get("/v1/keys", headers=bearer(a.api_key))).json()["data"]
    assert {x["id"]: x["status"] for x in listed}[k["id"]] == "revoked"
    active = (await api.get("/v1/keys?include_revoked=false", headers=bearer(a.api_key))).json()["data"]
    assert k["id"] not in [x["id"] for x in active]


async def test_revocation_reaches_other_warm_containers_within_the_ttl(api: Any, make_user: Any,
                                                                      set_env: Any) -> None:
    """Another process (the ops CLI: a different container) revokes a key this warm process has
    cached; this process stops accepting it within AUTH_CACHE_TTL_S."""
    set_env(AUTH_CACHE_TTL_S="1")
    a = await make_user()
    victim = await create_key(api, a.api_key, name="leaked")
    assert (await api.get("/v1/balance", headers=bearer(victim["key"]))).status_code == 200  # cached here

    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "revoke-key", "--key-id", victim["id"]],
        env=env_for_subprocess(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    revoked_at = time.monotonic()

    statuses = []
    while time.monotonic() - revoked_at < 3:
        status = (await api.get("/v1/balance", headers=bearer(victim["key"]))).status_code
        statuses.append((round(time.monotonic() - revoked_at, 2), status))
        if status == 401:
            break
        await asyncio.sleep(0.1)
    elapsed, last = statuses[-1]
    assert last == 401, statuses
    assert elapsed <= 1.0 + 0.5, f"still accepted {elapsed}s after revocation with a 1 s TTL: {statuses}"


async def test_isolation_between_users(api: Any, make_user: Any) -> None:
    a, b = await make_user(), await make_user()
    a_key = await create_key(api, a.api_key, name="a-secondary")

    r = await api.delete(f"/v1/keys/{a_key['id']}", headers=bearer(b.api_key))
    assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"
    r = await api.delete(f"/v1/keys/{a.key_id}", headers=bearer(b.api_key))
    assert r.status_code == 404
    assert (await api.get("/v1/balance", headers=bearer(a_key["key"]))).status_code == 200, "A's key still works"

    b_list = (await api.get("/v1/keys", headers=bearer(b.api_key))).json()["data"]
    assert {k["id"] for k in b_list} == {str(b.key_id)}
    row = await db.fetchone("SELECT revoked_at FROM api_keys WHERE id = %s", (a_key["id"],))
    assert row is not None and row["revoked_at"] is None


@pytest.mark.parametrize("body, param", [
    ({"name": ""}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "   "}, "name"),
    ({"rpm": 0}, "rpm"),
    ({"rpm": "many"}, "rpm"),
    ({"spend_cap": "-1"}, "spend_cap"),
    ({"spend_cap": "0.123456789"}, "spend_cap"),
    ({"spend_cap": "NaN"}, "spend_cap"),
    ({"expires": "never"}, "expires"),
])
async def test_bad_input_is_a_clear_400_and_creates_nothing(api: Any, make_user: Any, body: dict[str, Any],
                                                            param: str) -> None:
    a = await make_user()
    before = await _count_keys(a.user_id)
    r = await api.post("/v1/keys", json=body, headers=bearer(a.api_key))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and param in (err["param"] or ""), err
    assert await _count_keys(a.user_id) == before


async def test_bad_key_ids_and_credentials(api: Any, make_user: Any) -> None:
    a = await make_user()
    assert (await api.delete("/v1/keys/not-a-uuid", headers=bearer(a.api_key))).status_code == 400
    assert (await api.delete(f"/v1/keys/{uuid.uuid4()}", headers=bearer(a.api_key))).status_code == 404
    r = await api.get("/v1/keys")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = await api.get("/v1/keys", headers=bearer("sk-mlp-" + "x" * 43))
    assert r.status_code == 401
    r = await api.get("/v1/keys", headers=bearer("hello"))
    assert r.status_code == 401


async def test_key_creation_is_rate_limited(api: Any, make_user: Any, set_env: Any) -> None:
    set_env(KEY_CREATE_PER_HOUR="3")
    a = await make_user()
    for i in range(3):
        await create_key(api, a.api_key, name=f"k{i}")
    before = await _count_keys(a.user_id)
    r = await api.post("/v1/keys", json={"name": "one too many"}, headers=bearer(a.api_key))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "key_creation_rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert await _count_keys(a.user_id) == before
    b = await make_user()
    await create_key(api, b.api_key, name="other users are not affected")


async def test_active_key_limit(api: Any, make_user: Any, set_env: Any) -> None:
    set_env(MAX_KEYS_PER_USER="2")
    a = await make_user()  # has one key already
    k2 = await create_key(api, a.api_key, name="second")
    r = await api.post("/v1/keys", json={"name": "third"}, headers=bearer(a.api_key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_keys"
    assert (await api.delete(f"/v1/keys/{k2['id']}", headers=bearer(a.api_key))).status_code == 200
    await create_key(api, a.api_key, name="third, after revoking one")


async def test_restricted_keys_have_the_inference_scope(api: Any, make_user: Any) -> None:
    """Keys with their own rpm or spend cap, or created with scope 'inference', may query and read
    their own usage, nothing more: 403 insufficient_scope on key and provider-key management and
    on other keys' usage; the listing shows them only themselves."""
    a = await make_user()
    limited = await create_key(api, a.api_key, name="limited", rpm=5)
    capped = await create_key(api, a.api_key, name="capped", spend_cap="1.5")
    scoped = await create_key(api, a.api_key, name="ci", scope="inference")
    full = await create_key(api, a.api_key, name="ops")
    assert capped["spend_cap"] == "1.50000000" and capped["spent"] == "0.00000000"
    assert [k["scope"] for k in (limited, capped, scoped, full)] == ["inference", "inference", "inference", "full"]
    listing = (await api.get("/v1/keys", headers=bearer(a.api_key))).json()["data"]
    assert {k["id"]: k["scope"] for k in listing}[str(a.key_id)] == "full" and len(listing) == 5
    r = await api.post("/v1/keys", json={"name": "x", "rpm": 5, "scope": "full"}, headers=bearer(a.api_key))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_scope"
    assert (await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(full["key"]))).status_code == 200

    for k in (limited, capped, scoped):
        h = bearer(k["key"])
        assert (await api.post("/v1/chat/completions", json=chat_body(), headers=h)).status_code == 200
        refused = [await api.post("/v1/keys", json={"name": "escape"}, headers=h),
                   await api.delete(f"/v1/keys/{a.key_id}", headers=h),
                   await api.put("/v1/provider-keys/openai", json={"api_key": "sk-whatever-123456"}, headers=h),
                   await api.delete("/v1/provider-keys/openai", headers=h),
                   await api.get(f"/v1/usage?api_key_id={full['id']}", headers=h),
                   await api.get(f"/v1/usage/summary?api_key_id={a.key_id}", headers=h)]
        for r in refused:
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
        assert [x["id"] for x in (await api.get("/v1/keys", headers=h)).json()["data"]] == [k["id"]]
        own = (await api.get("/v1/usage", headers=h)).json()["data"]
        assert [u["api_key_id"] for u in own] == [k["id"]], "only its own usage"
        assert (await api.get(f"/v1/usage?api_key_id={k['id']}", headers=h)).json()["data"] == own
        assert (await api.get("/v1/usage/summary", headers=h)).json()["total"]["requests"] == 1
        assert (await api.get("/v1/balance", headers=h)).status_code == 200
    everything = (await api.get("/v1/usage/summary", headers=bearer(a.api_key))).json()["total"]["requests"]
    assert everything == 4, "a full-scope key reads every key's usage"
    assert await _count_keys(a.user_id) == 5


async def test_per_key_rpm_is_enforced_on_the_query_path(api: Any, make_user: Any) -> None:
    a = await make_user()
    k = await create_key(api, a.api_key, name="slow", rpm=2)
    codes = [(await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(k["key"]))).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(a.api_key))
    assert r.status_code == 200, "the user's other (unlimited) key is not affected"


async def test_spend_cap_is_enforced_on_the_query_path(api: Any, make_user: Any) -> None:
    a = await make_user()
    tiny = await create_key(api, a.api_key, name="tiny", spend_cap="0.000001")
    balance_before = await ledger.get_balance(a.user_id)
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(tiny["key"]))
    assert r.status_code == 402, r.text
    err = r.json()["error"]
    assert err["code"] == "spend_cap_exceeded" and err["spend_cap"] == "0.00000100"
    assert await ledger.get_balance(a.user_id) == balance_before, "nothing reserved or charged"

    roomy = await create_key(api, a.api_key, name="roomy", spend_cap="1")
    for _ in range(2):
        r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(roomy["key"]))
        assert r.status_code == 200, r.text
    charged = await db.fetchone("SELECT sum(charge) AS s FROM usage_records WHERE api_key_id = %s", (roomy["id"],))
    key = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (roomy["id"],))
    assert charged is not None and key is not None
    assert key["spent"] == charged["s"] > 0 and key["reserved"] == 0
    listed = {x["id"]: x for x in (await api.get("/v1/keys", headers=bearer(a.api_key))).json()["data"]}
    assert Decimal(listed[roomy["id"]]["spent"]) == charged["s"]
    bal = (await api.get("/v1/balance", headers=bearer(roomy["key"]))).json()
    assert Decimal(bal["api_key"]["remaining"]) == Decimal(1) - charged["s"]


async def test_spend_cap_holds_under_concurrency(make_user: Any) -> None:
    """Concurrent reserves on one capped key never hold more than the cap, settle moves holds
    into `spent`, cancels give them back, and the key and balance rows stay consistent."""
    a = await make_user(balance="100")
    k = await users.create_api_key(a.user_id, "capped", spend_cap=Decimal("1"))
    hold = Decimal("0.3")

    async def attempt(i: int) -> str | None:
        try:
            await ledger.reserve(a.user_id, f"cap-{i}", hold, api_key_id=k.key_id, model="m")
            return f"cap-{i}"
        except InsufficientCredits as exc:
            assert exc.code == "spend_cap_exceeded"
            return None

    won = [r for r in await asyncio.gather(*(attempt(i) for i in range(20))) if r]
    assert len(won) == 3, "only three 0.30 holds fit in a 1.00 cap"
    row = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (k.key_id,))
    assert row == {"spent": 0, "reserved": Decimal("0.9")}

    # settle two (0.25 each), cancel one, concurrently with new attempts
    async def settle(rid: str) -> None:
        await ledger.settle(ledger.UsageRecord(request_id=rid, user_id=a.user_id, api_key_id=k.key_id,
                                               model_requested="m", status="ok", charge=Decimal("0.25")))

    await asyncio.gather(settle(won[0]), settle(won[1]), ledger.cancel(won[2]),
                         *(attempt(100 + i) for i in range(10)), return_exceptions=False)
    row = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (k.key_id,))
    open_holds = await db.fetchone("SELECT COALESCE(sum(amount), 0) AS s, count(*) AS n FROM reservations "
                                   "WHERE api_key_id = %s", (k.key_id,))
    assert row is not None and open_holds is not None
    assert row["spent"] == Decimal("0.5")
    assert row["reserved"] == open_holds["s"] and row["spent"] + row["reserved"] <= 1
    assert open_holds["n"] <= 1, "after 0.50 spent at most one more 0.30 hold fits"
    if open_holds["n"] == 0:  # every concurrent attempt ran before the cancel freed room
        assert await attempt(999) is not None
    assert await attempt(1000) is None, "and then the cap is full"
    assert await ledger.invariant_violations() == []

    # an uncapped key of the same user is never limited by the cap, and never touched
    free = await users.create_api_key(a.user_id, "uncapped")
    await ledger.reserve(a.user_id, "uncapped-1", Decimal("5"), api_key_id=free.key_id)
    row = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (free.key_id,))
    assert row == {"spent": 0, "reserved": 0}


async def test_mixed_concurrent_traffic_on_a_capped_key_does_not_deadlock(make_user: Any) -> None:
    a = await make_user(balance="1000")
    k = await users.create_api_key(a.user_id, "busy", spend_cap=Decimal("500"))

    async def one(i: int) -> None:
        rid = f"mix-{i}"
        await ledger.reserve(a.user_id, rid, Decimal("0.01"), api_key_id=k.key_id)
        if i % 3 == 0:
            await ledger.cancel(rid)
        else:
            await ledger.settle(ledger.UsageRecord(request_id=rid, user_id=a.user_id, api_key_id=k.key_id,
                                                   model_requested="m", status="ok", charge=Decimal("0.007")))

    await asyncio.gather(*(one(i) for i in range(120)))
    row = await db.fetchone("SELECT spent, reserved FROM api_keys WHERE id = %s", (k.key_id,))
    assert row == {"spent": Decimal("0.007") * 80, "reserved": 0}
    assert await ledger.invariant_violations() == []
