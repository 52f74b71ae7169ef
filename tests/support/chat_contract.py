"""The internal chat body as a contract: what the installed openai SDK accepts, and what our
``ChatRequest`` accepts today. The difference is an explicit, named list of known gaps, empty since
issue 13: tests/unit/test_chat_schema_parity.py fails on any new SDK parameter or value until
``gateway/chat/schema.py`` accepts it (or it is named here, with the reason, as a known gap).

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
KNOWN_GAPS: frozenset[str] = frozenset()
# Values the SDK sends that ChatRequest refuses today, per place in the body.
KNOWN_VALUE_GAPS: dict[str, frozenset[str]] = {
    "reasoning_effort": frozenset(),
    "messages[].content[].type": frozenset(),
    "messages[].content[].image_url.detail": frozenset(),
    "tools[].type": frozenset(),
    "tool_choice.type": frozenset(),
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


def _still_a_gap(name: str) -> bool:
    if "=" not in name:
        return name in KNOWN_GAPS
    place, value = name.split("=", 1)
    return value in KNOWN_VALUE_GAPS.get(place, frozenset())


def assert_chat_body(body: dict[str, Any], *, gaps: set[str] | frozenset[str] = frozenset()) -> None:
    """``body`` is a valid SDK chat request, relies on exactly the ``gaps`` that are still known gaps
    (a name whose gap has since been closed is ignored: callers written while it was open keep
    working) and, without gaps, is accepted by ``ChatRequest`` as well."""
    unknown = set(body) - SDK_PARAMETERS - OPENROUTER_EXTRAS
    assert not unknown, f"not chat-completions parameters: {sorted(unknown)}"
    adapter = _STREAMING if body.get("stream") else _NON_STREAMING
    _force(adapter.validate_python(body))
    open_gaps = {g for g in gaps if _still_a_gap(g)}
    assert gaps_used(body) == open_gaps
    if not open_gaps:
        ChatRequest.model_validate(body)


# Parameters the gateway accepts in the schema but refuses before any hold (400
# ``unsupported_parameter``, gateway.chat.schema.check_priced): they would be billed without a price.
REFUSED_PARAMETERS = frozenset({"audio", "web_search_options"})


def every_parameter_body(model: str, *, stream: bool = False) -> dict[str, Any]:
    """A chat request carrying every parameter of the installed SDK that the gateway serves (all but
    :data:`REFUSED_PARAMETERS`), each with a realistic value; ``stream_options`` when streaming."""
    weather = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ],
        "stream": stream,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.1,
        "function_call": "auto",
        "functions": [{"name": "lookup", "description": "Look something up", "parameters": weather}],
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "max_completion_tokens": 64,
        "max_tokens": 64,
        "metadata": {"team": "gateway"},
        "modalities": ["text"],
        "moderation": {"model": "omni-moderation-latest"},
        "n": 1,
        "parallel_tool_calls": False,
        "prediction": {"type": "content", "content": "It is sunny in Paris."},
        "prompt_cache_key": "tenant-42",
        "prompt_cache_options": {"mode": "implicit"},
        "prompt_cache_retention": "24h",
        "reasoning_effort": "low",
        "response_format": {"type": "text"},
        "safety_identifier": "user-hash-1",
        "seed": 7,
        "service_tier": "default",
        "stop": ["\n\n\n"],
        "store": False,
        "temperature": 0.5,
        "tool_choice": "auto",
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": weather,
                                                    "strict": False}}],
        "top_p": 0.9,
        "user": "user-1",
        "verbosity": "low",
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body
