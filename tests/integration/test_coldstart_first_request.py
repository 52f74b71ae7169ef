"""The query function's cold start as Lambda runs it, against the real services: a fresh interpreter
imports ``functions/query/app.py`` with ``AWS_LAMBDA_FUNCTION_NAME`` set and its Mangum handler
answers its first API Gateway event. What the cold start leaves out (httpx: upstash-redis only
builds its own HTTP clients with it, and the gateway never builds them) stays out through the first
request, which still answers and bills as usual; the database pool's one connection for it is the
one the import opened in a thread (``db.open_first_connection``)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from gateway import db
from tests.support.apps import in_fresh_function

pytestmark = pytest.mark.integration

_FIRST_REQUEST = """
import asyncio, json, os, sys
os.environ['AWS_LAMBDA_FUNCTION_NAME'] = 'QueryFunction'
sys.path.insert(0, os.path.join('..', '..'))
from bench.coldstart import FakeContext, http_api_event
import app
imported = 'httpx' in sys.modules
from gateway import db
early = db._early  # the pool's first connection, under way in a thread since app.py's top
asyncio.set_event_loop(asyncio.new_event_loop())
body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi [[words:3]]"}]}
event = http_api_event("POST", "/v1/chat/completions", headers={"authorization": "Bearer " + os.environ["KEY"]},
                       body=json.dumps(body))
answer = app.handler(event, FakeContext("QueryFunction", 1024, 60))
after_first = 'httpx' in sys.modules

loop = asyncio.get_event_loop()
pool = loop.run_until_complete(db.get_pool())
connects = pool.get_stats()["connections_num"]
served_by = loop.run_until_complete(db.fetchone("SELECT pg_backend_pid() AS pid"))["pid"]
early_pid = early.outcome.result().info.backend_pid if early is not None else None

import upstash_redis.http  # upstash-redis's own client still works: httpx is imported on its first use
client = upstash_redis.http.AsyncHttpClient(encoding=None, retries=0, retry_interval=0)
import httpx
print(json.dumps([imported, after_first, answer["statusCode"], json.loads(answer["body"]), connects,
                  type(client._client).__module__, isinstance(client._client, httpx.AsyncClient),
                  type(sys.modules["httpx"]).__name__, db._early is None, early_pid, served_by]))
"""


async def test_the_first_request_of_a_cold_start_answers_and_bills_without_httpx(
        stack: str, fake_upstream: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user("5")
    monkeypatch.setenv("KEY", user.api_key)
    (imported, after_first, status, body, connects, client_module, is_httpx_client,
     module_type, taken, early_pid, served_by) = json.loads(in_fresh_function("query", _FIRST_REQUEST))
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    assert not imported and not after_first
    assert connects == 1
    # the pool's one connection is the one app.py's import opened in a thread (import lane I5)
    assert taken and early_pid is not None and early_pid == served_by
    assert client_module.startswith("httpx") and is_httpx_client and module_type == "module"
    row = await db.fetchone("SELECT balance FROM balances WHERE user_id = %s", (user.user_id,))
    assert row is not None and row["balance"] < Decimal("5")  # the request was billed
