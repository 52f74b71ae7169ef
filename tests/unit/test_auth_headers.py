"""Which header carries the caller's key: ``Authorization: Bearer`` or ``x-api-key`` (Anthropic's),
and what two different credentials at once mean (a 401, never a guess)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from gateway.auth import bearer_token, has_credential
from gateway.errors import Unauthorized


def request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


@pytest.mark.parametrize(("headers", "token"), [
    ({"Authorization": "Bearer sk-mlp-a"}, "sk-mlp-a"),
    ({"authorization": "bearer   sk-mlp-a  "}, "sk-mlp-a"),
    ({"x-api-key": "sk-mlp-a"}, "sk-mlp-a"),
    ({"X-Api-Key": " sk-mlp-a "}, "sk-mlp-a"),
    ({"Authorization": "Bearer sk-mlp-a", "x-api-key": "sk-mlp-a"}, "sk-mlp-a"),  # Claude Code's apiKeyHelper
    ({"Authorization": "Basic dXNlcjpwdw==", "x-api-key": "sk-mlp-a"}, "sk-mlp-a"),
    ({"Authorization": "Bearer ", "x-api-key": "sk-mlp-a"}, "sk-mlp-a"),
])
def test_the_key_comes_from_either_header(headers: dict[str, str], token: str) -> None:
    assert bearer_token(request(headers)) == token
    assert has_credential(request(headers))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "},
                                     {"x-api-key": "  "}])
def test_missing(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized) as info:
        bearer_token(request(headers))
    assert info.value.code == "missing_api_key" and "x-api-key" in info.value.message


def test_two_different_keys_are_refused() -> None:
    with pytest.raises(Unauthorized) as info:
        bearer_token(request({"Authorization": "Bearer sk-mlp-a", "x-api-key": "sk-mlp-b"}))
    assert info.value.code == "conflicting_credentials" and info.value.status == 401
    assert "sk-mlp" not in info.value.message  # never echo a credential


def test_has_credential() -> None:
    assert not has_credential(request({}))
    assert has_credential(request({"Authorization": "Basic abc"}))  # present, if malformed: bearer_token says 401


def test_the_first_of_repeated_headers_counts_as_with_starlettes_headers() -> None:
    raw = [(b"x-api-key", b"sk-mlp-a"), (b"authorization", b"Bearer sk-mlp-a"), (b"x-api-key", b"sk-mlp-b"),
           (b"authorization", b"Bearer sk-mlp-c")]
    req = Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})
    assert req.headers.get("x-api-key") == "sk-mlp-a" and req.headers.get("authorization") == "Bearer sk-mlp-a"
    assert bearer_token(req) == "sk-mlp-a"
    latin = [(b"authorization", "Bearer sk-mlp-\xe9".encode("latin-1"))]
    assert bearer_token(Request({"type": "http", "headers": latin})) == "sk-mlp-\xe9"
