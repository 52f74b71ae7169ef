"""Embeddings per provider, as pure functions (the route sends the body and passes the answer in).

OpenAI, OpenRouter and OpenAI-compatible servers speak OpenAI's format: :func:`openai_body` and
:func:`from_openai`. Gemini: ``POST {base}/models/{model}:batchEmbedContents`` with
:func:`gemini_body` / :func:`from_gemini` (at most :data:`GEMINI_MAX_BATCH` texts per call: the
route splits bigger requests with :func:`gemini_batches`; token ids are refused, Gemini embeds text
only).

Usage to bill (prompt tokens only; embeddings have no completion): the provider's
``usage.prompt_tokens`` when it reports it (OpenAI, OpenRouter, most compat servers; OpenRouter's
``usage.cost`` too: the charge is never below it), else the estimate of
``schema.estimate_input_tokens`` marked ``reported=False``. Gemini, per batch
(:func:`gemini_batch_tokens`): the answer's ``usageMetadata.promptTokenCount`` when present, else
the exact count of Google's free ``models/{model}:countTokens`` for the same texts and model
(:func:`gemini_count_body` / :func:`gemini_total_tokens`, asked concurrently by the route) when it
is plausible (at least a token per text, at most the batch's upper bound), else the upper bound of
``schema.hold_tokens`` marked ``reported=False``.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

from gateway.adapters.contract import Usage
from gateway.adapters.shapes import as_cost, as_int
from gateway.adapters.upstream_errors import bad_response
from gateway.errors import BadRequest

from .schema import EmbeddingsRequest, decode, embeddings_response, encode, estimate_input_tokens

GEMINI_MAX_BATCH = 100


# ------------------------------------------------------------------------------- OpenAI format
def openai_body(req: EmbeddingsRequest, upstream_model: str) -> dict[str, Any]:
    """Upstream body; asks for the client's ``encoding_format`` so base64 passes through as is."""
    return req.upstream_body(upstream_model)


def from_openai(data: Any, req: EmbeddingsRequest, *, model: str, provider: str = "openai"
                ) -> tuple[dict[str, Any], Usage]:
    """The upstream answer for the client (``model`` = our public id, one embedding per input, in
    the client's encoding) and the usage to bill."""
    items = data.get("data") if isinstance(data, dict) else None
    expected = len(req.items())
    if not isinstance(items, list) or len(items) != expected:
        raise bad_response(provider, f"returned {len(items) if isinstance(items, list) else 'no'} embeddings for "
                                     f"{expected} inputs")
    ordered: list[Any] = [None] * expected
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < expected or ordered[index] is not None:
            raise bad_response(provider, "returned embeddings with bad indexes")
        vector = item.get("embedding")
        if not isinstance(vector, list | str):
            raise bad_response(provider, "returned an embedding that is not a vector")
        ordered[index] = vector if _same_encoding(vector, req.encoding_format) else encode(
            decode(vector), req.encoding_format)
    raw_usage = data.get("usage") if isinstance(data, dict) else None
    if isinstance(raw_usage, dict) and raw_usage.get("prompt_tokens") is not None:
        # ``cost``: what OpenRouter says it billed (never charged below it, as for chat)
        usage = Usage(prompt_tokens=as_int(raw_usage["prompt_tokens"]), completion_tokens=0,
                      cost=as_cost(raw_usage.get("cost")))
    else:
        usage = Usage(prompt_tokens=estimate_input_tokens(req), completion_tokens=0, reported=False)
    return embeddings_response(ordered, model=model, prompt_tokens=usage.prompt_tokens), usage


def _same_encoding(vector: list[Any] | str, encoding_format: str) -> bool:
    return isinstance(vector, str) == (encoding_format == "base64")


# -------------------------------------------------------------------------------------- Gemini
def gemini_path(upstream_model: str, method: str = "batchEmbedContents") -> str:
    """``models/{model}:batchEmbedContents`` (or ``:countTokens``), relative to the Gemini base URL."""
    model = upstream_model.removeprefix("models/")
    return f"models/{quote(model, safe='-._~')}:{method}"


def gemini_count_path(upstream_model: str) -> str:
    """``models/{model}:countTokens``: Google's tokenizer of the same model, free of charge."""
    return gemini_path(upstream_model, "countTokens")


def gemini_count_body(texts: list[str]) -> dict[str, Any]:
    """A ``countTokens`` body counting one batch's texts: one ``Content`` per text (Google's REST
    shape ``{"contents": [{"parts": [{"text": ...}]}]}``); the answer's ``totalTokens`` is their sum."""
    return {"contents": [{"parts": [{"text": text}]} for text in texts]}


def gemini_total_tokens(data: Any) -> int | None:
    """``totalTokens`` of a ``countTokens`` answer, or None when it is missing or not an integer."""
    total = data.get("totalTokens") if isinstance(data, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def gemini_reported(answer: Any) -> int | None:
    """``usageMetadata.promptTokenCount`` of one ``batchEmbedContents`` answer (Google's own count of
    the batch), or None when it is absent or not a non-negative integer."""
    meta = answer.get("usageMetadata") if isinstance(answer, dict) else None
    count = meta.get("promptTokenCount") if isinstance(meta, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def gemini_batch_tokens(texts: list[str], answer: Any, count: int | None, *, per_item_cap: int
                        ) -> tuple[int, bool]:
    """The tokens to bill for one answered batch and whether they are exact: Google's
    ``promptTokenCount`` in the answer; else ``countTokens``' total when it is plausible (every text
    is at least a token; no more than the batch's upper bound, which is what we held for it: a
    count above it is nonsense or a truncated input, and is never billed above the hold); else the
    upper bound (``schema.hold_tokens``: UTF-8 bytes, each at most ``per_item_cap``), not exact."""
    reported = gemini_reported(answer)
    if reported is not None:
        return reported, True
    bound = sum(min(max(len(t.encode("utf-8")), 1), per_item_cap) for t in texts)
    if count is not None and len(texts) <= count <= bound:
        return count, True
    return bound, False


def gemini_batches(req: EmbeddingsRequest) -> list[list[str]]:
    """The texts in groups of at most :data:`GEMINI_MAX_BATCH` (one upstream call each)."""
    if req.token_ids:
        raise BadRequest("Token-id inputs are not supported by this model; send text.", param="input")
    texts = [str(t) for t in req.items()]
    return [texts[i:i + GEMINI_MAX_BATCH] for i in range(0, len(texts), GEMINI_MAX_BATCH)]


def gemini_body(texts: list[str], upstream_model: str, *, dimensions: int | None = None) -> dict[str, Any]:
    """A ``batchEmbedContents`` body for one batch of texts."""
    name = "models/" + upstream_model.removeprefix("models/")
    requests = []
    for text in texts:
        request: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            request["outputDimensionality"] = dimensions
        requests.append(request)
    return {"requests": requests}


def from_gemini(answers: list[Any], req: EmbeddingsRequest, *, model: str,
                per_item_cap: int | None = None, counts: list[int | None] | None = None
                ) -> tuple[dict[str, Any], Usage]:
    """The ``batchEmbedContents`` answers of every batch, in order, as one OpenAI response, and the
    usage to bill: per batch, Google's ``promptTokenCount``, else the ``countTokens`` total of the
    same batch (``counts[i]``, None when it failed, timed out or was not asked) when plausible, else
    the batch's upper bound (``schema.hold_tokens``: UTF-8 bytes, each item at most ``per_item_cap``,
    the model's input limit). Any batch at its bound marks the usage ``reported=False`` (estimated):
    Gemini's tokenizer makes a token of every digit and most punctuation, so a 4-characters-per-token
    estimate could bill a quarter of what Google charges us."""
    batches = gemini_batches(req)
    if len(answers) != len(batches):
        raise bad_response("gemini", f"answered {len(answers)} of {len(batches)} batches")
    cap = per_item_cap or sys.maxsize
    vectors: list[list[float] | str] = []
    tokens = 0
    exact = True
    for i, (texts, answer) in enumerate(zip(batches, answers, strict=True)):
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(embeddings, list):
            raise bad_response("gemini", "returned no embeddings")
        if len(embeddings) != len(texts):
            raise bad_response("gemini", f"returned {len(embeddings)} embeddings for {len(texts)} inputs")
        for embedding in embeddings:
            values = embedding.get("values") if isinstance(embedding, dict) else None
            if not isinstance(values, list):
                raise bad_response("gemini", "returned an embedding without values")
            vectors.append(encode(values, req.encoding_format))
        count = counts[i] if counts is not None and i < len(counts) else None
        batch_tokens, batch_exact = gemini_batch_tokens(texts, answer, count, per_item_cap=cap)
        tokens += batch_tokens
        exact = exact and batch_exact
    usage = Usage(prompt_tokens=tokens, completion_tokens=0, reported=exact)
    return embeddings_response(vectors, model=model, prompt_tokens=usage.prompt_tokens), usage
