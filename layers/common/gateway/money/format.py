"""How amounts of credit appear in JSON: exact decimal strings with 8 places (``"9.50000000"``),
never floats (NUMERIC(20,8) in the database, ``Decimal`` in Python). The OpenRouter-compatible
views answer JSON numbers, as OpenRouter does (its SDKs parse numbers); those are written from the
Decimal exactly (:func:`dumps_exact`), never through a float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, overload

from pydantic import Field, WithJsonSchema

from .pricing import CREDIT_QUANTUM

MONEY_PATTERN = r"^-?[0-9]+\.[0-9]{8}$"
# A response field holding what :func:`money` writes: USD as an exact decimal string, 8 places.
MoneyStr = Annotated[str, Field(pattern=MONEY_PATTERN, examples=["9.50000000"],
                                description="USD, an exact decimal string with 8 places")]
# A response field written by :func:`dumps_exact`: USD as an exact JSON number (OpenRouter's views).
ExactAmount = Annotated[Decimal, WithJsonSchema({"type": "number", "examples": [9.5],
                                                 "description": "USD, an exact JSON number (never via a float)"})]


@overload
def money(amount: Decimal | int) -> str: ...


@overload
def money(amount: None) -> None: ...


def money(amount: Decimal | int | None) -> str | None:
    if amount is None:
        return None
    return format(Decimal(amount).quantize(CREDIT_QUANTUM), "f")


def json_number(amount: Decimal) -> str:
    """An amount as an exact JSON number token (``Decimal("9.50000000")`` → ``9.5``), for the
    OpenRouter-compatible views whose clients parse numbers, not strings. Never via float."""
    if not amount.is_finite():
        raise ValueError("not a finite amount")
    text = format(Decimal(amount).quantize(CREDIT_QUANTUM).normalize(), "f")
    return "0" if text in ("-0", "0") else text


def dumps_exact(value: Any) -> str:
    """JSON text in which every ``Decimal`` is an exact number (:func:`json_number`); everything else
    as ``json.dumps`` writes it."""
    if isinstance(value, Decimal):
        return json_number(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps_exact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps_exact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
