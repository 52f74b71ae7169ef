"""Our chat request schema against the installed openai SDK's ``CompletionCreateParams``.

A new SDK parameter (or a new accepted value of a listed field) fails here until it is accepted or
named as a known gap; a gap that ChatRequest has closed fails here until it is removed from the
list (tests/support/chat_contract.py), so the list is always the truth.
"""

from __future__ import annotations

import typing
from typing import Any, Literal, get_args, get_origin

import pytest
from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolUnionParam,
)
from openai.types.chat import completion_create_params as params
from openai.types.chat.chat_completion_content_part_image_param import ImageURL as SdkImageURL
from pydantic import BaseModel, ValidationError

from gateway.chat.schema import ChatRequest, ContentPart, ImageURL, NamedToolChoice, Tool
from tests.support.chat_contract import (
    KNOWN_GAPS,
    KNOWN_VALUE_GAPS,
    OPENROUTER_EXTRAS,
    SDK_PARAMETERS,
    assert_chat_body,
    gaps_used,
)


def literals(tp: Any) -> set[str]:
    """Every string Literal value reachable in a type (through Optional/Union/Annotated)."""
    if get_origin(tp) is Literal:
        return {a for a in get_args(tp) if isinstance(a, str)}
    out: set[str] = set()
    for arg in get_args(tp):
        out |= literals(arg)
    return out


def type_tags(union: Any) -> set[str]:
    """The ``type`` literal of each TypedDict / model in a union."""
    if get_origin(union) is typing.Annotated:
        return type_tags(get_args(union)[0])
    if isinstance(union, type) and issubclass(union, BaseModel):
        return literals(union.model_fields["type"].annotation)
    if isinstance(union, type):  # a TypedDict
        return literals(typing.get_type_hints(union).get("type"))
    out: set[str] = set()
    for member in get_args(union):
        out |= type_tags(member)
    return out


def test_every_sdk_parameter_is_accepted_or_a_named_known_gap() -> None:
    ours = set(ChatRequest.model_fields)
    assert SDK_PARAMETERS - ours == KNOWN_GAPS, "update KNOWN_GAPS in tests/support/chat_contract.py"
    assert ours - SDK_PARAMETERS == OPENROUTER_EXTRAS


@pytest.mark.parametrize(("place", "sdk_values", "our_values"), [
    ("reasoning_effort", literals(typing.get_type_hints(params.CompletionCreateParamsBase)["reasoning_effort"]),
     literals(ChatRequest.model_fields["reasoning_effort"].annotation)),
    ("messages[].content[].type", type_tags(ChatCompletionContentPartParam), type_tags(ContentPart)),
    ("messages[].content[].image_url.detail", literals(typing.get_type_hints(SdkImageURL)["detail"]),
     literals(ImageURL.model_fields["detail"].annotation)),
    ("tools[].type", type_tags(ChatCompletionToolUnionParam),
     type_tags(Tool)),
    ("tool_choice.type", type_tags(ChatCompletionToolChoiceOptionParam),
     type_tags(NamedToolChoice)),
])
def test_every_sdk_value_is_accepted_or_a_named_known_gap(place: str, sdk_values: set[str],
                                                          our_values: set[str]) -> None:
    assert sdk_values, f"no SDK values found for {place}: the SDK's types moved"
    assert sdk_values - our_values == KNOWN_VALUE_GAPS[place], "update KNOWN_VALUE_GAPS"


def test_every_known_gap_is_really_refused_today() -> None:
    """Each listed gap is a real refusal (so the list cannot hold stale entries by mistake)."""
    base = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    samples: dict[str, Any] = {"audio": {"voice": "alloy", "format": "mp3"}, "function_call": "auto",
                               "functions": [{"name": "f"}], "modalities": ["text"], "moderation": {"model": "m"},
                               "prediction": {"type": "content", "content": "x"}, "prompt_cache_key": "k",
                               "prompt_cache_options": {"mode": "implicit"}, "prompt_cache_retention": "24h",
                               "safety_identifier": "u", "verbosity": "low", "web_search_options": {}}
    assert set(samples) == KNOWN_GAPS
    for name, value in samples.items():
        with pytest.raises(ValidationError):
            ChatRequest.model_validate({**base, name: value})
    for effort in KNOWN_VALUE_GAPS["reasoning_effort"]:
        with pytest.raises(ValidationError):
            ChatRequest.model_validate({**base, "reasoning_effort": effort})
    file_part = {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}}
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({**base, "messages": [{"role": "user", "content": [file_part]}]})


def test_contract_helper_names_the_gaps_a_body_uses() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "original"}}]}],
        "reasoning_effort": "xhigh", "verbosity": "low"}
    assert gaps_used(body) == {"verbosity", "reasoning_effort=xhigh", "messages[].content[].type=file",
                               "messages[].content[].image_url.detail=original"}
    assert_chat_body(body, gaps=gaps_used(body))
    with pytest.raises(AssertionError):
        assert_chat_body({"model": "m", "messages": [{"role": "user", "content": "x"}], "not_a_param": 1})
    with pytest.raises(ValidationError):  # the SDK's own types reject a malformed part
        assert_chat_body({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]})
