"""The native path of ``/v1/responses``: OpenAI's own Responses API, spoken through the chat pipeline.

When OpenAI itself serves the model (our key or the user's BYOK OpenAI key) the client's Responses
body goes to ``POST {openai}/responses`` as written — input items (reasoning items with their
``encrypted_content`` included), function and custom tools, ``text``, ``reasoning``, ``include`` —
and the answer or its typed events come back unchanged (our model id in ``model``). As on the
Anthropic passthrough (``gateway.messages.native``) the pipeline keeps admission, fallback, the
deadline, the drain of a stream whose client left and the settlement; this module gives it a
:class:`~gateway.chat.service.Wire`:

* :func:`native_body` — the body sent: ``model`` replaced, ``store: false`` (nothing is kept in our
  OpenAI account), ``service_tier: "default"`` (the list price), ``max_output_tokens`` clamped to
  the model's maximum or injected (it bounds reasoning tokens too); refused (400) what needs stored
  state (``translate.STATEFUL``), hosted tools with their own price or acting on our account
  (``web_search``, ``file_search``, ``code_interpreter``, ``image_generation``, ``computer_use``,
  ``mcp``, …) and their items, ``file_id`` images and files (our account's files); fields outside
  :data:`FORWARDED` are not sent (named in ``x-dropped-params``);
* :func:`native_size` — the prompt's upper bound for the hold, measured on that body: the JSON text
  of every prompt field at one token per UTF-8 byte, images at the model's per-image maximum
  (``adapters.tokens``), files (and ``detail: "original"`` images) at the context length;
* :class:`ResponsesAdapter` / :class:`ResponsesStream` — the call and the typed events as dicts
  (relayed as ``event:`` / ``data:`` frames); the usage to bill is ``response.usage`` of the answer
  or of the terminal event (``response.completed`` / ``response.incomplete`` / ``response.failed``):
  ``input_tokens`` (cached included) with ``input_tokens_details.cached_tokens``, ``output_tokens``
  (reasoning included). An in-stream ``error`` event raises an ``UpstreamError`` (before the first
  event the pipeline may fall back; later the relay ends with an ``error`` event of ours);
* :func:`assemble_response` — the Response of a buffered stream (API Gateway path), so the deadline
  stops a generation and what it produced is charged.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.adapters.contract import Target, Usage
from gateway.adapters.http_client import UpstreamClient, UpstreamRequest
from gateway.adapters.registry import get_adapter
from gateway.adapters.shapes import as_int
from gateway.adapters.sse import SSEEvent
from gateway.adapters.stream import SSEUpstreamStream, TranslatingAdapter
from gateway.adapters.tokens import REPLY_PRIMING, TOOLS_OVERHEAD, PromptSize
from gateway.adapters.upstream_errors import bad_response, error_from_event
from gateway.chat.native import NativeBody, native_request
from gateway.chat.service import LIST_PRICE_SERVICE_TIERS, Wire
from gateway.errors import BadRequest, GatewayError
from gateway.translation import Translation, dumps, sse_event

from .schema import ResponsesRequest, ToolChoiceAllowed, ToolChoiceOther
from .translate import refuse_stateful

OPENAI = "openai"
# Top-level fields sent as the client wrote them (``store`` and ``service_tier`` are set by us).
FORWARDED = ("model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning",
             "max_output_tokens", "temperature", "top_p", "top_logprobs", "metadata", "user", "safety_identifier",
             "prompt_cache_key", "prompt_cache_retention", "stream", "stream_options", "include", "truncation",
             "max_tool_calls")
# Tools the client runs itself (their calls and outputs are plain tokens).
CLIENT_TOOLS = frozenset({"function", "custom"})
# Input items forwarded: messages, the client's tool calls and their outputs, reasoning items.
INPUT_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning", "custom_tool_call",
                         "custom_tool_call_output"})
# The fields of the body that are prompt (the hold measures their JSON text).
PROMPT_FIELDS = ("instructions", "input", "tools", "tool_choice", "text", "reasoning")
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
DELTA_EVENTS = frozenset({"response.output_text.delta", "response.refusal.delta",
                          "response.function_call_arguments.delta", "response.custom_tool_call_input.delta",
                          "response.reasoning_text.delta", "response.reasoning_summary_text.delta"})


def mode_for(provider: str) -> str:
    """``"native"`` when OpenAI itself serves the model, else ``"translate"``."""
    return "native" if provider == OPENAI else "translate"


# =============================================================================== request
def native_body(req: ResponsesRequest, upstream_model: str, *, max_output_limit: int) -> NativeBody:
    """The client's Responses request for OpenAI itself (module docstring), with its size."""
    refuse_stateful(req)
    for i, tool in enumerate(req.tools or []):
        if tool.type not in CLIENT_TOOLS:
            raise BadRequest(f"The built-in tool `{tool.type}` is not supported (it is billed or runs on the "
                             f"provider's side); only function and custom tools.", param=f"tools.{i}",
                             code="unsupported_tool")
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceOther) and choice.type not in CLIENT_TOOLS:
        raise BadRequest(f"tool_choice of type `{choice.type}` is not supported; only function and custom tools.",
                         param="tool_choice", code="unsupported_tool")
    if isinstance(choice, ToolChoiceAllowed) and any(t.get("type") not in CLIENT_TOOLS for t in choice.tools):
        raise BadRequest("allowed_tools may only name function and custom tools.", param="tool_choice",
                         code="unsupported_tool")
    if req.service_tier is not None and req.service_tier not in LIST_PRICE_SERVICE_TIERS:
        raise BadRequest(f"`service_tier` {req.service_tier!r} is not supported: requests are served and billed at "
                         "the standard tier (omit it, or use \"auto\" or \"default\").",
                         code="unsupported_service_tier", param="service_tier")
    t = Translation(body={})
    raw = req.model_dump(mode="json", by_alias=True, exclude_unset=True)
    body = {k: raw[k] for k in FORWARDED if raw.get(k) is not None}
    for name in raw:
        if name not in FORWARDED and name not in ("store", "service_tier") and raw[name] not in (None, False):
            t.drop(name)
    if isinstance(body["input"], list):
        for i, item in enumerate(body["input"]):
            _check_item(item, f"input.{i}")
    body["model"] = upstream_model
    body["store"] = False
    body["service_tier"] = "default"
    if not req.stream:
        body.pop("stream", None)
        body.pop("stream_options", None)
    limit = req.max_output_tokens or max_output_limit
    if limit > max_output_limit:
        limit = max_output_limit
        t.drop(f"max_output_tokens above {max_output_limit}")
    body["max_output_tokens"] = limit
    return NativeBody(body=body, size=native_size(body), output_limit=limit, dropped=t.dropped)


def _check_item(item: dict[str, Any], at: str) -> None:
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "item_reference":
        raise BadRequest("`item_reference` input items need stored responses, which this gateway does not keep; "
                         "send the items themselves.", param=at, code="unsupported_parameter")
    if kind not in INPUT_ITEMS:
        raise BadRequest(f"Input items of type `{kind}` are not supported (built-in tools are not available); only "
                         f"messages, reasoning items and function or custom tool calls and outputs.", param=at,
                         code="unsupported_parameter")
    parts = item.get("content") if kind == "message" else item.get("output")
    for j, part in enumerate(parts if isinstance(parts, list) else []):
        if isinstance(part, dict) and part.get("file_id"):
            raise BadRequest("Images and files by file_id are not supported (they would be read from the gateway's "
                             "own account); send image_url, file_data or file_url.", param=f"{at}.content.{j}",
                             code="unsupported_parameter")


# =============================================================================== hold
def native_size(body: dict[str, Any]) -> PromptSize:
    """The :class:`PromptSize` of a Responses body: the JSON text of every prompt field (one token
    per UTF-8 byte in the bound), ``input_image`` parts at the model's per-image maximum,
    ``input_file`` parts and ``detail: "original"`` images at the whole context length."""
    images = files = 0

    def strip(parts: Any) -> Any:
        nonlocal images, files
        if not isinstance(parts, list):
            return parts
        out = []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "input_image":
                if part.get("detail") == "original":
                    files += 1
                else:
                    images += 1
                part = {"type": kind}
            elif kind == "input_file":
                files += 1
                part = {"type": kind}
            out.append(part)
        return out

    prompt = {k: body[k] for k in PROMPT_FIELDS if body.get(k) is not None}
    if isinstance(prompt.get("input"), list):
        prompt["input"] = [
            {**item, "content": strip(item.get("content")), "output": strip(item.get("output"))}
            if isinstance(item, dict) else item for item in prompt["input"]]
    text = dumps(prompt)
    overhead = REPLY_PRIMING + (TOOLS_OVERHEAD if body.get("tools") else 0)
    return PromptSize.of_text(text, overhead, images=images, files=files)


# =============================================================================== usage
def usage_from_responses(raw: Any) -> Usage | None:
    """The Responses ``usage`` object as our :class:`Usage` (None when absent): ``input_tokens``
    includes the cached ones, ``output_tokens`` the reasoning ones."""
    if not isinstance(raw, dict) or (raw.get("input_tokens") is None and raw.get("output_tokens") is None):
        return None
    found = raw.get("input_tokens_details")
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    return Usage(prompt_tokens=as_int(raw.get("input_tokens")), completion_tokens=as_int(raw.get("output_tokens")),
                 cached_tokens=as_int(details.get("cached_tokens")))


def _estimated(body: dict[str, Any], out_chars: int, model_id: str) -> Usage:
    return Usage(prompt_tokens=native_size(body).estimate(model_id), completion_tokens=-(-out_chars // 4),
                 reported=False)


# =============================================================================== upstream
def _request(client: UpstreamClient, target: Target, body: dict[str, Any], *, stream: bool) -> UpstreamRequest:
    return native_request(client, target, body, "responses", get_adapter(OPENAI).auth_headers(target.api_key),
                          stream=stream, buffered_drops=("stream", "stream_options"))


def _with_model(obj: dict[str, Any], model: str) -> dict[str, Any]:
    response = obj.get("response")
    return {**obj, "response": {**response, "model": model}} if isinstance(response, dict) else obj


class ResponsesStream(SSEUpstreamStream):
    provider = OPENAI

    def _build_request(self) -> UpstreamRequest:
        return _request(self._client, self._target, self._body, stream=True)

    def _on_event(self, event: SSEEvent) -> list[dict[str, Any]]:
        obj = None if event.data.strip() == "[DONE]" else self._json_object(event)
        if obj is None:
            return []
        kind = obj.get("type") or event.event
        if kind == "error":
            raise error_from_event(self.provider, {"error": {"message": obj.get("message"), "type": obj.get("code")}},
                                   api_key=self._target.api_key)
        if kind in DELTA_EVENTS and isinstance(obj.get("delta"), str):
            self._out_chars += len(obj["delta"])
        obj = _with_model(obj, self._target.public_id)
        if kind in TERMINAL_EVENTS:
            response = obj.get("response")
            usage = usage_from_responses(response.get("usage") if isinstance(response, dict) else None)
            if usage is not None:
                self.usage = usage
                self._final_usage = True
            self._done = True
        return [obj]

    def _finalize_usage(self) -> None:
        super()._finalize_usage()
        u = self.usage
        if u is not None and not u.reported:  # the chat estimate does not read a Responses body
            u.prompt_tokens = max(u.prompt_tokens, native_size(self._body).estimate(self._target.public_id))


def usage_of(data: Any) -> Usage | None:
    return usage_from_responses(data.get("usage")) if isinstance(data, dict) else None


class ResponsesAdapter(TranslatingAdapter):
    """OpenAI's Responses API without translation (the pipeline's adapter for the native path)."""

    provider = OPENAI
    usage_of = staticmethod(usage_of)
    stream_class = ResponsesStream

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return get_adapter(OPENAI).auth_headers(api_key)

    def build_request(self, client: UpstreamClient, target: Target, body: dict[str, Any], *,
                      stream: bool) -> UpstreamRequest:
        return _request(client, target, body, stream=stream)

    def translate_response(self, target: Target, body: dict[str, Any], data: Any) -> tuple[dict[str, Any], Usage]:
        if not isinstance(data, dict) or data.get("object") != "response":
            if isinstance(data, dict) and data.get("error"):
                raise error_from_event(self.provider, data, api_key=target.api_key)
            raise bad_response(self.provider, "returned an unexpected body")
        usage = usage_from_responses(data.get("usage"))
        if usage is None:
            chars = len(json.dumps(data.get("output") or [], ensure_ascii=False))
            usage = _estimated(body, chars, target.public_id)
        return {**data, "model": target.public_id}, usage


ADAPTER = ResponsesAdapter()


# =============================================================================== downstream
def responses_usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                                                  "cache_write_tokens": usage.cache_write_tokens},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens}


def assemble_response(events: list[dict[str, Any]], model: str, usage: Usage) -> dict[str, Any]:
    """The Response of a buffered stream: the terminal event's (its usage when it reported one),
    else the last snapshot with the finished output items."""
    response: dict[str, Any] = {}
    items: dict[int, dict[str, Any]] = {}
    for event in events:
        if isinstance(event.get("response"), dict):
            response = event["response"]
        if event.get("type") == "response.output_item.done" and isinstance(event.get("item"), dict):
            items[as_int(event.get("output_index"))] = event["item"]
    out = {**response, "model": model}
    if not isinstance(out.get("output"), list) or len(out["output"]) < len(items):
        out["output"] = [items[i] for i in sorted(items)]
    if not isinstance(out.get("usage"), dict):
        out["usage"] = responses_usage(usage)
    return out


class _Frames:
    """Frames one stream's events (``event: TYPE`` + ``data: JSON``) and remembers the last
    ``sequence_number``, so an error of ours ending the stream continues the sequence."""

    def __init__(self) -> None:
        self.seq = -1

    def frame(self, event: dict[str, Any]) -> bytes:
        number = event.get("sequence_number")
        if isinstance(number, int):
            self.seq = number
        return sse_event(str(event.get("type") or "message"), event)

    def error_frame(self, err: GatewayError) -> bytes:
        self.seq += 1
        return sse_event("error", {"type": "error", "code": err.code or "server_error", "message": err.message,
                                   "param": None, "sequence_number": self.seq})


def wire() -> Wire:
    """The pipeline's wire for one native Responses request."""
    frames = _Frames()
    return Wire(adapter=lambda _provider: ADAPTER, frame=frames.frame, error_frame=frames.error_frame,
                tail=lambda *_: [], assemble=assemble_response)
