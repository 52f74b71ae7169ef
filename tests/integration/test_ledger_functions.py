"""The money statements as PL/pgSQL functions (migration 0010: mlp_reserve, mlp_settle): the settle
function writes every field of ``ledger.UsageRecord`` (derived from the dataclass, so a new field
is covered the day it is added), refuses a record whose fields are not exactly the columns it
writes, keeps Decimals exact through the JSON record, and does not depend on the caller's
search_path."""

from __future__ import annotations

import json
import uuid
from dataclasses import fields
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway import db
from gateway.money import ledger
from gateway.money.ledger import UsageRecord

pytestmark = pytest.mark.integration

D = Decimal
NOT_WRITTEN = {"id", "user_id", "hold", "created_at"}  # the row's own, or taken from the reservation


async def usage_columns() -> dict[str, int | None]:
    """usage_records' columns -> numeric scale (None for other types)."""
    rows = await db.fetchall("SELECT column_name, numeric_scale, data_type FROM information_schema.columns "
                             "WHERE table_schema = 'public' AND table_name = 'usage_records'")
    return {r["column_name"]: (r["numeric_scale"] if r["data_type"] == "numeric" else None) for r in rows}


def distinct_values(scales: dict[str, int | None], key_id: uuid.UUID, request_id: str) -> dict[str, Any]:
    """A value for every record field, none of them its default, Decimals at their column's full scale."""
    values: dict[str, Any] = {}
    for i, f in enumerate(fields(UsageRecord), start=1):
        if f.name in ("user_id", "extra"):
            continue
        kind = str(f.type).split(" | ")[0]
        if f.name == "request_id":
            values[f.name] = request_id
        elif f.name == "api_key_id":
            values[f.name] = key_id
        elif f.name == "status":
            values[f.name] = "partial"
        elif kind == "int":
            values[f.name] = 1000 + i
        elif kind == "bool":
            values[f.name] = f.default is not True
        elif kind == "str":
            values[f.name] = f"value of {f.name}"
        elif kind == "Decimal":
            scale = scales[f.name]
            assert scale is not None, f"{f.name} is a Decimal but its column is not numeric"
            values[f.name] = D(i) + D(i).scaleb(-scale)  # e.g. 13.000000000000000013: the last digit counts
        else:
            raise AssertionError(f"no test value for {f.name}: {f.type}")
    return values


async def test_record_columns_are_the_usage_records_columns(database_url: str) -> None:
    """A usage_records column without a UsageRecord field (or the reverse) is never written: decide."""
    assert set(ledger.RECORD_COLUMNS) == set(await usage_columns()) - NOT_WRITTEN


async def test_settle_writes_every_record_field_exactly(make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="100000")
    request_id = "req_" + uuid.uuid4().hex
    hold = D("0.12345678")
    await ledger.reserve(user.user_id, request_id, hold, api_key_id=user.key_id, model="openai/gpt-4o")
    values = distinct_values(await usage_columns(), user.key_id, request_id)
    assert all(v != f.default for f in fields(UsageRecord) if (v := values.get(f.name)) is not None)
    record = UsageRecord(user_id=user.user_id, **values)
    result = await ledger.settle(record)
    assert result.settled and result.hold == hold
    row = await db.fetchone("SELECT * FROM usage_records WHERE request_id = %s", (request_id,))
    assert row is not None
    for name in ledger.RECORD_COLUMNS:
        assert row[name] == values[name] and type(row[name]) is type(values[name]), name
    assert row["user_id"] == user.user_id and row["hold"] == hold
    balance = await ledger.get_balance(user.user_id)
    assert balance is not None and balance["balance"] == D("100000") - values["charge"]
    entry = await db.fetchone("SELECT amount FROM ledger_entries WHERE reference = %s", (request_id,))
    assert entry == {"amount": -values["charge"]}


def test_the_record_is_json_with_decimals_as_strings() -> None:
    record = UsageRecord(request_id="r", user_id="u", model_requested="m", status="ok", api_key_id=uuid.UUID(int=7),
                         prompt_price=D("0.000000000000000001"), charge=D("12345678901.23456789"))
    sent = json.loads(ledger.record_json(record))
    assert list(sent) == list(ledger.RECORD_COLUMNS)
    assert sent["prompt_price"] == "1E-18" and D(sent["prompt_price"]) == D("1E-18")
    assert sent["charge"] == "12345678901.23456789"
    assert sent["api_key_id"] == str(uuid.UUID(int=7)) and sent["cache_read_price"] is None
    assert not any(isinstance(v, float) for v in sent.values())


async def settle_directly(record: dict[str, Any]) -> Any:
    return await db.fetchone("SELECT * FROM mlp_settle(%s::jsonb, %s, false, 'x')",
                             (json.dumps(record), ledger.period_start()))


@pytest.mark.parametrize("change", ["extra field", "missing field"])
async def test_settle_refuses_a_record_that_is_not_its_columns(make_user, change: str) -> None:  # type: ignore[no-untyped-def]
    """A field added to UsageRecord but not to mlp_settle fails loudly (and changes nothing)."""
    user = await make_user(balance="10")
    request_id = "req_" + uuid.uuid4().hex
    await ledger.reserve(user.user_id, request_id, D("1"))
    record = json.loads(ledger.record_json(UsageRecord(request_id=request_id, user_id=user.user_id,
                                                       model_requested="m", status="ok", charge=D("0.5"))))
    if change == "extra field":
        record["future_tokens"] = 5
    else:
        del record["audio_tokens"]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not the columns it writes"):
        await settle_directly(record)
    assert await db.fetchone("SELECT amount FROM reservations WHERE request_id = %s", (request_id,)) == {
        "amount": D("1")}
    assert await db.fetchone("SELECT 1 FROM usage_records WHERE request_id = %s", (request_id,)) is None
    assert await ledger.invariant_violations() == []


async def test_the_functions_do_not_depend_on_the_callers_search_path(make_user, database_url: str) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    request_id = "req_" + uuid.uuid4().hex
    record = UsageRecord(request_id=request_id, user_id=user.user_id, model_requested="m", status="ok",
                         charge=D("0.25"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS decoy")
        conn.execute("CREATE TABLE IF NOT EXISTS decoy.balances (user_id uuid, balance numeric, reserved numeric)")
        conn.execute("SET search_path = decoy, pg_catalog")
        reserved = conn.execute(
            "SELECT tier FROM public.mlp_reserve(%s, %s, 1, %s, '{}', -1, NULL, 'm', NULL)",
            (user.user_id, request_id, ledger.period_start())).fetchone()
        assert reserved == ("pro",)
        settled = conn.execute("SELECT balance, hold, ledger_rows FROM public.mlp_settle(%s, %s, false, 'x')",
                               (ledger.record_json(record), ledger.period_start())).fetchone()
        assert settled == (D("9.75"), D("1"), 1)
        conn.execute("DROP SCHEMA decoy CASCADE")
    assert await ledger.invariant_violations() == []
