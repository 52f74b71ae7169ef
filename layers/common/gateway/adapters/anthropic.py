"""Anthropic Messages API (``POST {base_url}/messages``) behind the OpenAI chat format.

Request: system/developer messages → top-level ``system``; user/assistant parts → content blocks
(text, image base64/url, PDF document); assistant ``tool_calls`` → ``tool_use`` blocks; ``tool``
messages → ``tool_result`` blocks in a user turn; consecutive same-role turns are merged (the API
requires alternation). Response and stream events are translated back to OpenAI shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from gateway.adapters.contract import DirectModel, GetJson, Target, Usage, list_model_pages
from gateway.adapters.http_client import UpstreamClient, UpstreamRequest, request_json
from gateway.adapters.reasoning import EFFORT_BUDGETS, budget_for_effort
from gateway.adapters.shapes import (
    as_int,
    completion_dict,
    join_url,
    json_instruction,
    legacy_tool_calls,
    legacy_tools,
    new_id,
    now,
    parse_data_url,
    parse_tool_arguments,
    plain_call_id,
    stop_list,
    unmapped,
)
from gateway.adapters.sse import SSEEvent
from gateway.adapters.stream import SSEUpstreamStream, TranslatingAdapter, estimated_usage
from gateway.adapters.upstream_errors import bad_response, error_from_event
from gateway.errors import BadRequest

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def map_stop_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return STOP_REASONS.get(reason, "stop")


# --------------------------------------------------------------------------------------------
# Request translation
# --------------------------------------------------------------------------------------------


def _with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    # OpenRouter-style prompt caching hints on OpenAI parts are honoured.
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequest("image_url.url is required", param="messages")
    parsed = parse_data_url(url)
    if parsed is not None:
        media_type, data = parsed
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest("image_url.url must be an http(s) URL or a base64 data URL", param="messages")


def _file_block(part: dict[str, Any]) -> dict[str, Any]:
    file = part.get("file") or {}
    parsed = parse_data_url(str(file.get("file_data") or ""))
    if parsed is None:
        raise BadRequest("file parts must carry file_data as a base64 data URL for this model",
                         param="messages")
    media_type, data = parsed
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content → Anthropic content blocks (empty text is dropped: the API rejects it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, str):
            if part:
                blocks.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            text = part.get("text") or ""
            if text:
                blocks.append(_with_cache_control({"type": "text", "text": text}, part))
        elif kind == "refusal":
            if part.get("refusal"):
                blocks.append({"type": "text", "text": part["refusal"]})
        elif kind == "image_url":
            blocks.append(_with_cache_control(_image_block(part), part))
        elif kind == "file":
            blocks.append(_with_cache_control(_file_block(part), part))
        elif kind == "input_audio":
            raise BadRequest("audio input is not supported by this model", param="messages")
    return blocks


def _tool_result_content(content: Any) -> Any:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    blocks = [b for b in content_blocks(content) if b["type"] in ("text", "image")]
    return blocks or ""


_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def _tool_id(call_id: Any) -> str:
    """Anthropic accepts ``[a-zA-Z0-9_-]+`` ids; ids issued by other providers are mapped onto
    that alphabet deterministically (the same for the tool_use and its tool_result)."""
    if not call_id:
        return ""
    return _BAD_ID_CHARS.sub("_", str(plain_call_id(call_id)))


def translate_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system_blocks, messages)`` for the Messages API."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []

    def push(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": list(blocks)})

    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            system.extend(b for b in content_blocks(content) if b["type"] == "text")
        elif role == "user":
            push("user", content_blocks(content))
        elif role == "assistant":
            blocks = [b for b in content_blocks(content) if b["type"] == "text"]
            for call in legacy_tool_calls(msg):
                fn = call.get("function") or {}
                blocks.append({
                    "type": "tool_use",
                    "id": _tool_id(call.get("id")) or new_id("toolu_"),
                    "name": fn.get("name") or "",
                    "input": parse_tool_arguments(fn.get("arguments")),
                })
            push("assistant", blocks)
        elif role in ("tool", "function"):
            tool_use_id = _tool_id(msg.get("tool_call_id") or msg.get("name"))
            push("user", [{"type": "tool_result", "tool_use_id": tool_use_id,
                           "content": _tool_result_content(content)}])
    return system, out


def translate_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        fn = tool.get("function") or {}
        entry: dict[str, Any] = {
            "name": fn.get("name") or "",
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def translate_tool_choice(tool_choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    choice: dict[str, Any] | None
    if tool_choice is None:
        choice = None
    elif tool_choice == "auto":
        choice = {"type": "auto"}
    elif tool_choice == "none":
        choice = {"type": "none"}
    elif tool_choice == "required":
        choice = {"type": "any"}
    elif isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        choice = {"type": "tool", "name": name} if name else {"type": "auto"}
    else:
        choice = None
    if parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return choice


# The chat parameters this adapter carries to the Messages API (the rest: ``dropped``).
MAPPED = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "user", "safety_identifier",
                    "tools", "tool_choice", "parallel_tool_calls", "response_format", "functions", "function_call",
                    "n", "reasoning_effort"})
# Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1_024
# Models with extended thinking (Claude 3.7 and 4 onwards; our ids and Anthropic's names).
THINKING_MODELS = re.compile(r"claude-(3[.-]7|[4-9]|(opus|sonnet|haiku)-[4-9])")


def thinks(model: str) -> bool:
    """Whether ``model`` (our catalogue id or Anthropic's name) has extended thinking."""
    return THINKING_MODELS.search(model) is not None


def output_limit(body: dict[str, Any]) -> int:
    return int(body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS)


def thinking_budget(body: dict[str, Any], model: str) -> int | None:
    """The ``thinking.budget_tokens`` a chat request's ``reasoning_effort`` becomes on ``model``
    (``adapters.reasoning``), below ``max_tokens`` (thinking counts inside it, so the hold is
    unchanged); None for no thinking: no effort or ``none``, a model without extended thinking
    (before Claude 3.7), an output limit too small for
    Anthropic's minimum budget, a forced tool choice (thinking allows only auto/none), or a tool
    loop in progress (Anthropic wants the last assistant turn's own thinking block back, which the
    chat format does not carry)."""
    effort = body.get("reasoning_effort")
    if not isinstance(effort, str) or effort not in EFFORT_BUDGETS or effort == "none" or not thinks(model):
        return None
    limit = output_limit(body)
    if limit <= MIN_THINKING_BUDGET:
        return None
    choice = body.get("tool_choice") or body.get("function_call")
    if choice == "required" or isinstance(choice, dict):
        return None
    assistants = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    if assistants and (assistants[-1].get("tool_calls") or assistants[-1].get("function_call")):
        return None
    return max(MIN_THINKING_BUDGET, min(budget_for_effort(effort), limit - 1))


def dropped(body: dict[str, Any]) -> list[str]:
    """What ``build_body`` does not carry: ``shapes.unmapped``; ``top_p`` beside a temperature
    (recent Claude models take one of the two); with thinking, ``temperature`` and ``top_p``
    (thinking requires the defaults); ``reasoning_effort`` when thinking cannot be enabled."""
    names = unmapped(body, MAPPED)
    effort = body.get("reasoning_effort")
    if thinking_budget(body, str(body.get("model") or "")) is not None:
        names += [name for name in ("temperature", "top_p") if body.get(name) is not None]
    else:
        if effort is not None and effort != "none":
            names.append("reasoning_effort")
        if body.get("temperature") is not None and body.get("top_p") is not None:
            names.append("top_p")
    return names


def build_body(target: Target, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    if (body.get("n") or 1) > 1:
        raise BadRequest("n > 1 is not supported for this model", param="n")
    system, messages = translate_messages(body.get("messages") or [])
    instruction = json_instruction(body.get("response_format"))
    if instruction:
        system.append({"type": "text", "text": instruction})
    out: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": messages,
        "max_tokens": output_limit(body),
        # The catalogue's price is Anthropic's standard one: "auto" (its default) would spend
        # Priority Tier capacity, billed at Priority prices, whenever the organisation has some.
        "service_tier": "standard_only",
    }
    if system:
        if any("cache_control" in b for b in system):
            out["system"] = system
        else:
            out["system"] = "\n\n".join(b["text"] for b in system)
    temperature = body.get("temperature")
    budget = thinking_budget(body, target.upstream_model)
    if budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}  # sampling stays at its defaults
    elif temperature is not None:
        out["temperature"] = min(float(temperature), 1.0)  # Anthropic's range is 0..1
    elif body.get("top_p") is not None:
        # Recent Claude models reject temperature and top_p together: temperature wins.
        out["top_p"] = body["top_p"]
    stops = stop_list(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    user = body.get("user") or body.get("safety_identifier")  # Anthropic's one end-user identifier
    if user:
        out["metadata"] = {"user_id": str(user)[:256]}
    tools, tool_choice = legacy_tools(body)
    tools = translate_tools(tools)
    if tools:
        out["tools"] = tools
        choice = translate_tool_choice(tool_choice, body.get("parallel_tool_calls"))
        if choice:
            out["tool_choice"] = choice
    if stream:
        out["stream"] = True
    return out


def auth_headers(api_key: str) -> dict[str, str]:
    """What every Anthropic call carries (messages, model lists): the key and the API version."""
    return {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}


def headers(target: Target) -> dict[str, str]:
    return {**auth_headers(target.api_key), "content-type": "application/json"}


def build_request(client: UpstreamClient, target: Target, body: dict[str, Any], *,
                  stream: bool) -> UpstreamRequest:
    payload = build_body(target, body, stream=stream)
    return client.build_request("POST", join_url(target.base_url, "messages"), headers=headers(target),
                                content=request_json(payload))


# --------------------------------------------------------------------------------------------
# Response translation
# --------------------------------------------------------------------------------------------


def usage_from_anthropic(u: Any, into: Usage | None = None) -> Usage:
    """``input_tokens`` excludes cache reads/writes; all three are prompt tokens for us. The
    writes with the 1-hour TTL (billed at 2x the input price) are in
    ``cache_creation.ephemeral_1h_input_tokens``. Server-side compaction reports its own sampling
    only in ``usage.iterations`` (the top-level counts leave it out, the bill does not): each count
    is the larger of the top-level one and the sum over the iterations."""
    usage = into or Usage()
    if not isinstance(u, dict):
        return usage
    iterations = [i for i in u.get("iterations") or [] if isinstance(i, dict)] \
        if isinstance(u.get("iterations"), list) else []

    def count(key: str) -> int:
        return max(as_int(u.get(key)), sum(as_int(i.get(key)) for i in iterations))

    keys = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    if any(u.get(k) is not None for k in keys):
        usage.prompt_tokens = sum(count(k) for k in keys)
        usage.cached_tokens = count("cache_read_input_tokens")
        usage.cache_write_tokens = count("cache_creation_input_tokens")
    creation = u.get("cache_creation")
    if isinstance(creation, dict):
        usage.cache_write_1h_tokens = as_int(creation.get("ephemeral_1h_input_tokens"))
    if u.get("output_tokens") is not None:
        usage.completion_tokens = count("output_tokens")
    return usage


def translate_response(target: Target, body: dict[str, Any], data: Any) -> tuple[dict[str, Any], Usage]:
    if not isinstance(data, dict) or data.get("type") == "error":
        if isinstance(data, dict):
            raise error_from_event("anthropic", data, api_key=target.api_key)
        raise bad_response("anthropic", "returned an unexpected body")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            tool_calls.append({
                "id": block.get("id") or new_id("toolu_"),
                "type": "function",
                "function": {"name": block.get("name") or "",
                             "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)},
            })
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not tool_calls else None,
                               "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    raw_usage = data.get("usage")
    if isinstance(raw_usage, dict) and raw_usage:
        usage = usage_from_anthropic(raw_usage)
    else:
        chars = sum(len(t) for t in texts) + sum(len(c["function"]["arguments"]) for c in tool_calls)
        usage = estimated_usage(body, chars, target.public_id)
    finish = map_stop_reason(data.get("stop_reason")) or "stop"
    out = completion_dict(id=data.get("id") or new_id(), created=now(), model=target.public_id,
                          choices=[{"index": 0, "message": message, "finish_reason": finish,
                                    "logprobs": None}],
                          usage=usage.as_openai())
    return out, usage


class AnthropicEventStream(SSEUpstreamStream):
    """A stream of Anthropic Messages events: :meth:`_read` parses one and keeps what every reader
    of them needs — the usage (``message_start``, then ``message_delta``: final once it reports
    ``output_tokens``), the end (``message_stop``) and an in-stream ``error`` (raised)."""

    provider = "anthropic"

    def _read(self, event: SSEEvent) -> tuple[dict[str, Any], str | None] | None:
        """``(event object, its type)``, or None for an event without an object."""
        obj = self._json_object(event)
        if obj is None:
            return None
        kind = obj.get("type") or event.event
        if kind == "message_start":
            message = obj.get("message")
            self.usage = usage_from_anthropic(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            raw = obj.get("usage")
            if isinstance(raw, dict):
                self.usage = usage_from_anthropic(raw, self.usage)
                if raw.get("output_tokens") is not None:
                    self._final_usage = True
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            raise error_from_event(self.provider, obj, api_key=self._target.api_key)
        return obj, kind


class AnthropicStream(AnthropicEventStream):
    """Anthropic's events as OpenAI chat completion chunks."""

    def __init__(self, client: UpstreamClient, target: Target, body: dict[str, Any]) -> None:
        super().__init__(client, target, body)
        self._id = new_id()
        self._created = now()
        self._role_sent = False
        self._tool_index: dict[int, int] = {}  # content block index → OpenAI tool_calls index

    def _build_request(self) -> UpstreamRequest:
        return build_request(self._client, self._target, self._body, stream=True)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._target.public_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def _on_event(self, event: SSEEvent) -> list[dict[str, Any]]:
        read = self._read(event)
        if read is None:
            return []
        obj, kind = read
        if kind == "message_start":
            message = obj.get("message") or {}
            if message.get("id"):
                self._id = message["id"]
            return [self._chunk({"content": ""})]
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                tool_idx = len(self._tool_index)
                self._tool_index[as_int(obj.get("index"))] = tool_idx
                name = block.get("name") or ""
                self._out_chars += len(name)
                return [self._chunk({"tool_calls": [{
                    "index": tool_idx, "id": block.get("id") or new_id("toolu_"), "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]})]
            if block.get("type") == "text" and block.get("text"):
                self._out_chars += len(block["text"])
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                text = delta.get("text") or ""
                self._out_chars += len(text)
                return [self._chunk({"content": text})] if text else []
            if dtype == "input_json_delta":
                partial = delta.get("partial_json") or ""
                call_idx = self._tool_index.get(as_int(obj.get("index")))
                if call_idx is None or not partial:
                    return []
                self._out_chars += len(partial)
                call = {"index": call_idx, "function": {"arguments": partial}}
                return [self._chunk({"tool_calls": [call]})]
            return []  # thinking_delta, signature_delta, citations_delta
        if kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason:
                return [self._chunk({}, map_stop_reason(reason))]
        return []  # message_stop, ping, content_block_stop, unknown future events


def usage_of(data: Any) -> Usage | None:
    raw = data.get("usage") if isinstance(data, dict) else None
    return usage_from_anthropic(raw) if isinstance(raw, dict) and raw else None


class AnthropicAdapter(TranslatingAdapter):
    provider = "anthropic"
    auth_headers = staticmethod(auth_headers)
    build_request = staticmethod(build_request)
    translate_response = staticmethod(translate_response)
    usage_of = staticmethod(usage_of)
    dropped = staticmethod(dropped)
    stream_class = AnthropicStream


# --------------------------------------------------------------------------------------------
# Model list (``GET {base_url}/models``, paginated) and the catalogue ids of its names
# --------------------------------------------------------------------------------------------
_DATE_SUFFIX = re.compile(r"-\d{8}$")
_VERSION_DASH = re.compile(r"(?<=\d)-(?=\d(?:$|-))")


def parse_anthropic_page(payload: Any) -> tuple[list[DirectModel], str | None]:
    """One page -> (models, the ``after_id`` of the next page or None)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("Anthropic /models: expected {\"data\": [...]}")
    models = [DirectModel("anthropic", m["id"], m.get("display_name")) for m in payload["data"]
              if isinstance(m, dict) and isinstance(m.get("id"), str)]
    more = payload.get("has_more") is True and isinstance(payload.get("last_id"), str)
    return models, payload["last_id"] if more else None


async def list_anthropic_models(get: GetJson, base_url: str,
                                headers: Mapping[str, str]) -> tuple[list[DirectModel], int]:
    return await list_model_pages(get, join_url(base_url, "models"), headers, parse_anthropic_page,
                                  page_size={"limit": 1000}, cursor_param="after_id", entries="data")


def anthropic_names(upstream: str) -> list[str]:
    """Model names (after the vendor prefix) an Anthropic name may appear under in the catalogue,
    best first: Anthropic dates its names and uses dashes in versions
    (``claude-3-7-sonnet-20250219``) where OpenRouter has ``claude-3.7-sonnet``."""
    undated = _DATE_SUFFIX.sub("", upstream)
    return [_VERSION_DASH.sub(".", undated), undated, upstream]
