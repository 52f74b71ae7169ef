"""API-key management for the caller's own keys: list, create (the secret is returned once), revoke.

Revocation takes effect at once in this container (its auth cache entry is dropped) and in every
other warm container within ``AUTH_CACHE_TTL_S`` seconds (default 5): cached lookups expire and
the next one sees ``revoked_at``.

Creation is rate limited per user (``KEY_CREATE_PER_HOUR``, a one-hour sliding window in Upstash)
and capped at ``MAX_KEYS_PER_USER`` active keys. Every key has a scope, shown in the listing:
``full`` or ``inference``. A key that has its own limits (rpm or spend cap) is always
``inference`` (a *restricted* key): it cannot create or revoke keys or change provider keys
(otherwise it could mint itself an unlimited sibling), and it sees only itself in the listing
(``auth.require_full_scope``, 403 ``insufficient_scope``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from .. import db, ratelimit
from ..config import get_settings
from ..errors import Conflict
from ..money.format import money
from ..observability import logger
from ..ratelimit import Decision
from . import users
from .schema import ApiKey, CreatedApiKey

KEY_COLUMNS = "id, name, prefix, created_at, last_used_at, revoked_at, rpm, spend_cap, spent, reserved, scope"
CREATE_WINDOW_S = 3600


def public_key(row: dict[str, Any]) -> ApiKey:
    """A key as its owner may see it: never the secret or its hash."""
    capped = row["spend_cap"] is not None
    return ApiKey(id=row["id"], name=row["name"], prefix=row["prefix"],
                  status="revoked" if row["revoked_at"] else "active", created_at=row["created_at"],
                  last_used_at=row["last_used_at"], revoked_at=row["revoked_at"], scope=row["scope"], rpm=row["rpm"],
                  spend_cap=money(row["spend_cap"]) if capped else None,
                  spent=money(row["spent"]) if capped else None,
                  reserved=money(row["reserved"]) if capped else None)


async def list_keys(user_id: UUID | str, *, include_revoked: bool = True,
                    only_key: UUID | None = None) -> list[ApiKey]:
    rows = await db.fetchall(
        f"SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = %s AND (%s OR revoked_at IS NULL) "
        "AND (%s::uuid IS NULL OR id = %s::uuid) ORDER BY created_at DESC, id",
        (user_id, include_revoked, only_key, only_key))
    return [public_key(r) for r in rows]


async def get_key(user_id: UUID | str, key_id: UUID | str) -> ApiKey | None:
    row = await db.fetchone(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = %s AND user_id = %s", (key_id, user_id))
    return public_key(row) if row else None


async def _creation_decision(user_id: UUID | str) -> Decision:
    return await ratelimit.limit(f"user:{user_id}", get_settings().key_create_per_hour, window_s=CREATE_WINDOW_S,
                                 name="keycreate")


async def create_key(user_id: UUID | str, name: str, *, rpm: int | None = None, spend_cap: Decimal | None = None,
                     scope: str | None = None) -> CreatedApiKey:
    """Create a key for the user (input already validated) and return it with its secret, the only
    time it is shown. Raises 429 / 409 before writing anything."""
    settings = get_settings()
    decision = await _creation_decision(user_id)
    ratelimit.enforce(decision, message=f"You can create at most {decision.limit} API keys per hour.",
                      code="key_creation_rate_limited", metric="KeyCreationRateLimited")
    row = await db.fetchone("SELECT count(*) AS n FROM api_keys WHERE user_id = %s AND revoked_at IS NULL",
                            (user_id,))
    if row is not None and row["n"] >= settings.max_keys_per_user:
        raise Conflict(f"You already have {row['n']} active API keys (the maximum is "
                       f"{settings.max_keys_per_user}); revoke one first.", code="too_many_keys")
    created = await create_with_secret(user_id, name, rpm=rpm, spend_cap=spend_cap, scope=scope)
    logger.info("api key created", extra={"user_id": str(user_id), "key_id": str(created.id)})
    return created


async def create_with_secret(user_id: UUID | str, name: str, *, rpm: int | None = None,
                             spend_cap: Decimal | None = None, scope: str | None = None) -> CreatedApiKey:
    """A new key (``users.create_api_key``, no limits checked) as its owner sees it, with the secret."""
    new = await users.create_api_key(user_id, name, rpm=rpm, spend_cap=spend_cap, scope=scope)
    created = await get_key(user_id, new.key_id)
    assert created is not None
    return CreatedApiKey(**dict(created), key=new.secret)


async def revoke_key(user_id: UUID | str, key_id: UUID | str) -> ApiKey | None:
    """Revoke one of the user's keys (idempotent). None if the user has no such key."""
    if await users.revoke_api_key(key_id, user_id=user_id):
        logger.info("api key revoked", extra={"user_id": str(user_id), "key_id": str(key_id)})
    return await get_key(user_id, key_id)


async def key_reservation_drift() -> list[dict[str, Any]]:
    """Capped keys whose ``reserved`` disagrees with their open reservations (should be none)."""
    return await db.fetchall(
        "SELECT k.id, k.user_id, k.reserved, COALESCE(r.total, 0) AS reserved_sum FROM api_keys k "
        "LEFT JOIN (SELECT api_key_id, sum(amount) AS total FROM reservations GROUP BY api_key_id) r "
        "ON r.api_key_id = k.id WHERE k.spend_cap IS NOT NULL AND k.reserved <> COALESCE(r.total, 0)")
