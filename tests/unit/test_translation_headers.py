"""x-dropped-params on a translated surface: what the surface could not express, then what the
serving adapter did not carry (already in the pipeline's headers), once each."""

from __future__ import annotations

from gateway.translation import DROPPED_PARAMS_HEADER, with_dropped


def test_surface_and_adapter_drops_are_both_named_once() -> None:
    headers = {"x-ratelimit-limit": "60", DROPPED_PARAMS_HEADER: "logit_bias, top_k"}
    out = with_dropped(headers, ["top_k", "citations"])
    assert out[DROPPED_PARAMS_HEADER] == "top_k, citations, logit_bias"
    assert out["x-ratelimit-limit"] == "60"


def test_nothing_dropped_adds_no_header() -> None:
    assert with_dropped({"request-id": "r"}, []) == {"request-id": "r"}
    assert with_dropped({}, ["speed"]) == {DROPPED_PARAMS_HEADER: "speed"}
