"""Postgres down or hung, through every function of template.yaml (the local stack's router):
each database-backed route answers 503 ``service_unavailable`` with ``Retry-After`` within a
short bound and logs no traceback, /health says why, and the same process recovers when the
database is back. The outage is staged with a TCP proxy in front of the real Postgres
(tests/support/tcp_proxy.py). Also: NUL characters anywhere in a request are a 400."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway import auth, db
from gateway.config import reset_settings
from infra.local.template import http_routes, load_template
from tests.conftest import ADMIN_KEY
from tests.support.billing import billing, fake_stripe_server, gateway, signature_header
from tests.support.tcp_proxy import TcpProxy

__all__ = ["billing", "fake_stripe_server", "gateway"]  # fixtures used by this module

pytestmark = pytest.mark.integration

DB_TIMEOUT_S = 1.0
RETRY_AFTER_S = 2
# A request that reaches the database on each known route (anything else is only checked for "no 500").
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    ("POST", "/v1/billing/checkout"): {"credits": "10"},
    ("POST", "/v1/billing/portal"): {},
    ("POST", "/v1/keys"): {"name": "k"},
    ("PUT", "/v1/provider-keys/{provider}"): {"api_key": "sk-test-provider-key-123456"},
    ("POST", "/v1/admin/users"): {"email": "outage@example.com"},
    ("POST", "/v1/admin/credits"): {"user_id": str(uuid.uuid4()), "amount": "1", "reason": "outage test"},
}
PARAMS = {"{key_id}": str(uuid.uuid4()), "{provider}": "openai", "{user_id}": str(uuid.uuid4()),
          "{model_id+}": "openai/gpt-4o-mini"}
# Served from the Upstash catalogue cache when it is warm: 200 there is right.
MAY_NOT_NEED_THE_DATABASE = {("GET", "/v1/models"), ("GET", "/v1/models/{model_id+}")}
# The console's pages and assets are package data: they never touch the database.
NEVER_NEEDS_THE_DATABASE = {("GET", "/console"), ("GET", "/console/{proxy+}")}


@pytest.fixture
def pg_proxy(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)
    monkeypatch.setenv("DATABASE_URL", database_url.replace("127.0.0.1:5432", proxy.url_host))
    monkeypatch.setenv("DB_TIMEOUT_S", str(DB_TIMEOUT_S))
    monkeypatch.setenv("DB_RETRY_AFTER_S", str(RETRY_AFTER_S))
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "2")
    monkeypatch.setenv("AUTH_CACHE_TTL_S", "60")
    reset_settings()
    yield proxy
    proxy.close()


@pytest.fixture
async def closed_pool() -> AsyncIterator[None]:
    await db.close_pool()
    yield
    await db.close_pool()
    db.reset_breaker()


def _requests(webhook_secret: str, api_key: str) -> list[tuple[tuple[str, str], httpx.Request]]:
    out = []
    for method, path, _fn, _code, _handler in http_routes(load_template("template.yaml")):
        url = path
        for name, value in PARAMS.items():
            url = url.replace(name, value)
        headers = {"authorization": f"Bearer {ADMIN_KEY if path.startswith('/v1/admin') else api_key}"}
        if path == "/health":
            headers = {}  # with a key, the key lookup fails first: a plain 503 (checked below)
        body = BODIES.get((method, path))
        content = json.dumps(body).encode() if body is not None else None
        if path == "/webhooks/stripe":
            event = {"id": "evt_" + uuid.uuid4().hex, "object": "event", "type": "checkout.session.completed",
                     "created": int(time.time()), "livemode": False, "api_version": "2025-01-27.acacia",
                     "data": {"object": {"id": "cs_test_" + uuid.uuid4().hex, "object": "checkout.session",
                                         "mode": "payment", "payment_status": "paid", "status": "complete",
                                         "client_reference_id": str(uuid.uuid4()), "amount_total": 1000,
                                         "currency": "usd", "metadata": {}}}}
            content = json.dumps(event).encode()
            headers = {"stripe-signature": signature_header(content.decode(), webhook_secret)}
        if content is not None:
            headers["content-type"] = "application/json"
        out.append(((method, path), httpx.Request(method, "http://gateway.test" + url, headers=headers,
                                                  content=content)))
    return out


def _assert_503(response: httpx.Response, route: tuple[str, str]) -> None:
    assert response.status_code == 503, (route, response.status_code, response.text)
    assert response.json()["error"]["code"] == "service_unavailable", (route, response.text)
    assert 1 <= int(response.headers["retry-after"]) <= RETRY_AFTER_S, (route, response.headers)


async def test_database_down_every_route_503_then_recovers(
        pg_proxy: TcpProxy, closed_pool: None, gateway: httpx.AsyncClient, billing: Any, make_user: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    user = await make_user(balance="5")
    assert (await gateway.get("/v1/balance", headers={"authorization": f"Bearer {user.api_key}"})).status_code == 200

    pg_proxy.set_mode("refuse")
    caplog.clear()
    caplog.set_level(logging.WARNING)
    checked = 0
    for key_cached in (True, False):  # the route's own queries, then the key lookup itself
        if not key_cached:
            auth.forget_key()
        for route, request in _requests(billing.webhook_secret, user.api_key):
            started = time.perf_counter()
            response = await gateway.send(request)
            elapsed = time.perf_counter() - started
            assert response.status_code != 500, (route, response.text)
            if route[1] == "/health":
                assert response.status_code == 503
                check = response.json()["checks"]["database"]
                assert check["ok"] is False and check["reason"] == "connection refused", check
                assert int(response.headers["retry-after"]) >= 1
            elif route in NEVER_NEEDS_THE_DATABASE:
                assert response.status_code in (200, 404), (route, response.text)
            elif route in MAY_NOT_NEED_THE_DATABASE:  # the last good catalogue, or its own 503
                assert response.status_code in (200, 503), (route, response.text)
                assert response.status_code == 200 or int(response.headers["retry-after"]) >= 1
            elif route in BODIES or request.method in ("GET", "DELETE") or route[1] == "/webhooks/stripe":
                _assert_503(response, route)
            assert elapsed < 1.0, (route, elapsed)  # refused: no wait at all
            checked += 1
    assert checked >= 20
    assert not [r for r in caplog.records if r.exc_info], "no traceback per failed request"

    pg_proxy.set_mode("forward")
    time.sleep(RETRY_AFTER_S)  # the breaker's interval; then the next call tries the database again
    auth.forget_key()
    assert (await gateway.get("/health")).status_code == 200
    response = await gateway.get("/v1/balance", headers={"authorization": f"Bearer {user.api_key}"})
    assert response.status_code == 200, response.text


async def test_database_hung_is_503_within_the_bound(
        pg_proxy: TcpProxy, closed_pool: None, gateway: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user(balance="5")
    headers = {"authorization": f"Bearer {user.api_key}"}
    assert (await gateway.get("/v1/usage", headers=headers)).status_code == 200  # pooled connection open

    pg_proxy.set_mode("stall")  # the open connection and any new one: accepted, never answered
    started = time.perf_counter()
    response = await gateway.get("/v1/usage", headers=headers)
    first = time.perf_counter() - started
    _assert_503(response, ("GET", "/v1/usage"))
    assert DB_TIMEOUT_S <= first < DB_TIMEOUT_S + 1.5, first

    started = time.perf_counter()  # within the interval: no second wait
    health = await gateway.get("/health")
    assert time.perf_counter() - started < 0.5
    assert health.status_code == 503
    assert health.json()["checks"]["database"]["reason"] == f"no answer within {DB_TIMEOUT_S:g} s"
    _assert_503(await gateway.get("/v1/usage", headers=headers), ("GET", "/v1/usage"))

    pg_proxy.set_mode("forward")
    time.sleep(RETRY_AFTER_S)
    response = await gateway.get("/v1/usage", headers=headers)
    assert response.status_code == 200, response.text


async def test_a_hot_statement_fails_fast_on_a_hung_or_refusing_database(pg_proxy: TcpProxy,
                                                                       closed_pool: None) -> None:
    """``db.call`` (reserve and settle) keeps ``run``'s bounds: no answer within DB_TIMEOUT_S is
    DatabaseUnavailable (then at once until Retry-After), a refused connection too; then it recovers."""
    statement = db.Statement("test_hot", "SELECT $1::int + 1")
    assert await db.call(statement, (b"1",)) == [b"2"]  # a pooled connection open

    pg_proxy.set_mode("stall")
    started = time.perf_counter()
    with pytest.raises(db.DatabaseUnavailable) as info:
        await db.call(statement, (b"2",))
    assert DB_TIMEOUT_S <= time.perf_counter() - started < DB_TIMEOUT_S + 1.5
    assert info.value.reason == f"no answer within {DB_TIMEOUT_S:g} s" and 1 <= info.value.retry_after <= 2
    started = time.perf_counter()
    with pytest.raises(db.DatabaseUnavailable):
        await db.call(statement, (b"3",))
    assert time.perf_counter() - started < 0.5  # within the interval: no second wait

    pg_proxy.set_mode("refuse")
    time.sleep(RETRY_AFTER_S)
    started = time.perf_counter()
    with pytest.raises(db.DatabaseUnavailable) as info:
        await db.call(statement, (b"4",))
    assert time.perf_counter() - started < 1.0 and info.value.reason == "connection refused"

    pg_proxy.set_mode("forward")
    time.sleep(RETRY_AFTER_S)
    assert await db.call(statement, (b"5",)) == [b"6"]


async def test_statement_timeout_is_503(closed_pool: None, gateway: httpx.AsyncClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.errors import ServiceUnavailable

    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "100")
    reset_settings()
    import psycopg

    with pytest.raises(psycopg.errors.QueryCanceled) as info:
        await db.fetchone("SELECT pg_sleep(1)")
    err = db.as_service_unavailable(info.value)
    assert isinstance(err, ServiceUnavailable) and err.status == 503 and err.headers["Retry-After"]
    assert db.describe(info.value) == "statement timeout"


# ----------------------------------------------------------------------------------- NUL characters
@pytest.mark.parametrize(("method", "url", "body", "headers"), [
    ("POST", "/v1/chat/completions", '{"model": "openai/gpt-4o-mini", "messages": '
                                     '[{"role": "user", "content": "a\\u0000b"}]}', {}),
    ("POST", "/v1/admin/users", '{"email": "nul\\u0000@example.com"}', {}),
    ("POST", "/v1/keys", '{"name": "a\\u0000"}', {}),
    ("POST", "/v1/keys", b'{"name": "a\x00"}', {}),
    ("GET", "/v1/usage?model=a%00b", None, {}),
    ("GET", "/v1/admin/users/a%00b", None, {}),
    ("GET", "/v1/balance", None, {"x-title": "a\x00b"}),
])
async def test_nul_characters_are_400(gateway: httpx.AsyncClient, make_user: Any, method: str, url: str,
                                      body: str | bytes | None, headers: dict[str, str]) -> None:
    user = await make_user(balance="5")
    auth_key = ADMIN_KEY if "/admin/" in url else user.api_key
    content = body.encode() if isinstance(body, str) else body
    raw_headers = [(b"authorization", f"Bearer {auth_key}".encode()), (b"content-type", b"application/json"),
                   *((name.encode(), value.encode()) for name, value in headers.items())]
    request = httpx.Request(method, "http://gateway.test" + url, content=content, headers=raw_headers)
    before = await db.fetchone("SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM api_keys) AS keys")
    response = await gateway.send(request)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "nul_character"
    after = await db.fetchone("SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM api_keys) AS keys")
    assert after == before  # nothing changed


async def test_escaped_backslash_before_u0000_is_not_a_nul(gateway: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user(balance="5")
    response = await gateway.post("/v1/keys", headers={"authorization": f"Bearer {user.api_key}",
                                                       "content-type": "application/json"},
                                  content=b'{"name": "literal \\\\u0000 text"}')
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "literal \\u0000 text"


@pytest.mark.parametrize(("message", "reason"), [
    ('connection to server at "10.1.2.3", port 5432 failed: Connection refused', "connection refused"),
    ('connection to server at "db.example.com" failed: timeout expired', "connect timeout"),
    ('FATAL:  password authentication failed for user "app"', "authentication failed"),
    ('FATAL:  database "nope" does not exist', "database does not exist"),
    ("SSL error: certificate verify failed", "TLS certificate verification failed"),
    ('prepared statement "_pg3_0" does not exist', "OperationalError"),
])
def test_reasons_never_name_hosts_or_users(message: str, reason: str) -> None:
    import psycopg

    described = db.describe(psycopg.OperationalError(message))
    assert described == reason
    assert "10.1.2.3" not in described and "app" not in described.split()
