"""Model lists served by the fake providers (``infra.local.fake_providers``).

Every list is built in each provider's own wire shape, deterministically (no clock, no
randomness), so catalogue-discovery tests can assert exact values:

* OpenRouter ``GET /api/v1/models`` -> :func:`openrouter_models` (300 entries by default: the
  real popular models with their public list prices as decimal strings in USD per token, a
  few ``:free`` ones, ``openrouter/auto`` with its real ``"-1"`` prices, then deterministic
  synthetic ones). As on the real API, ``pricing.input_cache_read`` / ``input_cache_write``
  are present only for models that support prompt caching, and some synthetic entries have
  ``top_provider.max_completion_tokens = null``.
* OpenRouter ``GET /api/v1/embeddings/models`` -> :func:`openrouter_embedding_models` (its
  embedding models, priced per input token).
* OpenAI ``GET /v1/models`` -> :func:`openai_models` (includes non-chat models, as the real one).
* Anthropic ``GET /v1/models`` -> :func:`anthropic_models` (newest first).
* Gemini ``GET /v1beta/models`` -> :func:`gemini_models` (includes embedding / predict-only models).
* Generic OpenAI-compatible server (Ollama style) -> :func:`compat_models`.

The prices are a snapshot of public list prices; they are test data, not a price source.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from gateway.adapters import registry

PROVIDERS = registry.PROVIDERS  # every provider the gateway knows (its registry)

OPENROUTER_DEFAULT_COUNT = 300


def per_token(per_million: str | float | int | Decimal) -> str:
    """USD per million tokens -> OpenRouter's decimal string in USD per token ("0.15" -> "0.00000015")."""
    value = Decimal(str(per_million)) / Decimal(1_000_000)
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


# --------------------------------------------------------------------------------------------
# OpenRouter
# --------------------------------------------------------------------------------------------

_PARAMS_FULL = [
    "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "presence_penalty",
    "response_format", "seed", "stop", "structured_outputs", "temperature", "tool_choice",
    "tools", "top_logprobs", "top_p",
]
_PARAMS_REASONING = [
    "include_reasoning", "max_tokens", "reasoning", "response_format", "seed",
    "structured_outputs", "tool_choice", "tools",
]
_PARAMS_CLAUDE = [
    "include_reasoning", "max_tokens", "reasoning", "stop", "temperature", "tool_choice",
    "tools", "top_k", "top_p",
]
_PARAMS_OPEN = [
    "frequency_penalty", "max_tokens", "min_p", "presence_penalty", "repetition_penalty",
    "response_format", "seed", "stop", "temperature", "tool_choice", "tools", "top_k", "top_p",
]
_PARAMS_BASIC = ["max_tokens", "temperature", "top_p", "stop", "frequency_penalty", "presence_penalty"]

# (id, canonical_slug, name, created, context_length, max_completion_tokens, prompt $/M,
#  completion $/M, cache_read $/M | None, cache_write $/M | None, input_modalities, tokenizer,
#  instruct_type, is_moderated, hugging_face_id, supported_parameters)
_POPULAR: list[tuple[Any, ...]] = [
    ("openai/gpt-4o", "openai/gpt-4o", "OpenAI: GPT-4o", 1715558400, 128000, 16384,
     "2.5", "10", "1.25", None, ["text", "image", "file"], "GPT", None, True, "", _PARAMS_FULL),
    ("openai/gpt-4o-mini", "openai/gpt-4o-mini", "OpenAI: GPT-4o-mini", 1721260800, 128000, 16384,
     "0.15", "0.6", "0.075", None, ["text", "image", "file"], "GPT", None, True, "", _PARAMS_FULL),
    ("openai/gpt-4.1", "openai/gpt-4.1-2025-04-14", "OpenAI: GPT-4.1", 1744651385, 1047576, 32768,
     "2", "8", "0.5", None, ["text", "image", "file"], "GPT", None, True, "", _PARAMS_FULL),
    ("openai/gpt-4.1-mini", "openai/gpt-4.1-mini-2025-04-14", "OpenAI: GPT-4.1 Mini", 1744651381,
     1047576, 32768, "0.4", "1.6", "0.1", None, ["text", "image", "file"], "GPT", None, True, "",
     _PARAMS_FULL),
    ("openai/gpt-4.1-nano", "openai/gpt-4.1-nano-2025-04-14", "OpenAI: GPT-4.1 Nano", 1744651369,
     1047576, 32768, "0.1", "0.4", "0.025", None, ["text", "image", "file"], "GPT", None, True, "",
     _PARAMS_FULL),
    ("openai/o3-mini", "openai/o3-mini-2025-01-31", "OpenAI: o3 Mini", 1738351721, 200000, 100000,
     "1.1", "4.4", "0.55", None, ["text", "file"], "GPT", None, True, "", _PARAMS_REASONING),
    ("openai/gpt-3.5-turbo", "openai/gpt-3.5-turbo", "OpenAI: GPT-3.5 Turbo", 1685232000, 16385, 4096,
     "0.5", "1.5", None, None, ["text"], "GPT", None, True, "", _PARAMS_FULL),
    ("anthropic/claude-sonnet-4", "anthropic/claude-4-sonnet-20250522", "Anthropic: Claude Sonnet 4",
     1747930371, 200000, 64000, "3", "15", "0.3", "3.75", ["image", "text", "file"], "Claude", None,
     False, "", _PARAMS_CLAUDE),
    ("anthropic/claude-opus-4", "anthropic/claude-4-opus-20250522", "Anthropic: Claude Opus 4",
     1747931245, 200000, 32000, "15", "75", "1.5", "18.75", ["image", "text", "file"], "Claude", None,
     True, "", _PARAMS_CLAUDE),
    ("anthropic/claude-3.7-sonnet", "anthropic/claude-3-7-sonnet-20250219",
     "Anthropic: Claude 3.7 Sonnet", 1740422110, 200000, 64000, "3", "15", "0.3", "3.75",
     ["text", "image", "file"], "Claude", None, True, "", _PARAMS_CLAUDE),
    ("anthropic/claude-3.5-haiku", "anthropic/claude-3-5-haiku", "Anthropic: Claude 3.5 Haiku",
     1730678400, 200000, 8192, "0.8", "4", "0.08", "1", ["text", "image"], "Claude", None, True, "",
     _PARAMS_CLAUDE),
    ("google/gemini-2.5-pro", "google/gemini-2.5-pro", "Google: Gemini 2.5 Pro", 1750169544, 1048576,
     65536, "1.25", "10", "0.31", "1.625", ["file", "image", "text", "audio"], "Gemini", None, False,
     "", [*_PARAMS_REASONING, "stop", "temperature", "top_p"]),
    ("google/gemini-2.5-flash", "google/gemini-2.5-flash", "Google: Gemini 2.5 Flash", 1750172488,
     1048576, 65535, "0.3", "2.5", "0.03", "0.3833", ["file", "image", "text", "audio"], "Gemini",
     None, False, "", [*_PARAMS_REASONING, "stop", "temperature", "top_p"]),
    ("google/gemini-2.0-flash-001", "google/gemini-2.0-flash-001", "Google: Gemini 2.0 Flash",
     1738769413, 1048576, 8192, "0.1", "0.4", "0.025", "0.1833", ["text", "image", "file", "audio"],
     "Gemini", None, False, "", _PARAMS_FULL),
    ("google/gemini-2.0-flash-exp:free", "google/gemini-2.0-flash-exp",
     "Google: Gemini 2.0 Flash Experimental (free)", 1733937523, 1048576, 8192, "0", "0", None, None,
     ["text", "image"], "Gemini", None, False, "", [*_PARAMS_BASIC, "tools", "tool_choice"]),
    ("google/gemini-2.5-flash-image-preview", "google/gemini-2.5-flash-image-preview",
     "Google: Gemini 2.5 Flash Image Preview", 1756218977, 32768, 8192, "0.3", "2.5", None, None,
     ["image", "text"], "Gemini", None, False, "", _PARAMS_BASIC),
    ("meta-llama/llama-3.3-70b-instruct", "meta-llama/llama-3.3-70b-instruct",
     "Meta: Llama 3.3 70B Instruct", 1733506137, 131072, 16384, "0.13", "0.4", None, None, ["text"],
     "Llama3", "llama3", False, "meta-llama/Llama-3.3-70B-Instruct", _PARAMS_OPEN),
    ("meta-llama/llama-3.3-70b-instruct:free", "meta-llama/llama-3.3-70b-instruct",
     "Meta: Llama 3.3 70B Instruct (free)", 1733506137, 65536, None, "0", "0", None, None, ["text"],
     "Llama3", "llama3", False, "meta-llama/Llama-3.3-70B-Instruct", _PARAMS_OPEN),
    ("meta-llama/llama-3.1-8b-instruct", "meta-llama/llama-3.1-8b-instruct",
     "Meta: Llama 3.1 8B Instruct", 1721692800, 131072, 16384, "0.02", "0.03", None, None, ["text"],
     "Llama3", "llama3", False, "meta-llama/Meta-Llama-3.1-8B-Instruct", _PARAMS_OPEN),
    ("meta-llama/llama-3.1-405b-instruct", "meta-llama/llama-3.1-405b-instruct",
     "Meta: Llama 3.1 405B Instruct", 1721692800, 131072, 16384, "0.8", "0.8", None, None, ["text"],
     "Llama3", "llama3", False, "meta-llama/Meta-Llama-3.1-405B-Instruct", _PARAMS_OPEN),
    ("mistralai/mistral-large", "mistralai/mistral-large", "Mistral Large", 1708905600, 128000, None,
     "2", "6", None, None, ["text"], "Mistral", None, False, "", _PARAMS_OPEN),
    ("mistralai/mistral-small", "mistralai/mistral-small", "Mistral Small", 1704844800, 32000, None,
     "0.2", "0.6", None, None, ["text"], "Mistral", None, False, "", _PARAMS_OPEN),
    ("mistralai/mistral-nemo", "mistralai/mistral-nemo", "Mistral: Mistral Nemo", 1721347200, 131072,
     16384, "0.02", "0.04", None, None, ["text"], "Mistral", "mistral", False,
     "mistralai/Mistral-Nemo-Instruct-2407", _PARAMS_OPEN),
    ("mistralai/mistral-7b-instruct:free", "mistralai/mistral-7b-instruct",
     "Mistral: Mistral 7B Instruct (free)", 1716768000, 32768, 16384, "0", "0", None, None, ["text"],
     "Mistral", "mistral", False, "mistralai/Mistral-7B-Instruct-v0.3", _PARAMS_OPEN),
    ("deepseek/deepseek-chat", "deepseek/deepseek-chat-v3", "DeepSeek: DeepSeek V3", 1735241584,
     163840, 163840, "0.27", "1.1", "0.07", None, ["text"], "DeepSeek", None, False,
     "deepseek-ai/DeepSeek-V3", _PARAMS_OPEN),
    ("deepseek/deepseek-r1", "deepseek/deepseek-r1", "DeepSeek: R1", 1737381095, 163840, 163840,
     "0.55", "2.19", "0.14", None, ["text"], "DeepSeek", "deepseek-r1", False,
     "deepseek-ai/DeepSeek-R1", [*_PARAMS_OPEN, "include_reasoning", "reasoning"]),
    ("deepseek/deepseek-r1:free", "deepseek/deepseek-r1", "DeepSeek: R1 (free)", 1737381095, 163840,
     None, "0", "0", None, None, ["text"], "DeepSeek", "deepseek-r1", False, "deepseek-ai/DeepSeek-R1",
     [*_PARAMS_OPEN, "include_reasoning", "reasoning"]),
    ("qwen/qwen-2.5-72b-instruct", "qwen/qwen-2.5-72b-instruct", "Qwen2.5 72B Instruct", 1726704000,
     32768, 16384, "0.12", "0.39", None, None, ["text"], "Qwen", "chatml", False,
     "Qwen/Qwen2.5-72B-Instruct", _PARAMS_OPEN),
    ("qwen/qwen-2.5-72b-instruct:free", "qwen/qwen-2.5-72b-instruct", "Qwen2.5 72B Instruct (free)",
     1726704000, 32768, 16384, "0", "0", None, None, ["text"], "Qwen", "chatml", False,
     "Qwen/Qwen2.5-72B-Instruct", _PARAMS_OPEN),
    ("x-ai/grok-3-mini", "x-ai/grok-3-mini", "xAI: Grok 3 Mini", 1749583245, 131072, None, "0.3",
     "0.5", "0.075", None, ["text"], "Grok", None, False, "", [*_PARAMS_REASONING, "temperature"]),
    ("cohere/command-r-plus-08-2024", "cohere/command-r-plus-08-2024",
     "Cohere: Command R+ (08-2024)", 1724976000, 128000, 4000, "2.5", "10", None, None, ["text"],
     "Cohere", None, True, "", _PARAMS_OPEN),
]


def _popular_entry(spec: tuple[Any, ...]) -> dict[str, Any]:
    (model_id, slug, name, created, ctx, max_out, prompt, completion, cache_read, cache_write,
     inputs, tokenizer, instruct, moderated, hf_id, params) = spec
    outputs = ["image", "text"] if "image-preview" in model_id else ["text"]
    pricing: dict[str, str] = {
        "prompt": per_token(prompt),
        "completion": per_token(completion),
        "request": "0",
        "image": "0",
        "web_search": "0",
        "internal_reasoning": "0",
    }
    if model_id == "google/gemini-2.5-flash-image-preview":
        pricing["image"] = "0.001238"
    if cache_read is not None:
        pricing["input_cache_read"] = per_token(cache_read)
    if cache_write is not None:
        pricing["input_cache_write"] = per_token(cache_write)
    vendor = model_id.split("/", 1)[0]
    return {
        "id": model_id,
        "canonical_slug": slug,
        "hugging_face_id": hf_id,
        "name": name,
        "created": created,
        "description": f"{name} served through OpenRouter ({vendor}). Fake catalogue entry with the "
                       f"model's public list price.",
        "context_length": ctx,
        "architecture": {
            "modality": "+".join(inputs) + "->" + "+".join(outputs),
            "input_modalities": list(inputs),
            "output_modalities": outputs,
            "tokenizer": tokenizer,
            "instruct_type": instruct,
        },
        "pricing": pricing,
        "top_provider": {"context_length": ctx, "max_completion_tokens": max_out, "is_moderated": moderated},
        "per_request_limits": None,
        "supported_parameters": list(params),
        "default_parameters": None,
    }


def _special_entries() -> list[dict[str, Any]]:
    auto: dict[str, Any] = {
        "id": "openrouter/auto",
        "canonical_slug": "openrouter/auto",
        "hugging_face_id": None,
        "name": "Auto Router",
        "created": 1699401600,
        "description": "Your prompt will be processed by a meta-model and routed to one of dozens of models.",
        "context_length": 2000000,
        "architecture": {"modality": "text->text", "input_modalities": ["text"],
                         "output_modalities": ["text"], "tokenizer": "Router", "instruct_type": None},
        "pricing": {"prompt": "-1", "completion": "-1"},
        "top_provider": {"context_length": None, "max_completion_tokens": None, "is_moderated": False},
        "per_request_limits": None,
        "supported_parameters": [],
        "default_parameters": None,
    }
    sonar = {
        "id": "perplexity/sonar",
        "canonical_slug": "perplexity/sonar",
        "hugging_face_id": "",
        "name": "Perplexity: Sonar",
        "created": 1738013808,
        "description": "Lightweight search-grounded model. Charges a per-request fee on top of tokens.",
        "context_length": 127072,
        "architecture": {"modality": "text+image->text", "input_modalities": ["text", "image"],
                         "output_modalities": ["text"], "tokenizer": "Other", "instruct_type": None},
        "pricing": {"prompt": "0.000001", "completion": "0.000001", "request": "0.005", "image": "0",
                    "web_search": "0", "internal_reasoning": "0"},
        "top_provider": {"context_length": 127072, "max_completion_tokens": None, "is_moderated": False},
        "per_request_limits": None,
        "supported_parameters": ["frequency_penalty", "max_tokens", "presence_penalty", "temperature",
                                 "top_k", "top_p", "web_search_options"],
        "default_parameters": None,
    }
    return [auto, sonar]


_SYN_VENDORS = ["acme-ai", "nimbus", "orca-labs", "zephyr", "quasar", "lumen", "polaris", "tessera"]
_SYN_FAMILIES = ["chat", "instruct", "coder", "vision", "reasoner", "mini", "turbo"]
_SYN_SIZES = [3, 8, 14, 32, 70, 120, 405]


def _synthetic_entry(i: int) -> dict[str, Any]:
    vendor = _SYN_VENDORS[i % len(_SYN_VENDORS)]
    family = _SYN_FAMILIES[(i // len(_SYN_VENDORS)) % len(_SYN_FAMILIES)]
    size = _SYN_SIZES[i % len(_SYN_SIZES)]
    base_id = f"{vendor}/{family}-{size}b-v{1 + i // 56}"
    free = i % 10 == 9
    model_id = base_id + (":free" if free else "")
    # Price grows with the size, wobbles deterministically with the index.
    prompt_m = Decimal(size) * Decimal("0.01") * (Decimal(10 + i % 7) / Decimal(10))
    prompt_m = prompt_m.quantize(Decimal("0.0001"))
    completion_m = (prompt_m * (2 + i % 3)).quantize(Decimal("0.0001"))
    vision = family == "vision" or i % 11 == 0
    inputs = ["text", "image"] if vision else ["text"]
    ctx = [8192, 32768, 65536, 131072, 262144][i % 5]
    max_out: int | None = [4096, 8192, 16384, None][i % 4]
    pricing: dict[str, str] = {
        "prompt": "0" if free else per_token(prompt_m),
        "completion": "0" if free else per_token(completion_m),
        "request": "0",
        "image": "0",
        "web_search": "0",
        "internal_reasoning": "0",
    }
    if not free and i % 4 == 1:
        pricing["input_cache_read"] = per_token((prompt_m / 4).quantize(Decimal("0.00001")))
    params = _PARAMS_REASONING if family == "reasoner" else (_PARAMS_OPEN if i % 3 else _PARAMS_BASIC)
    name = f"{vendor.replace('-', ' ').title()}: {family.title()} {size}B v{1 + i // 56}"
    if free:
        name += " (free)"
    return {
        "id": model_id,
        "canonical_slug": base_id,
        "hugging_face_id": "",
        "name": name,
        "created": 1704067200 + i * 86400,
        "description": f"Synthetic {family} model #{i} ({size}B parameters) generated by the fake "
                       f"OpenRouter catalogue.",
        "context_length": ctx,
        "architecture": {
            "modality": "+".join(inputs) + "->text",
            "input_modalities": inputs,
            "output_modalities": ["text"],
            "tokenizer": "Other",
            "instruct_type": None,
        },
        "pricing": pricing,
        "top_provider": {"context_length": ctx, "max_completion_tokens": max_out,
                         "is_moderated": i % 6 == 0},
        "per_request_limits": None,
        "supported_parameters": list(params),
        "default_parameters": None,
    }


def openrouter_models(count: int = OPENROUTER_DEFAULT_COUNT) -> list[dict[str, Any]]:
    """The default OpenRouter ``/models`` data: popular real models first, then synthetic ones."""
    models = [_popular_entry(spec) for spec in _POPULAR] + _special_entries()
    i = 0
    while len(models) < count:
        models.append(_synthetic_entry(i))
        i += 1
    return models[:count]


POPULAR_OPENROUTER_IDS = tuple(spec[0] for spec in _POPULAR)


# OpenRouter ``GET /api/v1/embeddings/models``: its embedding models, in the same entry shape as
# ``/models`` with ``architecture.output_modalities: ["embeddings"]``, a per-input-token
# ``prompt`` price, ``completion`` "0" and no output limit.
# (id, name, created, context_length, prompt $/M, tokenizer, supported_parameters)
_OPENROUTER_EMBEDDINGS: list[tuple[str, str, int, int, str, str, list[str]]] = [
    ("openai/text-embedding-3-small", "OpenAI: Text Embedding 3 Small", 1705948997, 8192, "0.02", "GPT",
     ["dimensions", "encoding_format"]),
    ("openai/text-embedding-3-large", "OpenAI: Text Embedding 3 Large", 1705953180, 8192, "0.13", "GPT",
     ["dimensions", "encoding_format"]),
    ("google/gemini-embedding-001", "Google: Gemini Embedding 001", 1752105600, 2048, "0.15", "Gemini",
     ["dimensions", "encoding_format"]),
    ("mistralai/mistral-embed-2312", "Mistral: Mistral Embed 2312", 1702944000, 8192, "0.1", "Mistral",
     ["encoding_format"]),
]
OPENROUTER_EMBEDDING_IDS = tuple(spec[0] for spec in _OPENROUTER_EMBEDDINGS)


def openrouter_embedding_models() -> list[dict[str, Any]]:
    return [{
        "id": mid, "canonical_slug": mid, "hugging_face_id": None, "name": name, "created": created,
        "description": f"Fake entry for {name}.", "context_length": ctx,
        "architecture": {"modality": "text->embeddings", "input_modalities": ["text"],
                         "output_modalities": ["embeddings"], "tokenizer": tokenizer, "instruct_type": None},
        "pricing": {"prompt": per_token(prompt_m), "completion": "0", "request": "0", "image": "0"},
        "top_provider": {"context_length": ctx, "max_completion_tokens": None, "is_moderated": False},
        "per_request_limits": None, "supported_parameters": list(params), "default_parameters": None,
        "links": {"details": f"/api/v1/models/{mid}/endpoints"},
    } for mid, name, created, ctx, prompt_m, tokenizer, params in _OPENROUTER_EMBEDDINGS]


# --------------------------------------------------------------------------------------------
# OpenAI, Anthropic, Gemini, compat
# --------------------------------------------------------------------------------------------

_OPENAI: list[tuple[str, int, str]] = [
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-2024-08-06", 1722814719, "system"),
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4o-mini-2024-07-18", 1721172717, "system"),
    ("gpt-4.1", 1744316542, "system"),
    ("gpt-4.1-mini", 1744318173, "system"),
    ("gpt-4.1-nano", 1744321707, "system"),
    ("o1", 1734375816, "system"),
    ("o3-mini", 1737146383, "system"),
    ("o4-mini", 1744225351, "system"),
    ("gpt-4-turbo", 1712361441, "system"),
    ("gpt-3.5-turbo", 1677610602, "openai"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
    ("omni-moderation-latest", 1731689265, "system"),
    ("dall-e-3", 1698785189, "system"),
    ("whisper-1", 1677532384, "openai-internal"),
    ("tts-1", 1681940951, "openai-internal"),
]


def openai_models() -> list[dict[str, Any]]:
    return [{"id": mid, "object": "model", "created": created, "owned_by": owner}
            for mid, created, owner in _OPENAI]


_ANTHROPIC: list[tuple[str, str, str]] = [
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-opus-4-20250514", "Claude Opus 4", "2025-05-22T00:00:00Z"),
    ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z"),
    ("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-24T00:00:00Z"),
    ("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
    ("claude-3-haiku-20240307", "Claude Haiku 3", "2024-03-07T00:00:00Z"),
]


def anthropic_models() -> list[dict[str, Any]]:
    return [{"type": "model", "id": mid, "display_name": name, "created_at": created}
            for mid, name, created in _ANTHROPIC]


_GEN_METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]

# (id, version, displayName, inputTokenLimit, outputTokenLimit, methods, thinking)
_GEMINI: list[tuple[str, str, str, int, int, list[str], bool]] = [
    ("gemini-2.5-pro", "2.5", "Gemini 2.5 Pro", 1048576, 65536, _GEN_METHODS, True),
    ("gemini-2.5-flash", "001", "Gemini 2.5 Flash", 1048576, 65536, _GEN_METHODS, True),
    ("gemini-2.5-flash-lite", "001", "Gemini 2.5 Flash-Lite", 1048576, 65536, _GEN_METHODS, True),
    ("gemini-2.0-flash", "2.0", "Gemini 2.0 Flash", 1048576, 8192, _GEN_METHODS, False),
    ("gemini-2.0-flash-001", "2.0", "Gemini 2.0 Flash 001", 1048576, 8192, _GEN_METHODS, False),
    ("gemini-2.0-flash-lite", "2.0", "Gemini 2.0 Flash-Lite", 1048576, 8192, _GEN_METHODS, False),
    ("gemini-1.5-pro", "001", "Gemini 1.5 Pro", 2000000, 8192, ["generateContent", "countTokens"], False),
    ("gemini-1.5-flash", "001", "Gemini 1.5 Flash", 1000000, 8192, ["generateContent", "countTokens"],
     False),
    ("gemma-3-27b-it", "001", "Gemma 3 27B", 131072, 8192, ["generateContent", "countTokens"], False),
    ("text-embedding-004", "004", "Text Embedding 004", 2048, 1, ["embedContent"], False),
    ("gemini-embedding-001", "001", "Gemini Embedding 001", 2048, 1,
     ["embedContent", "countTextTokens", "countTokens"], False),
    ("imagen-3.0-generate-002", "002", "Imagen 3.0", 480, 8192, ["predict"], False),
]


def gemini_models() -> list[dict[str, Any]]:
    out = []
    for mid, version, display, in_limit, out_limit, methods, thinking in _GEMINI:
        entry: dict[str, Any] = {
            "name": f"models/{mid}",
            "version": version,
            "displayName": display,
            "description": f"Fake {display} entry.",
            "inputTokenLimit": in_limit,
            "outputTokenLimit": out_limit,
            "supportedGenerationMethods": list(methods),
        }
        if "generateContent" in methods:
            entry.update({"temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2})
        if thinking:
            entry["thinking"] = True
        out.append(entry)
    return out


def compat_models() -> list[dict[str, Any]]:
    return [
        {"id": "llama3.2:3b", "object": "model", "created": 1727049600, "owned_by": "library"},
        {"id": "qwen2.5:7b-instruct", "object": "model", "created": 1726704000, "owned_by": "library"},
        {"id": "mistral:7b", "object": "model", "created": 1716768000, "owned_by": "library"},
        {"id": "nomic-embed-text:latest", "object": "model", "created": 1708041600, "owned_by": "library"},
    ]


def default_catalog() -> dict[str, list[dict[str, Any]]]:
    """Fresh copies of every provider's default model list."""
    return {
        "openai": openai_models(),
        "openrouter": openrouter_models(),
        "anthropic": anthropic_models(),
        "gemini": gemini_models(),
        "compat": compat_models(),
    }


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def expand_model(provider: str, model: str | dict[str, Any]) -> dict[str, Any]:
    """Turn a bare model id into a full entry of ``provider``'s shape; dicts pass through as-is.

    Used by ``PUT /__fake/catalog/{provider}`` so tests can send ``["a/b", "c/d"]``.
    """
    if isinstance(model, dict):
        return model
    mid = str(model)
    h = _stable_int(mid)
    if provider == "openrouter":
        free = mid.endswith(":free")
        prompt_m = Decimal(1 + h % 500) / Decimal(100)
        completion_m = prompt_m * 4
        ctx = [8192, 32768, 131072][h % 3]
        return {
            "id": mid,
            "canonical_slug": mid.split(":", 1)[0],
            "hugging_face_id": "",
            "name": mid,
            "created": 1704067200 + h % 50_000_000,
            "description": f"Fake entry for {mid}.",
            "context_length": ctx,
            "architecture": {"modality": "text->text", "input_modalities": ["text"],
                             "output_modalities": ["text"], "tokenizer": "Other", "instruct_type": None},
            "pricing": {"prompt": "0" if free else per_token(prompt_m),
                        "completion": "0" if free else per_token(completion_m),
                        "request": "0", "image": "0", "web_search": "0", "internal_reasoning": "0"},
            "top_provider": {"context_length": ctx, "max_completion_tokens": 4096, "is_moderated": False},
            "per_request_limits": None,
            "supported_parameters": list(_PARAMS_FULL),
            "default_parameters": None,
        }
    if provider in ("openai", "compat"):
        return {"id": mid, "object": "model", "created": 1700000000 + h % 50_000_000,
                "owned_by": "system" if provider == "openai" else "library"}
    if provider == "anthropic":
        return {"type": "model", "id": mid, "display_name": mid, "created_at": "2025-01-01T00:00:00Z"}
    if provider == "gemini":
        name = mid if mid.startswith("models/") else f"models/{mid}"
        return {"name": name, "version": "001", "displayName": name.split("/", 1)[1],
                "description": f"Fake entry for {name}.", "inputTokenLimit": 1048576,
                "outputTokenLimit": 8192, "supportedGenerationMethods": ["generateContent", "countTokens"]}
    raise ValueError(f"unknown provider {provider!r}")


def openrouter_pricing_index(models: list[dict[str, Any]]) -> dict[str, dict[str, Decimal]]:
    """id -> pricing as Decimals (skips entries without a usable pricing block)."""
    index: dict[str, dict[str, Decimal]] = {}
    for m in models:
        if not isinstance(m, dict) or not isinstance(m.get("pricing"), dict) or "id" not in m:
            continue
        prices: dict[str, Decimal] = {}
        for key, value in m["pricing"].items():
            try:
                prices[key] = Decimal(str(value))
            except ArithmeticError:
                continue
        index[str(m["id"])] = prices
    return index
