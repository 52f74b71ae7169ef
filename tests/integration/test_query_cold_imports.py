"""What the query function's process (run.sh → serve.py) leaves out of its cold start, and that what
was left out still works when a request needs it (issue 15, spawn third pass): a fresh interpreter
imports ``serve`` as run.sh does, builds uvicorn's ``Config``, and answers chat completions through
``stream_app`` (real Postgres, the Upstash bridge, the fake provider)."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.account import byok
from tests.support.account import master_key, provider_secret, set_env, upstream_requests  # noqa: F401
from tests.support.apps import FRESH_CHAT, in_fresh_function

pytestmark = pytest.mark.integration

# Modules the cold start no longer imports: uvicorn's dictConfig machinery (serve.py sets its loggers
# itself), the BYOK module (only a caller with stored provider keys needs it) and the other surfaces'
# shared room (the chat path takes END_OF_BODY and dropped_header from adapters.contract).
LAZY = ("logging.config", "gateway.account.byok", "gateway.translation")

_REQUEST = ("""
import os, sys
os.environ["GATEWAY_COLD_START"] = "serve"
os.environ["PORT"] = "18124"
import serve
serve.config()
import app
LAZY = LAZY_MODULES
before = sorted(m for m in LAZY if m in sys.modules)
""" + FRESH_CHAT + """
status, answer = chat(max_tokens=16)
print(json.dumps([before, status, b"choices" in answer, sorted(m for m in LAZY if m in sys.modules)]))
""").replace("LAZY_MODULES", repr(LAZY))


async def test_a_chat_completion_in_a_fresh_process_imports_none_of_the_lazy_modules(
        stack: str, fake_upstream: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user()
    monkeypatch.setenv("TEST_API_KEY", user.api_key)
    before, status, answered, after = json.loads(in_fresh_function("query", _REQUEST))
    assert (status, answered) == (200, True)
    assert before == [] and after == []


async def test_a_byok_request_in_a_fresh_process_imports_the_byok_module_and_uses_the_users_key(
        stack: str, fake_upstream: Any, make_user: Any, set_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(BYOK_MASTER_KEYS=master_key("v1"))
    user = await make_user()
    mine = provider_secret("sk-proj-")
    await byok.put(user.user_id, "openai", mine)
    monkeypatch.setenv("TEST_API_KEY", user.api_key)
    seen = len(upstream_requests(fake_upstream, "openai"))
    before, status, answered, after = json.loads(in_fresh_function("query", _REQUEST))
    assert (status, answered) == (200, True)
    assert "gateway.account.byok" not in before and "gateway.account.byok" in after
    assert [q["key"] for q in upstream_requests(fake_upstream, "openai")[seen:]] == [mine]
