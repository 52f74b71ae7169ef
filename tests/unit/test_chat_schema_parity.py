"""Our chat request schema against the installed openai SDK's ``CompletionCreateParams``.

A new SDK parameter (or a new accepted value of a listed field) fails here until it is accepted
(the known-gap lists in tests/support/chat_contract.py are empty and must stay so, or name a gap
with its reason).
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

from gateway.chat.schema import ChatRequest, ContentPart, ImageURL, NamedToolChoice, Tool, check_priced
from gateway.errors import BadRequest
from tests.support.chat_contract import (
    KNOWN_GAPS,
    KNOWN_VALUE_GAPS,
    OPENROUTER_EXTRAS,
    REFUSED_PARAMETERS,
    SDK_PARAMETERS,
    assert_chat_body,
    every_parameter_body,
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


def test_the_known_gap_lists_are_empty() -> None:
    """Since issue 13 every SDK parameter and value is accepted: a new one fails the tests above."""
    assert KNOWN_GAPS == frozenset()
    assert all(not values for values in KNOWN_VALUE_GAPS.values())


@pytest.mark.parametrize("stream", [False, True])
def test_a_body_with_every_sdk_parameter_is_accepted(stream: bool) -> None:
    body = every_parameter_body("openai/gpt-4o-mini", stream=stream)
    assert set(body) | REFUSED_PARAMETERS == SDK_PARAMETERS - ({"stream_options"} if not stream else set())
    assert_chat_body(body)
    req = ChatRequest.model_validate(body)
    check_priced(req)  # nothing in it is refused
    assert set(req.upstream_body()) == set(body)


@pytest.mark.parametrize(("name", "value"), [
    ("reasoning_effort", "none"), ("reasoning_effort", "xhigh"), ("reasoning_effort", "max"),
    ("verbosity", "high"), ("prompt_cache_retention", "in_memory"), ("safety_identifier", "s"),
    ("prompt_cache_key", "k"), ("moderation", {"model": "m", "policy": {"x": 1}}),
    ("function_call", {"name": "f"}), ("function_call", "none"),
    ("tools", [{"type": "custom", "custom": {"name": "sql", "format": {"type": "text"}}}]),
    ("tool_choice", {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}}),
    ("tool_choice", {"type": "custom", "custom": {"name": "sql"}}),
])
def test_new_values_are_accepted(name: str, value: Any) -> None:
    base = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert ChatRequest.model_validate({**base, name: value}).upstream_body()[name] is not None


@pytest.mark.parametrize("part", [
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"}},
    {"type": "file", "file": {"file_id": "file-123"}},
    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "original"}},
    {"type": "text", "text": "x", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "30m"}},
])
def test_new_content_parts_are_accepted(part: dict[str, Any]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    assert_chat_body(body)
    assert ChatRequest.model_validate(body).upstream_body()["messages"][0]["content"] == [part]


@pytest.mark.parametrize("body_extra", [
    {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},  # no file source
    {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x",
                                                                                        "format": "ogg"}}]}]},
    {"tools": [{"type": "custom", "function": {"name": "f"}}]},
    {"tool_choice": {"type": "allowed_tools"}},
    {"reasoning_effort": "extreme"},
    {"prompt_cache_retention": "7d"},
    {"modalities": ["video"]},
])
def test_malformed_new_parameters_are_refused(body_extra: dict[str, Any]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body_extra}
    with pytest.raises(ValidationError):
        ChatRequest.model_validate(body)


@pytest.mark.parametrize(("extra", "param"), [
    ({"audio": {"voice": "alloy", "format": "mp3"}, "modalities": ["text", "audio"]}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
])
def test_unpriced_parameters_are_refused_with_their_name(extra: dict[str, Any], param: str) -> None:
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})
    with pytest.raises(BadRequest) as info:
        check_priced(req)
    assert info.value.param == param
    assert info.value.code == "unsupported_parameter"
    assert param in info.value.message


def test_contract_helper_names_no_gaps_and_ignores_closed_ones() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "original"}}]}],
        "reasoning_effort": "xhigh", "verbosity": "low"}
    assert gaps_used(body) == set()
    assert_chat_body(body, gaps={"reasoning_effort=xhigh", "verbosity"})  # closed since: ignored
    with pytest.raises(AssertionError):
        assert_chat_body({"model": "m", "messages": [{"role": "user", "content": "x"}], "not_a_param": 1})
    with pytest.raises(ValidationError):  # the SDK's own types reject a malformed part
        assert_chat_body({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]})
