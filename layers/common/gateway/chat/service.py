"""The chat pipeline: resolve → admit (rate limit ‖ reserve) → call upstream with fallback →
settle. Two Postgres round trips (reserve, settle), plus one alongside an upstream call that is
still running after a second (marking the reservation as sent), and one Upstash call per request;
the API key and the model catalogue come from the warm container's caches.

Money flow per request (docs/money.md):
1. hold = worst case over every candidate model: an upper bound of the prompt (``adapters.tokens``,
   capped at the model's context length) at the highest prompt-class price + the output limit
   that is SENT upstream (the client's, clamped to the model's maximum, or injected) at the
   completion price + image and request fees, x (1 + markup), rounded up to 1e-8. OpenRouter is
   told our catalogue price as ``provider.max_price`` so it cannot route above it;
2. reserve the hold, count the request against the monthly quota and the user's requests in
   flight in ONE statement that also reads the user's current tier; the Upstash rate-limit call
   runs concurrently with it;
3. call upstream within the request deadline (the Lambda's remaining time minus a margin, 27 s
   behind API Gateway); a call still running after ``MARK_SENT_AFTER_S`` marks its reservation
   as sent upstream (what the orphan sweeper needs to charge instead of release);
4. settle the real charge from the provider's usage (never below the cost it reports; estimated
   only where it reports none) in ONE statement, retried on transient database errors and
   deferred in the container if the database stays away. In Lambda the settle finishes before the
   response does (the environment is frozen afterwards); a stream whose client left is read to
   its end for the real usage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import field, replace
from decimal import Decimal
from typing import Any, TypeVar

import anyio
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse
from starlette.types import Scope

from .. import ratelimit
from ..adapters import registry as providers
from ..adapters.contract import END_OF_BODY, Adapter, Target, UpstreamStream, Usage, dropped_header
from ..adapters.http_client import get_http_client
from ..adapters.registry import OPENROUTER, get_adapter
from ..adapters.sse import FramedChunk, FramedRun
from ..adapters.tokens import PromptSize, measure_prompt
from ..auth import Principal
from ..catalog import registry
from ..catalog.registry import ModelInfo
from ..config import Settings, Tier, get_settings
from ..errors import (
    BadRequest,
    ContextLengthExceeded,
    Forbidden,
    GatewayError,
    ModelNotFound,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from ..http import CompactJSONResponse
from ..loops import AT_SHUTDOWN
from ..money import ledger
from ..money.carried import Carried, Standing
from ..money.holds import hold_for
from ..money.pricing import ZERO, ModelPrice, charge_for, to_credit
from ..observability import MetricUnit, adapter_context, count, emit, in_lambda, logger, metrics_on
from ..records import frozen, record
from .responses import assemble
from .schema import ChatRequest, check_priced

_std_logger = logging.getLogger(logger.name)  # the logging.Logger that Powertools' logger writes through

# Service tiers billed at the catalogue (list) price; "priority", "flex", "scale" are refused.
LIST_PRICE_SERVICE_TIERS = frozenset({"auto", "default"})
# A non-streaming call's transport read timeout stays just above its deadline, so the deadline
# (which charges what the provider billed) always fires first.
READ_TIMEOUT_SLACK_S = 5.0
PER_MILLION = Decimal(1_000_000)
# An upstream call still running after this long marks its reservation as sent (one statement,
# concurrent with the call). Orphans come from calls that outlive their container (a Lambda timeout
# or crash mid-generation, a database gone for the settle): long calls. A call that ends sooner is
# settled by its own request (or, through a database outage, from this container's deferred
# settlements) and never pays for the extra statement.
MARK_SENT_AFTER_S = 1.0


@record(eq=False)
class Candidate:
    """A model the request may be sent to, with the body and output limit prepared for it."""

    model: ModelInfo
    target: Target
    byok: bool
    output_limit: int              # the output limit sent upstream (what the hold counts)
    body: dict[str, Any]           # the request as sent to this model
    dropped: list[str] = field(default_factory=list)  # parameters its adapter does not carry (x-dropped-params)


def _sse(obj: dict[str, Any]) -> bytes:
    kind = type(obj)
    if kind is FramedChunk or kind is FramedRun:  # the upstream's own bytes, already framed (adapters/openai_compat.py)
        return obj.sse  # type: ignore[attr-defined]
    return b"data: " + _COMPACT.encode(obj).encode() + b"\n\n"


# ``json.dumps(obj, separators=(",", ":"))``'s encoder, built once (with arguments, ``json.dumps``
# builds one per call): the same text.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


DONE = b"data: [DONE]\n\n"


def _chat_error_frame(err: GatewayError) -> bytes:
    return _sse(err.body())


def _chat_tail(call: Call, c: Candidate, first: dict[str, Any] | None, usage: Usage | None) -> list[bytes]:
    """The end of a chat stream: the usage chunk (``stream_options.include_usage``; same ``id`` and
    ``created`` as the other chunks), then ``[DONE]``."""
    opts = call.req.stream_options
    if opts is not None and opts.include_usage and usage is not None:
        first = first or {}
        return [_sse({"id": first.get("id") or call.request_id, "object": "chat.completion.chunk",
                      "created": first.get("created") or int(time.time()), "model": c.model.id, "choices": [],
                      "usage": usage.as_openai()}), DONE]
    return [DONE]


def _chat_assemble(chunks: list[dict[str, Any]], model: str, usage: Usage) -> dict[str, Any]:
    return assemble(chunks, model, usage.as_openai())


@frozen
class Wire:
    """What the pipeline speaks upstream and downstream. The default is chat: the registry's
    adapters (every provider behind the OpenAI chat format), chunks framed as ``data:`` lines,
    in-stream errors in the OpenAI shape, a usage chunk and ``[DONE]`` at the end, and a buffered
    stream assembled into a ``chat.completion``. A surface that talks to a provider in its own
    format (the Anthropic Messages passthrough, ``gateway.messages.native``) gives its own; the
    admission, fallback, deadline, drain and settlement stay the pipeline's."""

    adapter: Callable[[str], Adapter] = get_adapter
    frame: Callable[[dict[str, Any]], bytes] = _sse
    error_frame: Callable[[GatewayError], bytes] = _chat_error_frame
    tail: Callable[[Call, Candidate, dict[str, Any] | None, Usage | None], list[bytes]] = _chat_tail
    assemble: Callable[[list[dict[str, Any]], str, Usage], dict[str, Any]] = _chat_assemble


CHAT = Wire()


@record(eq=False)
class Call:
    """One admitted request on its way through the pipeline."""

    request_id: str
    principal: Principal
    req: ChatRequest
    candidates: list[Candidate]
    size: PromptSize
    hold: Decimal
    started: float
    deadline: float                # event-loop time by which the upstream call ends
    buffered: bool = False         # behind API Gateway (Mangum): the response is sent when complete
    tier: Tier | None = None
    rate_headers: dict[str, str] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)
    client_gone: bool = False      # set by the response when the client disconnects
    timed_out: bool = False        # the deadline stopped the upstream call
    mark: Mark | None = None            # waiting to be marked as sent upstream (``sending``)
    marking: asyncio.Task[None] | None = None
    reservation: str | None = None  # a carried hold's id when the request uses one (else its request_id)
    counted: bool = False           # counted among its key's running requests (money.carried)
    wire: Wire = CHAT
    surface: str = "chat"          # the API surface that admitted it (logged): chat, messages, responses
    usage: Usage | None = None     # the usage of the answer (final once the relay ended), for surfaces
    # Without the provider's count, the prompt is charged at its bound (``usage_record``); False where
    # the surface computes what was billed itself (embeddings: only the Gemini batches answered).
    unreported_prompt_at_bound: bool = True

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    @property
    def held_as(self) -> str:
        """The id of the reservation holding the request's credit."""
        return self.reservation or self.request_id


# --------------------------------------------------------------------------- deadline
def budget_for(scope: Scope, settings: Settings | None = None) -> tuple[float, bool]:
    """(seconds the upstream call may take, buffered?) for a request.

    Under Mangum (API Gateway) the Lambda context is in ``scope["aws.context"]``: its remaining
    time minus a margin for the settle, and at most ``buffered_deadline_s`` (API Gateway gives up
    after 30 s). Behind the Lambda Web Adapter the context comes as the ``x-amzn-lambda-context``
    header (its ``deadline``, epoch ms, can only shorten the configured budget); otherwise the
    configured ``request_deadline_s``.
    """
    settings = settings or get_settings()
    context = scope.get("aws.context")
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        remaining = context.get_remaining_time_in_millis() / 1000 - settings.deadline_margin_s
        return min(settings.buffered_deadline_s, remaining), True
    budget = settings.request_deadline_s
    lambda_context = adapter_context(scope)
    deadline_ms = lambda_context.get("deadline", lambda_context.get("deadline_ms"))
    if isinstance(deadline_ms, int | float) and not isinstance(deadline_ms, bool):
        budget = min(budget, deadline_ms / 1000 - time.time() - settings.deadline_margin_s)
    return budget, False


def deadline_error() -> UpstreamTimeout:
    return UpstreamTimeout("The upstream provider did not finish within the request deadline; what it produced "
                           "was charged. Use `stream: true` (the streaming endpoint allows long generations) or a "
                           "lower `max_tokens`.", code="upstream_timeout")


# --------------------------------------------------------------------------- planning
def route(model: ModelInfo, settings: Settings, byok_keys: Mapping[str, str]) -> tuple[Target, bool]:
    """Which provider serves ``model`` and with which key. A direct provider without a key
    (platform or BYOK) is reached through OpenRouter when we hold an OpenRouter key."""
    entry = providers.REGISTRY.get(model.provider)
    if entry is not None:
        if entry.name in byok_keys:
            return Target(entry.name, model.upstream_model, model.id, entry.base_url(settings),
                          byok_keys[entry.name]), True
        key = entry.api_key(settings)
        if key or entry.keyless:
            return Target(entry.name, model.upstream_model, model.id, entry.base_url(settings), key), False
    if model.provider != OPENROUTER:
        openrouter = providers.REGISTRY[OPENROUTER]
        if OPENROUTER in byok_keys:
            return Target(OPENROUTER, model.id, model.id, openrouter.base_url(settings), byok_keys[OPENROUTER]), True
        key = openrouter.api_key(settings)
        if key:
            return Target(OPENROUTER, model.id, model.id, openrouter.base_url(settings), key), False
    raise ServiceUnavailable(f"No provider credentials are configured for `{model.id}`.", code="provider_unconfigured")


async def byok_keys_for(principal: Principal) -> Mapping[str, str]:
    """The caller's own provider keys (BYOK). No I/O: the cached key lookup carries them sealed;
    one is decrypted only when a request is routed to its provider (then cached per container)."""
    if not principal.provider_keys:
        return {}
    from ..account import byok  # only a caller with stored keys needs it (not on a cold start's path)

    return byok.keys_for(principal.user_id, principal.provider_keys)


def output_limit(req: ChatRequest, model: ModelInfo, prompt_estimate: int) -> int:
    """The output limit sent upstream: the client's, clamped to the model's maximum; without one,
    the model's maximum within what the context leaves after the prompt (never below 1)."""
    if req.output_limit:
        return min(req.output_limit, model.max_completion_tokens)
    entry = providers.REGISTRY.get(model.provider)
    if entry is not None and entry.shares_context:
        return max(1, min(model.max_completion_tokens, model.context_length - prompt_estimate))
    return model.max_completion_tokens


def openrouter_preferences(client: Any, price: ModelPrice, *, images: bool = False) -> dict[str, Any]:
    """The client's ``provider`` preferences with ``max_price`` capped at our catalogue price
    (USD per million tokens; per request, and per image when the request has images): OpenRouter
    then never routes to an endpoint that costs more than the hold counts. A lower cap of the
    client's is kept."""
    prefs = dict(client) if isinstance(client, dict) else {}
    ours = {"prompt": price.prompt * PER_MILLION, "completion": price.completion * PER_MILLION,
            "request": price.request}
    if images:
        ours["image"] = price.image
    given = prefs.get("max_price")
    theirs: dict[str, Any] = given if isinstance(given, dict) else {}
    cap = {}
    for name, value in ours.items():
        raw = theirs.get(name)
        try:
            mine = Decimal(str(raw)) if raw is not None and not isinstance(raw, bool) else None
        except ArithmeticError:
            raise BadRequest(f"`provider.max_price.{name}` must be a number.", param="provider") from None
        if mine is not None and mine.is_finite() and mine < value:
            value = max(mine, ZERO)
        cap[name] = format(value.normalize(), "f")
    prefs["max_price"] = cap
    return prefs


def candidate_body(body: dict[str, Any], target: Target, model: ModelInfo, limit: int, size: PromptSize
                   ) -> dict[str, Any]:
    """The request as sent to one model: the output limit injected (``max_tokens``; each adapter
    names it as its provider does) and, through OpenRouter, the price cap."""
    out = {**body, "max_tokens": limit}
    out.pop("max_completion_tokens", None)
    if target.provider == OPENROUTER:
        out["provider"] = openrouter_preferences(body.get("provider"), model.price, images=size.images > 0)
    return out


def _check_options(req: ChatRequest) -> None:
    check_priced(req)
    if req.service_tier is not None and req.service_tier not in LIST_PRICE_SERVICE_TIERS:
        raise BadRequest(f"`service_tier` {req.service_tier!r} is not supported: requests are served and billed at "
                         "the standard tier (omit it, or use \"auto\" or \"default\").",
                         code="unsupported_service_tier", param="service_tier")


async def plan(request_id: str, principal: Principal, req: ChatRequest, *, budget_s: float | None = None,
               buffered: bool = False) -> Call:
    """Resolve models and compute the hold. No I/O beyond the cached catalogue; raises 404/400."""
    settings = get_settings()
    _check_options(req)
    catalog = await registry.models()
    ids = req.candidates()
    if not req.models and req.model in settings.model_fallbacks:
        ids += [m for m in settings.model_fallbacks[req.model] if m not in ids]
    models: list[ModelInfo] = []
    for mid in ids:
        info = catalog.get(mid)
        if info is None:
            raise (await registry.wrong_surface(mid, wanted=registry.CHAT)
                   or ModelNotFound(f"The model `{mid}` does not exist or is not available.", param="model"))
        models.append(info)
    body = req.upstream_body()
    size = measure_prompt(body)
    primary = models[0]
    estimate = size.estimate(primary.id)
    if estimate > primary.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {primary.context_length} tokens, but the messages are "
            f"about {estimate} tokens.", param="messages")
    models = [primary] + [m for m in models[1:] if size.estimate(m.id) <= m.context_length]
    models = _priced_for_audio(size, models)
    byok_keys = await byok_keys_for(principal)
    tier = settings.tier(principal.tier)
    candidates = []
    hold = ZERO
    for m in models:
        target, is_byok = route(m, settings, byok_keys)
        limit = output_limit(req, m, size.estimate(m.id))
        sent = candidate_body(body, target, m, limit, size)
        candidates.append(Candidate(model=m, target=target, byok=is_byok, output_limit=limit, body=sent,
                                    dropped=get_adapter(target.provider).dropped(sent)))
        hold = max(hold, hold_for(m.price, size.bound(m.id, m.context_length), limit + size.output_extra,
                                  m.markup_for(tier), images=size.images, audio=size.audio > 0, byok=is_byok,
                                  byok_fee=settings.byok_platform_fee))
    loop_now = asyncio.get_running_loop().time()
    budget = settings.request_deadline_s if budget_s is None else budget_s
    return Call(request_id=request_id, principal=principal, req=req, candidates=candidates, size=size, hold=hold,
                started=time.perf_counter(), deadline=loop_now + budget, buffered=buffered)


def _priced_for_audio(size: PromptSize, models: list[ModelInfo]) -> list[ModelInfo]:
    """Audio input is billed at the model's audio price: without one (``ModelPrice.audio``) neither
    the hold nor the charge could be right, so the primary model refuses it (400) and a fallback
    without one is skipped."""
    if not size.audio:
        return models
    if models[0].price.audio is None:
        raise BadRequest(f"The model `{models[0].id}` does not take audio input (`input_audio` content parts) "
                         "through this gateway: it has no audio price.", code="unsupported_content", param="messages")
    return [m for m in models if m.price.audio is not None]


def _check_plan(call: Call, tier: Tier) -> None:
    for c in call.candidates:
        if not c.model.allowed_for(tier):
            raise Forbidden(f"The model `{c.model.id}` is not available on the {tier.name} plan.",
                            code="model_not_allowed", param="model")


async def admit(call: Call) -> None:
    """Rate limit ‖ reserve, then the tier checks against the user's CURRENT tier. A refusal
    reads: rate limit 429, disputed payment 403, model not on the plan 403, quota 429, too many
    in flight 429, 402."""
    settings = get_settings()
    p = call.principal
    hint = settings.tier(p.tier)
    standing = _carried().take(_holder(call), call.hold) if settings.carry_holds else None
    if standing is not None:
        await _admit_carried(call, standing, hint)
        return
    reserve_coro = ledger.reserve(p.user_id, call.request_id, call.hold, quotas=settings.quotas(),
                                  api_key_id=p.key_id, model=call.candidates[0].model.id,
                                  max_in_flight=settings.max_in_flight_per_user,
                                  check_tier=lambda name: _check_plan(call, settings.tier(name)))
    limit_coro = ratelimit.check(p.user_ref, hint.rpm, key_id=p.key_ref, key_rpm=p.key_rpm,
                                 prefetch=True)
    reserved, decision = await _both(reserve_coro, limit_coro)
    if isinstance(decision, BaseException):  # only cancellation: ratelimit.check fails open/closed itself
        if not isinstance(reserved, BaseException):
            with anyio.CancelScope(shield=True):
                await ledger.cancel(call.held_as)
        raise decision
    if isinstance(reserved, BaseException):
        if not decision.allowed:
            ratelimit.enforce(decision)
        if isinstance(reserved, GatewayError):
            count(f"Rejected{reserved.status}")
        raise reserved
    await _admitted(call, settings.tier(reserved.tier), hint, decision)


async def _admit_carried(call: Call, standing: Standing, hint: Tier) -> None:
    """Admit on a hold the previous request's settle carried (docs/money.md "Carried holds"): the
    database already made the reserve's checks and counts for it; the rate limit runs as always."""
    p = call.principal
    call.reservation = standing.request_id
    try:
        decision = await ratelimit.check(p.user_ref, hint.rpm, key_id=p.key_ref, key_rpm=p.key_rpm,
                                         prefetch=True)
    except BaseException:  # cancellation only (ratelimit.check fails open/closed itself)
        with anyio.CancelScope(shield=True):
            await ledger.cancel(call.held_as)
        raise
    await _admitted(call, get_settings().tier(standing.tier), hint, decision)


async def _admitted(call: Call, tier: Tier, hint: Tier, decision: ratelimit.Decision) -> None:
    """The checks after the hold, against the tier the database read with it: a refusal gives the
    hold back (no charge, the quota request returned)."""
    p = call.principal
    try:
        if tier.rpm != hint.rpm:  # the subscription changed since the key was cached
            decision = await ratelimit.check(p.user_ref, tier.rpm, key_id=p.key_ref, key_rpm=p.key_rpm,
                                             prefetch=True)
        ratelimit.enforce(decision)
        _check_plan(call, tier)
    except GatewayError:
        await ledger.cancel(call.held_as)
        raise
    call.tier = tier
    call.rate_headers = decision.headers()
    if get_settings().carry_holds:
        _carried().begin(_holder(call))  # ended by its settle (_settle)
        call.counted = True


_carried_holds: Carried | None = None


def _holder(call: Call) -> tuple[object, object]:
    """Whose carried holds a request may use and carry: its user's and API key's."""
    return call.principal.holder


def _carried() -> Carried:
    """This container's carried holds (created on first use, with the settings' per-key bound)."""
    global _carried_holds
    if _carried_holds is None:
        _carried_holds = Carried(per_key=get_settings().carry_per_key)
    return _carried_holds


async def release_carried_holds() -> None:
    """At shutdown (``loops.AT_SHUTDOWN``: the last request has ended), give back the carried holds
    this process keeps: no one here will use them, and until the sweeper releases them (past
    ``carry_hold_s``) they count against their user's credit, requests in flight and monthly quota.
    What fails here is left to the sweeper (nothing is lost: an idle hold is released unbilled)."""
    if _carried_holds is None:
        return
    for (user_ref, key_ref), ids in _carried_holds.drain().items():
        try:  # (the holder's ids as text: a session without an API key is "None")
            await ledger.release_standing(str(user_ref), None if key_ref == "None" else str(key_ref), ids)
        except Exception as exc:
            logger.warning("carried holds left to the sweeper at shutdown", extra={
                "user_id": user_ref, "holds": len(ids), "error": type(exc).__name__})


AT_SHUTDOWN.append(release_carried_holds)


async def _both(reserve: Coroutine[Any, Any, Any], limit: Coroutine[Any, Any, ratelimit.Decision]
                ) -> tuple[Any, Any]:
    """``asyncio.gather(reserve, limit, return_exceptions=True)``, without its two tasks and loop
    turns when the rate limit decides at once (a leased token: no Upstash call, nine requests in
    ten): the limit runs eagerly as a task, up to its first wait; if it finished there, the reserve
    is awaited directly, else both are gathered as before (the Upstash call and the reserve
    still run concurrently)."""
    limiting = asyncio.Task(limit, loop=asyncio.get_running_loop(), eager_start=True)
    if not limiting.done() or limiting.cancelled():
        gathered = await asyncio.gather(reserve, limiting, return_exceptions=True)
        return gathered[0], gathered[1]
    failed = limiting.exception()
    decision: Any = failed if failed is not None else limiting.result()
    try:
        return await reserve, decision
    except Exception as exc:
        return exc, decision


# --------------------------------------------------------------------------- records and settlement
def usage_record(call: Call, status: str, *, candidate: Candidate | None = None, usage: Usage | None = None,
                 error: GatewayError | None = None, ttfb_ms: int | None = None) -> ledger.UsageRecord:
    settings = get_settings()
    p = call.principal
    record = ledger.UsageRecord(  # the ids as text (the record's JSON and the settle name them so): no str(UUID) each
        request_id=call.request_id, user_id=p.user_ref, api_key_id=None if p.key_id is None else p.key_ref,
        model_requested=call.candidates[0].model.id, status=status, stream=call.req.stream,
        latency_ms=int((time.perf_counter() - call.started) * 1000), ttfb_ms=ttfb_ms,
        error_code=error.code if error else None)
    if candidate is not None:
        m = candidate.model
        tier = call.tier or settings.tier(call.principal.tier)
        record.model_served = m.id
        record.provider = candidate.target.provider
        record.markup = m.markup_for(tier)
        record.byok = candidate.byok
        if usage is not None and not usage.reported and call.unreported_prompt_at_bound:
            # Without the provider's count (a call cut before its usage arrived, a server that reports
            # none) the prompt is charged at the bound the hold reserved for it, never at the estimate:
            # the provider bills up to a token per byte (digits, rare scripts, a file's contents), and
            # a prompt built for that, cut by the deadline, would otherwise be billed a quarter of it.
            usage = replace(usage, prompt_tokens=max(usage.prompt_tokens, call.size.bound(m.id, m.context_length)))
        if usage is not None and not usage.reported and status == "timeout":
            # Cut by OUR deadline before the provider's count: the output it generated is unknown
            # (hidden reasoning is never streamed, and the provider bills it), so it is charged at its
            # limit, what the hold reserved for it — as when a client leaves and the count never
            # comes. Else a prompt that makes a model think past the 27 s API Gateway deadline would
            # pay for the visible output only (usually none) while the provider bills the thinking.
            usage = replace(usage, completion_tokens=max(usage.completion_tokens, output_bound(call, candidate)))
        # the unit prices the call is billed at (a long-context tier's past its threshold)
        price = m.price if usage is None else m.price.for_prompt(usage.prompt_tokens)
        record.price(price)
        if usage is not None:
            record.count(usage)
            record.estimated = not usage.reported
            cost = price.cost_of(usage)
            # Never bill below what the provider says it charged us (OpenRouter's usage.cost covers
            # its routing, cache writes and fees exactly).
            record.reported_cost = usage.cost
            if usage.cost is not None and usage.cost > cost:
                cost = usage.cost
            record.provider_cost = cost
            record.charge = charge_for(cost, record.markup, byok=candidate.byok, byok_fee=settings.byok_platform_fee)
    return record


def output_bound(call: Call, c: Candidate) -> int:
    """The most output the provider can bill for the call: the output limit sent upstream plus what
    else it bills as output (a ``prediction``'s rejected tokens), as the hold counts them."""
    return c.output_limit + call.size.output_extra


def limit_usage(call: Call, c: Candidate) -> Usage:
    """The usage to charge when the provider was reached but its usage never arrives: the prompt
    estimate (``usage_record`` raises it to its bound) and the whole output bound, marked estimated."""
    prompt = min(call.size.estimate(c.model.id), c.model.context_length)
    return Usage(prompt_tokens=prompt, completion_tokens=output_bound(call, c), reported=False)


# Settlements the database could not take (it stayed away through the retries), oldest first:
# written by the next request of this container that settles successfully. Each one is also
# logged in full, and its reservation (marked as sent upstream) is charged its hold by the orphan
# sweeper if this container never gets to it.
_deferred: deque[tuple[ledger.UsageRecord, str | None]] = deque(maxlen=10_000)


async def _settle(record: ledger.UsageRecord, call: Call) -> ledger.Settlement | None:
    """Settle the request's ``record``; also give back the carried holds of its key this container
    drops, and carry one for the key's next request when it succeeded."""
    settings = get_settings()
    reservation, release, carry = call.reservation, None, None
    who = _holder(call)
    if settings.carry_holds:
        carried = _carried()
        release = carried.drop(who, call.hold)
        if record.status == "ok" and carried.claim(who, concurrent=settings.db_combine):
            carry = ledger.Carry(
                request_id=new_hold_id(), hold=to_credit(call.hold * settings.carry_hold_factor),
                seconds=settings.carry_hold_s, quotas=settings.quotas(),
                max_in_flight=settings.max_in_flight_per_user)
    result = None
    try:
        result = await ledger.settle(record, retry_for=settings.settle_retry_s, reservation=reservation,
                                     release=release or (), carry=carry)
    except ledger.TRANSIENT_DB_ERRORS as exc:
        _deferred.append((record, reservation))
        count("SettleDeferred")
        logger.error("settlement deferred: database unavailable", extra={
            "request_id": record.request_id, "error": type(exc).__name__, "user_id": str(record.user_id),
            "status": record.status, "model": record.model_served, "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens, "charge": str(record.charge)})
        return None
    finally:
        if call.counted:
            call.counted = False
            _carried().end(who)
        if carry is not None:
            tier = result.carried_tier if result is not None else None
            _carried().opened(who, None if tier is None else Standing(
                carry.request_id, carry.hold, tier, time.time() + settings.carry_hold_s - settings.carry_margin_s))
    if _deferred:
        await flush_deferred()
    return result


def new_hold_id() -> str:
    """The id of a carried hold's reservation (never a request's: ``req_`` ids and API Gateway's):
    ``hold_`` and 128 random bits in hex, the form of ``uuid4().hex`` (~0.4 us against ~2.8)."""
    return "hold_" + os.urandom(16).hex()


async def flush_deferred() -> int:
    """Settle what an earlier database outage left in this container; stops at the first failure."""
    done = 0
    while _deferred:
        record, reservation = _deferred[0]
        try:
            await ledger.settle(record, reservation=reservation)
        except ledger.TRANSIENT_DB_ERRORS:
            break
        _deferred.popleft()
        done += 1
    return done


async def _mark_sent(call: Call) -> None:
    try:
        await ledger.mark_upstream(call.held_as, call.request_id, call.candidates[0].model.id)
    except Exception as exc:  # the settle closes the reservation anyway; the mark only guides the sweeper
        logger.warning("could not mark the reservation as sent upstream",
                       extra={"request_id": call.request_id, "error": type(exc).__name__})


class Mark:
    """A call waiting to be marked as sent upstream (``sending``); ``cancel`` when it ended."""

    __slots__ = ("call", "due")

    def __init__(self, call: Call, due: float) -> None:
        self.call: Call | None = call
        self.due = due

    def cancel(self) -> None:
        self.call = None


class _Marks:
    """The calls of one event loop waiting for ``MARK_SENT_AFTER_S``, in the order they started
    (the order they come due), with ONE timer for all of them instead of a loop timer armed and
    cancelled per request: when it fires it marks every call that is due and still running, forgets
    the ended ones, and is armed again for the next due one, at most every ``MARK_CHECK_S``."""

    __slots__ = ("loop", "queue", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[Mark] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, call: Call) -> Mark:
        mark = Mark(call, self.loop.time() + MARK_SENT_AFTER_S)
        queue = self.queue
        while queue and queue[0].call is None:  # calls that ended at the front: forgotten now, not at the timer
            queue.popleft()
        queue.append(mark)
        if self.timer is None:
            self.timer = self.loop.call_at(mark.due, self.fire)
        return mark

    def fire(self) -> None:
        self.timer = None
        queue = self.queue
        now = self.loop.time()
        while queue:
            mark = queue[0]
            call = mark.call
            if call is not None and mark.due > now + _MARK_EARLY_S:
                self.timer = self.loop.call_at(max(mark.due, now + MARK_CHECK_S), self.fire)
                return
            queue.popleft()
            if call is not None:
                mark.call = None
                call.marking = asyncio.ensure_future(_mark_sent(call))


# How often the one timer of ``_Marks`` may fire: a call is marked between MARK_SENT_AFTER_S and
# MARK_SENT_AFTER_S + MARK_CHECK_S after it started (the mark only guides the orphan sweeper).
MARK_CHECK_S = 0.05
_MARK_EARLY_S = 0.005  # a loop may run a timer up to its clock's resolution early
_marks: _Marks | None = None


def sending(call: Call) -> None:
    """The request is about to reach a provider: if it is still running after
    ``MARK_SENT_AFTER_S``, record that on the reservation, concurrently (``_Marks``)."""
    if call.mark is None:
        global _marks
        loop = asyncio.get_running_loop()
        if _marks is None or _marks.loop is not loop:  # another loop (tests): its timers went with it
            _marks = _Marks(loop)
        call.mark = _marks.add(call)


async def _finish(call: Call, record: ledger.UsageRecord) -> None:
    """Settle (or release) and emit the request's metrics and one log line."""
    if call.mark is not None:
        call.mark.cancel()
    if call.marking is not None and not call.marking.done():
        await call.marking
    result = await _settle(record, call)
    if result is not None and result.overrun:
        count("HoldOverrun")
        emit({"user": str(call.principal.user_id)},
             [("HoldOverrun", 1, MetricUnit.Count),
              ("HoldOverrunMicroUSD", float((record.charge - result.hold) * 1_000_000), MetricUnit.Count)])
        logger.warning("charge exceeded hold", extra={"request_id": call.request_id, "hold": str(result.hold),
                                                       "charge": str(record.charge),
                                                       "user_id": str(call.principal.user_id)})
    # One EMF record dimensioned by provider (dashboards); a success adds no function-wide
    # [service] count: its total is the sum over providers (and Lambda's Invocations), and no
    # alarm reads it. A failure also counts UpstreamErrors function-wide, where an alarm can read it.
    # With metrics off (``emit`` and ``count`` write nothing) the record is not built either.
    if metrics_on():
        _emit_request(record)
    # The audit trail of every request is its usage_records row (request_id, user, models, provider,
    # tokens, charge, latency, status, error_code, estimated; docs/deploy.md "Logs"). This line adds
    # the fallback chain and the surface, so it is INFO only when it says something the row and the
    # metrics do not: a request that did not end "ok", an estimated usage, or a fallback. A plain
    # success is DEBUG (LogLevel=DEBUG shows it again): ~650 bytes of CloudWatch Logs per request.
    notable = record.status != "ok" or record.estimated or len(call.attempts) > 1
    if not notable and not _std_logger.isEnabledFor(logging.DEBUG):
        return  # the DEBUG line is not written: its fields are not built either (issue 15 lever 32)
    (logger.info if notable else logger.debug)("chat completion", extra={
        "request_id": call.request_id, "user_id": str(call.principal.user_id), "model": record.model_requested,
        "served": record.model_served, "provider": record.provider, "status": record.status,
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        "charge": str(record.charge), "estimated": record.estimated, "latency_ms": record.latency_ms,
        "attempts": call.attempts, "surface": call.surface})


def _emit_request(record: ledger.UsageRecord) -> None:
    """The request's EMF record, by provider (see ``_finish``)."""
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


async def finish_shielded(call: Call, record: ledger.UsageRecord) -> None:
    """Settle, to the end even if the request is cancelled meanwhile (a client that left), the
    cancellation propagating afterwards. Under Mangum (``call.buffered``) nothing cancels an
    invocation (the runtime runs it to completion on its loop; a timeout ends the process), so
    there is nothing to shield from: settled directly, which spares the first invocation the
    import of anyio's asyncio backend (~20-30 ms of a cold start)."""
    if call.buffered:
        await _finish(call, record)
        return
    with anyio.CancelScope(shield=True):
        await _finish(call, record)


def _should_fall_back(err: UpstreamError, index: int, call: Call) -> bool:
    if err.retryable and index + 1 < len(call.candidates):
        count("Fallbacks")
        return True
    return False


# --------------------------------------------------------------------------- fallback
T = TypeVar("T")


class Unanswered(Exception):
    """An attempt failed before the provider produced anything billable, with an error that lets
    the pipeline try the next candidate (``_first_answer`` decides)."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


async def _first_answer(call: Call, attempt: Callable[[Candidate], Awaitable[T]]) -> tuple[Candidate, T]:
    """The candidate loop of every upstream call: try each candidate in order within the deadline
    (each one noted in ``call.attempts``, its reservation marked as sent when it runs long) until
    ``attempt`` answers. An attempt that raises :class:`Unanswered` with a retryable error falls
    back to the next candidate; any other exception ends the request (the attempt settled what it
    must). When no candidate answered, the request is settled as failed (nothing charged) and the
    last error raised."""
    last: UpstreamError | None = None
    for i, c in enumerate(call.candidates):
        if call.remaining() <= 0:
            last = deadline_error()
            break
        call.attempts.append(c.model.id)
        sending(call)
        try:
            return c, await attempt(c)
        except Unanswered as miss:
            last = miss.error
            if _should_fall_back(last, i, call):
                continue
            break
    assert last is not None
    await finish_shielded(call, usage_record(call, "failed", error=last))
    raise last


def _served_by(call: Call, c: Candidate) -> None:
    """The response comes from ``c``: name the parameters its adapter did not carry (the
    ``x-dropped-params`` header, with the rate-limit headers) and log them."""
    if c.dropped:
        call.rate_headers.update(dropped_header(c.dropped))
        logger.info("parameters not forwarded", extra={"request_id": call.request_id, "model": c.model.id,
                                                       "provider": c.target.provider, "dropped": c.dropped})


# --------------------------------------------------------------------------- non-streaming
async def complete(call: Call) -> tuple[dict[str, Any], ledger.UsageRecord]:
    """Call upstream (with fallback) within the deadline. Returns the response and its usage record;
    ``respond`` settles it. Behind API Gateway the upstream is read as a stream (``complete_buffered``)."""
    if call.buffered:
        return await complete_buffered(call)
    client = get_http_client()

    async def attempt(c: Candidate) -> tuple[dict[str, Any], Usage]:
        try:
            async with asyncio.timeout_at(call.deadline):
                return await call.wire.adapter(c.target.provider).complete(
                    client, c.target, c.body, read_timeout=call.remaining() + READ_TIMEOUT_SLACK_S)
        except TimeoutError:
            # A non-streaming answer only comes when the generation is done, and the provider bills
            # a generation it started: charge the output limit, marked estimated.
            expired = deadline_error()
            await finish_shielded(call, usage_record(call, "timeout", candidate=c, usage=limit_usage(call, c),
                                                 error=expired))
            raise expired from None
        except UpstreamError as err:
            if err.billed_usage is not None:  # a 200 the provider billed but we could not use
                await finish_shielded(call, usage_record(call, "failed", candidate=c, usage=err.billed_usage,
                                                         error=err))
                raise
            if err.code == "response_build_failed":
                await finish_shielded(call, usage_record(call, "failed", candidate=c, usage=limit_usage(call, c),
                                                     error=err))
                raise
            raise Unanswered(err) from err
        except GatewayError as err:  # refused before sending (e.g. a part this provider cannot take)
            await finish_shielded(call, usage_record(call, "failed", candidate=c, error=err))
            raise
        except asyncio.CancelledError:  # the call was on its way: the provider bills it
            await finish_shielded(call, usage_record(call, "cancelled", candidate=c, usage=limit_usage(call, c)))
            raise
        except Exception:  # a bug building the request: nothing was sent
            await finish_shielded(call, usage_record(call, "failed", candidate=c))
            raise

    c, (response, usage) = await _first_answer(call, attempt)
    _served_by(call, c)
    call.usage = usage
    # the adapter already set ``model`` (target.public_id == model id) and ``usage``
    # (including provider details such as reasoning tokens)
    return response, usage_record(call, "ok", candidate=c, usage=usage)


async def respond(call: Call, response: dict[str, Any], record: ledger.UsageRecord, *,
                  headers: Mapping[str, str] | None = None,
                  build: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> JSONResponse:
    """The JSON response, settled: in Lambda BEFORE it is sent (behind the Web Adapter the
    environment is frozen once the response completes, so work after it may never run), locally
    right after it. A response that cannot be rendered is still settled. ``headers`` are sent
    besides the rate-limit headers and ``build`` turns the answer into a surface's body (a
    translated surface: Anthropic ``Message``, Responses ``Response``); a failing ``build`` is a
    render failure (settled, billed)."""
    try:
        body = build(response) if build is not None else response
        rendered = CompactJSONResponse(body, headers={**call.rate_headers, **(headers or {})})
    except BaseException:
        record.status, record.error_code = "failed", "response_render_failed"  # billed by the provider
        await finish_shielded(call, record)
        raise
    if in_lambda():
        await finish_shielded(call, record)
    else:
        rendered.background = BackgroundTask(finish_shielded, call, record)
    return rendered


async def complete_buffered(call: Call) -> tuple[dict[str, Any], ledger.UsageRecord]:
    """Behind API Gateway: read the upstream as a stream and assemble the completion, so the
    deadline (before API Gateway's 30 s) stops the generation and charges what it produced."""
    c, upstream, iterator, first = await _open(call, relay=False)
    chunks = [] if first is None else [first]
    error: UpstreamError | None = None
    timer = _arm_deadline(call, upstream)
    try:
        try:
            if iterator is not None:
                async for chunk in iterator:
                    chunks.append(chunk)
        except UpstreamError as err:
            error = err
        await upstream.aclose()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
            await _finish(call, usage_record(call, "cancelled", candidate=c, usage=upstream.usage))
        raise
    finally:
        timer.cancel()
    usage = call.usage = upstream.usage
    failure = deadline_error() if call.timed_out else error
    if failure is not None:
        await finish_shielded(call, usage_record(call, "timeout" if call.timed_out else "partial", candidate=c,
                                             usage=usage, error=failure))
        raise failure
    assert usage is not None
    return call.wire.assemble(chunks, c.model.id, usage), usage_record(call, "ok", candidate=c, usage=usage)


# --------------------------------------------------------------------------- streaming

def _arm_deadline(call: Call, upstream: UpstreamStream) -> asyncio.TimerHandle:
    """At the deadline, close the upstream: the read in progress ends and what was produced is
    charged. One timer per stream (no per-chunk cost)."""
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Task[None]] = []

    def expire() -> None:
        call.timed_out = True
        closing.append(loop.create_task(upstream.aclose()))

    return loop.call_at(call.deadline, expire)


async def _open(call: Call, *, relay: bool = True) -> tuple[Candidate, UpstreamStream, Any, dict[str, Any] | None]:
    """Open the upstream stream, falling back until one produces its FIRST chunk (within the
    deadline); errors up to that point raise. ``relay=False``: the chunks are assembled, not sent."""
    client = get_http_client()

    async def attempt(c: Candidate) -> tuple[UpstreamStream, Any, dict[str, Any] | None]:
        upstream = call.wire.adapter(c.target.provider).stream(client, c.target, c.body)
        upstream.relay = relay
        if relay and call.wire.frame is _sse:
            upstream.runs = True  # _relay frames every chunk with _sse: plain deltas may come as FramedRuns
        try:
            async with asyncio.timeout_at(call.deadline):
                await upstream.open()
                iterator = upstream.__aiter__()
                first = await iterator.__anext__()
        except StopAsyncIteration:
            return upstream, None, None
        except TimeoutError:
            expired = deadline_error()
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                await _finish(call, usage_record(call, "timeout", candidate=c, usage=upstream.usage, error=expired))
            raise expired from None
        except UpstreamError as err:
            await upstream.aclose()
            raise Unanswered(err) from err
        except BaseException:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                await _finish(call, usage_record(call, "cancelled", candidate=c, usage=upstream.usage))
            raise
        return upstream, iterator, first

    c, (upstream, iterator, first) = await _first_answer(call, attempt)
    _served_by(call, c)
    return c, upstream, iterator, first


async def open_stream(call: Call) -> AsyncIterator[bytes]:
    """Open the upstream stream (see ``_open``) and return the SSE byte iterator."""
    c, upstream, iterator, first = await _open(call)
    relay = _relay(call, c, upstream, iterator, first)
    # Start the generator now: once it is suspended inside its try/finally, settlement is
    # guaranteed even if the response never iterates it (client gone before the first send).
    # An unstarted generator's finally never runs.
    await relay.__anext__()
    return relay


async def _relay(call: Call, c: Candidate, upstream: UpstreamStream, iterator: Any, first: dict[str, Any] | None
                 ) -> AsyncIterator[bytes]:
    """Forward chunks as they arrive, then settle (or on failure/deadline). A client that left does
    not stop the reading: the provider's final usage is what it bills.

    A stream that completes is settled from its terminal event (``upstream.on_done``: the usage is
    final there), in a task of its own, while the upstream's body is drained, the tail framed and
    the last chunks sent; the relay awaits that settlement before it ends (issue 15 lever 27).

    Where the response's end is: in Lambda the relay's last bytes are its last chunk, so the final
    body message waits for the settle (the environment is frozen once the response completes). On
    a plain server it yields :data:`~gateway.adapters.contract.END_OF_BODY` after its last bytes (the
    tail or the error frame): ``RelayResponse`` sends the final body message on it, then keeps
    reading, which runs this ``finally`` (the settle awaited) within the same ASGI call — the
    settle no longer delays the client's last byte but is never detached from the request, as a
    non-streaming response's ``BackgroundTask`` (``respond``)."""
    ttfb_ms = int((time.perf_counter() - call.started) * 1000)
    status, error = "cancelled", None
    timer = _arm_deadline(call, upstream)
    settling: asyncio.Task[None] | None = None

    def settle_now() -> None:
        nonlocal settling, status
        if settling is not None or call.timed_out:
            return
        status = "cancelled" if call.client_gone else "ok"
        call.usage = upstream.usage
        record = usage_record(call, status, candidate=c, usage=_relayed_usage(call, c, upstream), ttfb_ms=ttfb_ms)
        settling = asyncio.Task(_finish(call, record), loop=asyncio.get_running_loop(), eager_start=True)

    upstream.on_done = settle_now
    try:
        yield b""  # consumed by open_stream (priming), never sent
        try:
            frame = call.wire.frame
            if first is not None:
                yield frame(first)
            if iterator is not None:
                async for chunk in iterator:
                    yield frame(chunk)
        except UpstreamError as err:
            error = err
        await upstream.aclose()  # finalises usage (estimates where the provider reported none)
        call.usage = upstream.usage
        if settling is not None:  # settled as it completed (status set there): nothing since changes it
            error = None
        elif call.timed_out:
            status, error = "timeout", deadline_error()
        elif error is not None:
            status = "partial"
        else:
            status = "cancelled" if call.client_gone else "ok"
        if error is not None:
            yield call.wire.error_frame(error)
        else:
            for tail in call.wire.tail(call, c, first, upstream.usage):
                yield tail
        if not in_lambda():
            yield END_OF_BODY
    finally:
        timer.cancel()
        upstream.on_done = None
        with anyio.CancelScope(shield=True):
            if settling is not None:
                await upstream.aclose()
                await settling
            else:
                if status == "cancelled" and iterator is not None and not call.timed_out:
                    await _drain(call, iterator)
                await upstream.aclose()
                await _finish(call, usage_record(call, status, candidate=c, usage=_relayed_usage(call, c, upstream),
                                                 error=error, ttfb_ms=ttfb_ms))


def _relayed_usage(call: Call, c: Candidate, upstream: UpstreamStream) -> Usage | None:
    """The usage a relay settles: the upstream's (the provider's, or the estimate), but the whole
    limit when the client left and the provider's count never came (``limit_usage``)."""
    usage = upstream.usage
    if call.client_gone and (usage is None or not usage.reported):
        return limit_usage(call, c)
    return usage


async def _drain(call: Call, iterator: Any) -> None:
    """The relay was closed early (its consumer went away): keep reading the upstream until its
    final usage, within the deadline."""
    call.client_gone = True
    with anyio.move_on_after(max(call.remaining(), 0)):
        try:
            async for _ in iterator:
                pass
        except (UpstreamError, RuntimeError):
            pass  # broken, or interrupted while it was being read: the usage stays estimated
