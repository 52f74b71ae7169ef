"""OpenRouter-style ``GET /v1/key`` and ``GET /v1/credits`` on real Postgres: OpenRouter's shape,
amounts as exact JSON numbers that add up with the ledger, only the caller's own rows."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway import db
from gateway.account import users
from gateway.account.usage import _windows
from gateway.money import ledger
from gateway.money.format import dumps_exact, json_number
from tests.support.account import api, bearer, chat_body, gateway_router, hs256, hs256_env, set_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


async def settled(user_id: Any, key_id: Any, charge: str, *, at: dt.datetime | None = None, byok: bool = False,
                  provider_cost: str = "0") -> None:
    request_id = "req_" + uuid.uuid4().hex
    await ledger.reserve(user_id, request_id, Decimal("1"), api_key_id=key_id, model="openai/gpt-4o-mini")
    await ledger.settle(ledger.UsageRecord(
        request_id=request_id, user_id=user_id, api_key_id=key_id, model_requested="openai/gpt-4o-mini",
        model_served="openai/gpt-4o-mini", provider="openai", status="ok", prompt_tokens=10, completion_tokens=5,
        charge=Decimal(charge), byok=byok, provider_cost=Decimal(provider_cost)))
    if at is not None:
        await db.execute("UPDATE usage_records SET created_at = %s WHERE request_id = %s", (at, request_id))


def test_json_numbers_are_exact() -> None:
    assert json_number(Decimal("9.50000000")) == "9.5"
    assert json_number(Decimal("0E-8")) == "0" and json_number(Decimal("-0.00000000")) == "0"
    assert json_number(Decimal("100")) == "100" and json_number(Decimal("0.12345678")) == "0.12345678"
    assert json_number(Decimal("123456789012.00000001")) == "123456789012.00000001"
    assert dumps_exact({"a": [Decimal("1.10"), None, True, "é"], "b": {"c": 2}}) == \
        '{"a":[1.1,null,true,"é"],"b":{"c":2}}'
    with pytest.raises(ValueError):
        json_number(Decimal("NaN"))


async def test_key_view_for_a_capped_key(api: Any, make_user: Any) -> None:
    user = await make_user(balance="20", tier="pro")
    capped = await users.create_api_key(user.user_id, "ci runner", rpm=30, spend_cap=Decimal("5"))
    long_ago = _windows()["month"] - dt.timedelta(days=40)
    await settled(user.user_id, capped.key_id, "0.12345678")
    await settled(user.user_id, capped.key_id, "1.00000001", at=long_ago)
    await settled(user.user_id, capped.key_id, "0.00000100", byok=True, provider_cost="0.000123456789")
    await settled(user.user_id, user.key_id, "3.5")  # another key of the same user does not count
    other = await make_user(balance="20")
    await settled(other.user_id, other.key_id, "2")

    r = await api.get("/v1/key", headers=bearer(capped.secret))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    data = r.json()["data"]
    assert data == {
        "label": "ci runner", "limit": 5, "limit_remaining": pytest.approx(5 - 1.12345779),
        "limit_reset": None, "include_byok_in_limit": False,
        "usage": pytest.approx(1.12345779), "usage_daily": pytest.approx(0.12345778),
        "usage_weekly": pytest.approx(0.12345778), "usage_monthly": pytest.approx(0.12345778),
        "byok_usage": pytest.approx(0.00012346), "byok_usage_daily": pytest.approx(0.00012346),
        "byok_usage_weekly": pytest.approx(0.00012346), "byok_usage_monthly": pytest.approx(0.00012346),
        "is_free_tier": False, "is_provisioning_key": False, "is_management_key": False,
        "creator_user_id": str(user.user_id), "expires_at": None,
        "rate_limit": {"requests": 30, "interval": "1m"},
    }
    # the JSON numbers are the exact decimals (never a float's rounding)
    assert '"usage":1.12345779,' in r.text and '"limit_remaining":3.87654221,' in r.text
    assert '"byok_usage":0.00012346,' in r.text  # provider cost rounded up to credit precision


async def test_key_view_for_an_uncapped_free_key_with_x_api_key(api: Any, make_user: Any) -> None:
    user = await make_user(balance="1", tier="free")
    data = (await api.get("/v1/key", headers={"x-api-key": user.api_key})).json()["data"]
    assert (data["limit"], data["limit_remaining"], data["usage"], data["is_free_tier"]) == (None, None, 0, True)
    assert data["rate_limit"] == {"requests": 10, "interval": "1m"}  # the free tier's rpm


async def test_key_view_needs_an_api_key(api: Any, hs256_env: Any) -> None:
    assert (await api.get("/v1/key")).status_code == 401
    token = hs256(email=f"jwt-{uuid.uuid4().hex[:8]}@example.com")
    r = await api.get("/v1/key", headers=bearer(token))
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert (await api.get("/v1/credits", headers=bearer(token))).status_code == 200  # credits: a sign-in is fine


async def test_credits_add_up_with_the_ledger(api: Any, make_user: Any) -> None:
    user = await make_user(balance="10")
    await settled(user.user_id, user.key_id, "0.25000001")
    await settled(user.user_id, user.key_id, "1.5")
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(user.api_key))
    assert r.status_code == 200
    await ledger.reserve(user.user_id, "in-flight", Decimal("0.5"), api_key_id=user.key_id)  # held, not usage

    r = await api.get("/v1/credits", headers={"x-api-key": user.api_key})
    assert r.status_code == 200
    data = r.json()["data"]
    used = await db.fetchone("SELECT -sum(amount) AS used FROM ledger_entries WHERE user_id = %s AND kind = 'usage'",
                             (user.user_id,))
    balance = await ledger.get_balance(user.user_id)
    assert used is not None and balance is not None
    assert set(data) == {"total_credits", "total_usage"}
    assert Decimal(json.loads(r.text, parse_float=Decimal)["data"]["total_usage"]) == used["used"]
    exact = json.loads(r.text, parse_float=Decimal, parse_int=Decimal)["data"]
    assert exact["total_credits"] - exact["total_usage"] == balance["balance"] == sum(
        row["amount"] for row in await db.fetchall("SELECT amount FROM ledger_entries WHERE user_id = %s",
                                                   (user.user_id,)))
    assert exact["total_credits"] == Decimal("10")  # what was credited (the welcome credit here)
    assert await ledger.invariant_violations() == []


async def test_credits_of_another_user_are_never_seen(api: Any, make_user: Any) -> None:
    a = await make_user(balance="3")
    b = await make_user(balance="7")
    await settled(b.user_id, b.key_id, "2")
    data = (await api.get("/v1/credits", headers=bearer(a.api_key))).json()["data"]
    assert data == {"total_credits": 3, "total_usage": 0}
