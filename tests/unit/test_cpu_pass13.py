"""Issue 15, thirteenth pass (cpu lane): the same values through cheaper paths."""

from __future__ import annotations

import json

import pytest

from gateway.money import combine


@pytest.mark.parametrize("value", [b"", b"plain", b"2026-12-01", b'{"quoted": "json"}', b"tab\there\nnew line",
                                   b"\x01\x1f control", b'back\\slash "quote"', "é€😀 non-ascii".encode(),
                                   "\u2028\u2029 separators".encode(), None])
def test_a_batched_parameter_is_the_json_string_the_encoder_writes(value: bytes | None) -> None:
    # mlp_batch's elements: every text parameter as json.JSONEncoder(ensure_ascii=False) writes it
    expected = "null" if value is None else json.JSONEncoder(ensure_ascii=False, check_circular=False).encode(
        value.decode())
    assert combine.text(value) == expected
    assert json.loads(combine.text(value)) == (None if value is None else value.decode())
