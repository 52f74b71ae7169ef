"""/v1/balance, /v1/usage (cursor pagination, filters) and /v1/usage/summary: numbers that add up,
only ever the caller's own rows."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway import db
from gateway.account import users
from gateway.money import ledger
from tests.support.account import (  # noqa: F401  (fixtures)
    api,
    bearer,
    chat_body,
    gateway_router,
    hs256,
    hs256_env,
    set_env,
)

pytestmark = pytest.mark.integration
UTC = dt.UTC


async def _usage(user_id: Any, request_id: str, *, model: str = "openai/gpt-4o-mini", charge: str = "0.001",
                 key_id: Any = None, at: dt.datetime | None = None, status: str = "ok", prompt: int = 10,
                 completion: int = 5) -> None:
    """A settled request, optionally back-dated."""
    await ledger.reserve(user_id, request_id, Decimal("0.01"), api_key_id=key_id, model=model)
    await ledger.settle(ledger.UsageRecord(
        request_id=request_id, user_id=user_id, api_key_id=key_id, model_requested=model, model_served=model,
        provider="openai", status=status, prompt_tokens=prompt, completion_tokens=completion,
        charge=Decimal(charge) if status == "ok" else Decimal(0)))
    if at is not None:
        await db.execute("UPDATE usage_records SET created_at = %s WHERE request_id = %s", (at, request_id))


async def test_balance_shape_and_reserved(api: Any, make_user: Any) -> None:
    a = await make_user(balance="12.5", tier="pro")
    r = await api.get("/v1/balance", headers=bearer(a.api_key))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "balance" and body["currency"] == "USD" and body["tier"] == "pro"
    assert body["balance"] == "12.50000000" and body["reserved"] == "0.00000000" and body["total"] == "12.50000000"
    assert body["rate_limit"] == {"requests_per_minute": 60}
    quota = body["quota"]
    assert quota["requests_used"] == 0 and quota["requests_limit"] == 1000 and quota["requests_remaining"] == 1000
    assert quota["period_start"] == ledger.period_start().isoformat()
    assert quota["resets_at"] == ledger.next_period_start().isoformat()
    assert body["api_key"]["id"] == str(a.key_id) and body["api_key"]["spend_cap"] is None

    await ledger.reserve(a.user_id, "in-flight-1", Decimal("2.25"), api_key_id=a.key_id)
    body = (await api.get("/v1/balance", headers=bearer(a.api_key))).json()
    assert body["balance"] == "10.25000000" and body["reserved"] == "2.25000000" and body["total"] == "12.50000000"
    assert body["quota"]["requests_used"] == 1 and body["quota"]["requests_remaining"] == 999


async def test_quota_use_after_real_requests(api: Any, make_user: Any) -> None:
    a = await make_user(tier="free")
    for _ in range(2):
        r = await api.post("/v1/chat/completions", json=chat_body("meta-llama/llama-3.3-70b-instruct:free"),
                           headers=bearer(a.api_key))
        assert r.status_code == 200, r.text
    body = (await api.get("/v1/balance", headers=bearer(a.api_key))).json()
    assert body["tier"] == "free" and body["quota"]["requests_used"] == 2 and body["quota"]["requests_limit"] == 50


async def test_usage_is_paginated_newest_first_without_gaps(api: Any, make_user: Any) -> None:
    a = await make_user()
    base = dt.datetime(2025, 3, 1, 12, tzinfo=UTC)
    for i in range(25):
        # pairs share a timestamp: the cursor must break ties by id
        await _usage(a.user_id, f"a-{i:02d}", at=base + dt.timedelta(minutes=i // 2))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/usage?limit=10" + (f"&cursor={cursor}" if cursor else "")
        r = await api.get(url, headers=bearer(a.api_key))
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        seen += [x["id"] for x in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == 3 and len(seen) == 25 and len(set(seen)) == 25
    created = [(await db.fetchone("SELECT created_at, id FROM usage_records WHERE request_id = %s", (s,)))
               for s in seen]
    assert created == sorted(created, key=lambda c: (c["created_at"], c["id"]), reverse=True)  # type: ignore[index]
    first = (await api.get("/v1/usage?limit=1", headers=bearer(a.api_key))).json()["data"][0]
    assert first["id"] == seen[0] and first["charge"] == "0.00100000" and first["total_tokens"] == 15
    assert set(first) >= {"created_at", "model", "model_served", "provider", "status", "api_key_id", "byok",
                          "prompt_tokens", "completion_tokens", "cached_tokens", "latency_ms"}
    assert "provider_cost" not in first and "markup" not in first


async def test_usage_filters(api: Any, make_user: Any) -> None:
    a = await make_user(balance="50")
    k2 = await users.create_api_key(a.user_id, "second")
    await _usage(a.user_id, "jan", at=dt.datetime(2025, 1, 15, tzinfo=UTC))
    await _usage(a.user_id, "feb-1", at=dt.datetime(2025, 2, 1, 0, 0, tzinfo=UTC), model="anthropic/claude-3.5-haiku")
    await _usage(a.user_id, "feb-28", at=dt.datetime(2025, 2, 28, 23, 59, tzinfo=UTC), key_id=k2.key_id)
    await _usage(a.user_id, "mar", at=dt.datetime(2025, 3, 1, tzinfo=UTC), key_id=k2.key_id)
    h = bearer(a.api_key)

    async def ids(query: str) -> list[str]:
        r = await api.get("/v1/usage?" + query, headers=h)
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["data"]]

    assert await ids("from=2025-02-01&to=2025-02-28") == ["feb-28", "feb-1"], "a bare `to` date includes that day"
    assert await ids("from=2025-02-01T00:00:01Z") == ["mar", "feb-28"]
    assert await ids("to=2025-02-01T00:00:00%2B00:00") == ["jan"], "an exclusive upper bound"
    assert await ids("to=2025-02-01T00:00:00+00:00") == ["jan"], "'+' decoded as a space is understood"
    assert await ids(f"from={int(dt.datetime(2025, 2, 2, tzinfo=UTC).timestamp())}") == ["mar", "feb-28"]
    assert await ids("model=anthropic/claude-3.5-haiku") == ["feb-1"]
    assert await ids(f"api_key_id={k2.key_id}") == ["mar", "feb-28"]
    assert await ids(f"api_key_id={k2.key_id}&from=2025-03-01") == ["mar"]


@pytest.mark.parametrize("query, param", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("from=yesterday", "from"),
    ("to=2025-13-01", "to"), ("from=2025-03-01&to=2025-02-01", "from"), ("cursor=%%%", "cursor"),
    ("cursor=bm90LWEtY3Vyc29y", "cursor"), ("api_key_id=abc", "api_key_id"),
])
async def test_bad_usage_queries_are_400(api: Any, make_user: Any, query: str, param: str) -> None:
    a = await make_user()
    r = await api.get("/v1/usage?" + query, headers=bearer(a.api_key))
    assert r.status_code == 400, r.text
    assert param in (r.json()["error"]["param"] or ""), r.json()


async def test_summary_by_day_and_model(api: Any, make_user: Any) -> None:
    a = await make_user(balance="50")
    await _usage(a.user_id, "d1-a", at=dt.datetime(2025, 4, 1, 1, tzinfo=UTC), charge="0.5", prompt=100,
                 completion=10)
    await _usage(a.user_id, "d1-b", at=dt.datetime(2025, 4, 1, 23, tzinfo=UTC), charge="0.25",
                 model="anthropic/claude-3.5-haiku")
    await _usage(a.user_id, "d2-a", at=dt.datetime(2025, 4, 2, 12, tzinfo=UTC), charge="0.125")
    await _usage(a.user_id, "d2-fail", at=dt.datetime(2025, 4, 2, 13, tzinfo=UTC), status="failed", prompt=0,
                 completion=0)
    h = bearer(a.api_key)
    r = await api.get("/v1/usage/summary?group_by=day&from=2025-04-01&to=2025-04-30", headers=h)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["object"] == "usage_summary" and s["group_by"] == "day"
    assert [(x["day"], x["requests"], x["failed_requests"], x["charge"]) for x in s["data"]] == [
        ("2025-04-01", 2, 0, "0.75000000"), ("2025-04-02", 2, 1, "0.12500000")]
    assert s["total"]["requests"] == 4 and s["total"]["charge"] == "0.87500000"
    assert s["total"]["prompt_tokens"] == 120 and s["total"]["total_tokens"] == 120 + 20

    r = await api.get("/v1/usage/summary?group_by=model&from=2025-04-01&to=2025-04-30", headers=h)
    by_model = {x["model"]: x for x in r.json()["data"]}
    assert by_model["openai/gpt-4o-mini"]["charge"] == "0.62500000"
    assert by_model["anthropic/claude-3.5-haiku"]["requests"] == 1
    charges = await db.fetchone("SELECT sum(charge) AS s FROM usage_records WHERE user_id = %s", (a.user_id,))
    assert charges is not None and Decimal(r.json()["total"]["charge"]) == charges["s"]

    this_month = (await api.get("/v1/usage/summary", headers=h)).json()
    assert this_month["data"] == [] and this_month["total"]["requests"] == 0, "default window: the current month"
    r = await api.get("/v1/usage/summary?group_by=week", headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"


async def test_isolation(api: Any, make_user: Any) -> None:
    a, b = await make_user(), await make_user()
    await _usage(a.user_id, "a-only", key_id=a.key_id)
    await _usage(b.user_id, "b-only", key_id=b.key_id)
    hb = bearer(b.api_key)
    listing = (await api.get("/v1/usage", headers=hb)).json()
    assert [x["id"] for x in listing["data"]] == ["b-only"]
    assert (await api.get(f"/v1/usage?api_key_id={a.key_id}", headers=hb)).json()["data"] == []
    summary = (await api.get(f"/v1/usage/summary?api_key_id={a.key_id}&from=2020-01-01", headers=hb)).json()
    assert summary["total"]["requests"] == 0
    a_cursor_page = (await api.get("/v1/usage?limit=1", headers=bearer(a.api_key))).json()
    assert a_cursor_page["data"][0]["id"] == "a-only"
    await ledger.reserve(a.user_id, "a-hold", Decimal("3"))
    assert (await api.get("/v1/balance", headers=hb)).json()["reserved"] == "0.00000000"


async def test_jwt_user_sees_own_usage(api: Any, hs256_env: Any) -> None:
    token = hs256(email=f"jwt-{uuid.uuid4().hex[:10]}@example.com", email_verified=True)  # welcome credit to spend
    body = (await api.get("/v1/balance", headers=bearer(token))).json()
    user = await db.fetchone("SELECT u.id FROM users u WHERE u.external_sub IS NOT NULL ORDER BY created_at DESC "
                             "LIMIT 1")
    assert user is not None
    await _usage(user["id"], "jwt-usage")
    r = await api.get("/v1/usage", headers=bearer(token))
    assert [x["id"] for x in r.json()["data"]] == ["jwt-usage"]
    assert "api_key" not in body
