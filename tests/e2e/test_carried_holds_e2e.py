"""Carried holds (docs/money.md) end to end: the local stack with CARRY_HOLDS on (the product's
default; the rest of the suite runs with it off), driven by the openai SDK, buffered and streamed.
Each request after the first of a key runs on the hold its predecessor's settle
carried; the books stay exact and /v1/balance shows what is carried."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tests.e2e.conftest import create_user, start_local_stack

pytestmark = pytest.mark.e2e
MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def carrying_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARRY_HOLDS", "true")
        with start_local_stack(tmp_path_factory) as creds:
            yield creds


def _rows(stack: dict[str, Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack["database_url"], autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def test_requests_after_the_first_run_on_carried_holds_and_the_books_stay_exact(
        carrying_stack: dict[str, Any]) -> None:
    stack = carrying_stack
    user = create_user(stack["database_url"], balance="5")
    sdk = openai.OpenAI(base_url=stack["openai_base_url"], api_key=user["api_key"], max_retries=0)
    for i in range(3):
        r = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Hi {i} [[words:3]]"}])
        assert r.usage is not None and r.usage.completion_tokens == 3
        chunks = list(sdk.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                                  messages=[{"role": "user", "content": f"Hi {i} [[words:3]]"}]))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    holds = [h for (h,) in _rows(stack, "SELECT hold FROM usage_records WHERE user_id = %s ORDER BY id",
                                 user["user_id"])]
    assert len(holds) == 6
    assert holds[0] < max(holds[1:])  # later ones ran on carried holds (1.25 x), not a reserve of their own
    [(balance, reserved, in_flight)] = _rows(stack, "SELECT balance, reserved, in_flight FROM balances "
                                                    "WHERE user_id = %s", user["user_id"])
    carried = _rows(stack, "SELECT amount FROM reservations WHERE user_id = %s AND standing_until IS NOT NULL",
                    user["user_id"])
    assert (reserved, in_flight) == (sum((a for (a,) in carried), Decimal(0)), len(carried)) and carried
    [(charged,)] = _rows(stack, "SELECT sum(charge) FROM usage_records WHERE user_id = %s", user["user_id"])
    assert balance == Decimal("5") - charged
    shown = httpx.get(f"{stack['base_url']}/v1/balance", headers={"authorization": f"Bearer {user['api_key']}"},
                      timeout=10).json()
    assert Decimal(shown["carried"]) == reserved and Decimal(shown["reserved"]) == reserved
