"""``GET /v1/models`` and ``GET /v1/models/{model_id}`` (ids contain a slash).

Served from the cached catalogue (``catalog.cache``): a warm container answers from memory, a
cold one from Upstash, a miss rebuilds from Postgres -- never from a provider.

Access (``MODELS_AUTH``): ``public`` (default) lets anyone list; a key, if sent, must be valid and
selects the caller's tier for the prices shown. ``key`` requires an API key or the admin key.
``?refresh=true`` runs discovery first and is for the admin key only (403 otherwise).

Prices (OpenRouter convention, USD per token as decimal strings) are OUR prices: cost x (1 +
markup) of the tier the list is shown for -- the ``tier`` parameter when given, else the
caller's tier, else the free tier. The admin key also gets ``provider_pricing`` (our cost), the
markup and the route.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ..auth import MISSING_KEY_MESSAGE, Principal, authenticate_key, bearer_token, has_credential, is_admin_key
from ..config import FREE_TIER, Tier, get_settings
from ..errors import Forbidden, ModelNotFound, Unauthorized
from ..http import error_responses
from . import cache
from .render import Filters

router = APIRouter(responses=error_responses(401, 403, 404))

TIER_MINE = "mine"


@dataclass(frozen=True, slots=True)
class Caller:
    kind: str                        # anonymous | user | admin
    principal: Principal | None = None

    @property
    def admin(self) -> bool:
        return self.kind == "admin"


async def resolve_caller(request: Request, *, refresh: bool) -> Caller:
    token = bearer_token(request) if has_credential(request) else None
    if token is not None and is_admin_key(token):
        return Caller("admin")
    if refresh:  # only the admin key may refresh: no need to look any other key up
        raise Forbidden("refresh=true needs the admin key.", code="admin_required", param="refresh")
    if token is not None:
        return Caller("user", await authenticate_key(token))
    if get_settings().models_auth == "key":
        raise Unauthorized(MISSING_KEY_MESSAGE, code="missing_api_key")
    return Caller("anonymous")


def view_tier(caller: Caller, tier: str | None) -> tuple[Tier, Tier | None]:
    """(the tier whose prices are shown, the tier to filter by or None)."""
    settings = get_settings()
    if tier:
        if tier == TIER_MINE:
            if caller.principal is None:
                raise Unauthorized("tier=mine needs an API key.", code="missing_api_key", param="tier")
            chosen = settings.tier(caller.principal.tier)
        else:
            chosen = settings.known_tier(tier)
        return chosen, chosen
    if caller.principal is not None:
        return settings.tier(caller.principal.tier), None
    return settings.tier(FREE_TIER), None


def parse_filters(provider: str | None, modality: str | None, tier: Tier | None) -> Filters:
    providers = None
    if provider:
        providers = frozenset(p.strip().lower() for p in provider.split(",") if p.strip()) or None
    mod = modality.strip().lower() if modality and modality.strip() else None
    return Filters(providers=providers, modality=mod, tier=tier)


async def _refresh() -> dict[str, str]:
    from . import discovery  # only the admin path needs the fetching code

    result = await discovery.discover(trigger="api")
    headers = {"x-catalog-sync": result.status}
    if result.sync_id is not None:
        headers["x-catalog-sync-id"] = str(result.sync_id)
    if result.failed_sources:
        headers["x-catalog-sync-failed"] = ",".join(result.failed_sources)
    return headers


def _accepts_gzip(request: Request) -> bool:
    """The whole list is ~200 kB of JSON for 300 models (~25 kB gzipped); HttpApi does not compress."""
    return any(part.split(";")[0].strip() == "gzip"
               for part in request.headers.get("accept-encoding", "").lower().split(","))


def _timing(started: float, source: str) -> dict[str, str]:
    ms = (time.perf_counter() - started) * 1000
    return {"x-catalog-cache": source, "server-timing": f'catalog;dur={ms:.3f};desc="{source}"'}


_REFRESH = Query(False, description="admin key only: run discovery first")


@router.get("/v1/models")
async def list_models(request: Request,
                      provider: str | None = Query(None, max_length=300, description="vendor or route provider, "
                                                   "comma-separated"),
                      modality: str | None = Query(None, max_length=100, description="e.g. image or text+image->text"),
                      tier: str | None = Query(None, max_length=50, description="a tier name or `mine`"),
                      refresh: bool = _REFRESH) -> Response:
    started = time.perf_counter()
    caller = await resolve_caller(request, refresh=refresh)
    shown, tier_filter = view_tier(caller, tier)
    filters = parse_filters(provider, modality, tier_filter)
    extra = await _refresh() if refresh else {}
    catalogue, source = await cache.get_catalogue()
    body, gzipped = catalogue.list_body(shown.markup, admin=caller.admin, filters=filters,
                                        gzipped=_accepts_gzip(request))
    headers = {**extra, "vary": "accept-encoding", **({"content-encoding": "gzip"} if gzipped else {})}
    return Response(body, media_type="application/json", headers={**headers, **_timing(started, source)})


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str,
                    tier: str | None = Query(None, max_length=50, description="a tier name or `mine`"),
                    refresh: bool = _REFRESH) -> Response:
    started = time.perf_counter()
    caller = await resolve_caller(request, refresh=refresh)
    shown, _ = view_tier(caller, tier)
    extra = await _refresh() if refresh else {}
    catalogue, source = await cache.get_catalogue()
    body = catalogue.model_body(model_id, shown.markup, admin=caller.admin)
    if body is None:
        raise ModelNotFound(f"The model `{model_id}` does not exist or is not available.", param="model")
    return Response(body, media_type="application/json", headers={**extra, **_timing(started, source)})
