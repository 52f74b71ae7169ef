"""Provider model lists -> catalogue entries. Pure parsing, no I/O (discovery does the fetching).

OpenRouter's ``GET /api/v1/models`` is the priced, broad catalogue. Each entry's ``pricing`` holds
USD-per-unit prices as decimal strings (``"0.0000025"``); they are parsed to ``Decimal`` exactly
(the JSON body must be decoded with ``parse_float=Decimal`` so a numeric ``discount`` stays exact
too). What we store as the billed price of a model is the price we will actually be charged:

* ``discount`` (a fraction; the listed price is multiplied by ``1 - discount``) is applied to every
  price component. A negative discount (a surcharge) is honoured as well; a discount above 1 is
  ignored (we keep charging the listed price).
* Context-length price overrides (``pricing.overrides`` or ``pricing_tiers``: a list of
  ``{"min_prompt_tokens": N, "prompt": "...", "completion": "...", ...}``) are kept as tiers, and
  the billed price of each component is the HIGHEST one any reachable tier (``N`` below the
  context length) asks for. The query path bills one price per model, so this is the price that
  never under-charges a long prompt.
* ``"-1"`` (OpenRouter's dynamic price, e.g. ``openrouter/auto``), a negative, non-finite or
  missing prompt/completion price, an unknown non-numeric pricing field or a malformed tier: the
  model is skipped (fail closed) -- we cannot bill what we cannot price.

The direct providers' lists (OpenAI ``/v1/models``, Anthropic ``/v1/models``, Gemini
``models.list``) carry no prices; they tell which catalogue models we can route to that provider
with our own key, and under which upstream name. Their wire formats are each adapter's
(``list_models``), reached through ``gateway.adapters.registry``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ..money.pricing import EXACT, ONE, ZERO, exact

# pricing key -> model_pricing column. Anything else numeric goes to ``pricing_extra``.
PRICE_COLUMNS: dict[str, str] = {
    "prompt": "prompt_price",
    "completion": "completion_price",
    "request": "request_price",
    "input_cache_read": "input_cache_read_price",
    "input_cache_write": "input_cache_write_price",
    "image": "image_price",
    "web_search": "web_search_price",
    "internal_reasoning": "internal_reasoning_price",
}
PRICE_KEYS_ORDER = tuple(PRICE_COLUMNS)
_STRUCTURAL_PRICING_KEYS = frozenset({"discount", "overrides"})
_TIER_THRESHOLD_KEYS = ("min_prompt_tokens", "min_context_tokens")
MAX_TIERS = 32
MAX_DESCRIPTION = 4000

_MODEL_ID_RE = re.compile(r"^~?[A-Za-z0-9][A-Za-z0-9._\-]*/[A-Za-z0-9][A-Za-z0-9._\-:+]*$")

class SkipModel(ValueError):
    """This entry cannot be imported (the reason is the message)."""


@dataclass(slots=True)
class DiscoveredModel:
    """One priced model as a source describes it, with prices ready to bill."""

    id: str
    name: str
    owned_by: str
    context_length: int
    max_completion_tokens: int
    prices: dict[str, Decimal]                    # billed per-unit prices, keys of PRICE_COLUMNS
    extra_prices: dict[str, Decimal] = field(default_factory=dict)
    tiers: list[dict[str, Any]] | None = None     # effective tiers: {"min_prompt_tokens": n, key: Decimal}
    discount: Decimal | None = None
    list_pricing: dict[str, Any] | None = None    # the pricing object as received (JSON-safe)
    input_modalities: list[str] = field(default_factory=lambda: ["text"])
    output_modalities: list[str] = field(default_factory=lambda: ["text"])
    architecture: dict[str, Any] | None = None
    description: str | None = None
    canonical_slug: str | None = None
    created: int | None = None
    supported_parameters: list[str] | None = None

    @property
    def is_free(self) -> bool:
        return all(v == 0 for v in self.prices.values()) and all(v == 0 for v in self.extra_prices.values())


# ----------------------------------------------------------------------------- numbers


def parse_amount(value: Any, what: str) -> Decimal:
    """A price or fraction from a JSON value, exactly. Floats are refused (decode JSON with
    ``parse_float=Decimal``); so are booleans, blanks and non-finite values."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise SkipModel(f"{what}: not an exact number ({value!r})")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str) and value.strip():
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise SkipModel(f"{what}: not a number ({value!r})") from None
    else:
        raise SkipModel(f"{what}: not a number ({value!r})")
    if not d.is_finite():
        raise SkipModel(f"{what}: not finite ({value!r})")
    return d


def format_amount(value: Decimal) -> str:
    """Plain decimal notation, no exponent, no trailing zeros: Decimal("2.50E-6") -> "0.0000025"."""
    if value == 0:
        return "0"
    return format(value.normalize(EXACT), "f")


def _json_safe(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_amount(value) if value.is_finite() else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value() and value > 0:
        return int(value)
    return None


# ----------------------------------------------------------------------------- OpenRouter


def _price_map(pricing: dict[str, Any], what: str) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    known: dict[str, Decimal] = {}
    extra: dict[str, Decimal] = {}
    for key, raw in pricing.items():
        if key in _STRUCTURAL_PRICING_KEYS or key in _TIER_THRESHOLD_KEYS:
            continue
        if isinstance(raw, dict | list):
            raise SkipModel(f"{what}: unsupported pricing field {key!r}")
        if raw is None:
            continue
        amount = parse_amount(raw, f"{what}.{key}")
        if amount < 0:
            raise SkipModel(f"{what}.{key} is negative ({raw}): dynamic or unknown price")
        (known if key in PRICE_COLUMNS else extra)[key] = amount
    return known, extra


def _tiers_of(raw: dict[str, Any], pricing: dict[str, Any]) -> list[dict[str, Any]] | None:
    tiers = pricing.get("overrides")
    if tiers is None:
        tiers = raw.get("pricing_tiers")
    if tiers is None:
        return None
    if not isinstance(tiers, list) or len(tiers) > MAX_TIERS:
        raise SkipModel("pricing tiers: expected a short list")
    out = []
    for i, tier in enumerate(tiers):
        if not isinstance(tier, dict):
            raise SkipModel(f"pricing tier {i}: not an object")
        threshold = next((tier[k] for k in _TIER_THRESHOLD_KEYS if k in tier), None)
        if isinstance(threshold, bool) or not isinstance(threshold, int | Decimal):
            raise SkipModel(f"pricing tier {i}: no min_prompt_tokens")
        if threshold < 0 or threshold != int(threshold):
            raise SkipModel(f"pricing tier {i}: bad min_prompt_tokens {threshold}")
        known, extra = _price_map(tier, f"pricing tier {i}")
        out.append({"min_prompt_tokens": int(threshold), **known, **extra})
    return sorted(out, key=lambda t: t["min_prompt_tokens"])


def _modalities(arch: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    def clean(v: Any) -> list[str]:
        return [str(x) for x in v if isinstance(x, str) and x] if isinstance(v, list) else []

    arch = arch or {}
    inputs, outputs = clean(arch.get("input_modalities")), clean(arch.get("output_modalities"))
    modality = arch.get("modality")
    if (not inputs or not outputs) and isinstance(modality, str) and "->" in modality:
        left, _, right = modality.partition("->")
        inputs = inputs or [m for m in left.split("+") if m]
        outputs = outputs or [m for m in right.split("+") if m]
    return inputs or ["text"], outputs or ["text"]


# The output modality of an embedding model in OpenRouter's lists (GET /embeddings/models).
EMBEDDINGS_MODALITY = "embeddings"


def parse_openrouter_model(raw: Any) -> DiscoveredModel:
    """One entry of OpenRouter's ``data`` array. Raises ``SkipModel`` when it cannot be billed."""
    if not isinstance(raw, dict):
        raise SkipModel("entry is not an object")
    model_id = raw.get("id")
    if not isinstance(model_id, str) or len(model_id) > 200 or not _MODEL_ID_RE.match(model_id):
        raise SkipModel(f"bad model id {model_id!r}")
    pricing = raw.get("pricing")
    if not isinstance(pricing, dict):
        raise SkipModel("no pricing")
    listed, listed_extra = _price_map(pricing, "pricing")
    if "prompt" not in listed or "completion" not in listed:
        raise SkipModel("pricing has no prompt/completion price")
    listed.setdefault("request", ZERO)
    tiers = _tiers_of(raw, pricing)

    discount: Decimal | None = None
    if pricing.get("discount") is not None:
        d = parse_amount(pricing["discount"], "pricing.discount")
        discount = d if d <= 1 else None  # > 1 would be a negative price: keep the listed one
    factor = ONE - (discount or ZERO)

    top_raw = raw.get("top_provider")
    top: dict[str, Any] = top_raw if isinstance(top_raw, dict) else {}
    context_length = _positive_int(raw.get("context_length")) or _positive_int(top.get("context_length"))
    if context_length is None:
        raise SkipModel("no context_length")
    max_out = _positive_int(top.get("max_completion_tokens")) or _positive_int(raw.get("max_completion_tokens"))
    # No separate output limit means "up to the context": the hold must cover that worst case.
    max_completion_tokens = min(max_out or context_length, context_length)

    with exact():
        base = {k: v * factor for k, v in listed.items()}
        extra = {k: v * factor for k, v in listed_extra.items()}
        effective_tiers = None
        if tiers is not None:
            effective_tiers = [{k: (v * factor if k != "min_prompt_tokens" else v) for k, v in t.items()}
                               for t in tiers]
    billed = dict(base)
    billed_extra = dict(extra)
    for tier in effective_tiers or ():
        if tier["min_prompt_tokens"] >= context_length:
            continue  # unreachable: no prompt can be that long
        for key, value in tier.items():
            if key == "min_prompt_tokens":
                continue
            target = billed if key in PRICE_COLUMNS else billed_extra
            if value > target.get(key, ZERO):
                target[key] = value

    arch = raw.get("architecture") if isinstance(raw.get("architecture"), dict) else None
    inputs, outputs = _modalities(arch)
    if EMBEDDINGS_MODALITY in outputs:
        max_completion_tokens = 0  # an embedding model produces no tokens (billed per input token)
    architecture = None
    if arch is not None:
        architecture = {k: arch.get(k) for k in ("modality", "tokenizer", "instruct_type") if k in arch}
        architecture.update(input_modalities=inputs, output_modalities=outputs)
    params = raw.get("supported_parameters")
    raw_description, raw_name = raw.get("description"), raw.get("name")
    description = raw_description if isinstance(raw_description, str) else None
    name = raw_name if isinstance(raw_name, str) and raw_name else model_id
    slug = raw.get("canonical_slug") if isinstance(raw.get("canonical_slug"), str) else None
    created = _positive_int(raw.get("created"))
    return DiscoveredModel(
        id=model_id, name=name[:300], owned_by=model_id.lstrip("~").split("/", 1)[0],
        context_length=context_length, max_completion_tokens=max_completion_tokens,
        prices=billed, extra_prices=billed_extra, tiers=effective_tiers, discount=discount,
        list_pricing=_json_safe(pricing), input_modalities=inputs, output_modalities=outputs,
        architecture=architecture, description=description[:MAX_DESCRIPTION] if description else None,
        canonical_slug=slug, created=created,
        supported_parameters=[p for p in params if isinstance(p, str)] if isinstance(params, list) else None)


def parse_openrouter_payload(payload: Any) -> tuple[list[DiscoveredModel], list[tuple[str, str]], int]:
    """OpenRouter's whole ``/models`` body -> (models, [(id, reason) skipped], entries listed).

    Skipped entries that had an id are still *listed* (they exist upstream; discovery must not
    deactivate them, only not reprice them)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("OpenRouter /models: expected {\"data\": [...]}")
    models: list[DiscoveredModel] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in payload["data"]:
        rid = raw.get("id") if isinstance(raw, dict) else None
        try:
            model = parse_openrouter_model(raw)
        except SkipModel as exc:
            skipped.append((str(rid) if rid is not None else "?", str(exc)))
            continue
        if model.id in seen:
            skipped.append((model.id, "duplicate id"))
            continue
        seen.add(model.id)
        models.append(model)
    return models, skipped, len(payload["data"])
