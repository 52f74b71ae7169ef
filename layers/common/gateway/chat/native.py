"""The plan of a native request: the client's own wire format sent to the provider that serves the
model (the Anthropic Messages passthrough, the OpenAI Responses passthrough), on the chat pipeline.

A native surface builds, per candidate model, the body it sends and that body's own
:class:`~gateway.adapters.tokens.PromptSize` and output limit (:class:`NativeBody`);
:func:`plan_native` turns them into the pipeline's :class:`~gateway.chat.service.Call`: the
primary and its fallbacks (``MODEL_FALLBACKS``) that the same provider serves (a fallback this
path cannot send natively is skipped), the context check on the primary, and the hold — the worst
candidate's upper bound of the prompt at the highest prompt-class price plus its output limit at
the completion price (docs/money.md). Admission, fallback, the deadline, the drain and the
settlement are then the pipeline's, through the surface's :class:`~gateway.chat.service.Wire`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..adapters.contract import Target
from ..adapters.http_client import UpstreamClient, UpstreamRequest
from ..adapters.shapes import join_url
from ..adapters.tokens import PromptSize
from ..auth import Principal
from ..catalog.registry import ModelInfo
from ..config import get_settings
from ..errors import ContextLengthExceeded
from ..money.holds import hold_for
from ..money.pricing import ZERO
from ..translation import dumps
from . import service
from .schema import ChatRequest


def native_request(client: UpstreamClient, target: Target, body: dict[str, Any], path: str,
                   headers: Mapping[str, str], *, stream: bool,
                   buffered_drops: tuple[str, ...] = ("stream",)) -> UpstreamRequest:
    """The provider call of a native body: ``model`` replaced by the target's, ``stream: true``
    when streaming (else ``buffered_drops`` removed), ``POST {base_url}/{path}`` with ``headers``
    (authentication included) as JSON."""
    payload = {**body, "model": target.upstream_model}
    if stream:
        payload["stream"] = True
    else:
        for name in buffered_drops:
            payload.pop(name, None)
    return client.build_request("POST", join_url(target.base_url, path),
                                headers={**headers, "content-type": "application/json"},
                                content=dumps(payload).encode())


@dataclass(slots=True)
class NativeBody:
    """One candidate's request in the provider's own format."""

    body: dict[str, Any]           # as sent (model replaced, output limit clamped or injected)
    size: PromptSize               # its prompt's upper bound (measured on this body)
    output_limit: int              # the output limit it carries (what the hold counts)
    dropped: list[str] = field(default_factory=list)  # what the client sent and it does not carry
    # billed beyond one reading of the prompt and the output limit (server-side compaction's extra
    # sampling step): held at the highest prompt-class and the completion price
    extra_prompt: int = 0
    extra_output: int = 0


async def plan_native(request_id: str, principal: Principal, primary: ModelInfo, *, provider: str,
                      catalog: Mapping[str, ModelInfo], byok_keys: Mapping[str, str],
                      build: Callable[[ModelInfo], NativeBody], wire: service.Wire, surface: str, stream: bool,
                      budget_s: float, buffered: bool, param: str) -> tuple[service.Call, NativeBody]:
    """The :class:`~gateway.chat.service.Call` of a native request whose primary model ``provider``
    serves (the caller checked), and the primary's :class:`NativeBody`. ``build`` raises (400) on
    what the provider must not be sent; ``param`` names the prompt in a context-length refusal."""
    settings = get_settings()
    ids = [primary.id] + [m for m in settings.model_fallbacks.get(primary.id, []) if m != primary.id]
    tier = settings.tier(principal.tier)
    candidates: list[service.Candidate] = []
    hold: Decimal = ZERO
    first: NativeBody | None = None
    for mid in ids:
        m = catalog.get(mid)
        if m is None:
            continue
        target, is_byok = service.route(m, settings, byok_keys)
        if target.provider != provider:
            continue  # a fallback this path cannot send natively
        native = build(m)
        estimate = native.size.estimate(m.id)
        if first is None:
            first = native
            if estimate > m.context_length:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {m.context_length} tokens, but the request is "
                    f"about {estimate} tokens.", param=param)
        elif estimate > m.context_length:
            continue
        candidates.append(service.Candidate(model=m, target=target, byok=is_byok, output_limit=native.output_limit,
                                            body=native.body))
        hold = max(hold, hold_for(m.price, native.size.bound(m.id, m.context_length) + native.extra_prompt,
                                  native.output_limit + native.size.output_extra + native.extra_output,
                                  m.markup_for(tier),
                                  images=native.size.images, byok=is_byok, byok_fee=settings.byok_platform_fee))
    assert first is not None  # the primary routes to ``provider``
    # The pipeline's view of the request (what records and the relay read): stream and output limit.
    chat = ChatRequest.model_construct(model=primary.id, messages=[], stream=stream,
                                       max_tokens=candidates[0].output_limit)
    call = service.Call(request_id=request_id, principal=principal, req=chat, candidates=candidates, size=first.size,
                        hold=hold, started=time.perf_counter(),
                        deadline=asyncio.get_running_loop().time() + budget_s, buffered=buffered, wire=wire,
                        surface=surface)
    return call, first
