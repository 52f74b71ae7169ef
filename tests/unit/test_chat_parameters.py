"""Per parameter: what each adapter forwards, maps or drops (and names in ``x-dropped-params``).

OpenAI-compatible upstreams receive every parameter the SDK sends; the translating adapters carry
what has an equivalent and report the rest, so nothing disappears without being named.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.adapters import anthropic, gemini
from gateway.adapters.contract import Target
from gateway.adapters.registry import get_adapter
from gateway.adapters.shapes import GATEWAY_FIELDS
from gateway.chat.schema import ChatRequest
from gateway.translation import DROPPED_PARAMS_HEADER, dropped_header
from tests.support.chat_contract import every_parameter_body


def _target(provider: str) -> Target:
    return Target(provider, "upstream-model", f"{provider}/m", "http://upstream.test/v1", "sk-test")


def _body(stream: bool = False) -> dict[str, Any]:
    """What the pipeline hands an adapter: the validated request (``upstream_body``)."""
    return ChatRequest.model_validate(every_parameter_body("openai/gpt-4o-mini", stream=stream)).upstream_body()


def _sent(provider: str, body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    adapter: Any = get_adapter(provider)
    request: httpx.Request = adapter.build_request(httpx.AsyncClient(), _target(provider), body, stream=stream)
    return json.loads(request.content)


@pytest.mark.parametrize("provider", ["openai", "openrouter", "compat"])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_compatible_upstreams_receive_every_parameter(provider: str, stream: bool) -> None:
    body = _body(stream)
    sent = _sent(provider, body, stream=stream)
    expected = set(body) - {"max_tokens", "max_completion_tokens"}
    if not stream:
        expected -= {"stream"}
    if provider != "openai":
        expected -= {"service_tier"}  # only OpenAI is asked for a tier (always "default": the list price)
    assert expected <= set(sent), sorted(expected - set(sent))
    for name in expected - {"model", "service_tier", "stream_options", "messages"}:
        assert sent[name] == body[name], name
    assert {"max_tokens", "max_completion_tokens"} & set(sent)  # the output limit, under the server's name
    assert get_adapter(provider).dropped(body) == []


def test_openrouter_only_fields_are_named_when_a_direct_server_does_not_take_them() -> None:
    body = {**_body(), "provider": {"sort": "price"}, "transforms": ["middle-out"]}
    assert get_adapter("openai").dropped(body) == ["provider", "transforms"]
    assert "provider" not in _sent("openai", body)
    assert get_adapter("openrouter").dropped(body) == []
    assert _sent("openrouter", body)["transforms"] == ["middle-out"]


ANTHROPIC_DROPS = {"frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "metadata",
                   "moderation", "prediction", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
                   "reasoning_effort", "seed", "store", "verbosity", "top_p"}
GEMINI_DROPS = {"logit_bias", "logprobs", "top_logprobs", "metadata", "moderation", "parallel_tool_calls",
                "prediction", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
                "safety_identifier", "store", "user", "verbosity"}


@pytest.mark.parametrize(("provider", "expected"), [("anthropic", ANTHROPIC_DROPS), ("gemini", GEMINI_DROPS)])
def test_translating_adapters_name_exactly_what_they_drop(provider: str, expected: set[str]) -> None:
    body = _body()
    dropped = get_adapter(provider).dropped(body)
    assert set(dropped) == expected
    assert len(dropped) == len(set(dropped))
    mapped = anthropic.MAPPED if provider == "anthropic" else gemini.MAPPED
    # every parameter is accounted for: the gateway's own, mapped, dropped, or a default value
    assert set(body) - GATEWAY_FIELDS - mapped - set(dropped) <= {"modalities", "n"}
    header = dropped_header(dropped)[DROPPED_PARAMS_HEADER]
    assert set(header.split(", ")) == expected


def test_anthropic_maps_the_equivalents() -> None:
    body = _body()
    body.pop("user")
    sent = anthropic.build_body(_target("anthropic"), body, stream=False)
    assert sent["metadata"] == {"user_id": "user-hash-1"}  # safety_identifier: the end-user identifier
    assert sent["temperature"] == 0.5 and "top_p" not in sent
    assert sent["stop_sequences"] == ["\n\n\n"]
    assert [t["name"] for t in sent["tools"]] == ["weather"]
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_legacy_functions_become_tools(provider: str) -> None:
    fn = {"name": "lookup", "description": "d",
          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    body = {"messages": [
        {"role": "user", "content": "find x"},
        {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": '{"q":"x"}'}},
        {"role": "function", "name": "lookup", "content": '{"hit": 1}'},
    ], "functions": [fn], "function_call": {"name": "lookup"}, "max_tokens": 10}
    assert get_adapter(provider).dropped(body) == []
    if provider == "anthropic":
        sent = anthropic.build_body(_target(provider), body, stream=False)
        assert sent["tools"][0]["name"] == "lookup"
        assert sent["tool_choice"] == {"type": "tool", "name": "lookup"}
        use = sent["messages"][1]["content"][0]
        result = sent["messages"][2]["content"][0]
        assert (use["type"], use["input"]) == ("tool_use", {"q": "x"})
        assert result["type"] == "tool_result" and result["tool_use_id"] == use["id"]
    else:
        sent = gemini.build_body(_target(provider), body)
        assert sent["tools"][0]["functionDeclarations"][0]["name"] == "lookup"
        assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}
        assert sent["contents"][1]["parts"][0]["functionCall"] == {"name": "lookup", "args": {"q": "x"}}
        assert sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "lookup"


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_custom_tools_and_allowed_tools_are_named_when_dropped(provider: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "custom", "custom": {"name": "sql"}},
                      {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
                {"type": "function", "function": {"name": "f"}}]}}}
    assert get_adapter(provider).dropped(body) == ["tools[].custom", "tool_choice.allowed_tools"]


def test_default_values_are_not_reported_as_dropped() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "modalities": ["text"], "n": 1, "stream": True,
            "stream_options": {"include_usage": True}, "service_tier": "default"}
    assert get_adapter("anthropic").dropped(body) == []
    assert get_adapter("gemini").dropped(body) == []


def test_gemini_reports_audio_input_tokens() -> None:
    usage, _ = gemini.usage_from_gemini({"promptTokenCount": 120, "candidatesTokenCount": 5, "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 20}, {"modality": "AUDIO", "tokenCount": 100}]})
    assert usage is not None and (usage.prompt_tokens, usage.audio_tokens) == (120, 100)
