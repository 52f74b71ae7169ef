"""Holds: the credit reserved before an upstream call, a true upper bound of its charge.

A hold is the worst case of one model for a request: ``prompt_tokens`` (an upper bound of the
prompt: one token per UTF-8 byte of everything forwarded plus each image at the model's maximum,
capped at its context length, see ``adapters.tokens``) at the highest prompt-class price (plain,
cache read or write), the output limit SENT upstream at the completion price, the per-image and
per-request fees, x (1 + markup), rounded once, up (``pricing.charge_for``). The chat pipeline
holds the maximum over every candidate model of a request. See docs/money.md.
"""

from __future__ import annotations

from decimal import Decimal

from .pricing import EXACT, ZERO, ModelPrice, charge_for


def hold_for(price: ModelPrice, prompt_tokens: int, max_output_tokens: int, markup: Decimal,
             *, images: int = 0, audio: bool = False, byok: bool = False, byok_fee: Decimal = ZERO) -> Decimal:
    """Worst-case charge reserved before the upstream call: ``prompt_tokens`` (an upper bound of
    the prompt, see ``adapters.tokens``) at the highest prompt-class price (the audio price too
    when the request carries ``audio`` input), ``max_output_tokens`` (the output limit sent
    upstream, plus what else is billed as output, e.g. a ``prediction``) at the completion price,
    the per-image and per-request fees — at the long-context prices when ``prompt_tokens`` is past
    their threshold (a prompt within the bound may be billed at them)."""
    price = price.for_prompt(prompt_tokens)  # a long-context tier (pricing.LongContextPrice)
    # in EXACT (as ``with exact():``), term by term in this order:
    # prompt x bound price + output x completion price + images x image fee + request fee
    mul, add = EXACT.multiply, EXACT.add
    worst = add(mul(Decimal(prompt_tokens), price.prompt_bound_price(audio=audio)),
                mul(Decimal(max_output_tokens), price.completion))
    worst = add(add(worst, mul(Decimal(images), price.image)), price.request)
    return charge_for(worst, markup, byok=byok, byok_fee=byok_fee)
