"""CORS allows what our clients really send: the headers of the official OpenAI SDK (captured from
a real request, OpenRouter-style attribution headers included) pass the app's preflight, and
every non-safelisted header our responses carry is exposed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import openai
import pytest

from gateway.config import reset_settings
from gateway.http import CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS, create_app

pytestmark = pytest.mark.integration

# Set by the browser itself, or CORS-safelisted: never part of Access-Control-Request-Headers.
BROWSER_OWNED = {"accept", "accept-encoding", "connection", "content-length", "host", "user-agent"}
SAFELISTED_RESPONSE = {"cache-control", "content-language", "content-length", "content-type", "expires",
                       "last-modified", "pragma"}


@pytest.fixture(scope="module")
def sdk_headers() -> Iterator[set[str]]:
    seen: list[set[str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append({k.lower() for k in self.headers})
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(400)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="sk-x", max_retries=0,
                           default_headers={"HTTP-Referer": "https://app.example.com", "X-Title": "Example"})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    server.shutdown()
    yield seen[0]


def test_the_openai_sdk_headers_are_allowed(sdk_headers: set[str]) -> None:
    needed = sdk_headers - BROWSER_OWNED
    assert {"authorization", "http-referer", "x-title"} <= needed
    assert needed <= set(CORS_ALLOW_HEADERS), sorted(needed - set(CORS_ALLOW_HEADERS))


async def test_preflight_and_exposed_headers(sdk_headers: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    from gateway.ratelimit import Decision

    router = APIRouter()

    @router.post("/probe")
    async def probe() -> JSONResponse:
        return JSONResponse({}, headers=Decision(allowed=True, limit=5, remaining=4, reset=1e10).headers())

    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://app.example.com")
    reset_settings()
    try:
        app = create_app("cors-test", [router])
    finally:
        monkeypatch.undo()
        reset_settings()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        requested = ",".join(sorted(sdk_headers - BROWSER_OWNED))
        pre = await client.options("/probe", headers={"origin": "https://app.example.com",
                                                      "access-control-request-method": "POST",
                                                      "access-control-request-headers": requested})
        assert pre.status_code == 200, pre.text
        allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
        assert set(requested.split(",")) <= allowed
        response = await client.post("/probe", headers={"origin": "https://app.example.com"})
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    ours = {h for h in response.headers if h.startswith("x-") or h == "retry-after"}
    ours -= {"x-content-type-options", "x-frame-options"}  # security headers, nothing for scripts to read
    ours -= SAFELISTED_RESPONSE
    assert ours and ours <= exposed, sorted(ours - exposed)
    assert exposed == set(CORS_EXPOSE_HEADERS)
