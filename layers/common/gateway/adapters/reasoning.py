"""THE table between OpenAI's ``reasoning_effort`` and a thinking-token budget (Anthropic
``thinking.budget_tokens``, Gemini 2.5 ``thinkingConfig.thinkingBudget``), both directions.

Thinking tokens are billed as output and, at both providers, counted inside the output limit the
request carries (Anthropic: ``budget_tokens`` must stay below ``max_tokens``; Gemini: thoughts are
spent from ``maxOutputTokens``), which the pipeline always sends (the client's, clamped, or the
model's maximum): a budget never raises a request above its hold.
"""

from __future__ import annotations

# effort → budget (tokens). ``none`` is no thinking (budget 0).
EFFORT_BUDGETS: dict[str, int] = {"none": 0, "minimal": 1_024, "low": 2_048, "medium": 8_192, "high": 24_576,
                                  "xhigh": 32_768, "max": 65_536}
# The efforts a budget reads back as (a translated Anthropic request → reasoning_effort).
_READ_BACK = ("low", "medium")


def budget_for_effort(effort: str) -> int:
    """The thinking budget of an OpenAI ``reasoning_effort`` (0 for ``none``)."""
    return EFFORT_BUDGETS[effort]


def effort_for_budget(budget_tokens: int) -> str:
    """An Anthropic thinking budget as an OpenAI reasoning effort: the smallest of ``low`` /
    ``medium`` whose budget covers it, else ``high``."""
    for effort in _READ_BACK:
        if budget_tokens <= EFFORT_BUDGETS[effort]:
            return effort
    return "high"
