"""``GET /health``: database reachable with migrations current, Upstash reachable; 200 or 503.

No key needed (load balancers and uptime checks call it); if an ``Authorization`` header is
sent it must be valid (401 otherwise), so the route doubles as a "does my key work" check.
A failed check says why (``reason``: "connection refused", "connect timeout", "TLS certificate
verification failed", "migrations not current: run `mlp migrate`", ... - never a host name or a
credential) and a 503 carries ``Retry-After``. Through a pooler the database check also reports
the ``statement_timeout`` the functions' sessions get (set by ``mlp migrate``) and warns if none.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from . import db
from .auth import authenticate_key, bearer_token, has_credential, is_admin_key
from .config import get_settings
from .upstash import UpstashUnavailable, get_redis

router = APIRouter()


async def _check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:  # bounded by gateway.db (connect, pool and statement timeouts, then its breaker)
        row = await db.fetchone("SELECT max(version) AS version, current_setting('statement_timeout') AS "
                                "statement_timeout FROM schema_migrations")
    except psycopg.errors.UndefinedTable:
        return {"ok": False, "error": "UndefinedTable", "reason": "migrations not applied: run `mlp migrate`"}
    except Exception as exc:
        out = {"ok": False, "error": type(exc).__name__, "reason": db.describe(exc)}
        if isinstance(exc, db.DatabaseUnavailable):
            out["retry_after_s"] = exc.retry_after
        return out
    version = row["version"] if row else None
    timeout = row["statement_timeout"] if row else None
    warning = ({"warning": "no statement_timeout for pooled sessions: run `mlp migrate`"}
               if timeout == "0" and get_settings().pooled else {})
    # At or ahead of what this code expects: a deploy migrates first, and the functions still
    # running the previous code stay healthy on the newer (backward-compatible) schema.
    current = (isinstance(version, str) and version.isdigit()
               and int(version) >= int(db.EXPECTED_SCHEMA_VERSION))
    return {"ok": current, "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "schema_version": version, "expected_schema_version": db.EXPECTED_SCHEMA_VERSION,
            "statement_timeout": timeout, **warning,
            **({} if current else {"error": "migrations not current: run `mlp migrate`",
                                   "reason": "migrations not current: run `mlp migrate`"})}


async def _check_redis() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        pong = await get_redis().ping()
    except UpstashUnavailable as exc:
        return {"ok": False, "error": type(exc).__name__, "reason": exc.reason, "retry_after_s": exc.retry_after}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "reason": type(exc).__name__}
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
    if ok:
        return JSONResponse(body)
    retry_after = max(database.get("retry_after_s", 0), redis.get("retry_after_s", 0),
                      get_settings().db_retry_after_s)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})
