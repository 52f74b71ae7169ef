"""Who is calling a dashboard route: an API key, or a JWT from the customer's identity provider.

JWTs are verified with PyJWT: HS256 with a shared secret (``JWT_HS256_SECRET``, Supabase-style)
or RS*/PS*/ES* with a key from a JWKS URL (``JWT_JWKS_URL``, Cognito/Auth0-style), always
checking the signature, ``exp`` (with ``JWT_LEEWAY_S`` of clock skew), ``nbf``/``iat`` when
present, and ``iss``/``aud`` when configured. The algorithm is pinned by the key source: a
shared secret only ever verifies HS256 and a JWKS key only its own asymmetric algorithm, so
``alg: none`` and HS/RS confusion are refused.

The first valid token of a new ``sub`` provisions the user: ONE statement inserts the user (ON
CONFLICT DO NOTHING on ``users.external_sub``), the balance row already holding the welcome
credit, and the matching ledger row (reference ``welcome:<user_id>``). Concurrent first requests
race on the unique ``sub``: exactly one inserts, the others read the winner's row, so the
welcome credit is granted once, atomically with the user.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any
from uuid import UUID

import httpx
import jwt
from fastapi import Depends, Request

from .. import db
from ..auth import Principal, TTLCache, authenticate_key, bearer_token
from ..config import Settings, get_settings
from ..errors import ServiceUnavailable, Unauthorized
from ..observability import count, logger

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
MAX_TOKEN_CHARS = 16_384
MAX_SUB_CHARS = 255
JWKS_MIN_REFRESH_S = 30.0     # an unknown `kid` refetches the JWKS at most this often
JWKS_FETCH_TIMEOUT_S = 3.0
JWKS_FAILURE_BACKOFF_S = 5.0  # with no usable keys, a failed fetch answers 503 this long before retrying
KEY_FAMILIES = {"RSA": ("RS", "PS"), "EC": ("ES",)}  # JWK kty -> algorithm prefixes it may verify
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def looks_like_jwt(token: str) -> bool:
    return len(token) <= MAX_TOKEN_CHARS and bool(_JWT_SHAPE.match(token))


def jwt_enabled(settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    return bool(settings.jwt_hs256_secret or settings.jwt_jwks_url)


# --------------------------------------------------------------------------- JWKS
class _JwksCache:
    """The identity provider's signing keys, fetched with httpx and kept ``jwt_jwks_cache_s``."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, the JWK's own "alg")
        self.fetched_at = 0.0
        self.failed_url: str | None = None
        self.attempted_at = -JWKS_MIN_REFRESH_S
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def reset(self) -> None:
        self.url, self.keys, self.fetched_at, self.attempted_at = None, {}, 0.0, -JWKS_MIN_REFRESH_S
        self.failed_url = None

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _fetch(self, url: str) -> None:
        async with httpx.AsyncClient(timeout=JWKS_FETCH_TIMEOUT_S) as client:
            response = await client.get(url, headers={"accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for i, jwk in enumerate(data.get("keys", []) if isinstance(data, dict) else []):
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") not in KEY_FAMILIES:
                continue
            try:
                key = jwt.PyJWK(jwk)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # a key type/algorithm we do not support: skip it, keep the others
            alg = jwk.get("alg")
            keys[str(jwk.get("kid", f"#{i}"))] = (key, alg if isinstance(alg, str) else None)
        self.url, self.keys, self.fetched_at, self.failed_url = url, keys, time.monotonic(), None

    def _stale(self, url: str, kid: str | None, cache_s: float) -> bool:
        now = time.monotonic()
        if self.url != url:
            return True
        if now - self.attempted_at < JWKS_MIN_REFRESH_S:
            return False  # fetched (or failed) a moment ago: do not hammer the identity provider
        return now - self.fetched_at >= cache_s or (kid is not None and kid not in self.keys)

    async def get(self, url: str, kid: str | None, cache_s: float) -> tuple[jwt.PyJWK, str | None]:
        if self.failed_url == url and time.monotonic() - self.attempted_at < JWKS_FAILURE_BACKOFF_S:
            raise ServiceUnavailable("The identity provider's signing keys are unavailable.", code="jwks_unavailable")
        if self._stale(url, kid, cache_s):
            async with self._get_lock():
                if self._stale(url, kid, cache_s):
                    self.attempted_at = time.monotonic()
                    try:
                        await self._fetch(url)
                    except (httpx.HTTPError, ValueError) as exc:
                        count("JwksFetchFailures")
                        logger.warning("JWKS fetch failed", extra={"error": type(exc).__name__})
                        if self.url != url or not self.keys:
                            self.url, self.keys, self.failed_url = None, {}, url
                            raise ServiceUnavailable("The identity provider's signing keys are unavailable.",
                                                     code="jwks_unavailable") from None
        if kid is None:
            if len(self.keys) == 1:
                return next(iter(self.keys.values()))
            raise Unauthorized("Sign-in token has no key id (kid).", code="invalid_token")
        key = self.keys.get(kid)
        if key is None:
            raise Unauthorized("Sign-in token is signed with an unknown key.", code="invalid_token")
        return key


_jwks = _JwksCache()


# --------------------------------------------------------------------------- verification
def _error_for(exc: jwt.PyJWTError) -> Unauthorized:
    """Our own messages: PyJWT's are fine but we never risk echoing token contents."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return Unauthorized("Sign-in token has expired.", code="token_expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return Unauthorized("Sign-in token is not valid yet.", code="invalid_token")
    if isinstance(exc, jwt.InvalidAudienceError):
        return Unauthorized("Sign-in token was issued for another audience.", code="invalid_token")
    if isinstance(exc, jwt.InvalidIssuerError):
        return Unauthorized("Sign-in token was issued by an untrusted issuer.", code="invalid_token")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return Unauthorized(f"Sign-in token is missing the '{exc.claim}' claim.", code="invalid_token")
    if isinstance(exc, jwt.InvalidSignatureError):
        return Unauthorized("Sign-in token signature is invalid.", code="invalid_token")
    return Unauthorized("Invalid sign-in token.", code="invalid_token")


def _audience(settings: Settings) -> list[str] | None:
    auds = [a.strip() for a in settings.jwt_audience.split(",") if a.strip()]
    return auds or None


async def verify_jwt(token: str) -> dict[str, Any]:
    """The verified claims of ``token``; raises Unauthorized (401) or ServiceUnavailable (503)."""
    settings = get_settings()
    if not jwt_enabled(settings):
        raise Unauthorized("Sign-in tokens are not enabled here; use an API key.", code="invalid_api_key")
    if not looks_like_jwt(token):
        raise Unauthorized("Invalid sign-in token.", code="invalid_token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("Invalid sign-in token.", code="invalid_token") from None
    alg = header.get("alg")
    key: Any
    if alg == "HS256" and settings.jwt_hs256_secret:
        key = settings.jwt_hs256_secret
    elif isinstance(alg, str) and alg in ASYMMETRIC_ALGORITHMS and settings.jwt_jwks_url:
        kid = header.get("kid")
        jwk, jwk_alg = await _jwks.get(settings.jwt_jwks_url, kid if isinstance(kid, str) else None,
                                       float(settings.jwt_jwks_cache_s))
        if (jwk_alg is not None and jwk_alg != alg) or not alg.startswith(KEY_FAMILIES.get(jwk.key_type or "", ())):
            raise Unauthorized("Sign-in token algorithm does not match its key.", code="invalid_token")
        key = jwk.key
    else:
        raise Unauthorized("Sign-in token uses an algorithm that is not accepted.", code="invalid_token")
    audience = _audience(settings)
    required = ["exp", "sub"] + (["iss"] if settings.jwt_issuer else []) + (["aud"] if audience else [])
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key=key, algorithms=[alg], audience=audience, issuer=settings.jwt_issuer or None,
            leeway=settings.jwt_leeway_s, options={"require": required, "verify_aud": audience is not None})
    except jwt.PyJWTError as exc:
        raise _error_for(exc) from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUB_CHARS:
        raise Unauthorized("Sign-in token has an invalid 'sub' claim.", code="invalid_token")
    return claims


# --------------------------------------------------------------------------- provisioning
PROVISION_SQL = """
WITH u AS (
    INSERT INTO users (external_sub, email) VALUES (%(sub)s, %(email)s)
    ON CONFLICT DO NOTHING
    RETURNING id, tier
), b AS (
    INSERT INTO balances (user_id, balance) SELECT id, %(credit)s FROM u
), l AS (
    INSERT INTO ledger_entries (user_id, amount, kind, reference, description)
    SELECT id, %(credit)s, 'welcome', 'welcome:' || id::text, 'welcome credit' FROM u
    WHERE %(credit)s::numeric > 0
)
SELECT id, tier FROM u
"""


_subs: TTLCache[tuple[UUID, str]] = TTLCache()  # sub -> (user id, tier)


def _email_from(claims: dict[str, Any]) -> str | None:
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is False:
        return None
    email = email.strip()
    return email if len(email) <= 320 and _EMAIL.match(email) else None


async def user_for_sub(sub: str, email: str | None = None) -> tuple[UUID, str, bool]:
    """(user id, tier, created) for an identity-provider subject; provisions it on first sight."""
    find = "SELECT id, tier FROM users WHERE external_sub = %s"
    row = await db.fetchone(find, (sub,))
    if row is not None:
        return row["id"], row["tier"], False
    credit = get_settings().welcome_credit
    for candidate_email in dict.fromkeys((email, None)):  # an email taken by another user is not linked
        row = await db.fetchone(PROVISION_SQL, {"sub": sub, "email": candidate_email, "credit": credit})
        if row is not None:
            count("UsersProvisioned")
            logger.info("user provisioned from sign-in token", extra={"user_id": str(row["id"])})
            return row["id"], row["tier"], True
        row = await db.fetchone(find, (sub,))  # a concurrent first request won the race
        if row is not None:
            return row["id"], row["tier"], False
    raise ServiceUnavailable("Could not provision the user; try again.", code="provisioning_failed")


async def authenticate_jwt(token: str) -> Principal:
    claims = await verify_jwt(token)
    sub = claims["sub"]
    hit, cached = _subs.get(sub)
    if hit and cached is not None:
        user_id, tier = cached
    else:
        user_id, tier, _ = await user_for_sub(sub, _email_from(claims))
        _subs.put(sub, (user_id, tier), get_settings().auth_cache_ttl_s)
    return Principal(user_id=user_id, key_id=None, tier=tier)


def reset_caches() -> None:
    _jwks.reset()
    _subs.invalidate()


# --------------------------------------------------------------------------- dependency
async def require_user(request: Request) -> Principal:
    """Dashboard routes: ``Authorization: Bearer <API key | JWT>``."""
    token = bearer_token(request)
    settings = get_settings()
    if token.startswith(settings.api_key_prefix):
        principal = await authenticate_key(token)
    elif jwt_enabled(settings) and looks_like_jwt(token):
        principal = await authenticate_jwt(token)
    else:
        raise Unauthorized(f"Invalid credentials: send an API key (starting with {settings.api_key_prefix})"
                           + (" or a sign-in token." if jwt_enabled(settings) else "."))
    request.state.principal = principal
    return principal


UserPrincipal = Annotated[Principal, Depends(require_user)]
