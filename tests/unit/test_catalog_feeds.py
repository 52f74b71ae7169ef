"""Parsing provider model lists: exact Decimal prices, discount, context-length tiers, skips."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from gateway.adapters.anthropic import parse_anthropic_page
from gateway.adapters.contract import DirectModel
from gateway.adapters.gemini import parse_gemini_page
from gateway.adapters.openai_compat import openai_chat_model, parse_openai_models
from gateway.adapters.registry import catalogue_ids
from gateway.catalog.feeds import (
    SkipModel,
    format_amount,
    parse_amount,
    parse_openrouter_model,
    parse_openrouter_payload,
)
from infra.local import fake_catalog

D = Decimal


def entry(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "acme/model-1",
        "name": "Acme: Model 1",
        "created": 1715558400,
        "description": "A model.",
        "context_length": 128000,
        "architecture": {"modality": "text+image->text", "input_modalities": ["text", "image"],
                         "output_modalities": ["text"], "tokenizer": "Other", "instruct_type": None},
        "pricing": {"prompt": "0.0000025", "completion": "0.00001", "request": "0", "image": "0",
                    "input_cache_read": "0.00000125"},
        "top_provider": {"context_length": 128000, "max_completion_tokens": 16384, "is_moderated": True},
        "supported_parameters": ["max_tokens", "temperature"],
    }
    for key, value in over.items():
        if key == "pricing_update":
            base["pricing"].update(value)
        else:
            base[key] = value
    return base


def via_json(obj: Any) -> Any:
    """What discovery sees: the body decoded with parse_float=Decimal."""
    return json.loads(json.dumps(obj), parse_float=Decimal)


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("raw,expected", [
    ("0.0000025", D("0.0000025")), ("2.5e-6", D("0.0000025")), ("0", D(0)), (0, D(0)), (3, D(3)),
    (D("0.1"), D("0.1")), (" 0.5 ", D("0.5")),
])
def test_parse_amount_exact(raw: Any, expected: Decimal) -> None:
    value = parse_amount(raw, "x")
    assert value == expected and isinstance(value, Decimal)


@pytest.mark.parametrize("raw", [0.1, True, None, "", "abc", "NaN", "Infinity", [1], {"a": 1}])
def test_parse_amount_refuses_floats_and_junk(raw: Any) -> None:
    with pytest.raises(SkipModel):
        parse_amount(raw, "x")


@pytest.mark.parametrize("value,text", [
    (D("0.0000025"), "0.0000025"), (D("2.50E-6"), "0.0000025"), (D("0E-18"), "0"), (D("0.000002500000000000"),
                                                                                        "0.0000025"),
    (D("10"), "10"), (D("1E+1"), "10"), (D("0.00000000000000000001"), "0.00000000000000000001"),
])
def test_format_amount_plain_decimal(value: Decimal, text: str) -> None:
    assert format_amount(value) == text


# ----------------------------------------------------------------------------- OpenRouter entries


def test_prices_parsed_exactly_and_request_defaults_to_zero() -> None:
    raw = entry()
    del raw["pricing"]["request"]
    m = parse_openrouter_model(via_json(raw))
    assert m.prices["prompt"] == D("0.0000025") and m.prices["completion"] == D("0.00001")
    assert m.prices["input_cache_read"] == D("0.00000125")
    assert m.prices["request"] == 0
    assert all(isinstance(v, Decimal) for v in m.prices.values())
    assert m.owned_by == "acme" and m.context_length == 128000 and m.max_completion_tokens == 16384
    assert m.input_modalities == ["text", "image"] and m.output_modalities == ["text"]
    assert m.created == 1715558400 and m.supported_parameters == ["max_tokens", "temperature"]
    assert m.list_pricing == raw["pricing"]
    assert not m.is_free


def test_discount_applies_to_every_price_exactly() -> None:
    # A JSON number discount: with parse_float=Decimal it stays exactly 0.1 (a float would not).
    m = parse_openrouter_model(via_json(entry(pricing_update={"discount": 0.1})))
    assert m.discount == D("0.1")
    assert m.prices["prompt"] == D("0.00000225")
    assert m.prices["completion"] == D("0.000009")
    assert m.prices["input_cache_read"] == D("0.000001125")
    assert m.list_pricing is not None and m.list_pricing["prompt"] == "0.0000025"  # the listed price is kept


def test_string_discount_and_surcharge() -> None:
    m = parse_openrouter_model(via_json(entry(pricing_update={"discount": "0.25"})))
    assert m.prices["prompt"] == D("0.000001875")
    surcharge = parse_openrouter_model(via_json(entry(pricing_update={"discount": "-0.2"})))
    assert surcharge.prices["prompt"] == D("0.000003")  # a negative discount raises the price: honoured


def test_discount_above_one_is_ignored_not_a_negative_price() -> None:
    m = parse_openrouter_model(via_json(entry(pricing_update={"discount": "1.5"})))
    assert m.discount is None and m.prices["prompt"] == D("0.0000025")
    free = parse_openrouter_model(via_json(entry(pricing_update={"discount": 1})))
    assert free.prices["prompt"] == 0 and free.prices["completion"] == 0


def test_context_tiers_bill_the_highest_reachable_price() -> None:
    raw = entry(context_length=1048576, top_provider={"context_length": 1048576, "max_completion_tokens": 65536},
                pricing_update={"prompt": "0.00000125", "completion": "0.00001",
                                "overrides": [{"min_prompt_tokens": 200000, "prompt": "0.0000025",
                                               "completion": "0.000015", "input_cache_read": "0.000000625"}]})
    m = parse_openrouter_model(via_json(raw))
    assert m.prices["prompt"] == D("0.0000025")          # never under-charge a long prompt
    assert m.prices["completion"] == D("0.000015")
    assert m.prices["input_cache_read"] == D("0.00000125")  # the base one is higher here
    assert m.tiers == [{"min_prompt_tokens": 200000, "prompt": D("0.0000025"), "completion": D("0.000015"),
                        "input_cache_read": D("0.000000625")}]


def test_tiers_with_discount_and_unreachable_tier() -> None:
    raw = entry(context_length=100000, top_provider={"context_length": 100000, "max_completion_tokens": 4096},
                pricing_update={"discount": "0.5",
                                "overrides": [{"min_prompt_tokens": 50000, "prompt": "0.000004"},
                                              {"min_prompt_tokens": 100000, "prompt": "0.1"}]})
    m = parse_openrouter_model(via_json(raw))
    # 0.000004 x 0.5; the 100k tier is unreachable with a 100k context (prompt < context)
    assert m.prices["prompt"] == D("0.000002")
    assert [t["min_prompt_tokens"] for t in m.tiers or []] == [50000, 100000]


def test_pricing_tiers_top_level_spelling_is_accepted() -> None:
    raw = entry(pricing_tiers=[{"min_prompt_tokens": 1000, "completion": "0.00002"}])
    m = parse_openrouter_model(via_json(raw))
    assert m.prices["completion"] == D("0.00002")


@pytest.mark.parametrize("tiers", [
    [{"prompt": "0.1"}],                                   # no threshold
    [{"min_prompt_tokens": -1, "prompt": "0.1"}],
    [{"min_prompt_tokens": "200000", "prompt": "0.1"}],   # threshold must be a number
    [{"min_prompt_tokens": 1000, "prompt": "-1"}],
    [{"min_prompt_tokens": 1000, "prompt": {"nested": "1"}}],
    "not-a-list",
])
def test_malformed_tiers_fail_closed(tiers: Any) -> None:
    with pytest.raises(SkipModel):
        parse_openrouter_model(via_json(entry(pricing_update={"overrides": tiers})))


@pytest.mark.parametrize("change", [
    {"pricing": {"prompt": "-1", "completion": "-1"}},          # openrouter/auto: dynamic price
    {"pricing": {"prompt": "0.000001"}},                        # no completion price
    {"pricing": {"prompt": "abc", "completion": "0"}},
    {"pricing": {"prompt": "0.1", "completion": "0.1", "surge": {"x": "1"}}},  # unknown structure
    {"pricing": None},
    {"id": "no-slash"},
    {"id": "bad id/with space"},
    {"context_length": None, "top_provider": {}},
    {"context_length": 0, "top_provider": {"context_length": None}},
])
def test_unbillable_entries_are_skipped(change: dict[str, Any]) -> None:
    raw = entry()
    raw.update(change)
    with pytest.raises(SkipModel):
        parse_openrouter_model(via_json(raw))


def test_float_prices_are_refused_when_json_was_decoded_naively() -> None:
    raw = json.loads(json.dumps(entry(pricing_update={"prompt": 0.0000025})))  # float
    with pytest.raises(SkipModel):
        parse_openrouter_model(raw)


def test_unknown_numeric_price_goes_to_extras_and_counts_for_free() -> None:
    m = parse_openrouter_model(via_json(entry(pricing_update={"audio": "0.00004"})))
    assert m.extra_prices == {"audio": D("0.00004")}
    free = parse_openrouter_model(via_json(entry(pricing={"prompt": "0", "completion": "0", "audio": "0.1"})))
    assert not free.is_free
    really_free = parse_openrouter_model(via_json(entry(pricing={"prompt": "0", "completion": "0"})))
    assert really_free.is_free


def test_max_completion_tokens_falls_back_to_the_context() -> None:
    m = parse_openrouter_model(via_json(entry(top_provider={"context_length": 32768,
                                                            "max_completion_tokens": None},
                                              context_length=32768)))
    assert m.max_completion_tokens == 32768
    capped = parse_openrouter_model(via_json(entry(top_provider={"max_completion_tokens": 999999})))
    assert capped.max_completion_tokens == 128000


def test_modalities_from_the_modality_string() -> None:
    m = parse_openrouter_model(via_json(entry(architecture={"modality": "text+image->text+image"})))
    assert m.input_modalities == ["text", "image"] and m.output_modalities == ["text", "image"]
    bare = parse_openrouter_model(via_json(entry(architecture=None)))
    assert bare.input_modalities == ["text"] and bare.architecture is None


def test_the_whole_fake_openrouter_catalogue_parses_exactly() -> None:
    models = fake_catalog.openrouter_models()
    payload = via_json({"data": models})
    parsed, skipped, count = parse_openrouter_payload(payload)
    assert count == 300
    assert [i for i, _ in skipped] == ["openrouter/auto"]  # "-1": dynamic price
    assert len(parsed) == 299
    index = fake_catalog.openrouter_pricing_index(models)
    for m in parsed:
        assert m.prices["prompt"] == index[m.id]["prompt"], m.id
        assert m.prices["completion"] == index[m.id]["completion"], m.id
        if "input_cache_read" in index[m.id]:
            assert m.prices["input_cache_read"] == index[m.id]["input_cache_read"]
        assert m.is_free == (m.id.endswith(":free")), m.id
    sonar = next(m for m in parsed if m.id == "perplexity/sonar")
    assert sonar.prices["request"] == D("0.005")


def test_payload_duplicates_and_junk_entries() -> None:
    payload = via_json({"data": [entry(), entry(), "junk", {"id": "x/y"}]})
    parsed, skipped, count = parse_openrouter_payload(payload)
    assert [m.id for m in parsed] == ["acme/model-1"] and count == 4
    assert [s[0] for s in skipped] == ["acme/model-1", "?", "x/y"]
    with pytest.raises(ValueError):
        parse_openrouter_payload({"models": []})


def test_input_is_not_mutated() -> None:
    raw = via_json(entry(pricing_update={"discount": "0.1"}))
    before = copy.deepcopy(raw)
    parse_openrouter_model(raw)
    assert raw == before


# ----------------------------------------------------------------------------- direct providers


def test_openai_list_keeps_chat_models_only() -> None:
    models = parse_openai_models({"object": "list", "data": fake_catalog.openai_models()})
    names = {m.upstream for m in models}
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "o4-mini", "gpt-3.5-turbo"} <= names
    assert not names & {"text-embedding-3-small", "dall-e-3", "whisper-1", "tts-1", "omni-moderation-latest"}
    assert all(m.provider == "openai" for m in models)
    assert not openai_chat_model("gpt-4o-realtime-preview") and not openai_chat_model("gpt-4o-mini-tts")


def test_anthropic_page_and_cursor() -> None:
    page = {"data": [{"type": "model", "id": "claude-sonnet-4-20250514", "display_name": "Claude Sonnet 4"}],
            "has_more": True, "first_id": "claude-sonnet-4-20250514", "last_id": "claude-sonnet-4-20250514"}
    models, after = parse_anthropic_page(page)
    assert models == [DirectModel("anthropic", "claude-sonnet-4-20250514", "Claude Sonnet 4")]
    assert after == "claude-sonnet-4-20250514"
    assert parse_anthropic_page({**page, "has_more": False})[1] is None


def test_gemini_page_keeps_generate_content_models() -> None:
    models, token = parse_gemini_page({"models": fake_catalog.gemini_models(), "nextPageToken": "p2"})
    names = {m.upstream for m in models}
    assert "gemini-2.5-pro" in names and "gemini-2.0-flash-001" in names
    assert not names & {"text-embedding-004", "gemini-embedding-001", "imagen-3.0-generate-002"}
    assert token == "p2"
    assert parse_gemini_page({"models": []}) == ([], None)


@pytest.mark.parametrize("provider,name,expected", [
    ("openai", "gpt-4o", "openai/gpt-4o"),
    ("gemini", "gemini-2.5-flash", "google/gemini-2.5-flash"),
    ("anthropic", "claude-3-7-sonnet-20250219", "anthropic/claude-3.7-sonnet"),
    ("anthropic", "claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),
    ("anthropic", "claude-opus-4-1-20250805", "anthropic/claude-opus-4.1"),
    ("anthropic", "claude-3-5-haiku-20241022", "anthropic/claude-3.5-haiku"),
    ("anthropic", "claude-3-haiku-20240307", "anthropic/claude-3-haiku"),
])
def test_direct_names_map_to_catalogue_ids(provider: str, name: str, expected: str) -> None:
    ids = catalogue_ids(provider, name)
    assert ids[0] == expected
    assert ids[-1].endswith("/" + name)  # the literal name is always a candidate too


def test_an_openrouter_embedding_model_has_no_output() -> None:
    raw = json.loads(json.dumps(fake_catalog.openrouter_embedding_models()[0]), parse_float=Decimal)
    model = parse_openrouter_model(raw)
    assert model.output_modalities == ["embeddings"] and model.max_completion_tokens == 0
    assert model.prices["prompt"] == Decimal("0.00000002") and model.prices["completion"] == 0
    assert model.context_length == 8192 and not model.is_free
