"""Cheap token estimates (no tokenizer): ~4 characters per token.

Used for the pre-call credit reservation and when a provider reports no usage. Deliberately a
little generous: an over-estimate only holds credit for the duration of the call.
"""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 85  # per image part (OpenAI "low detail" cost); also used for audio/file parts
MESSAGE_OVERHEAD = 3  # role/separators per message
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>


def estimate_tokens(text: str) -> int:
    """ceil(chars / 4); at least 1 for non-empty text, 0 for empty."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def _json_len(value: Any) -> int:
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    except (TypeError, ValueError):
        return len(str(value))


def _content_cost(content: Any) -> tuple[int, int]:
    """(characters of text, non-text parts) of a message ``content``."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    if isinstance(content, list):
        chars = 0
        media = 0
        for part in content:
            if isinstance(part, str):
                chars += len(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text", "output_text", "refusal"):
                    chars += len(str(part.get("text") or part.get("refusal") or ""))
                elif kind in ("image_url", "input_image", "image", "input_audio", "file"):
                    media += 1
                else:
                    chars += _json_len(part)
        return chars, media
    return len(str(content)), 0


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Estimate the prompt tokens of an OpenAI chat request.

    All message text (content, tool-call names/arguments, names) at 4 chars/token, plus
    ``IMAGE_TOKENS`` per image/audio/file part, ``MESSAGE_OVERHEAD`` per message, the tool schemas
    and a JSON response schema as JSON length / 4, plus the reply priming.
    """
    total = REPLY_PRIMING
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        chars, media = _content_cost(msg.get("content"))
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict):
                fn = call.get("function") or {}
                chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
        if msg.get("name"):
            chars += len(str(msg["name"]))
        total += MESSAGE_OVERHEAD + math.ceil(chars / CHARS_PER_TOKEN) + media * IMAGE_TOKENS
    tools = body.get("tools")
    if tools:
        total += math.ceil(_json_len(tools) / CHARS_PER_TOKEN)
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        total += math.ceil(_json_len(rf.get("json_schema") or {}) / CHARS_PER_TOKEN)
    return total
