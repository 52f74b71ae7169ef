"""Prices and charges. Money is ``Decimal``; floats never enter.

THE rounding rule (the only one): an amount of credit (a hold, a charge, a fee) is computed
exactly from per-token prices and then rounded ONCE, up (toward +infinity), to 1e-8 USD —
``to_credit()``. Per-token prices and provider costs are kept exact (NUMERIC(30,18)).
Rounding up means a hold always covers its worst case and we never under-charge a fraction.
"""

from __future__ import annotations

import operator
from contextlib import AbstractContextManager
from dataclasses import fields, replace
from decimal import ROUND_CEILING, Context, Decimal, localcontext
from typing import Any

from ..adapters.contract import TOKEN_FIELDS, Tokens
from ..records import frozen

CREDIT_QUANTUM = Decimal("0.00000001")
ZERO = Decimal(0)
ONE = Decimal(1)
# THE arithmetic context for money (the only one in the code): wide enough that products of token
# counts, 18-decimal prices, discounts, markups and refund shares are exact (the default context
# keeps only 28 significant digits and rounds half-even, which could drop a sub-1e-8 remainder
# before the ceiling is applied). ``with exact():`` around any money arithmetic.
EXACT = Context(prec=100)
# EXACT's own operations, for the hot path (``provider_cost``, ``charge_for``): the same arithmetic as
# under ``with exact():``, without entering a local context per call.
_mul, _add = EXACT.multiply, EXACT.add


def exact() -> AbstractContextManager[Context]:
    """``with exact(): ...`` — money arithmetic in :data:`EXACT`."""
    return localcontext(EXACT)


def _no_float(*values: Any) -> None:
    for v in values:
        if isinstance(v, float):
            raise TypeError("money must be Decimal, never float")


def to_credit(amount: Decimal) -> Decimal:
    """Round an exact amount to credit precision (1e-8 USD), toward +infinity."""
    if not isinstance(amount, Decimal):
        raise TypeError("amount must be a Decimal")
    return amount.quantize(CREDIT_QUANTUM, rounding=ROUND_CEILING, context=EXACT)


def parse_price(value: str | int | Decimal | None) -> Decimal | None:
    """Parse a per-token price string exactly (OpenRouter sends strings like "0.00000015")."""
    if value is None or value == "":
        return None
    if isinstance(value, float):
        raise TypeError("prices must not be floats")
    d = Decimal(str(value))
    if not d.is_finite():
        raise ValueError(f"invalid price {value!r}")
    return d


# Anthropic bills a 1-hour prompt-cache write at 2x the base input price (a 5-minute write at
# 1.25x, which the catalogue carries as ``input_cache_write_price``).
ANTHROPIC_CACHE_WRITE_1H_MULTIPLIER = Decimal(2)


@frozen
class ModelPrice:
    """A model's unit prices, as Decimals (never floats): tokens, requests, cache, images, audio."""

    prompt: Decimal
    completion: Decimal
    request: Decimal = ZERO
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None  # 1-hour cache writes (Anthropic); None: not offered
    image: Decimal = ZERO                  # per input image on top of its tokens (OpenRouter ``image``)
    audio: Decimal | None = None           # per input audio token (catalogue ``pricing_extra.audio``); None: unknown

    def __post_init__(self) -> None:
        _no_float(*(getattr(self, f.name) for f in fields(self)))

    @property
    def max_prompt_price(self) -> Decimal:
        """The most a prompt token can cost: plain, read from or written to the prompt cache
        (audio input not counted: see :meth:`prompt_bound_price`)."""
        return max(p for p in (self.prompt, self.cache_read, self.cache_write, self.cache_write_1h) if p is not None)

    def prompt_bound_price(self, *, audio: bool = False) -> Decimal:
        """The most a prompt token of a request can cost: :attr:`max_prompt_price`, or the audio
        price when higher and the request carries audio input."""
        if audio and self.audio is not None:
            return max(self.max_prompt_price, self.audio)
        return self.max_prompt_price

    def provider_cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                      cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0, audio_tokens: int = 0) -> Decimal:
        """Exact provider cost. ``cached_tokens`` (read from the prompt cache) and
        ``cache_write_tokens`` (written to it; ``cache_write_1h_tokens`` of them with the 1-hour
        TTL) are parts of ``prompt_tokens`` billed at the cache read / write prices where the model
        has them; ``audio_tokens`` (audio input, of the rest) at the audio price where it has one.
        The request fee is part of every call's cost, whatever the token counts."""
        cached = max(0, min(cached_tokens, prompt_tokens))
        written = max(0, min(cache_write_tokens, prompt_tokens - cached))
        written_1h = max(0, min(cache_write_1h_tokens, written))
        audio = max(0, min(audio_tokens, prompt_tokens - cached - written))
        read_price = self.cache_read if self.cache_read is not None else self.prompt
        write_price = self.cache_write if self.cache_write is not None else self.prompt
        write_1h_price = self.cache_write_1h if self.cache_write_1h is not None else write_price
        audio_price = self.audio if self.audio is not None else self.prompt
        # In EXACT, term by term in the order of the expression it stands for (the same operations in
        # the same context, so the same result, exponent included), without a ``localcontext`` per call:
        # prompt x price + cached x read + (written - 1h) x write + 1h x write_1h + audio x audio
        # + completion x price + request
        mul, add = _mul, _add
        total = add(mul(Decimal(prompt_tokens - cached - written - audio), self.prompt),
                    mul(Decimal(cached), read_price))
        total = add(total, mul(Decimal(written - written_1h), write_price))
        total = add(total, mul(Decimal(written_1h), write_1h_price))
        total = add(total, mul(Decimal(audio), audio_price))
        total = add(total, mul(Decimal(completion_tokens), self.completion))
        return add(total, self.request)

    def cost_of(self, tokens: Tokens) -> Decimal:
        """:meth:`provider_cost` of every count of ``tokens`` (``adapters.contract.TOKEN_FIELDS``)."""
        return self.provider_cost(*_cost_counts(tokens))

    def for_prompt(self, prompt_tokens: int) -> ModelPrice:
        """The prices a call with ``prompt_tokens`` is billed at: these (a long-context tier bills
        past its threshold at others, :class:`LongContextPrice`)."""
        return self


@frozen
class LongContextPrice(ModelPrice):
    """A model's prices with a long-context tier (Gemini Pro past 200k prompt tokens, GPT-5.4 past
    272k): a call whose prompt is over ``threshold`` tokens is billed ENTIRELY at ``long``, every
    token, output and cache included. A hold uses :meth:`for_prompt` of its prompt bound
    (``money.holds.hold_for``): a prompt within the bound may be billed at the long prices."""

    threshold: int = 0
    long: ModelPrice | None = None

    @classmethod
    def tiered(cls, base: ModelPrice, threshold: int, prompt_factor: Decimal,
               completion_factor: Decimal) -> LongContextPrice:
        """``base`` with a tier past ``threshold`` at ``prompt_factor`` times every prompt-class
        price (plain, cache reads and writes, audio) and ``completion_factor`` times the output
        price (the provider's published multipliers; exact, rounded nowhere)."""
        def times(value: Decimal | None) -> Decimal | None:
            return None if value is None else value * prompt_factor

        with exact():
            long = replace(base, prompt=base.prompt * prompt_factor, completion=base.completion * completion_factor,
                           cache_read=times(base.cache_read), cache_write=times(base.cache_write),
                           cache_write_1h=times(base.cache_write_1h), audio=times(base.audio))
        return cls(**{f.name: getattr(base, f.name) for f in fields(ModelPrice)}, threshold=threshold, long=long)

    def for_prompt(self, prompt_tokens: int) -> ModelPrice:
        return self.long if self.long is not None and prompt_tokens > self.threshold else self

    def provider_cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                      cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0, audio_tokens: int = 0) -> Decimal:
        # ``ModelPrice.provider_cost`` named, not ``super()``: a slotted dataclass is a new class,
        # which zero-argument super() does not see
        return ModelPrice.provider_cost(self.for_prompt(prompt_tokens), prompt_tokens, completion_tokens, cached_tokens,
                                        cache_write_tokens, cache_write_1h_tokens, audio_tokens)


def charge_for(cost: Decimal, markup: Decimal, *, byok: bool = False, byok_fee: Decimal = ZERO) -> Decimal:
    """What the user pays for a provider cost: cost x (1 + markup), or only the platform fee on BYOK."""
    _no_float(cost, markup, byok_fee)
    if cost <= 0:
        return ZERO
    # in EXACT (as ``with exact():``): cost x fee, or cost x (1 + markup)
    if byok:
        return to_credit(_mul(cost, byok_fee))
    return to_credit(_mul(cost, _add(ONE, markup)))



# ``provider_cost``'s token-count arguments, in its parameter order, read off a ``Tokens`` at once
# (every name of ``TOKEN_FIELDS``: checked here, at import).
_COST_ARGS: tuple[str, ...] = ModelPrice.provider_cost.__code__.co_varnames[1:1 + len(TOKEN_FIELDS)]
if set(_COST_ARGS) != set(TOKEN_FIELDS):  # pragma: no cover - a new count needs provider_cost to bill it
    raise RuntimeError(f"provider_cost's counts {_COST_ARGS} are not TOKEN_FIELDS {TOKEN_FIELDS}")
_cost_counts = operator.attrgetter(*_COST_ARGS)
