"""How amounts of credit appear in JSON: exact decimal strings with 8 places (``"9.50000000"``),
never floats (NUMERIC(20,8) in the database, ``Decimal`` in Python)."""

from __future__ import annotations

from decimal import Decimal

from ..billing.pricing import CREDIT_QUANTUM


def money(amount: Decimal | int | None) -> str | None:
    if amount is None:
        return None
    return format(Decimal(amount).quantize(CREDIT_QUANTUM), "f")
