"""``POST /v1/embeddings`` on the chat pipeline's money path: :func:`plan` (resolve the embedding
model, check every input, compute the hold) → ``chat.service.admit`` (key, plan, rate limit, quota,
in-flight limit, reserve: the same statement as chat) → :func:`embed` (one provider call, or one per
batch of 100 texts for Gemini) → ``chat.service.respond`` (settled before the response in Lambda).

Money: the hold is an upper bound of the input tokens a provider can bill
(``schema.hold_tokens``: UTF-8 bytes per text, token ids exactly, each item at most the model's
input limit) at the model's input price, x (1 + markup), rounded once, up (``money.holds.hold_for``
with no output). The charge is the provider's reported ``prompt_tokens`` at the same price
(``chat.service.usage_record``). Gemini, per batch of 100 texts: Google's ``promptTokenCount`` when
its answer carries one; else the total of Google's free ``models/{model}:countTokens`` for the same
texts and model, asked concurrently with the batch (:func:`_count_tokens`: no added latency), used
only when that batch was answered and the count is plausible (at least a token per text, at most
the batch's bound); else the batch's upper bound (what was held for it) marked estimated (and
``x-usage-estimated: true`` on the answer): Gemini's tokenizer makes a token of every digit, so an
estimate could bill a quarter of what Google charges. A count that fails, is refused, is nonsense or
is not there ``EMBEDDINGS_COUNT_GRACE_S`` (0.2 s) after the last batch answered is dropped (the
bound is billed): it never fails the request nor holds it past the deadline.
A call that reached the provider is billed even when it fails afterwards (timeout, cancellation,
an answer we cannot use): at the bound; a partial Gemini failure bills the answered batches only.

Embeddings are never retried on another model (a vector space is the model's own), so a call has
exactly one candidate.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..adapters.contract import Target, Usage
from ..adapters.http_client import UpstreamClient, UpstreamRequest, get_http_client
from ..adapters.registry import OPENROUTER, get_adapter
from ..adapters.shapes import join_url
from ..adapters.tokens import PromptSize
from ..adapters.transport import post_json
from ..adapters.upstream_errors import billed, error_from_event
from ..auth import Principal
from ..catalog import registry
from ..catalog.registry import EMBEDDINGS, ModelInfo
from ..chat import service as chat
from ..chat.schema import ChatRequest
from ..config import get_settings
from ..errors import ContextLengthExceeded, GatewayError, ModelNotFound, UpstreamError
from ..money import ledger
from ..money.holds import hold_for
from . import translate
from .schema import EmbeddingsRequest, estimate_input_tokens, hold_tokens, text_tokens

GEMINI = "gemini"
ESTIMATED_HEADER = "x-usage-estimated"


def _check_inputs(req: EmbeddingsRequest, model: ModelInfo) -> None:
    """Every item within the model's input limit (a provider refuses a longer one, or truncates
    it silently): a 400 before anything is held."""
    limit = model.context_length
    items = req.items()
    for index, item in enumerate(items):
        tokens = text_tokens(item) if isinstance(item, str) else len(item)
        if tokens > limit:
            where = "The input" if len(items) == 1 else f"Input {index}"
            raise ContextLengthExceeded(
                f"{where} is about {tokens} tokens; the model `{model.id}` takes at most {limit} tokens per "
                "input.", param="input")


def upstream_body(req: EmbeddingsRequest, target: Target, model: ModelInfo) -> dict[str, Any]:
    """What is sent: OpenAI's embeddings body, or for Gemini the ``batchEmbedContents`` bodies of
    every batch (``{"batches": [...]}``; token-id inputs refused there with a 400). OpenRouter is
    told ``provider.max_price`` = our catalogue price, as for chat: it then never routes to an
    endpoint that costs more than the hold counts (the hold stays an upper bound)."""
    if target.provider == GEMINI:
        return {"batches": [translate.gemini_body(texts, target.upstream_model, dimensions=req.dimensions)
                            for texts in translate.gemini_batches(req)]}
    body = translate.openai_body(req, target.upstream_model)
    if target.provider == OPENROUTER:
        body["provider"] = chat.openrouter_preferences(None, model.price)
    return body


async def plan(request_id: str, principal: Principal, req: EmbeddingsRequest, *,
               budget_s: float | None = None) -> chat.Call:
    """Resolve the model, check the inputs and compute the hold. No I/O beyond the cached
    catalogue; raises 404 (unknown model), 400 (a chat model, an input over the limit)."""
    settings = get_settings()
    model = (await registry.embedding_models()).get(req.model)
    if model is None:
        refusal = await registry.wrong_surface(req.model, wanted=EMBEDDINGS)
        if refusal is not None:
            raise refusal
        raise ModelNotFound(f"The model `{req.model}` does not exist or is not available.", param="model")
    _check_inputs(req, model)
    target, is_byok = chat.route(model, settings, await chat.byok_keys_for(principal))
    body = upstream_body(req, target, model)
    bound = hold_tokens(req, per_item_cap=model.context_length)
    hold = hold_for(model.price, bound, 0, model.markup_for(settings.tier(principal.tier)), byok=is_byok,
                    byok_fee=settings.byok_platform_fee)
    size = PromptSize(text_estimate=estimate_input_tokens(req, per_item_cap=model.context_length), text_bound=bound)
    budget = settings.request_deadline_s if budget_s is None else budget_s
    # ``req``: what the chat records read of a request (not streamed); the embeddings request
    # itself travels as the candidate's body.
    return chat.Call(request_id=request_id, principal=principal,
                     req=ChatRequest.model_construct(model=req.model, messages=[], stream=False),
                     candidates=[chat.Candidate(model=model, target=target, byok=is_byok, output_limit=0, body=body)],
                     size=size, hold=hold, started=time.perf_counter(),
                     deadline=asyncio.get_running_loop().time() + budget, unreported_prompt_at_bound=False)


def input_usage(call: chat.Call) -> Usage:
    """What a call that reached the provider is charged when its usage never comes (a timeout, a
    cancellation): every input at its bound (UTF-8 bytes, capped per item at the model's limit:
    what was held; a provider bills up to a token per byte), marked estimated."""
    return Usage(prompt_tokens=call.size.text_bound, completion_tokens=0, reported=False)


def _request(client: UpstreamClient, target: Target, path: str, body: dict[str, Any], read_timeout: float
             ) -> UpstreamRequest:
    request = client.build_request(
        "POST", join_url(target.base_url, path), content=json.dumps(body, separators=(",", ":")),
        headers={"content-type": "application/json", **get_adapter(target.provider).auth_headers(target.api_key)})
    request.extensions["timeout"] = {**request.extensions.get("timeout", {}), "read": read_timeout}
    return request


async def _call_provider(call: chat.Call, req: EmbeddingsRequest) -> tuple[dict[str, Any], Usage]:
    """One call (OpenAI format) or one per Gemini batch, concurrently; the client's response and
    the usage to bill. A failure after the provider answered 200 carries the usage it billed."""
    c = call.candidates[0]
    target, client = c.target, get_http_client()
    read_timeout = call.remaining() + chat.READ_TIMEOUT_SLACK_S

    async def post(path: str, body: dict[str, Any]) -> Any:
        return await post_json(client, lambda: _request(client, target, path, body, read_timeout),
                               target.provider, target.api_key)

    if target.provider == GEMINI:
        path = translate.gemini_path(target.upstream_model)
        batches = translate.gemini_batches(req)
        embeds = [asyncio.ensure_future(post(path, b)) for b in c.body["batches"]]
        count_path = translate.gemini_count_path(target.upstream_model)
        counting = [asyncio.ensure_future(_count_tokens(post, count_path, texts)) for texts in batches]
        try:
            answers = await asyncio.gather(*embeds, return_exceptions=True)
            counts = await _counts(counting, answers, call)
        finally:  # nothing is left running once the call is over (a Lambda freezes after its answer)
            await _drop(counting)
        cap = c.model.context_length
        failure = next((a for a in answers if isinstance(a, BaseException)), None)
        if failure is not None:
            answered = [translate.gemini_batch_tokens(texts, a, n, per_item_cap=cap)
                        for texts, a, n in zip(batches, answers, counts, strict=True)
                        if not isinstance(a, BaseException)]
            if answered and isinstance(failure, UpstreamError):  # the batches that were answered are billed
                raise billed(failure, Usage(prompt_tokens=sum(t for t, _ in answered), completion_tokens=0,
                                            reported=all(exact for _, exact in answered)))
            raise failure
        return _translated(lambda: translate.from_gemini(answers, req, model=c.model.id, per_item_cap=cap,
                                                         counts=counts), call, target)
    data = await post("embeddings", c.body)
    if isinstance(data, dict) and data.get("error"):
        raise error_from_event(target.provider, data, api_key=target.api_key)
    return _translated(lambda: translate.from_openai(data, req, model=c.model.id, provider=target.provider),
                       call, target)


async def _count_tokens(post: Callable[[str, dict[str, Any]], Awaitable[Any]], path: str, texts: list[str]
                       ) -> int | None:
    """Google's ``countTokens`` total for one batch's texts, or None on any failure (refused, rate
    limited, unreachable, malformed): a count is only ever a reason to bill less than the bound."""
    try:
        return translate.gemini_total_tokens(await post(path, translate.gemini_count_body(texts)))
    except Exception:
        return None


async def _counts(counting: Sequence[asyncio.Future[int | None]], answers: list[Any], call: chat.Call
                  ) -> list[int | None]:
    """The counts that are in once the batches answered: the stragglers get
    ``EMBEDDINGS_COUNT_GRACE_S`` (never past the deadline), none when every answered batch carries
    Google's own count."""
    pending = [f for f in counting if not f.done()]
    needed = any(not isinstance(a, BaseException) and translate.gemini_reported(a) is None for a in answers)
    if pending and needed:
        grace = get_settings().embeddings_count_grace_s
        await asyncio.wait(pending, timeout=max(0.0, min(grace, call.remaining())))
    return [f.result() if f.done() and not f.cancelled() else None for f in counting]


async def _drop(futures: Sequence[asyncio.Future[int | None]]) -> None:
    """Cancel what is still running and wait for it to end (a count never raises)."""
    for f in futures:
        f.cancel()
    await asyncio.gather(*futures, return_exceptions=True)


def _translated(translate_answer: Any, call: chat.Call, target: Target) -> tuple[dict[str, Any], Usage]:
    """The answer for the client; a 200 we cannot use is billed at the input estimate."""
    try:
        result: tuple[dict[str, Any], Usage] = translate_answer()
        return result
    except UpstreamError as err:
        raise billed(err, input_usage(call)) from None
    except Exception as exc:
        failure = UpstreamError(f"The answer of the upstream provider ({target.provider}) could not be translated.",
                                provider=target.provider, status=502, code="response_build_failed")
        failure.billed_usage = input_usage(call)
        raise failure from exc


async def embed(call: chat.Call, req: EmbeddingsRequest) -> tuple[dict[str, Any], ledger.UsageRecord]:
    """Call the provider within the deadline. Returns the response and its usage record (the
    caller settles it with ``chat.service.respond``); every failure is settled here and raised,
    with the statuses chat uses."""
    c = call.candidates[0]
    if call.remaining() <= 0:
        expired = chat.deadline_error()
        await chat.finish_shielded(call, chat.usage_record(call, "failed", error=expired))
        raise expired
    call.attempts.append(c.model.id)
    chat.sending(call)
    try:
        async with asyncio.timeout_at(call.deadline):
            response, usage = await _call_provider(call, req)
    except TimeoutError:  # the provider got the inputs: it bills them
        expired = chat.deadline_error()
        await chat.finish_shielded(call, chat.usage_record(call, "timeout", candidate=c, usage=input_usage(call),
                                                       error=expired))
        raise expired from None
    except UpstreamError as err:
        if err.billed_usage is not None:  # a 200 the provider billed but we could not use
            await chat.finish_shielded(call, chat.usage_record(call, "failed", candidate=c, usage=err.billed_usage,
                                                           error=err))
        else:
            await chat.finish_shielded(call, chat.usage_record(call, "failed", error=err))
        raise
    except GatewayError as err:  # refused before sending
        await chat.finish_shielded(call, chat.usage_record(call, "failed", candidate=c, error=err))
        raise
    except asyncio.CancelledError:  # the call was on its way: the provider bills it
        await chat.finish_shielded(call, chat.usage_record(call, "cancelled", candidate=c, usage=input_usage(call)))
        raise
    except Exception:  # a bug building the request: nothing was sent
        await chat.finish_shielded(call, chat.usage_record(call, "failed", candidate=c))
        raise
    if not usage.reported:
        call.rate_headers = {**call.rate_headers, ESTIMATED_HEADER: "true"}
    return response, chat.usage_record(call, "ok", candidate=c, usage=usage)


__all__ = ["ESTIMATED_HEADER", "embed", "input_usage", "plan", "upstream_body"]
