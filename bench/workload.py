"""The request every benchmark sends (standard library only: the cold-start child imports it)."""

from __future__ import annotations

from typing import Any

MODEL = "openai/gpt-4o-mini"
PROMPT = "Say hello [[words:16]]"
BODY: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}


def chat_body(model: str = MODEL, *, stream: bool = False, upstream_delay_s: float = 0.0) -> dict[str, Any]:
    """The benchmark request. ``upstream_delay_s`` asks the fake upstream to wait that long before
    its response headers (``[[sleep:S]]``, infra/local/fake_providers.py), like a real provider."""
    prompt = PROMPT + (f" [[sleep:{upstream_delay_s:g}]]" if upstream_delay_s else "")
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body
