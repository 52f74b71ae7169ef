"""Taking back credit that was paid for with money that went back: refunds (and refunds that
failed), disputes. Used by the Stripe webhook, inside the transaction of the event.

Every payment that granted credit is a ``stripe_payments`` row keyed by its PaymentIntent:
``amount_cents`` paid, ``credit`` granted. ``reconcile(pi)`` recomputes what must currently be
taken back from that credit and writes the difference as ledger rows, so the result depends only
on the recorded facts, never on the order the events arrived in:

- **refunds**, per charge: refunded cents = ``max(highest charge.amount_refunded seen - refunds
  known to have failed, refunds known and not failed)`` (either way Stripe words a failed refund,
  never more than was really refunded, and exact once every refund event has arrived). Taken back:
  ``credit * refunded / paid``, rounded with the one credit rule; ledger reference
  ``stripe:refund:<charge>:<refunded cents>`` (``…:f<failed cents>`` once a refund of the charge
  failed). A refund that failed gives its share back (a positive row).
- **disputes**: an open or lost dispute takes ``credit * disputed / paid`` of what refunds left;
  won (or an inquiry closed without a chargeback) gives it back. References
  ``stripe:dispute:<dispute>:<n>``, one per change.

Deductions are never skipped: they may take the available credit below zero (credit already
spent); the part below zero of a refund is recorded as ``stripe_refunds.shortfall``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from ..db import Connection, fetchall_in, fetchone_in
from ..money import ledger
from ..money.pricing import ZERO, exact, to_credit
from ..observability import count, logger

REFUND_GONE = ("failed", "canceled")          # a refund in these states returned no money
DISPUTE_RESTORING = frozenset({"won", "warning_closed", "prevented"})   # closed without a chargeback


def share(credit: Decimal, part_cents: int, whole_cents: int) -> Decimal:
    """``credit * part / whole`` (part clamped to [0, whole]), exact, then the one rounding rule."""
    if whole_cents <= 0:
        return ZERO
    with exact():
        return to_credit(credit * Decimal(min(max(part_cents, 0), whole_cents)) / Decimal(whole_cents))


@dataclass(slots=True)
class Reconciled:
    matched: bool = False          # a credited payment exists for the PaymentIntent
    user_id: UUID | None = None
    deducted: Decimal = ZERO       # refunds: newly taken back
    restored: Decimal = ZERO       # refunds that failed: given back
    shortfall: Decimal = ZERO
    dispute_taken: Decimal = ZERO
    dispute_restored: Decimal = ZERO


async def record_payment(conn: Connection, *, payment_intent: str, user_id: UUID, source: str, source_id: str,
                         amount_cents: int, currency: str, credit: Decimal, reference: str) -> Reconciled:
    """A payment that granted ``credit``; anything already refunded or disputed is applied now."""
    await conn.execute(
        "INSERT INTO stripe_payments (payment_intent, user_id, source, source_id, amount_cents, currency, credit, "
        "ledger_reference) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (payment_intent) DO NOTHING",
        (payment_intent, user_id, source, source_id, amount_cents, currency, credit, reference))
    return await reconcile(conn, payment_intent)


async def reconcile(conn: Connection, payment_intent: str) -> Reconciled:
    """Bring what is taken back from one payment's credit in line with its refunds and disputes."""
    result = Reconciled()
    pay = await fetchone_in(conn, "SELECT user_id, amount_cents, currency, credit FROM stripe_payments "
                                "WHERE payment_intent = %s FOR UPDATE", (payment_intent,))
    if pay is None:
        return result
    user_id = UUID(str(pay["user_id"]))
    result.matched, result.user_id = True, user_id
    refunded = await _reconcile_refunds(conn, payment_intent, pay, user_id, result)
    await _reconcile_disputes(conn, payment_intent, pay, user_id, refunded, result)
    if result.shortfall > 0:
        count("RefundShortfall")
        logger.warning("refund took available credit below zero", extra={
            "payment_intent": payment_intent, "user_id": str(result.user_id), "shortfall": str(result.shortfall)})
    return result


async def _reconcile_refunds(conn: Connection, payment_intent: str, pay: dict[str, Any], user_id: UUID,
                             result: Reconciled) -> Decimal:
    """Per charge of the payment; returns the credit taken back by refunds in total."""
    charges = await fetchall_in(conn, "SELECT charge_id, refunded_cents, deducted, shortfall FROM stripe_refunds "
                                    "WHERE payment_intent = %s ORDER BY charge_id FOR UPDATE", (payment_intent,))
    items = await fetchall_in(conn, """
        SELECT charge_id,
               COALESCE(sum(amount_cents) FILTER (WHERE status = ANY(%(gone)s::text[])), 0) AS failed,
               COALESCE(sum(amount_cents) FILTER (WHERE status <> ALL(%(gone)s::text[])), 0) AS known
        FROM stripe_refund_items WHERE charge_id = ANY(%(charges)s::text[]) GROUP BY charge_id""",
                            {"gone": list(REFUND_GONE), "charges": [c["charge_id"] for c in charges]})
    by_charge = {i["charge_id"]: (int(i["failed"]), int(i["known"])) for i in items}
    granted: Decimal = pay["credit"]
    for r in charges:
        failed, known = by_charge.get(r["charge_id"], (0, 0))
        effective = min(max(r["refunded_cents"] - failed, known, 0), pay["amount_cents"])
        others = sum((x["deducted"] for x in charges if x["charge_id"] != r["charge_id"]), ZERO)
        target = min(share(granted, effective, pay["amount_cents"]), max(granted - others, ZERO))
        delta = target - r["deducted"]
        if delta == 0:
            continue
        reference = f"stripe:refund:{r['charge_id']}:{effective}" + (f":f{failed}" if failed else "")
        what = f"Stripe refund of {payment_intent}" if delta > 0 else \
            f"Stripe refund of {payment_intent} failed: credit given back"
        applied = await ledger.credit_in(conn, user_id, -delta, "refund", reference, description=what,
                                         allow_negative=True)
        if not applied.applied:
            logger.warning("refund movement already recorded", extra={"reference": reference})
            continue
        if delta > 0:
            shortfall = min(delta, -applied.available) if applied.available < 0 else ZERO
            result.deducted += delta
        else:
            shortfall = -min(r["shortfall"], -delta)   # given back: first what had gone below zero
            result.restored -= delta
        await conn.execute("UPDATE stripe_refunds SET deducted = deducted + %s, shortfall = shortfall + %s, "
                           "updated_at = now() WHERE charge_id = %s", (delta, shortfall, r["charge_id"]))
        r["deducted"] += delta
        result.shortfall += max(shortfall, ZERO)
    if result.restored > 0:
        count("RefundFailedRestored")
    # Whose refunds these are (for the account's history and its deletion), once the payment is known.
    await conn.execute("UPDATE stripe_refunds SET user_id = %s WHERE payment_intent = %s AND user_id IS NULL",
                       (user_id, payment_intent))
    await conn.execute("UPDATE stripe_refund_items SET user_id = %s WHERE charge_id = ANY(%s::text[]) "
                       "AND user_id IS NULL", (user_id, [c["charge_id"] for c in charges]))
    return sum((r["deducted"] for r in charges), ZERO)


async def _reconcile_disputes(conn: Connection, payment_intent: str, pay: dict[str, Any], user_id: UUID,
                              refunded: Decimal, result: Reconciled) -> None:
    disputes = await fetchall_in(conn, "SELECT dispute_id, amount_cents, currency, status, closed, taken, movements "
                                     "FROM stripe_disputes WHERE payment_intent = %s ORDER BY dispute_id FOR UPDATE",
                               (payment_intent,))
    granted: Decimal = pay["credit"]
    for d in disputes:
        keep_taken = not d["closed"] or d["status"] not in DISPUTE_RESTORING
        whole = share(granted, d["amount_cents"], pay["amount_cents"]) if d["currency"] == pay["currency"] \
            else granted
        others = sum((x["taken"] for x in disputes if x["dispute_id"] != d["dispute_id"]), ZERO)
        target = min(whole, max(granted - refunded - others, ZERO)) if keep_taken else ZERO
        delta = target - d["taken"]
        if delta != 0:
            n = d["movements"] + 1
            what = f"Stripe dispute {d['dispute_id']} ({d['status']})" + ("" if delta > 0 else ": credit given back")
            applied = await ledger.credit_in(conn, user_id, -delta, "adjustment",
                                             f"stripe:dispute:{d['dispute_id']}:{n}", description=what,
                                             allow_negative=True)
            if applied.applied:
                d["taken"] += delta
                if delta > 0:
                    result.dispute_taken += delta
                else:
                    result.dispute_restored -= delta
                await conn.execute("UPDATE stripe_disputes SET taken = %s, movements = %s, updated_at = now() "
                                   "WHERE dispute_id = %s", (d["taken"], n, d["dispute_id"]))
    # The user of a dispute is known once its payment is: from then on an open dispute blocks them.
    await conn.execute("UPDATE stripe_disputes SET user_id = %s WHERE payment_intent = %s AND user_id IS NULL",
                       (user_id, payment_intent))
