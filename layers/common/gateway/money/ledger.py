"""The credit ledger: every movement of credit is one ``ledger_entries`` row with a unique
reference; ``balances.balance`` is the cached sum of a user's ledger and ``balances.reserved``
the sum of their open ``reservations``. Available credit = balance - reserved.

Hot path (see shared design "money path"): ``reserve`` and ``settle``/``release`` are ONE
statement each. The conditional UPDATE on the user's balance row takes the row lock that
serialises concurrent requests of one user, so available credit can never go below zero
through reservations, and no decision is ever made on a stale read.

Reserve and settle run inside the PL/pgSQL functions ``mlp_reserve`` / ``mlp_settle`` (migration
0010, docs/money.md "The statements"): Postgres caches their plans per server backend, also
through a transaction-mode pooler where the gateway prepares nothing. ``RESERVE_SQL`` and
``SETTLE_SQL`` are the one-line calls; the usage record goes to ``mlp_settle`` as one jsonb object
of exactly :data:`RECORD_COLUMNS` (Decimals as strings, never floats).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import operator
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field, fields
from decimal import Decimal
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, NoReturn
from uuid import UUID

import psycopg
from psycopg_pool import PoolTimeout

from .. import db
from ..adapters.contract import TOKEN_FIELDS, Tokens
from ..config import FREE_TIER
from ..errors import BadRequest, Forbidden, InsufficientCredits, NotFound, QuotaExceeded, RateLimited
from ..observability import logger
from ..records import frozen, record
from . import combine
from .format import money
from .pricing import ZERO, ModelPrice, to_credit

CREDIT_KINDS = frozenset({"grant", "purchase", "usage", "refund", "adjustment", "subscription_credit", "welcome"})


def period_start(now: dt.datetime | None = None) -> dt.date:
    now = now or dt.datetime.now(dt.UTC)
    return dt.date(now.year, now.month, 1)


def next_period_start(now: dt.datetime | None = None) -> dt.date:
    start = period_start(now)
    return dt.date(start.year + (start.month == 12), start.month % 12 + 1, 1)


class _Period:
    """The current period's first day as a statement parameter (``period_start().isoformat()``,
    encoded), kept while the clock is within that month (UTC) instead of rebuilt per statement."""

    __slots__ = ("param", "since", "until")

    def __init__(self) -> None:
        self.since = self.until = 0.0
        self.param = b""

    def get(self) -> bytes:
        now = time.time()
        if not self.since <= now < self.until:
            start = period_start(dt.datetime.fromtimestamp(now, dt.UTC))
            end = next_period_start(dt.datetime.fromtimestamp(now, dt.UTC))
            self.since = dt.datetime(start.year, start.month, 1, tzinfo=dt.UTC).timestamp()
            self.until = dt.datetime(end.year, end.month, 1, tzinfo=dt.UTC).timestamp()
            self.param = start.isoformat().encode()
        return self.param


_period_param = _Period().get


# --------------------------------------------------------------------------- credit
@frozen
class CreditResult:
    """What ``credit`` did: applied (or an idempotent replay), and the balance after it."""

    applied: bool          # False when the reference had already been applied (idempotent replay)
    balance: Decimal
    reserved: Decimal

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved


async def credit(user_id: UUID | str, amount: Decimal, kind: str, reference: str, *,
                 description: str | None = None, allow_negative: bool = False) -> CreditResult:
    """Add (or, with a negative amount, deduct) credit exactly once per ``reference``.

    A deduction that would take available credit below zero is refused (InsufficientCredits)
    unless ``allow_negative`` (e.g. a Stripe refund of credit already spent: it is recorded,
    never silently dropped).
    """
    _check_credit_args(amount, kind, reference)
    async with db.transaction() as conn:
        return await credit_in(conn, user_id, amount, kind, reference, description=description,
                               allow_negative=allow_negative)


def _check_credit_args(amount: Decimal, kind: str, reference: str) -> None:
    if not isinstance(amount, Decimal):
        raise TypeError("amount must be a Decimal")
    if kind not in CREDIT_KINDS:
        raise BadRequest(f"unknown ledger kind {kind!r}")
    if not reference:
        raise BadRequest("a ledger reference is required")
    if amount != to_credit(amount):
        raise BadRequest("amount has more than 8 decimal places")


async def credit_in(conn: db.Connection, user_id: UUID | str, amount: Decimal, kind: str, reference: str, *,
                    description: str | None = None, allow_negative: bool = False) -> CreditResult:
    """``credit`` inside the caller's open transaction on ``conn`` (e.g. the Stripe webhook, which
    records the event id in the same transaction as its effect). Same rules as ``credit``."""
    _check_credit_args(amount, kind, reference)
    cur = await conn.execute(
        "SELECT balance, reserved FROM balances WHERE user_id = %s FOR UPDATE", (user_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound("user not found", code="user_not_found")
    balance, reserved = row
    if amount < 0 and not allow_negative and balance - reserved + amount < 0:
        cur = await conn.execute("SELECT 1 FROM ledger_entries WHERE reference = %s", (reference,))
        if await cur.fetchone() is not None:  # a replay of a deduction already applied
            return CreditResult(applied=False, balance=balance, reserved=reserved)
        raise InsufficientCredits("deduction exceeds the available balance",
                                  balance=money(balance - reserved), required=money(-amount))
    cur = await conn.execute(
        """INSERT INTO ledger_entries (user_id, amount, kind, reference, description)
           VALUES (%s, %s, %s, %s, %s) ON CONFLICT (reference) DO NOTHING RETURNING id""",
        (user_id, amount, kind, reference, description))
    if await cur.fetchone() is None:
        return CreditResult(applied=False, balance=balance, reserved=reserved)
    cur = await conn.execute(
        "UPDATE balances SET balance = balance + %s, updated_at = now() WHERE user_id = %s "
        "RETURNING balance, reserved", (amount, user_id))
    new = await cur.fetchone()
    assert new is not None
    return CreditResult(applied=True, balance=new[0], reserved=new[1])


# --------------------------------------------------------------------------- reserve
@frozen
class Reservation:
    """A request's hold, placed by ``reserve``."""

    request_id: str
    user_id: UUID | str
    amount: Decimal
    tier: str = "free"      # the user's tier as of this statement (fresh, never from a cache)


# The reserve statement (mlp_reserve, migration 0010) in words.
# The quota is looked up from the user's CURRENT tier inside the statement: %(quotas)s maps
# tier -> monthly quota (-1 = unlimited); %(default_quota)s applies to tiers not in the map.
# Per-key spend cap (api_keys.spend_cap, lifetime USD): a capped key's row is locked FIRST and read
# at its latest committed state (FOR UPDATE), the hold must fit in spend_cap - spent - reserved,
# and it is added to the key's ``reserved``. Uncapped keys (and no key) are not touched. Settle
# and cancel lock in the same order (key, then balance), so concurrent requests cannot deadlock.
# In flight: ``balances.in_flight`` counts the user's open reservations under the same row lock;
# %(max_in_flight)s (NULL = no cap) bounds it, so the user's exposure to an overrun is bounded too.
# Sent through ``db.call`` (psycopg's lower layer: parameters as text, each typed by its cast; the
# row as text): user_id, request_id, hold, period, quotas, default_quota, api_key_id, model,
# max_in_flight.
RESERVE_SQL = (
    "SELECT request_id, tier FROM mlp_reserve($1::uuid, $2::text, $3::numeric, $4::date, $5::jsonb, $6::integer, "
    "$7::uuid, $8::text, $9::integer)")
RESERVE = db.Statement("ledger_reserve", RESERVE_SQL)


class _Quotas:
    """The last quota map's parameters (its jsonb text and the default quota): the map is the same
    settings on every request of a container, so it is encoded once, not per reserve."""

    __slots__ = ("default", "json", "quotas")

    def __init__(self) -> None:
        self.quotas: dict[str, int | None] | None = None
        self.json = b"{}"
        self.default = -1

    def params(self, quotas: Mapping[str, int | None] | None) -> tuple[bytes, int]:
        if quotas != self.quotas or quotas is None:
            quota_map = {k: (-1 if v is None else v) for k, v in (quotas or {}).items()}
            self.json, self.default = json.dumps(quota_map).encode(), quota_map.get(FREE_TIER, -1)
            self.quotas = None if quotas is None else dict(quotas)
        return self.json, self.default


_quotas = _Quotas()


def _text(value: object) -> bytes | None:
    """A parameter of ``db.call`` (its SQL casts it): None is NULL, anything else its str()."""
    return None if value is None else str(value).encode()


_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _text_array(ids: Sequence[str]) -> bytes | None:
    """A ``text[]`` parameter of ``db.call`` from request ids (no quoting needed: checked)."""
    if not ids:
        return None
    for i in ids:
        if not _ID.fullmatch(i):
            raise ValueError(f"not a request id: {i!r}")
    return ("{" + ",".join(ids) + "}").encode()


async def reserve(user_id: UUID | str, request_id: str, hold: Decimal, *,
                  quotas: Mapping[str, int | None] | None = None, api_key_id: UUID | str | None = None,
                  model: str = "", max_in_flight: int | None = None,
                  check_tier: Callable[[str], None] | None = None) -> Reservation:
    """Hold ``hold`` credit and count one request against the monthly quota, atomically.

    The quota is ``quotas[current tier]`` (None = unlimited; a tier not in the map has the free
    tier's quota; no map = unlimited for everyone; ``Settings.quotas()`` is the map);
    ``max_in_flight`` caps the user's open reservations (None = no cap). A refusal is worded from a
    follow-up read (it never decides),
    in this order: Forbidden (403 ``payment_disputed``: an open Stripe dispute),
    ``check_tier(current tier)`` (raises e.g. 403 when the model is not on the plan),
    QuotaExceeded (429), too many in flight (429), InsufficientCredits (402).
    """
    if hold < 0:
        raise ValueError("hold must be >= 0")
    if hold != to_credit(hold):
        raise ValueError("hold has more than 8 decimal places (round it with pricing.to_credit)")
    quotas_json, default_quota = _quotas.params(quotas)
    params = (str(user_id).encode(), request_id.encode(), str(hold).encode(), _period_param(),
              quotas_json, str(default_quota).encode(), _text(api_key_id), model.encode(), _text(max_in_flight))
    row = await combine.call((params[0].decode(), None if api_key_id is None else str(api_key_id)), RESERVE, params,
                             _reserve_op, on_lost=lambda _row: cancel(request_id))
    if row is not None:
        tier = row[1]
        return Reservation(request_id=request_id, user_id=user_id, amount=hold,
                           tier=tier.decode() if tier is not None else FREE_TIER)
    quota_map = {k: (-1 if v is None else v) for k, v in (quotas or {}).items()}
    state = await db.fetchone(
        "SELECT b.balance, b.reserved, b.in_flight, b.period_start, b.period_requests, u.tier, k.spend_cap, "
        "k.spent AS key_spent, k.reserved AS key_reserved, EXISTS (SELECT 1 FROM stripe_disputes d "
        "WHERE d.user_id = b.user_id AND NOT d.closed) AS disputed FROM balances b JOIN users u ON u.id = b.user_id "
        "LEFT JOIN api_keys k ON k.id = %s AND k.user_id = b.user_id AND k.spend_cap IS NOT NULL "
        "WHERE b.user_id = %s", (api_key_id, user_id))
    if state is None:
        raise NotFound("user not found", code="user_not_found")
    refuse(state, hold, period=dt.date.fromisoformat(params[3].decode()), quota_map=quota_map,
           default_quota=default_quota, max_in_flight=max_in_flight, check_tier=check_tier)


def refuse(state: Mapping[str, Any], hold: Decimal, *, period: dt.date, quota_map: Mapping[str, int],
           default_quota: int, max_in_flight: int | None,
           check_tier: Callable[[str], None] | None = None) -> NoReturn:
    """Word a refused reserve from the follow-up read ``state`` (``reserve``'s order). The read only
    words the refusal: the statement decided, and a request of the user may have finished in
    between, giving back the room the statement lacked."""
    if state["disputed"]:
        raise Forbidden("A payment on this account is disputed: new requests are blocked until the dispute is "
                        "resolved. Contact support.", code="payment_disputed")
    if check_tier is not None:
        check_tier(state["tier"])
    used = 0 if state["period_start"] < period else state["period_requests"]
    limit = quota_map.get(state["tier"], default_quota)
    if limit >= 0 and used >= limit:
        reset = next_period_start()
        raise QuotaExceeded(f"Monthly request quota of {limit} requests is exhausted; it resets on "
                            f"{reset.isoformat()}.", quota=limit, used=used, resets_at=reset.isoformat())
    if max_in_flight is not None and state["in_flight"] >= max_in_flight:
        raise RateLimited(f"Too many requests in flight: at most {max_in_flight} of your requests can run at "
                          "once. Retry when one has finished.", code="concurrency_limit_exceeded",
                          headers={"retry-after": "1"}, limit=max_in_flight)
    available = state["balance"] - state["reserved"]
    cap = state["spend_cap"]
    # A capped key with enough balance was refused by its cap (or by a cap that has just been
    # freed by a concurrent settle: the statement decided, this read only words the refusal).
    if cap is not None and (available >= hold or cap - state["key_spent"] - state["key_reserved"] < hold):
        left = max(cap - state["key_spent"] - state["key_reserved"], ZERO)
        raise InsufficientCredits(
            f"This API key's spend cap of ${money(cap)} is reached: this request needs up to ${money(hold)} but "
            f"${money(left)} of the cap is left.", code="spend_cap_exceeded", spend_cap=money(cap),
            spent=money(state["key_spent"]), required=money(hold))
    if available >= hold:
        # Refused for room that the user's requests in flight held (their holds or in-flight slots),
        # given back before this read: retryable, never "insufficient credits" with the credit there.
        raise RateLimited("The credit or the in-flight slot this request needed was held by your other requests "
                          "and has just been given back: retry.", code="concurrency_limit_exceeded",
                          headers={"retry-after": "1"})
    raise InsufficientCredits(
        f"Insufficient credits: this request needs up to ${money(hold)} but ${money(max(available, ZERO))} is "
        "available.", balance=money(available), required=money(hold))


def _reserve_op(params: Sequence[bytes | None]) -> str:
    """The reserve as an element of mlp_batch's operations (``money.combine``)."""
    t = combine.text
    return (f'["r",{t(params[0])},{t(params[1])},{t(params[2])},{t(params[3])},{(params[4] or b"{}").decode()},'
            f"{t(params[5])},{t(params[6])},{t(params[7])},{t(params[8])}]")


# Sent through ``db.call`` (see RESERVE_SQL): reservation id, request id, model. Every request still
# running after ``chat.service.MARK_SENT_AFTER_S`` (1 s: most real provider calls) sends it. A
# standing reservation (migration 0012) it marks is no longer idle: never released as such.
MARK_UPSTREAM_SQL = ("UPDATE reservations SET upstream_at = now(), standing_until = NULL, used_by = $2::text, "
                     "model = $3::text WHERE request_id = $1::text AND upstream_at IS NULL RETURNING request_id")
MARK_UPSTREAM = db.Statement("ledger_mark_sent", MARK_UPSTREAM_SQL)


async def mark_upstream(reservation_id: str, request_id: str | None = None, model: str = "") -> None:
    """Record on the reservation that the request is being sent to a provider (the orphan sweeper
    then charges it instead of releasing it), and which request uses it (a carried hold's id is
    not the request's)."""
    await db.call(MARK_UPSTREAM, (reservation_id.encode(), (request_id or reservation_id).encode(), model.encode()))


# Sent through ``db.call`` (see RESERVE_SQL): request_id, period; a row when a reservation was undone.
CANCEL_SQL = """
WITH r AS (
    DELETE FROM reservations WHERE request_id = $1::text RETURNING user_id, amount, api_key_id
), k AS (
    UPDATE api_keys SET reserved = GREATEST(api_keys.reserved - r.amount, 0)
    FROM r WHERE api_keys.id = r.api_key_id AND api_keys.user_id = r.user_id AND api_keys.spend_cap IS NOT NULL
    RETURNING api_keys.id
)
UPDATE balances SET reserved = balances.reserved - r.amount,
    in_flight = GREATEST(balances.in_flight - 1, 0),
    period_requests = CASE WHEN period_start = $2::date THEN GREATEST(period_requests - 1, 0)
                           ELSE period_requests END,
    updated_at = now()
FROM r LEFT JOIN k ON true WHERE balances.user_id = r.user_id
RETURNING balances.user_id
"""
CANCEL = db.Statement("ledger_cancel", CANCEL_SQL)


async def cancel(request_id: str) -> bool:
    """Undo a reservation as if the request never happened (refused before any work: rate
    limit, tier check). No usage record, no ledger row, the quota count given back."""
    return await db.call(CANCEL, (request_id.encode(), period_start().isoformat().encode())) is not None


# --------------------------------------------------------------------------- settle / release
@record(kw_only=True)
class UsageRecord(Tokens):
    """One ``usage_records`` row: the token counts of ``adapters.contract.Tokens`` (inherited: THE
    list of usage fields), the unit prices they were billed at and the request's facts. Every field
    but ``user_id`` (taken from the reservation) and ``extra`` is a column of the same name; the
    settle statement's record is derived from the fields (:data:`RECORD_COLUMNS`; mlp_settle refuses
    any other set, so a new field needs a migration that replaces mlp_settle: docs/money.md)."""

    request_id: str
    user_id: UUID | str
    model_requested: str
    status: str                      # ok | partial | failed | cancelled | orphaned
    api_key_id: UUID | str | None = None
    model_served: str | None = None
    provider: str | None = None
    # unit prices: ``<name>_price`` for each billed price ``name`` of ``ModelPrice`` (see ``price``)
    prompt_price: Decimal = ZERO
    completion_price: Decimal = ZERO
    cache_read_price: Decimal | None = None
    cache_write_price: Decimal | None = None
    cache_write_1h_price: Decimal | None = None
    audio_price: Decimal | None = None
    request_price: Decimal = ZERO
    markup: Decimal = ZERO
    byok: bool = False
    provider_cost: Decimal = ZERO
    reported_cost: Decimal | None = None  # the cost the provider reported (OpenRouter usage.cost)
    charge: Decimal = ZERO
    latency_ms: int | None = None
    ttfb_ms: int | None = None
    error_code: str | None = None
    estimated: bool = False
    stream: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, tokens: Tokens) -> None:
        """Take every count of ``tokens`` (``TOKEN_FIELDS``)."""
        for name in TOKEN_FIELDS:
            setattr(self, name, getattr(tokens, name))

    def price(self, price: ModelPrice) -> None:
        """Take the unit prices of ``price`` (each ``ModelPrice`` field with a ``<name>_price`` here)."""
        for name, column in _PRICE_COLUMNS:
            setattr(self, column, getattr(price, name))


# The ModelPrice fields recorded on a usage record (the per-image fee is part of holds only).
PRICE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ModelPrice)
                                      if f"{f.name}_price" in {g.name for g in fields(UsageRecord)})
_PRICE_COLUMNS: tuple[tuple[str, str], ...] = tuple((name, f"{name}_price") for name in PRICE_FIELDS)
# The usage_records columns written from a UsageRecord: every field but the reservation's user_id
# (the row's user comes from the reservation it closes) and ``extra``.
RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord) if f.name not in ("user_id", "extra"))


def _json_value(value: object) -> str:
    """Decimals (and UUIDs) as JSON strings: numeric_in reads them exactly (never through a float)."""
    if value.__class__ is Decimal or isinstance(value, Decimal | UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a usage record value")


_record_values = operator.attrgetter(*RECORD_COLUMNS)
# json.dumps(..., separators=(",", ":"), default=_json_value) without its per-call encoder set-up
# (the same C encoder: ensure_ascii, no circular-reference check: a record holds no containers).
_record_encoder = json.JSONEncoder(separators=(",", ":"), default=_json_value, check_circular=False)


# Each column's key with what precedes it ('{"prompt_tokens":', ',"completion_tokens":', ...).
_RECORD_KEYS: tuple[str, ...] = tuple(("," if i else "{") + encode_basestring_ascii(name) + ":"
                                      for i, name in enumerate(RECORD_COLUMNS))


def record_json(record: UsageRecord) -> str:
    """The usage record as mlp_settle takes it: a JSON object of exactly :data:`RECORD_COLUMNS`.

    Written value by value, exactly as ``_record_encoder.encode`` of the record's dict writes it
    (its C string escaping, ``int.__repr__``, Decimals as strings), without building the dict or a
    call back into Python per Decimal; any other value goes through the encoder itself."""
    out: list[str] = []
    append = out.append
    for key, value in zip(_RECORD_KEYS, _record_values(record), strict=True):
        append(key)
        cls = value.__class__
        if cls is str:
            append(encode_basestring_ascii(value))
        elif cls is int:
            append(int.__repr__(value))
        elif value is None:
            append("null")
        elif cls is Decimal or cls is UUID:
            append('"' + str(value) + '"')
        elif value is True:
            append("true")
        elif value is False:
            append("false")
        else:  # a subclass, anything else: as the encoder writes it
            append(_record_encoder.encode(value))
    append("}")
    return "".join(out)


# Sent through ``db.call`` (see RESERVE_SQL): record, period, uncount, description.
SETTLE_SQL = (
    "SELECT balance, reserved, hold, ledger_rows FROM mlp_settle($1::jsonb, $2::date, $3::boolean, $4::text)")
SETTLE = db.Statement("ledger_settle", SETTLE_SQL)


# Settle through mlp_settle_carry (migration 0012, docs/money.md "Carried holds"): record, period,
# uncount, description, user id, the reservation the request used, the standing reservations the
# container drops, then the standing reservation to open: its id, hold, idle seconds, and
# mlp_reserve's quota map, default quota and in-flight cap.
SETTLE_CARRY_SQL = (
    "SELECT balance, reserved, hold, ledger_rows, carried_tier FROM mlp_settle_carry($1::jsonb, $2::date, "
    "$3::boolean, $4::text, $5::uuid, $6::text, $7::text[], $8::text, $9::numeric, $10::integer, $11::jsonb, "
    "$12::integer, $13::integer)")
SETTLE_CARRY = db.Statement("ledger_settle_carry", SETTLE_CARRY_SQL)


@frozen
class Carry:
    """A standing reservation for the next request of the settled request's user and key: opened by
    its settle when mlp_reserve's checks pass, idle in the database for at most ``seconds``."""

    request_id: str
    hold: Decimal
    seconds: int
    quotas: Mapping[str, int | None] | None = None
    max_in_flight: int | None = None


@frozen
class Settlement:
    """What a settle did: settled (or already closed), the balance after it and the charge."""

    settled: bool           # False if the reservation was already settled/released (idempotent)
    balance: Decimal = ZERO
    reserved: Decimal = ZERO
    hold: Decimal = ZERO
    charge: Decimal = ZERO  # what was charged (may exceed ``hold``: see ``overrun``)
    carried_tier: str | None = None  # the user's tier when the settle opened the ``Carry`` asked for

    @property
    def overrun(self) -> bool:
        """The charge exceeded the hold (charged anyway; the usage record keeps both)."""
        return self.settled and self.charge > self.hold

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved


# Errors after which the same settle statement is simply sent again: the database or the
# connection to it failed (dead or refused connection, failover, pool exhausted, deadlock,
# statement timeout). Safe because the statement is idempotent by its reservation: if a lost
# reply had in fact committed, the retry finds no reservation and changes nothing.
TRANSIENT_DB_ERRORS = (psycopg.OperationalError, PoolTimeout)
RETRY_FIRST_DELAY_S = 0.05
RETRY_MAX_DELAY_S = 1.0


async def settle(record: UsageRecord, *, retry_for: float = 0.0, reservation: str | None = None,
                 release: Sequence[str] = (), carry: Carry | None = None) -> Settlement:
    """Close a reservation: charge ``record.charge``, release the rest, write the ledger row and
    the usage record, all in one statement. A second call for the same request is a no-op.

    ``reservation``: the reservation the request used when it is not its own id (a standing one,
    carried by an earlier settle); ``release``: idle standing reservations of the same user and key
    to give back; ``carry``: a standing reservation to open for the next request
    (``Settlement.carried_tier`` tells whether it was). Same statement, same transaction.

    Transient database errors are retried for up to ``retry_for`` seconds (backing off), then
    raised. If the charge exceeds the hold (a provider billed beyond its documented limits) it is
    charged anyway: the hold is a guard, the usage is the truth (``Settlement.overrun`` tells).
    """
    if record.charge < 0:
        raise ValueError("charge must be >= 0")
    if record.charge != to_credit(record.charge):
        raise ValueError("charge has more than 8 decimal places (round it with pricing.to_credit)")
    params: tuple[bytes | None, ...] = (
        record_json(record).encode(),
        _period_param(),
        b"t" if record.status in ("failed", "orphaned") and record.charge == 0 else b"f",
        f"{record.model_served or record.model_requested} {record.prompt_tokens}+"
        f"{record.completion_tokens} tokens".encode(),
    )
    statement = SETTLE
    if reservation is not None or release or carry is not None:
        statement = SETTLE_CARRY
        if carry is not None:
            if carry.hold != to_credit(carry.hold) or carry.hold < 0:
                raise ValueError("a carried hold must be >= 0 with at most 8 decimal places")
            quotas_json, default_quota = _quotas.params(carry.quotas)
            carried: tuple[bytes | None, ...] = (
                carry.request_id.encode(), str(carry.hold).encode(), str(carry.seconds).encode(), quotas_json,
                str(default_quota).encode(), _text(carry.max_in_flight))
        else:
            carried = (None,) * 6
        params = (*params, str(record.user_id).encode(), _text(reservation), _text_array(release), *carried)
    group = (str(record.user_id), None if record.api_key_id is None else str(record.api_key_id))
    give_up = time.monotonic() + retry_for
    delay = RETRY_FIRST_DELAY_S
    while True:
        try:
            if statement is SETTLE:
                row = await combine.call(group, SETTLE, params, _settle_op)
            else:
                row = await combine.call(group, SETTLE_CARRY, params, _settle_carry_op)
            break
        except TRANSIENT_DB_ERRORS as exc:
            if time.monotonic() + delay > give_up:
                raise
            logger.warning("settle failed; retrying", extra={"request_id": record.request_id,
                                                             "error": type(exc).__name__})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
    if row is None:
        return Settlement(settled=False)
    balance, reserved, hold = row[0], row[1], row[2]
    assert balance is not None and reserved is not None and hold is not None  # NOT NULL columns
    tier = row[4] if statement is SETTLE_CARRY else None
    return Settlement(settled=True, balance=Decimal(balance.decode()), reserved=Decimal(reserved.decode()),
                      hold=Decimal(hold.decode()), charge=record.charge,
                      carried_tier=tier.decode() if tier is not None else None)


def _settle_op(params: Sequence[bytes | None]) -> str:
    """The settle as an element of mlp_batch's operations (``money.combine``)."""
    t = combine.text
    return f'["s",{(params[0] or b"null").decode()},{t(params[1])},{t(params[2])},{t(params[3])}]'


def _settle_carry_op(params: Sequence[bytes | None]) -> str:
    """The settle through mlp_settle_carry as an element of mlp_batch's operations."""
    t = combine.text
    return (f'["c",{(params[0] or b"null").decode()},{t(params[1])},{t(params[2])},{t(params[3])},{t(params[4])},'
            f"{t(params[5])},{t(params[6])},{t(params[7])},{t(params[8])},{t(params[9])},"
            f'{(params[10] or b"null").decode()},{t(params[11])},{t(params[12])}]')


async def release(record: UsageRecord) -> Settlement:
    """Failure before any output: charge nothing, free the hold, still record the attempt."""
    record.charge = ZERO
    return await settle(record)


ORPHANS_SQL = """
SELECT request_id, used_by, user_id, api_key_id, model, amount, upstream_at IS NOT NULL AS reached FROM reservations
WHERE created_at < now() - make_interval(mins => %s) AND standing_until IS NULL ORDER BY created_at LIMIT %s
"""


@frozen
class Orphan:
    """A reservation ``settle_orphans`` closed, and what it charged."""

    request_id: str
    charged: Decimal     # its hold when the request had reached a provider, else 0 (released)


async def settle_orphans(older_than_minutes: int, *, limit: int = 1000) -> list[Orphan]:
    """Close reservations older than any request can live (a container that died mid-request,
    or a database that went away before the settle): one that reached a provider is charged its
    hold, marked estimated (the provider billed a call whose usage never arrived); one that did
    not is released and gives the quota request back. One settle statement each, idempotent."""
    rows = await db.fetchall(ORPHANS_SQL, (older_than_minutes, limit))
    closed = []
    for r in rows:
        charge = r["amount"] if r["reached"] else ZERO
        # a used standing reservation is recorded under the id of the request that used it
        request_id = r["used_by"] or r["request_id"]
        result = await settle(UsageRecord(
            request_id=request_id, user_id=r["user_id"], api_key_id=r["api_key_id"],
            model_requested=r["model"] or "unknown", status="orphaned", error_code="orphaned_reservation",
            charge=charge, estimated=r["reached"]), reservation=r["request_id"])
        if result.settled:
            closed.append(Orphan(request_id, charge))
    return closed


IDLE_STANDING_SQL = """
SELECT DISTINCT user_id, api_key_id FROM reservations WHERE standing_until < now() LIMIT %s
"""


async def release_standing(user_id: str, api_key_id: str | None, ids: Sequence[str]) -> int:
    """Give back these standing reservations (carried holds) of a user and key while they are idle,
    and any of the user's past their time: no charge, no usage record, the quota request and the
    in-flight slot returned (mlp_release_standing: it never waits on a reservation a request is
    using). For a process that stops with holds it will never use (``chat.service``)."""
    row = await db.fetchone("SELECT mlp_release_standing(%s, %s, %s, %s) AS n",
                            (user_id, api_key_id, list(ids), period_start()))
    return row["n"] if row else 0


async def release_idle_standing(*, limit: int = 1000) -> int:
    """Give back standing reservations (carried holds, migration 0012) idle past their time: no
    charge, no usage record, the quota request and the in-flight slot returned. One statement per
    user and key (mlp_release_standing: it never waits on a reservation a request is using)."""
    released = 0
    period = period_start()
    for r in await db.fetchall(IDLE_STANDING_SQL, (limit,)):
        row = await db.fetchone("SELECT mlp_release_standing(%s, %s, NULL, %s) AS n",
                                (r["user_id"], r["api_key_id"], period))
        released += row["n"] if row else 0
    return released


async def release_orphans(older_than_minutes: int) -> list[str]:
    """``settle_orphans`` for the ops CLI (``mlp doctor``): the request ids it closed."""
    return [o.request_id for o in await settle_orphans(older_than_minutes)]


# --------------------------------------------------------------------------- checks
INVARIANT_SQL = """
SELECT b.user_id, b.balance, COALESCE(l.total, 0) AS ledger_sum, b.reserved, COALESCE(r.total, 0) AS reserved_sum,
       b.in_flight, COALESCE(r.n, 0) AS reservations
FROM balances b
LEFT JOIN (SELECT user_id, sum(amount) AS total FROM ledger_entries GROUP BY user_id) l USING (user_id)
LEFT JOIN (SELECT user_id, sum(amount) AS total, count(*) AS n FROM reservations GROUP BY user_id) r USING (user_id)
WHERE b.balance <> COALESCE(l.total, 0) OR b.reserved <> COALESCE(r.total, 0) OR b.in_flight <> COALESCE(r.n, 0)
"""


async def invariant_violations() -> list[dict[str, Any]]:
    """Users whose cached balance, reserved amount or in-flight count disagrees with their rows
    (should be none)."""
    return await db.fetchall(INVARIANT_SQL)


async def get_balance(user_id: UUID | str) -> dict[str, Any] | None:
    return await db.fetchone(
        "SELECT balance, reserved, balance - reserved AS available, period_start, period_requests, in_flight "
        "FROM balances WHERE user_id = %s", (user_id,))
