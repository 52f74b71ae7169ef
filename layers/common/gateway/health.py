"""``GET /health``: database reachable with migrations current, Upstash reachable; 200 or 503.

No key needed (load balancers and uptime checks call it); if an ``Authorization`` header is
sent it must be valid (401 otherwise), so the route doubles as a "does my key work" check.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from . import db
from .auth import authenticate_key, bearer_token, has_credential, is_admin_key
from .config import get_settings
from .upstash import get_redis

router = APIRouter()


async def _check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        row = await asyncio.wait_for(db.fetchone("SELECT max(version) AS version FROM schema_migrations"),
                                     timeout=get_settings().db_connect_timeout_s + 1)
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    version = row["version"] if row else None
    # At or ahead of what this code expects: a deploy migrates first, and the functions still
    # running the previous code stay healthy on the newer (backward-compatible) schema.
    current = (isinstance(version, str) and version.isdigit()
               and int(version) >= int(db.EXPECTED_SCHEMA_VERSION))
    return {"ok": current, "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "schema_version": version, "expected_schema_version": db.EXPECTED_SCHEMA_VERSION,
            **({} if current else {"error": "migrations not current: run `mlp migrate`"})}


async def _check_redis() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        pong = await get_redis().ping()
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": pong in ("PONG", b"PONG", True), "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    caller: dict[str, Any] = {}
    if has_credential(request):
        token = bearer_token(request)
        if is_admin_key(token):
            caller = {"caller": "admin"}
        else:
            principal = await authenticate_key(token)
            caller = {"caller": {"user_id": str(principal.user_id), "key_id": str(principal.key_id)}}
    database, redis = await asyncio.gather(_check_database(), _check_redis())
    ok = database["ok"] and redis["ok"]
    body = {"status": "ok" if ok else "unavailable", "checks": {"database": database, "redis": redis}, **caller}
    return JSONResponse(body, status_code=200 if ok else 503)
