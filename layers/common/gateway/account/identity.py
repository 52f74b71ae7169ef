"""Who is calling a dashboard route: an API key, or a JWT from the customer's identity provider.

JWTs are verified with PyJWT: HS256 with a shared secret (``JWT_HS256_SECRET``, Supabase-style)
or RS*/PS*/ES* with a key from a JWKS URL (``JWT_JWKS_URL``, Cognito/Auth0-style), always
checking the signature, ``exp`` (with ``JWT_LEEWAY_S`` of clock skew), ``nbf``/``iat`` when
present, and ``iss``/``aud`` when configured. The algorithm is pinned by the key source: a
shared secret only ever verifies HS256 and a JWKS key only its own asymmetric algorithm, so
``alg: none`` and HS/RS confusion are refused.

A user is an identity (``iss``, ``sub``): the same subject from two issuers is two people. The
first valid token of a new identity provisions the user in ONE statement: the user (ON CONFLICT DO
NOTHING on the identity), the balance row and, when the token says ``email_verified`` and its
email address is new to us (one welcome credit per mailbox, ``welcome_grants``), the welcome
credit (``JWT_WELCOME_CREDIT``) and its ledger row (reference ``welcome:<user_id>``). Concurrent
first requests race on the unique identity: exactly one inserts, the others read the winner's row.
New users are throttled per source address (``JWT_PROVISION_PER_HOUR``) and counted
(``UsersProvisioned``, alarmed when unusually many).

A deployed stage refuses a JWKS configuration without ``JWT_ISSUER`` and ``JWT_AUDIENCE``
(config.py): any token the identity provider signs for any of its applications would otherwise
be accepted here.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Annotated, Any
from uuid import UUID

import httpx
import jwt
from fastapi import Depends, Request

from .. import db, ratelimit
from ..auth import Principal, TTLCache, authenticate_key, bearer_token
from ..config import Settings, get_settings
from ..errors import ServiceUnavailable, Unauthorized
from ..loops import loop_lock
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
        self._lock = loop_lock()

    def reset(self) -> None:
        self.url, self.keys, self.fetched_at, self.attempted_at = None, {}, 0.0, -JWKS_MIN_REFRESH_S
        self.failed_url = None

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
            async with self._lock.get():
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
# One statement: the user (ON CONFLICT DO NOTHING on (issuer, subject) and on the email), the
# welcome-credit claim of its email (ON CONFLICT DO NOTHING on the email's hash: one credit per
# address, ever), the balance row already holding the credit when it was granted, its ledger row.
PROVISION_SQL = """
WITH u AS (
    INSERT INTO users (external_iss, external_sub, email) VALUES (%(iss)s, %(sub)s, %(email)s)
    ON CONFLICT DO NOTHING
    RETURNING id, tier
), w AS (
    INSERT INTO welcome_grants (email_hash, user_id)
    SELECT %(email_hash)s, id FROM u WHERE %(email_hash)s::bytea IS NOT NULL AND %(credit)s::numeric > 0
    ON CONFLICT DO NOTHING
    RETURNING user_id
), b AS (
    INSERT INTO balances (user_id, balance)
    SELECT id, CASE WHEN EXISTS (SELECT 1 FROM w) THEN %(credit)s::numeric ELSE 0 END FROM u
), l AS (
    INSERT INTO ledger_entries (user_id, amount, kind, reference, description)
    SELECT user_id, %(credit)s::numeric, 'welcome', 'welcome:' || user_id::text, 'welcome credit' FROM w
)
SELECT id, tier, EXISTS (SELECT 1 FROM w) AS welcomed FROM u
"""
FIND_SQL = "SELECT id, tier FROM users WHERE external_iss = %s AND external_sub = %s"
# A user provisioned before identities were keyed by issuer (external_iss NULL) is adopted by the
# first verified token with its subject, exactly as it was found before.
ADOPT_SQL = ("UPDATE users SET external_iss = %s WHERE external_iss IS NULL AND external_sub = %s "
             "RETURNING id, tier")
PROVISION_WINDOW_S = 3600
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


_subs: TTLCache[tuple[UUID, str]] = TTLCache()  # "iss\x1fsub" -> (user id, tier)


def _email_from(claims: dict[str, Any]) -> str | None:
    """The token's email, only when the token says it is verified (an unverified address is
    neither stored, where it would block its real owner, nor worth a welcome credit)."""
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        return None
    email = email.strip()
    return email if len(email) <= 320 and _EMAIL.match(email) else None


def email_hash(email: str) -> bytes:
    """SHA-256 of the address as a mailbox: lower case, no ``+tag``, and for Gmail no dots, so
    ``J.Doe+2@gmail.com`` and ``jdoe@googlemail.com`` are one address (one welcome credit)."""
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    return hashlib.sha256(f"{local}@{domain}".encode()).digest()


async def _admit_new_user(source: str) -> None:
    """Throttle provisioning per source address (``JWT_PROVISION_PER_HOUR``, a sliding hour in
    Upstash). Fails closed: with Upstash unreachable new users wait (503), existing ones do not."""
    settings = get_settings()
    decision = await ratelimit.limit(f"src:{source}", settings.jwt_provision_per_hour, window_s=PROVISION_WINDOW_S,
                                     name="provision")
    if not decision.allowed and not decision.degraded:
        logger.warning("sign-up throttled", extra={"source": source, "limit": decision.limit})
    ratelimit.enforce(decision, message=f"Too many new accounts from this network; at most {decision.limit} per hour.",
                      code="provisioning_rate_limited", metric="ProvisioningThrottled", fail_closed=True,
                      unavailable_message="Sign-up is briefly unavailable; try again shortly.")


async def user_for_identity(iss: str, sub: str, email: str | None = None, *, source: str = "unknown"
                            ) -> tuple[UUID, str, bool]:
    """(user id, tier, created) for an identity-provider identity (issuer, subject); provisions
    it on first sight. The welcome credit (``JWT_WELCOME_CREDIT``) comes only with a verified
    email (``email``, see ``_email_from``) that no user has had before."""
    row = await db.fetchone(FIND_SQL, (iss, sub)) or await db.fetchone(ADOPT_SQL, (iss, sub))
    if row is not None:
        return row["id"], row["tier"], False
    credit = get_settings().jwt_welcome_credit
    async with db.transaction() as conn:
        for candidate in dict.fromkeys((email, None)):  # an email taken by another user is not linked
            cur = await conn.execute(PROVISION_SQL, {
                "iss": iss, "sub": sub, "email": candidate, "credit": credit,
                "email_hash": email_hash(candidate) if candidate else None})
            created = await cur.fetchone()
            if created is not None:
                break
            cur = await conn.execute(FIND_SQL, (iss, sub))  # a concurrent first request won the race
            raced = await cur.fetchone()
            if raced is not None:
                return raced[0], raced[1], False
        else:
            raise ServiceUnavailable("Could not provision the user; try again.", code="provisioning_failed")
        # Counted only for a row this statement inserted: concurrent first requests of one new
        # identity wait on its unique key and then find it, so they are one sign-up, not many.
        # A refusal rolls the user back.
        await _admit_new_user(source)
    user_id, tier, welcomed = created
    count("UsersProvisioned")
    if welcomed:
        count("WelcomeCreditsGranted")
    logger.info("user provisioned from sign-in token", extra={"user_id": str(user_id), "welcome_credit": welcomed})
    return user_id, tier, True


async def authenticate_jwt(token: str, source: str = "unknown") -> Principal:
    claims = await verify_jwt(token)
    iss = str(claims["iss"]) if isinstance(claims.get("iss"), str) else ""
    sub = str(claims["sub"])
    cache_key = f"{iss}\x1f{sub}"
    hit, cached = _subs.get(cache_key)
    if hit and cached is not None:
        user_id, tier = cached
    else:
        user_id, tier, _ = await user_for_identity(iss, sub, _email_from(claims), source=source)
        _subs.put(cache_key, (user_id, tier), get_settings().auth_cache_ttl_s)
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
        # the caller's address as API Gateway saw it (Mangum's scope client); never X-Forwarded-For
        principal = await authenticate_jwt(token, request.client.host if request.client else "unknown")
    else:
        raise Unauthorized(f"Invalid credentials: send an API key (starting with {settings.api_key_prefix})"
                           + (" or a sign-in token." if jwt_enabled(settings) else "."))
    request.state.principal = principal
    return principal


UserPrincipal = Annotated[Principal, Depends(require_user)]
