"""``adapters.contract.Tokens`` is THE list of usage fields: what is derived from it stays derived."""

from __future__ import annotations

import inspect
from dataclasses import fields
from decimal import Decimal as D

import pytest

from gateway.adapters.contract import TOKEN_FIELDS, Tokens, Usage, openai_path
from gateway.adapters.shapes import usage_from_openai
from gateway.migrate import discover
from gateway.money import ledger
from gateway.money.holds import hold_for
from gateway.money.pricing import ZERO, ModelPrice


def settle_function() -> str:
    """The body of the newest migration's mlp_settle (the settle statement, migration 0010)."""
    texts = [m.sql for m in discover() if "FUNCTION mlp_settle(" in m.sql]
    assert texts, "no migration defines mlp_settle"
    return texts[-1].split("FUNCTION mlp_settle(", 1)[1]


def test_every_count_is_a_record_field_and_a_settled_column() -> None:
    record_fields = [f.name for f in fields(ledger.UsageRecord)]
    for name in TOKEN_FIELDS:
        assert name in record_fields
        assert name in ledger.RECORD_COLUMNS
        assert f"x.{name}," in settle_function() or f"x.{name}\n" in settle_function()
    assert "audio_tokens" in TOKEN_FIELDS  # the field added through the list (migration 0009)


def test_every_count_is_billed_by_provider_cost() -> None:
    params = inspect.signature(ModelPrice.provider_cost).parameters
    assert set(TOKEN_FIELDS) <= set(params)


def test_every_record_price_comes_from_model_price() -> None:
    prices = {f"{n}_price" for n in ledger.PRICE_FIELDS}
    assert {"prompt_price", "completion_price", "cache_read_price", "cache_write_price", "cache_write_1h_price",
            "audio_price", "request_price"} == prices
    record = ledger.UsageRecord(request_id="r", user_id="u", model_requested="m", status="ok")
    price = ModelPrice(prompt=D("1"), completion=D("2"), request=D("3"), cache_read=D("4"), cache_write=D("5"),
                       cache_write_1h=D("6"), audio=D("7"))
    record.price(price)
    assert [getattr(record, p) for p in sorted(prices)] == [D(7), D(4), D(6), D(5), D(2), D(1), D(3)]


def test_counts_round_trip_through_the_openai_usage_object() -> None:
    usage = Usage(**{name: i + 10 for i, name in enumerate(TOKEN_FIELDS)})
    rendered = usage.as_openai()
    back = usage_from_openai(rendered)
    assert back is not None
    for name in TOKEN_FIELDS:
        if openai_path(name) is not None:
            assert getattr(back, name) == getattr(usage, name), name
    assert rendered["total_tokens"] == usage.prompt_tokens + usage.completion_tokens


def test_zero_details_are_left_out_but_cached_tokens_is_always_there() -> None:
    assert Usage(prompt_tokens=5, completion_tokens=1).as_openai() == {
        "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 0}}


def test_record_count_takes_every_field() -> None:
    record = ledger.UsageRecord(request_id="r", user_id="u", model_requested="m", status="ok")
    tokens = Tokens(**{name: i + 1 for i, name in enumerate(TOKEN_FIELDS)})
    record.count(tokens)
    assert all(getattr(record, n) == getattr(tokens, n) for n in TOKEN_FIELDS)


PRICE = ModelPrice(prompt=D("0.000001"), completion=D("0.000004"), audio=D("0.00004"))


def test_audio_input_is_billed_at_the_audio_price() -> None:
    cost = PRICE.cost_of(Usage(prompt_tokens=1_000, completion_tokens=10, audio_tokens=600))
    assert cost == 400 * D("0.000001") + 600 * D("0.00004") + 10 * D("0.000004")
    # a count above the prompt is clamped (a provider's bad report never bills more than prompt_tokens)
    assert PRICE.cost_of(Usage(prompt_tokens=100, audio_tokens=10_000)) == 100 * D("0.00004")
    # no audio price: audio tokens are prompt tokens
    plain = ModelPrice(prompt=D("0.000001"), completion=D("0.000004"))
    assert plain.cost_of(Usage(prompt_tokens=100, audio_tokens=50)) == 100 * D("0.000001")


@pytest.mark.parametrize("audio", [False, True])
def test_the_hold_takes_the_audio_price_only_with_audio_input(audio: bool) -> None:
    hold = hold_for(PRICE, 1_000, 10, ZERO, audio=audio)
    assert hold == (1_000 * (D("0.00004") if audio else D("0.000001")) + 10 * D("0.000004"))
    # and it covers the worst charge: every prompt token billed as audio
    assert hold >= PRICE.cost_of(Usage(prompt_tokens=1_000, completion_tokens=10, audio_tokens=1_000 if audio else 0))
