"""Users and API keys: the writes shared by the ops CLI, the admin routes and the dev stack."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg

from .. import db
from ..auth import SCOPES, forget_key, generate_api_key
from ..errors import BadRequest, Conflict, NotFound
from ..money import ledger


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: UUID
    secret: str        # shown once, never stored
    prefix: str
    name: str


async def create_user(email: str | None = None, *, tier: str = "free",
                      welcome_credit: Decimal | None = None) -> UUID:
    """Create a user, their balance row and the welcome credit (reference ``welcome:<id>``) in one
    transaction: a user never exists without the credit they were promised."""
    if email is not None and ("@" not in email or len(email) > 320):
        raise BadRequest("invalid email address", param="email")
    try:
        async with db.transaction() as conn:
            cur = await conn.execute("INSERT INTO users (email, tier) VALUES (%s, %s) RETURNING id", (email, tier))
            row = await cur.fetchone()
            assert row is not None
            user_id: UUID = row[0]
            await conn.execute("INSERT INTO balances (user_id) VALUES (%s)", (user_id,))
            if welcome_credit and welcome_credit > 0:
                await ledger.credit_in(conn, user_id, welcome_credit, "welcome", f"welcome:{user_id}",
                                       description="welcome credit")
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict("a user with this email already exists", code="user_exists", param="email") from exc
    return user_id


async def create_api_key(user_id: UUID | str, name: str = "default", *, rpm: int | None = None,
                         spend_cap: Decimal | None = None, scope: str | None = None) -> NewKey:
    """A new key for the user; optional per-key limits: ``rpm`` (requests per minute, on top of the
    tier's) and ``spend_cap`` (USD the key may spend in total; enforced by the reserve statement).
    ``scope`` (``full`` | ``inference``) defaults to ``inference`` for a key with limits (a
    restricted key, which cannot be ``full``) and ``full`` otherwise."""
    if rpm is not None and rpm < 1:
        raise BadRequest("rpm must be at least 1", param="rpm")
    if spend_cap is not None and spend_cap < 0:
        raise BadRequest("spend_cap must not be negative", param="spend_cap")
    limited = rpm is not None or spend_cap is not None
    scope = scope or ("inference" if limited else "full")
    if scope not in SCOPES:
        raise BadRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    if limited and scope == "full":
        raise BadRequest("a key with its own rpm or spend cap is restricted: its scope must be 'inference'",
                         code="invalid_scope", param="scope")
    secret, key_hash, prefix = generate_api_key()
    row = await db.fetchone(
        "INSERT INTO api_keys (user_id, key_hash, prefix, name, rpm, spend_cap, scope) "
        "SELECT id, %s, %s, %s, %s, %s, %s FROM users WHERE id = %s RETURNING id",
        (key_hash, prefix, name, rpm, spend_cap, scope, user_id))
    if row is None:
        raise NotFound("user not found", code="user_not_found")
    return NewKey(key_id=row["id"], secret=secret, prefix=prefix, name=name)


async def revoke_api_key(key_id: UUID | str, *, user_id: UUID | str | None = None) -> bool:
    """Revoke a key (only the owner's when ``user_id`` is given). True if it was active."""
    row = await db.fetchone(
        "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL "
        "AND (%s::uuid IS NULL OR user_id = %s::uuid) RETURNING key_hash", (key_id, user_id, user_id))
    if row is None:
        return False
    forget_key(row["key_hash"])
    return True


async def get_user(user_id: UUID | str) -> dict[str, Any] | None:
    return await db.fetchone(
        "SELECT u.id, u.email, u.tier, u.stripe_customer_id, u.created_at, b.balance, b.reserved, "
        "b.balance - b.reserved AS available, b.period_start, b.period_requests "
        "FROM users u JOIN balances b ON b.user_id = u.id WHERE u.id = %s", (user_id,))
