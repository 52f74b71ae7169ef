"""A function's FastAPI app in-process (the object Mangum wraps), an httpx client on it, and an API
Gateway (HTTP API v2) event for its Mangum handler.

``function_fixtures`` gives a test module the two fixtures it needs::

    query_app, client = function_fixtures("functions/query/app.py", app="query_app", client="client")

the app (session scope, loaded once the stack is up) and a client on it per test (the catalogue
cache dropped and the fake providers' request log cleared first, so ``upstream_requests`` sees
only the test's own calls).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gateway.catalog import registry
from infra.local.servers import RunningServer

ROOT = Path(__file__).resolve().parents[2]


def load_module(path: str, name: str | None = None) -> ModuleType:
    """The function module at ``path`` (relative to the repository root), freshly executed as ``name``."""
    spec = importlib.util.spec_from_file_location(name or "fn_" + path.replace("/", "_"), ROOT / path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def load_app(path: str) -> Any:
    """The ``app`` of the function module at ``path``."""
    return load_module(path).app


@asynccontextmanager
async def app_client(app: Any, fake_upstream: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``app`` (errors answered, not raised), with a fresh catalogue and an
    empty log of upstream requests."""
    registry.invalidate()
    httpx.delete(fake_upstream.url + "/__fake/requests")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


def function_fixtures(path: str, *, app: str, client: str) -> tuple[Any, Any]:
    """Two fixtures, to be assigned to module names equal to ``app`` and ``client``: the function's
    app at ``path`` (session scope) and an :func:`app_client` on it."""

    @pytest.fixture(scope="session", name=app)
    def app_fixture(stack: str, fake_upstream: RunningServer) -> Any:
        return load_app(path)

    @pytest.fixture(name=client)
    async def client_fixture(request: pytest.FixtureRequest,
                             fake_upstream: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
        async with app_client(request.getfixturevalue(app), fake_upstream) as c:
            yield c

    return app_fixture, client_fixture


def post_event(path: str, body: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """An API Gateway HTTP API (v2) event: ``POST path`` with ``body`` as JSON and ``headers``
    (authentication), its own request id."""
    from tests.integration.test_health import http_api_v2_event

    event = http_api_v2_event(path, headers={**headers, "content-type": "application/json",
                                             "content-length": str(len(json.dumps(body)))})
    event["routeKey"] = event["requestContext"]["routeKey"] = f"POST {path}"
    event["requestContext"]["http"]["method"] = "POST"
    event["requestContext"]["requestId"] = f"rid-{time.monotonic_ns()}="
    event["body"] = json.dumps(body)
    return event


