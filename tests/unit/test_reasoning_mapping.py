"""``reasoning_effort`` on the translating chat adapters: Anthropic extended thinking (a budget
below ``max_tokens``, sampling left at its defaults) and Gemini ``thinkingConfig`` (a level on
Gemini 3, a budget within the model's range on 2.5), from the one effort↔budget table; what cannot
be applied is named, never sent. The bodies are checked against the fake providers' copies of the
real APIs' refusals (``infra.local.fake_providers``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.adapters import anthropic, gemini
from gateway.adapters.contract import Target
from gateway.adapters.reasoning import EFFORT_BUDGETS, effort_for_budget
from infra.local.fake_providers import anthropic_thinking_problem, gemini_thinking_problem

EFFORTS = list(EFFORT_BUDGETS)


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "anthropic/claude-sonnet-4.5", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 64_000, **extra}


def _anthropic(body: dict[str, Any]) -> dict[str, Any]:
    return anthropic.build_body(Target("anthropic", "claude-sonnet-4-5", "anthropic/claude-sonnet-4.5", "u", "k"),
                                body, stream=False)


def _gemini(model: str, body: dict[str, Any]) -> dict[str, Any]:
    return gemini.build_body(Target("gemini", model, f"google/{model}", "u", "k"), body)


@pytest.mark.parametrize(("model", "thinks"), [
    ("claude-sonnet-4-5-20250929", True), ("anthropic/claude-sonnet-4.5", True), ("claude-3-7-sonnet-20250219", True),
    ("anthropic/claude-3.7-sonnet", True), ("claude-4-opus-20250522", True), ("claude-haiku-4-5", True),
    ("claude-3-5-haiku-20241022", False), ("anthropic/claude-3.5-haiku", False), ("claude-3-opus-20240229", False),
])
def test_anthropic_models_with_extended_thinking(model: str, thinks: bool) -> None:
    body = _chat(model=model, reasoning_effort="low")
    sent = anthropic.build_body(Target("anthropic", model, model, "u", "k"), body, stream=False)
    assert ("thinking" in sent) is thinks and ("reasoning_effort" in anthropic.dropped(body)) is not thinks


def test_one_table_both_directions() -> None:
    for effort in ("low", "medium", "high"):
        assert effort_for_budget(EFFORT_BUDGETS[effort]) == effort
    assert effort_for_budget(1) == "low" and effort_for_budget(10**6) == "high"


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("limit", [1_025, 4_000, 64_000])
def test_anthropic_thinking_stays_below_max_tokens(effort: str, limit: int) -> None:
    body = _chat(max_tokens=limit, reasoning_effort=effort, temperature=0.2, top_p=0.5)
    sent = _anthropic(body)
    assert anthropic_thinking_problem(sent) == ""
    if effort == "none":
        assert "thinking" not in sent and sent["temperature"] == 0.2
        assert "reasoning_effort" not in anthropic.dropped(body)
        return
    budget = sent["thinking"]["budget_tokens"]
    assert sent["thinking"]["type"] == "enabled" and 1024 <= budget < sent["max_tokens"] == limit
    assert budget == min(EFFORT_BUDGETS[effort], limit - 1) or budget == 1024
    assert "temperature" not in sent and "top_p" not in sent
    named = anthropic.dropped(body)
    assert {"temperature", "top_p"} <= set(named) and "reasoning_effort" not in named


@pytest.mark.parametrize("extra", [
    {"max_tokens": 1024},                                                         # no room for the minimum budget
    {"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]},
    {"tool_choice": {"type": "function", "function": {"name": "f"}},
     "tools": [{"type": "function", "function": {"name": "f"}}]},
    {"messages": [{"role": "user", "content": "Hi"},                              # a tool loop in progress
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "t1", "content": "ok"}],
     "tools": [{"type": "function", "function": {"name": "f"}}]},
])
def test_anthropic_without_room_for_thinking_names_the_effort(extra: dict[str, Any]) -> None:
    body = _chat(reasoning_effort="high", temperature=0.3, **extra)
    sent = _anthropic(body)
    assert "thinking" not in sent and sent["temperature"] == 0.3
    assert "reasoning_effort" in anthropic.dropped(body) and "temperature" not in anthropic.dropped(body)


@pytest.mark.parametrize(("model", "effort", "config"), [
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
    ("gemini-2.5-flash", "low", {"thinkingBudget": 2048}),
    ("gemini-2.5-flash", "max", {"thinkingBudget": 24_576}),
    ("gemini-2.5-flash-lite", "minimal", {"thinkingBudget": 1024}),
    ("gemini-2.5-flash-lite", "none", {"thinkingBudget": 0}),
    ("gemini-2.5-pro", "none", {"thinkingBudget": 128}),
    ("gemini-2.5-pro", "xhigh", {"thinkingBudget": 32_768}),
    ("gemini-3-pro-preview", "medium", {"thinkingLevel": "high"}),
    ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "low"}),
    ("gemini-3-flash-preview", "medium", {"thinkingLevel": "medium"}),
    ("gemini-3-flash-preview", "none", {"thinkingLevel": "minimal"}),
])
def test_gemini_thinking_config(model: str, effort: str, config: dict[str, Any]) -> None:
    body = _chat(model=f"google/{model}", reasoning_effort=effort, max_tokens=8192)
    sent = _gemini(model, body)
    gen = sent["generationConfig"]
    assert gen["thinkingConfig"] == config and gen["maxOutputTokens"] == 8192  # thoughts are spent from it
    assert gemini_thinking_problem(model, sent) == ""
    assert "reasoning_effort" not in gemini.dropped(body)


def test_gemini_without_thinking_controls_names_the_effort() -> None:
    body = _chat(model="google/gemini-2.0-flash-001", reasoning_effort="high")
    assert "thinkingConfig" not in _gemini("gemini-2.0-flash-001", body).get("generationConfig", {})
    assert "reasoning_effort" in gemini.dropped(body)
