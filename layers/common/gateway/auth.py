"""API-key authentication.

Keys look like ``sk-mlp-<43 url-safe chars>`` (256 bits of entropy). Only the SHA-256 of a key
is stored; a lookup is one indexed query (which also bumps ``last_used_at`` at most once a
minute) and its result is cached in the warm container for ``auth_cache_ttl_s`` seconds, so a
revoked key stops working everywhere within that many seconds. The admin key comes from config
and is compared in constant time. A key is accepted as ``Authorization: Bearer <key>`` or as
``x-api-key: <key>`` (Anthropic's header) wherever a key is accepted; both at once must agree.

The user's tier is deliberately NOT trusted from this cache for billing decisions: the reserve
statement reads the current tier, so a subscription change applies on the very next request.

The same lookup returns the key's own ``rpm`` and the user's BYOK provider keys, still
encrypted (``Principal.provider_keys``), so the query path needs no further query for them.

Every key has a scope: ``full`` (everything the account can do) or ``inference`` (the query
routes and read-only views of its own usage). A key with its own rpm or spend cap is always
``inference`` (a restricted key): it cannot open the billing portal, start a checkout, change the
plan, manage keys or read other keys' usage (``require_full_scope`` → 403 ``insufficient_scope``).
Sign-in tokens (JWT) act with the full scope.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from uuid import UUID

from starlette.requests import Request

from . import db
from .config import get_settings
from .errors import Forbidden, Unauthorized
from .records import frozen

KEY_RANDOM_BYTES = 32
VISIBLE_PREFIX_CHARS = 8  # characters after the fixed prefix shown in listings
SCOPES = ("full", "inference")


@frozen
class SealedProviderKey:
    """A BYOK provider key as stored: AES-256-GCM ciphertext, opened lazily by ``account.byok``."""

    provider: str
    key_version: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: the user, the API key (None for a JWT session), the tier and the key's limits."""

    user_id: UUID
    key_id: UUID | None          # None when signed in with a JWT (dashboard routes)
    tier: str                    # as of the last lookup (a hint; billing re-reads it)
    key_rpm: int | None = None   # optional per-key limit (account routes)
    scope: str = "full"          # "full" | "inference" (a restricted key); JWT sessions are full
    # The user's BYOK keys, still encrypted; carried by the cached key lookup so the query path
    # needs no extra round trip (``gateway.account.byok.ByokKeys`` decrypts on first use).
    provider_keys: tuple[SealedProviderKey, ...] = field(default=(), repr=False)
    # Derived once per principal, not per request (the key lookup is cached per container): the
    # ids as the rate limiter names them (``str``; a JWT session's key id is ``"None"``) and
    # ``holder``, whose carried holds a request may use (``chat.service``): a pair of strings,
    # whose hashes are cached, where a pair of ``UUID``s is hashed in Python on every lookup.
    user_ref: str = field(init=False, repr=False, compare=False)
    key_ref: str = field(init=False, repr=False, compare=False)
    holder: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        user_ref, key_ref = str(self.user_id), str(self.key_id)
        object.__setattr__(self, "user_ref", user_ref)
        object.__setattr__(self, "key_ref", key_ref)
        object.__setattr__(self, "holder", (user_ref, key_ref))


def generate_api_key() -> tuple[str, str, str]:
    """A new key: (secret shown once, its hash, its visible prefix)."""
    prefix = get_settings().api_key_prefix
    secret = prefix + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    return secret, hash_key(secret), secret[: len(prefix) + VISIBLE_PREFIX_CHARS]


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


V = TypeVar("V")


class TTLCache(Generic[V]):
    """Tiny bounded LRU with per-entry expiry (per warm container): the API-key lookups here and
    the JWT ``sub`` -> user lookups in ``account.identity``."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._maxsize = maxsize

    def get(self, key: str) -> tuple[bool, V | None]:
        item = self._data.get(key)
        if item is None:
            return False, None
        expires, value = item
        if expires < time.monotonic():
            self._data.pop(key, None)
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: str, value: V, ttl: float) -> None:
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    def invalidate(self, key: str | None = None) -> None:
        if key is None:
            self._data.clear()
        else:
            self._data.pop(key, None)

    def invalidate_where(self, predicate: Callable[[V], bool]) -> None:
        for key in [k for k, (_, value) in self._data.items() if predicate(value)]:
            self._data.pop(key, None)


_cache: TTLCache[Principal | None] = TTLCache()

LOOKUP_SQL = """
WITH k AS (
    SELECT k.id AS key_id, k.user_id, k.revoked_at, k.last_used_at, k.rpm, k.scope, u.tier
    FROM api_keys k JOIN users u ON u.id = k.user_id
    WHERE k.key_hash = %(h)s
), touch AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id = (SELECT key_id FROM k) AND revoked_at IS NULL
      AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')
)
SELECT key_id, user_id, revoked_at, tier, rpm, scope,
       (SELECT json_agg(json_build_object('p', p.provider, 'v', p.key_version, 'n', encode(p.nonce, 'hex'),
                                          'c', encode(p.ciphertext, 'hex')))
        FROM provider_keys p WHERE p.user_id = k.user_id) AS provider_keys
FROM k
"""


def _sealed_keys(value: list[dict[str, str]] | None) -> tuple[SealedProviderKey, ...]:
    return tuple(SealedProviderKey(provider=item["p"], key_version=item["v"], nonce=bytes.fromhex(item["n"]),
                                   ciphertext=bytes.fromhex(item["c"])) for item in value or ())


async def authenticate_key(secret: str) -> Principal:
    settings = get_settings()
    if not secret.startswith(settings.api_key_prefix) or len(secret) > 200:
        raise Unauthorized("Invalid API key. Keys start with " + settings.api_key_prefix)
    h = hash_key(secret)
    hit, principal = _cache.get(h)
    if not hit:
        row = await db.fetchone(LOOKUP_SQL, {"h": h})
        principal = None
        if row is not None and row["revoked_at"] is None:
            principal = Principal(user_id=row["user_id"], key_id=row["key_id"], tier=row["tier"],
                                  key_rpm=row["rpm"], scope=row["scope"],
                                  provider_keys=_sealed_keys(row["provider_keys"]))
        _cache.put(h, principal, settings.auth_cache_ttl_s)
    if principal is None:
        raise Unauthorized("Invalid or revoked API key.")
    return principal


def forget_key(key_hash: str | None = None) -> None:
    """Drop a key (or everything) from this container's cache, e.g. right after revoking it."""
    _cache.invalidate(key_hash)


def forget_user(user_id: UUID | str) -> None:
    """Drop every cached key of one user (e.g. after their provider keys changed). Other warm
    containers pick the change up when their entries expire (``auth_cache_ttl_s``)."""
    _cache.invalidate_where(lambda p: p is not None and str(p.user_id) == str(user_id))


def require_full_scope(principal: Principal, action: str) -> None:
    """Refuse ``action`` to a restricted (``inference``-scope) key: 403 ``insufficient_scope``."""
    if principal.scope != "full":
        raise Forbidden(f"This API key is restricted to inference (it has its own rpm or spend cap, or the "
                        f"'inference' scope) and cannot {action}. Use a full-scope key or sign in to the dashboard.",
                        code="insufficient_scope")


MISSING_KEY_MESSAGE = "Missing API key. Send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."


def _credential_headers(request: Request) -> tuple[str, str]:
    """The first ``Authorization`` and ``x-api-key`` values ("" when absent): what Starlette's
    ``request.headers.get`` answers for each, in one pass over the raw headers instead of two."""
    authorization = api_key = None
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"x-api-key" and api_key is None:
            api_key = value
    return (authorization.decode("latin-1") if authorization is not None else "",
            api_key.decode("latin-1") if api_key is not None else "")


def has_credential(request: Request) -> bool:
    """The request carries an ``Authorization`` or ``x-api-key`` header (well-formed or not)."""
    authorization, api_key = _credential_headers(request)
    return bool(authorization or api_key)


def bearer_token(request: Request) -> str:
    """The caller's credential: ``Authorization: Bearer <token>`` or ``x-api-key: <token>`` (what the
    anthropic SDK and Claude Code send). Both at once must agree: two different credentials are a 401
    ``conflicting_credentials`` rather than a guess at which account to act for and bill."""
    authorization, api_key = _credential_headers(request)
    scheme, _, token = authorization.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    api_key = api_key.strip()
    if bearer and api_key and not hmac.compare_digest(bearer.encode("utf-8"), api_key.encode("utf-8")):
        raise Unauthorized("Two different credentials: 'Authorization: Bearer' and 'x-api-key' must carry the same "
                           "key when both are sent.", code="conflicting_credentials")
    if not (bearer or api_key):
        raise Unauthorized(MISSING_KEY_MESSAGE, code="missing_api_key")
    return bearer or api_key


async def require_api_key(request: Request) -> Principal:
    principal = await authenticate_key(bearer_token(request))
    # ``request.state.principal = principal`` without building Starlette's ``State`` wrapper: the
    # same entry of the scope's ``state`` dict, which ``request.state`` reads
    request.scope.setdefault("state", {})["principal"] = principal
    return principal


def is_admin_key(token: str) -> bool:
    expected = get_settings().admin_api_key
    return bool(expected) and hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))


async def require_admin(request: Request) -> None:
    if not is_admin_key(bearer_token(request)):
        raise Forbidden("This route needs the admin key.", code="admin_required")

