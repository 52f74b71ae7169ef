"""A function's FastAPI app in-process (the object Mangum wraps), an httpx client on it, an API
Gateway (HTTP API v2) event for its Mangum handler; and the streaming function as a process
(``functions/query/run.sh``, as behind the Lambda Web Adapter) for the end-to-end tests.

``function_fixtures`` gives a test module the two fixtures it needs::

    query_app, client = function_fixtures("functions/query/app.py", app="query_app", client="client")

the app (session scope, loaded once the stack is up) and a client on it per test (the catalogue
cache dropped and the fake providers' request log cleared first, so ``upstream_requests`` sees
only the test's own calls).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gateway.catalog import registry
from infra.local.servers import RunningServer, free_port

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




def post_scope(path: str, headers: Mapping[str, str]) -> dict[str, Any]:
    """The ASGI scope uvicorn gives a JSON ``POST path`` with ``headers`` (besides host and content type)."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "server": ("gateway", 80), "client": ("127.0.0.1", 5000),
            "headers": [(b"host", b"gateway"), (b"content-type", b"application/json"),
                        *((k.encode(), v.encode()) for k, v in headers.items())]}


async def client_leaves_mid_stream(app: Any, path: str, body: dict[str, Any], headers: Mapping[str, str], *,
                                   accepted: int = 1) -> None:
    """Drive ``app`` as uvicorn does for ``POST path`` (``stream: true`` in ``body``) with a client
    that leaves at the first streamed body: from then on ``receive`` answers ``http.disconnect``, and
    ``send`` raises ``OSError`` once more than ``accepted`` messages were sent."""
    raw = json.dumps(body).encode()
    scope = post_scope(path, headers)
    gone = asyncio.Event()
    sent = 0
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1
        if message["type"] == "http.response.body" and message.get("body"):
            gone.set()
            if sent > accepted:
                raise OSError("client gone")

    await app(scope, receive, send)


@contextmanager
def stream_function(local_stack: dict[str, Any], log_dir: Path, env: Mapping[str, str], probe: str) -> Iterator[str]:
    """``functions/query/run.sh`` itself (uvicorn serving ``stream_app``) on the local stack's
    database and Upstash, with ``env`` added (provider URLs and keys); its URL once ``probe``
    answers. The process is stopped on exit."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "UPSTASH_", "LAMBDA_"))}
    full.update({
        "STAGE": "local", "PORT": str(port), "PYTHONPATH": str(ROOT / "layers" / "common"),
        "PATH": f"{Path(sys.executable).parent}:{full.get('PATH', '')}",  # run.sh runs `python`
        "DATABASE_URL": local_stack["functions_database_url"],
        "UPSTASH_REDIS_REST_URL": local_stack["upstash_url"], "UPSTASH_REDIS_REST_TOKEN": local_stack["upstash_token"],
        "POWERTOOLS_LOG_LEVEL": "WARNING", **env,
    })
    if local_stack.get("database_pooled"):
        full["DATABASE_POOLED"] = "true"
    log = log_dir / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(ROOT / "functions" / "query" / "run.sh")], env=full, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("run.sh exited:\n" + log.read_text()[-3000:])
            try:
                httpx.get(url + probe, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("run.sh did not start:\n" + log.read_text()[-3000:]) from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def in_fresh_function(function: str, code: str) -> str:
    """The last line ``code`` prints, run in a fresh interpreter as the function's cold start would
    import it (``functions/<function>`` on the path with the layer): what an import loads."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT / 'functions' / function}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "functions" / function, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


# For ``in_fresh_function("query", ...)``: ``chat(stream, **fields)`` sends one chat completion
# (model openai/gpt-4o-mini, three words) through run.sh's ``stream_app`` (import ``app`` first) as an
# ASGI call with the API key in $TEST_API_KEY, and returns its status and body bytes.
FRESH_CHAT = '''
import asyncio, json, os, sys

async def _chat(stream, fields):
    body = json.dumps({"model": "openai/gpt-4o-mini", "stream": stream, **fields,
                       "messages": [{"role": "user", "content": "[[words:3]]"}]}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "server": ("gateway", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"gateway"), (b"content-type", b"application/json"),
                         (b"authorization", ("Bearer " + os.environ["TEST_API_KEY"]).encode())]}
    sent, done = [], asyncio.Event()

    async def receive():
        if not sent:
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app.stream_app(scope, receive, send)
    done.set()
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

def chat(stream=False, **fields):
    return asyncio.run(_chat(stream, fields))
'''
