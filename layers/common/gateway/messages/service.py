"""``/v1/messages`` on the chat pipeline: which path a request takes and its plan (candidates, hold).

The served model's provider decides (``translate.mode_for``): Anthropic itself (a platform or BYOK
Anthropic key) takes the native path (the body as the client wrote it, ``native.wire``); every
other route — any other provider, or an Anthropic model reached through OpenRouter — is translated
(``translate.to_chat`` → ``chat.service.plan``). Either way admission, fallback, the deadline and the
settlement are the chat pipeline's (``chat.service``), so a request here costs what the same request
costs on ``/v1/chat/completions``.

Native hold (docs/money.md): the Anthropic body's own upper bound (``native.native_size``: every byte
forwarded, images at Anthropic's per-image maximum, PDFs, server tools and MCP servers at the
context length) at the highest prompt-class price, plus ``max_tokens`` clamped to the model's
maximum (thinking counts inside ``max_tokens``) at the completion price, the worst candidate's.
Fallbacks (``MODEL_FALLBACKS``) of a native request are the ones Anthropic serves too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.adapters.anthropic import anthropic_names
from gateway.adapters.http_client import get_http_client
from gateway.adapters.shapes import join_url
from gateway.adapters.transport import post_json
from gateway.auth import Principal
from gateway.catalog import registry
from gateway.catalog.registry import ModelInfo
from gateway.chat import service
from gateway.chat.schema import ChatRequest
from gateway.config import get_settings
from gateway.errors import ContextLengthExceeded, ModelNotFound, UpstreamError
from gateway.money.holds import hold_for
from gateway.money.pricing import ZERO
from gateway.translation import Translation, bad_request, dumps

from . import native
from .schema import CountTokensRequest, MessagesRequest
from .translate import count_tokens_estimate, mode_for, native_body, native_headers, to_chat

ANTHROPIC = "anthropic"


@dataclass(slots=True)
class Plan:
    call: service.Call
    native: bool
    model: str                      # our catalogue id of the primary model
    dropped: list[str] = field(default_factory=list)


def resolve(catalog: Mapping[str, ModelInfo], name: str) -> ModelInfo:
    """The catalogue model a Messages request names: our id (``anthropic/claude-sonnet-4.5``), or
    Anthropic's own name as Claude Code sends it (``claude-sonnet-4-5-20250929``)."""
    info = catalog.get(name)
    if info is None and "/" not in name:
        for candidate in anthropic_names(name):
            info = catalog.get(f"{ANTHROPIC}/{candidate}")
            if info is not None:
                break
    if info is None:
        raise ModelNotFound(f"The model `{name}` does not exist or is not available.", param="model")
    return info


async def plan(request_id: str, principal: Principal, req: MessagesRequest, headers: Mapping[str, str], *,
               budget_s: float, buffered: bool) -> Plan:
    settings = get_settings()
    catalog = await registry.models()
    primary = resolve(catalog, req.model)
    byok_keys = await service.byok_keys_for(principal)
    target, _ = service.route(primary, settings, byok_keys)
    if mode_for(target.provider) == "translate":
        t = to_chat(req)
        t.body["model"] = primary.id
        try:
            chat = ChatRequest.model_validate(t.body)
        except ValidationError as exc:
            raise bad_request(exc) from None
        call = await service.plan(request_id, principal, chat, budget_s=budget_s, buffered=buffered)
        call.surface = "messages"
        return Plan(call=call, native=False, model=primary.id, dropped=t.dropped)

    forward, dropped_betas = native_headers(headers)
    ids = [primary.id] + [m for m in settings.model_fallbacks.get(primary.id, []) if m != primary.id]
    tier = settings.tier(principal.tier)
    candidates: list[service.Candidate] = []
    hold = ZERO
    first: Translation | None = None
    size = None
    for mid in ids:
        m = catalog.get(mid)
        if m is None:
            continue
        target, is_byok = service.route(m, settings, byok_keys)
        if target.provider != ANTHROPIC:
            continue  # a fallback this path cannot send natively
        t = native_body(req, m.upstream_model, max_tokens_limit=m.max_completion_tokens)
        m_size = native.native_size(t.body)
        if first is None:
            first, size = t, m_size
            estimate = m_size.estimate(m.id)
            if estimate > m.context_length:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {m.context_length} tokens, but the messages are "
                    f"about {estimate} tokens.", param="messages")
        elif m_size.estimate(m.id) > m.context_length:
            continue
        limit = int(t.body["max_tokens"])
        candidates.append(service.Candidate(model=m, target=target, byok=is_byok, output_limit=limit, body=t.body))
        hold = max(hold, hold_for(m.price, m_size.bound(m.id, m.context_length), limit, m.markup_for(tier),
                                  images=m_size.images, byok=is_byok, byok_fee=settings.byok_platform_fee))
    assert first is not None and size is not None  # the primary routes to Anthropic
    # The pipeline's view of the request (what records and the relay read): stream and output limit.
    chat = ChatRequest.model_construct(model=primary.id, messages=[], stream=req.stream,
                                       max_tokens=candidates[0].output_limit)
    call = service.Call(request_id=request_id, principal=principal, req=chat, candidates=candidates, size=size,
                        hold=hold, started=time.perf_counter(),
                        deadline=asyncio.get_running_loop().time() + budget_s, buffered=buffered,
                        wire=native.wire(forward), surface="messages")
    return Plan(call=call, native=True, model=primary.id, dropped=first.dropped + dropped_betas)


async def count_tokens(principal: Principal, req: CountTokensRequest, headers: Mapping[str, str]) -> dict[str, Any]:
    """``{"input_tokens": n}``: Anthropic's own count (a free call) for a model Anthropic serves,
    else the gateway's estimate of the translated prompt."""
    settings = get_settings()
    catalog = await registry.models()
    model = resolve(catalog, req.model)
    target, _ = service.route(model, settings, await service.byok_keys_for(principal))
    if target.provider != ANTHROPIC:
        return count_tokens_estimate(req)
    body = native_body(req, model.upstream_model).body
    forward, _ = native_headers(headers)
    client = get_http_client()
    adapter = native.NativeAdapter(forward)

    def request() -> Any:
        return client.build_request("POST", join_url(target.base_url, "messages/count_tokens"),
                                    headers={**adapter.auth_headers(target.api_key),
                                             "content-type": "application/json"},
                                    content=dumps(body).encode())

    data = await post_json(client, request, ANTHROPIC, target.api_key)
    if not isinstance(data, dict) or not isinstance(data.get("input_tokens"), int):
        raise UpstreamError("The upstream provider (anthropic) returned an unexpected count.", provider=ANTHROPIC,
                            status=502, code="upstream_bad_response")
    return {"input_tokens": data["input_tokens"]}
