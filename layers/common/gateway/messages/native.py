"""The native path of ``/v1/messages``: Anthropic's own Messages API, spoken through the chat pipeline.

The pipeline (``gateway.chat.service``) keeps admission, fallback, the deadline, the drain of a
stream whose client left and the settlement; this module gives it a :class:`~gateway.chat.service.Wire`
that talks to Anthropic in Anthropic's format both ways:

* :class:`NativeAdapter` posts the client's body (``translate.native_body``: model replaced, what
  costs more than our price refused, ``max_tokens`` clamped) with the client's ``anthropic-version``
  and safe ``anthropic-beta`` headers, and answers Anthropic's ``Message`` unchanged (our model id in
  ``model``) with the usage to bill (``usage_from_anthropic``);
* :class:`NativeStream` yields Anthropic's stream events as dicts (relayed as ``event:`` / ``data:``
  frames), keeping the usage up to date (``message_start`` input counts, ``message_delta`` output)
  and raising an in-stream ``error`` event as an ``UpstreamError`` (before the first event: the
  pipeline may fall back; later: the relay ends with Anthropic's ``error`` event);
* :func:`assemble_message` turns the events of a buffered stream (API Gateway path) into a
  ``Message``, so the deadline stops a generation and what it produced is charged.

:func:`native_size` is the prompt's upper bound for the hold, measured on the Anthropic body itself
(every byte forwarded, including earlier turns' thinking blocks, which the chat translation drops).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.adapters.anthropic import AnthropicEventStream, auth_headers, usage_from_anthropic, usage_of
from gateway.adapters.contract import Target, Usage
from gateway.adapters.http_client import UpstreamClient, UpstreamRequest
from gateway.adapters.shapes import parse_tool_arguments
from gateway.adapters.sse import SSEEvent
from gateway.adapters.stream import TranslatingAdapter, estimated_usage
from gateway.adapters.tokens import REPLY_PRIMING, TOOLS_OVERHEAD, PromptSize
from gateway.adapters.upstream_errors import bad_response, error_from_event
from gateway.chat.native import native_request
from gateway.chat.service import Wire
from gateway.translation import dumps, sse_event

from .translate import CLIENT_TOOL_PREFIXES, anthropic_usage, error_event

PROMPT_FIELDS = ("system", "messages", "tools", "tool_choice", "output_config", "thinking", "context_management")
# Anthropic-defined client tools add their own system prompt (computer use ~500 tokens, the text
# editor ~700, bash ~250): counted on top of the tools overhead, per tool.
DEFINED_TOOL_OVERHEAD = 1_000
# Server-side compaction (``context_management.edits`` of type ``compact_*``, beta ``compact-…``):
# once the input reaches the trigger (Anthropic's default 150,000 tokens) Anthropic runs an extra
# sampling step that reads the whole prompt and writes a summary, then answers from the summary.
COMPACTION_EDIT_PREFIX = "compact_"
COMPACTION_DEFAULT_TRIGGER = 150_000


# =============================================================================== hold
def native_size(body: Mapping[str, Any]) -> PromptSize:
    """The :class:`PromptSize` of an Anthropic Messages body: the JSON text of every prompt field
    (one token per UTF-8 byte in the bound), images at the model's per-image maximum, documents
    other than plain text and server-side tools or MCP servers (content Anthropic fetches itself)
    at the whole context length."""
    images = files = 0

    def strip(blocks: Any) -> Any:
        nonlocal images, files
        if not isinstance(blocks, list):
            return blocks
        out = []
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "image":
                images += 1
                block = {"type": kind}
            elif kind == "document":
                source = block.get("source") if isinstance(block.get("source"), dict) else {}
                if source.get("type") == "content":
                    block = {**block, "source": {**source, "content": strip(source.get("content"))}}
                elif source.get("type") != "text":
                    files += 1
                    block = {"type": kind}
            elif kind == "container_upload":
                files += 1
            elif kind == "tool_result" and isinstance(block.get("content"), list):
                block = {**block, "content": strip(block["content"])}
            out.append(block)
        return out

    prompt = {k: body[k] for k in PROMPT_FIELDS if body.get(k) is not None}
    prompt["messages"] = [{**m, "content": strip(m.get("content"))} if isinstance(m, dict) else m
                          for m in body.get("messages") or []]
    if isinstance(prompt.get("system"), list):
        prompt["system"] = strip(prompt["system"])
    text = dumps(prompt)
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    overhead = REPLY_PRIMING + (TOOLS_OVERHEAD if tools else 0)
    for tool in tools:
        kind = tool.get("type")
        if not kind or kind == "custom":
            continue
        if str(kind).startswith(CLIENT_TOOL_PREFIXES):
            overhead += DEFINED_TOOL_OVERHEAD
        else:
            files += 1  # a server tool: what it fetches is prompt
    if body.get("mcp_servers"):
        files += 1
    return PromptSize.of_text(text, overhead, images=images, files=files)


def compaction_extra(body: Mapping[str, Any], prompt_bound: int, max_output: int) -> tuple[int, int]:
    """``(prompt tokens, output tokens)`` the hold adds for server-side compaction: nothing when
    the body asks for none or its prompt bound stays below the trigger (it cannot fire); else the
    extra sampling step — the whole prompt read once more (``prompt_bound``) and a summary of at
    most ``max_output`` tokens (the model's output maximum) written, then read by the answer.
    Anthropic bills that step (reported only in ``usage.iterations``) on top of the answer."""
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    trigger: int | None = None
    for edit in edits if isinstance(edits, list) else []:
        if not isinstance(edit, dict) or not str(edit.get("type") or "").startswith(COMPACTION_EDIT_PREFIX):
            continue
        given = edit.get("trigger")
        value = given.get("value") if isinstance(given, dict) else None
        at = value if isinstance(value, int) and not isinstance(value, bool) else COMPACTION_DEFAULT_TRIGGER
        trigger = at if trigger is None else min(trigger, at)
    if trigger is None or prompt_bound < trigger:
        return 0, 0
    return prompt_bound + max_output, max_output


# =============================================================================== upstream
def _request(client: UpstreamClient, target: Target, body: dict[str, Any], headers: Mapping[str, str], *,
             stream: bool) -> UpstreamRequest:
    return native_request(client, target, body, "messages", {**auth_headers(target.api_key), **headers},
                          stream=stream)


class NativeStream(AnthropicEventStream):
    """Anthropic's events relayed as they are (our model id in ``message_start``)."""

    def __init__(self, client: UpstreamClient, target: Target, body: dict[str, Any],
                 headers: Mapping[str, str]) -> None:
        super().__init__(client, target, body)
        self._headers = headers

    def _build_request(self) -> UpstreamRequest:
        return _request(self._client, self._target, self._body, self._headers, stream=True)

    def _on_event(self, event: SSEEvent) -> list[dict[str, Any]]:
        read = self._read(event)
        if read is None:
            return []
        obj, kind = read
        if kind == "message_start":
            message: dict[str, Any] = obj["message"] if isinstance(obj.get("message"), dict) else {}
            obj = {**obj, "message": {**message, "model": self._target.public_id}}
        elif kind == "content_block_start":
            block: dict[str, Any] = obj["content_block"] if isinstance(obj.get("content_block"), dict) else {}
            self._out_chars += len(str(block.get("text") or block.get("name") or ""))
        elif kind == "content_block_delta":
            delta: dict[str, Any] = obj["delta"] if isinstance(obj.get("delta"), dict) else {}
            self._out_chars += len(str(delta.get("text") or delta.get("thinking") or delta.get("partial_json") or ""))
        return [obj]


class NativeAdapter(TranslatingAdapter):
    """Anthropic's Messages API without translation (the pipeline's adapter for the native path)."""

    provider = "anthropic"
    usage_of = staticmethod(usage_of)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = dict(headers)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {**auth_headers(api_key), **self.headers}

    def build_request(self, client: UpstreamClient, target: Target, body: dict[str, Any], *,
                      stream: bool) -> UpstreamRequest:
        return _request(client, target, body, self.headers, stream=stream)

    def translate_response(self, target: Target, body: dict[str, Any], data: Any) -> tuple[dict[str, Any], Usage]:
        if not isinstance(data, dict) or data.get("type") != "message":
            if isinstance(data, dict) and data.get("type") == "error":
                raise error_from_event(self.provider, data, api_key=target.api_key)
            raise bad_response(self.provider, "returned an unexpected body")
        raw = data.get("usage")
        if isinstance(raw, dict) and raw:
            usage = usage_from_anthropic(raw)
        else:
            chars = len(json.dumps(data.get("content") or [], ensure_ascii=False))
            usage = estimated_usage(body, chars, target.public_id)
        return {**data, "model": target.public_id}, usage

    def stream(self, client: UpstreamClient, target: Target, body: dict[str, Any]) -> NativeStream:
        return NativeStream(client, target, body, self.headers)


# =============================================================================== downstream
def frame(event: dict[str, Any]) -> bytes:
    return sse_event(str(event.get("type") or "message"), event)


def assemble_message(events: list[dict[str, Any]], model: str, usage: Usage) -> dict[str, Any]:
    """One Anthropic ``Message`` from its stream events (text, thinking with its signature, tool
    input from its JSON deltas, citations; stop reason and usage from ``message_delta``)."""
    message: dict[str, Any] = {"type": "message", "role": "assistant", "content": [], "stop_reason": None,
                               "stop_sequence": None}
    blocks: dict[int, dict[str, Any]] = {}
    # a block's text, thinking and tool input (``input_json``) as pieces, joined once at the end
    # (concatenating per delta is quadratic in the answer's length)
    pieces: dict[tuple[int, str], list[str]] = {}
    raw_usage: dict[str, Any] = {}
    for event in events:
        kind = event.get("type")
        index = event.get("index")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            message.update(event["message"])
            raw_usage.update(event["message"].get("usage") or {})
        elif kind == "content_block_start" and isinstance(index, int):
            blocks[index] = dict(event.get("content_block") or {})
            for name in _PIECED:  # a block started again starts over
                pieces.pop((index, name), None)
        elif kind == "content_block_delta" and isinstance(index, int) and index in blocks:
            _apply_delta(blocks[index], event.get("delta") or {}, pieces, index)
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            for name in ("stop_reason", "stop_sequence", "container"):
                if name in delta:
                    message[name] = delta[name]
            raw_usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
    for (index, name), parts in pieces.items():
        joined = "".join(parts)
        if name == "input_json":
            blocks[index]["input"] = parse_tool_arguments(joined) if joined else {}
        else:
            blocks[index][name] = joined
    message["content"] = [blocks[i] for i in sorted(blocks)]
    message["model"] = model
    message["usage"] = {**raw_usage, **anthropic_usage(usage)} if usage.reported else anthropic_usage(usage)
    return message


_PIECED = ("text", "thinking", "input_json")


def _apply_delta(block: dict[str, Any], delta: dict[str, Any], pieces: dict[tuple[int, str], list[str]],
                 index: int) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        _piece(pieces, index, "text", block.get("text")).append(str(delta.get("text") or ""))
    elif kind == "thinking_delta":
        _piece(pieces, index, "thinking", block.get("thinking")).append(str(delta.get("thinking") or ""))
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature") or ""
    elif kind == "input_json_delta":
        _piece(pieces, index, "input_json", "").append(str(delta.get("partial_json") or ""))
    elif kind == "citations_delta" and delta.get("citation") is not None:
        block.setdefault("citations", []).append(delta["citation"])


def _piece(pieces: dict[tuple[int, str], list[str]], index: int, name: str, start: Any) -> list[str]:
    """The pieces of one field of block ``index``, begun with the block's own value (``start``)."""
    parts = pieces.get((index, name))
    if parts is None:
        parts = pieces[index, name] = [str(start or "")]
    return parts


def wire(headers: Mapping[str, str]) -> Wire:
    """The pipeline's wire for one native request (``headers``: ``translate.native_headers``)."""
    adapter = NativeAdapter(headers)
    return Wire(adapter=lambda _provider: adapter, frame=frame, error_frame=error_event,
                tail=lambda *_: [], assemble=assemble_message)
