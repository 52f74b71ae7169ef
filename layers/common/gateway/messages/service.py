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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.adapters.anthropic import anthropic_names
from gateway.adapters.http_client import get_http_client
from gateway.adapters.shapes import join_url
from gateway.adapters.transport import post_json
from gateway.auth import Principal
from gateway.catalog import registry
from gateway.catalog.registry import ModelInfo
from gateway.chat import service
from gateway.chat.native import NativeBody, plan_native
from gateway.chat.schema import ChatRequest
from gateway.config import get_settings
from gateway.errors import ModelNotFound, UpstreamError
from gateway.translation import dumps, parse

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
        call = await service.plan(request_id, principal, parse(ChatRequest, t.body), budget_s=budget_s,
                                  buffered=buffered)
        call.surface = "messages"
        return Plan(call=call, native=False, model=primary.id, dropped=t.dropped)

    forward, dropped_betas = native_headers(headers)

    def build(m: ModelInfo) -> NativeBody:
        t = native_body(req, m.upstream_model, max_tokens_limit=m.max_completion_tokens)
        size = native.native_size(t.body)
        extra_prompt, extra_output = native.compaction_extra(t.body, size.bound(m.id, m.context_length),
                                                             m.max_completion_tokens)
        return NativeBody(body=t.body, size=size, output_limit=int(t.body["max_tokens"]), dropped=t.dropped,
                          extra_prompt=extra_prompt, extra_output=extra_output)

    call, first = await plan_native(request_id, principal, primary, provider=ANTHROPIC, catalog=catalog,
                                    byok_keys=byok_keys, build=build, wire=native.wire(forward), surface="messages",
                                    stream=req.stream, budget_s=budget_s, buffered=buffered, param="messages")
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
