"""Upstash failures against the real REST bridge, staged with a TCP proxy in front of it
(tests/support/tcp_proxy.py): a keep-alive connection that went stale while the container was
frozen is retried once; a hanging Upstash costs one timeout per container per breaker interval;
the rate limiter's degraded answers claim no X-RateLimit-* and its fail-closed 503 carries
Retry-After; /health says why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway import ratelimit, upstash
from gateway.config import reset_settings
from gateway.errors import ServiceUnavailable
from gateway.upstash import UpstashUnavailable
from infra.local.servers import RunningServer
from tests.support.services import template_router
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.3
BREAKER_S = 1.0


@pytest.fixture
def proxied(upstash_bridge: RunningServer, stack: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    bridge = urlsplit(upstash_bridge.url)
    proxy = TcpProxy(bridge.hostname or "127.0.0.1", bridge.port or 80)
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://{proxy.url_host}")
    monkeypatch.setenv("UPSTASH_TIMEOUT_S", str(TIMEOUT_S))
    monkeypatch.setenv("UPSTASH_BREAKER_S", str(BREAKER_S))
    reset_settings()
    upstash.reset_redis()
    yield proxy
    upstash.reset_redis()
    proxy.close()


@pytest.fixture
async def gateway(proxied: TcpProxy, fake_upstream: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=template_router(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client


async def _timed_ping() -> tuple[Any, float]:
    started = time.perf_counter()
    try:
        result: Any = await upstash.get_redis().ping()
    except UpstashUnavailable as exc:
        result = exc
    return result, time.perf_counter() - started


async def test_stale_keepalive_connection_is_retried_once(proxied: TcpProxy) -> None:
    assert await upstash.get_redis().ping() == "PONG"
    assert proxied.accepted == 1
    proxied.drop_idle()  # the kept-alive connection dies while the container is frozen
    assert await upstash.get_redis().ping() == "PONG"  # no error reaches the caller
    assert proxied.dropped == 1 and proxied.accepted == 2  # the first try used the stale connection


async def test_client_is_built_without_upstash_redis_own_http_client(proxied: TcpProxy) -> None:
    """make_client never builds upstash-redis's httpx executor (a CA bundle load on the cold
    start); the library's class is put back, and ours answers."""
    import upstash_redis.asyncio.client as lib
    import upstash_redis.http

    client = upstash.make_client()
    assert isinstance(client._http, upstash.UpstashExecutor)
    assert lib.AsyncHttpClient is upstash_redis.http.AsyncHttpClient
    assert await client.ping() == "PONG"
    await client._http.close()


async def test_refused_connection_is_not_retried(proxied: TcpProxy) -> None:
    proxied.set_mode("refuse")
    result, _ = await _timed_ping()
    assert isinstance(result, UpstashUnavailable) and result.reason == "connection refused or unreachable"
    assert proxied.accepted == 0


async def test_hanging_upstash_costs_one_timeout_per_interval(proxied: TcpProxy) -> None:
    assert await upstash.get_redis().ping() == "PONG"
    proxied.set_mode("stall")
    result, elapsed = await _timed_ping()
    assert isinstance(result, UpstashUnavailable), result
    assert result.reason == f"no answer within {TIMEOUT_S:g} s"
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 0.5
    for _ in range(5):  # the breaker is open: no wait, no connection attempt
        result, elapsed = await _timed_ping()
        assert isinstance(result, UpstashUnavailable) and elapsed < 0.05
        assert 1 <= result.retry_after <= BREAKER_S + 1
    accepted = proxied.accepted
    time.sleep(BREAKER_S)
    result, elapsed = await _timed_ping()  # one new try after the interval: one more timeout
    assert isinstance(result, UpstashUnavailable) and elapsed >= TIMEOUT_S * 0.9
    proxied.set_mode("forward")
    time.sleep(BREAKER_S)
    assert (await _timed_ping())[0] == "PONG"  # recovered, same client
    assert proxied.accepted > accepted


async def test_rate_limit_decisions_while_upstash_hangs(proxied: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    proxied.set_mode("stall")
    decision = await ratelimit.limit("user:breaker", 10)
    assert decision.allowed and decision.degraded  # fail open (the default)
    assert decision.headers() == {}  # nothing was counted: no X-RateLimit-Remaining claim
    monkeypatch.setenv("RATELIMIT_FAIL_OPEN", "false")
    reset_settings()
    started = time.perf_counter()
    decision = await ratelimit.limit("user:breaker", 10)
    assert time.perf_counter() - started < 0.05  # the breaker answers
    assert not decision.allowed and decision.degraded
    with pytest.raises(ServiceUnavailable) as info:
        ratelimit.enforce(decision)
    assert info.value.code == "ratelimiter_unavailable"
    assert 1 <= int(info.value.headers["Retry-After"]) <= BREAKER_S + 1
    assert "X-RateLimit-Remaining" not in info.value.headers


async def test_chat_and_health_while_upstash_hangs(gateway: httpx.AsyncClient, proxied: TcpProxy, make_user: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user(balance="5")
    headers = {"authorization": f"Bearer {user.api_key}"}
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    ok = await gateway.post("/v1/chat/completions", headers=headers, json=body)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining"]

    proxied.set_mode("stall")
    degraded = await gateway.post("/v1/chat/completions", headers=headers, json=body)
    assert degraded.status_code == 200, degraded.text  # fail open
    assert not [h for h in degraded.headers if h.startswith("x-ratelimit-")]

    health = await gateway.get("/health")
    assert health.status_code == 503 and int(health.headers["retry-after"]) >= 1
    check = health.json()["checks"]["redis"]
    assert check["ok"] is False and check["error"] == "UpstashUnavailable"
    assert check["reason"] == f"no answer within {TIMEOUT_S:g} s"

    monkeypatch.setenv("RATELIMIT_FAIL_OPEN", "false")
    reset_settings()
    refused = await gateway.post("/v1/chat/completions", headers=headers, json=body)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "ratelimiter_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    assert "x-ratelimit-remaining" not in refused.headers


async def _last_token_with_a_stalled_refill(gateway: httpx.AsyncClient, proxied: TcpProxy,
                                            make_user: Any) -> tuple[httpx.Response, float]:
    """A user's chat requests until the one that takes its lease's last token, which starts the next
    lease call (a refill ahead of need) while Upstash stalls: that request's answer, and how long
    it took."""
    user = await make_user(balance="5", tier="enterprise")  # 1000 rpm: leases of RATELIMIT_LEASE_MAX (10)
    n = ratelimit.lease_size(1000)
    assert n > 2
    headers = {"authorization": f"Bearer {user.api_key}"}
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(n - 1):  # the lease call, then its tokens but the last
        r = await gateway.post("/v1/chat/completions", headers=headers, json=body)
        assert r.status_code == 200, r.text
        assert not ratelimit._refills
    proxied.set_mode("stall")
    started = time.perf_counter()
    last = await gateway.post("/v1/chat/completions", headers=headers, json=body)  # the last token
    return last, time.perf_counter() - started


async def test_in_lambda_a_lease_refill_a_request_started_ends_before_its_response(
        gateway: httpx.AsyncClient, proxied: TcpProxy, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """In Lambda the response of the request that started a refill completes only after that call
    ended: behind the Web Adapter nothing runs after the response. Here the refill hangs until the
    Upstash timeout, and the response (still a 200: the call is the next request's) waits for it."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "QueryFunction")
    last, waited = await _last_token_with_a_stalled_refill(gateway, proxied, make_user)
    assert last.status_code == 200, last.text
    assert not ratelimit._refills  # the refill it started ended before its response
    assert waited >= TIMEOUT_S * 0.9  # ... which waited for it (here: the Upstash timeout)


async def test_on_a_plain_server_a_lease_refill_ends_after_the_response(
        gateway: httpx.AsyncClient, proxied: TcpProxy, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain server keeps running after a response: the request that started a refill answers
    without waiting for it, and the refill ends on its own (here: at the Upstash timeout)."""
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    last, waited = await _last_token_with_a_stalled_refill(gateway, proxied, make_user)
    assert last.status_code == 200, last.text
    assert waited < TIMEOUT_S * 0.5  # not held by the stalled refill
    assert len(ratelimit._refills) == 1  # still in flight after the response
    await asyncio.wait_for(ratelimit.drain(), TIMEOUT_S * 10)  # it ends by itself
    assert not ratelimit._refills
