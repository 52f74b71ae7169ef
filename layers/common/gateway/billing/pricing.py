"""Prices and charges. Money is ``Decimal``; floats never enter.

THE rounding rule (the only one): an amount of credit (a hold, a charge, a fee) is computed
exactly from per-token prices and then rounded ONCE, up (toward +infinity), to 1e-8 USD —
``to_credit()``. Per-token prices and provider costs are kept exact (NUMERIC(30,18)).
Rounding up means a hold always covers its worst case and we never under-charge a fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import ROUND_CEILING, Context, Decimal, localcontext
from typing import Any

CREDIT_QUANTUM = Decimal("0.00000001")
ZERO = Decimal(0)
ONE = Decimal(1)
# Arithmetic context for money: wide enough that products of token counts, 18-decimal prices and
# markups are exact (the default context keeps only 28 significant digits and rounds half-even,
# which could drop a sub-1e-8 remainder before the ceiling is applied).
_EXACT = Context(prec=100)


def _no_float(*values: Any) -> None:
    for v in values:
        if isinstance(v, float):
            raise TypeError("money must be Decimal, never float")


def to_credit(amount: Decimal) -> Decimal:
    """Round an exact amount to credit precision (1e-8 USD), toward +infinity."""
    if not isinstance(amount, Decimal):
        raise TypeError("amount must be a Decimal")
    return amount.quantize(CREDIT_QUANTUM, rounding=ROUND_CEILING, context=_EXACT)


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


@dataclass(frozen=True, slots=True)
class ModelPrice:
    prompt: Decimal
    completion: Decimal
    request: Decimal = ZERO
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None

    def __post_init__(self) -> None:
        _no_float(*(getattr(self, f.name) for f in fields(self)))

    def provider_cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                      cache_write_tokens: int = 0) -> Decimal:
        """Exact provider cost. ``cached_tokens`` (read from the prompt cache) and
        ``cache_write_tokens`` (written to it) are parts of ``prompt_tokens`` billed at the cache
        read / write prices where the model has them."""
        cached = max(0, min(cached_tokens, prompt_tokens))
        written = max(0, min(cache_write_tokens, prompt_tokens - cached))
        read_price = self.cache_read if self.cache_read is not None else self.prompt
        write_price = self.cache_write if self.cache_write is not None else self.prompt
        with localcontext(_EXACT):
            return (Decimal(prompt_tokens - cached - written) * self.prompt + Decimal(cached) * read_price
                    + Decimal(written) * write_price + Decimal(completion_tokens) * self.completion
                    + self.request)


def charge_for(cost: Decimal, markup: Decimal, *, byok: bool = False, byok_fee: Decimal = ZERO) -> Decimal:
    """What the user pays for a provider cost: cost x (1 + markup), or only the platform fee on BYOK."""
    _no_float(cost, markup, byok_fee)
    if cost <= 0:
        return ZERO
    with localcontext(_EXACT):
        if byok:
            return to_credit(cost * byok_fee)
        return to_credit(cost * (ONE + markup))


def hold_for(price: ModelPrice, prompt_tokens_estimate: int, max_output_tokens: int, markup: Decimal,
             *, byok: bool = False, byok_fee: Decimal = ZERO) -> Decimal:
    """Worst-case charge reserved before the upstream call: the whole prompt at the highest of the
    prompt, cache-read and cache-write prices."""
    worst = max(price.provider_cost(prompt_tokens_estimate, max_output_tokens, 0),
                price.provider_cost(prompt_tokens_estimate, max_output_tokens, prompt_tokens_estimate),
                price.provider_cost(prompt_tokens_estimate, max_output_tokens, 0, prompt_tokens_estimate))
    return charge_for(worst, markup, byok=byok, byok_fee=byok_fee)
