"""Bring-your-own provider keys, encrypted at rest with AES-256-GCM.

Master keys come from config/secrets: ``BYOK_MASTER_KEYS="v1:<64 hex>,v2:<64 hex>"`` — every
listed version can decrypt, the LAST one encrypts. Each stored key gets a fresh 96-bit nonce, and
the associated data binds the ciphertext to its user and provider (a row copied to another user
or provider does not decrypt). Rotation: append a new version, deploy, run
``mlp rotate-master-key`` (re-encrypts every row under the current version and verifies them),
then drop the old version.

Locally (stage local/test) an unset ``BYOK_MASTER_KEYS`` falls back to a fixed, public
development key so the local stack works out of the box; a deployed stage never does (BYOK
routes answer 503 until it is configured).

The query path never queries for these keys: the cached API-key lookup carries the user's
sealed keys (``Principal.provider_keys``) and :class:`ByokKeys` opens one only when a request
is routed to that provider, keeping plaintexts in a small per-container cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .. import db
from ..adapters.registry import BYOK_PROVIDERS
from ..auth import SealedProviderKey, forget_key, forget_user
from ..config import get_settings
from ..errors import BadRequest, ServiceUnavailable
from ..observability import count, logger

if TYPE_CHECKING:  # the query path opens keys and never lists them: no account schemas at its cold start
    from .schema import ProviderKey

# Providers a user can bring a key for (``byok`` in the provider registry; routing: chat.service.route()).
PROVIDERS: tuple[str, ...] = BYOK_PROVIDERS
NONCE_BYTES = 12
MIN_KEY_CHARS, MAX_KEY_CHARS = 8, 512
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no whitespace
# Local/test only: a fixed, PUBLIC key so `make dev` works without configuration. Never secret.
LOCAL_DEV_MASTER_KEYS = "local-dev:" + hashlib.sha256(b"multi-llm-gateway local BYOK master key").hexdigest()


class ByokDecryptError(Exception):
    """A stored key could not be opened (unknown master-key version or failed authentication)."""


@dataclass(frozen=True, slots=True)
class MasterKeys:
    keys: dict[str, bytes]
    current: str


@lru_cache(maxsize=4)
def _parse(spec: str) -> MasterKeys:
    keys: dict[str, bytes] = {}
    for item in spec.split(","):
        name, _, hexkey = item.strip().partition(":")
        key = bytes.fromhex(hexkey.strip())
        if len(key) != 32:
            raise ValueError("every BYOK master key must be 32 bytes (64 hex characters)")
        keys[name] = key
    return MasterKeys(keys=keys, current=list(keys)[-1])


def master_keys() -> MasterKeys:
    settings = get_settings()
    spec = settings.byok_master_keys.strip()
    if not spec:
        if settings.deployed:
            raise ServiceUnavailable("Provider keys are not available: BYOK_MASTER_KEYS is not configured.",
                                     code="byok_not_configured")
        spec = LOCAL_DEV_MASTER_KEYS
    return _parse(spec)


def _aesgcm(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # imported on first use only

    return AESGCM(key)


def _aad(user_id: UUID | str, provider: str) -> bytes:
    return f"mlp-byok|{UUID(str(user_id))}|{provider}".encode()


def seal(user_id: UUID | str, provider: str, secret: str) -> SealedProviderKey:
    mk = master_keys()
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = _aesgcm(mk.keys[mk.current]).encrypt(nonce, secret.encode("utf-8"), _aad(user_id, provider))
    return SealedProviderKey(provider=provider, key_version=mk.current, nonce=nonce, ciphertext=ciphertext)


def unseal(user_id: UUID | str, sealed: SealedProviderKey) -> str:
    from cryptography.exceptions import InvalidTag

    mk = master_keys()
    key = mk.keys.get(sealed.key_version)
    if key is None:
        raise ByokDecryptError(f"master key version {sealed.key_version!r} is not configured")
    try:
        plain = _aesgcm(key).decrypt(sealed.nonce, sealed.ciphertext, _aad(user_id, sealed.provider))
    except (InvalidTag, ValueError) as exc:
        raise ByokDecryptError(f"ciphertext failed authentication under master key {sealed.key_version!r}") from exc
    return plain.decode("utf-8")


# --------------------------------------------------------------------------- query path
class _PlainCache:
    """Opened keys per container, keyed by the exact ciphertext (a re-saved key is a new entry)."""

    def __init__(self, maxsize: int = 1024) -> None:
        self._data: OrderedDict[tuple[str, str, str, bytes, bytes], str] = OrderedDict()
        self._maxsize = maxsize

    def get_or_open(self, user_id: UUID | str, sealed: SealedProviderKey) -> str:
        k = (str(user_id), sealed.provider, sealed.key_version, sealed.nonce, sealed.ciphertext)
        plain = self._data.get(k)
        if plain is None:
            plain = unseal(user_id, sealed)
            self._data[k] = plain
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)
        else:
            self._data.move_to_end(k)
        return plain

    def clear(self) -> None:
        self._data.clear()


_plain_cache = _PlainCache()


class ByokKeys(Mapping[str, str]):
    """provider -> the user's own key, decrypted on first access (what ``chat.service.route`` reads)."""

    def __init__(self, user_id: UUID | str, sealed: Iterable[SealedProviderKey]) -> None:
        self._user_id = user_id
        self._sealed = {s.provider: s for s in sealed}

    def __contains__(self, provider: object) -> bool:
        return provider in self._sealed

    def __getitem__(self, provider: str) -> str:
        sealed = self._sealed[provider]
        try:
            return _plain_cache.get_or_open(self._user_id, sealed)
        except ByokDecryptError as exc:
            count("ByokDecryptFailures")
            logger.error("stored provider key cannot be decrypted", extra={
                "user_id": str(self._user_id), "provider": provider, "key_version": sealed.key_version,
                "reason": str(exc)})
            raise ServiceUnavailable(
                f"Your saved {provider} key cannot be used right now. Save it again with "
                f"PUT /v1/provider-keys/{provider}, or delete it to use the platform's key.",
                code="provider_key_unavailable") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._sealed)

    def __len__(self) -> int:
        return len(self._sealed)


def keys_for(user_id: UUID | str, sealed: Iterable[SealedProviderKey]) -> Mapping[str, str]:
    return ByokKeys(user_id, sealed)


def clear_cache() -> None:
    _plain_cache.clear()


# --------------------------------------------------------------------------- validation
def validate_provider(provider: str) -> str:
    p = provider.strip().lower()
    if p not in PROVIDERS:
        raise BadRequest(f"Unknown provider. Keys can be stored for: {', '.join(PROVIDERS)}.", param="provider",
                         code="unknown_provider")
    return p


def validate_secret(secret: str) -> str:
    s = secret.strip()
    if not (MIN_KEY_CHARS <= len(s) <= MAX_KEY_CHARS) or not _KEY_CHARS.fullmatch(s):
        raise BadRequest(f"api_key must be {MIN_KEY_CHARS}-{MAX_KEY_CHARS} printable characters without spaces.",
                         param="api_key", code="invalid_provider_key")
    return s


# --------------------------------------------------------------------------- storage
_COLUMNS = "provider, last4, key_version, created_at, updated_at"


def _public(row: dict[str, Any]) -> ProviderKey:
    from .schema import ProviderKey

    return ProviderKey(provider=row["provider"], last4=row["last4"], key_version=row["key_version"],
                       created_at=row["created_at"], updated_at=row["updated_at"])


async def put(user_id: UUID | str, provider: str, secret: str) -> ProviderKey | None:
    """Store (or replace) the user's key for ``provider``. None if the user does not exist."""
    provider, secret = validate_provider(provider), validate_secret(secret)
    sealed = seal(user_id, provider, secret)
    row = await db.fetchone(
        f"""INSERT INTO provider_keys (user_id, provider, ciphertext, nonce, key_version, last4)
            SELECT id, %s, %s, %s, %s, %s FROM users WHERE id = %s
            ON CONFLICT (user_id, provider) DO UPDATE SET ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce,
                key_version = EXCLUDED.key_version, last4 = EXCLUDED.last4, updated_at = now()
            RETURNING {_COLUMNS}""",
        (provider, sealed.ciphertext, sealed.nonce, sealed.key_version, secret[-4:], user_id))
    forget_user(user_id)
    return _public(row) if row else None


async def get(user_id: UUID | str, provider: str) -> ProviderKey | None:
    provider = validate_provider(provider)
    row = await db.fetchone(f"SELECT {_COLUMNS} FROM provider_keys WHERE user_id = %s AND provider = %s",
                            (user_id, provider))
    return _public(row) if row else None


async def list_for(user_id: UUID | str) -> list[ProviderKey]:
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM provider_keys WHERE user_id = %s ORDER BY provider",
                             (user_id,))
    return [_public(r) for r in rows]


async def delete(user_id: UUID | str, provider: str) -> bool:
    provider = validate_provider(provider)
    n = await db.execute("DELETE FROM provider_keys WHERE user_id = %s AND provider = %s", (user_id, provider))
    forget_user(user_id)
    return bool(n)


async def sealed_for(user_id: UUID | str) -> tuple[SealedProviderKey, ...]:
    rows = await db.fetchall(
        "SELECT provider, key_version, nonce, ciphertext FROM provider_keys WHERE user_id = %s", (user_id,))
    return tuple(SealedProviderKey(provider=r["provider"], key_version=r["key_version"], nonce=bytes(r["nonce"]),
                                   ciphertext=bytes(r["ciphertext"])) for r in rows)


# --------------------------------------------------------------------------- rotation
@dataclass
class RotationReport:
    current_version: str
    examined: int = 0
    rotated: int = 0
    skipped: int = 0          # changed concurrently (re-saved or rotated elsewhere): already current
    failed: list[dict[str, str]] = field(default_factory=list)   # rows that did not decrypt
    verified: int = 0         # rows that decrypt under the configured keys after the run
    total: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.verified == self.total


async def rotate(batch_size: int = 500) -> RotationReport:
    """Re-encrypt every stored key still under an older master-key version with the current one,
    then verify that every row decrypts. Safe to re-run and to run concurrently with PUTs (each
    row is replaced only if it is still the ciphertext that was read)."""
    mk = master_keys()
    report = RotationReport(current_version=mk.current)
    after = UUID(int=0)
    while True:
        rows = await db.fetchall(
            "SELECT id, user_id, provider, key_version, nonce, ciphertext FROM provider_keys "
            "WHERE key_version <> %s AND id > %s ORDER BY id LIMIT %s", (mk.current, after, batch_size))
        if not rows:
            break
        for r in rows:
            after = r["id"]
            report.examined += 1
            old = SealedProviderKey(provider=r["provider"], key_version=r["key_version"], nonce=bytes(r["nonce"]),
                                    ciphertext=bytes(r["ciphertext"]))
            try:
                plain = unseal(r["user_id"], old)
            except ByokDecryptError as exc:
                report.failed.append({"id": str(r["id"]), "user_id": str(r["user_id"]), "provider": r["provider"],
                                      "key_version": r["key_version"], "reason": str(exc)})
                continue
            new = seal(r["user_id"], r["provider"], plain)
            n = await db.execute(
                "UPDATE provider_keys SET ciphertext = %s, nonce = %s, key_version = %s "
                "WHERE id = %s AND key_version = %s AND nonce = %s",
                (new.ciphertext, new.nonce, new.key_version, r["id"], old.key_version, old.nonce))
            if n:
                report.rotated += 1
            else:
                report.skipped += 1
    verified, total = await verify_all()
    report.verified, report.total = verified, total
    forget_key()
    clear_cache()
    return report


async def verify_all(batch_size: int = 1000) -> tuple[int, int]:
    """(rows that decrypt, rows) over every stored provider key."""
    ok = total = 0
    after = UUID(int=0)
    while True:
        rows = await db.fetchall(
            "SELECT id, user_id, provider, key_version, nonce, ciphertext FROM provider_keys "
            "WHERE id > %s ORDER BY id LIMIT %s", (after, batch_size))
        if not rows:
            return ok, total
        for r in rows:
            after = r["id"]
            total += 1
            try:
                unseal(r["user_id"], SealedProviderKey(provider=r["provider"], key_version=r["key_version"],
                                                       nonce=bytes(r["nonce"]), ciphertext=bytes(r["ciphertext"])))
                ok += 1
            except ByokDecryptError:
                pass
