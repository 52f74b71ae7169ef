"""The OpenAI chat shapes every adapter reads or writes: ids, timestamps, message content,
tool-call ids and arguments, stop lists, the JSON-mode instruction, a completion dict, and the
OpenAI-style ``usage`` object (also what OpenRouter and compatible servers report)."""

from __future__ import annotations

import json
import re
import time
import uuid
from decimal import Decimal
from typing import Any

from .contract import TOKEN_FIELDS, Usage, openai_path


def now() -> int:
    return int(time.time())


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex[:24]


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def as_int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                texts.append(str(part.get("text") or ""))
        return "".join(texts)
    return str(content)


# Compiled by ``re`` on the first data URL (its cache), not at every cold start.
_DATA_URL = r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$"


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` → ``("image/png", "AAAA")``; None if not a base64 data URL."""
    m = re.match(_DATA_URL, url, re.DOTALL)
    if not m:
        return None
    return (m.group("mime") or "application/octet-stream"), m.group("data")


_MIME_BY_EXT = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
    "webp": "image/webp", "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf",
}


def guess_mime(url: str, default: str = "image/jpeg") -> str:
    path = url.split("?", 1)[0].split("#", 1)[0]
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _MIME_BY_EXT.get(ext, default)


# Gemini's thought signatures ride in the tool-call ids we hand out (see gemini.py); other
# providers must not see them (OpenAI caps ids at 40 chars, Anthropic allows [a-zA-Z0-9_-] only).
THOUGHT_SEP = "__thought__"


def plain_call_id(call_id: Any) -> Any:
    """A tool-call id without a Gemini thought signature (other values returned unchanged)."""
    if isinstance(call_id, str) and THOUGHT_SEP in call_id:
        return call_id.split(THOUGHT_SEP, 1)[0]
    return call_id


def parse_tool_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI tool-call ``arguments`` (a JSON string) → dict; non-objects wrapped, junk kept raw."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return {"_raw": str(arguments)}
    return value if isinstance(value, dict) else {"value": value}


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop] if stop else None
    out = [s for s in stop if isinstance(s, str) and s]
    return out or None


def json_instruction(response_format: Any) -> str | None:
    """A system instruction asking for JSON, for providers without a native JSON mode."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "Respond only with a single valid JSON object and nothing else."
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        text = "Respond only with a single valid JSON value and nothing else"
        if schema is not None:
            text += " that conforms to this JSON Schema:\n" + json.dumps(schema, separators=(",", ":"))
        return text + "."
    return None


def completion_dict(*, id: str, created: int, model: str, choices: list[dict[str, Any]],
                    usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage}



# (count name, its keys in OpenAI's ``usage``), split once
_USAGE_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (name, tuple(path.split("."))) for name in TOKEN_FIELDS if (path := openai_path(name)) is not None)


def usage_from_openai(u: Any) -> Usage | None:
    """OpenAI-style ``usage`` → Usage: every count of ``contract.Tokens`` read from its ``openai``
    place (``prompt_tokens_details.cached_tokens`` → cached, ``...cache_write_tokens`` (OpenRouter)
    → cache writes, ``...audio_tokens`` → audio input), ``cost`` (OpenRouter: the USD it billed for
    the call) → cost."""
    if not isinstance(u, dict):
        return None
    counts: dict[str, int] = {}
    for name, keys in _USAGE_KEYS:
        node: Any = u
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        counts[name] = as_int(node)
    if not counts["cached_tokens"]:
        counts["cached_tokens"] = as_int(u.get("prompt_cache_hit_tokens"))  # DeepSeek-style compat servers
    return Usage(**counts, reported=True, cost=as_cost(u.get("cost")))


def as_cost(value: Any) -> Decimal | None:
    """A cost a provider reported in JSON (a number) as an exact Decimal of its decimal text;
    None when absent or not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        cost = Decimal(str(value))
    except ArithmeticError:
        return None
    return cost if cost.is_finite() and cost >= 0 else None


# --------------------------------------------------------------------------------------------
# What a translating adapter carries over, and what it drops
# --------------------------------------------------------------------------------------------
# Request fields the gateway itself handles for every provider (never mapped or dropped by one).
GATEWAY_FIELDS = frozenset({"model", "models", "messages", "stream", "stream_options", "service_tier", "usage"})
# Values that ask for what a provider does anyway (so nothing is lost by not forwarding them).
DEFAULT_VALUES: dict[str, Any] = {"modalities": ["text"], "n": 1}


def unmapped(body: dict[str, Any], mapped: frozenset[str]) -> list[str]:
    """The request parameters a translating adapter does not carry to its provider: every set
    field that is neither the gateway's own nor in ``mapped`` (a value that asks for the provider's
    default is not lost), plus the tool kinds it has no equivalent for (``tools[].custom``,
    ``tool_choice.allowed_tools`` / ``tool_choice.custom``). Named in the response's
    ``x-dropped-params`` header."""
    names = [key for key, value in body.items()
             if value is not None and key not in GATEWAY_FIELDS and key not in mapped
             and DEFAULT_VALUES.get(key, object()) != value]
    if any(isinstance(t, dict) and t.get("type") == "custom" for t in body.get("tools") or ()):
        names.append("tools[].custom")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("allowed_tools", "custom"):
        names.append(f"tool_choice.{choice['type']}")
    return names


def legacy_tools(body: dict[str, Any]) -> tuple[Any, Any]:
    """``(tools, tool_choice)`` of a request, the deprecated ``functions`` / ``function_call``
    read as function tools when ``tools`` / ``tool_choice`` are not given."""
    tools = body.get("tools")
    if not tools and isinstance(body.get("functions"), list):
        tools = [{"type": "function", "function": f} for f in body["functions"] if isinstance(f, dict)]
    choice = body.get("tool_choice")
    legacy = body.get("function_call")
    if choice is None and legacy is not None:
        if isinstance(legacy, dict) and legacy.get("name"):
            choice = {"type": "function", "function": {"name": legacy["name"]}}
        elif legacy in ("none", "auto"):
            choice = legacy
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        mode = (choice.get("allowed_tools") or {}).get("mode")
        choice = "required" if mode == "required" else "auto"  # the restriction itself is dropped
    return tools, choice


def legacy_tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant message's tool calls, its deprecated ``function_call`` read as one (its id is
    the function's name, which the matching ``function`` role message carries)."""
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict) and c.get("type", "function")
             == "function"]
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict) and legacy.get("name"):
        calls = [{"id": legacy["name"], "type": "function",
                  "function": {"name": legacy["name"], "arguments": legacy.get("arguments") or "{}"}}]
    return calls
