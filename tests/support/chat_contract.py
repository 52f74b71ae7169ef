"""The internal chat body as a contract: what the installed openai SDK accepts, and what our
``ChatRequest`` accepts today. The difference is an explicit, named list of known gaps that the
engineer who widens ``gateway/chat/schema.py`` empties (tests/unit/test_chat_schema_parity.py fails
until each entry is removed once it is accepted, and fails on any new SDK parameter).

Translators (messages, responses) produce chat bodies; their tests call :func:`assert_chat_body`,
which validates a body against the SDK's own ``CompletionCreateParams`` types and, when the body
uses no known gap, against ``ChatRequest`` too, so a translation can only rely on a gap by name.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from openai.types.chat import completion_create_params as params
from pydantic import TypeAdapter

from gateway.chat.schema import ChatRequest

# Top-level parameters of the SDK's CompletionCreateParams that ChatRequest refuses today.
KNOWN_GAPS = frozenset({
    "audio", "function_call", "functions", "modalities", "moderation", "prediction", "prompt_cache_key",
    "prompt_cache_options", "prompt_cache_retention", "safety_identifier", "verbosity", "web_search_options",
})
# Values the SDK sends that ChatRequest refuses today, per place in the body.
KNOWN_VALUE_GAPS: dict[str, frozenset[str]] = {
    "reasoning_effort": frozenset({"none", "xhigh", "max"}),
    "messages[].content[].type": frozenset({"input_audio", "file"}),
    "messages[].content[].image_url.detail": frozenset({"original"}),
    "tools[].type": frozenset({"custom"}),
    "tool_choice.type": frozenset({"allowed_tools", "custom"}),
}
# Our own fields beyond the SDK's (OpenRouter's request extensions).
OPENROUTER_EXTRAS = frozenset({"models", "provider", "reasoning", "route", "transforms", "usage"})

SDK_PARAMETERS = frozenset(typing.get_type_hints(params.CompletionCreateParamsStreaming)) | frozenset(
    typing.get_type_hints(params.CompletionCreateParamsNonStreaming))
_STREAMING = TypeAdapter(params.CompletionCreateParamsStreaming)
_NON_STREAMING = TypeAdapter(params.CompletionCreateParamsNonStreaming)


def _force(value: Any) -> Any:
    """Consume pydantic's lazy validators (the SDK types use ``Iterable``) so every item is checked."""
    if isinstance(value, dict):
        return {k: _force(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_force(v) for v in value]
    if isinstance(value, Iterator):
        return [_force(v) for v in value]
    return value


def gaps_used(body: dict[str, Any]) -> set[str]:
    """The known gaps (top-level names and ``place=value``) a chat body relies on."""
    used = {name for name in body if name in KNOWN_GAPS}
    if body.get("reasoning_effort") in KNOWN_VALUE_GAPS["reasoning_effort"]:
        used.add(f"reasoning_effort={body['reasoning_effort']}")
    for msg in body.get("messages") or []:
        content = msg.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") in KNOWN_VALUE_GAPS["messages[].content[].type"]:
                used.add(f"messages[].content[].type={part['type']}")
            detail = (part.get("image_url") or {}).get("detail") if part.get("type") == "image_url" else None
            if detail in KNOWN_VALUE_GAPS["messages[].content[].image_url.detail"]:
                used.add(f"messages[].content[].image_url.detail={detail}")
    for tool in body.get("tools") or []:
        if tool.get("type") in KNOWN_VALUE_GAPS["tools[].type"]:
            used.add(f"tools[].type={tool['type']}")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in KNOWN_VALUE_GAPS["tool_choice.type"]:
        used.add(f"tool_choice.type={choice['type']}")
    return used


def assert_chat_body(body: dict[str, Any], *, gaps: set[str] | frozenset[str] = frozenset()) -> None:
    """``body`` is a valid SDK chat request, relies on exactly ``gaps`` and, without gaps, is accepted
    by ``ChatRequest`` as well."""
    unknown = set(body) - SDK_PARAMETERS - OPENROUTER_EXTRAS
    assert not unknown, f"not chat-completions parameters: {sorted(unknown)}"
    adapter = _STREAMING if body.get("stream") else _NON_STREAMING
    _force(adapter.validate_python(body))
    assert gaps_used(body) == set(gaps)
    if not gaps:
        ChatRequest.model_validate(body)
