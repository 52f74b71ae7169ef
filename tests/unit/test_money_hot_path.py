"""The money path's per-request helpers give exactly what their plain forms give: the usage record's
JSON as the encoder wrote it from a dict, the period parameter, and the arithmetic in EXACT
(value AND exponent, since the record carries the Decimal's text)."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from dataclasses import fields
from decimal import Context, Decimal, localcontext

from gateway.adapters.contract import TOKEN_FIELDS, Usage
from gateway.money import ledger
from gateway.money.holds import hold_for
from gateway.money.pricing import ONE, LongContextPrice, ModelPrice, charge_for, to_credit

D = Decimal
WIDE = Context(prec=100)


def reference_json(record: ledger.UsageRecord) -> str:
    """The record's JSON as ``record_json`` wrote it before: the encoder over a dict of the columns."""
    return ledger._record_encoder.encode({name: getattr(record, name) for name in ledger.RECORD_COLUMNS})


TEXTS = ["", "ok", "openai/gpt-4o-mini", 'quo"te', "back\\slash", "new\nline\ttab\x00\x1f", "héllo wörld",
         "日本語モデル", "emoji 🤖💸", "\u2028\u2029", "</script>", "x" * 300]
DECIMALS = [D(0), D("0E-8"), D("0.00000001"), D("1.5E-7"), D("6E-7"), D("0.000000123456789012345678"),
            D("12345678901234567890.123456789012345678"), D("-0.00000015"), D("1E+3"), D("0.10"),
            D("3.000000000000000000000000000000000000000000001"), D("0.000022200")]


def random_record(rnd: random.Random) -> ledger.UsageRecord:
    record = ledger.UsageRecord(request_id=rnd.choice(TEXTS), user_id=str(uuid.uuid4()),
                                model_requested=rnd.choice(TEXTS), status=rnd.choice(["ok", "failed", "partial"]))
    for f in fields(ledger.UsageRecord):
        if f.name in ("user_id", "extra", "request_id", "model_requested", "status"):
            continue
        value = getattr(record, f.name)
        if f.name in TOKEN_FIELDS or f.name in ("latency_ms", "ttfb_ms"):
            new: object = rnd.choice([0, 1, 12, -3, 10**12, 2**70] + ([None] if value is None else []))
        elif f.name in ("byok", "estimated", "stream"):
            new = rnd.choice([True, False])
        elif f.name == "api_key_id":
            new = rnd.choice([None, str(uuid.uuid4()), uuid.uuid4()])
        elif isinstance(value, Decimal) or f.name.endswith(("_price", "_cost")):
            new = rnd.choice(DECIMALS + ([None] if value is None else []))
        else:
            new = rnd.choice([None, *TEXTS])
        setattr(record, f.name, new)
    return record


def test_record_json_is_the_encoders_text_for_many_records() -> None:
    rnd = random.Random(15)
    for _ in range(3000):
        record = random_record(rnd)
        text = ledger.record_json(record)
        assert text == reference_json(record)
        decoded = json.loads(text)
        assert list(decoded) == list(ledger.RECORD_COLUMNS)
        for name in ("charge", "provider_cost", "prompt_price"):
            assert decoded[name] == str(getattr(record, name))  # Decimals as their exact text


def test_record_json_of_a_plain_record_and_odd_values() -> None:
    record = ledger.UsageRecord(request_id="req_1", user_id="u", model_requested="m", status="ok")
    assert ledger.record_json(record) == reference_json(record)
    # values of other types are written as the encoder writes them (a Decimal subclass, a float)
    class Sub(Decimal):
        pass

    record.charge = Sub("0.00000002")
    record.latency_ms = 1.5  # type: ignore[assignment]
    assert ledger.record_json(record) == reference_json(record)
    assert json.loads(ledger.record_json(record))["charge"] == str(record.charge) == "2E-8"


def test_the_period_parameter_is_period_start() -> None:
    assert ledger._period_param() == ledger.period_start().isoformat().encode()
    assert ledger._period_param() is ledger._period_param()  # kept within the month


def test_the_period_parameter_follows_the_month(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    period = ledger._Period()
    clock = [dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()]
    monkeypatch.setattr(ledger.time, "time", lambda: clock[0])
    assert period.get() == b"2026-12-01"
    clock[0] += 1
    assert period.get() == b"2027-01-01"
    clock[0] -= 2  # a clock stepped back
    assert period.get() == b"2026-12-01"


PRICES = ["0", "0.00000015", "0.0000006", "7.5E-8", "1E-7", "0.000012345678901234567", "3",
          "0.123456789012345678", "2.5E-6", "0.000001"]


def reference_cost(p: ModelPrice, prompt: int, completion: int, cached: int, written: int, written_1h: int,
                   audio: int) -> Decimal:
    """``provider_cost`` as one expression under ``localcontext`` (the form it replaced)."""
    p = p.for_prompt(prompt)
    cached = max(0, min(cached, prompt))
    written = max(0, min(written, prompt - cached))
    written_1h = max(0, min(written_1h, written))
    audio = max(0, min(audio, prompt - cached - written))
    read = p.cache_read if p.cache_read is not None else p.prompt
    write = p.cache_write if p.cache_write is not None else p.prompt
    write_1h = p.cache_write_1h if p.cache_write_1h is not None else write
    audio_price = p.audio if p.audio is not None else p.prompt
    with localcontext(WIDE):
        return (Decimal(prompt - cached - written - audio) * p.prompt + Decimal(cached) * read
                + Decimal(written - written_1h) * write + Decimal(written_1h) * write_1h
                + Decimal(audio) * audio_price + Decimal(completion) * p.completion + p.request)


def test_cost_charge_and_hold_equal_their_plain_forms_exponent_included() -> None:
    rnd = random.Random(7)

    def price() -> Decimal:
        return D(rnd.choice(PRICES))

    for _ in range(3000):
        p = ModelPrice(prompt=price(), completion=price(), request=price(), cache_read=rnd.choice([None, price()]),
                       cache_write=rnd.choice([None, price()]), cache_write_1h=rnd.choice([None, price()]),
                       image=price(), audio=rnd.choice([None, price()]))
        if rnd.random() < 0.3:
            p = LongContextPrice.tiered(p, 200_000, D(2), D("1.5"))
        counts = [rnd.choice([0, 1, 12, 999, 150_000, 300_000, 10**7]) for _ in TOKEN_FIELDS]
        usage = Usage(**dict(zip(TOKEN_FIELDS, counts, strict=True)))
        expected = reference_cost(p, *counts)
        cost = p.cost_of(usage)
        assert str(cost) == str(expected)
        assert str(p.provider_cost(**usage.tokens())) == str(expected)
        markup, fee = rnd.choice([D(0), D("0.05"), D("0.0555555555555"), D(1)]), D("0.05")
        with localcontext(WIDE):
            plain_charge = to_credit(expected * (ONE + markup)) if expected > 0 else D(0)
            plain_byok = to_credit(expected * fee) if expected > 0 else D(0)
        assert str(charge_for(cost, markup)) == str(plain_charge)
        assert str(charge_for(cost, markup, byok=True, byok_fee=fee)) == str(plain_byok)
        images, audio = rnd.choice([0, 3]), rnd.random() < 0.3
        q = p.for_prompt(counts[0])
        with localcontext(WIDE):
            worst = (Decimal(counts[0]) * q.prompt_bound_price(audio=audio) + Decimal(counts[1]) * q.completion
                     + Decimal(images) * q.image + q.request)
        assert str(hold_for(p, counts[0], counts[1], markup, images=images, audio=audio)) == str(
            charge_for(worst, markup))
