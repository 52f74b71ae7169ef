"""Embeddings per provider, as pure functions (the route sends the body and passes the answer in).

OpenAI, OpenRouter and OpenAI-compatible servers speak OpenAI's format: :func:`openai_body` and
:func:`from_openai`. Gemini: ``POST {base}/models/{model}:batchEmbedContents`` with
:func:`gemini_body` / :func:`from_gemini` (at most :data:`GEMINI_MAX_BATCH` texts per call: the
route splits bigger requests with :func:`gemini_batches`; token ids are refused, Gemini embeds text
only).

Usage to bill (prompt tokens only; embeddings have no completion): the provider's
``usage.prompt_tokens`` when it reports it (OpenAI, OpenRouter, most compat servers; OpenRouter's
``usage.cost`` too: the charge is never below it), else the estimate of
``schema.estimate_input_tokens`` marked ``reported=False``; Gemini's
``usageMetadata.promptTokenCount`` when present, else the upper bound of ``schema.hold_tokens``
marked ``reported=False`` (:func:`from_gemini`).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

from gateway.adapters.contract import Usage
from gateway.adapters.shapes import as_cost, as_int
from gateway.adapters.upstream_errors import bad_response
from gateway.errors import BadRequest

from .schema import EmbeddingsRequest, decode, embeddings_response, encode, estimate_input_tokens, hold_tokens

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
def gemini_path(upstream_model: str) -> str:
    """``models/{model}:batchEmbedContents`` (relative to the Gemini base URL)."""
    model = upstream_model.removeprefix("models/")
    return f"models/{quote(model, safe='-._~')}:batchEmbedContents"


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
                per_item_cap: int | None = None) -> tuple[dict[str, Any], Usage]:
    """The ``batchEmbedContents`` answers of every batch, in order, as one OpenAI response. Without
    Google's count (the Gemini API reports none) the inputs are billed at their upper bound
    (``schema.hold_tokens``: UTF-8 bytes, each item at most ``per_item_cap``, the model's input
    limit), marked estimated: Gemini's tokenizer makes a token of every digit and most punctuation,
    so a 4-characters-per-token estimate could bill a quarter of what Google charges us."""
    vectors: list[list[float] | str] = []
    reported = 0
    all_reported = True
    for answer in answers:
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(embeddings, list):
            raise bad_response("gemini", "returned no embeddings")
        for embedding in embeddings:
            values = embedding.get("values") if isinstance(embedding, dict) else None
            if not isinstance(values, list):
                raise bad_response("gemini", "returned an embedding without values")
            vectors.append(encode(values, req.encoding_format))
        meta = answer.get("usageMetadata") if isinstance(answer, dict) else None
        count = meta.get("promptTokenCount") if isinstance(meta, dict) else None
        if isinstance(count, int):
            reported += count
        else:
            all_reported = False
    if len(vectors) != len(req.items()):
        raise bad_response("gemini", f"returned {len(vectors)} embeddings for {len(req.items())} inputs")
    if all_reported and answers:
        usage = Usage(prompt_tokens=reported, completion_tokens=0)
    else:
        usage = Usage(prompt_tokens=hold_tokens(req, per_item_cap=per_item_cap or sys.maxsize), completion_tokens=0,
                      reported=False)
    return embeddings_response(vectors, model=model, prompt_tokens=usage.prompt_tokens), usage
