"""Active models and their prices, as the query path sees them.

Loaded from ``model_pricing`` (the source of truth for billing) and kept in the warm container
for ``CATALOG_TTL_S`` seconds (default 60), so resolving a model costs no round trip on the hot path. Concurrent
reloads are collapsed into one. An expired copy is checked, not reloaded: it is kept while
``catalog_version`` (migration 0017: bumped in the writer's transaction by every statement that writes
what :data:`SELECT_ACTIVE` reads) still has the number its rows were read with, one small row instead
of every active model fetched and rebuilt inside a request.

Two kinds of model, by ``output_modalities``: chat models (:func:`models`, what the chat pipeline
and the surfaces translated onto it resolve) and embedding models (``{embeddings}``:
:func:`embedding_models`, served by ``POST /v1/embeddings`` only). Each surface sees only its own
kind; :func:`wrong_surface` is the clear refusal for a model of the other kind.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from .. import db
from ..config import Tier, get_settings
from ..errors import BadRequest
from ..loops import loop_lock
from ..money.pricing import ANTHROPIC_CACHE_WRITE_1H_MULTIPLIER, ZERO, LongContextPrice, ModelPrice, parse_price
from ..records import frozen


@frozen
class ModelInfo:
    """A catalogue model as a request uses it: its ids, limits, price and input modalities."""

    id: str
    name: str
    provider: str
    upstream_model: str
    owned_by: str
    context_length: int
    max_completion_tokens: int
    price: ModelPrice
    is_free: bool
    markup: Decimal | None
    input_modalities: tuple[str, ...]
    kind: str = "chat"  # CHAT | EMBEDDINGS (by output_modalities)

    @property
    def is_embedding(self) -> bool:
        return self.kind == EMBEDDINGS

    def allowed_for(self, tier: Tier) -> bool:
        return tier_allows(tier, self.is_free, self.price.prompt, self.price.completion)

    def markup_for(self, tier: Tier) -> Decimal:
        return self.markup if self.markup is not None else tier.markup


def tier_allows(tier: Tier, is_free: bool, prompt_price: Decimal, completion_price: Decimal) -> bool:
    """May ``tier`` use a model with these provider prices? (The one rule; the catalogue's ``tier``
    filter uses it too.)"""
    if tier.models == "all" or is_free:
        return True
    cap = tier.max_price_per_token
    return cap is not None and prompt_price <= cap and completion_price <= cap


CHAT = "chat"
EMBEDDINGS = "embeddings"  # the output modality of an embedding model (OpenRouter's name)


def kind_of(output_modalities: Iterable[str] | None) -> str:
    return EMBEDDINGS if EMBEDDINGS in (output_modalities or ()) else CHAT


# Outputs a provider bills at rates of their own, which a catalogue row's per-token prices do not
# carry (Gemini's image output: $30 per million tokens against $2.50 for text on gemini-2.5-flash-image).
UNPRICED_OUTPUTS = frozenset({"image", "audio"})


def servable(row: Mapping[str, Any]) -> bool:
    """Whether an active catalogue row is served (and listed): not a model that outputs images or
    audio routed to a direct provider, which would bill those outputs beyond our price. Through
    OpenRouter such a model is served: its ``usage.cost`` covers every output (the charge is never
    below it)."""
    return row["provider"] == "openrouter" or not UNPRICED_OUTPUTS & set(row.get("output_modalities") or ())


_models: dict[str, ModelInfo] = {}
_embedding_models: dict[str, ModelInfo] = {}
# when the models were read or checked (monotonic; -inf: never, whatever the clock's origin: a
# microVM's monotonic clock starts near 0, where 0.0 would pass for "a moment ago")
_loaded_at = float("-inf")
_version: int | None = None  # catalog_version when the models were read (None: reload in full)
_lock = loop_lock()

# The active models and, in the same snapshot, the catalogue's version: a copy is never labelled
# with a number newer than its rows. The columns read and filtered on here are the ones whose
# writes bump the version (migration 0017's trigger; test_catalog_registry compares the two lists).
SELECT_ACTIVE = """
SELECT (SELECT version FROM catalog_version) AS catalog_version,
       id, name, provider, upstream_model, owned_by, context_length, max_completion_tokens, prompt_price,
       completion_price, request_price, input_cache_read_price, input_cache_write_price, image_price, is_free,
       markup, input_modalities, output_modalities, pricing_extra, price_tiers
FROM model_pricing WHERE active
"""
SELECT_VERSION = "SELECT version FROM catalog_version"

# Long-context premiums of models billed by a direct provider at one catalogue price (the provider's
# models list carries no prices, and OpenRouter's listing gives the base tier only): a call whose
# prompt is over the threshold is billed entirely at the higher rates — Google: Gemini 2.5 Pro
# $1.25 -> $2.50 input, $10 -> $15 output, cache reads 2x; Gemini 3 / 3.x Pro $2 -> $4, $12 -> $18;
# OpenAI: GPT-5.4 and GPT-5.4 pro (1.05M context) over 272,000 input tokens, 2x input, 1.5x output.
# (provider, upstream-model pattern) -> (threshold, input and cache multiplier, output multiplier).
LONG_CONTEXT_PREMIUMS: tuple[tuple[str, re.Pattern[str], int, Decimal, Decimal], ...] = (
    ("gemini", re.compile(r"^(models/)?gemini-(2\.5|3(\.\d+)?)-pro"), 200_000, Decimal(2), Decimal("1.5")),
    ("openai", re.compile(r"^gpt-5\.4(-pro)?(-\d{4}-\d{2}-\d{2})?$"), 272_000, Decimal(2), Decimal("1.5")),
)


def _long_context(r: dict, price: ModelPrice) -> ModelPrice:  # type: ignore[type-arg]
    """The row's prices with their long-context tier (:class:`LongContextPrice`) when its provider
    bills one (:data:`LONG_CONTEXT_PREMIUMS`); as they are when it does not, or when the row's prices
    came with tiers (the catalogue then stores the highest already)."""
    if r.get("price_tiers"):
        return price
    for provider, pattern, threshold, prompt_x, completion_x in LONG_CONTEXT_PREMIUMS:
        if r["provider"] == provider and pattern.match(r["upstream_model"] or ""):
            return LongContextPrice.tiered(price, threshold, prompt_x, completion_x)
    return price


def _extra_price(extra: Any, name: str) -> Decimal | None:
    """A per-unit price of the catalogue's ``pricing_extra`` (e.g. ``audio``), None when absent or
    not a price (never fails the catalogue load). A negative one (OpenRouter's ``"-1"`` means
    "varies") is no price either: billed, it would credit the caller for every such token."""
    try:
        price = parse_price(extra.get(name)) if isinstance(extra, dict) else None
    except (TypeError, ValueError, ArithmeticError):
        return None
    return price if price is not None and price >= 0 else None


def _row_to_model(r: dict) -> ModelInfo:  # type: ignore[type-arg]
    price = ModelPrice(prompt=r["prompt_price"], completion=r["completion_price"], request=r["request_price"],
                       cache_read=r["input_cache_read_price"], cache_write=r["input_cache_write_price"],
                       cache_write_1h=r["prompt_price"] * ANTHROPIC_CACHE_WRITE_1H_MULTIPLIER
                       if r["provider"] == "anthropic" else None,
                       image=r["image_price"] or ZERO, audio=_extra_price(r.get("pricing_extra"), "audio"))
    price = _long_context(r, price)
    return ModelInfo(
        id=r["id"], name=r["name"], provider=r["provider"], upstream_model=r["upstream_model"],
        owned_by=r["owned_by"], context_length=r["context_length"], max_completion_tokens=r["max_completion_tokens"],
        price=price,
        is_free=r["is_free"], markup=r["markup"], input_modalities=tuple(r["input_modalities"] or ("text",)),
        kind=kind_of(r.get("output_modalities")))


async def _reload() -> None:
    global _models, _embedding_models, _loaded_at, _version
    rows = await db.fetchall(SELECT_ACTIVE)
    loaded = [_row_to_model(r) for r in rows if servable(r)]
    _models = {m.id: m for m in loaded if not m.is_embedding}
    _embedding_models = {m.id: m for m in loaded if m.is_embedding}
    _version = rows[0]["catalog_version"] if rows else None
    _loaded_at = time.monotonic()


async def _unchanged() -> bool:
    """Whether the catalogue's version is still the one the models were read with."""
    row = await db.fetchone(SELECT_VERSION)
    return row is not None and row["version"] == _version


async def _fresh() -> None:
    global _loaded_at
    ttl = get_settings().catalog_ttl_s
    if time.monotonic() - _loaded_at < ttl and (_models or _embedding_models):
        return
    async with _lock.get():
        if time.monotonic() - _loaded_at < ttl and (_models or _embedding_models):
            return  # another caller loaded or checked it while we waited
        if _version is not None and (_models or _embedding_models) and await _unchanged():
            _loaded_at = time.monotonic()
        else:
            await _reload()


async def models() -> dict[str, ModelInfo]:
    """The active chat models (embedding models are not among them)."""
    await _fresh()
    return _models


async def embedding_models() -> dict[str, ModelInfo]:
    """The active embedding models."""
    await _fresh()
    return _embedding_models


async def wrong_surface(model_id: str, *, wanted: str) -> BadRequest | None:
    """The refusal for a request naming a model of the other kind (a chat model sent to
    ``/v1/embeddings``, an embedding model sent to a chat surface), or None."""
    if wanted == EMBEDDINGS:
        if model_id in await models():
            return BadRequest(f"The model `{model_id}` is a chat model and does not produce embeddings; use an "
                              "embedding model (GET /v1/models?modality=embeddings).",
                              code="model_not_embedding", param="model")
        return None
    if model_id in await embedding_models():
        return BadRequest(f"The model `{model_id}` is an embedding model: use POST /v1/embeddings.",
                          code="model_not_chat", param="model")
    return None


async def get_model(model_id: str) -> ModelInfo | None:
    return (await models()).get(model_id)


def invalidate() -> None:
    """Forget the copy: the next use reads every active model again."""
    global _loaded_at, _version
    _loaded_at, _version = float("-inf"), None
