"""``GET /health`` (functions/health/app.py) against the real stack: Postgres, the Upstash REST
bridge on the real Redis; through httpx's ASGI transport and through the real Lambda handler
(Mangum wrapped by Powertools) with an API Gateway HTTP API v2 event."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gateway import db, upstash
from gateway.config import reset_settings
from gateway.migrate import discover
from infra.local.servers import free_port
from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.integration

APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "health" / "app.py"
NEWEST_FILE = discover()[-1].version  # what the session database was migrated to


def load_health_module() -> ModuleType:
    name = "mlp_health_function_under_test"
    spec = importlib.util.spec_from_file_location(name, APP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_module(stack: str) -> ModuleType:
    return load_health_module()


@pytest.fixture
async def client(health_module: ModuleType) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=health_module.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://health.test") as c:
        yield c


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert {"message", "type", "code", "param"} <= set(err)
    return err  # type: ignore[no-any-return]


async def test_health_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    database, redis = body["checks"]["database"], body["checks"]["redis"]
    assert database["ok"] is True
    assert database["schema_version"] == NEWEST_FILE
    assert database["expected_schema_version"] == db.EXPECTED_SCHEMA_VERSION
    assert isinstance(database["latency_ms"], int | float) and database["latency_ms"] >= 0
    assert redis["ok"] is True
    assert isinstance(redis["latency_ms"], int | float) and redis["latency_ms"] >= 0
    assert "caller" not in body
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_bad_bearer_key_is_openai_shaped_401(client: httpx.AsyncClient) -> None:
    for header in ("Bearer sk-mlp-" + "z" * 43, "Bearer nonsense", "Basic dXNlcjpwYXNz"):
        response = await client.get("/health", headers={"Authorization": header})
        err = assert_error(response, 401)
        assert err["type"] == "authentication_error"


async def test_admin_key_accepted(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200
    assert response.json()["caller"] == "admin"


async def test_user_key_identifies_the_caller(client: httpx.AsyncClient, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    response = await client.get("/health", headers={"Authorization": f"Bearer {user.api_key}"})
    assert response.status_code == 200
    assert response.json()["caller"] == {"user_id": str(user.user_id), "key_id": str(user.key_id)}


async def test_upstash_down_is_503(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{free_port()}")
    reset_settings()
    upstash.reset_redis()
    try:
        response = await client.get("/health")
    finally:
        monkeypatch.undo()
        reset_settings()
        upstash.reset_redis()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"]
    assert body["checks"]["database"]["ok"] is True
    # and back to healthy once Upstash answers again
    assert (await client.get("/health")).status_code == 200


async def test_migrations_not_current_is_503(client: httpx.AsyncClient) -> None:
    # Remove the newest row(s) so the database is behind what the code expects (when the code and
    # the files agree -- tests/unit/test_migrations.py -- that is exactly the newest row).
    removed = await db.fetchall("DELETE FROM schema_migrations WHERE version >= %s RETURNING *",
                                (db.EXPECTED_SCHEMA_VERSION,))
    assert removed
    try:
        response = await client.get("/health")
    finally:
        for row in removed:
            await db.execute("INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                             "VALUES (%(version)s, %(name)s, %(checksum)s, %(applied_at)s)", row)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    database = body["checks"]["database"]
    assert database["ok"] is False
    assert "migrations not current" in database["error"]
    assert database["schema_version"] != db.EXPECTED_SCHEMA_VERSION
    assert database["expected_schema_version"] == db.EXPECTED_SCHEMA_VERSION
    assert body["checks"]["redis"]["ok"] is True
    assert (await client.get("/health")).status_code == 200


async def test_schema_ahead_of_code_is_healthy(client: httpx.AsyncClient) -> None:
    # A deploy migrates first; functions still on the previous code must stay healthy.
    await db.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ('9999', 'future', 'x')")
    try:
        response = await client.get("/health")
    finally:
        await db.execute("DELETE FROM schema_migrations WHERE version = '9999'")
    assert response.status_code == 200
    assert response.json()["checks"]["database"]["schema_version"] == "9999"


async def test_database_down_is_503(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nope")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "1")
    reset_settings()
    await db.close_pool()
    try:
        response = await client.get("/health")
    finally:
        monkeypatch.undo()
        reset_settings()
        await db.close_pool()
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["redis"]["ok"] is True


# ----------------------------------------------------------------------------------- Lambda handler
class FakeLambdaContext:
    function_name = "mlp-test-health"
    function_version = "$LATEST"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:mlp-test-health"
    aws_request_id = "6f1a7c2e-52b4-4a47-9d0e-1d3c8f0b9a11"
    log_group_name = "/aws/lambda/mlp-test-health"
    log_stream_name = "2024/01/01/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def http_api_v2_event(path: str = "/health", headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": f"GET {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "accept": "*/*",
            "content-length": "0",
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "user-agent": "curl/8.5.0",
            "x-amzn-trace-id": "Root=1-65a1b2c3-0123456789abcdef01234567",
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **(headers or {}),
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7",
                     "userAgent": "curl/8.5.0"},
            "requestId": "RlkqXgWJoAMEPnA=",
            "routeKey": f"GET {path}",
            "stage": "$default",
            "time": "12/Mar/2024:19:03:58 +0000",
            "timeEpoch": 1710270238000,
        },
        "isBase64Encoded": False,
    }


def invoke_in_own_loop(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Run the handler like the Lambda runtime does: synchronously, on a thread with its own loop."""
    result: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            result.update(handler(event, FakeLambdaContext()))
        except BaseException as exc:
            errors.append(exc)
        finally:
            loop.run_until_complete(db.close_pool())
            client = upstash._client.peek(loop)
            if client is not None:
                loop.run_until_complete(client.close())
            upstash.reset_redis()
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]
    return result


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
async def test_lambda_handler_with_http_api_v2_event(health_module: ModuleType) -> None:
    await db.close_pool()  # the handler's thread gets its own loop and pool
    upstash.reset_redis()
    response = await asyncio.to_thread(invoke_in_own_loop, health_module.handler, http_api_v2_event())
    assert response["statusCode"] == 200, response
    headers = {k.lower(): v for k, v in response["headers"].items()}
    # no X-Request-Id from the client: the API Gateway request id is used and echoed
    assert headers["x-request-id"] == "RlkqXgWJoAMEPnA="
    assert headers["content-type"].startswith("application/json")
    assert headers["x-content-type-options"] == "nosniff"
    body = json.loads(response["body"])
    assert body["status"] == "ok"
    assert body["checks"]["database"]["schema_version"] == NEWEST_FILE


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
async def test_lambda_handler_auth_error(health_module: ModuleType) -> None:
    await db.close_pool()
    upstash.reset_redis()
    event = http_api_v2_event(headers={"authorization": "Bearer sk-mlp-wrong", "x-request-id": "client-rid-1"})
    response = await asyncio.to_thread(invoke_in_own_loop, health_module.handler, event)
    assert response["statusCode"] == 401
    headers = {k.lower(): v for k, v in response["headers"].items()}
    assert headers["x-request-id"] == "client-rid-1"
    assert json.loads(response["body"])["error"]["type"] == "authentication_error"
