"""Rendering the catalogue: our price strings (cost x (1 + markup), exact), views, filters, encoding."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest

from gateway.catalog.registry import ModelInfo, tier_allows
from gateway.catalog.render import (
    Catalogue,
    Filters,
    build_snapshot,
    decode_snapshot,
    encode_snapshot,
    entry_from_row,
    priced,
    render_entry,
)
from gateway.config import Tier
from gateway.money.pricing import ModelPrice

D = Decimal
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def row(model_id: str = "openai/gpt-4o", **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": model_id, "name": model_id, "provider": model_id.split("/")[0], "upstream_model": model_id.split("/")[1],
        "owned_by": model_id.split("/")[0], "context_length": 128000, "max_completion_tokens": 16384,
        "prompt_price": D("0.000002500000000000"), "completion_price": D("0.000010000000000000"),
        "request_price": D("0E-18"), "input_cache_read_price": D("0.00000125"), "input_cache_write_price": None,
        "image_price": None, "web_search_price": None, "internal_reasoning_price": None, "pricing_extra": None,
        "price_tiers": None, "discount": None, "input_modalities": ["text", "image"], "output_modalities": ["text"],
        "architecture": None, "supported_parameters": None, "description": "d", "is_free": False, "markup": None,
        "source": "seed", "upstream_created_at": None, "created_at": T0, "updated_at": T0, "price_changed_at": T0,
        "seen_in": [],
    }
    base.update(over)
    return base


PRO = Tier(name="pro", rpm=60, markup=D("0.10"))
ENTERPRISE = Tier(name="enterprise", rpm=1000, markup=D("0.05"))
FREE = Tier(name="free", rpm=10, models="free_or_cap", max_price_per_token=D("0.000001"), markup=D("0.10"))


def test_priced_is_exact_and_plain() -> None:
    assert priced({"prompt": "0.0000025", "completion": "0.00001", "request": "0"}, D("0.10")) == {
        "prompt": "0.00000275", "completion": "0.000011", "request": "0"}
    # 1/3-ish prices keep every digit: no float, no rounding
    assert priced({"prompt": "0.000000123456789"}, D("0.07"))["prompt"] == "0.00000013209876423"


def test_entry_and_render_show_our_price_and_hide_the_cost() -> None:
    entry = entry_from_row(row())
    assert entry["cost"] == {"prompt": "0.0000025", "completion": "0.00001", "request": "0",
                             "input_cache_read": "0.00000125"}
    out = render_entry(entry, D("0.10"))
    assert out["object"] == "model" and out["id"] == "openai/gpt-4o" and out["owned_by"] == "openai"
    assert out["pricing"] == {"prompt": "0.00000275", "completion": "0.000011", "request": "0",
                              "input_cache_read": "0.000001375"}
    assert out["architecture"]["input_modalities"] == ["text", "image"]
    assert out["architecture"]["modality"] == "text+image->text"
    assert out["created"] == int(T0.timestamp())
    assert "provider_pricing" not in out and "route" not in out and "markup" not in out


def test_admin_view_adds_cost_markup_and_route() -> None:
    out = render_entry(entry_from_row(row()), D("0.10"), admin=True)
    assert out["provider_pricing"]["prompt"] == "0.0000025"
    assert out["markup"] == "0.1"
    assert out["route"] == {"provider": "openai", "upstream_model": "gpt-4o"}


def test_model_markup_overrides_the_tier() -> None:
    out = render_entry(entry_from_row(row(markup=D("0.250000"))), D("0.10"))
    assert out["pricing"]["prompt"] == "0.000003125"


def test_free_model_and_tiers_and_extras() -> None:
    free = render_entry(entry_from_row(row("meta-llama/x:free", prompt_price=D(0), completion_price=D(0),
                                           input_cache_read_price=None, is_free=True)), D("0.10"))
    assert free["pricing"] == {"prompt": "0", "completion": "0", "request": "0"}
    tiered = entry_from_row(row(price_tiers=[{"min_prompt_tokens": 200000, "prompt": "0.0000025"}],
                                pricing_extra={"audio": "0.00004"}))
    out = render_entry(tiered, D("0.10"))
    assert out["pricing_tiers"] == [{"min_prompt_tokens": 200000, "prompt": "0.00000275"}]
    assert out["pricing"]["audio"] == "0.000044"


def test_snapshot_version_is_content_addressed() -> None:
    a = build_snapshot([row("a/x"), row("b/y")])
    b = build_snapshot([row("b/y"), row("a/x")])
    assert a["version"] == b["version"] and [m["id"] for m in a["models"]] == ["a/x", "b/y"]
    c = build_snapshot([row("a/x", prompt_price=D("0.000003")), row("b/y")])
    assert c["version"] != a["version"]


def test_encode_decode_roundtrip_and_rejects_junk() -> None:
    snap = build_snapshot([row(f"v{i}/m{i}") for i in range(300)])
    text = encode_snapshot(snap)
    assert text.startswith("z1:") and len(text) < len(json.dumps(snap)) / 4
    assert decode_snapshot(text) == snap
    assert decode_snapshot(text.encode()) == snap
    with pytest.raises(ValueError):
        decode_snapshot("{}")


def catalogue() -> Catalogue:
    rows = [
        row("openai/gpt-4o"),
        row("anthropic/claude-sonnet-4", prompt_price=D("0.000003"), completion_price=D("0.000015")),
        row("meta-llama/llama-3.1-8b-instruct", provider="openrouter", prompt_price=D("0.00000002"),
            completion_price=D("0.00000003"), input_modalities=["text"]),
        row("meta-llama/llama-3.3-70b-instruct:free", provider="openrouter", prompt_price=D(0),
            completion_price=D(0), is_free=True, input_modalities=["text"]),
        row("google/gemini-2.5-flash-image-preview", provider="openrouter", output_modalities=["image", "text"],
            architecture={"modality": "image+text->image+text"}),
    ]
    return Catalogue(build_snapshot(rows))


def ids(result: tuple[bytes, bool]) -> list[str]:
    body, gzipped = result
    assert not gzipped
    doc = json.loads(body)
    assert doc["object"] == "list"
    return [m["id"] for m in doc["data"]]


def test_list_body_is_the_openai_list_shape_and_cached_per_view() -> None:
    cat = catalogue()
    result = cat.list_body(D("0.10"))
    assert ids(result) == sorted(ids(result)) and len(ids(result)) == 5
    assert cat.list_body(D("0.10"))[0] is result[0]  # rendered once per view
    assert cat.list_body(D("0.05"))[0] != result[0]
    assert json.loads(cat.model_body("openai/gpt-4o", D("0.05")) or b"")["pricing"]["prompt"] == "0.000002625"
    assert cat.model_body("nope/nope", D("0.05")) is None


def test_filters() -> None:
    cat = catalogue()
    assert ids(cat.list_body(D("0.1"), filters=Filters(providers=frozenset({"anthropic"})))) == [
        "anthropic/claude-sonnet-4"]
    # the route provider matches too (models served through OpenRouter)
    assert len(ids(cat.list_body(D("0.1"), filters=Filters(providers=frozenset({"openrouter"}))))) == 3
    assert ids(cat.list_body(D("0.1"), filters=Filters(modality="image"))) == [
        "anthropic/claude-sonnet-4", "google/gemini-2.5-flash-image-preview", "openai/gpt-4o"]
    assert ids(cat.list_body(D("0.1"), filters=Filters(modality="image+text->image+text"))) == [
        "google/gemini-2.5-flash-image-preview"]
    assert ids(cat.list_body(D("0.1"), filters=Filters(tier=FREE))) == [
        "meta-llama/llama-3.1-8b-instruct", "meta-llama/llama-3.3-70b-instruct:free"]
    assert len(ids(cat.list_body(D("0.1"), filters=Filters(tier=PRO)))) == 5
    assert ids(cat.list_body(D("0.1"), filters=Filters(providers=frozenset({"nobody"})))) == []


def test_tier_rule_is_the_registry_rule() -> None:
    for prompt, completion, free in [("0.000001", "0.000001", False), ("0.0000011", "0", False),
                                     ("0.1", "0.1", True), ("0", "0.000002", False)]:
        info = ModelInfo(id="a/b", name="a", provider="openrouter", upstream_model="a/b", owned_by="a",
                         context_length=1, max_completion_tokens=1,
                         price=ModelPrice(prompt=D(prompt), completion=D(completion)), is_free=free, markup=None,
                         input_modalities=("text",))
        for tier in (FREE, PRO):
            assert info.allowed_for(tier) == tier_allows(tier, free, D(prompt), D(completion))


def test_gzip_only_when_asked_and_worth_it() -> None:
    import gzip

    cat = Catalogue(build_snapshot([row(f"v{i}/model-{i}") for i in range(50)]))
    plain, zipped = cat.list_body(D("0.1"))
    assert not zipped
    packed, zipped = cat.list_body(D("0.1"), gzipped=True)
    assert zipped and gzip.decompress(packed) == plain and len(packed) < len(plain) / 4
    assert cat.list_body(D("0.1"), gzipped=True)[0] is packed  # compressed once per view
    filtered, zipped = cat.list_body(D("0.1"), gzipped=True, filters=Filters(providers=frozenset({"v1"})))
    assert not zipped and json.loads(filtered)["data"][0]["id"] == "v1/model-1"  # small: sent as is


@pytest.mark.parametrize(("extra", "audio"), [
    ({"audio": "0.00004"}, D("0.00004")), ({"audio": "0"}, D(0)), ({"audio": "-1"}, None),
    ({"audio": "-0.00001"}, None), ({"audio": "NaN"}, None), ({"audio": "x"}, None), (None, None),
])
def test_a_negative_or_unusable_extra_price_is_no_price(extra: Any, audio: Decimal | None) -> None:
    """OpenRouter sends ``"-1"`` for a price that varies: read as a price, every audio token would
    credit the caller. No price instead: audio input to that model is then refused (400)."""
    from gateway.catalog.registry import _row_to_model

    r = {**row(pricing_extra=extra), "markup": None, "input_modalities": ["text", "audio"],
         "output_modalities": ["text"]}
    assert _row_to_model(r).price.audio == audio
    rendered = render_entry(entry_from_row(r), D("0.10"))["pricing"]
    if audio is None:
        assert "audio" not in rendered  # the catalogue publishes no price it does not bill
    elif audio:
        assert D(rendered["audio"]) == audio * D("1.10")


def test_a_model_with_unpriced_outputs_is_listed_only_through_openrouter() -> None:
    """A model that outputs images or audio, routed to a direct provider, would be billed those
    outputs at rates our per-token prices do not carry (Gemini image output $30/M against $2.50 for
    text): not served, not listed. Through OpenRouter its ``usage.cost`` covers them: listed."""
    image = {"output_modalities": ["image", "text"]}
    direct = row("google/gemini-2.5-flash-image", provider="gemini", upstream_model="gemini-2.5-flash-image", **image)
    routed = row("google/gemini-3-pro-image", provider="openrouter", upstream_model="google/gemini-3-pro-image",
                 **image)
    speech = row("openai/gpt-4o-audio", provider="openai", output_modalities=["text", "audio"])
    ids = [m["id"] for m in build_snapshot([direct, routed, speech, row("openai/gpt-4o")])["models"]]
    assert ids == ["google/gemini-3-pro-image", "openai/gpt-4o"]
