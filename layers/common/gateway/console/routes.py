"""Console routes and the app factory of functions/console.

- ``GET /console`` and ``GET /console/<page>``: the HTML shell (``no-store``, strict CSP);
- ``GET /console/assets/<name>.<hash>.<ext>``: hashed static files, one-year ``immutable``;
- ``GET /console/api/usage/breakdown?from=&to=``: usage per day x model x key (API key or
  sign-in token, like every account route).

Every response gets the console's security headers; one without its own CSP or cache policy
gets ``default-src 'none'`` and ``no-store``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response

from ..account.identity import UserPrincipal
from ..config import get_settings
from ..http import Message, Receive, Scope, Send, create_app, error_responses
from . import usage
from .assets import ASSET_PREFIX, by_url
from .pages import DEFAULT_CSP, NOT_FOUND_HTML, PAGES, SECURITY_HEADERS, content_security_policy, render_index

router = APIRouter(responses=error_responses(401))

HTML_CACHE = "no-store"
ASSET_CACHE = "public, max-age=31536000, immutable"


def _page() -> HTMLResponse:
    settings = get_settings()
    return HTMLResponse(render_index(settings), headers={
        "cache-control": HTML_CACHE, "content-security-policy": content_security_policy(settings)})


def _accepts_gzip(request: Request) -> bool:
    return any(part.split(";")[0].strip() == "gzip"
               for part in request.headers.get("accept-encoding", "").lower().split(","))


def _asset(request: Request, path: str) -> Response:
    asset = by_url().get(path)
    if asset is None:
        return Response(b"Not found", status_code=404, media_type="text/plain")
    headers = {"cache-control": ASSET_CACHE, "etag": asset.etag, "vary": "accept-encoding"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    if _accepts_gzip(request):
        return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "content-encoding": "gzip"})
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/console", include_in_schema=False)
async def console_home() -> Response:
    return _page()


@router.get("/console/api/usage/breakdown")
async def usage_breakdown(
    principal: UserPrincipal,
    from_: str | None = Query(None, alias="from", max_length=64, description="inclusive; default 30 days ago"),
    to: str | None = Query(None, max_length=64, description="exclusive (a bare date: that whole day); default now"),
) -> usage.UsageBreakdown:
    return await usage.breakdown(principal.user_id, from_, to)


@router.get("/console/{path:path}", include_in_schema=False)
async def console_page(request: Request, path: str) -> Response:
    full = "/console/" + path
    if full.startswith(ASSET_PREFIX):
        return _asset(request, full)
    if path.strip("/") in PAGES:
        return _page()
    return HTMLResponse(NOT_FOUND_HTML, status_code=404, headers={
        "cache-control": HTML_CACHE, "content-security-policy": content_security_policy(get_settings())})


class DefaultPolicy:
    """Outermost ASGI layer: a response that set no CSP / cache policy gets the strict defaults."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_defaults(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", DEFAULT_CSP.encode()))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_defaults)


def create_console_app() -> FastAPI:
    app = create_app("console", [router], security_headers=SECURITY_HEADERS)
    app.add_middleware(DefaultPolicy)
    return app
