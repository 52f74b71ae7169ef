"""The chat pipeline: resolve → admit (rate limit ‖ reserve) → call upstream with fallback →
settle. Two Postgres round trips (reserve, settle) and one Upstash call per request; the API
key and the model catalogue come from the warm container's caches.

Money flow per request (see docs/money.md):
1. hold = worst case over every candidate model (estimated prompt at full price + the output
   limit at completion price + request fee) x (1 + markup), rounded up to 1e-8;
2. reserve the hold and count the request against the monthly quota in ONE statement that also
   reads the user's current tier (so a subscription change applies on the very next request);
   the Upstash rate-limit call runs concurrently with it;
3. after the response / stream end / failure / disconnect, settle the real charge from the
   provider's reported usage (estimated only where it reports none) in ONE statement.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio

from .. import ratelimit
from ..account import byok
from ..adapters.base import Target, Usage, get_adapter
from ..adapters.http_client import get_http_client
from ..adapters.tokens import estimate_prompt_tokens
from ..auth import Principal
from ..billing import ledger
from ..billing.pricing import ZERO, charge_for, hold_for
from ..catalog import registry
from ..catalog.registry import ModelInfo
from ..config import Settings, Tier, get_settings
from ..errors import (
    ContextLengthExceeded,
    Forbidden,
    GatewayError,
    ModelNotFound,
    ServiceUnavailable,
    UpstreamError,
)
from ..observability import MetricUnit, count, emit, logger
from .schema import ChatRequest

PROVIDER_KEY_FIELDS = {"openai": "openai_api_key", "openrouter": "openrouter_api_key",
                       "anthropic": "anthropic_api_key", "gemini": "gemini_api_key", "compat": "compat_api_key"}
PROVIDER_URL_FIELDS = {"openai": "openai_base_url", "openrouter": "openrouter_base_url",
                       "anthropic": "anthropic_base_url", "gemini": "gemini_base_url", "compat": "compat_base_url"}


@dataclass(slots=True)
class Candidate:
    model: ModelInfo
    target: Target
    byok: bool
    output_limit: int


@dataclass(slots=True)
class Call:
    """One admitted request on its way through the pipeline."""

    request_id: str
    principal: Principal
    req: ChatRequest
    body: dict[str, Any]
    candidates: list[Candidate]
    prompt_estimate: int
    hold: Decimal
    started: float
    tier: Tier | None = None
    rate_headers: dict[str, str] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)


def route(model: ModelInfo, settings: Settings, byok_keys: Mapping[str, str]) -> tuple[Target, bool]:
    """Which provider serves ``model`` and with which key. A direct provider without a key
    (platform or BYOK) is reached through OpenRouter when we hold an OpenRouter key."""
    provider = model.provider
    if provider in byok_keys:
        return Target(provider, model.upstream_model, model.id, getattr(settings, PROVIDER_URL_FIELDS[provider]),
                      byok_keys[provider]), True
    key = getattr(settings, PROVIDER_KEY_FIELDS[provider], "") if provider in PROVIDER_KEY_FIELDS else ""
    if key or provider == "compat":
        return Target(provider, model.upstream_model, model.id, getattr(settings, PROVIDER_URL_FIELDS[provider]),
                      key), False
    if provider != "openrouter" and "openrouter" in byok_keys:
        return Target("openrouter", model.id, model.id, settings.openrouter_base_url, byok_keys["openrouter"]), True
    if provider != "openrouter" and settings.openrouter_api_key:
        return Target("openrouter", model.id, model.id, settings.openrouter_base_url,
                      settings.openrouter_api_key), False
    raise ServiceUnavailable(f"No provider credentials are configured for `{model.id}`.", code="provider_unconfigured")


async def byok_keys_for(principal: Principal) -> Mapping[str, str]:
    """The caller's own provider keys (BYOK). No I/O: the cached key lookup carries them sealed;
    one is decrypted only when a request is routed to its provider (then cached per container)."""
    if not principal.provider_keys:
        return {}
    return byok.keys_for(principal.user_id, principal.provider_keys)


async def plan(request_id: str, principal: Principal, req: ChatRequest) -> Call:
    """Resolve models and compute the hold. No I/O beyond the cached catalogue; raises 404/400."""
    settings = get_settings()
    catalog = await registry.models()
    ids = req.candidates()
    if not req.models and req.model in settings.model_fallbacks:
        ids += [m for m in settings.model_fallbacks[req.model] if m not in ids]
    models: list[ModelInfo] = []
    for mid in ids:
        info = catalog.get(mid)
        if info is None:
            raise ModelNotFound(f"The model `{mid}` does not exist or is not available.", param="model")
        models.append(info)
    body = req.upstream_body()
    prompt_estimate = estimate_prompt_tokens(body)
    primary = models[0]
    if prompt_estimate > primary.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {primary.context_length} tokens, but the messages are "
            f"about {prompt_estimate} tokens.", param="messages")
    models = [primary] + [m for m in models[1:] if prompt_estimate <= m.context_length]
    byok = await byok_keys_for(principal)
    tier = settings.tier(principal.tier)
    candidates = []
    hold = ZERO
    for m in models:
        target, is_byok = route(m, settings, byok)
        limit = min(req.output_limit or m.max_completion_tokens, m.max_completion_tokens)
        candidates.append(Candidate(model=m, target=target, byok=is_byok, output_limit=limit))
        hold = max(hold, hold_for(m.price, prompt_estimate, limit, m.markup_for(tier), byok=is_byok,
                                  byok_fee=settings.byok_platform_fee))
    return Call(request_id=request_id, principal=principal, req=req, body=body, candidates=candidates,
                prompt_estimate=prompt_estimate, hold=hold, started=time.perf_counter())


def _quotas(settings: Settings) -> dict[str, int | None]:
    quotas: dict[str, int | None] = {name: t.monthly_quota for name, t in settings.tiers.items()}
    quotas["hobby"] = quotas["free"]
    return quotas


async def admit(call: Call) -> None:
    """Rate limit ‖ reserve, then the tier checks against the user's CURRENT tier."""
    settings = get_settings()
    p = call.principal
    hint = settings.tier(p.tier)
    reserve_coro = ledger.reserve(p.user_id, call.request_id, call.hold, quotas=_quotas(settings),
                                  api_key_id=p.key_id, model=call.candidates[0].model.id)
    limit_coro = ratelimit.check(str(p.user_id), hint.rpm, key_id=str(p.key_id), key_rpm=p.key_rpm)
    reserved, decision = await asyncio.gather(reserve_coro, limit_coro, return_exceptions=True)
    if isinstance(decision, BaseException):  # only cancellation: ratelimit.check fails open/closed itself
        if not isinstance(reserved, BaseException):
            with anyio.CancelScope(shield=True):
                await ledger.cancel(call.request_id)
        raise decision
    if isinstance(reserved, BaseException):
        if not decision.allowed:
            ratelimit.enforce(decision)
        if isinstance(reserved, GatewayError):
            count(f"Rejected{reserved.status}")
        raise reserved
    tier = settings.tier(reserved.tier)
    try:
        if tier.rpm != hint.rpm:  # the subscription changed since the key was cached
            decision = await ratelimit.check(str(p.user_id), tier.rpm, key_id=str(p.key_id), key_rpm=p.key_rpm)
        ratelimit.enforce(decision)
        for c in call.candidates:
            if not c.model.allowed_for(tier):
                raise Forbidden(f"The model `{c.model.id}` is not available on the {tier.name} plan.",
                                code="model_not_allowed", param="model")
    except GatewayError:
        await ledger.cancel(call.request_id)
        raise
    call.tier = tier
    call.rate_headers = decision.headers()


def _record(call: Call, status: str, *, candidate: Candidate | None = None, usage: Usage | None = None,
            error: GatewayError | None = None, ttfb_ms: int | None = None) -> ledger.UsageRecord:
    settings = get_settings()
    record = ledger.UsageRecord(
        request_id=call.request_id, user_id=call.principal.user_id, api_key_id=call.principal.key_id,
        model_requested=call.candidates[0].model.id, status=status, stream=call.req.stream,
        latency_ms=int((time.perf_counter() - call.started) * 1000), ttfb_ms=ttfb_ms,
        error_code=error.code if error else None)
    if candidate is not None:
        m = candidate.model
        tier = call.tier or settings.tier(call.principal.tier)
        record.model_served = m.id
        record.provider = candidate.target.provider
        record.prompt_price, record.completion_price = m.price.prompt, m.price.completion
        record.cache_read_price, record.request_price = m.price.cache_read, m.price.request
        record.cache_write_price = m.price.cache_write
        record.markup = m.markup_for(tier)
        record.byok = candidate.byok
    if candidate is not None and usage is not None:
        record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        record.cached_tokens, record.cache_write_tokens = usage.cached_tokens, usage.cache_write_tokens
        record.estimated = not usage.reported
        cost = candidate.model.price.provider_cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                                   usage.cache_write_tokens)
        if usage.prompt_tokens == 0 and usage.completion_tokens == 0:
            cost = ZERO
        record.provider_cost = cost
        record.charge = charge_for(cost, record.markup, byok=candidate.byok, byok_fee=settings.byok_platform_fee)
    return record


async def _finish(call: Call, record: ledger.UsageRecord) -> None:
    """Settle (or release) and emit the request's metrics and one log line."""
    result = await ledger.settle(record)
    if result.settled and record.charge > result.hold:
        count("HoldOverrun")
        logger.warning("charge exceeded hold", extra={"request_id": call.request_id, "hold": str(result.hold),
                                                       "charge": str(record.charge)})
    # function-wide counts (alarms) + one EMF record dimensioned by provider (dashboards)
    count("Requests")
    values: list[tuple[str, float, MetricUnit]] = [("Requests", 1, MetricUnit.Count)]
    if record.status == "ok":
        values += [("PromptTokens", record.prompt_tokens, MetricUnit.Count),
                   ("CompletionTokens", record.completion_tokens, MetricUnit.Count),
                   ("ProviderCostMicroUSD", float(record.provider_cost * 1_000_000), MetricUnit.Count),
                   ("ChargeMicroUSD", float(record.charge * 1_000_000), MetricUnit.Count),
                   ("LatencyMs", record.latency_ms or 0, MetricUnit.Milliseconds)]
        if record.ttfb_ms is not None:
            values.append(("TimeToFirstByteMs", record.ttfb_ms, MetricUnit.Milliseconds))
    else:
        count("UpstreamErrors")
        values.append(("UpstreamErrors", 1, MetricUnit.Count))
    emit({"provider": record.provider or "none"}, values)
    logger.info("chat completion", extra={
        "request_id": call.request_id, "user_id": str(call.principal.user_id), "model": record.model_requested,
        "served": record.model_served, "provider": record.provider, "status": record.status,
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        "charge": str(record.charge), "latency_ms": record.latency_ms, "attempts": call.attempts})


def _should_fall_back(err: UpstreamError, index: int, call: Call) -> bool:
    if err.retryable and index + 1 < len(call.candidates):
        count("Fallbacks")
        return True
    return False


# --------------------------------------------------------------------------- non-streaming
async def complete(call: Call) -> tuple[dict[str, Any], Callable[[], Awaitable[None]]]:
    """Call upstream (with fallback). Returns the response and the settlement to run right
    after the response is sent (in Lambda, Mangum runs it before the invocation returns)."""
    client = get_http_client()
    last: UpstreamError | None = None
    for i, c in enumerate(call.candidates):
        call.attempts.append(c.model.id)
        try:
            response, usage = await get_adapter(c.target.provider).complete(client, c.target, call.body)
        except UpstreamError as err:
            last = err
            if _should_fall_back(err, i, call):
                continue
            break
        except BaseException:
            await _shielded_finish(call, _record(call, "cancelled", candidate=c))
            raise
        # the adapter already set ``model`` (target.public_id == model id) and ``usage``
        # (including provider details such as reasoning tokens)
        record = _record(call, "ok", candidate=c, usage=usage)
        return response, functools.partial(_shielded_finish, call, record)
    assert last is not None
    await _shielded_finish(call, _record(call, "failed", error=last))
    raise last


async def _shielded_finish(call: Call, record: ledger.UsageRecord) -> None:
    with anyio.CancelScope(shield=True):
        await _finish(call, record)


# --------------------------------------------------------------------------- streaming
def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


async def open_stream(call: Call) -> AsyncIterator[bytes]:
    """Open the upstream stream, falling back until one produces its FIRST chunk; errors up
    to that point raise (a normal JSON error response). Returns the SSE byte iterator."""
    client = get_http_client()
    last: UpstreamError | None = None
    for i, c in enumerate(call.candidates):
        call.attempts.append(c.model.id)
        upstream = get_adapter(c.target.provider).stream(client, c.target, call.body)
        try:
            await upstream.open()
            iterator = upstream.__aiter__()
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
            iterator = None
        except UpstreamError as err:
            await upstream.aclose()
            last = err
            if _should_fall_back(err, i, call):
                continue
            break
        except BaseException:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                await _finish(call, _record(call, "cancelled", candidate=c, usage=upstream.usage))
            raise
        relay = _relay(call, c, upstream, iterator, first)
        # Start the generator now: once it is suspended inside its try/finally, settlement is
        # guaranteed even if the response never iterates it (client gone before the first
        # send: Starlette then drops the body iterator unstarted; the loop's asyncgen finaliser
        # closes a started one). An unstarted generator's finally never runs.
        await relay.__anext__()
        return relay
    assert last is not None
    await _shielded_finish(call, _record(call, "failed", error=last))
    raise last


async def _relay(call: Call, c: Candidate, upstream: Any, iterator: Any, first: dict[str, Any] | None
                 ) -> AsyncIterator[bytes]:
    """Forward chunks as they arrive; settle after the last byte (or on failure/disconnect)."""
    ttfb_ms = int((time.perf_counter() - call.started) * 1000)
    status, error = "cancelled", None
    try:
        yield b""  # consumed by open_stream (priming), never sent
        try:
            if first is not None:
                yield _sse(first)
            if iterator is not None:
                async for chunk in iterator:
                    yield _sse(chunk)
        except UpstreamError as err:
            error = err
        await upstream.aclose()  # finalises usage (estimates where the provider reported none)
        if error is not None:
            status = "partial"
            yield _sse(error.body())
            return
        opts = call.req.stream_options
        if opts is not None and opts.include_usage and upstream.usage is not None:
            yield _sse({"id": call.request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": c.model.id, "choices": [], "usage": upstream.usage.as_openai()})
        status = "ok"
        yield DONE
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
            await _finish(call, _record(call, status, candidate=c, usage=upstream.usage, error=error,
                                        ttfb_ms=ttfb_ms))
