"""The app factory: one error shape for everything, request ids, security headers, the body size
limit and the CORS allowlist — exercised in-process through httpx's ASGI transport (no network)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field, ValidationError

from gateway import errors
from gateway.config import reset_settings
from gateway.http import Routes, create_app, create_lean_app, invalid_request, request_id_of
from tests.support.apps import in_fresh_function

LIMIT = 1000
ALLOWED_ORIGIN = "https://app.example.com"
SECRET_TEXT = "db password is hunter2 at /var/secret"


def _all_gateway_errors() -> list[type[errors.GatewayError]]:
    out: list[type[errors.GatewayError]] = []
    pending = [errors.GatewayError]
    while pending:
        cls = pending.pop()
        out.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(out, key=lambda c: c.__name__)


ERROR_CLASSES = {cls.__name__: cls for cls in _all_gateway_errors()}


class Body(BaseModel):
    model: str = Field(min_length=1)
    max_tokens: int = Field(default=16, gt=0)


router = APIRouter()


@router.get("/raise/{name}")
async def raise_error(name: str) -> dict[str, str]:
    raise ERROR_CLASSES[name]("custom message for " + name, param="some_param")


@router.get("/quota")
async def quota() -> dict[str, str]:
    raise errors.InsufficientCredits(balance="0.5", required="1.25", headers={"Retry-After": "7"})


@router.post("/echo")
async def echo(body: Body, request: Request) -> dict[str, Any]:
    return {"model": body.model, "max_tokens": body.max_tokens, "request_id": request_id_of(request)}


@router.post("/raw")
async def raw(request: Request) -> dict[str, int]:
    return {"bytes": len(await request.body())}


@router.get("/boom")
async def boom() -> dict[str, str]:
    raise RuntimeError(SECRET_TEXT)


@router.get("/ok")
async def ok(request: Request) -> dict[str, str]:
    return {"request_id": request_id_of(request)}


@pytest.fixture(scope="module")
def app() -> Iterator[FastAPI]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MAX_BODY_BYTES", str(LIMIT))
    mp.setenv("CORS_ALLOW_ORIGINS", f"{ALLOWED_ORIGIN},https://other-allowed.example.com")
    reset_settings()
    try:
        yield create_app("t", [router])
    finally:
        mp.undo()
        reset_settings()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def assert_error_shape(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert {"message", "type", "code", "param"} <= set(err)
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err["code"], str) and err["code"]
    if code is not None:
        assert err["code"] == code
    return err


# ----------------------------------------------------------------------------------- typed errors
EXPECTED_STATUS = {
    "GatewayError": 500, "InternalError": 500, "BadRequest": 400,
    "ContextLengthExceeded": 400, "Unauthorized": 401, "InsufficientCredits": 402, "Forbidden": 403,
    "NotFound": 404, "ModelNotFound": 404, "Conflict": 409, "PayloadTooLarge": 413,
    "RateLimited": 429, "QuotaExceeded": 429, "UpstreamError": 502, "UpstreamTimeout": 504,
    "ServiceUnavailable": 503,
}


def test_every_error_class_has_an_expected_status() -> None:
    # A new GatewayError subclass must be added here (and thought about).
    assert set(ERROR_CLASSES) == set(EXPECTED_STATUS)


@pytest.mark.parametrize("name", sorted(EXPECTED_STATUS))
async def test_gateway_errors_map_to_status_and_openai_shape(client: httpx.AsyncClient, name: str) -> None:
    cls = ERROR_CLASSES[name]
    response = await client.get(f"/raise/{name}")
    err = assert_error_shape(response, EXPECTED_STATUS[name], cls.code)
    assert err["message"] == "custom message for " + name
    assert err["type"] == cls.type
    assert err["param"] == "some_param"
    assert response.headers["x-request-id"]


async def test_error_extra_fields_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/quota")
    err = assert_error_shape(response, 402, "insufficient_credits")
    assert err["type"] == "insufficient_quota"
    assert err["message"] == "Insufficient credits for this request."
    assert err["param"] is None
    assert err["balance"] == "0.5"
    assert err["required"] == "1.25"
    assert response.headers["retry-after"] == "7"


# ----------------------------------------------------------------------------------- validation
async def test_valid_body_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", json={"model": "openai/gpt-4o", "max_tokens": 5})
    assert response.status_code == 200
    assert response.json()["model"] == "openai/gpt-4o"


async def test_validation_error_is_400_with_details(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", json={"model": "", "max_tokens": -1})
    err = assert_error_shape(response, 400, "invalid_request")
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith("Invalid request: ")
    locs = {d["loc"] for d in err["details"]}
    assert locs == {"model", "max_tokens"}
    assert err["param"] in locs
    for d in err["details"]:
        assert set(d) == {"loc", "msg", "type"}


async def test_missing_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", json={})
    err = assert_error_shape(response, 400, "invalid_request")
    assert err["param"] == "model"


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=b'{"model": "x",', headers={"content-type": "application/json"})
    err = assert_error_shape(response, 400, "invalid_request")
    assert err["message"] == "Request body is not valid JSON."
    assert err["details"][0]["type"] == "json_invalid"


# ----------------------------------------------------------------------------------- routing errors
async def test_unknown_route_is_404_in_the_same_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope/nothing")
    err = assert_error_shape(response, 404, "not_found")
    assert err["type"] == "invalid_request_error"
    assert "/nope/nothing" in err["message"]
    assert response.headers["x-request-id"]


async def test_wrong_method_is_405_in_the_same_shape(client: httpx.AsyncClient) -> None:
    response = await client.delete("/ok")
    err = assert_error_shape(response, 405, "method_not_allowed")
    assert "DELETE" in err["message"]
    assert "GET" in response.headers["allow"]


# ----------------------------------------------------------------------------------- 500
async def test_unhandled_exception_is_500_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom", headers={"x-request-id": "trace-500-abc"})
    err = assert_error_shape(response, 500, "internal_error")
    assert err["type"] == "api_error"
    assert SECRET_TEXT not in response.text
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    assert "trace-500-abc" in err["message"]
    assert response.headers["x-request-id"] == "trace-500-abc"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_500_with_generated_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom")
    assert_error_shape(response, 500, "internal_error")
    rid = response.headers["x-request-id"]
    assert rid.startswith("req_")
    assert rid in response.json()["error"]["message"]


# ----------------------------------------------------------------------------------- request id
async def test_well_formed_request_id_is_honoured(client: httpx.AsyncClient) -> None:
    rid = "client-Trace_01:abc.def-42"
    response = await client.get("/ok", headers={"X-Request-Id": rid})
    assert response.headers["x-request-id"] == rid
    assert response.json()["request_id"] == rid


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", "<script>", "ünï"])
async def test_malformed_request_id_is_replaced(client: httpx.AsyncClient, bad: str) -> None:
    response = await client.get("/ok", headers={"X-Request-Id": bad.encode("utf-8")})
    rid = response.headers["x-request-id"]
    assert rid != bad
    assert re.fullmatch(r"req_[0-9a-f]{32}", rid)
    assert response.json()["request_id"] == rid


async def test_request_id_generated_when_absent_and_unique(client: httpx.AsyncClient) -> None:
    ids = set()
    for _ in range(5):
        response = await client.get("/ok")
        rid = response.headers["x-request-id"]
        assert re.fullmatch(r"req_[0-9a-f]{32}", rid)
        assert response.json()["request_id"] == rid
        ids.add(rid)
    assert len(ids) == 5


async def test_request_id_on_error_responses(client: httpx.AsyncClient) -> None:
    response = await client.get("/raise/NotFound", headers={"x-request-id": "rid-404"})
    assert response.headers["x-request-id"] == "rid-404"


# ----------------------------------------------------------------------------------- security headers
@pytest.mark.parametrize("path", ["/ok", "/raise/BadRequest", "/nope", "/boom"])
async def test_security_headers_present(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    h = response.headers
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert h["strict-transport-security"].startswith("max-age=")
    assert "default-src 'none'" in h["content-security-policy"]
    assert h["cache-control"] == "no-store"
    assert h["x-request-id"]


# ----------------------------------------------------------------------------------- 413
async def test_body_within_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/raw", content=b"x" * LIMIT)
    assert response.status_code == 200
    assert response.json() == {"bytes": LIMIT}


async def test_content_length_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/raw", content=b"x" * (LIMIT + 1))
    err = assert_error_shape(response, 413, "payload_too_large")
    assert str(LIMIT) in err["message"]
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_content_length_over_the_limit_on_a_validated_route_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=b'{"model": "' + b"x" * LIMIT + b'"}',
                                 headers={"content-type": "application/json"})
    assert_error_shape(response, 413, "payload_too_large")


async def _chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


async def test_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    request = client.build_request("POST", "/raw", content=_chunks(LIMIT * 3))
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await client.send(request)
    err = assert_error_shape(response, 413, "payload_too_large")
    assert str(LIMIT) in err["message"]
    assert response.headers["x-request-id"]


async def test_chunked_json_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "'
        async for chunk in _chunks(LIMIT * 2):
            yield chunk
        yield b'"}'

    request = client.build_request("POST", "/echo", content=body(), headers={"content-type": "application/json"})
    response = await client.send(request)
    assert_error_shape(response, 413, "payload_too_large")


async def test_chunked_body_within_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    request = client.build_request("POST", "/raw", content=_chunks(LIMIT - 10, size=100))
    response = await client.send(request)
    assert response.status_code == 200
    assert response.json() == {"bytes": LIMIT - 10}


# ----------------------------------------------------------------------------------- CORS
async def test_cors_allowed_origin_gets_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/ok", headers={"origin": ALLOWED_ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


async def test_cors_preflight_for_allowed_origin(client: httpx.AsyncClient) -> None:
    response = await client.options("/echo", headers={
        "origin": ALLOWED_ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


async def test_cors_other_origin_gets_no_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/ok", headers={"origin": "https://evil.example.net"})
    assert response.status_code == 200  # CORS is enforced by the browser; we just don't allow it
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options("/echo", headers={
        "origin": "https://evil.example.net", "access-control-request-method": "POST"})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


async def test_no_cors_without_allowlist() -> None:
    mp = pytest.MonkeyPatch()
    mp.delenv("CORS_ALLOW_ORIGINS", raising=False)
    reset_settings()
    try:
        bare = create_app("bare", [router])
    finally:
        mp.undo()
        reset_settings()
    transport = httpx.ASGITransport(app=bare, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get("/ok", headers={"origin": ALLOWED_ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


# ----------------------------------------------------------------------------------- docs
async def test_docs_only_outside_deployed_stages(client: httpx.AsyncClient) -> None:
    assert (await client.get("/openapi.json")).status_code == 200


# ----------------------------------------------------------------------------- the lean path
lean_router = APIRouter()


@lean_router.post("/lean/raise")
async def lean_raise(request: Request) -> Any:
    await request.body()
    raise errors.InsufficientCredits(balance="0.5", required="1.25", headers={"Retry-After": "7"})


@lean_router.post("/lean/boom")
async def lean_boom(request: Request) -> Any:
    raise RuntimeError(SECRET_TEXT)


@lean_router.post("/lean/http")
async def lean_http(request: Request) -> Any:
    from fastapi import HTTPException

    raise HTTPException(status_code=404)


@lean_router.post("/lean/dict")
async def lean_dict(request: Request) -> Any:
    return {"request_id": request_id_of(request), "bytes": len(await request.body())}


def _lean_app() -> FastAPI:
    reset_settings()
    return create_app("lean-test", [lean_router])


async def test_lean_path_serves_request_only_post_routes_like_the_full_path() -> None:
    app = _lean_app()
    assert sorted(app._build_lean()) == ["/lean/boom", "/lean/dict", "/lean/http", "/lean/raise"]  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://t") as c:
        r = await c.post("/lean/dict", content=b"abc", headers={"x-request-id": "lean-1"})
        assert r.status_code == 200 and r.json() == {"request_id": "lean-1", "bytes": 3}
        assert r.headers["x-request-id"] == "lean-1" and r.headers["x-content-type-options"] == "nosniff"
        r = await c.post("/lean/raise", content=b"{}")
        assert r.status_code == 402 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["code"] == "insufficient_credits" and r.headers["x-request-id"]
        r = await c.post("/lean/boom")
        assert r.status_code == 500 and SECRET_TEXT not in r.text and r.json()["error"]["code"] == "internal_error"
        r = await c.post("/lean/http")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.post("/lean/dict", content=b"a\x00b")
        assert r.status_code == 400 and r.json()["error"]["code"] == "nul_character"
        r = await c.get("/lean/dict")  # other methods: the full path (405)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_lean_path_is_off_when_middleware_is_added_later() -> None:
    app = _lean_app()
    seen: list[str] = []

    class Mark:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["path"])
            await self.inner(scope, receive, send)

    app.add_middleware(Mark)
    assert app._build_lean() == {}  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/lean/dict", content=b"abc")).status_code == 200
    assert seen == ["/lean/dict"]


# ------------------------------------------------------------------- the app without FastAPI
lean_routes = Routes()


@lean_routes.post("/routes/dict", response_model=None)
async def routes_dict(request: Request) -> Any:
    return {"request_id": request_id_of(request), "bytes": len(await request.body())}


@lean_routes.post("/routes/raise", response_model=None)
async def routes_raise(request: Request) -> Any:
    await request.body()
    raise errors.InsufficientCredits(balance="0.5", required="1.25", headers={"Retry-After": "7"})


@lean_routes.post("/routes/boom", response_model=None)
async def routes_boom(request: Request) -> Any:
    raise RuntimeError(SECRET_TEXT)


@lean_routes.post("/routes/body", response_model=None)
async def routes_body(request: Request) -> Any:
    try:
        body = Body.model_validate_json(await request.body())
    except ValidationError as exc:
        raise invalid_request(exc.errors(include_url=False, include_context=False)) from None
    return {"model": body.model}


@lean_routes.post("/routes/fastapi-validation", response_model=None)
async def routes_fastapi_validation(request: Request) -> Any:
    from fastapi.exceptions import RequestValidationError

    raise RequestValidationError([{"loc": ("body", "model"), "msg": "Field required", "type": "missing"}])


@lean_routes.post("/routes/typed")
async def routes_typed(request: Request) -> Body:  # a response model: FastAPI's path
    return Body(model="m")


# Requests that each app must answer identically (status, body, headers but the generated request id).
PARITY_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/routes/dict", {"content": b"abc", "headers": {"x-request-id": "lean-1"}}),
    ("POST", "/routes/raise", {"content": b"{}"}),
    ("POST", "/routes/boom", {"headers": {"x-request-id": "boom-1"}}),
    ("POST", "/routes/body", {"json": {"model": "", "max_tokens": -1}}),
    ("POST", "/routes/body", {"content": b'{"model": "x",'}),
    ("POST", "/routes/body", {"json": {"model": "x"}, "headers": {"origin": ALLOWED_ORIGIN}}),
    ("POST", "/routes/fastapi-validation", {}),
    ("POST", "/routes/typed", {}),
    ("POST", "/routes/dict", {"content": b"a\x00b"}),
    ("POST", "/routes/dict", {"content": b"x" * (LIMIT + 1)}),
    ("POST", "/routes/dict?q=%00", {}),
    ("GET", "/routes/dict", {}),
    ("POST", "/nope", {}),
    ("OPTIONS", "/routes/dict", {"headers": {"origin": ALLOWED_ORIGIN, "access-control-request-method": "POST"}}),
    ("OPTIONS", "/routes/dict", {"headers": {"origin": "https://evil.example.net",
                                             "access-control-request-method": "POST"}}),
]


@pytest.fixture(scope="module")
def lean_pair() -> Iterator[tuple[Any, Any]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MAX_BODY_BYTES", str(LIMIT))
    mp.setenv("CORS_ALLOW_ORIGINS", ALLOWED_ORIGIN)
    reset_settings()
    try:
        yield create_lean_app("lean", [lean_routes]), create_app("lean", [lean_routes])
    finally:
        mp.undo()
        reset_settings()


def _comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("x-request-id", "content-length")]
    body = response.content
    rid = response.headers.get("x-request-id", "")
    if rid.startswith("req_"):
        body = body.replace(rid.encode(), b"req_*")
    return response.status_code, body, headers


@pytest.mark.parametrize("method,path,options", PARITY_REQUESTS, ids=lambda v: str(v)[:40])
async def test_lean_app_answers_exactly_like_the_fastapi_app(lean_pair: tuple[Any, Any], method: str, path: str,
                                                             options: dict[str, Any]) -> None:
    answers = []
    for app in lean_pair:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                     base_url="http://t") as c:
            answers.append(_comparable(await c.request(method, path, **options)))
    assert answers[0] == answers[1]
    assert answers[0][0] != 200 or path in ("/routes/dict", "/routes/body", "/routes/typed")


def test_lean_app_serves_request_only_routes_and_leaves_the_rest_to_fastapi(lean_pair: tuple[Any, Any]) -> None:
    lean, full = lean_pair
    assert sorted(lean.lean_routes) == ["/routes/body", "/routes/boom", "/routes/dict", "/routes/fastapi-validation",
                                        "/routes/raise"]
    assert sorted(full._build_lean()) == sorted(lean.lean_routes)  # the same rule, read from the declaration
    assert lean.openapi()["paths"].keys() == full.openapi()["paths"].keys()


def test_the_query_function_is_built_without_what_a_chat_completion_does_not_use() -> None:
    """A cold start of QueryFunction (import of functions/query/app.py, which builds the app) does
    not import FastAPI (its OpenAPI models are a quarter of the import), the BYOK cipher, the
    account schemas, nor httpx's command-line client (click; rich and pygments where installed)."""
    unused = ("fastapi", "cryptography", "gateway.account.schema", "httpx._main", "click", "rich", "pygments")
    code = f"import sys; import app; print(sorted(m for m in {unused!r} if sys.modules.get(m)))"
    assert in_fresh_function("query", code) == "[]"


async def test_lean_app_lifespan_is_the_fastapi_apps() -> None:
    reset_settings()
    exchanges = []
    for app in (create_lean_app("lean", [lean_routes]), create_app("lean", [lean_routes])):
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[Any] = []

        async def receive() -> Any:
            return inbox.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        await app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}, receive, send)
        exchanges.append(sent)
    assert exchanges[0] == exchanges[1] == [{"type": "lifespan.startup.complete"},
                                            {"type": "lifespan.shutdown.complete"}]


SURFACES = ("messages", "responses", "embeddings")


@pytest.mark.parametrize("function", SURFACES)
def test_the_surface_functions_are_built_without_fastapi_and_serve_every_route_lean(function: str) -> None:
    """MessagesFunction, ResponsesFunction and EmbeddingsFunction are built like the query function
    (create_lean_app): the import loads no FastAPI, and every route they declare takes the lean path."""
    code = ("import sys, json, app\n"
            "print(json.dumps([sorted(app.app.lean_routes), sorted(p for p, _, _ in app.router.posts),\n"
            "    'fastapi' in sys.modules]))")
    lean, declared, fastapi_loaded = json.loads(in_fresh_function(function, code))
    assert lean == declared and lean and not fastapi_loaded


# Requests each surface's lean app must answer as the FastAPI app of the same routes (no database:
# refused before a key is looked up, or not routed).
SURFACE_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "{path}", {"json": {"model": "m"}}),
    ("POST", "{path}", {"json": {"model": "m"}, "headers": {"authorization": "Basic x"}}),
    ("POST", "{path}", {"content": b"a\x00b", "headers": {"authorization": "Bearer sk-x"}}),
    ("POST", "{path}", {"content": b"x" * (LIMIT + 1)}),
    ("GET", "{path}", {}),
    ("POST", "{path}/nope", {}),
]


def _surface_comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """``_comparable``, and the Messages API's ``request-id`` header (the generated id) left out too."""
    status, body, headers = _comparable(response)
    rid = response.headers.get("request-id", "")
    return status, body.replace(rid.encode(), b"req_*") if rid else body, [h for h in headers if h[0] != "request-id"]


@pytest.mark.parametrize("function", SURFACES)
@pytest.mark.parametrize("method,path,options", SURFACE_REQUESTS, ids=lambda v: str(v)[:40])
async def test_the_surface_lean_apps_answer_like_their_fastapi_apps(function: str, method: str, path: str,
                                                                    options: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setenv("MAX_BODY_BYTES", str(LIMIT))
    reset_settings()
    router = importlib.import_module(f"gateway.{function}.routes").router
    first = router.posts[0][0]
    answers = []
    try:
        for app in (create_lean_app(function, [router]), create_app(function, [router])):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                         base_url="http://t") as c:
                answers.append(_surface_comparable(await c.request(method, path.format(path=first), **options)))
    finally:
        monkeypatch.undo()
        reset_settings()
    assert answers[0] == answers[1]
    assert answers[0][0] >= 400
