"""The chat path's per-request shortcuts (issue 15, sixth pass, levers 32-37) answer exactly as what
they replace: the compact JSON render, the NUL checks, generated request
ids, and the log keys an invocation leaves behind."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from starlette.responses import JSONResponse

from gateway import http, observability


@pytest.mark.parametrize("content", [
    {"id": "chatcmpl-1", "choices": [{"message": {"content": "héllo ✓ 😀 \"q\" \\ \n\t\u2028"}}], "usage": {"n": 1}},
    {"float": 0.1, "big": 1e16, "small": 1e-7, "neg": -0.0, "int": 10**30, "none": None, "bool": [True, False]},
    [], {}, "text", 3,
])
def test_compact_json_renders_the_same_bytes_as_starlette(content: Any) -> None:
    headers = {"x-ratelimit-limit": "60"}
    ours, theirs = http.CompactJSONResponse(content, headers=headers), JSONResponse(content, headers=headers)
    assert ours.body == theirs.body
    assert ours.raw_headers == theirs.raw_headers and ours.status_code == theirs.status_code == 200


@pytest.mark.parametrize("bad", [math.nan, math.inf, {"k": -math.inf}])
def test_compact_json_refuses_what_starlette_refuses(bad: Any) -> None:
    with pytest.raises(ValueError):
        JSONResponse(bad)
    with pytest.raises(ValueError):
        http.CompactJSONResponse(bad)


def test_generated_request_ids_are_uuid4_hex() -> None:
    ids = {http.new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in ids:
        assert rid.startswith("req_") and len(rid) == 36
        u = uuid.UUID(rid[4:])
        assert u.hex == rid[4:] and u.version == 4 and u.variant == uuid.RFC_4122


def _scope(path: str = "/v1/chat/completions", query: bytes = b"",
           headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    base = [(b"host", b"api.example.com"), (b"authorization", b"Bearer sk-abc"), (b"content-type", b"application/json")]
    return {"type": "http", "path": path, "query_string": query, "headers": base if headers is None else headers}


@pytest.mark.parametrize(("scope", "nul"), [
    (_scope(), False),
    (_scope(headers=[]), False),
    (_scope(path="/v1/chat\x00/completions"), True),
    (_scope(query=b"a=1\x00"), True),
    (_scope(query=b"a=%00"), True),
    (_scope(query=b"a=%2500"), False),
    (_scope(headers=[(b"x-title", b"a\x00b")]), True),
    (_scope(headers=[(b"x-ti\x00tle", b"ab")]), True),
    (_scope(headers=[(b"a", b"b"), (b"c", b"d\x00")]), True),
    (_scope(headers=[(b"\x00", b"")]), True),
    (_scope(headers=[(b"a", b"0"), (b"b", b"00")]), False),
])
def test_nul_in_the_request_head(scope: dict[str, Any], nul: bool) -> None:
    assert http._nul_in_head(scope) is nul


@pytest.mark.parametrize(("body", "nul"), [
    (b'{"a": "b"}', False), (b"", False), (b"a\x00b", True), (b"\x00", True),
    (json.dumps({"a": "x\x00y"}).encode(), True), (b'{"a": "\\\\u0000"}', False), (b'{"a": "\\\\\\u0000"}', True),
    (b'{"a": "u0000"}', False), (b"0000", False),
])
def test_nul_in_the_request_body(body: bytes, nul: bool) -> None:
    assert http._nul_in_body(body) is nul


def _log_format() -> dict[str, Any]:
    formatter: Any = observability.logger.registered_formatter
    return formatter.log_format  # type: ignore[no-any-return]


class _Context:
    aws_request_id = "fn-request-1"


def _event(request_id: str) -> dict[str, Any]:
    return {"requestContext": {"requestId": request_id}}


@pytest.fixture(autouse=True)
def _cold_start_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_cold", observability._cold)


def test_an_invocations_own_log_keys_do_not_reach_the_next_one() -> None:
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event.get("add"):
            observability.logger.append_keys(tenant="t-1")
        seen.append(dict(_log_format()))
        return {}

    wrapped = observability.instrument(handler)
    wrapped(_event("a"), _Context())
    wrapped({**_event("b"), "add": True}, _Context())
    wrapped(_event("c"), _Context())
    wrapped(_event("d"), _Context())
    assert seen[1]["tenant"] == "t-1"
    assert "tenant" not in seen[2] and "tenant" not in seen[3]
    assert [s["correlation_id"] for s in seen] == ["a", "b", "c", "d"]
    # the invocations without keys of their own log exactly the same keys, in the same order
    assert list(seen[0]) == list(seen[2]) == list(seen[3])
    assert {k: v for k, v in seen[2].items() if k != "correlation_id"} == \
        {k: v for k, v in seen[3].items() if k != "correlation_id"}


def test_a_key_removed_during_an_invocation_is_back_in_the_next_one() -> None:
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event.get("drop"):
            observability.logger.remove_keys(["service"])
        seen.append(dict(_log_format()))
        return {}

    wrapped = observability.instrument(handler)
    wrapped(_event("a"), _Context())
    wrapped({**_event("b"), "drop": True}, _Context())
    wrapped(_event("c"), _Context())
    assert "service" not in seen[1]
    assert list(seen[2]) == list(seen[0]) and seen[2]["service"] == seen[0]["service"]
