"""``/v1/responses`` on the chat pipeline: which path a request takes and its plan (candidates, hold).

The served model's provider decides (``native.mode_for``): OpenAI itself (a platform or BYOK OpenAI
key) takes the native path (the Responses body as the client wrote it, ``native.wire``; the hold
measured on that body: ``native.native_size`` and ``max_output_tokens`` clamped or injected);
every other route — any other provider, or an OpenAI model reached through OpenRouter — is
translated (``translate.to_chat`` → ``chat.service.plan``). Either way admission, fallback, the
deadline and the settlement are the chat pipeline's, so a request here costs what the same request
costs on ``/v1/chat/completions``. Fallbacks (``MODEL_FALLBACKS``) of a native request are the ones
OpenAI serves too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from gateway.auth import Principal
from gateway.catalog import registry
from gateway.catalog.registry import ModelInfo
from gateway.chat import service
from gateway.chat.native import NativeBody, plan_native
from gateway.chat.schema import ChatRequest
from gateway.config import get_settings
from gateway.translation import bad_request

from . import native
from .schema import ResponsesRequest
from .translate import to_chat


@dataclass(slots=True)
class Plan:
    call: service.Call
    native: bool
    dropped: list[str] = field(default_factory=list)


async def plan(request_id: str, principal: Principal, req: ResponsesRequest, *, budget_s: float,
               buffered: bool) -> Plan:
    catalog = await registry.models()
    primary = catalog.get(req.model)
    if primary is not None:
        byok_keys = await service.byok_keys_for(principal)
        target, _ = service.route(primary, get_settings(), byok_keys)
        if native.mode_for(target.provider) == "native":
            def build(m: ModelInfo) -> NativeBody:
                return native.native_body(req, m.upstream_model, max_output_limit=m.max_completion_tokens)

            call, first = await plan_native(request_id, principal, primary, provider=native.OPENAI, catalog=catalog,
                                            byok_keys=byok_keys, build=build, wire=native.wire(),
                                            surface="responses", stream=req.stream, budget_s=budget_s,
                                            buffered=buffered, param="input")
            return Plan(call=call, native=True, dropped=first.dropped)
    t = to_chat(req)
    try:
        chat = ChatRequest.model_validate(t.body)
    except ValidationError as exc:
        raise bad_request(exc) from None
    call = await service.plan(request_id, principal, chat, budget_s=budget_s, buffered=buffered)
    call.surface = "responses"
    return Plan(call=call, native=False, dropped=t.dropped)
