"""Secrets (API keys, provider keys, JWTs, master keys) never appear in logs or error bodies.

The session-wide tap (tests/conftest.py + tests/support/secret_log.py) checks every log record of
the whole run at the end; these tests drive the paths most likely to leak (upstream auth errors
on a user's own key, bad sign-in tokens, validation errors on secret fields, an undecryptable
BYOK key, revocation) and check the bodies and the logs so far."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import logging
import secrets
from typing import Any

import pytest

from gateway.observability import logger
from tests.support import secret_log
from tests.support.account import (  # noqa: F401  (fixtures)
    ADMIN,
    api,
    bearer,
    chat_body,
    create_key,
    gateway_router,
    hs256,
    hs256_env,
    master_key,
    provider_secret,
    set_env,
)

pytestmark = pytest.mark.integration


def test_the_tap_sees_gateway_and_library_logs() -> None:
    canary = "canary-secret-" + secrets.token_hex(8)
    secret_log.register(canary)
    start = len(secret_log.LINES)
    logger.info("debugging", extra={"oops": canary})       # an `extra` field of the Powertools logger
    logging.getLogger("some.library").warning("token=%s", canary)
    found = secret_log.leaks(secret_log.LINES[start:])
    assert len(found) == 2 and all(canary not in f for f in found), found
    del secret_log.LINES[start:]  # the planted lines must not fail the session check
    secret_log.SECRETS.discard(canary)


async def test_secret_paths_leak_nothing(api: Any, make_user: Any, hs256_env: Any, set_env: Any,
                                         fake_upstream: Any) -> None:
    a = await make_user()
    bodies: list[str] = []
    start = len(secret_log.LINES)

    # 1. a user's own provider key the provider rejects (the fake echoes a masked key, like OpenAI)
    bad = "invalid-" + secrets.token_urlsafe(20)
    secret_log.register(bad)
    r = await api.put("/v1/provider-keys/openai", json={"api_key": bad}, headers=bearer(a.api_key))
    assert r.status_code == 201
    bodies.append(r.text)
    r = await api.post("/v1/chat/completions", json=chat_body(), headers=bearer(a.api_key))
    assert r.status_code >= 400
    bodies.append(r.text)

    # 2. secret fields in invalid requests are never echoed
    long_key = "sk-" + secrets.token_urlsafe(600)
    secret_log.register(long_key)
    r = await api.put("/v1/provider-keys/openai", json={"api_key": long_key}, headers=bearer(a.api_key))
    assert r.status_code == 400
    bodies.append(r.text)
    r = await api.put("/v1/provider-keys/openai", json={"api_key": 123456789012}, headers=bearer(a.api_key))
    bodies.append(r.text)

    # 3. bad and expired sign-in tokens, a revoked API key, a wrong admin key
    for token in (hs256(exp_in=-3600), hs256(aud="other"), hs256(secret="wrong-" + secrets.token_hex(20))):
        r = await api.get("/v1/balance", headers=bearer(token))
        assert r.status_code == 401
        bodies.append(r.text)
    k = await create_key(api, a.api_key, name="short-lived")
    await api.delete(f"/v1/keys/{k['id']}", headers=bearer(a.api_key))
    r = await api.get("/v1/balance", headers=bearer(k["key"]))
    bodies.append(r.text)
    r = await api.post("/v1/admin/users", json={}, headers=bearer(a.api_key))
    bodies.append(r.text)

    # 4. a stored key that no longer decrypts (master key dropped)
    set_env(BYOK_MASTER_KEYS=master_key("gone"))
    await api.put("/v1/provider-keys/anthropic", json={"api_key": provider_secret("sk-ant-")},
                  headers=bearer(a.api_key))
    set_env(BYOK_MASTER_KEYS=master_key("other"))
    r = await api.post("/v1/chat/completions", json=chat_body("anthropic/claude-3.5-haiku"),
                       headers=bearer(a.api_key))
    assert r.status_code == 503
    bodies.append(r.text)

    with_secrets = secret_log.leaks(bodies)
    assert with_secrets == [], with_secrets
    assert secret_log.leaks(secret_log.LINES[start:]) == []
    assert len(secret_log.LINES) > start, "the paths above do log (the tap is live)"


def test_no_secret_in_any_log_line_so_far() -> None:
    """The same check the session runs at its end, at this point of the run."""
    assert secret_log.leaks() == []
