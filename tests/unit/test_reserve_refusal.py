"""How a refused reserve is worded (``ledger.refuse``): from a read taken after the statement
refused, which a request of the same user finishing in between may have changed. No I/O."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from gateway.errors import Forbidden, InsufficientCredits, QuotaExceeded, RateLimited
from gateway.money.ledger import period_start, refuse

PERIOD = period_start()


def state(**changes: Any) -> dict[str, Any]:
    base = {"balance": Decimal("1.00"), "reserved": Decimal("0.90"), "in_flight": 3, "period_start": PERIOD,
            "period_requests": 10, "tier": "free", "spend_cap": None, "key_spent": None, "key_reserved": None,
            "disputed": False}
    return {**base, **changes}


def word(s: dict[str, Any], hold: str = "0.50", max_in_flight: int | None = 4) -> BaseException:
    with pytest.raises(Exception) as refused:
        refuse(s, Decimal(hold), period=PERIOD, quota_map={"free": 100}, default_quota=100,
               max_in_flight=max_in_flight)
    return refused.value


def test_short_of_credit_is_402_with_the_amounts() -> None:
    err = word(state())
    assert isinstance(err, InsufficientCredits) and err.status == 402
    assert err.extra == {"balance": "0.10000000", "required": "0.50000000"}


def test_room_given_back_before_the_read_is_a_retryable_429_not_insufficient_credits() -> None:
    """The statement refused (a concurrent request held the credit or the last in-flight slot);
    that request settled before the read: the credit is there now. Telling the client it has
    insufficient credits would be false and make it stop; it is told to retry."""
    for max_in_flight in (4, None):
        err = word(state(reserved=Decimal("0.20"), in_flight=2), max_in_flight=max_in_flight)
        assert isinstance(err, RateLimited) and not isinstance(err, QuotaExceeded)
        assert err.status == 429 and err.code == "concurrency_limit_exceeded"
        assert err.headers == {"retry-after": "1"}


def test_the_in_flight_cap_still_reached_is_worded_with_its_limit() -> None:
    err = word(state(reserved=Decimal("0.20"), in_flight=4))
    assert isinstance(err, RateLimited) and err.extra == {"limit": 4}


def test_the_order_dispute_then_quota_then_credit() -> None:
    assert isinstance(word(state(disputed=True, period_requests=100)), Forbidden)
    assert isinstance(word(state(period_requests=100)), QuotaExceeded)
    last_month = PERIOD - dt.timedelta(days=1)
    assert isinstance(word(state(period_requests=100, period_start=last_month)), InsufficientCredits)


def test_a_capped_key_is_worded_by_its_cap() -> None:
    err = word(state(reserved=Decimal("0.20"), spend_cap=Decimal("1.00"), key_spent=Decimal("0.80"),
                     key_reserved=Decimal("0")))
    assert isinstance(err, InsufficientCredits) and err.code == "spend_cap_exceeded"
