"""/v1/admin/*: admin key only; create a user (welcome credit + API key), grant or deduct credit
with a reason and an idempotency reference, inspect a user."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway import db
from gateway.config import get_settings
from gateway.money import ledger
from tests.support import secret_log
from tests.support.account import (  # noqa: F401  (fixtures)
    ADMIN,
    api,
    bearer,
    gateway_router,
    provider_secret,
)

pytestmark = pytest.mark.integration


async def _user_count() -> int:
    row = await db.fetchone("SELECT count(*) AS n FROM users")
    assert row is not None
    return int(row["n"])


async def _ledger_count() -> int:
    row = await db.fetchone("SELECT count(*) AS n FROM ledger_entries")
    assert row is not None
    return int(row["n"])


async def test_create_user_with_welcome_credit_and_key(api: Any) -> None:
    r = await api.post("/v1/admin/users", json={"email": "ops-made@example.com", "tier": "pro"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    secret_log.register(body["api_key"]["key"])
    user = body["user"]
    assert user["email"] == "ops-made@example.com" and user["tier"] == "pro"
    assert Decimal(user["balance"]) == get_settings().welcome_credit
    assert body["api_key"]["key"].startswith("sk-mlp-") and body["api_key"]["status"] == "active"
    me = (await api.get("/v1/balance", headers=bearer(body["api_key"]["key"]))).json()
    assert me["tier"] == "pro" and Decimal(me["balance"]) == get_settings().welcome_credit
    welcome = await db.fetchall("SELECT reference FROM ledger_entries WHERE user_id = %s", (user["id"],))
    assert welcome == [{"reference": f"welcome:{user['id']}"}]

    r = await api.post("/v1/admin/users", json={"welcome_credit": "0", "create_key": False, "tier": "hobby"},
                       headers=ADMIN)
    assert r.status_code == 201 and r.json()["api_key"] is None
    assert r.json()["user"]["balance"] == "0.00000000" and r.json()["user"]["tier"] == "free"

    r = await api.post("/v1/admin/users", json={"welcome_credit": "3.5", "rpm": 7, "spend_cap": "2"}, headers=ADMIN)
    secret_log.register(r.json()["api_key"]["key"])
    assert r.json()["user"]["balance"] == "3.50000000"
    assert r.json()["api_key"]["rpm"] == 7 and r.json()["api_key"]["spend_cap"] == "2.00000000"


@pytest.mark.parametrize("body, status, code", [
    ({"email": "not-an-email"}, 400, "invalid_request"),
    ({"tier": "platinum"}, 400, "unknown_tier"),
    ({"welcome_credit": "-1"}, 400, "invalid_request"),
    ({"welcome_credit": "1.000000001"}, 400, "invalid_request"),
    ({"unknown": True}, 400, "invalid_request"),
])
async def test_create_user_bad_input_changes_nothing(api: Any, body: dict[str, Any], status: int, code: str) -> None:
    before = await _user_count()
    r = await api.post("/v1/admin/users", json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert await _user_count() == before


async def test_duplicate_email_is_409(api: Any, make_user: Any) -> None:
    await make_user(email="dupe@example.com")
    before = await _user_count()
    r = await api.post("/v1/admin/users", json={"email": "DUPE@example.com"}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "user_exists"
    assert await _user_count() == before


async def test_admin_routes_need_the_admin_key(api: Any, make_user: Any) -> None:
    a = await make_user()
    before = (await _user_count(), await _ledger_count())
    for method, path, body in [("POST", "/v1/admin/users", {"email": "x@example.com"}),
                               ("POST", "/v1/admin/credits", {"user_id": str(a.user_id), "amount": "100",
                                                              "reason": "free money"}),
                               ("GET", f"/v1/admin/users/{a.user_id}", None)]:
        r = await api.request(method, path, json=body, headers=bearer(a.api_key))
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required", r.text
        r = await api.request(method, path, json=body, headers=bearer("wrong-admin-key-0000000000"))
        assert r.status_code == 403
        r = await api.request(method, path, json=body)
        assert r.status_code == 401
    assert (await _user_count(), await _ledger_count()) == before


async def test_grant_deduct_and_idempotency(api: Any, make_user: Any) -> None:
    a = await make_user(balance="10")
    grant = {"user_id": str(a.user_id), "amount": "5.25", "reason": "support ticket #42", "reference": "ticket-42"}
    r = await api.post("/v1/admin/credits", json=grant, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["applied"] is True and body["kind"] == "grant" and body["reference"] == "admin:ticket-42"
    assert body["balance"] == "15.25000000"

    r = await api.post("/v1/admin/credits", json=grant, headers=ADMIN)
    assert r.status_code == 200 and r.json()["applied"] is False and r.json()["balance"] == "15.25000000"

    r = await api.post("/v1/admin/credits", json={**grant, "amount": "6"}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "reference_conflict"
    b = await make_user()
    r = await api.post("/v1/admin/credits", json={**grant, "user_id": str(b.user_id)}, headers=ADMIN)
    assert r.status_code == 409

    deduct = {"user_id": str(a.user_id), "amount": "-0.25", "reason": "correction"}
    r = await api.post("/v1/admin/credits", json=deduct, headers={**ADMIN, "Idempotency-Key": "corr-1"})
    assert r.status_code == 201 and r.json()["kind"] == "adjustment" and r.json()["balance"] == "15.00000000"
    r = await api.post("/v1/admin/credits", json=deduct, headers={**ADMIN, "Idempotency-Key": "corr-1"})
    assert r.status_code == 200 and r.json()["applied"] is False

    entries = await db.fetchall("SELECT amount, kind, reference, description FROM ledger_entries "
                                "WHERE user_id = %s AND reference LIKE 'admin:%%' ORDER BY id", (a.user_id,))
    assert entries == [
        {"amount": Decimal("5.25"), "kind": "grant", "reference": "admin:ticket-42",
         "description": "support ticket #42"},
        {"amount": Decimal("-0.25"), "kind": "adjustment", "reference": "admin:corr-1", "description": "correction"}]
    assert await ledger.invariant_violations() == []


@pytest.mark.parametrize("patch, status", [
    ({"amount": "0"}, 400), ({"amount": "1.123456789"}, 400), ({"amount": "abc"}, 400),
    ({"amount": "2000000"}, 400), ({"reason": ""}, 400), ({"reason": "   "}, 400), ({"reason": None}, 400),
    ({"reference": "has spaces"}, 400), ({"user_id": "nope"}, 400), ({"user_id": str(uuid.uuid4())}, 404),
    ({"amount": "-100"}, 402),
])
async def test_bad_credit_requests_change_nothing(api: Any, make_user: Any, patch: dict[str, Any],
                                                  status: int) -> None:
    a = await make_user(balance="10")
    body = {"user_id": str(a.user_id), "amount": "1", "reason": "test", **patch}
    before = (await _ledger_count(), await ledger.get_balance(a.user_id))
    r = await api.post("/v1/admin/credits", json={k: v for k, v in body.items() if v is not None}, headers=ADMIN)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert (await _ledger_count(), await ledger.get_balance(a.user_id)) == before


async def test_deduction_below_zero_only_when_allowed(api: Any, make_user: Any) -> None:
    a = await make_user(balance="1")
    body = {"user_id": str(a.user_id), "amount": "-3", "reason": "chargeback", "allow_negative": True}
    r = await api.post("/v1/admin/credits", json=body, headers=ADMIN)
    assert r.status_code == 201 and r.json()["balance"] == "-2.00000000"


async def test_inspect_user(api: Any, make_user: Any) -> None:
    a = await make_user(balance="7", email="inspect@example.com")
    await api.put("/v1/provider-keys/openai", json={"api_key": provider_secret()}, headers=bearer(a.api_key))
    await api.post("/v1/admin/credits", json={"user_id": str(a.user_id), "amount": "1", "reason": "hello"},
                   headers=ADMIN)
    r = await api.get(f"/v1/admin/users/{a.user_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == str(a.user_id) and body["email"] == "inspect@example.com" and body["balance"] == "8.00000000"
    assert [k["id"] for k in body["api_keys"]] == [str(a.key_id)]
    assert a.api_key not in r.text and "key_hash" not in r.text
    assert [p["provider"] for p in body["provider_keys"]] == ["openai"] and "ciphertext" not in r.text
    assert [e["kind"] for e in body["recent_ledger_entries"]] == ["grant", "welcome"]
    assert body["usage_this_month"]["requests"] == 0

    assert (await api.get(f"/v1/admin/users/{uuid.uuid4()}", headers=ADMIN)).status_code == 404
    assert (await api.get("/v1/admin/users/not-a-uuid", headers=ADMIN)).status_code == 400
