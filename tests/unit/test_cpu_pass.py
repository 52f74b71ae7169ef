"""Issue 15, cpu lane: values computed once instead of per request, and cheaper forms of a
per-request step, answer exactly as what they replace."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from decimal import Decimal
from typing import Any

import pytest
from starlette.requests import Request

from gateway import auth, observability
from gateway.chat import service


def test_a_principal_names_its_ids_as_str_does() -> None:
    user, key = uuid.uuid4(), uuid.uuid4()
    p = auth.Principal(user_id=user, key_id=key, tier="free")
    assert (p.user_ref, p.key_ref, p.holder) == (str(user), str(key), (str(user), str(key)))
    session = auth.Principal(user_id=user, key_id=None, tier="pro")  # a JWT session: no key
    assert (session.key_ref, session.holder) == ("None", (str(user), "None"))


def test_derived_ids_are_not_part_of_equality_repr_or_replace() -> None:
    user, key = uuid.uuid4(), uuid.uuid4()
    a, b = auth.Principal(user, key, "free"), auth.Principal(user, key, "free")
    assert a == b and hash(a) == hash(b)
    assert "user_ref" not in repr(a) and "holder" not in repr(a)
    other = uuid.uuid4()
    moved = dataclasses.replace(a, user_id=other)  # recomputed from the new id
    assert (moved.user_ref, moved.holder) == (str(other), (str(other), str(key)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.user_ref = "x"  # type: ignore[misc]


def test_the_carried_holder_tells_keys_apart_as_the_uuid_pair_did() -> None:
    user, k1, k2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pairs = [(user, k1), (user, k2), (uuid.uuid4(), k1), (user, None)]
    holders = [auth.Principal(u, k, "free").holder for u, k in pairs]
    assert len(set(holders)) == len(set(pairs)) == 4
    assert auth.Principal(user, k1, "free").holder == auth.Principal(user, k1, "pro").holder


async def test_require_api_key_sets_request_state_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    principal = auth.Principal(uuid.uuid4(), uuid.uuid4(), "free")

    async def authenticate(secret: str) -> auth.Principal:
        assert secret == "sk-mlp-x"
        return principal

    monkeypatch.setattr(auth, "authenticate_key", authenticate)
    for scope in ({"type": "http", "headers": [(b"authorization", b"Bearer sk-mlp-x")]},
                  {"type": "http", "headers": [(b"authorization", b"Bearer sk-mlp-x")], "state": {"request_id": "r"}}):
        request = Request(scope)
        assert await auth.require_api_key(request) is principal
        assert request.state.principal is principal
        assert Request(scope).state.principal is principal  # in the scope, as Starlette's State puts it
    seen = Request({"type": "http", "headers": [(b"authorization", b"Bearer sk-mlp-x")]})
    state_first = seen.state  # a State built before: it reads the same dict
    await auth.require_api_key(seen)
    assert state_first.principal is principal


def test_in_lambda_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert observability.in_lambda() is False
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "mlp-query")
    assert observability.in_lambda() is True
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "")  # set, if empty: in Lambda, as `in os.environ` says
    assert observability.in_lambda() is ("AWS_LAMBDA_FUNCTION_NAME" in __import__("os").environ) is True
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    assert observability.in_lambda() is False


def _record(status: str = "ok") -> Any:
    return dataclasses.replace(_RECORD, status=status)


_RECORD = service.ledger.UsageRecord(
    request_id="req_1", user_id=uuid.uuid4(), api_key_id=uuid.uuid4(), model_requested="openai/gpt-4o-mini",
    status="ok", stream=False, latency_ms=3, ttfb_ms=None, error_code=None)
_RECORD.provider, _RECORD.prompt_tokens, _RECORD.completion_tokens = "openai", 12, 5
_RECORD.provider_cost, _RECORD.charge = Decimal("0.0000123"), Decimal("0.00001476")


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_the_request_record_is_emitted_only_with_metrics_on(monkeypatch: pytest.MonkeyPatch, status: str) -> None:
    emitted: list[tuple[Any, ...]] = []
    monkeypatch.setattr(service, "emit", lambda dims, values: emitted.append((dims, values)))
    monkeypatch.setattr(observability, "_METRICS_ON", False)
    assert observability.metrics_on() is False
    if observability.metrics_on():
        service._emit_request(_record(status))
    assert emitted == []
    monkeypatch.setattr(observability, "_METRICS_ON", True)
    assert observability.metrics_on() is True
    service._emit_request(_record(status))
    assert len(emitted) == 1 and emitted[0][0] == {"provider": "openai"}
    names = [name for name, _, _ in emitted[0][1]]
    if status == "ok":
        assert names == ["Requests", "PromptTokens", "CompletionTokens", "ProviderCostMicroUSD", "ChargeMicroUSD",
                         "LatencyMs"]
        assert emitted[0][1][4][1] == pytest.approx(14.76)
    else:
        assert names == ["Requests", "UpstreamErrors"]


class _Call:
    """What ``sending`` and ``_Marks`` read and write of a ``Call``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mark: Any = None
        self.marking: Any = None


@pytest.fixture
def marked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []

    async def mark_sent(call: Any) -> None:
        out.append((call.name, asyncio.get_running_loop().time() - call.started))

    monkeypatch.setattr(service, "_mark_sent", mark_sent)
    monkeypatch.setattr(service, "MARK_SENT_AFTER_S", 0.05)
    monkeypatch.setattr(service, "MARK_CHECK_S", 0.02)
    monkeypatch.setattr(service, "_marks", None)
    return out


async def _until(done: Any) -> None:
    for _ in range(500):
        if done():
            await asyncio.sleep(0.01)  # and what a further timer would have done
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never")


def _start(name: str) -> _Call:
    call = _Call(name)
    call.started = asyncio.get_running_loop().time()  # type: ignore[attr-defined]
    service.sending(call)  # type: ignore[arg-type]
    return call


async def test_a_call_still_running_after_the_delay_is_marked_once(marked: list[tuple[str, float]]) -> None:
    call = _start("long")
    mark = call.mark
    service.sending(call)  # type: ignore[arg-type]  # a fallback candidate: still the first mark
    assert call.mark is mark
    await asyncio.sleep(0.2)
    assert [name for name, _ in marked] == ["long"]
    assert marked[0][1] >= 0.05 - 0.006  # not before the delay (a loop may run a timer a tick early)
    assert call.marking is not None and call.marking.done()
    call.mark.cancel()  # _finish after the mark: nothing more happens
    await asyncio.sleep(0.1)
    assert len(marked) == 1


async def test_calls_that_ended_before_the_delay_are_never_marked(marked: list[tuple[str, float]]) -> None:
    short = [_start(f"short{i}") for i in range(50)]
    long = _start("long")
    for call in short:
        call.mark.cancel()  # what _finish does
    await _until(lambda: marked and not service._marks.queue)  # type: ignore[union-attr]
    assert [name for name, _ in marked] == ["long"]
    assert all(call.marking is None for call in short)
    assert service._marks is not None and not service._marks.queue and service._marks.timer is None
    assert long.marking is not None


async def test_calls_started_over_time_are_each_marked_after_the_delay(marked: list[tuple[str, float]]) -> None:
    calls = []
    for i in range(6):
        calls.append(_start(f"c{i}"))
        await asyncio.sleep(0.015)
    calls[5].mark.cancel()  # started last: still waiting
    await _until(lambda: not service._marks.queue)  # type: ignore[union-attr]
    assert sorted(name for name, _ in marked) == ["c0", "c1", "c2", "c3", "c4"]
    assert all(after >= 0.05 - 0.006 for _, after in marked)
    timers = []
    real = service._marks.loop.call_at  # type: ignore[union-attr]
    service._marks.loop.call_at = lambda *a: timers.append(a) or real(*a)  # type: ignore[union-attr,method-assign]
    try:
        burst = [_start(f"b{i}") for i in range(100)]  # a burst: one timer for all of it
        assert len(timers) == 1
        for call in burst:
            call.mark.cancel()
        for i in range(100):  # one request after another: the queue keeps only the running one
            _start(f"s{i}").mark.cancel()
            assert len(service._marks.queue) == 1  # type: ignore[union-attr]
    finally:
        del service._marks.loop.call_at  # type: ignore[union-attr]


def test_each_event_loop_has_its_own_marks(marked: list[tuple[str, float]]) -> None:
    async def one(name: str) -> None:
        _start(name)
        await _until(lambda: any(n == name for n, _ in marked))

    asyncio.run(one("first"))
    asyncio.run(one("second"))  # a new loop: the first loop's timer is gone with it
    assert [name for name, _ in marked] == ["first", "second"]


@pytest.mark.parametrize("key_id", [uuid.uuid4(), None])
def test_a_record_with_the_ids_as_text_settles_the_same_json(key_id: uuid.UUID | None) -> None:
    user = uuid.uuid4()
    as_uuid = dataclasses.replace(_RECORD, user_id=user, api_key_id=key_id)
    p = auth.Principal(user, key_id, "free")
    as_text = dataclasses.replace(_RECORD, user_id=p.user_ref, api_key_id=None if p.key_id is None else p.key_ref)
    assert service.ledger.record_json(as_text) == service.ledger.record_json(as_uuid)
    assert str(as_text.user_id) == str(as_uuid.user_id)


@pytest.mark.parametrize(("headers", "expected"), [
    ([], {}),
    ([(b"x-amzn-lambda-context", b'{"request_id": "abc", "deadline": 1700000000000}')],
     {"request_id": "abc", "deadline": 1700000000000}),
    ([(b"x-amzn-lambda-context", b"not json")], {}),
    ([(b"x-amzn-lambda-context", b"[1, 2]")], {}),
    ([(b"x-amzn-lambda-context", b'{"request_id": "first"}'), (b"x-amzn-lambda-context", b'{"request_id": "2"}')],
     {"request_id": "first"}),
])
def test_the_adapter_context_is_read_once_per_request(headers: list[tuple[bytes, bytes]], expected: Any) -> None:
    scope: dict[str, Any] = {"type": "http", "headers": headers}
    first = observability.adapter_context(scope)
    assert first == expected
    scope["headers"] = [(b"x-amzn-lambda-context", b'{"request_id": "changed"}')]
    assert observability.adapter_context(scope) is first  # the request's other readers get the same
    assert observability.adapter_context({"type": "http", "headers": headers}) == expected
