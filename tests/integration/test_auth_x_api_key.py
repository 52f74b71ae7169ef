"""``x-api-key`` works wherever a key is accepted (every function of template.yaml, real Postgres),
and two different credentials in one request are refused before anything is charged."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

from typing import Any

import pytest

from gateway import db
from tests.conftest import ADMIN_KEY
from tests.support.account import api, chat_body, gateway_router  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


async def test_x_api_key_is_accepted_on_every_route_family(api: Any, make_user: Any) -> None:
    user = await make_user(balance="5")
    key = {"x-api-key": user.api_key}
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=key)
    assert r.status_code == 200, r.text
    rows = await db.fetchall("SELECT status, api_key_id FROM usage_records WHERE user_id = %s", (user.user_id,))
    assert [(row["status"], row["api_key_id"]) for row in rows] == [("ok", user.key_id)]
    for path in ("/v1/balance", "/v1/usage", "/v1/keys", "/v1/provider-keys", "/v1/models?tier=mine"):
        r = await api.get(path, headers=key)
        assert r.status_code == 200, (path, r.text)
    health = (await api.get("/health", headers=key)).json()
    assert health["caller"] == {"user_id": str(user.user_id), "key_id": str(user.key_id)}
    admin = await api.get(f"/v1/admin/users/{user.user_id}", headers={"x-api-key": ADMIN_KEY})
    assert admin.status_code == 200, admin.text


async def test_a_bad_x_api_key_is_a_401(api: Any) -> None:
    r = await api.post("/v1/chat/completions", json=chat_body(), headers={"x-api-key": "sk-mlp-nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


async def test_two_different_keys_are_refused_and_nothing_is_charged(api: Any, make_user: Any) -> None:
    a = await make_user(balance="5")
    b = await make_user(balance="5")
    headers = {"Authorization": f"Bearer {a.api_key}", "x-api-key": b.api_key}
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/balance"), ("GET", "/health")):
        r = await api.request(method, path, json=chat_body() if method == "POST" else None, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "conflicting_credentials"
    assert await db.fetchone("SELECT count(*) AS n FROM usage_records") == {"n": 0}
    same = await api.get("/v1/balance", headers={"Authorization": f"Bearer {a.api_key}", "x-api-key": a.api_key})
    assert same.status_code == 200
