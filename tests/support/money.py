"""A user's money after in-process requests, read from the database: usage records, the balance
(checked equal to the sum of the ledger) and open reservations."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from gateway import db
from gateway.money import ledger


async def money_state(user_id: Any) -> dict[str, Any]:
    """``{"usage": [records], "balance": Decimal, "reservations": [rows]}``; asserts balance == sum(ledger)."""
    usage = await db.fetchall("SELECT * FROM usage_records WHERE user_id = %s ORDER BY id", (user_id,))
    entries = await db.fetchall("SELECT amount FROM ledger_entries WHERE user_id = %s", (user_id,))
    reservations = await db.fetchall("SELECT * FROM reservations WHERE user_id = %s", (user_id,))
    balance = await ledger.get_balance(user_id)
    assert balance is not None
    assert balance["balance"] == sum((e["amount"] for e in entries), Decimal(0))
    return {"usage": usage, "balance": balance["balance"], "reservations": reservations}


async def one_record(user_id: Any, status: str = "ok") -> dict[str, Any]:
    """The user's only usage record (no reservation left open), with ``status``."""
    state = await money_state(user_id)
    assert len(state["usage"]) == 1, state["usage"]
    assert state["reservations"] == []
    rec = state["usage"][0]
    assert rec["status"] == status
    return rec
