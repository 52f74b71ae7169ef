"""GET /v1/models and GET /v1/models/{model_id} through the ModelsFunction app (functions/models/app.py),
in-process (ASGI) and through the Lambda handler itself (Mangum + Powertools) invoked with an API
Gateway HTTP API v2 event. Warm-path timings live in BENCHMARKS.md, not here.
"""

# ruff: noqa: F811  (test arguments named after the catalog_env fixture imported below)

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest

from gateway import db
from gateway.catalog import cache, discovery, render
from gateway.catalog.cache import STATS
from gateway.catalog.render import Catalogue
from gateway.config import reset_settings
from infra.local.servers import free_port
from tests.conftest import ADMIN_KEY
from tests.support.catalog import CatalogEnv, catalog_env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
D = Decimal


def load_function(name: str) -> ModuleType:
    path = ROOT / "functions" / "models" / f"{name}.py"
    module_name = f"fn_models_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def client(catalog_env: CatalogEnv) -> AsyncIterator[httpx.AsyncClient]:
    app = load_function("app").app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://models.test") as c:
        yield c


@pytest.fixture
async def synced(catalog_env: CatalogEnv) -> CatalogEnv:
    await discovery.discover(trigger="test")
    return catalog_env


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def data(r: httpx.Response) -> dict[str, dict[str, Any]]:
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and isinstance(doc["data"], list)
    return {m["id"]: m for m in doc["data"]}


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "type" in err


async def test_list_shape_and_our_prices(synced: CatalogEnv, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    models = data(r)
    assert len(models) == 305
    gpt = models["openai/gpt-4o"]
    assert gpt["object"] == "model" and gpt["owned_by"] == "openai" and gpt["name"] == "OpenAI: GPT-4o"
    assert gpt["context_length"] == 128000 and gpt["max_completion_tokens"] == 16384
    assert gpt["architecture"]["input_modalities"] == ["text", "image", "file"]
    assert isinstance(gpt["created"], int) and gpt["created"] == 1715558400
    # OpenRouter convention, OUR price: list price x 1.10 (free tier markup for an anonymous caller)
    assert gpt["pricing"] == {"prompt": "0.00000275", "completion": "0.000011", "request": "0",
                              "input_cache_read": "0.000001375"}
    assert "provider_pricing" not in gpt and "route" not in gpt
    for m in models.values():  # every price is a plain decimal string
        for value in m["pricing"].values():
            assert isinstance(value, str) and "e" not in value.lower() and D(value) >= 0
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]


async def test_large_list_is_gzipped_for_clients_that_accept_it(synced: CatalogEnv,
                                                                client: httpx.AsyncClient) -> None:
    plain = await client.get("/v1/models", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.headers["vary"] == "accept-encoding"
    zipped = await client.get("/v1/models", headers={"accept-encoding": "gzip, deflate"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(plain.content) / 5
    assert zipped.json() == plain.json()  # httpx decompresses


async def test_single_model_ids_with_slashes(synced: CatalogEnv, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/openai/gpt-4o")
    assert r.status_code == 200 and r.json()["id"] == "openai/gpt-4o"
    r = await client.get("/v1/models/meta-llama/llama-3.3-70b-instruct:free")
    assert r.status_code == 200 and r.json()["pricing"]["prompt"] == "0"
    assert_error(await client.get("/v1/models/nobody/nothing"), 404, "model_not_found")
    assert_error(await client.get("/v1/models/mistralai/codestral-2501"), 404, "model_not_found")  # inactive


async def test_prices_follow_the_callers_tier_and_admin_sees_cost(synced: CatalogEnv, client: httpx.AsyncClient,
                                                                  make_user: Any) -> None:
    enterprise = await make_user(tier="enterprise")
    pro = await make_user(tier="pro")
    ent = data(await client.get("/v1/models", headers=auth(enterprise.api_key)))["openai/gpt-4o"]
    assert ent["pricing"]["prompt"] == "0.000002625"  # markup 5 %
    assert data(await client.get("/v1/models", headers=auth(pro.api_key)))["openai/gpt-4o"]["pricing"][
        "prompt"] == "0.00000275"
    # ?tier=X shows the catalogue as that tier sees it
    assert data(await client.get("/v1/models?tier=enterprise"))["openai/gpt-4o"]["pricing"]["prompt"] == "0.000002625"
    admin = data(await client.get("/v1/models", headers=auth(ADMIN_KEY)))["openai/gpt-4o"]
    assert admin["provider_pricing"]["prompt"] == "0.0000025"
    assert admin["route"] == {"provider": "openai", "upstream_model": "gpt-4o"}
    assert admin["markup"] == "0.1"
    one = (await client.get("/v1/models/openai/gpt-4o", headers=auth(ADMIN_KEY))).json()
    assert one["provider_pricing"]["completion"] == "0.00001"


async def test_filters(synced: CatalogEnv, client: httpx.AsyncClient, make_user: Any) -> None:
    anthropic = data(await client.get("/v1/models?provider=anthropic"))
    assert anthropic and all(i.startswith("anthropic/") for i in anthropic)
    both = data(await client.get("/v1/models?provider=anthropic,google"))
    assert {i.split("/")[0] for i in both} == {"anthropic", "google"}
    routed = data(await client.get("/v1/models?provider=openrouter"))
    assert "x-ai/grok-3-mini" in routed and "openai/gpt-4o" not in routed
    images = data(await client.get("/v1/models?modality=image"))
    assert images and all("image" in m["architecture"]["input_modalities"] + m["architecture"]["output_modalities"]
                          for m in images.values())
    exact = data(await client.get("/v1/models", params={"modality": "image+text->image+text"}))
    assert list(exact) == ["google/gemini-2.5-flash-image-preview"]

    free = data(await client.get("/v1/models?tier=free"))
    cap = D("0.000001")
    assert free and len(free) < 301
    for m in free.values():
        cost = (await client.get(f"/v1/models/{m['id']}", headers=auth(ADMIN_KEY))).json()["provider_pricing"]
        assert m["id"].endswith(":free") or (D(cost["prompt"]) <= cap and D(cost["completion"]) <= cap)
    assert "openai/gpt-4o" not in free and "meta-llama/llama-3.3-70b-instruct:free" in free
    user = await make_user(tier="free")
    assert data(await client.get("/v1/models?tier=mine", headers=auth(user.api_key))).keys() == free.keys()
    assert_error(await client.get("/v1/models?tier=mine"), 401, "missing_api_key")
    assert_error(await client.get("/v1/models?tier=platinum"), 400, "unknown_tier")
    assert data(await client.get("/v1/models?provider=nobody")) == {}


async def test_refresh_needs_the_admin_key(synced: CatalogEnv, client: httpx.AsyncClient, make_user: Any) -> None:
    env = synced
    user = await make_user()
    before = len(env.fake_requests("openrouter"))
    assert_error(await client.get("/v1/models?refresh=true"), 403, "admin_required")
    assert_error(await client.get("/v1/models?refresh=true", headers=auth(user.api_key)), 403, "admin_required")
    assert_error(await client.get("/v1/models?refresh=true", headers=auth("sk-mlp-bogus")), 403, "admin_required")
    assert_error(await client.get("/v1/models/openai/gpt-4o?refresh=1", headers=auth(user.api_key)), 403,
                 "admin_required")
    assert len(env.fake_requests("openrouter")) == before, "no discovery without the admin key"

    listed = env.fake_get("openrouter")
    env.fake_put("openrouter", [*listed, "brand-new/model-x"])
    r = await client.get("/v1/models?refresh=true", headers=auth(ADMIN_KEY))
    assert r.status_code == 200 and r.headers["x-catalog-sync"] == "ok" and r.headers["x-catalog-sync-id"]
    assert "brand-new/model-x" in data(r)
    assert len(env.fake_requests("openrouter")) == before + 2  # /models and /embeddings/models


async def test_key_protected_mode(synced: CatalogEnv, client: httpx.AsyncClient, make_user: Any,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS_AUTH", "key")
    reset_settings()
    user = await make_user()
    assert_error(await client.get("/v1/models"), 401, "missing_api_key")
    assert_error(await client.get("/v1/models/openai/gpt-4o"), 401, "missing_api_key")
    assert len(data(await client.get("/v1/models", headers=auth(user.api_key)))) == 305
    assert len(data(await client.get("/v1/models", headers=auth(ADMIN_KEY)))) == 305
    monkeypatch.delenv("MODELS_AUTH")
    reset_settings()
    assert len(data(await client.get("/v1/models"))) == 305


async def test_bad_key_is_401_even_when_public(synced: CatalogEnv, client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/models", headers=auth("sk-mlp-not-a-real-key")), 401, "invalid_api_key")


async def test_concurrent_cold_requests_rebuild_once(synced: CatalogEnv, client: httpx.AsyncClient) -> None:
    synced.drop_cache()
    STATS.reset()
    responses = await asyncio.gather(*(client.get("/v1/models") for _ in range(40)))
    assert all(r.status_code == 200 for r in responses)
    assert STATS.rebuilds == 1
    assert sorted({r.headers["x-catalog-cache"] for r in responses}) == ["local", "postgres"]
    assert len({r.content for r in responses}) == 1


async def test_warm_get_is_served_from_the_cache(synced: CatalogEnv, client: httpx.AsyncClient,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    synced.drop_cache()
    first = await client.get("/v1/models")
    assert first.headers["x-catalog-cache"] == "postgres"
    rebuilds = STATS.rebuilds
    # Postgres gone (a real, refused connection): a warm GET must not need it.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nope")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "1")
    reset_settings()
    await db.close_pool()
    try:
        for _ in range(20):
            r = await client.get("/v1/models")
            assert r.status_code == 200 and r.headers["x-catalog-cache"] == "local"
            assert r.content == first.content
        assert STATS.rebuilds == rebuilds
        with pytest.raises(psycopg.OperationalError):  # Postgres really was out of reach
            await db.fetchone("SELECT 1")
    finally:
        monkeypatch.undo()
        reset_settings()
        await db.close_pool()


class FakeContext:
    function_name = "ModelsFunction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ModelsFunction"
    memory_limit_in_mb = 512
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    log_group_name = "/aws/lambda/ModelsFunction"
    log_stream_name = "2025/01/01/[$LATEST]abc"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30000


def http_api_event(path: str, query: str = "") -> dict[str, Any]:
    return {
        "version": "2.0", "routeKey": "GET /v1/models", "rawPath": path, "rawQueryString": query,
        "headers": {"accept": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com",
                    "user-agent": "pytest"},
        "requestContext": {"accountId": "123456789012", "apiId": "abc123", "domainName":
                           "abc123.execute-api.us-east-1.amazonaws.com", "domainPrefix": "abc123",
                           "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1",
                                    "userAgent": "pytest"},
                           "requestId": "JKJaXmPLvHcESHA=", "routeKey": "GET /v1/models", "stage": "$default",
                           "time": "01/Jan/2025:00:00:00 +0000", "timeEpoch": 1735689600000},
        "isBase64Encoded": False,
    }


def test_warm_lambda_invocation(synced: CatalogEnv) -> None:
    """The ModelsFunction handler (Mangum + Powertools) answering from the warm container."""
    snapshot = render.build_snapshot(synced.sql(render.SELECT_CATALOGUE))
    default = cache.default_cache()
    default._current, default._checked_at = Catalogue(snapshot), time.monotonic()
    handler = load_function("app").handler
    response = handler(http_api_event("/v1/models"), FakeContext())
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert len(body["data"]) == 305
    assert response["headers"]["x-catalog-cache"] == "local"
    gz_event = http_api_event("/v1/models")
    gz_event["headers"]["accept-encoding"] = "gzip"
    packed = handler(gz_event, FakeContext())
    assert packed["isBase64Encoded"] and packed["headers"]["content-encoding"] == "gzip"
    import base64
    import gzip
    assert json.loads(gzip.decompress(base64.b64decode(packed["body"]))) == body
    one = handler(http_api_event("/v1/models/anthropic/claude-sonnet-4"), FakeContext())
    assert one["statusCode"] == 200 and json.loads(one["body"])["id"] == "anthropic/claude-sonnet-4"
