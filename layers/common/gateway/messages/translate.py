"""Anthropic Messages (``POST /v1/messages``) on top of the internal chat pipeline: pure translations.

Two modes, chosen per served model by :func:`mode_for`:

* ``"native"`` (the model's provider is ``anthropic``): the client's body goes to Anthropic as it is
  (cache_control, thinking blocks with their signatures, citations, every new field) after
  :func:`native_body` replaced ``model``, refused what would change our cost without a price and
  stripped what addresses our own Anthropic organisation; :func:`native_headers` picks the
  ``anthropic-version`` / ``anthropic-beta`` headers to forward. The upstream answer goes back to the
  client unchanged; the usage to bill is read from the answer, or from the events of a stream, by
  ``gateway.messages.native`` (its ``NativeStream``).
* ``"translate"`` (every other provider): :func:`to_chat` turns the request into the internal
  OpenAI chat body (``Translation.body``, with ``Translation.dropped`` naming what had no
  equivalent: send ``Translation.headers()`` and log it); the pipeline runs as for chat; then
  :func:`to_message` turns the ``chat.completion`` into an Anthropic ``Message`` and
  :func:`to_events` turns the chunk stream (``gateway.translation.chat_chunks`` reads the
  pipeline's SSE bytes back as dicts) into Anthropic's SSE events.

Errors are answered in Anthropic's shape on this route: :func:`error_body` /
:func:`error_response` for a ``GatewayError`` (status kept, ``error.type`` from the status) and
:func:`error_event` inside a stream. ``count_tokens`` is native for Anthropic models (a free upstream
call) and :func:`count_tokens_estimate` for the others.

What the translation drops for non-Anthropic models (named in ``x-dropped-params``): ``top_k``,
``service_tier``, ``speed``, ``inference_geo``, ``container``, ``context_management``,
``mcp_servers``, ``diagnostics``, ``user_profile_id``, ``workspace_id``, top-level
``cache_control`` (automatic caching; block-level ``cache_control`` is kept on text parts, which
OpenRouter honours, and dropped from images), ``thinking.display``, thinking and redacted-thinking
blocks of earlier turns, citations, ``tool_result.is_error``, ``tool_result.cache_control`` (the
block's; ``cache_control`` on the text blocks inside it is kept), tool ``cache_control`` / extra tool
fields, ``disable_parallel_tool_use`` on ``tool_choice: none``.

It refuses (400) what it cannot express: Anthropic-defined tools (``bash_…``, ``text_editor_…``,
``computer_…``), Files API sources (``file_id``), URL documents, more than 4 ``stop_sequences``,
unknown block types.

Mapped: ``system`` (string or blocks, with ``cache_control``) → a system message; text, image
(base64 → data URL, url), PDF (→ a ``file`` part, which ChatRequest does not accept yet: a named
known gap) and plain-text document parts; ``tool_use`` → ``tool_calls``; ``tool_result`` →
``tool`` messages (images in a result follow in a user message); ``tools`` → function tools;
``tool_choice`` auto/any/tool/none → auto/required/named/none (``disable_parallel_tool_use`` →
``parallel_tool_calls: false``); ``thinking`` enabled → ``reasoning_effort`` from the budget
(``adapters.reasoning``: ≤2048 low, ≤8192 medium, else high); ``output_config.effort`` → ``reasoning_effort``;
``output_config.format`` → ``response_format`` json_schema; ``stop_sequences`` → ``stop``;
``temperature``/``top_p``; ``metadata.user_id`` → ``user``; ``max_tokens`` →
``max_completion_tokens`` (it bounds reasoning tokens too); ``stream`` → ``stream`` +
``stream_options.include_usage``.

Never forwarded on the native path because they cost more than our catalogue price or act on our
own Anthropic organisation: ``speed: "fast"`` (premium-priced), ``inference_geo`` other than
``global`` (regional pricing), ``container`` (code execution is billed per container-hour) — each a
400 — and ``workspace_id`` / ``user_profile_id`` (stripped). Server tools billed per use
(``web_search_*``, ``code_execution_*``) are a 400 on both paths. Thinking blocks without a
signature (another model's, from a translated turn earlier in the conversation) are stripped on the
native path: Anthropic would refuse them. Betas outside :data:`SAFE_BETA_PREFIXES` are not
forwarded (``context-1m-…`` doubles the input price past 200k tokens; ``files-api-…`` would read
our organisation's files).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any, Literal

from starlette.responses import JSONResponse

from gateway.adapters.anthropic import ANTHROPIC_VERSION
from gateway.adapters.contract import Usage
from gateway.adapters.reasoning import effort_for_budget
from gateway.adapters.shapes import parse_tool_arguments
from gateway.adapters.tokens import CHARS_PER_TOKEN, estimate_prompt_tokens
from gateway.errors import BadRequest, GatewayError
from gateway.translation import (
    ChunkFolder,
    Translation,
    first_choice,
    message_reasoning,
    new_id,
    sse_event,
    usage_numbers,
)

from .schema import (
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    OtherBlock,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
)

MAX_CHAT_STOP_SEQUENCES = 4

# Server tools billed per use on top of tokens (not in our prices): refused on both paths.
UNPRICED_TOOL_PREFIXES = ("web_search_", "code_execution_")
# Server tools Anthropic runs in a loop on its side (up to ~10 sampling rounds before ``pause_turn``),
# each round re-reading the prompt plus what was fetched, billed as the sum: no hold bounds that, so
# they are refused on the native path (the translated path has no equivalent and refuses them too).
LOOPING_TOOL_PREFIXES = ("web_fetch_", "tool_search_tool_")
# Anthropic-defined tools the CLIENT runs (their calls and results are plain tokens, plus their own
# system prompt): the only Anthropic-defined tools forwarded on the native path. Every other tool type
# runs on Anthropic's side — the per-use and looping ones above, and any new one (``advisor_*``
# consults a pricier model, billed at its rates) — and is refused: an allowlist, so a server tool
# Anthropic adds later is never forwarded at our price by default.
CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "computer_", "memory_")
# Betas forwarded on the native path: features billed as plain tokens. Anything else is dropped
# (and named in x-dropped-params) until its price is known: ``context-1m-*`` (long-context premium),
# ``fast-mode-*``, ``files-api-*`` (our organisation's files), ``code-execution-*``, ``skills-*``.
SAFE_BETA_PREFIXES = (
    "claude-code-", "interleaved-thinking-", "fine-grained-tool-streaming-", "context-management-",
    "token-efficient-tools-", "output-128k-", "prompt-caching-", "extended-cache-ttl-", "effort-",
    "structured-outputs-", "advanced-tool-use-", "tool-search-tool-", "web-fetch-", "mcp-client-",
    "computer-use-", "search-results-", "tool-examples-", "redact-thinking-", "compact-",
    "model-context-window-exceeded-",
)

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}

# Anthropic's error.type per HTTP status (docs: "Errors"); anything else 4xx is invalid_request_error.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
               504: "timeout_error", 529: "overloaded_error"}
# Our OpenAI-shaped error types (in-stream error bodies) → Anthropic's.
_TYPES_FROM_OPENAI = {"insufficient_quota": "billing_error", "server_error": "api_error"}


def mode_for(provider: str) -> Literal["native", "translate"]:
    """``"native"`` when Anthropic itself serves the model, else ``"translate"``."""
    return "native" if provider == "anthropic" else "translate"


# =============================================================================== request → chat
def to_chat(req: MessagesRequest | CountTokensRequest) -> Translation:
    """The internal chat body for a non-Anthropic model (see the module docstring for the map)."""
    t = Translation(body={})
    _refuse_unpriced(req)
    messages: list[dict[str, Any]] = []
    system = _system_message(req.system, t)
    if system is not None:
        messages.append(system)
    for index, msg in enumerate(req.messages):
        messages.extend(_chat_messages(msg.role, msg.content, f"messages.{index}", t))
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    tools = [_chat_tool(tool, t) for tool in req.tools or []]
    if tools:
        body["tools"] = tools
        _tool_choice(req, body, t)
    elif req.tool_choice is not None:
        t.drop("tool_choice")
    _reasoning(req, body, t)
    if req.output_config is not None and req.output_config.format is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": req.output_config.format.schema_}}
    for name in ("speed", "context_management", "mcp_servers", "user_profile_id", "workspace_id", "cache_control"):
        if getattr(req, name) is not None:
            t.drop(name)
    if isinstance(req, MessagesRequest):
        _sampling(req, body, t)
    t.body = body
    return t


def _refuse_unpriced(req: MessagesRequest | CountTokensRequest) -> None:
    for i, tool in enumerate(req.tools or []):
        if tool.type and tool.type.startswith(UNPRICED_TOOL_PREFIXES):
            raise BadRequest(f"The server tool `{tool.type}` is billed per use by the provider and is not "
                             f"available through this gateway; define it as a custom tool instead.",
                             param=f"tools.{i}", code="unsupported_tool")


def _sampling(req: MessagesRequest, body: dict[str, Any], t: Translation) -> None:
    body["max_completion_tokens"] = req.max_tokens
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop_sequences:
        if len(req.stop_sequences) > MAX_CHAT_STOP_SEQUENCES:
            raise BadRequest(f"This model accepts at most {MAX_CHAT_STOP_SEQUENCES} stop_sequences.",
                             param="stop_sequences")
        body["stop"] = list(req.stop_sequences)
    if req.metadata is not None and req.metadata.user_id:
        body["user"] = req.metadata.user_id
    for name in ("top_k", "service_tier", "inference_geo", "container", "diagnostics"):
        if getattr(req, name) is not None:
            t.drop(name)


def _reasoning(req: MessagesRequest | CountTokensRequest, body: dict[str, Any], t: Translation) -> None:
    effort: str | None = None
    thinking = req.thinking
    if thinking is not None:
        if thinking.type == "enabled" and thinking.budget_tokens is not None:
            effort = effort_for_budget(thinking.budget_tokens)
        if thinking.display is not None:
            t.drop("thinking.display")
    if req.output_config is not None and req.output_config.effort is not None:
        effort = req.output_config.effort
    if effort is not None:
        body["reasoning_effort"] = effort


def _system_message(system: str | list[TextBlock] | None, t: Translation) -> dict[str, Any] | None:
    if system is None:
        return None
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    parts = [_text_part(block, t) for block in system]
    return {"role": "system", "content": parts} if parts else None


def _text_part(block: TextBlock, t: Translation) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": block.text}
    if block.cache_control is not None:
        part["cache_control"] = block.cache_control.model_dump(exclude_none=True)
    if getattr(block, "citations", None):
        t.drop("citations")
    return part


def _chat_messages(role: str, content: Any, where: str, t: Translation) -> list[dict[str, Any]]:
    """One Anthropic message → chat messages (a user turn with tool results becomes the ``tool``
    messages first, then the rest of the turn as a user message)."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    trailing_media: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.content.{i}"
        if isinstance(block, ToolResultBlock):
            if role != "user":
                raise BadRequest("tool_result blocks belong in a user message.", param=at)
            out.append(_tool_message(block, at, t, trailing_media))
        elif isinstance(block, ToolUseBlock):
            if role != "assistant":
                raise BadRequest("tool_use blocks belong in an assistant message.", param=at)
            tool_calls.append({"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False, separators=(",", ":"))}})
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            t.drop("thinking blocks")
        else:
            parts.extend(_content_parts(block, at, t))
    if trailing_media:
        parts = trailing_media + parts
    if tool_calls:
        msg: dict[str, Any] = {"role": "assistant", "content": _joined(parts), "tool_calls": tool_calls}
        out.append(msg)
    elif parts:
        out.append({"role": role, "content": _joined(parts) if role != "user" else parts})
    return out


def _joined(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    """Assistant and system content: plain text when every part is text without cache_control."""
    if not parts:
        return None
    if all(p["type"] == "text" and "cache_control" not in p for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _content_parts(block: Any, at: str, t: Translation) -> list[dict[str, Any]]:
    if isinstance(block, TextBlock):
        return [_text_part(block, t)]
    if isinstance(block, ImageBlock):
        if block.cache_control is not None:
            t.drop("image cache_control")  # the chat format carries it on text parts only
        return [_image_part(block, at)]
    if isinstance(block, DocumentBlock):
        return _document_parts(block, at, t)
    if isinstance(block, OtherBlock) and block.type == "search_result":
        texts = [c.get("text", "") for c in (block.model_extra or {}).get("content") or [] if isinstance(c, dict)]
        return [{"type": "text", "text": "\n".join(texts)}]
    kind = getattr(block, "type", "?")
    raise BadRequest(f"Content blocks of type `{kind}` need an Anthropic model.", param=at,
                     code="unsupported_content")


def _image_part(block: ImageBlock, at: str) -> dict[str, Any]:
    source = block.source
    if source.type == "base64":
        url = f"data:{source.media_type};base64,{source.data}"
    elif source.type == "url":
        url = source.url
    else:
        raise BadRequest("Images from the Files API (file_id) are not supported; send base64 or a URL.",
                         param=f"{at}.source", code="unsupported_content")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_parts(block: DocumentBlock, at: str, t: Translation) -> list[dict[str, Any]]:
    source = block.source
    if getattr(block, "citations", None):
        t.drop("citations")
    if source.type == "text":
        return [_text_part(TextBlock(type="text", text=source.data, cache_control=block.cache_control), t)]
    if source.type == "content":
        if isinstance(source.content, str):
            return [{"type": "text", "text": source.content}]
        out = []
        for j, item in enumerate(source.content):
            kind = item.get("type")
            if kind == "text":
                out.append(_text_part(TextBlock.model_validate(item), t))
            elif kind == "image":
                out.append(_image_part(ImageBlock.model_validate(item), f"{at}.source.content.{j}"))
        return out
    if source.type == "base64":
        if source.media_type != "application/pdf":
            raise BadRequest("Base64 documents must be application/pdf.", param=f"{at}.source.media_type")
        file: dict[str, Any] = {"filename": block.title or "document.pdf",
                                "file_data": f"data:application/pdf;base64,{source.data}"}
        return [{"type": "file", "file": file}]
    raise BadRequest(f"Documents from a {source.type} source need an Anthropic model; send the PDF as base64.",
                     param=f"{at}.source", code="unsupported_content")


def _tool_message(block: ToolResultBlock, at: str, t: Translation,
                  trailing_media: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool result as a ``tool`` message (text only: most providers take no images there; images
    follow in the user message of the same turn)."""
    if block.is_error:
        t.drop("tool_result.is_error")
    if block.cache_control is not None:
        t.drop("tool_result.cache_control")
    content = block.content
    if content is None or isinstance(content, str):
        return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content or ""}
    texts: list[dict[str, Any]] = []
    for j, item in enumerate(content):
        for part in _content_parts(item, f"{at}.content.{j}", t):
            (texts if part["type"] == "text" else trailing_media).append(part)
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": texts or ""}


def _chat_tool(tool: Tool, t: Translation) -> dict[str, Any]:
    if not tool.is_custom:
        raise BadRequest(f"The Anthropic-defined tool `{tool.type}` needs an Anthropic model; define a custom "
                         f"tool with an input_schema instead.", param="tools", code="unsupported_tool")
    if len(tool.name) > 64:
        raise BadRequest(f"Tool name `{tool.name[:64]}…` is longer than 64 characters, the limit of this model.",
                         param="tools")
    fn: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        fn["description"] = tool.description
    if tool.strict is not None:
        fn["strict"] = tool.strict
    if tool.cache_control is not None or tool.model_extra:
        t.drop("tools[].cache_control" if tool.cache_control is not None else "tools[] extra fields")
    return {"type": "function", "function": fn}


def _tool_choice(req: MessagesRequest | CountTokensRequest, body: dict[str, Any], t: Translation) -> None:
    choice = req.tool_choice
    if choice is None:
        return
    if choice.type == "auto":
        body["tool_choice"] = "auto"
    elif choice.type == "any":
        body["tool_choice"] = "required"
    elif choice.type == "none":
        body["tool_choice"] = "none"
    else:
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if choice.disable_parallel_tool_use:
        if choice.type == "none":
            t.drop("tool_choice.disable_parallel_tool_use")
        else:
            body["parallel_tool_calls"] = False


# =============================================================================== native path
# Anthropic's standard capacity, at its list price (never Priority Tier, priced higher).
STANDARD_SERVICE_TIER = "standard_only"


def native_body(req: MessagesRequest | CountTokensRequest, upstream_model: str, *,
                max_tokens_limit: int | None = None) -> Translation:
    """The client's request for Anthropic itself: ``model`` replaced; refused (400) what costs more
    than our price (module docstring); ``workspace_id``/``user_profile_id`` stripped (they address
    our own organisation); ``service_tier`` always ``standard_only`` (the price we bill).
    ``max_tokens_limit`` (the model's output maximum the hold was computed with) clamps
    ``max_tokens`` — and a thinking budget with it — so the hold stays an upper bound."""
    _refuse_unpriced(req)
    for i, tool in enumerate(req.tools or []):
        if tool.type and tool.type.startswith(LOOPING_TOOL_PREFIXES):
            raise BadRequest(f"The server tool `{tool.type}` runs several billed rounds on the provider's side, "
                             "which no credit hold can bound; define it as a custom tool instead.",
                             param=f"tools.{i}", code="unsupported_tool")
        if not tool.is_custom and not tool.type.startswith(CLIENT_TOOL_PREFIXES):  # type: ignore[union-attr]
            raise BadRequest(f"The tool type `{tool.type}` runs on the provider's side (billed beyond our price: "
                             "another model, fetched content, per-use fees) and is not available through this "
                             "gateway; define it as a custom tool instead.", param=f"tools.{i}",
                             code="unsupported_tool")
    if req.speed == "fast":
        raise BadRequest("speed: \"fast\" is premium-priced and not available through this gateway.",
                         param="speed", code="unsupported_parameter")
    if isinstance(req, MessagesRequest):
        if req.mcp_servers:
            raise BadRequest("MCP servers run several billed rounds on the provider's side, which no credit hold "
                             "can bound; call their tools as custom tools instead.", param="mcp_servers",
                             code="unsupported_parameter")
        if req.inference_geo not in (None, "global"):
            raise BadRequest("inference_geo other than \"global\" is priced differently and not available "
                             "through this gateway.", param="inference_geo", code="unsupported_parameter")
        if req.container is not None:
            raise BadRequest("Containers (code execution) are billed per hour and not available through this "
                             "gateway.", param="container", code="unsupported_parameter")
    _refuse_file_sources(req)
    t = Translation(body={})
    body = req.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for name in ("workspace_id", "user_profile_id"):
        if body.pop(name, None) is not None:
            t.drop(name)
    for msg in body["messages"]:
        if isinstance(msg["content"], list):
            kept = [b for b in msg["content"] if not _unsigned_thinking(b)]
            if len(kept) < len(msg["content"]):
                t.drop("thinking blocks without a signature")
                msg["content"] = kept
    body["model"] = upstream_model
    if isinstance(req, MessagesRequest):
        # Our price is Anthropic's standard one: "auto" (its default) would spend Priority Tier
        # capacity, billed at Priority prices, whenever the organisation has some.
        body["service_tier"] = STANDARD_SERVICE_TIER
    if max_tokens_limit is not None and body.get("max_tokens", 0) > max_tokens_limit:
        body["max_tokens"] = max_tokens_limit
        t.drop(f"max_tokens above {max_tokens_limit}")
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and (thinking.get("budget_tokens") or 0) >= max_tokens_limit:
            thinking["budget_tokens"] = max_tokens_limit - 1
    t.body = body
    return t


def _refuse_file_sources(req: MessagesRequest | CountTokensRequest) -> None:
    """Images and documents by Files API ``file_id`` (and ``container_upload`` blocks) would read a file
    of our own Anthropic organisation: a 400 on the native path too (the translation refuses them)."""
    for i, msg in enumerate(req.messages):
        blocks = msg.content if isinstance(msg.content, list) else []
        for j, block in enumerate(blocks):
            inner = block.content if isinstance(block, ToolResultBlock) and isinstance(block.content, list) else []
            for k, part in [(str(j), block)] + [(f"{j}.content.{n}", p) for n, p in enumerate(inner)]:
                source = getattr(part, "source", None)
                if getattr(source, "type", None) == "file" or getattr(part, "type", None) == "container_upload":
                    raise BadRequest("Files API sources (`file_id`) are not supported: they would be read from the "
                                     "gateway's own organisation. Send the content as base64, text or a URL.",
                                     param=f"messages.{i}.content.{k}", code="unsupported_content")


def _unsigned_thinking(block: dict[str, Any]) -> bool:
    """A thinking block another (translated) model produced: Anthropic would reject it as unsigned."""
    return block.get("type") == "thinking" and not block.get("signature")


def native_headers(headers: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``(headers to forward, betas dropped)``: the client's ``anthropic-version`` (default
    ``2023-06-01``) and the ``anthropic-beta`` values that start with a :data:`SAFE_BETA_PREFIXES` entry."""
    lower = {k.lower(): v for k, v in headers.items()}
    out = {"anthropic-version": (lower.get("anthropic-version") or ANTHROPIC_VERSION).strip()[:32]}
    kept: list[str] = []
    dropped: list[str] = []
    for beta in (lower.get("anthropic-beta") or "").split(","):
        beta = beta.strip()
        if not beta:
            continue
        (kept if beta.startswith(SAFE_BETA_PREFIXES) else dropped).append(beta)
    if kept:
        out["anthropic-beta"] = ",".join(dict.fromkeys(kept))
    return out, [f"anthropic-beta: {b}" for b in dict.fromkeys(dropped)]


# =============================================================================== chat → Message
def anthropic_usage(usage: Any) -> dict[str, int]:
    """Anthropic ``usage`` from a ``Usage`` or an OpenAI usage dict: ``input_tokens`` excludes cache
    reads and writes (they have their own fields), as Anthropic reports it."""
    prompt, completion, cached, cache_write, _ = usage_numbers(usage)
    return {"input_tokens": max(prompt - cached - cache_write, 0), "output_tokens": completion,
            "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cached}


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def to_message(completion: dict[str, Any], *, usage: Usage | None = None, model: str | None = None,
               message_id: str | None = None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``Message``. ``usage`` (the pipeline's, which
    knows cache writes) wins over the completion's own usage dict."""
    choice = first_choice(completion)
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = message_reasoning(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": _signature(message)})
    text = message.get("content")
    if isinstance(text, list):  # some compat servers answer with parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    elif message.get("refusal"):
        content.append({"type": "text", "text": str(message["refusal"])})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu_"), "name": fn.get("name") or "",
                        "input": parse_tool_arguments(fn.get("arguments"))})
    finish = choice.get("finish_reason")
    if finish in (None, "stop") and message.get("tool_calls"):
        finish = "tool_calls"
    return {"id": message_id or _message_id(completion.get("id")), "type": "message", "role": "assistant",
            "model": model or completion.get("model") or "", "content": content,
            "stop_reason": stop_reason(finish), "stop_sequence": None,
            "usage": anthropic_usage(usage if usage is not None else completion.get("usage"))}


def _message_id(chat_id: Any) -> str:
    return chat_id if isinstance(chat_id, str) and chat_id.startswith("msg_") else new_id("msg_")


def _signature(message: dict[str, Any]) -> str:
    """A thinking signature OpenRouter passes on in ``reasoning_details`` (else ``""``)."""
    for detail in message.get("reasoning_details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("signature"), str):
            return str(detail["signature"])
    return ""


# =============================================================================== chunks → events
async def to_events(chunks: AsyncIterable[dict[str, Any]], *, model: str, message_id: str | None = None,
                    input_tokens: int = 0, final_usage: Callable[[], Usage | None] | None = None
                    ) -> AsyncIterator[bytes]:
    """The internal chunk stream as Anthropic SSE events: ``message_start``, ``ping``, per content
    block ``content_block_start`` / ``content_block_delta`` (``thinking_delta``, ``text_delta``,
    ``input_json_delta``) / ``content_block_stop``, then ``message_delta`` (stop_reason, final usage)
    and ``message_stop``. An error (an ``{"error": ...}`` item or a ``GatewayError`` raised by the
    iterator) ends the stream with an ``error`` event.

    ``input_tokens`` (an estimate) fills message_start's usage; the final usage in message_delta comes
    from ``final_usage()`` when given (call it after the iterator ended), else from the usage chunk.
    """
    state = _EventState()
    yield sse_event("message_start", {"type": "message_start", "message": {
        "id": message_id or new_id("msg_"), "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0}}})
    yield sse_event("ping", {"type": "ping"})
    try:
        async for chunk in chunks:
            if chunk.get("error"):
                for frame in state.close_block():
                    yield frame
                yield error_event_from_body(chunk)
                return
            for frame in state.on_chunk(chunk):
                yield frame
    except GatewayError as err:
        for frame in state.close_block():
            yield frame
        yield error_event(err)
        return
    for frame in state.close_block():
        yield frame
    usage: Any = final_usage() if final_usage is not None else None
    yield sse_event("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": state.stop_reason, "stop_sequence": None},
                                      "usage": anthropic_usage(usage if usage is not None else state.usage)})
    yield sse_event("message_stop", {"type": "message_stop"})


class _EventState(ChunkFolder):
    """Which content block is open; OpenAI deltas open and close Anthropic blocks in order."""

    def __init__(self) -> None:
        super().__init__()
        self.index = -1
        self.open: str | None = None  # "thinking" | "text" | "tool_use"
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index → block index

    @property
    def stop_reason(self) -> str:
        finish = self.finish
        if finish in (None, "stop") and self.tool_blocks:
            finish = "tool_calls"
        return stop_reason(finish)

    def _start(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        frames = self.close_block()
        self.index += 1
        self.open = kind
        frames.append(sse_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                        "content_block": block}))
        return frames

    def close_block(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta",
                                                 "index": self.index if index is None else index, "delta": delta})

    def on_delta(self, delta: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        reasoning = message_reasoning(delta)
        if reasoning:
            if self.open != "thinking":
                frames += self._start("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            frames.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            if self.open != "text":
                frames += self._start("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or []:
            frames += self._tool_delta(call)
        return frames

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        position = call.get("index", len(self.tool_blocks))
        fn = call.get("function") or {}
        if position not in self.tool_blocks:
            frames += self._start("tool_use", {"type": "tool_use", "id": call.get("id") or new_id("toolu_"),
                                               "name": fn.get("name") or "", "input": {}})
            self.tool_blocks[position] = self.index
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            frames.append(self._delta({"type": "input_json_delta", "partial_json": arguments},
                                      self.tool_blocks[position]))
        return frames


# =============================================================================== errors
def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(err: GatewayError, request_id: str | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message", ...}, "request_id"}``: Anthropic's shape, with
    our extra details (``code``, ``param``, ``balance``/``required`` on 402) inside ``error``."""
    inner: dict[str, Any] = {"type": error_type(err.status), "message": err.message, "code": err.code}
    if err.param:
        inner["param"] = err.param
    inner.update(err.extra)
    out: dict[str, Any] = {"type": "error", "error": inner}
    if request_id:
        out["request_id"] = request_id
    return out


def error_response(err: GatewayError, request_id: str | None = None) -> JSONResponse:
    headers = dict(err.headers or {})
    if request_id:
        headers.setdefault("request-id", request_id)
    return JSONResponse(error_body(err, request_id), status_code=err.status, headers=headers or None)


def error_event(err: GatewayError) -> bytes:
    return sse_event("error", error_body(err))


def error_event_from_body(body: dict[str, Any]) -> bytes:
    """An in-stream OpenAI-shaped error (``{"error": {"message", "type", "code"}}``) as Anthropic's."""
    raw = body.get("error")
    err: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = str(err.get("type") or "api_error")
    code = str(err.get("code") or "")
    if code == "upstream_timeout":
        kind = "timeout_error"
    elif "overloaded" in code or code == "upstream_unavailable":
        kind = "overloaded_error"
    kind = _TYPES_FROM_OPENAI.get(kind, kind)
    if kind not in set(ERROR_TYPES.values()):
        kind = "api_error"
    inner = {"type": kind, "message": str(err.get("message") or "The stream failed."), "code": code or None}
    return sse_event("error", {"type": "error", "error": inner})


# =============================================================================== count_tokens
def count_tokens_estimate(req: CountTokensRequest | MessagesRequest) -> dict[str, int]:
    """``{"input_tokens": n}`` for a non-Anthropic model: the gateway's prompt estimate of the
    translated request (Anthropic models use their free native endpoint)."""
    return {"input_tokens": estimate_input_tokens(req)}


def estimate_input_tokens(req: CountTokensRequest | MessagesRequest) -> int:
    """The chat estimator over the translated body (a request only the native path can express
    counts its JSON length at 4 characters per token)."""
    try:
        return estimate_prompt_tokens(to_chat(req).body)
    except BadRequest:
        raw = req.model_dump_json(by_alias=True, exclude_none=True)
        return math.ceil(len(raw) / CHARS_PER_TOKEN)
