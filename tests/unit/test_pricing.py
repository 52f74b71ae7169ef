"""THE rounding rule, provider cost, the user's charge and the hold (Decimal only, floats refused)."""

from __future__ import annotations

import itertools
from decimal import ROUND_CEILING, Context, Decimal
from typing import Any

import pytest

from gateway.catalog import registry
from gateway.money.holds import hold_for
from gateway.money.pricing import (
    CREDIT_QUANTUM,
    ZERO,
    LongContextPrice,
    ModelPrice,
    charge_for,
    parse_price,
    to_credit,
)

D = Decimal
EXACT = Context(prec=200)


def exact_ceil(amount: Decimal) -> Decimal:
    """Reference implementation of the rule, in a context far wider than any amount we use."""
    return amount.quantize(CREDIT_QUANTUM, rounding=ROUND_CEILING, context=EXACT)


# ----------------------------------------------------------------------------------- rounding rule
@pytest.mark.parametrize(("amount", "expected"), [
    ("0", "0E-8"),
    ("0.00000001", "0.00000001"),
    ("0.000000001", "0.00000001"),            # any remainder rounds UP
    ("0.0000000100000000001", "0.00000002"),
    ("0.00000001999999999", "0.00000002"),
    ("1.5", "1.50000000"),
    ("12.345678901", "12.34567891"),
    ("-0.000000015", "-0.00000001"),          # toward +infinity, also for negatives
    ("99999999999.999999999", "100000000000.00000000"),
])
def test_to_credit_ceils_to_1e8(amount: str, expected: str) -> None:
    result = to_credit(D(amount))
    assert result == D(expected)
    assert result.as_tuple().exponent == -8


def test_to_credit_is_idempotent_and_monotonic() -> None:
    values = [D(n) / D(10**k) for n in (0, 1, 3, 7, 10, 999, 123456789) for k in (0, 6, 8, 9, 12, 20)]
    for v in values:
        assert to_credit(to_credit(v)) == to_credit(v)
        assert to_credit(v) >= v
        assert to_credit(v) - v < CREDIT_QUANTUM
    ordered = sorted(values)
    rounded = [to_credit(v) for v in ordered]
    assert rounded == sorted(rounded)


# ----------------------------------------------------------------------------------- provider cost
GPT4O = ModelPrice(prompt=D("0.0000025"), completion=D("0.00001"), cache_read=D("0.00000125"))


def test_provider_cost_plain() -> None:
    assert GPT4O.provider_cost(1000, 500) == D("0.0075")
    assert GPT4O.provider_cost(0, 0) == 0


def test_provider_cost_with_cached_tokens() -> None:
    # 600 uncached prompt tokens at 2.5e-6 + 400 cached at 1.25e-6 + 500 completion at 1e-5
    assert GPT4O.provider_cost(1000, 500, 400) == D("0.0015") + D("0.0005") + D("0.005")
    # cached tokens are part of the prompt: never more than the prompt, never negative
    assert GPT4O.provider_cost(1000, 0, 5000) == GPT4O.provider_cost(1000, 0, 1000) == D("0.00125")
    assert GPT4O.provider_cost(1000, 0, -5) == GPT4O.provider_cost(1000, 0, 0)


def test_provider_cost_without_cache_price_bills_cached_at_prompt_price() -> None:
    llama = ModelPrice(prompt=D("0.00000013"), completion=D("0.0000004"))
    assert llama.provider_cost(1000, 100, 900) == llama.provider_cost(1000, 100, 0) == D("0.00017")


def test_provider_cost_bills_cache_writes_by_ttl() -> None:
    haiku = ModelPrice(prompt=D("0.0000008"), completion=D("0.000004"), cache_read=D("0.00000008"),
                       cache_write=D("0.000001"), cache_write_1h=D("0.0000016"))
    # 1000 prompt tokens: 200 written with the 1-hour TTL, 100 with 5 minutes, 700 plain
    assert haiku.provider_cost(1000, 0, 0, 300, 200) == D(700) * D("0.0000008") + D(100) * D("0.000001") + \
        D(200) * D("0.0000016")
    # 1-hour writes are part of the writes, the writes part of the prompt
    assert haiku.provider_cost(1000, 0, 0, 100, 500) == haiku.provider_cost(1000, 0, 0, 100, 100)
    # no 1-hour price: billed as a cache write
    plain = ModelPrice(prompt=D("0.000001"), completion=D("0.000002"), cache_write=D("0.00000125"))
    assert plain.provider_cost(100, 0, 0, 100, 100) == plain.provider_cost(100, 0, 0, 100) == D("0.000125")


def test_provider_cost_includes_request_price() -> None:
    p = ModelPrice(prompt=D("0.000001"), completion=D("0.000002"), request=D("0.005"))
    assert p.provider_cost(10, 10) == D("0.00503")
    assert p.provider_cost(0, 0) == D("0.005")


def test_provider_cost_is_exact_beyond_default_decimal_precision() -> None:
    # A price with more significant digits than the default 28-digit context keeps.
    price = D("0.0000000100000000000000000000000000001")
    p = ModelPrice(prompt=price, completion=price)
    cost = p.provider_cost(3, 0)
    assert cost == EXACT.multiply(D(3), price)
    # ... and the tiny remainder above 3e-8 is not lost before the ceiling.
    assert charge_for(cost, ZERO) == D("0.00000004")
    assert to_credit(cost) == D("0.00000004")


# ----------------------------------------------------------------------------------- charge
def test_charge_applies_markup_and_rounds_once_up() -> None:
    assert charge_for(D("0.0075"), D("0.10")) == D("0.00825")
    assert charge_for(D("0.0075"), D("0")) == D("0.0075")
    assert charge_for(D("0.0075"), D("0.05")) == D("0.007875")
    # 1e-12 of cost still costs the smallest unit of credit
    assert charge_for(D("0.000000000001"), D("0.10")) == D("0.00000001")
    # rounding happens once on the product, not on the cost and again on the markup
    cost = D("0.000000015")  # rounding it first would give 2e-8 -> 2.2e-8 -> 3e-8
    assert charge_for(cost, D("0.10")) == exact_ceil(cost * D("1.10")) == D("0.00000002")


def test_charge_byok_is_only_the_platform_fee() -> None:
    assert charge_for(D("0.0075"), D("0.10"), byok=True, byok_fee=D("0.05")) == D("0.000375")
    assert charge_for(D("0.0075"), D("0.10"), byok=True, byok_fee=ZERO) == 0
    assert charge_for(D("0.0000001"), D("0.10"), byok=True, byok_fee=D("0.05")) == D("0.00000001")


@pytest.mark.parametrize("cost", [D("0"), D("-0.5"), D("-0.000000001")])
def test_charge_for_nothing_is_zero(cost: Decimal) -> None:
    assert charge_for(cost, D("0.10")) == 0
    assert charge_for(cost, D("0.10"), byok=True, byok_fee=D("0.05")) == 0


def test_charge_matches_reference_on_a_grid() -> None:
    costs = [D(n) * D(10) ** -k for n in (1, 7, 15, 333, 123456789) for k in (4, 8, 9, 12, 18)]
    markups = [D("0"), D("0.05"), D("0.10"), D("0.333333"), D("1.5")]
    for cost, markup in itertools.product(costs, markups):
        charge = charge_for(cost, markup)
        assert charge == exact_ceil(cost * (1 + markup))
        assert charge >= cost * (1 + markup)
        assert charge.as_tuple().exponent == -8


# ----------------------------------------------------------------------------------- hold
PRICES = [
    GPT4O,
    ModelPrice(prompt=D("0.000015"), completion=D("0.000075"), cache_read=D("0.0000015")),   # opus
    ModelPrice(prompt=D("0.00000002"), completion=D("0.00000003")),                          # llama 8b
    ModelPrice(prompt=D("0"), completion=D("0")),                                            # :free
    ModelPrice(prompt=D("0.000000123456789012"), completion=D("0.000000987654321098"),
               request=D("0.000123456789"), cache_read=D("0.000000012345678901")),
    # a cache price above the prompt price must not let cached tokens exceed the hold
    ModelPrice(prompt=D("0.000001"), completion=D("0.000002"), cache_read=D("0.00000125")),
    # Anthropic: 5-minute writes at 1.25x, 1-hour writes at 2x, a per-image and a request fee
    ModelPrice(prompt=D("0.000003"), completion=D("0.000015"), cache_read=D("0.0000003"),
               cache_write=D("0.00000375"), cache_write_1h=D("0.000006"), image=D("0.001"), request=D("0.0001")),
]
MARKUPS = [D("0"), D("0.05"), D("0.10"), D("0.333333")]


def test_hold_covers_every_possible_charge_of_the_request() -> None:
    checked = 0
    for price, markup, byok in itertools.product(PRICES, MARKUPS, (False, True)):
        fee = D("0.05")
        for prompt_est, max_out in itertools.product((0, 1, 7, 1000, 123457), (0, 1, 4096, 100000)):
            hold = hold_for(price, prompt_est, max_out, markup, byok=byok, byok_fee=fee)
            assert hold >= 0
            assert hold.as_tuple().exponent == -8 or hold == 0
            for prompt in {0, prompt_est // 3, prompt_est}:
                for completion in {0, max_out // 2, max_out}:
                    for cached, written, written_1h in {(0, 0, 0), (prompt // 2, 0, 0), (prompt, 0, 0),
                                                        (0, prompt, 0), (0, prompt, prompt), (prompt // 3, prompt // 3,
                                                                                             prompt // 3)}:
                        cost = price.provider_cost(prompt, completion, cached, written, written_1h)
                        charge = charge_for(cost, markup, byok=byok, byok_fee=fee)
                        assert charge <= hold, (price, markup, byok, prompt_est, max_out, prompt, completion,
                                                cached, written, written_1h)
                        checked += 1
    assert checked > 10_000


def test_hold_counts_images_at_their_fee_and_the_most_expensive_prompt_class() -> None:
    sonnet = PRICES[-1]
    assert sonnet.max_prompt_price == D("0.000006")  # a prompt token may be a 1-hour cache write
    hold = hold_for(sonnet, 1000, 100, D("0.10"), images=3)
    worst = D(1000) * D("0.000006") + D(100) * D("0.000015") + 3 * D("0.001") + D("0.0001")
    assert hold == charge_for(worst, D("0.10"))


def test_hold_equals_worst_case_charge() -> None:
    hold = hold_for(GPT4O, 1000, 500, D("0.10"))
    assert hold == charge_for(GPT4O.provider_cost(1000, 500, 0), D("0.10")) == D("0.00825")
    assert hold_for(GPT4O, 1000, 500, D("0.10"), byok=True, byok_fee=D("0.05")) == D("0.000375")
    assert hold_for(ModelPrice(prompt=ZERO, completion=ZERO), 10**6, 10**5, D("0.10")) == 0


# ----------------------------------------------------------------------------------- parsing / floats
@pytest.mark.parametrize(("raw", "expected"), [
    ("0.00000015", D("0.00000015")),
    ("0", D("0")),
    (3, D("3")),
    (D("0.0000025"), D("0.0000025")),
    ("1e-7", D("1e-7")),
    (None, None),
    ("", None),
])
def test_parse_price_is_exact(raw: str | int | Decimal | None, expected: Decimal | None) -> None:
    assert parse_price(raw) == expected
    if expected is not None:
        assert isinstance(parse_price(raw), Decimal)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-inf"])
def test_parse_price_refuses_non_finite(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_price(raw)


def test_floats_are_refused_everywhere() -> None:
    with pytest.raises(TypeError):
        parse_price(0.0000025)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_credit(0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ModelPrice(prompt=0.0000025, completion=D("0.00001"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ModelPrice(prompt=D("0.0000025"), completion=D("0.00001"), cache_read=1e-6)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        charge_for(0.01, D("0.10"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        charge_for(0.0, D("0.10"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        charge_for(D("0.01"), 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        charge_for(D("0.01"), D("0.1"), byok=True, byok_fee=0.05)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hold_for(GPT4O, 10, 10, 0.1)  # type: ignore[arg-type]


def test_cache_writes_are_billed_at_the_cache_write_price() -> None:
    price = ModelPrice(prompt=Decimal("0.000003"), completion=Decimal("0.000015"),
                       cache_read=Decimal("0.0000003"), cache_write=Decimal("0.00000375"))
    # 100 prompt tokens: 20 read from the cache, 30 written to it, 50 plain; 10 output tokens
    cost = price.provider_cost(100, 10, cached_tokens=20, cache_write_tokens=30)
    assert cost == (50 * Decimal("0.000003") + 20 * Decimal("0.0000003") + 30 * Decimal("0.00000375")
                    + 10 * Decimal("0.000015"))
    # cache writes can never exceed the uncached part of the prompt
    assert price.provider_cost(10, 0, cached_tokens=8, cache_write_tokens=50) == (
        8 * Decimal("0.0000003") + 2 * Decimal("0.00000375"))
    # without a cache-write price they cost the prompt price
    plain = ModelPrice(prompt=Decimal("0.000003"), completion=Decimal("0.000015"))
    assert plain.provider_cost(100, 10, cache_write_tokens=30) == plain.provider_cost(100, 10)


def test_hold_covers_a_prompt_written_entirely_to_the_cache() -> None:
    price = ModelPrice(prompt=Decimal("0.000003"), completion=Decimal("0.000015"), cache_write=Decimal("0.00000375"))
    markup = Decimal("0.10")
    hold = hold_for(price, 1000, 100, markup)
    for written in (0, 500, 1000):
        assert charge_for(price.provider_cost(1000, 100, 0, written), markup) <= hold
    assert charge_for(price.provider_cost(1000, 100, 0, 1000), markup) == hold


def test_a_long_context_price_bills_and_holds_a_prompt_past_its_threshold() -> None:
    """A call past the threshold is billed entirely at the long-context prices; a hold whose prompt
    bound is past it covers that, one within it needs not."""
    base = ModelPrice(prompt=D("0.00000125"), completion=D("0.00001"), cache_read=D("0.00000031"))
    long = ModelPrice(prompt=D("0.0000025"), completion=D("0.000015"), cache_read=D("0.00000062"))
    price = LongContextPrice(prompt=base.prompt, completion=base.completion, cache_read=base.cache_read,
                             threshold=200_000, long=long)
    assert price.provider_cost(200_000, 10) == base.provider_cost(200_000, 10)
    assert price.provider_cost(200_001, 10, 5) == long.provider_cost(200_001, 10, 5)
    for bound in (200_001, 1_048_576):
        hold = hold_for(price, bound, 1000, D("0.1"))
        for prompt in (200_001, bound):
            assert charge_for(price.provider_cost(prompt, 1000), D("0.1")) <= hold
    assert hold_for(price, 200_000, 1000, D("0.1")) == hold_for(base, 200_000, 1000, D("0.1"))


def test_a_long_context_tier_multiplies_every_prompt_class_price_and_the_output_price() -> None:
    base = ModelPrice(prompt=D("0.000002"), completion=D("0.000012"), cache_read=D("0.0000002"),
                      cache_write=D("0.0000025"), audio=D("0.000003"))
    price = LongContextPrice.tiered(base, 200_000, D(2), D("1.5"))
    assert price.for_prompt(200_000) is price and price.for_prompt(10) is price
    long = price.for_prompt(200_001)
    assert (long.prompt, long.completion, long.cache_read, long.cache_write, long.audio) == (
        D("0.000004"), D("0.000018"), D("0.0000004"), D("0.000005"), D("0.000006"))
    assert long.cache_write_1h is None and base.for_prompt(10**9) is base  # a plain price has no tier


def _row(provider: str, upstream: str, tiers: Any = None) -> dict[str, Any]:
    return {"id": f"x/{upstream}", "name": upstream, "provider": provider, "upstream_model": upstream,
            "owned_by": "x", "context_length": 1_048_576, "max_completion_tokens": 65_536,
            "prompt_price": D("0.00000125"), "completion_price": D("0.00001"), "request_price": D(0),
            "input_cache_read_price": D("0.000000125"), "input_cache_write_price": None, "image_price": None,
            "is_free": False, "markup": None, "input_modalities": ["text"], "output_modalities": ["text"],
            "pricing_extra": None, "price_tiers": tiers}


@pytest.mark.parametrize(("provider", "upstream", "threshold"), [
    ("gemini", "gemini-2.5-pro", 200_000), ("gemini", "gemini-3.1-pro-preview", 200_000),
    ("openai", "gpt-5.4", 272_000), ("openai", "gpt-5.4-pro", 272_000)])
def test_direct_models_with_a_long_context_premium_bill_it(provider: str, upstream: str, threshold: int) -> None:
    price = registry._row_to_model(_row(provider, upstream)).price
    assert price.provider_cost(threshold, 1) == D("0.00000125") * threshold + D("0.00001")
    assert price.provider_cost(threshold + 1, 1, 1) == (
        D("0.0000025") * threshold + D("0.00000025") + D("0.000015"))  # 2x input and cache, 1.5x output


@pytest.mark.parametrize(("provider", "upstream", "tiers"), [
    ("gemini", "gemini-2.5-flash", None), ("openai", "gpt-5.4-mini", None), ("openrouter", "gemini-2.5-pro", None),
    ("gemini", "gemini-2.5-pro", [{"min_prompt_tokens": 200_000}])])
def test_other_models_have_one_price(provider: str, upstream: str, tiers: Any) -> None:
    price = registry._row_to_model(_row(provider, upstream, tiers)).price
    assert price.provider_cost(500_000, 1) == D("0.00000125") * 500_000 + D("0.00001")
