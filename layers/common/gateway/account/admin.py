"""Operator actions behind the admin key (and reused by the ops CLI): create a user with the welcome
credit and an API key, grant or deduct credit with a reason and an idempotency reference, inspect a
user."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal
from uuid import UUID

from .. import db
from ..config import get_settings
from ..errors import BadRequest, Conflict, NotFound
from ..money import ledger
from ..money.format import money
from ..observability import logger
from . import byok, keys, usage, users
from .schema import CreatedUser, CreditGrant, LedgerEntry, User, UserDetail


async def create_user(*, email: str | None, tier: str = "free", welcome_credit: Decimal | None = None,
                      create_key: bool = True, key_name: str = "default", rpm: int | None = None,
                      spend_cap: Decimal | None = None) -> CreatedUser:
    tier = get_settings().known_tier(tier).name
    credit = get_settings().welcome_credit if welcome_credit is None else welcome_credit
    user_id = await users.create_user(email, tier=tier, welcome_credit=credit)
    user = await user_summary(user_id)
    key = await keys.create_with_secret(user_id, key_name, rpm=rpm, spend_cap=spend_cap) if create_key else None
    logger.info("admin created user", extra={"user_id": str(user_id), "tier": tier})
    return CreatedUser(user=user, api_key=key)


def ledger_reference(reference: str | None) -> str:
    """Admin grants live in their own namespace (``admin:...``), apart from request ids and Stripe ids."""
    if not reference:
        return f"admin:{uuid.uuid4()}"
    return reference if reference.startswith("admin:") else f"admin:{reference}"


async def grant(user_id: UUID, amount: Decimal, reason: str, reference: str | None = None, *,
                allow_negative: bool = False) -> CreditGrant:
    """Add (amount > 0, kind ``grant``) or deduct (amount < 0, kind ``adjustment``) credit, once per
    reference. A replay returns ``applied: false``; reusing a reference for a different grant is 409."""
    if amount == 0:
        raise BadRequest("amount must not be zero.", param="amount")
    ref = ledger_reference(reference)
    kind: Literal["grant", "adjustment"] = "grant" if amount > 0 else "adjustment"
    result = await ledger.credit(user_id, amount, kind, ref, description=reason, allow_negative=allow_negative)
    if not result.applied:
        prior = await db.fetchone("SELECT user_id, amount FROM ledger_entries WHERE reference = %s", (ref,))
        if prior is None or prior["user_id"] != user_id or prior["amount"] != amount:
            raise Conflict("This reference was already used for a different ledger entry.", param="reference",
                           code="reference_conflict")
    else:
        logger.info("admin credit", extra={"user_id": str(user_id), "amount": str(amount), "reference": ref})
    return CreditGrant(user_id=user_id, amount=money(amount), kind=kind, reference=ref, reason=reason,
                       applied=result.applied, balance=money(result.available), reserved=money(result.reserved),
                       total=money(result.balance))


async def user_summary(user_id: UUID | str) -> User:
    row = await db.fetchone(
        "SELECT u.id, u.email, u.tier, u.external_iss, u.external_sub, u.stripe_customer_id, u.created_at, "
        "b.balance, b.reserved "
        "FROM users u JOIN balances b ON b.user_id = u.id WHERE u.id = %s", (user_id,))
    if row is None:
        raise NotFound("User not found.", code="user_not_found")
    return User(id=row["id"], email=row["email"], tier=row["tier"], external_iss=row["external_iss"],
                external_sub=row["external_sub"], stripe_customer_id=row["stripe_customer_id"],
                created_at=row["created_at"], balance=money(row["balance"] - row["reserved"]),
                reserved=money(row["reserved"]), total=money(row["balance"]))


async def inspect(user_id: UUID) -> UserDetail:
    user = await user_summary(user_id)
    ledger_rows = await db.fetchall(
        "SELECT amount, kind, reference, description, created_at FROM ledger_entries WHERE user_id = %s "
        "ORDER BY created_at DESC, id DESC LIMIT 20", (user_id,))
    return UserDetail(
        **dict(user), api_keys=await keys.list_keys(user_id), provider_keys=await byok.list_for(user_id),
        usage_this_month=(await usage.summary(user_id, group_by="model")).total,
        recent_ledger_entries=[LedgerEntry(amount=money(r["amount"]), kind=r["kind"], reference=r["reference"],
                                           description=r["description"], created_at=r["created_at"])
                               for r in ledger_rows])
