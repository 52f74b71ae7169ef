"""QueryStreamFunction's app (functions/query/app.py ``stream_app``, what run.sh serves) is built
without FastAPI and answers every request exactly as the FastAPI app of the same three surfaces
(chat, Messages, Responses) that it replaced (BENCHMARKS.md, issue 15: spawn to first answer)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.config import reset_settings
from gateway.http import create_app
from gateway.observability import instrument_asgi
from tests.support.apps import in_fresh_function, load_module

LIMIT = 1000
ORIGIN = "https://app.example.com"
PATHS = ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses")

# Requests answered before any key is looked up (no database), or not routed.
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    *(("POST", path, {"json": {"model": "m"}}) for path in PATHS),
    *(("POST", path, {"json": {"model": "m"}, "headers": {"authorization": "Basic x"}}) for path in PATHS),
    ("POST", "/v1/messages", {"content": b"a\x00b", "headers": {"x-api-key": "sk-x"}}),
    ("POST", "/v1/chat/completions", {"content": b"x" * (LIMIT + 1)}),
    ("GET", "/v1/chat/completions", {}),
    ("GET", "/v1/responses", {}),
    ("GET", "/", {}),  # the Lambda Web Adapter's readiness check
    ("POST", "/v1/nope", {}),
    ("OPTIONS", "/v1/chat/completions", {"headers": {"origin": ORIGIN, "access-control-request-method": "POST"}}),
    ("OPTIONS", "/v1/messages", {"headers": {"origin": "https://evil.example.net",
                                             "access-control-request-method": "POST"}}),
]


def _comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    skip = ("x-request-id", "request-id", "content-length")
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in skip]
    body = response.content
    for rid in (response.headers.get("x-request-id", ""), response.headers.get("request-id", "")):
        if rid:
            body = body.replace(rid.encode(), b"req_*")
    return response.status_code, body, headers


async def _answer(app: Any, method: str, path: str, options: dict[str, Any]) -> tuple[int, bytes, list[Any]]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://t") as c:
        return _comparable(await c.request(method, path, **options))


def test_the_stream_app_is_built_without_fastapi_and_imports_the_other_surfaces_on_their_first_request() -> None:
    """A chat completion is answered without FastAPI or the Messages and Responses surfaces; the
    first request of another surface imports them (and every surface is then served lean)."""
    code = """if True:
        import asyncio, json, sys
        import httpx
        import app

        def loaded():
            return [m for m in ("fastapi", "gateway.messages.routes", "gateway.responses.routes") if m in sys.modules]

        async def post(path):
            transport = httpx.ASGITransport(app=app.stream_app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return (await c.post(path, json={"model": "m"})).status_code

        seen = [loaded()]
        seen += [asyncio.run(post("/v1/chat/completions")), loaded()]
        seen += [asyncio.run(post("/v1/messages")), loaded()]
        print(json.dumps(seen))
    """
    assert json.loads(in_fresh_function("query", code)) == [
        [], 401, [], 401, ["gateway.messages.routes", "gateway.responses.routes"]]


@pytest.mark.parametrize("chat_first", [False, True], ids=["fresh", "after-a-chat-request"])
@pytest.mark.parametrize("method,path,options", REQUESTS, ids=lambda v: str(v)[:40])
async def test_the_stream_app_answers_like_the_fastapi_app_of_its_surfaces(method: str, path: str,
                                                                           options: dict[str, Any], chat_first: bool,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Alike whether or not a chat completion came first (the other surfaces not yet imported)."""
    from gateway.chat.routes import router as chat
    from gateway.messages.routes import router as messages
    from gateway.responses.routes import router as responses

    monkeypatch.setenv("MAX_BODY_BYTES", str(LIMIT))
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", ORIGIN)
    reset_settings()
    try:
        stream_app = load_module("functions/query/app.py", "fn_query_stream_app_parity").stream_app
        before = instrument_asgi(create_app("query-stream", [chat, messages, responses]))  # the app it replaced
        answers = []
        for app in (stream_app, before):
            if chat_first:
                assert (await _answer(app, "POST", "/v1/chat/completions", {"json": {}}))[0] == 401
            answers.append(await _answer(app, method, path, options))
    finally:
        monkeypatch.undo()
        reset_settings()
    assert answers[0] == answers[1]
    assert answers[0][0] >= 400 or method == "OPTIONS"
